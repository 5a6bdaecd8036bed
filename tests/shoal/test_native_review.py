"""Review findings in the native transports and the compiled lane, each held by a test that failed before
its fix: a handshake's waiter cancelled before the handshake failed, a lane enabled twice, and a protocol that
borrows the lane's data_received without being one of its types."""

from __future__ import annotations

import asyncio

import pytest

from shoal import identity, native_io, relay_lane

from support.polling import eventually_async
from tests.shoal.test_native_io import CLIENT_CRED, Recorder, run, socket_pair, tcp_pair

pytestmark = pytest.mark.skipif(not relay_lane.NATIVE, reason="the native transports are not in use here "
                                f"(SHOAL_RELAY={relay_lane.NAME}; scripts/setup.sh builds them)")

FATAL_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"   # an alert record: fatal, handshake_failure


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


def test_the_lane_of_a_session_is_enabled_once():
    from shoal.hbone_io import HboneSession

    async def main():
        session = HboneSession(True, lane=True)
        assert session.lane_enabled
        with pytest.raises(RuntimeError):
            session._enable_lane(True)   # a second call would free what a receive in progress holds
    run(main())


@pytest.mark.skipif(not relay_lane.COMPILED, reason="the compiled lane is not in use here")
def test_a_protocol_borrowing_the_lanes_data_received_gets_a_type_error_not_a_cast():
    """The lane takes a read in C for its own types only: a class that borrows SessionBase.data_received
    without inheriting it is called as Python would call it (the descriptor refuses it: TypeError, which ends
    the connection as any raising data_received does), never read as a SessionBase (memory past its object)."""
    import shoal.hbone_relay  # noqa: F401  (its import makes the lane the native transports' reader)

    class Borrower(Recorder):
        data_received = relay_lane.SessionBase.data_received

    async def main():
        reported = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        st_, sp, ct, cp = await tcp_pair(server=Borrower)
        ct.write(b"x" * 64)
        exc = await asyncio.wait_for(sp.lost, 5)
        assert isinstance(exc, TypeError) and "SessionBase" in str(exc), exc
        assert st_.is_closing() and [c["exception"] for c in reported] == [exc]
        ct.abort()
    run(main())
