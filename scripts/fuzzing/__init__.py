"""Structure-aware fuzzing of shoal's parsers and protocol cores (`python -m scripts.fuzz`).

A target is a module with:
- `NAME`;
- `EXPECTED`: the module's own typed errors, the only ones bad input may raise;
- `run_one(rng)`: generates one input from `rng` (valid messages with mutated
  fields, then a random chunking), feeds it to a fresh instance and checks
  its invariants and bounds after every step. A bound or invariant broken is
  an `Unbounded` or `Broken` (both `FuzzFailure`); an error outside
  `EXPECTED` goes up as it is. Returns what happened ("accepted", "refused").
- `soak(cycles)`: one long-lived instance fed `cycles` well-formed
  exchanges; returns the memory (tracemalloc) it held on to in the second
  half, which is what would grow without bound if a record were never freed.

Generators only call `randrange`, `random`, `choice`, `randbytes` and
`getrandbits` on `rng`, so a seeded `random.Random` (the program: fast,
each input reproducible from its seed) and Hypothesis's `st.randoms()` (the
tests: failures shrink) drive the same code.

targets: `hbone` (shoal.hbone.HboneServer, sans-IO, and shoal.hbone_io's
HboneSession over an in-memory transport), `http1` (waypoint.http1's
MessageReader), `h2` (waypoint.h2server.H2Server over an in-memory channel),
`handoff` (shoal.handoff's AgentSide and ZtunnelSide).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import tracemalloc
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from shoal.hbone_relay import Side

TARGETS = ("hbone", "http1", "h2", "handoff")


class FuzzFailure(AssertionError):
    """The harness caught the code under test breaking a promise on some input."""


class Unbounded(FuzzFailure):
    """A buffer or a per-stream/per-connection record grew past its bound."""


class Broken(FuzzFailure):
    """An invariant of the protocol core did not hold (events out of order, an fd neither kept nor closed, ...)."""


@dataclass(frozen=True)
class Known:
    """A failure found, reported and not fixed yet (its code is another engineer's). The program still counts
    it as a failure, under this name; tests skip it, and pin it with a strict xfail that passes once fixed."""

    name: str
    what: str                       # the bug in one line
    kind: type[BaseException]
    says: str                       # a piece of its message

    def matches(self, error: BaseException) -> bool:
        return isinstance(error, self.kind) and self.says in str(error)


def known(module: ModuleType, error: BaseException) -> Known | None:
    return next((k for k in getattr(module, "KNOWN", ()) if k.matches(error)), None)


def measure_growth(cycle: Callable[[int], None], cycles: int, sizes: Callable[[], dict]) -> dict:
    """Runs `cycle(n)` for n in range(cycles) under tracemalloc. The growth is what the second half left
    allocated: about nothing when every record of a finished exchange is freed."""
    half = cycles // 2
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        for n in range(half):
            cycle(n)
        gc.collect()
        middle = tracemalloc.get_traced_memory()[0]
        for n in range(half, cycles):
            cycle(n)
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return {"cycles": cycles, "growth_bytes": end - middle, "sizes": sizes()}


_loop: asyncio.AbstractEventLoop | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """One event loop for every input of the run (uvloop, as shoal's processes run, where it is installed)."""
    global _loop
    if _loop is None or _loop.is_closed():
        try:
            import uvloop
            _loop = uvloop.new_event_loop()
        except ImportError:
            _loop = asyncio.new_event_loop()
    return _loop


async def settle(tasks) -> None:
    """Cancels the tasks still running and takes every task's outcome, so that none is reported later (a task
    destroyed pending, an exception never retrieved) while another input runs."""
    tasks = list(tasks)
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def target(name: str) -> ModuleType:
    if name not in TARGETS:
        raise ValueError(f"no fuzz target {name!r}; choose one of {', '.join(TARGETS)}")
    return importlib.import_module(f"scripts.fuzzing.{name}_target")


class RecordingSide(Side):
    """The far end of a relay side in a fuzz run (the app's end of a tunnel, the client's end of a
    channel): counts what is written to it and remembers how it ended."""

    def __init__(self) -> None:
        self.received = 0
        self.ended = self.aborted = self.paused = False

    def write(self, data) -> None:
        self.received += len(data)

    def write_eof(self) -> None:
        self.ended = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
