"""The service graph's web server: the page, and its two JSON answers, on 127.0.0.1 only.

    GET /               the page (shoal.observe.page)
    GET /api/graph      the graph (shoal.observe.graph.Graph.to_json); 503 with {"error"} while no figures
    GET /api/node?id=NS/WORKLOAD   what the page shows of one workload (shoal.observe.details)

What it serves comes from a `Views` (passed in): the server only routes and encodes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from shoal import log
from shoal.errors import ShoalError
from shoal.observe.page import PAGE

logger = log.get("shoal.observe.server")
DEFAULT_PORT = 20001


@dataclass(frozen=True)
class Views:
    graph: Callable[[], dict]
    node: Callable[[str, str], dict]


def route(views: Views, target: str) -> tuple[int, str, bytes]:
    """(status, content type, body) for a GET of `target`."""
    url = urlsplit(target)
    if url.path in ("/", "/index.html"):
        return 200, "text/html; charset=utf-8", PAGE.encode()
    if url.path == "/api/graph":
        try:
            return 200, "application/json", json.dumps(views.graph()).encode()
        except ShoalError as e:
            return 503, "application/json", json.dumps({"error": str(e)}).encode()
    if url.path == "/api/node":
        wanted = (parse_qs(url.query).get("id") or [""])[0]
        namespace, _, workload = wanted.partition("/")
        if not namespace or not workload:
            return 400, "application/json", json.dumps({"error": "give ?id=<namespace>/<workload>"}).encode()
        return 200, "application/json", json.dumps(views.node(namespace, workload)).encode()
    return 404, "text/plain", b"not found: try / or /api/graph\n"


def serve(views: Views, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Starts serving in a thread of its own; the caller stops it with `.shutdown()`."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            try:
                status, kind, body = route(views, self.path)
            except Exception as e:  # noqa: BLE001 - one bad answer must not end the server
                logger.warning("dashboard request failed", path=self.path, error=str(e))
                status, kind, body = 500, "application/json", json.dumps({"error": str(e)}).encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):   # http.server's own stderr lines: the access is not worth a line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    return server
