"""The sans-IO HBONE core, in memory: two connections passing bytes.

The per-stream tunnel semantics (half-close, reset, windows, a slow reader) have their playbooks in
test_hbone_tunnel.py.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings, strategies as st

from shoal import hbone, hbone_lean
from shoal.hbone import (
    ConnectAccepted, ConnectRefused, ConnectRequested, DataReceived, HboneClient, HboneServer, ReadingPaused,
    StreamEnded, StreamReset, WindowOpened,
)


class Pair:
    """A client and a server joined by in-memory pipes; events are collected per side."""

    def __init__(self, client_settings=hbone.Settings(), server_settings=hbone.Settings(), lean=True,
                 client_lean=None, server_lean=None, hold=False):
        self.client = HboneClient(client_settings, lean=lean if client_lean is None else client_lean,
                                  hold_until_attached=hold)
        self.server = HboneServer(server_settings, lean=lean if server_lean is None else server_lean,
                                  hold_until_attached=hold)
        self.client_events: list = []
        self.server_events: list = []
        self.client.initiate()
        self.server.initiate()
        self.pump()

    def pump(self, chunk: int | None = None) -> None:
        while True:
            moved = False
            for src, dst, sink in ((self.client, self.server, self.server_events),
                                   (self.server, self.client, self.client_events)):
                data = src.data_to_send()
                if data:
                    moved = True
                    step = chunk or len(data)
                    for i in range(0, len(data), step):
                        sink.extend(dst.receive_data(data[i:i + step]))
            if not moved:
                return

    def take_client(self, kind):
        found = [e for e in self.client_events if isinstance(e, kind)]
        self.client_events = [e for e in self.client_events if not isinstance(e, kind)]
        return found

    def take_server(self, kind):
        found = [e for e in self.server_events if isinstance(e, kind)]
        self.server_events = [e for e in self.server_events if not isinstance(e, kind)]
        return found

    def connect(self, authority="198.19.2.5:8080") -> int:
        sid = self.client.open(authority)
        self.pump()
        requested = self.take_server(ConnectRequested)
        assert [r.stream_id for r in requested] == [sid]
        self.server.accept(sid)
        self.pump()
        assert self.take_client(ConnectAccepted) == [ConnectAccepted(sid)]
        return sid


def received(events, sid) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def test_connect_carries_authority_and_headers():
    p = Pair()
    sid = p.client.open("198.19.2.5:8080", headers=(("baggage", "k8s.namespace.name=a"),))
    p.pump()
    [req] = p.take_server(ConnectRequested)
    assert req == ConnectRequested(sid, "198.19.2.5:8080", (("baggage", "k8s.namespace.name=a"),))
    p.server.accept(sid)
    p.pump()
    assert p.take_client(ConnectAccepted) == [ConnectAccepted(sid)]


def test_refusal_reaches_client_with_status_and_reason():
    p = Pair()
    sid = p.client.open("198.19.2.5:8080")
    p.pump()
    p.server.refuse(sid, 403, "denied by policy ns1/deny-all")
    p.pump()
    assert p.take_client(ConnectRefused) == [ConnectRefused(sid, 403, "denied by policy ns1/deny-all")]
    assert not p.take_client(ConnectAccepted)


def test_refused_streams_free_their_slots_on_both_ends():
    # Before, a refused stream stayed half-closed in h2 on both ends: five refusals used up a limit of five.
    p = Pair(server_settings=hbone.Settings(max_concurrent_streams=5))
    for _ in range(12):
        sid = p.client.open("198.19.2.5:8080")
        p.pump()
        assert p.take_server(ConnectRequested)
        p.server.refuse(sid, 403, "denied")
        p.pump()
        assert p.take_client(ConnectRefused)
    assert (p.client.open_streams, p.server.open_streams) == (0, 0)


@pytest.mark.parametrize("kept_by", ["a paused reader", "no reader yet"])
def test_credit_kept_back_on_a_stream_goes_back_to_the_connection_when_it_resets(kept_by):
    # A connection window of one stream window: credit lost with a reset stream would stall every later one.
    tight = hbone.Settings(stream_window=65535, connection_window=65535, max_frame_size=16384)
    p = Pair(tight, tight, hold=kept_by == "no reader yet")
    for _ in range(3):
        sid = p.connect()
        if kept_by == "a paused reader":
            p.server.pause_receiving(sid)
        assert p.client.send(sid, b"x" * 65535) == []
        p.pump()
        if kept_by == "a paused reader":
            p.server.consumed(sid, 65535)  # written onward into a full buffer: credit withheld
        p.client.reset(sid)
        p.pump()
    sid = p.connect()
    assert p.client.send(sid, b"y" * 65535) == []  # the whole window is there again


def test_goaway_resets_the_streams_the_peer_never_processed():
    p = Pair()
    first = p.connect()
    later = p.client.open("198.19.2.6:8080")  # still on its way when the server says GOAWAY
    p.server.close()
    p.client_events.clear()
    p.client_events += p.client.receive_data(p.server.data_to_send())
    assert p.client_events == [hbone.ConnectionClosed(0, first),
                               StreamReset(later, 0x7), hbone.StreamClosed(later)]  # REFUSED_STREAM
    assert p.client.state_of(first) is hbone.TunnelState.OPEN


def test_data_both_ways():
    p = Pair()
    sid = p.connect()
    assert p.client.send(sid, b"ping" * 1000) == []  # all of it went out: nothing waits, reading goes on
    p.pump()
    assert received(p.server_events, sid) == b"ping" * 1000
    assert p.server.send(sid, b"pong") == []
    p.pump()
    assert received(p.client_events, sid) == b"pong"


def test_half_close_each_way_keeps_the_other_direction_open():
    p = Pair()
    sid = p.connect()
    p.client.send(sid, b"request")
    p.client.end(sid)
    p.pump()
    assert received(p.server_events, sid) == b"request"
    assert p.take_server(StreamEnded) == [StreamEnded(sid)]
    with pytest.raises(hbone.StreamNotOpen):
        p.client.send(sid, b"more")
    # The server still writes after the client's half-close.
    p.server.send(sid, b"response")
    p.server.end(sid)
    p.pump()
    assert received(p.client_events, sid) == b"response"
    assert p.take_client(StreamEnded) == [StreamEnded(sid)]


def test_reset_travels_to_the_peer():
    p = Pair()
    sid = p.connect()
    p.client.reset(sid)
    p.pump()
    [reset] = p.take_server(StreamReset)
    assert reset.stream_id == sid and reset.error_code == 0xA  # CONNECT_ERROR
    with pytest.raises(hbone.StreamNotOpen):
        p.server.send(sid, b"x")
    # Resetting an already closed stream does nothing.
    p.client.reset(sid)


def test_flow_control_stops_sender_until_the_reader_consumes():
    small = hbone.Settings(stream_window=65535, connection_window=1 << 20, max_frame_size=16384)
    p = Pair(client_settings=small, server_settings=small)
    sid = p.connect()
    payload = b"x" * 200_000
    p.client_events.clear()
    # The core takes it all: exactly one stream window goes out, the rest waits and the app is paused.
    assert p.client.send(sid, payload) == [ReadingPaused(sid)]
    assert p.client.unsent(sid) == 200_000 - 65535
    p.pump()
    data = [e for e in p.server_events if isinstance(e, DataReceived)]
    assert sum(len(e.data) for e in data) == 65535
    # Nothing was consumed yet: no window update, the sender stays blocked.
    assert not p.take_client(WindowOpened)
    assert p.client.unsent(sid) == 200_000 - 65535
    p.server_events.clear()
    for e in data:
        p.server.consumed(sid, e.flow_controlled_length)
    p.pump()
    assert any(isinstance(e, WindowOpened) and e.stream_id == sid for e in p.client_events)
    # h2 batches window updates; most of the consumed window comes back at once, and the waiting bytes take it.
    reopened = len(received(p.server_events, sid))
    assert 65535 // 2 <= reopened <= 65535
    assert p.client.unsent(sid) == 200_000 - 65535 - reopened


def test_hundred_concurrent_streams_on_one_connection_then_limit():
    p = Pair(server_settings=hbone.Settings(max_concurrent_streams=100))
    sids = [p.client.open(f"198.19.2.{i % 200 + 2}:{8000 + i}") for i in range(100)]
    with pytest.raises(hbone.StreamLimitReached):
        p.client.open("198.19.2.9:9")
    p.pump()
    requested = p.take_server(ConnectRequested)
    assert sorted(r.stream_id for r in requested) == sorted(sids)
    for sid in sids:
        p.server.accept(sid)
    p.pump()
    assert len(p.take_client(ConnectAccepted)) == 100
    for i, sid in enumerate(sids):
        p.client.send(sid, f"stream-{i}".encode())
        p.server.send(sid, f"reply-{i}".encode())
    p.pump()
    for i, sid in enumerate(sids):
        assert received(p.server_events, sid) == f"stream-{i}".encode()
        assert received(p.client_events, sid) == f"reply-{i}".encode()
    # Closing one in both directions frees a slot.
    p.client.end(sids[0])
    p.server.end(sids[0])
    p.pump()
    p.client.open("198.19.2.9:9")


def test_server_refuses_non_ip_authority_and_client_rejects_it_early():
    p = Pair()
    with pytest.raises(hbone.BadAuthority):
        p.client.open("example.com:80")
    with pytest.raises(hbone.BadAuthority):
        p.client.open("198.19.2.5")
    assert hbone.parse_authority("[fd00::1]:15008") == ("fd00::1", 15008)


def test_garbage_is_a_protocol_violation():
    server = HboneServer()
    server.initiate()
    with pytest.raises(hbone.ProtocolViolation) as info:
        server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert info.value.error_code == 1
    assert server.closed


def test_lean_and_plain_paths_agree_on_flow_control_state():
    lean, plain = Pair(lean=True), Pair(lean=False)
    for p in (lean, plain):
        sid = p.connect()
        p.client.send(sid, b"y" * 3_000_000)
        p.pump()
    for p in (lean, plain):
        assert p.server._h2.inbound_flow_control_window == lean.server._h2.inbound_flow_control_window
        assert p.server._h2._get_stream_by_id(1).inbound_flow_control_window == \
            lean.server._h2._get_stream_by_id(1).inbound_flow_control_window
        assert received(p.server_events, 1) == b"y" * 3_000_000


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_frame_size"):
        hbone.Settings(max_frame_size=1 << 25)
    with pytest.raises(ValueError, match="stream_window"):
        hbone.Settings(stream_window=10)


def test_padded_data_from_a_plain_h2_peer_reaches_a_lean_server():
    p = Pair(client_lean=False, server_lean=True)
    sid = p.connect()
    p.client._h2.send_data(sid, b"padded payload", pad_length=17)
    p.client._h2.send_data(sid, b"plain payload", end_stream=True)
    p.pump()
    assert received(p.server_events, sid) == b"padded payload" + b"plain payload"
    assert p.take_server(StreamEnded) == [StreamEnded(sid)]


def test_data_for_an_unknown_stream_is_a_protocol_violation_on_the_lean_path():
    p = Pair()
    sid = p.connect()
    frame = hbone_lean._DATA_HEADER.pack(0, 3, 0, 0, sid + 40) + b"abc"  # stream never opened
    with pytest.raises(hbone.ProtocolViolation):
        p.server.receive_data(frame)


@settings(max_examples=60, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=4096),
       messages=st.lists(st.binary(min_size=1, max_size=5000), min_size=1, max_size=6),
       leans=st.sampled_from([(True, True), (True, False), (False, True), (False, False)]))
def test_any_chunking_of_the_byte_stream_gives_the_same_result(chunk, messages, leans):
    p = Pair(client_lean=leans[0], server_lean=leans[1])
    sid = p.client.open("198.19.2.5:8080")
    p.pump(chunk)
    p.server.accept(p.take_server(ConnectRequested)[0].stream_id)
    p.pump(chunk)
    for m in messages:
        assert p.client.send(sid, m) == []
        p.pump(chunk)
    p.client.end(sid)
    p.pump(chunk)
    assert received(p.server_events, sid) == b"".join(messages)
    assert p.take_server(StreamEnded) == [StreamEnded(sid)]
    for m in reversed(messages):
        assert p.server.send(sid, m) == []
    p.server.end(sid)
    p.pump(chunk)
    assert received(p.client_events, sid) == b"".join(reversed(messages))
    assert p.take_client(StreamEnded) == [StreamEnded(sid)]


def _flow_state(conn) -> tuple:
    """Everything h2 keeps for flow control on the connection and on stream 1, and the stream's state."""
    h2conn = conn._h2
    inbound = h2conn._inbound_flow_control_window_manager
    stream = h2conn.streams.get(1)
    kept = None if stream is None else (
        stream.outbound_flow_control_window, stream._inbound_window_manager.current_window_size,
        stream._inbound_window_manager._bytes_processed, stream.state_machine.state, stream._actual_content_length)
    return h2conn.outbound_flow_control_window, inbound.current_window_size, inbound._bytes_processed, kept


# Small windows and frames, so that windows fill, WINDOW_UPDATEs are due and sends split into frames.
SMALL = hbone.Settings(stream_window=65536, connection_window=131072, max_frame_size=16384)


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["client", "server"]), st.integers(min_value=1, max_value=40_000),
                                st.booleans()), min_size=1, max_size=25),
       chunk=st.integers(min_value=1, max_value=20_000), small=st.booleans())
@example(steps=[("client", 16384, True), ("client", 16384, True)], chunk=20_000, small=True)  # exactly half a window
def test_lean_data_paths_write_the_same_bytes_and_keep_the_same_windows_as_h2(steps, chunk, small):
    """The lean send, receive and acknowledge shortcuts do exactly what h2 does: same wire bytes, same windows.

    Each step sends on one side; the other receives the bytes in `chunk`-sized reads and either consumes
    what arrived (credit back, maybe a WINDOW_UPDATE) or withholds it, so windows fill and sends wait."""
    chosen = SMALL if small else hbone.Settings()
    lean, plain = (Pair(chosen, chosen, lean=flag) for flag in (True, False))
    sid = lean.connect()
    assert plain.connect() == sid
    for side, size, consume in steps:
        wires = []
        for p in (lean, plain):
            sender = getattr(p, side)
            receiver, sink = (p.server, p.server_events) if side == "client" else (p.client, p.client_events)
            sender.send(sid, bytes([size & 0xFF]) * size)
            out = sender.data_to_send()
            before = len(sink)
            for i in range(0, len(out), chunk):
                sink.extend(receiver.receive_data(out[i:i + chunk]))
            arrived = sum(e.flow_controlled_length for e in sink[before:] if isinstance(e, DataReceived))
            if consume:
                receiver.consumed(sid, arrived)
            back = receiver.data_to_send()
            sender.receive_data(back)
            wires.append((out, back, received(sink, sid)))
        assert wires[0] == wires[1]
        assert _flow_state(lean.client) == _flow_state(plain.client)
        assert _flow_state(lean.server) == _flow_state(plain.server)
