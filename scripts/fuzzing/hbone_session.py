"""Part of the `hbone` fuzz target: `shoal.hbone_io.HboneSession`, the asyncio driver, over an in-memory
transport, fed one generated client connection (`scripts.fuzzing.hbone_target` makes it).

A handler plays the ztunnel's inbound side at random: refuses, accepts and
attaches an app, writes, half-closes, aborts, a few loop turns apart; the
transport pauses and resumes writing now and then. What must hold: nothing
escapes `data_received` (the session maps the core's ProtocolViolation
itself), no handler fails with anything but an HboneError, asyncio reports
no error, and once the connection is lost and the handlers are done no
stream record or tunnel is left.
"""

from __future__ import annotations

import asyncio

from shoal import hbone
from shoal.hbone_io import HboneSession, RelayError

from scripts.fuzzing import Broken, RecordingSide, Unbounded, event_loop, settle
from scripts.fuzzing.generate import chance, chunked

EXPECTED = (hbone.HboneError,)


class MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data) -> None:
        self.written += len(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name, default=None):
        return {"peername": ("198.18.0.2", 40000)}.get(name, default)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass


async def serve(rng, settings: hbone.Settings, data: bytes, lean: bool) -> str:
    loop = asyncio.get_running_loop()
    failures: list = []
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    handlers: list[asyncio.Task] = []

    async def on_request(session: HboneSession, stream) -> None:
        handlers.append(asyncio.current_task())
        hbone.parse_authority(stream.authority)
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        if chance(rng, 0.2):
            session.refuse(stream, 403, "denied")
            return
        try:
            session.accept(stream)
        except RelayError:
            return
        stream.attach(RecordingSide())
        for _ in range(rng.randrange(3)):
            roll = rng.randrange(4)
            if roll == 0:
                stream.write(rng.randbytes(rng.choice((10, 5000))))
            elif roll == 1:
                stream.write_eof()
            elif roll == 2:
                stream.abort()
            await asyncio.sleep(0)

    session = HboneSession(False, settings, on_request=on_request, lean=lean)
    transport = MemoryTransport()
    session.connection_made(transport)
    try:
        for chunk in chunked(rng, data):
            session.data_received(chunk)
            if chance(rng, 0.1):
                (session.pause_writing if chance(rng, 0.5) else session.resume_writing)()
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            if transport.closing:
                break
        session.connection_lost(None)
        for task in [*handlers, *session._tasks]:
            try:
                await task
            except EXPECTED:
                pass
        await asyncio.sleep(0)
        if failures:
            context = failures[0]
            raise context.get("exception") or Broken(context.get("message", "asyncio reported an error"))
        if session.streams or session.conn._tunnels:
            raise Unbounded(f"after the connection was lost, {len(session.streams)} stream records and "
                            f"{len(session.conn._tunnels)} tunnels remain")
    finally:   # an input cut short (a failure, Hypothesis stopping it) leaves no task behind
        await settle([*handlers, *session._tasks])
    return "refused" if session.conn.closed else "accepted"


def run(rng, settings: hbone.Settings, data: bytes, lean: bool) -> str:
    return event_loop().run_until_complete(serve(rng, settings, data, lean))
