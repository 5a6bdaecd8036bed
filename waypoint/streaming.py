"""A request body that is still arriving: what gRPC client-streaming and bidirectional calls need.

An HTTP/2 gRPC request is routed as soon as its headers arrive, and its DATA
flows to the endpoint as it comes. The client's flow-control credit is
returned only as the body is consumed (`on_consumed`), so a slow endpoint
slows the client instead of growing a buffer. Such a request is tried once
(nothing is kept to send again) and is not mirrored.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable


class BodyStream:
    def __init__(self, on_consumed: Callable[[int], None] = lambda n: None) -> None:
        self.on_consumed = on_consumed
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._ended = False
        self._error: Exception | None = None
        self._ready = asyncio.Event()
        self.received = 0

    def feed(self, data: bytes, credit: int) -> None:
        self.received += len(data)
        self._chunks.append((data, credit))
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    def fail(self, error: Exception) -> None:
        self._error = error
        self._ready.set()

    async def read(self) -> bytes:
        """The next chunk; b"" at the end; raises what `fail` was given."""
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                data, credit = self._chunks.popleft()
                if credit:
                    self.on_consumed(credit)
                if data:
                    return data
                continue
            if self._ended:
                return b""
            self._ready.clear()
            await self._ready.wait()

    def discard(self) -> None:
        """Drops what was not read, giving its credit back (the call ended without it)."""
        while self._chunks:
            _, credit = self._chunks.popleft()
            if credit:
                self.on_consumed(credit)
        self._ended = True

    async def collect(self, limit: int) -> bytes:
        out = bytearray()
        while True:
            data = await self.read()
            if not data:
                return bytes(out)
            out += data
            if len(out) > limit:
                raise ValueError(f"request body larger than {limit} bytes")
