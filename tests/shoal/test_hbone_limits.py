"""The HBONE core when a connection ends or a peer abuses it (issue 9, items 2 and 8), in memory.

A graceful GOAWAY lets the streams in flight finish while new ones go elsewhere; a peer that resets
streams as fast as it opens them (HTTP/2 rapid reset), sends huge header blocks or frames is cut off
before it costs more than a bounded amount; and nothing is kept per stream once a stream is over.
"""

from __future__ import annotations

import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from shoal import hbone, hbone_lean
from shoal.hbone import ConnectRequested, ConnectionClosed, DataReceived, StreamClosed, StreamEnded, StreamReset

from tests.shoal.test_hbone import Pair, received

NO_ERROR = h2.errors.ErrorCodes.NO_ERROR


# --- graceful GOAWAY (item 2) --------------------------------------------------------


@pytest.mark.parametrize("lean", [True, False])
def test_a_graceful_goaway_lets_open_streams_flow_both_ways_to_their_end(lean):
    p = Pair(lean=lean)
    first, second = p.connect(), p.connect()
    p.server.go_away("draining")
    p.pump()
    closed = p.take_client(ConnectionClosed)
    assert closed and all(c.error_code == NO_ERROR for c in closed)
    assert closed[-1].last_stream_id == second     # the second step names the last stream the client opened
    assert p.client.closed and p.server.drained_of_new_streams
    with pytest.raises(hbone.StreamLimitReached):
        p.client.open("198.19.2.5:8080")             # new tunnels go to a new connection
    # Both streams still carry bytes each way, and half-close as usual.
    for sid in (first, second):
        p.client.send(sid, b"up" * 1000)
        p.server.send(sid, b"down" * 1000)
    p.pump()
    assert received(p.server_events, first) == b"up" * 1000 and received(p.client_events, second) == b"down" * 1000
    for sid in (first, second):
        p.client.end(sid)
        p.server.end(sid)
    p.pump()
    assert {e.stream_id for e in p.client_events if isinstance(e, StreamClosed)} == {first, second}
    assert {e.stream_id for e in p.server_events if isinstance(e, StreamClosed)} == {first, second}
    assert not [e for e in p.client_events + p.server_events if isinstance(e, StreamReset)]


def test_a_stream_opened_while_the_goaway_was_on_its_way_is_still_served():
    p = Pair()
    first = p.connect()
    p.server.go_away()
    crossing = p.client.open("198.19.2.6:8080")    # sent before the client read the GOAWAY
    p.pump()
    [requested] = p.take_server(ConnectRequested)
    assert requested.stream_id == crossing
    assert p.take_client(ConnectionClosed)[-1].last_stream_id == crossing
    p.server.accept(crossing)
    p.pump()
    p.client.send(crossing, b"late")
    p.pump()
    assert received(p.server_events, crossing) == b"late"
    assert p.client.state_of(first) is hbone.TunnelState.OPEN


def test_a_stream_opened_after_the_final_goaway_is_refused_not_served():
    p = Pair()
    p.connect()
    p.server.go_away()
    p.pump()
    # A peer that ignores the GOAWAY (plain h2 here) opens another stream: it is refused, never processed.
    raw = p.client._h2
    raw.send_headers(raw.get_next_available_stream_id(), [(":method", "CONNECT"), (":authority", "198.19.2.5:1")])
    p.server_events.clear()
    frames = p.server.receive_data(raw.data_to_send())
    assert not [e for e in frames if isinstance(e, ConnectRequested)]
    assert b"\x00\x00\x04\x03" in p.server.data_to_send()  # an RST_STREAM frame header


def test_a_goaway_with_an_error_still_ends_everything():
    p = Pair()
    sid = p.connect()
    p.server.close(h2.errors.ErrorCodes.INTERNAL_ERROR, "broken")
    p.pump()
    [closed] = p.take_client(ConnectionClosed)
    assert closed.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
    assert p.client.send(sid, b"x") == [StreamReset(sid, h2.errors.ErrorCodes.STREAM_CLOSED), StreamClosed(sid)]


def test_a_peer_that_says_goaway_in_one_step_leaves_the_tunnels_it_took_open():
    plain = hbone_lean.GracefulH2(h2.config.H2Configuration(client_side=False))
    client = hbone.HboneClient()
    client.initiate()
    plain.initiate_connection()
    plain.receive_data(client.data_to_send())
    client.receive_data(plain.data_to_send())
    kept, refused = client.open("198.19.2.5:1"), client.open("198.19.2.5:2")
    plain.receive_data(client.data_to_send())
    plain.send_headers(kept, [(":status", "200")])
    client.receive_data(plain.data_to_send())
    plain.send_goaway(kept)  # one step, naming only the first
    events = client.receive_data(plain.data_to_send())
    assert events == [ConnectionClosed(NO_ERROR, kept), StreamReset(refused, h2.errors.ErrorCodes.REFUSED_STREAM),
                      StreamClosed(refused)]
    client.send(kept, b"still")
    assert [e.data for e in plain.receive_data(client.data_to_send()) if isinstance(e, h2.events.DataReceived)] \
        == [b"still"]


# --- rapid reset (item 8) -------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def rapid_pair(allowed=5, window=1.0):
    clock = Clock()
    p = Pair(server_settings=hbone.Settings(early_resets_allowed=allowed, early_reset_window=window))
    p.server._clock = clock
    p.server._early_reset_since = 0.0
    return p, clock


def open_and_reset(p, n):
    for _ in range(n):
        sid = p.client.open("198.19.2.5:8080")
        p.client.reset(sid)
    return p.client.data_to_send()


def test_rapid_reset_past_the_limit_is_told_to_calm_down_and_cut():
    p, _ = rapid_pair(allowed=5)
    p.server.receive_data(open_and_reset(p, 5))      # five is allowed
    with pytest.raises(hbone.ProtocolViolation) as caught:
        p.server.receive_data(open_and_reset(p, 1))
    assert caught.value.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    # What happened before the violation is still handed over: the reset and close of that stream.
    assert [type(e) for e in caught.value.events] == [ConnectRequested, StreamReset, StreamClosed]
    [closed] = [e for e in p.client.receive_data(p.server.data_to_send()) if isinstance(e, ConnectionClosed)]
    assert closed.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_resets_spread_over_windows_and_resets_after_an_answer_are_not_abuse():
    p, clock = rapid_pair(allowed=5, window=1.0)
    for _ in range(4):
        p.server.receive_data(open_and_reset(p, 5))
        clock.now += 1.0
    for _ in range(20):   # answered first: an app closing its connection, not an attack
        sid = p.connect()
        p.client.reset(sid)
        p.pump()
    assert not p.server.closed


# --- bounded buffers (item 8) --------------------------------------------------------------


def test_a_connect_with_huge_headers_is_refused_and_the_connection_alone_ends():
    p = Pair()
    raw = p.client._h2
    sid = raw.get_next_available_stream_id()
    # 20 KiB of headers: above our max_header_list_size (16 KiB), below h2's own default (64 KiB).
    raw.send_headers(sid, [(":method", "CONNECT"), (":authority", "198.19.2.5:8080"), ("x-big", "v" * (20 << 10))])
    with pytest.raises(hbone.ProtocolViolation):
        p.server.receive_data(p.client.data_to_send())
    assert p.server.closed and not p.server._tunnels


@pytest.mark.parametrize("lean", [True, False])
def test_h2_decodes_no_header_list_above_max_header_list_size(lean):
    # Small enough per block for the lean splitter, large once decoded (indexed repeats): h2's HPACK decoder.
    p = Pair(server_settings=hbone.Settings(max_header_list_size=4096), lean=lean)
    raw = p.client._h2
    sid = raw.get_next_available_stream_id()
    headers = [(":method", "CONNECT"), (":authority", "198.19.2.5:8080")] + [("x-a", "b" * 100)] * 100
    raw.send_headers(sid, headers)
    with pytest.raises(hbone.ProtocolViolation):
        p.server.receive_data(p.client.data_to_send())
    assert not p.server._tunnels


def test_continuation_frames_are_not_buffered_past_the_header_block_limit():
    p = Pair(server_settings=hbone.Settings(max_header_block=4096))
    fragment = b"\x00" * 1000
    wire = HeadersFrame(1, data=fragment).serialize()
    for _ in range(3):
        wire += ContinuationFrame(1, data=fragment).serialize()
    p.server.receive_data(wire)                               # 4000 bytes: still collected
    with pytest.raises(hbone.ProtocolViolation) as caught:
        p.server.receive_data(ContinuationFrame(1, data=fragment).serialize()[:9])  # the header is enough
    assert caught.value.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_a_frame_larger_than_our_max_is_refused_at_its_header():
    p = Pair()
    header = (2 << 20).to_bytes(3, "big") + b"\x08\x00\x00\x00\x00\x00"   # a 2 MiB unknown-type frame
    with pytest.raises(hbone.ProtocolViolation) as caught:
        p.server.receive_data(header)
    assert caught.value.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR


# --- nothing kept per stream (item 8) --------------------------------------------------------


@pytest.mark.parametrize("ending", ["half-closes", "resets"])
def test_ten_thousand_streams_leave_nothing_behind(ending):
    p = Pair(hold=True)
    for _ in range(10_000):
        sid = p.connect()
        p.server.attach(sid)
        p.client.attach(sid)
        p.client.send(sid, b"x")
        if ending == "half-closes":
            p.client.end(sid)
            p.server.end(sid)
        else:
            p.client.reset(sid)
        p.pump()
        p.client_events.clear()
        p.server_events.clear()
    for side in (p.client, p.server):
        assert side._tunnels == {} and side._blocked == {}
        assert side.open_streams == 0
        assert side._h2.streams == {}     # h2 forgets a closed stream once it counts open streams
        assert len(side._h2._closed_streams) <= h2.connection.H2Connection.MAX_CLOSED_STREAMS
