"""The compiled relay lane against the Python path: the same tunnels, byte for byte and state for state.

Two HBONE sessions (client and server) and an app side at each end run in memory, over transports that
record what is written; the same traffic goes through them once with the compiled lane on and once with
it off (the Python path), under every chunking Hypothesis picks for the bytes between the sessions. Each
run must deliver exactly the app's bytes, and both runs must put the same bytes on the wire and leave
h2's windows, the tunnels and the counters in the same state.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shoal import hbone, relay_lane
from shoal.hbone_io import HboneSession
from shoal.hbone_relay import TcpSide

needs_lane = pytest.mark.skipif(not relay_lane.COMPILED, reason="the compiled relay lane is not built here "
                                "(scripts/setup.sh builds it) or SHOAL_RELAY=python")

AUTHORITY = "198.18.0.7:8080"
SMALL = hbone.Settings(stream_window=65535, connection_window=65535, max_frame_size=16384)


class RecordingTransport(asyncio.Transport):
    """What an asyncio transport offers a protocol; writes are kept, in order, to be taken."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closing = False
        self.reading = True

    def write(self, data) -> None:
        self.out += data

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.out += chunk

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.out += b"<EOF>"

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default


class Tunnel:
    """client app side <-> client session <-> (wire, cut as told) <-> server session <-> server app side."""

    def __init__(self, lane: bool, settings: hbone.Settings) -> None:
        self.lane = lane
        self.settings = settings

    async def open(self) -> None:
        self.client_wire, self.server_wire = RecordingTransport(), RecordingTransport()
        self.client = HboneSession(True, self.settings, lane=self.lane)
        self.server = HboneSession(False, self.settings, on_request=self._accept, lane=self.lane)
        self.client.connection_made(self.client_wire)
        self.server.connection_made(self.server_wire)
        self.client_app, self.server_app = TcpSide(), TcpSide()
        self.client_app_wire, self.server_app_wire = RecordingTransport(), RecordingTransport()
        self.client_app.connection_made(self.client_app_wire)
        self.server_app.connection_made(self.server_app_wire)
        opening = asyncio.get_running_loop().create_task(self.client.open(AUTHORITY))
        for _ in range(20):
            await asyncio.sleep(0)
            self.exchange()
            if opening.done():
                break
        self.client_stream = opening.result()
        _join(self.client_app, self.client_stream)
        self.exchange()

    async def _accept(self, session, stream) -> None:
        self.server_stream = stream
        session.accept(stream)
        _join(stream, self.server_app)

    def exchange(self, cuts: list[int] = ()) -> None:
        """Moves what each session wrote to the other until both are quiet; the client's bytes in pieces."""
        while self.client_wire.out or self.server_wire.out:
            data = self.client_wire.take()
            for piece in _cut(data, cuts):
                self.server.data_received(piece)
            data = self.server_wire.take()
            if data:
                self.client.data_received(data)

    def state(self) -> dict:
        """What both paths must leave the same: windows, tunnel states, counters."""
        out = {}
        for name, session in (("client", self.client), ("server", self.server)):
            conn = session.conn._h2
            out[name] = {
                "outbound": conn.outbound_flow_control_window,
                "inbound": (conn._inbound_flow_control_window_manager.current_window_size,
                            conn._inbound_flow_control_window_manager._bytes_processed),
                "streams": {sid: (s.state_machine.state, s.outbound_flow_control_window,
                                  s._inbound_window_manager.current_window_size,
                                  s._inbound_window_manager._bytes_processed, s._actual_content_length)
                            for sid, s in conn.streams.items()},
                "tunnels": {sid: (t.state, bytes(t.unsent), t.receiving_paused, t.withheld)
                            for sid, t in session.conn._tunnels.items()},
            }
        out["counters"] = (self.client_app.bytes_received, self.client_app.bytes_sent,
                           self.client_stream.bytes_sent, self.client_stream.bytes_received,
                           self.server_stream.bytes_received, self.server_stream.bytes_sent,
                           self.server_app.bytes_received, self.server_app.bytes_sent)
        return out


def _join(a, b) -> None:
    a.peer, b.peer = b, a
    for side, peer in ((a, b), (b, a)):
        attach = getattr(side, "attach", None)
        if attach is not None:
            attach(peer)


def _cut(data: bytes, cuts) -> list[bytes]:
    if not data:
        return []
    points = sorted({c % len(data) for c in cuts} - {0})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


async def _run(lane: bool, settings: hbone.Settings, steps, cuts, ending: str) -> tuple[dict, bytes, bytes]:
    tunnel = Tunnel(lane, settings)
    await tunnel.open()
    for step, size in steps:
        data = bytes((size + i) % 251 for i in range(size))
        if step == "up":
            tunnel.client_app.data_received(data)
        elif step == "down":
            tunnel.server_app.data_received(data)
        elif step == "send":     # a message the waypoint's Channel.send gives the stream itself
            tunnel.client_stream._write_plain(data) or tunnel.client_stream.write(data)
        elif step == "pause":    # the server's app side is full: its tunnel withholds credit
            tunnel.server_app.pause_writing()
        else:
            tunnel.server_app.resume_writing()
        tunnel.exchange(cuts)
    tunnel.server_app.resume_writing()
    tunnel.exchange(cuts)
    if ending == "half-close":
        tunnel.client_app.eof_received()
    elif ending == "reset":
        tunnel.client_app.connection_lost(ConnectionResetError())
    tunnel.exchange(cuts)
    return tunnel.state(), tunnel.server_app_wire.take(), tunnel.client_app_wire.take()


def _expected(steps, direction: str) -> bytes:
    steps = [("up" if step == "send" else step, size) for step, size in steps]
    return b"".join(bytes((size + i) % 251 for i in range(size)) for step, size in steps if step == direction)


steps_strategy = st.lists(st.tuples(st.sampled_from(["up", "up", "send", "down", "pause", "resume"]),
                                    st.integers(1, 40000)), max_size=10)


@needs_lane
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps_strategy, cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
       small=st.booleans(), ending=st.sampled_from(["none", "half-close", "reset"]))
def test_the_lane_leaves_what_the_python_path_leaves(steps, cuts, small, ending):
    settings_ = SMALL if small else hbone.Settings()
    compiled = asyncio.run(_run(True, settings_, steps, cuts, ending))
    python = asyncio.run(_run(False, settings_, steps, cuts, ending))
    assert compiled == python
    state, server_app, client_app = compiled
    up, down = _expected(steps, "up"), _expected(steps, "down")
    assert server_app == up + (b"<EOF>" if ending == "half-close" else b"")
    assert client_app == down


@needs_lane
def test_the_lane_carries_plain_frames_itself():
    """The lane is not a pass-through to Python: with `_data_received_python` refusing DATA, messages
    still arrive, both ways (a frame cut across reads would go to Python, so the wire is not cut here)."""
    async def main():
        tunnel = Tunnel(True, hbone.Settings())
        await tunnel.open()
        python_calls = []
        for side in (tunnel.client_app, tunnel.server_app, tunnel.client, tunnel.server):
            original = side._data_received_python

            def spy(data, original=original, side=side):
                python_calls.append(type(side).__name__)
                original(data)
            side._data_received_python = spy
        for size in (1, 1024, 16384, 100000):
            tunnel.client_app.data_received(b"u" * size)
            tunnel.exchange()
            tunnel.server_app.data_received(b"d" * size)
            tunnel.exchange()
        assert tunnel.server_app_wire.take() == b"".join(b"u" * n for n in (1, 1024, 16384, 100000))
        assert tunnel.client_app_wire.take() == b"".join(b"d" * n for n in (1, 1024, 16384, 100000))
        assert python_calls == []
    asyncio.run(main())


@needs_lane
def test_a_frame_cut_across_reads_and_a_window_update_go_through_python():
    async def main():
        tunnel = Tunnel(True, SMALL)
        await tunnel.open()
        calls = []
        original = tunnel.server._data_received_python
        tunnel.server._data_received_python = lambda data: (calls.append(len(data)), original(data))
        payload = bytes(range(256)) * 200      # over half the 64 KiB window: WINDOW_UPDATEs are due
        for start in range(0, len(payload), 5000):
            tunnel.client_app.data_received(payload[start:start + 5000])
            tunnel.exchange([3, 9, 100])
        assert tunnel.server_app_wire.take() == payload
        assert calls                              # the cut frames went through Python
        assert tunnel.client.conn._h2.outbound_flow_control_window > 0   # and the window came back
    asyncio.run(main())


def run_with_relay(choice: str, code: str) -> subprocess.CompletedProcess:
    """`code` in a new process of this tree with SHOAL_RELAY=choice."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "SHOAL_RELAY": choice}, cwd=os.path.dirname(os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__)))))


def test_an_unknown_relay_choice_is_refused_with_what_to_set():
    result = run_with_relay("turbo", "import shoal.relay_lane")
    assert result.returncode != 0
    assert "SHOAL_RELAY='turbo' is not one of native, compiled, python" in result.stderr


def test_the_python_choice_runs_without_the_extension():
    code = ("from shoal import relay_lane, hbone_io, hbone_relay;"
            "assert not relay_lane.COMPILED;"
            "assert hbone_io.HboneSession.data_received is hbone_io.HboneSession._data_received_python;"
            "assert hbone_relay.TcpSide.data_received is hbone_relay.TcpSide._data_received_python;"
            "import sys; assert 'shoal._relay' not in sys.modules and 'shoal._native' not in sys.modules;"
            "print(relay_lane.NAME)")
    result = run_with_relay("python", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python"


@pytest.mark.parametrize("choice", ["native", "compiled"])
def test_a_choice_the_build_cannot_give_stops_naming_that_choice(choice):
    hide = "import sys; sys.modules['shoal._relay'] = None; import shoal.relay_lane"
    result = run_with_relay(choice, hide)
    assert result.returncode != 0
    assert f"SHOAL_RELAY={choice} but the compiled relay is not built" in result.stderr
    assert "scripts/setup.sh" in result.stderr


def test_the_default_without_the_lane_says_the_python_path_carries_tunnels():
    code = ("import sys; sys.modules['shoal._relay'] = None;"
            "from shoal import relay_lane, native_io; print(relay_lane.NAME, native_io.in_use)")
    result = run_with_relay("", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["python", "False"]
    assert "the pure-Python relay carries tunnels" in result.stdout + result.stderr


@needs_lane
def test_the_compiled_choice_keeps_the_loops_transports():
    code = ("from shoal import relay_lane, native_io;"
            "assert relay_lane.COMPILED and not relay_lane.NATIVE and not native_io.in_use;"
            "import sys; assert 'shoal._native' not in sys.modules; print(relay_lane.NAME)")
    result = run_with_relay("compiled", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "compiled"


@needs_lane
def test_what_the_lane_binds_is_released_with_its_session():
    """The lane binds the session's core, h2 connection and stream tables once; they are freed with the
    session, also when the session sits in a reference cycle (the cycle collector sees the lane's hold)."""
    import gc
    import weakref

    async def main():
        tunnel = Tunnel(True, hbone.Settings())
        await tunnel.open()
        assert tunnel.client.lane_enabled and tunnel.server.lane_enabled
        tunnel.client_app.data_received(b"x" * 100)
        tunnel.exchange()
        assert tunnel.server_app_wire.take() == b"x" * 100
        cores = [weakref.ref(tunnel.client.conn), weakref.ref(tunnel.server.conn)]
        h2s = [weakref.ref(tunnel.client.conn._h2), weakref.ref(tunnel.server.conn._h2)]
        tunnel.client.cycle = tunnel.client   # a cycle through the session itself
        return cores + h2s

    refs = asyncio.run(main())
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)


@needs_lane
def test_a_tunnel_class_without_the_slots_the_lane_reads_is_refused_and_changes_nothing():
    """The lane reads shoal.hbone._Tunnel's slots at their offsets; a class whose `state` is no slot is
    refused with a message naming it, and the lane keeps what it had."""
    from shoal import _relay, hbone_lean

    class NoSlots:
        state = None

    sets = (hbone_lean._CONNECTION_OPEN, hbone_lean._STREAM_SENDS, hbone_lean._STREAM_RECEIVES,
            frozenset(), hbone._WRITABLE, hbone._RECEIVABLE)
    with pytest.raises(TypeError, match=r"NoSlots\.state is not a __slots__ slot"):
        _relay.configure(*sets, NoSlots)
    with pytest.raises(TypeError, match=r"object\.state is not a __slots__ slot"):
        _relay.configure(*sets, object)
    # Still configured as before: a tunnel carries plain frames in C.
    test_the_lane_carries_plain_frames_itself()


@needs_lane
def test_a_stream_sends_a_plain_message_itself_and_declines_the_rest():
    """TunnelStream._write_plain (the waypoint's Channel.send): a plain message is one DATA frame sent in
    C; a message past the send window, or not bytes, is declined with nothing changed, for write()."""
    async def main():
        tunnel = Tunnel(True, SMALL)
        await tunnel.open()
        stream = tunnel.client_stream
        assert stream._write_plain(b"m" * 1000) is True
        assert stream.bytes_sent == 1000
        assert stream._write_plain(bytearray(b"n" * 10)) is False
        before, wire = tunnel.state(), bytes(tunnel.client_wire.out)
        assert stream._write_plain(b"w" * 70000) is False     # past the 65535-byte stream window
        assert tunnel.state() == before and bytes(tunnel.client_wire.out) == wire
        tunnel.exchange()
        assert tunnel.server_app_wire.take() == b"m" * 1000
    asyncio.run(main())
