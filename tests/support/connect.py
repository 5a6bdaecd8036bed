"""The HBONE pool's socket opener for tests on loopback: what the ztunnel's opener does, less the capture
marks (no SO_MARK, no transparent source), so any test process can use it."""

from __future__ import annotations

import asyncio
import socket


async def open_socket(key, timeout: float) -> socket.socket:
    """A connected, non-blocking TCP socket to `key.destination` (a `shoal.hbone_pool.Key`)."""
    sock = socket.socket(socket.AF_INET6 if ":" in key.destination[0] else socket.AF_INET)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, key.destination)
    except BaseException:
        sock.close()
        raise
    return sock
