"""The control plane's HTTP port (15014): readiness, Prometheus metrics, a dashboard.

- `GET /healthz/ready`: 200 once the config source has synced and gRPC is
  serving, 503 before (with the reason).
- `GET /metrics`: the Prometheus text format.
- `GET /debug/config`: JSON: resource counts and versions, connected proxies.
- `GET /`: the same as a small HTML page.

One request per connection (`Connection: close`): probes and scrapers are
the only clients.
"""

from __future__ import annotations

import asyncio
import html
import json
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from shoal import log, sockets
from shoal.exposition import render

logger = log.get("shoal.control_plane.http")

class HttpServer:
    def __init__(self, *, ready: Callable[[], str | None], registry, status: Callable[[], dict]) -> None:
        self.ready = ready      # None when ready, else why not
        self.registry = registry
        self.status = status
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        if host == sockets.ALL_ADDRESSES:
            # asyncio would bind `::` IPv6-only; one dual-stack socket takes both families (0.0.0.0 without IPv6).
            try:
                sock = sockets.listener(None, port, host, mark=False, reuse_port=False)
            except sockets.SocketError as e:
                raise OSError(str(e)) from None
            self.server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self.server = await asyncio.start_server(self._serve, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/healthz/ready":
            why = self.ready()
            return (200, "text/plain", b"ready\n") if why is None else (503, "text/plain", f"{why}\n".encode())
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, render(self.registry)
        if path == "/debug/config":
            return 200, "application/json", json.dumps(self.status(), indent=2).encode() + b"\n"
        if path == "/":
            return 200, "text/html; charset=utf-8", _dashboard(self.status()).encode()
        return 404, "text/plain", b"not found; try /healthz/ready, /metrics, /debug/config or /\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, ctype, body = self.route(method, path)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            writer.close()
            return
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + (body if method != "HEAD" else b""))
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def _dashboard(status: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{c['count']}</td><td>{html.escape(c['version'])}</td></tr>"
                   for t, c in status.get("resources", {}).items())
    proxies = "".join(f"<tr><td>{html.escape(p['scope'])}</td><td>{html.escape(p['peer'])}</td>"
                      f"<td>{'yes' if p['in_sync'] else 'no'}</td><td>{p['nacks']}</td></tr>"
                      for p in status.get("proxies", []))
    return (f"<!doctype html><title>shoal control plane</title><h1>shoal control plane</h1>"
            f"<p>{html.escape(status.get('ready', ''))}</p>"
            f"<h2>Config</h2><table border=1><tr><th>type</th><th>resources</th><th>version</th></tr>{rows}</table>"
            f"<h2>Connected proxies</h2><table border=1><tr><th>scope</th><th>peer</th><th>in sync</th>"
            f"<th>nacks</th></tr>{proxies}</table><p><a href=/metrics>metrics</a></p>")
