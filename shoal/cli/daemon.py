"""How a `... run` command starts its proxy: bad flags refused before anything starts, a failed start said in
one line, else the proxy runs until SIGTERM (shoal.lifecycle)."""

from __future__ import annotations

from typing import Awaitable, Callable, TypeVar

from shoal.cli.output import fail

Config = TypeVar("Config")


def run_daemon(make_config: Callable[[], Config], run: Callable[[Config, object], Awaitable[int]],
               startup_errors: tuple[type[Exception], ...]) -> int:
    """`make_config()` builds the proxy's settings from the flags: a ValueError there is a usage error (exit
    2, nothing started). `run(config, shutdown)` is the proxy's main coroutine; one of `startup_errors` from
    it (no trust bundle, no token, ...) is printed as `shoal: error: ...` and exits 1."""
    from shoal import lifecycle

    try:
        config = make_config()
    except ValueError as e:
        return fail(str(e), 2)

    async def daemon(shutdown) -> int:
        try:
            return await run(config, shutdown)
        except startup_errors as e:
            return fail(str(e))

    return lifecycle.run(daemon)
