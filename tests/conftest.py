"""Checks that hold for every test of the suite, and the process-wide state each test leaves as it found it."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(autouse=True)
def event_loop_policy_unchanged():
    """A test (or the code it drives in process) must not leave uvloop as the process's policy:
    every later event loop would be uvloop's, and pyroute2 cannot open its netlink socket on one."""
    before = type(asyncio.get_event_loop_policy())
    yield
    after = type(asyncio.get_event_loop_policy())
    if after is not before:
        asyncio.set_event_loop_policy(None)
        pytest.fail(f"the test left the event loop policy {after.__module__}.{after.__name__} behind")


@pytest.fixture(autouse=True)
def logging_configuration_restored():
    """A test that runs a program's main() in process configures structlog as that program does
    (`--access-log off` sets the level to warning); the next test starts from the configuration before it."""
    import structlog
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
