"""The proxies' small HTTP endpoints: admin (15000, localhost), metrics (15020), readiness (15021).

One minimal HTTP/1.1 responder (GET only, one request per connection) is
enough for a config dump, a Prometheus scrape and a kubelet probe. The
ztunnel and the waypoint both serve theirs with it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from shoal import sockets

Route = Callable[[], tuple[int, str, bytes]]  # -> (status, content type, body)

REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable", 400: "Bad Request"}


def json_route(fn: Callable[[], object]) -> Route:
    return lambda: (200, "application/json", json.dumps(fn(), indent=2, default=str).encode())


async def serve(host: str, port: int, routes: dict[str, Route], *, sock=None) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif path in routes:
                status, ctype, body = routes[path]()
            else:
                status, ctype, body = 404, "text/plain", ("paths: " + " ".join(sorted(routes)) + "\n").encode()
            writer.write(f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\ncontent-type: {ctype}\r\n"
                         f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            pass
        finally:
            writer.close()

    if sock is None and host == sockets.ALL_ADDRESSES:
        # asyncio binds `::` IPv6-only (IPV6_V6ONLY); one dual-stack socket takes both families, and is
        # 0.0.0.0 where the netns has no IPv6. A port taken is an error (no SO_REUSEPORT), as below.
        sock = sockets.listener(None, port, host, mark=False, reuse_port=False)
    if sock is not None:
        return await asyncio.start_server(handle, sock=sock)
    return await asyncio.start_server(handle, host, port, reuse_address=True)
