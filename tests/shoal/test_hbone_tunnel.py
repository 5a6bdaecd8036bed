"""Tunnel semantics of the sans-IO HBONE core, as playbooks: no socket, no event loop.

A playbook joins a client and a server in memory and drives one tunnel (stream 1):

    assert (Playbook()
            >> client.send(b"request")                        # a command on one end
            << server.saw(DataReceived(1, b"request", 7)))    # what each end then saw, in order

After each `>>` the bytes cross both ways until nothing moves; the events the
command returned and those each end received must be exactly the `<<` that
follow. A command that raises gives `<< end.raised(Error)`, and one that
returns a value (a query, or open()'s stream id) `<< end.returned(value)`.
WindowOpened and SettingsReceived are left out unless a playbook asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st

from shoal import hbone
from shoal.hbone import (
    TRANSITIONS, ConnectAccepted, ConnectRefused, ConnectRequested, DataReceived, HboneClient, HboneServer,
    ReadingPaused, ReadingResumed, SettingsReceived, StreamClosed, StreamEnded, StreamNotOpen, StreamReset,
    TunnelInput, TunnelState, WindowOpened,
)

SID = 1  # the playbook's tunnel: the client's first stream
AUTHORITY = "198.19.2.5:8080"
SMALL = hbone.Settings(stream_window=65535, connection_window=1 << 20, max_frame_size=16384)
CONNECTION_COMMANDS = {"open", "transport_paused", "transport_resumed", "abandon_streams", "close"}


@dataclass(frozen=True)
class Do:
    end: str
    command: str
    args: tuple


@dataclass(frozen=True)
class Saw:
    end: str
    event: object


@dataclass(frozen=True)
class SawBytes:
    """DataReceived events at one end, however framed, adding up to `count` bytes."""

    end: str
    count: int


class End:
    """One end of the tunnel, naming commands (`client.send(b"x")`) and what it saw (`client.saw(event)`).

    Commands are the connection's own methods; stream commands get the stream id filled in."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, command: str):
        if command.startswith("_"):
            raise AttributeError(command)
        return lambda *args: Do(self.name, command, args)

    def saw(self, event) -> Saw:
        return Saw(self.name, event)

    def saw_bytes(self, count: int) -> SawBytes:
        return SawBytes(self.name, count)

    def raised(self, error: type) -> Saw:
        return Saw(self.name, error)

    def returned(self, value) -> Saw:
        return Saw(self.name, ("returned", value))


client, server = End("client"), End("server")


class Playbook:
    def __init__(self, settings: hbone.Settings = hbone.Settings(), *, hold: bool = False,
                 ignore: tuple[type, ...] = (WindowOpened, SettingsReceived)) -> None:
        self.ends = {"client": HboneClient(settings, hold_until_attached=hold),
                     "server": HboneServer(settings, hold_until_attached=hold)}
        self.ignore = ignore
        self.seen: list[Saw] = []
        for connection in self.ends.values():
            connection.initiate()
        self._cross()
        self.seen.clear()

    @classmethod
    def connected(cls, settings: hbone.Settings = hbone.Settings(), **options) -> "Playbook":
        """A playbook whose tunnel is already open (the opening is played in its own test)."""
        book = cls(settings, **options)
        book >> client.open(AUTHORITY) << client.returned(SID) << server.saw(ConnectRequested(SID, AUTHORITY))
        book >> server.accept() << client.saw(ConnectAccepted(SID))
        return book

    def __rshift__(self, step: Do) -> "Playbook":
        self._expect_nothing_more()
        method = getattr(self.ends[step.end], step.command)
        args = step.args if step.command in CONNECTION_COMMANDS else (SID, *step.args)
        try:
            result = method(*args)
        except hbone.HboneError as e:
            self.seen.append(Saw(step.end, type(e)))
        else:
            if isinstance(result, list):
                self.seen += [Saw(step.end, event) for event in result]
            elif result is not None:
                self.seen.append(Saw(step.end, ("returned", result)))
        self._cross()
        return self

    def __lshift__(self, expected: Saw | SawBytes) -> "Playbook":
        if isinstance(expected, SawBytes):
            total = 0
            while total < expected.count:
                got = self._next()
                assert got.end == expected.end and isinstance(got.event, DataReceived), \
                    f"expected {expected.count - total} more bytes at the {expected.end}, got {got}"
                total += len(got.event.data)
            assert total == expected.count, f"{total} bytes at the {expected.end}, expected {expected.count}"
            return self
        got = self._next()
        assert got == expected, f"expected {expected}, got {got}; then {self.seen}"
        return self

    def __bool__(self) -> bool:
        self._expect_nothing_more()
        return True

    def _next(self) -> Saw:
        while self.seen and isinstance(self.seen[0].event, self.ignore):
            self.seen.pop(0)
        assert self.seen, "expected more, nothing else happened"
        return self.seen.pop(0)

    def _expect_nothing_more(self) -> None:
        left = [s for s in self.seen if not isinstance(s.event, self.ignore)]
        assert not left, f"not expected: {left}"
        self.seen.clear()

    def _cross(self) -> None:
        """Moves bytes both ways until neither end has any to send."""
        while True:
            moved = False
            for sender, receiver in (("client", "server"), ("server", "client")):
                data = self.ends[sender].data_to_send()
                if data:
                    moved = True
                    self.seen += [Saw(receiver, e) for e in self.ends[receiver].receive_data(data)]
            if not moved:
                return


# --- opening -------------------------------------------------------------------------


def test_open_accept_and_the_states_on_both_ends():
    assert (Playbook()
            >> client.open(AUTHORITY)
            << client.returned(SID)
            << server.saw(ConnectRequested(SID, AUTHORITY))
            >> server.state_of() << server.returned(TunnelState.CONNECTING)
            >> server.send(b"too early") << server.raised(StreamNotOpen)
            >> server.accept()
            << client.saw(ConnectAccepted(SID))
            >> client.state_of() << client.returned(TunnelState.OPEN)
            >> server.state_of() << server.returned(TunnelState.OPEN))


def test_refusal_closes_the_stream_on_both_ends():
    assert (Playbook()
            >> client.open(AUTHORITY) << client.returned(SID) << server.saw(ConnectRequested(SID, AUTHORITY))
            >> server.refuse(403, "denied by policy")
            << server.saw(StreamClosed(SID))
            << client.saw(ConnectRefused(SID, 403, "denied by policy"))
            << client.saw(StreamClosed(SID))
            >> client.send(b"x") << client.raised(StreamNotOpen))


# --- half-close each way -----------------------------------------------------------------


def test_client_half_closes_first_and_the_server_still_writes():
    assert (Playbook.connected()
            >> client.send(b"request")
            << server.saw(DataReceived(SID, b"request", 7))
            >> client.end()
            << server.saw(StreamEnded(SID))
            >> client.state_of() << client.returned(TunnelState.LOCAL_ENDED)
            >> server.state_of() << server.returned(TunnelState.REMOTE_ENDED)
            >> client.send(b"more") << client.raised(StreamNotOpen)
            >> server.send(b"response")
            << client.saw(DataReceived(SID, b"response", 8))
            >> server.end()
            << server.saw(StreamClosed(SID))  # its own EOF finished the stream: both ends are done
            << client.saw(StreamEnded(SID))
            << client.saw(StreamClosed(SID))
            >> server.state_of()              # forgotten: no state left behind
            >> client.state_of())


def test_server_half_closes_first_and_the_client_still_writes():
    assert (Playbook.connected()
            >> server.send(b"banner")
            << client.saw(DataReceived(SID, b"banner", 6))
            >> server.end()
            << client.saw(StreamEnded(SID))
            >> client.send(b"reply")
            << server.saw(DataReceived(SID, b"reply", 5))
            >> client.end()
            << client.saw(StreamClosed(SID))
            << server.saw(StreamEnded(SID))
            << server.saw(StreamClosed(SID)))


def test_a_second_eof_is_refused_by_the_table():
    assert (Playbook.connected()
            >> client.end() << server.saw(StreamEnded(SID))
            >> client.end() << client.raised(StreamNotOpen))


# --- reset each way ----------------------------------------------------------------------


def test_client_resets_and_the_server_aborts():
    assert (Playbook.connected()
            >> client.send(b"partial")
            << server.saw(DataReceived(SID, b"partial", 7))
            >> client.reset()
            << client.saw(StreamClosed(SID))
            << server.saw(StreamReset(SID, 0xA))  # CONNECT_ERROR: the app's TCP connection was reset
            << server.saw(StreamClosed(SID))
            >> server.send(b"late") << server.raised(StreamNotOpen)
            >> client.reset())  # a stream already over: nothing happens


def test_server_resets_after_the_client_half_closed():
    assert (Playbook.connected()
            >> client.end() << server.saw(StreamEnded(SID))
            >> server.reset(0x8)
            << server.saw(StreamClosed(SID))
            << client.saw(StreamReset(SID, 0x8))
            << client.saw(StreamClosed(SID)))


def test_resets_that_cross_end_each_side_once():
    book = Playbook.connected()
    # Both resets are queued before either crosses: each end sees only its own end of the stream.
    assert book.ends["server"].reset(SID) == [StreamClosed(SID)]
    assert (book
            >> client.reset()
            << client.saw(StreamClosed(SID)))


# --- windows and a slow reader -----------------------------------------------------------


def test_a_window_that_fills_holds_the_rest_and_the_eof_behind_it():
    assert (Playbook.connected(SMALL)
            >> client.send(b"x" * 100_000)
            << client.saw(ReadingPaused(SID))   # bytes wait for window: stop reading the app
            << server.saw_bytes(65535)          # exactly one stream window, then the sender stops
            >> client.unsent() << client.returned(100_000 - 65535)
            >> client.end()                     # the EOF waits behind the unsent bytes
            >> client.state_of() << client.returned(TunnelState.DRAINING)
            >> server.consumed(65535)           # the reader wrote it all onward: the window reopens
            << client.saw(ReadingResumed(SID))
            << server.saw_bytes(100_000 - 65535)
            << server.saw(StreamEnded(SID))     # END_STREAM after the last byte, never before
            >> client.state_of() << client.returned(TunnelState.LOCAL_ENDED))


def test_a_slow_reader_withholds_credit_until_it_drains():
    assert (Playbook.connected(SMALL)
            >> client.send(b"y" * 200_000)
            << client.saw(ReadingPaused(SID))
            << server.saw_bytes(65535)
            >> server.pause_receiving()          # the app's side is full
            >> server.consumed(65535)            # written onward anyway, into the full buffer...
            >> client.unsent() << client.returned(200_000 - 65535)  # ...but no credit went back
            >> server.resume_receiving()         # drained: the withheld credit goes back at once
            << server.saw_bytes(65535)
            >> client.unsent() << client.returned(200_000 - 2 * 65535))


def test_window_updates_are_events_too():
    assert (Playbook.connected(SMALL, ignore=(SettingsReceived,))
            >> client.send(b"z" * 70_000)
            << client.saw(ReadingPaused(SID))
            << server.saw_bytes(65535)
            >> server.consumed(65535)
            << client.saw(WindowOpened(SID))
            << client.saw(ReadingResumed(SID))
            << server.saw_bytes(70_000 - 65535))


def test_a_full_transport_pauses_reading_until_it_drains_and_the_stream_has_nothing_waiting():
    assert (Playbook.connected(SMALL)
            >> client.transport_paused()
            << client.saw(ReadingPaused(SID))
            >> client.transport_resumed()
            << client.saw(ReadingResumed(SID))
            >> client.send(b"w" * 70_000)
            << client.saw(ReadingPaused(SID))
            << server.saw_bytes(65535)
            >> client.transport_paused()
            >> client.transport_resumed()        # still bytes waiting for window: stay paused
            >> server.consumed(65535)
            << client.saw(ReadingResumed(SID))
            << server.saw_bytes(70_000 - 65535))


# --- before the reader is attached -------------------------------------------------------


def test_what_arrives_before_attach_waits_uncredited_and_in_order():
    assert (Playbook.connected(SMALL, hold=True)
            >> server.attach()
            >> server.send(b"banner")            # a server that speaks first, before the client's relay
            >> server.end()
            >> client.attach()
            << client.saw(DataReceived(SID, b"banner", 6))
            << client.saw(StreamEnded(SID)))


def test_both_ends_close_before_the_reader_attaches_and_nothing_is_lost():
    assert (Playbook.connected(hold=True)
            >> server.attach()
            >> server.send(b"answer")
            >> server.end()
            >> client.end()                      # the client's app had half-closed already
            << server.saw(StreamEnded(SID))
            << server.saw(StreamClosed(SID))
            >> client.attach()
            << client.saw(DataReceived(SID, b"answer", 6))
            << client.saw(StreamEnded(SID))
            << client.saw(StreamClosed(SID))
            >> client.state_of())


def test_a_stream_closed_before_its_reader_came_can_still_be_dropped():
    assert (Playbook.connected(hold=True)
            >> server.attach()
            >> server.send(b"answer")
            >> server.end()
            >> client.end()
            << server.saw(StreamEnded(SID))
            << server.saw(StreamClosed(SID))
            >> client.reset()                    # the client gave up before attaching: nothing goes out
            << client.saw(StreamClosed(SID))
            >> client.state_of())


def test_a_reset_before_attach_drops_the_held_bytes_at_once():
    assert (Playbook.connected(hold=True)
            >> server.attach()
            >> server.send(b"never read")
            >> server.reset()
            << server.saw(StreamClosed(SID))
            << client.saw(StreamReset(SID, 0xA))  # not held: the driver must know at once
            << client.saw(StreamClosed(SID))
            >> client.attach() << client.raised(StreamNotOpen))


def test_a_stream_opened_while_the_transport_is_paused_starts_paused():
    assert (Playbook(hold=True)
            >> client.transport_paused()
            >> client.open(AUTHORITY) << client.returned(SID) << server.saw(ConnectRequested(SID, AUTHORITY))
            >> server.accept() << client.saw(ConnectAccepted(SID))
            >> client.attach()
            << client.saw(ReadingPaused(SID)))


# --- the table, and the connection going away ----------------------------------------------


def test_every_live_state_can_be_reset_and_final_states_take_nothing():
    live = {state for state, _ in TRANSITIONS} - {TunnelState.CLOSED, TunnelState.RESET}
    for state in live:
        assert TRANSITIONS[state, TunnelInput.SEND_RESET] is TunnelState.RESET
        assert TRANSITIONS[state, TunnelInput.RECEIVE_RESET] is TunnelState.RESET
    assert not [key for key in TRANSITIONS if key[0] in (TunnelState.CLOSED, TunnelState.RESET)]


def test_a_command_outside_the_table_names_the_state_and_the_command():
    book = Playbook.connected()
    book >> client.end() << server.saw(StreamEnded(SID))
    with pytest.raises(StreamNotOpen, match="stream 1 is local ended: cannot write") as info:
        book.ends["client"].send(SID, b"x")
    assert (info.value.state, info.value.attempted) == (TunnelState.LOCAL_ENDED, TunnelInput.WRITE)


def test_a_lost_connection_resets_every_tunnel():
    assert (Playbook.connected()
            >> client.abandon_streams()
            << client.saw(StreamReset(SID, 0xA))
            << client.saw(StreamClosed(SID)))


def test_a_connect_that_ends_its_own_stream_is_refused_and_frees_its_slot():
    book = Playbook()
    # A client that half-closes in the CONNECT itself (ours never does), written with h2 directly.
    book.ends["client"]._h2.send_headers(SID, [(":method", "CONNECT"), (":authority", AUTHORITY)], end_stream=True)
    assert book >> client.state_of()  # the bytes cross; the server asks its app nothing
    assert book.ends["server"].open_streams == 0


# --- any chunking, any reader ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=70_000),
       writes=st.lists(st.integers(min_value=1, max_value=50_000), min_size=1, max_size=8),
       reads=st.lists(st.tuples(st.integers(min_value=1, max_value=40_000), st.booleans()), min_size=1, max_size=20),
       lean=st.booleans())
def test_any_chunking_and_any_slow_reader_deliver_every_byte_in_order_with_the_eof_last(chunk, writes, reads, lean):
    """The client writes past its window and half-closes; the server consumes in arbitrary bites, pausing at
    random; bytes cross in arbitrary pieces. The client never runs more than a window ahead of the credit;
    everything arrives once, in order, END_STREAM after it; the client's reading signals alternate."""
    sender, receiver = HboneClient(SMALL, lean=lean), HboneServer(SMALL, lean=lean)
    sent_events: list = []
    received_events: list = []

    def cross() -> None:
        while True:
            moved = False
            for source, target, sink in ((sender, receiver, received_events), (receiver, sender, sent_events)):
                data = source.data_to_send()
                moved = moved or bool(data)
                for i in range(0, len(data), chunk):
                    sink.extend(target.receive_data(data[i:i + chunk]))
            if not moved:
                return

    sender.initiate()
    receiver.initiate()
    cross()
    sid = sender.open(AUTHORITY)
    cross()
    receiver.accept(sid)
    cross()
    payload = b"".join(bytes([n % 251]) * size for n, size in enumerate(writes))
    at = 0
    for size in writes:
        sent_events += sender.send(sid, payload[at:at + size])
        at += size
    sent_events += sender.end(sid)
    cross()
    counted = owed = credited = withheld = 0

    def read(bite: int, paused: bool) -> None:
        """The server's app takes up to `bite` of what arrived, its side full (paused) or not."""
        nonlocal counted, owed, credited, withheld
        owed += sum(e.flow_controlled_length for e in received_events[counted:] if isinstance(e, DataReceived))
        counted = len(received_events)
        if paused:
            receiver.pause_receiving(sid)
        else:
            receiver.resume_receiving(sid)
            credited, withheld = credited + withheld, 0
        taken = min(bite, owed)
        receiver.consumed(sid, taken)
        owed -= taken
        if paused:
            withheld += taken
        else:
            credited += taken
        cross()
        arrived = sum(e.flow_controlled_length for e in received_events if isinstance(e, DataReceived))
        assert arrived <= credited + SMALL.stream_window  # never more than one window beyond the credit given

    for bite, paused in reads:
        read(bite, paused)
    for _ in range(100):  # then a reader that keeps up, until the end arrives
        if any(isinstance(e, StreamEnded) for e in received_events):
            break
        read(1 << 30, False)
    got = [e for e in received_events if isinstance(e, (DataReceived, StreamEnded))]
    assert b"".join(e.data for e in got if isinstance(e, DataReceived)) == payload
    assert got[-1] == StreamEnded(sid) and sum(isinstance(e, StreamEnded) for e in got) == 1
    signals = [e for e in sent_events if isinstance(e, (ReadingPaused, ReadingResumed))]
    assert all(type(a) is not type(b) for a, b in zip(signals, signals[1:]))
    assert not signals or isinstance(signals[-1], ReadingResumed)
    assert sender.unsent(sid) == 0 and sender.state_of(sid) is TunnelState.LOCAL_ENDED
