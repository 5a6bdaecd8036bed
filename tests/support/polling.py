"""Waiting for a condition: `eventually` in plain code, `eventually_async` inside an event loop.

Both call `check` until it returns something truthy and hand that back, so a
test can wait for a value and then look at it. After `timeout` seconds they
fail the test, naming `what` (a string, or a function that describes the state
at that moment). A timeout here bounds a wait; it is not a claim about speed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable

Describe = str | Callable[[], str]


def _message(what: Describe, timeout: float) -> str:
    return f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}"


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: Describe = "the condition",
               interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_message(what, timeout))
        time.sleep(interval)


async def eventually_async(check: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0,
                           what: Describe = "the condition", interval: float = 0.01) -> Any:
    """As `eventually`, sleeping with asyncio; `check` may be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(_message(what, timeout))
        await asyncio.sleep(interval)
