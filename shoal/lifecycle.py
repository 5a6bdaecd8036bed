"""Signals and shutdown for long-running shoal processes.

Every daemon runs one asyncio main coroutine. SIGTERM and SIGINT set a
`stopping` event; the daemon then stops accepting work, drains until its own
deadline, and returns. A second signal skips the drain.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Awaitable, Callable

from shoal import log

logger = log.get("shoal.lifecycle")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Shutdown:
    """Turns SIGTERM/SIGINT into an event the daemon awaits."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.urgent = asyncio.Event()
        self.signal_name: str | None = None

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            logger.warning("second signal, stopping now", signal=sig.name)
            self.urgent.set()
            return
        self.signal_name = sig.name
        logger.info("shutting down", signal=sig.name)
        self.stopping.set()

    async def wait(self) -> None:
        await self.stopping.wait()


def raise_file_limit() -> int:
    """Raises the soft limit on open files to the hard one (a proxy holds a few sockets per connection
    and per pod; the default soft limit of 1024 is reached under load). Returns the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run(main: Callable[[Shutdown], Awaitable[int | None]]) -> int:
    """Runs `main(shutdown)` on uvloop with signal handling, with the file limit raised; returns its exit code."""
    install_uvloop()
    raise_file_limit()

    async def runner() -> int:
        shutdown = Shutdown()
        shutdown.install()
        code = await main(shutdown)
        return int(code or 0)

    return asyncio.run(runner())
