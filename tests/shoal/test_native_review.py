"""Reproductions of review findings in the native transports (see /tmp/plan/s7/E_findings_native.md at the
time of writing), each failing until its fix lands; the lead routes the fixes."""

from __future__ import annotations

import asyncio

import pytest

from shoal import identity, native_io, relay_lane

from support.polling import eventually_async
from tests.shoal.test_native_io import CLIENT_CRED, Recorder, run, socket_pair

pytestmark = pytest.mark.skipif(not relay_lane.NATIVE, reason="the native transports are not in use here "
                                f"(SHOAL_RELAY={relay_lane.NAME}; scripts/setup.sh builds them)")

FATAL_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"   # an alert record: fatal, handshake_failure


@pytest.mark.xfail(strict=True, reason="E finding 2: handshake_failed sets the exception of a waiter that is "
                                       "already cancelled; InvalidStateError reaches the loop's handler")
def test_a_handshake_failing_after_its_waiter_was_cancelled_raises_nothing_into_the_loop():
    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        server, client = await socket_pair()
        waiter = loop.create_future()
        waiter.cancel()   # as when the task awaiting open_tls is cancelled, before its abort runs
        transport = native_io._native.Transport(loop, Recorder(), client, {}, identity.client_context(CLIENT_CRED),
                                                False, waiter)
        transport._start()                 # the ClientHello goes out; the answer is waited for
        server.sendall(FATAL_ALERT)        # the server refuses the handshake
        await eventually_async(transport.is_closing, what="the refused handshake closing the transport")
        server.close()
        assert errors == [], [str(e.get("exception")) for e in errors]
    run(main())


@pytest.mark.xfail(strict=True, reason="E finding 4: _enable_lane re-binds an enabled session's core, h2 and "
                                       "windows, which a running receive holds as borrowed pointers")
def test_the_lane_of_a_session_is_enabled_once():
    from shoal.hbone_io import HboneSession

    async def main():
        session = HboneSession(True, lane=True)
        assert session.lane_enabled
        with pytest.raises(RuntimeError):
            session._enable_lane(True)   # a second call would free what a receive in progress holds
    run(main())
