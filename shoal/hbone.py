"""HBONE, sans-IO: HTTP/2 CONNECT tunnels over one connection, on `h2`.

HBONE carries an app's TCP connection as the DATA of one HTTP/2 `CONNECT`
stream (`:authority` = the target `ip:port`) inside an mTLS connection. This
module is the protocol core: bytes and commands in, events out, and
`data_to_send()` hands over the bytes to write. No socket, no event loop, no
TLS.

    client = HboneClient(); client.initiate()
    sid = client.open("198.19.2.5:8080")
    server.receive_data(client.data_to_send())  -> [ConnectRequested(sid, ...)]
    server.accept(sid); client.receive_data(server.data_to_send()) -> [ConnectAccepted(sid)]

Events are past tense (what happened), commands imperative methods. What the
peer did comes out of `receive_data()`; a command that changes a tunnel
returns the events that change caused (`send()` -> `[ReadingPaused(sid)]`).

Where each piece lives:
- here: the HTTP/2 connection, and each CONNECT stream's tunnel semantics as
  a state machine, `TRANSITIONS`, a table of (state, input) -> next state.
  A command outside the table raises `StreamNotOpen`; a peer's frame outside
  it resets that stream alone;
- `shoal.hbone_lean`: the fast DATA paths under h2;
- `shoal.hbone_io`: the asyncio driver. It maps these events to transport
  calls (write, write_eof, abort, pause_reading, resume_reading) and the
  transports' callbacks to these commands, and keeps no tunnel state;
- `shoal.hbone_relay`: the relay between two sides, and the TCP side.

The tunnel semantics, each owned here:
- Half-close. `end()` is the app's EOF; END_STREAM follows the bytes still
  waiting for window (state DRAINING). `StreamEnded` is the peer's EOF. A
  stream is over, `StreamClosed`, once both ends are done or on a reset
  either way (`reset()` ours, `StreamReset` theirs).
- Sending. `send()` takes all the bytes. What the windows do not take waits
  in the stream and goes out as windows open; meanwhile `ReadingPaused` tells
  the driver to stop reading the app, and `ReadingResumed` (once the stream's
  bytes are out and the transport is not paused) to go on.
- Receiving. `DataReceived` does not reopen the window: the driver calls
  `consumed()` once it has written the bytes onward, and `pause_receiving()`
  while the app's side is full, during which that credit is withheld. A slow
  reader therefore stops the peer after one stream window.
- Attaching. With `hold_until_attached`, what arrives before the driver has a
  reader for the stream waits here, uncredited, until `attach()` returns it.

Shutting down. `go_away()` is the graceful GOAWAY of a drain: the peer
opens no new streams here, and every stream it opened keeps flowing to its
end (two steps, RFC 9113 6.8: GOAWAY(2^31-1) and a PING, then GOAWAY(last
stream opened) once the PING's answer shows the peer saw the first, so no
stream is refused in the race). A GOAWAY received with NO_ERROR is
`ConnectionClosed`: no new streams from us, ours above its last_stream_id are
reset, the rest go on. `close()` and a GOAWAY with an error end everything.

Abuse. A server counts the streams its peer resets before they were answered
(HTTP/2 "rapid reset", CVE-2023-44487); past `Settings.early_resets_allowed`
within `early_reset_window` it sends GOAWAY(ENHANCE_YOUR_CALM) and raises
`ProtocolViolation`. The lean receive path refuses a frame larger than our
max frame size at its header, and a header block (HEADERS and CONTINUATION)
larger than `Settings.max_header_block`, before buffering it; h2's HPACK
decoder enforces `max_header_list_size` on what it decodes.

Every error is an `HboneError` (a `ShoalError`); a `ProtocolViolation`
carries the HTTP/2 error code and means the connection is finished (a GOAWAY
is queued); the events that came before it are in its `events`.

Throughput: with `lean=True` (the default) DATA frames bypass h2's generic
frame handling on both sides, keeping h2's flow-control state exact; see
`shoal.hbone_lean`. `lean=False` is h2 as shipped (tests compare the two),
but for its graceful GOAWAY (`hbone_lean.GracefulH2`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from shoal.contracts import HBONE_PORT as PORT
from shoal.errors import ShoalError
from shoal.hbone_lean import DataSplitter, GracefulH2, LeanH2

ALPN = "h2"
LARGEST_FRAME = (1 << 24) - 1
LARGEST_WINDOW = (1 << 31) - 1
LARGEST_STREAM_ID = (1 << 31) - 1
_DRAIN_PING = b"shoal-gw"  # the PING of a graceful GOAWAY: its answer means the peer saw the first GOAWAY
_ERRORS = h2.errors.ErrorCodes


@dataclass(frozen=True)
class Settings:
    """HTTP/2 settings tuned for bulk TCP tunnels (defaults named once, here)."""

    # 1 MiB frames: fewer frames (and fewer Python calls) per byte.
    max_frame_size: int = 1 << 20
    # Per-stream window: how far a peer may run ahead of a slow reader.
    stream_window: int = 4 << 20
    # Connection window: shared by all streams, large so one stream cannot starve another.
    connection_window: int = 64 << 20
    max_concurrent_streams: int = 100
    max_header_list_size: int = 16 << 10
    # A header block (HEADERS + CONTINUATION, still HPACK-compressed) larger than this is refused before
    # it is buffered whole; compressed, a block that decodes within max_header_list_size is no larger.
    max_header_block: int = 32 << 10
    # Rapid reset (CVE-2023-44487): streams the peer may reset before they were answered, per window.
    early_resets_allowed: int = 200
    early_reset_window: float = 10.0

    def __post_init__(self) -> None:
        if not 16384 <= self.max_frame_size <= LARGEST_FRAME:
            raise ValueError(f"max_frame_size {self.max_frame_size} must be within 16384..{LARGEST_FRAME}")
        for name in ("stream_window", "connection_window"):
            value = getattr(self, name)
            if not 65535 <= value <= LARGEST_WINDOW:
                raise ValueError(f"{name} {value} must be within 65535..{LARGEST_WINDOW}")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if self.max_header_block < 1024 or self.early_resets_allowed < 1 or self.early_reset_window <= 0:
            raise ValueError("max_header_block must be at least 1024, early_resets_allowed at least 1 and "
                             "early_reset_window positive")


# --- errors ----------------------------------------------------------------


class HboneError(ShoalError):
    """Anything that went wrong in HBONE."""


class ProtocolViolation(HboneError):
    """The peer broke HTTP/2 or HBONE; the whole connection is closed (GOAWAY queued)."""

    def __init__(self, message: str, error_code: int = _ERRORS.PROTOCOL_ERROR, events: "tuple[Event, ...]" = ()):
        super().__init__(message)
        self.error_code = int(error_code)
        self.events = events  # what happened before the violation, still to be carried out


class StreamLimitReached(HboneError):
    """The peer allows no more concurrent streams on this connection; open another connection."""


class StreamNotOpen(HboneError):
    """A command the stream's state does not allow: it is half-closed by us, reset, closed or never opened."""

    def __init__(self, message: str, stream_id: int = 0, state: "TunnelState | None" = None,
                 attempted: "TunnelInput | None" = None) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.state = state
        self.attempted = attempted


class BadAuthority(HboneError):
    """A CONNECT target that is not `ip:port`."""


# --- events ----------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class ConnectRequested(Event):
    """(server) The client asked for a tunnel to `authority`; answer with accept() or refuse()."""

    stream_id: int
    authority: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ConnectAccepted(Event):
    """(client) The server answered 200: the tunnel is open."""

    stream_id: int


@dataclass(frozen=True)
class ConnectRefused(Event):
    """(client) The server answered with a non-200 status; StreamClosed follows."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True)
class DataReceived(Event):
    """Tunnel bytes from the peer: write them onward, then call consumed(stream_id, flow_controlled_length)."""

    stream_id: int
    data: bytes
    # What to pass to consumed() once the data has been handed on (padding included).
    flow_controlled_length: int


@dataclass(frozen=True)
class StreamEnded(Event):
    """The peer half-closed its side of the tunnel (END_STREAM); it still reads."""

    stream_id: int


@dataclass(frozen=True)
class StreamReset(Event):
    """The peer reset the tunnel (RST_STREAM), or the connection under it is gone: abort the app's connection."""

    stream_id: int
    error_code: int


@dataclass(frozen=True)
class StreamClosed(Event):
    """The tunnel is over: both ends half-closed, or reset, or refused. Always a stream's last event."""

    stream_id: int


@dataclass(frozen=True)
class ReadingPaused(Event):
    """The stream holds bytes the windows did not take (or the transport is full): stop reading the app."""

    stream_id: int


@dataclass(frozen=True)
class ReadingResumed(Event):
    """The stream's waiting bytes went out and the transport takes more: read the app again."""

    stream_id: int


@dataclass(frozen=True)
class WindowOpened(Event):
    """Send capacity grew, on one stream or (stream_id 0) on the whole connection; waiting bytes went out."""

    stream_id: int


@dataclass(frozen=True)
class SettingsReceived(Event):
    """The peer's settings arrived or changed (e.g. its max concurrent streams)."""

    max_concurrent_streams: int


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The peer sent GOAWAY: no new streams, and our streams above last_stream_id are reset (StreamReset
    follows). With NO_ERROR (a drain) the others go on to their end; with an error nothing more is sent,
    so a stream that writes later is reset then."""

    error_code: int
    last_stream_id: int
    reason: str = ""


# --- the tunnel state machine ------------------------------------------------


class TunnelState(enum.StrEnum):
    """Where one CONNECT stream is, as a tunnel carrying a TCP connection."""

    CONNECTING = "connecting"          # CONNECT sent or received, not answered yet
    OPEN = "open"                      # bytes flow both ways
    DRAINING = "draining"              # the app half-closed; END_STREAM waits for the bytes before it
    LOCAL_ENDED = "local ended"        # our END_STREAM is out; the peer still sends
    REMOTE_ENDED = "remote ended"      # the peer's END_STREAM arrived; we still send
    REMOTE_ENDED_DRAINING = "remote ended, draining"  # the peer is done, our END_STREAM still waits
    CLOSED = "closed"                  # END_STREAM both ways, or refused
    RESET = "reset"                    # RST_STREAM either way


class TunnelInput(enum.StrEnum):
    """What can happen to a tunnel: our commands, and the peer's frames."""

    ACCEPT = "accept"                          # the 200 went out (server) or came in (client)
    REFUSE = "refuse"                          # a non-200 answer went out or came in
    WRITE = "write"                            # the app wrote bytes: send()
    WRITE_EOF = "write EOF"                    # the app half-closed: end()
    SEND_END_STREAM = "send END_STREAM"        # the bytes before the EOF are out
    RECEIVE_DATA = "receive DATA"
    RECEIVE_END_STREAM = "receive END_STREAM"
    SEND_RESET = "send RST_STREAM"
    RECEIVE_RESET = "receive RST_STREAM"


_LIVE = (TunnelState.CONNECTING, TunnelState.OPEN, TunnelState.DRAINING, TunnelState.LOCAL_ENDED,
         TunnelState.REMOTE_ENDED, TunnelState.REMOTE_ENDED_DRAINING)

TRANSITIONS: dict[tuple[TunnelState, TunnelInput], TunnelState] = {
    (TunnelState.CONNECTING, TunnelInput.ACCEPT): TunnelState.OPEN,
    (TunnelState.CONNECTING, TunnelInput.REFUSE): TunnelState.CLOSED,
    (TunnelState.CONNECTING, TunnelInput.RECEIVE_DATA): TunnelState.CONNECTING,  # early bytes, kept for the reader
    (TunnelState.OPEN, TunnelInput.WRITE): TunnelState.OPEN,
    (TunnelState.OPEN, TunnelInput.WRITE_EOF): TunnelState.DRAINING,
    (TunnelState.OPEN, TunnelInput.RECEIVE_DATA): TunnelState.OPEN,
    (TunnelState.OPEN, TunnelInput.RECEIVE_END_STREAM): TunnelState.REMOTE_ENDED,
    (TunnelState.DRAINING, TunnelInput.SEND_END_STREAM): TunnelState.LOCAL_ENDED,
    (TunnelState.DRAINING, TunnelInput.RECEIVE_DATA): TunnelState.DRAINING,
    (TunnelState.DRAINING, TunnelInput.RECEIVE_END_STREAM): TunnelState.REMOTE_ENDED_DRAINING,
    (TunnelState.LOCAL_ENDED, TunnelInput.RECEIVE_DATA): TunnelState.LOCAL_ENDED,
    (TunnelState.LOCAL_ENDED, TunnelInput.RECEIVE_END_STREAM): TunnelState.CLOSED,
    (TunnelState.REMOTE_ENDED, TunnelInput.WRITE): TunnelState.REMOTE_ENDED,
    (TunnelState.REMOTE_ENDED, TunnelInput.WRITE_EOF): TunnelState.REMOTE_ENDED_DRAINING,
    (TunnelState.REMOTE_ENDED_DRAINING, TunnelInput.SEND_END_STREAM): TunnelState.CLOSED,
    **{(state, reset): TunnelState.RESET
       for state in _LIVE for reset in (TunnelInput.SEND_RESET, TunnelInput.RECEIVE_RESET)},
}

# The two inputs of the data paths change no state; these sets, read off the table, spare a lookup per chunk.
_WRITABLE = frozenset(state for state, step in TRANSITIONS if step is TunnelInput.WRITE)
_RECEIVABLE = frozenset(state for state, step in TRANSITIONS if step is TunnelInput.RECEIVE_DATA)
_DRAINING = frozenset((TunnelState.DRAINING, TunnelState.REMOTE_ENDED_DRAINING))


class _Tunnel:
    """One CONNECT stream's tunnel state; the connection owns it and forgets it at StreamClosed."""

    __slots__ = ("stream_id", "state", "unsent", "reading", "receiving_paused", "withheld", "held")

    def __init__(self, stream_id: int, reading: bool, hold: bool) -> None:
        self.stream_id = stream_id
        self.state = TunnelState.CONNECTING
        self.unsent = bytearray()         # written by the app, not yet taken by the windows
        self.reading = reading            # what the driver was last told: may it read the app?
        self.receiving_paused = False     # the app's side is full: credit for consumed bytes is withheld
        self.withheld = 0                 # that credit, returned on resume_receiving()
        self.held: list[Event] | None = [] if hold else None  # events kept until attach(); None once attached

    def following(self, step: TunnelInput) -> TunnelState:
        """The state `step` leads to, per TRANSITIONS; StreamNotOpen if the table has none."""
        state = TRANSITIONS.get((self.state, step))
        if state is None:
            raise self.not_allowed(step)
        return state

    def move(self, step: TunnelInput) -> None:
        self.state = self.following(step)

    def not_allowed(self, step: TunnelInput) -> StreamNotOpen:
        message = f"stream {self.stream_id} is {self.state}: cannot {step}"
        return StreamNotOpen(message, self.stream_id, self.state, step)

    def held_credit(self) -> int:
        return sum(e.flow_controlled_length for e in self.held or () if e.__class__ is DataReceived)


def parse_authority(authority: str) -> tuple[str, int]:
    """`ip:port` (or `[v6]:port`) into (ip, port); BadAuthority otherwise."""
    import ipaddress

    host, sep, port = authority.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise BadAuthority(f"CONNECT authority {authority!r} is not ip:port")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BadAuthority(f"CONNECT authority {authority!r} does not name an IP address") from None
    # RFC 3986 3.2.2: an IPv6 address is bracketed, and only it (else "fd73::5:80" could be either of two).
    if bracketed != (address.version == 6) or getattr(address, "scope_id", None):
        raise BadAuthority(f"CONNECT authority {authority!r}: write an IPv6 address as [addr]:port, an IPv4 one "
                           "without brackets, neither with a zone")
    return host, int(port)


# --- the connection ----------------------------------------------------------


class HboneConnection:
    """What client and server share: the HTTP/2 connection and its tunnels."""

    client_side: bool

    def __init__(self, settings: Settings = Settings(), *, lean: bool = True,
                 hold_until_attached: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        config = h2.config.H2Configuration(client_side=self.client_side, header_encoding="utf-8")
        self._h2 = (LeanH2 if lean else GracefulH2)(config=config)
        self.lean = lean
        self._splitter = DataSplitter(self._h2, settings.max_header_block) if lean else None
        # A relay attaches the far side of a stream only after it opened: keep what arrives until then.
        self.hold_until_attached = hold_until_attached
        self.closed = False           # GOAWAY sent or received: no new streams
        self._ended = False           # h2 is closed: nothing more is sent
        self._going_away = False      # our graceful GOAWAY's first step is out, the PING not yet answered
        self._last_served: int | None = None  # its second step: the peer's streams above this are refused
        self._clock = clock
        self._early_resets = 0
        self._early_reset_since = clock()
        self._tunnels: dict[int, _Tunnel] = {}
        self._blocked: dict[int, _Tunnel] = {}   # tunnels with unsent bytes, in the order they blocked
        self._transport_paused = False

    # commands: the connection ---------------------------------------------------

    def initiate(self) -> None:
        """Queues the preface and our settings; call once, first."""
        s = self.settings
        self._h2.local_settings = h2.settings.Settings(client=self.client_side, initial_values={
            h2.settings.SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        # h2 reads these once, in its constructor (and again only on settings it sees acknowledged as
        # changed); the settings above replace its defaults, so its limits must follow them here.
        self._h2.max_inbound_frame_size = s.max_frame_size
        self._h2.decoder.max_header_list_size = s.max_header_list_size
        self._h2.initiate_connection()
        grow = s.connection_window - self._h2.inbound_flow_control_window
        if grow > 0:
            self._h2.increment_flow_control_window(grow)

    def close(self, error_code: int = _ERRORS.NO_ERROR, reason: str = "") -> None:
        """Queues GOAWAY: no new streams; the connection is done once data_to_send() is written."""
        if not self._ended:
            self._h2.close_connection(error_code, additional_data=reason.encode()[:256] or None,
                                      last_stream_id=self._last_served)
            self.closed = self._ended = True

    def go_away(self, reason: str = "") -> None:
        """Queues a graceful GOAWAY (NO_ERROR): the peer opens no new streams here, and those it opened
        go on to their end. First GOAWAY(2^31-1) and a PING; the PING's answer (in receive_data) sends
        GOAWAY(the last stream the peer opened), after which `drained_of_new_streams` is true."""
        if self.closed:
            return
        self.closed = self._going_away = True
        self._h2.send_goaway(LARGEST_STREAM_ID, _ERRORS.NO_ERROR, reason.encode()[:256])
        self._h2.ping(_DRAIN_PING)

    @property
    def drained_of_new_streams(self) -> bool:
        """Our graceful GOAWAY is complete: no stream the peer opens from now on will be served."""
        return self._last_served is not None or self._ended

    def transport_paused(self) -> list[Event]:
        """The bytes handed over are piling up unwritten (asyncio's pause_writing): stop reading every app."""
        self._transport_paused = True
        events: list[Event] = []
        for tunnel in self._tunnels.values():
            self._update_reading(tunnel, events)
        return events

    def transport_resumed(self) -> list[Event]:
        """The transport drained: apps whose streams have nothing waiting may be read again."""
        self._transport_paused = False
        events: list[Event] = []
        for tunnel in self._tunnels.values():
            self._update_reading(tunnel, events)
        return events

    def abandon_streams(self) -> list[Event]:
        """The connection is gone (lost, or broken by the peer): every tunnel is reset, nothing more is sent."""
        events: list[Event] = []
        for tunnel in list(self._tunnels.values()):
            if tunnel.state is not TunnelState.CLOSED:  # a closed one keeps what it holds for its reader
                tunnel.move(TunnelInput.RECEIVE_RESET)
                self._discard(tunnel, events, _ERRORS.CONNECT_ERROR)
        return events

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def chunks_to_send(self) -> list:
        """What data_to_send() gives, as a list of byte strings to write in order (no joining copy)."""
        if self.lean:
            return self._h2.chunks_to_send()
        data = self._h2.data_to_send()
        return [data] if data else []

    # commands: one tunnel ---------------------------------------------------------

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> list[Event]:
        """Takes all of `data`: what the windows allow is queued now, the rest waits in the stream.

        Returns [ReadingPaused] when bytes start to wait; ReadingResumed comes out of receive_data()
        once the peer's window updates have let them all out.
        """
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None:
            raise self._unknown(stream_id)
        if tunnel.state not in _WRITABLE:
            raise tunnel.not_allowed(TunnelInput.WRITE)
        if tunnel.unsent:
            tunnel.unsent += data
            return []
        events: list[Event] = []
        conn = self._h2
        try:
            if data.__class__ is bytes:  # the common case: one read, one frame, no copy
                if self.lean and conn.send_plain_data(stream_id, data):
                    return events
                if len(data) <= conn.max_outbound_frame_size and len(data) <= conn.local_flow_control_window(stream_id):
                    conn.send_data(stream_id, data)
                    return events
            taken = self._frame(stream_id, data)
        except h2.exceptions.ProtocolError:
            self._broken(tunnel, events)
            return events
        if taken < len(data):
            tunnel.unsent += memoryview(data)[taken:]
            self._blocked[stream_id] = tunnel
            self._update_reading(tunnel, events)
        return events

    def end(self, stream_id: int) -> list[Event]:
        """Half-closes our side (the app's EOF); END_STREAM goes out after the bytes still waiting."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None:
            raise self._unknown(stream_id)
        tunnel.move(TunnelInput.WRITE_EOF)
        events: list[Event] = []
        self._drain(tunnel, events)
        return events

    def reset(self, stream_id: int, error_code: int = _ERRORS.CONNECT_ERROR) -> list[Event]:
        """Aborts the tunnel (the app's TCP connection was reset). A stream already over is left alone."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None:
            return []
        if tunnel.state is TunnelState.CLOSED:  # over on the wire, its reader never came: drop what it kept
            self._forget(tunnel)
            return [StreamClosed(stream_id)]
        tunnel.move(TunnelInput.SEND_RESET)
        self._reset_h2(stream_id, error_code)
        events: list[Event] = []
        self._discard(tunnel, events)
        return events

    def consumed(self, stream_id: int, length: int) -> None:
        """`length` received bytes were written onward: the peer may send that much more, unless paused."""
        if length <= 0:
            return
        tunnel = self._tunnels.get(stream_id)
        if tunnel is not None and tunnel.receiving_paused:
            tunnel.withheld += length
            return
        self._h2.acknowledge_received_data(length, stream_id)

    def pause_receiving(self, stream_id: int) -> None:
        """The app's side cannot take more now: withhold credit for what it consumes until resume_receiving()."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is not None:
            tunnel.receiving_paused = True

    def resume_receiving(self, stream_id: int) -> None:
        """The app's side drained: return the withheld credit, and credit from now on."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is not None:
            tunnel.receiving_paused = False
            if tunnel.withheld:
                self._h2.acknowledge_received_data(tunnel.withheld, stream_id)
                tunnel.withheld = 0

    def attach(self, stream_id: int) -> list[Event]:
        """The stream has a reader now: returns what was kept for it (with hold_until_attached), in order."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None:
            raise self._unknown(stream_id)
        events: list[Event] = [] if tunnel.reading else [ReadingPaused(stream_id)]
        if tunnel.held:
            events += tunnel.held
        tunnel.held = None
        if tunnel.state is TunnelState.CLOSED:  # closed while held: StreamClosed was among the held events
            self._forget(tunnel)
        return events

    # queries ----------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return self._h2.open_outbound_streams if self.client_side else self._h2.open_inbound_streams

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self._h2.remote_settings.max_concurrent_streams

    def state_of(self, stream_id: int) -> TunnelState | None:
        """The tunnel's state; None once it is over (after StreamClosed) or if it never was."""
        tunnel = self._tunnels.get(stream_id)
        return None if tunnel is None else tunnel.state

    def unsent(self, stream_id: int) -> int:
        """How many bytes the app wrote on this stream that the windows have not taken yet."""
        tunnel = self._tunnels.get(stream_id)
        return 0 if tunnel is None else len(tunnel.unsent)

    # input ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        try:
            raw = self._splitter.receive(data) if self._splitter is not None else self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.closed = self._ended = True
            raise ProtocolViolation(f"peer broke HTTP/2: {e}", getattr(e, "error_code", 1)) from None
        except UnicodeDecodeError as e:   # h2 decodes header values as UTF-8, and queues no GOAWAY for it
            self.closed = self._ended = True
            try:
                self._h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            except h2.exceptions.ProtocolError:
                pass                      # h2 was closed already (a GOAWAY is queued)
            raise ProtocolViolation(f"peer sent a header that is not UTF-8: {e}") from None
        events: list[Event] = []
        for ev in raw:
            self._translate(ev, events)
        if self._early_resets > self.settings.early_resets_allowed:
            self._early_resets = 0
            self.close(_ERRORS.ENHANCE_YOUR_CALM, "too many streams reset before they were answered")
            raise ProtocolViolation(
                f"peer reset more than {self.settings.early_resets_allowed} streams before they were answered "
                f"within {self.settings.early_reset_window:g}s (HTTP/2 rapid reset)",
                _ERRORS.ENHANCE_YOUR_CALM, tuple(events))
        return events

    def _translate(self, ev, out: list[Event]) -> None:
        cls = ev.__class__
        if cls is h2.events.DataReceived:
            tunnel = self._tunnels.get(ev.stream_id)
            if tunnel is not None and ev.data and tunnel.state in _RECEIVABLE and tunnel.held is None:
                out.append(DataReceived(ev.stream_id, ev.data, ev.flow_controlled_length))  # the common case
            else:
                self._on_data(tunnel, ev, out)
        elif cls is h2.events.StreamEnded:
            # h2 also marks END_STREAM on the DataReceived before this; this event alone carries it.
            tunnel = self._tunnels.get(ev.stream_id)
            if tunnel is not None and self._move_by_peer(tunnel, TunnelInput.RECEIVE_END_STREAM, out):
                (out if tunnel.held is None else tunnel.held).append(StreamEnded(ev.stream_id))
                if tunnel.state is TunnelState.CLOSED:
                    self._finish(tunnel, out)
        elif cls is h2.events.WindowUpdated:
            # A stream's StreamClosed is its last event: a WINDOW_UPDATE that crossed its end says nothing.
            if ev.stream_id == 0 or ev.stream_id in self._tunnels:
                out.append(WindowOpened(ev.stream_id))
            if self._blocked:
                self._drain_blocked(ev.stream_id, out)
        elif cls is h2.events.StreamReset:
            tunnel = self._tunnels.get(ev.stream_id)
            if tunnel is not None and tunnel.state is not TunnelState.CLOSED:
                if tunnel.state is TunnelState.CONNECTING and not self.client_side:
                    self._count_early_reset()
                tunnel.move(TunnelInput.RECEIVE_RESET)
                self._discard(tunnel, out, int(ev.error_code))
        elif cls is h2.events.RemoteSettingsChanged:
            out.append(SettingsReceived(self._h2.remote_settings.max_concurrent_streams))
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                out.append(WindowOpened(0))
                self._drain_blocked(0, out)
        elif cls is h2.events.ConnectionTerminated:
            self._on_goaway(ev, out)
        elif cls is h2.events.PingAckReceived:
            if self._going_away and ev.ping_data == _DRAIN_PING:
                self._going_away = False
                self._last_served = self._h2.highest_inbound_stream_id
                self._h2.send_goaway(self._last_served, _ERRORS.NO_ERROR)
        elif cls is h2.events.RequestReceived:
            self._on_request(ev, out)
        elif cls is h2.events.ResponseReceived:
            self._on_response(ev, out)
        # Pings, settings acks, priority and trailers need nothing from a tunnel.

    def _on_data(self, tunnel: _Tunnel | None, ev, out: list[Event]) -> None:
        if tunnel is not None and ev.data and (
                tunnel.state in _RECEIVABLE or self._move_by_peer(tunnel, TunnelInput.RECEIVE_DATA, out)):
            (out if tunnel.held is None else tunnel.held).append(
                DataReceived(ev.stream_id, ev.data, ev.flow_controlled_length))
        elif ev.flow_controlled_length:
            # A stream already over (its reset crossed this DATA), or padding alone: nobody will
            # consume these bytes, so their connection credit goes back now.
            self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)

    def _on_goaway(self, ev, out: list[Event]) -> None:
        self.closed = True
        # GracefulH2 leaves h2 open on NO_ERROR: the streams the peer took keep flowing.
        graceful = ev.error_code == _ERRORS.NO_ERROR and self._h2.state_machine.state is not \
            h2.connection.ConnectionState.CLOSED
        self._ended = self._ended or not graceful
        reason = (ev.additional_data or b"").decode("utf-8", "replace")
        last = ev.last_stream_id or 0
        out.append(ConnectionClosed(int(ev.error_code), last, reason))
        # Our streams above last_stream_id were never processed by the peer, and will not be.
        ours = [tunnel for stream_id, tunnel in self._tunnels.items()
                if stream_id > last and (stream_id % 2 == 1) == self.client_side]
        for tunnel in ours:
            if tunnel.state is not TunnelState.CLOSED:
                tunnel.move(TunnelInput.RECEIVE_RESET)
                if graceful:  # h2 still counts it open: free it there too
                    self._reset_h2(tunnel.stream_id, _ERRORS.CANCEL)
                self._discard(tunnel, out, _ERRORS.REFUSED_STREAM)

    def _count_early_reset(self) -> None:
        now = self._clock()
        if now - self._early_reset_since >= self.settings.early_reset_window:
            self._early_reset_since, self._early_resets = now, 0
        self._early_resets += 1

    def _on_request(self, ev, out: list[Event]) -> None:
        self._reset_h2(ev.stream_id, _ERRORS.PROTOCOL_ERROR)

    def _on_response(self, ev, out: list[Event]) -> None:
        self._reset_h2(ev.stream_id, _ERRORS.PROTOCOL_ERROR)

    # the machinery ----------------------------------------------------------

    def _new_tunnel(self, stream_id: int) -> _Tunnel:
        tunnel = _Tunnel(stream_id, reading=not self._transport_paused, hold=self.hold_until_attached)
        self._tunnels[stream_id] = tunnel
        return tunnel

    @staticmethod
    def _unknown(stream_id: int) -> StreamNotOpen:
        return StreamNotOpen(f"stream {stream_id} is over (closed or reset) or was never opened", stream_id)

    def _move_by_peer(self, tunnel: _Tunnel, step: TunnelInput, out: list[Event]) -> bool:
        """A step the peer's frame asks for; outside the table the peer broke HBONE on this stream alone."""
        try:
            tunnel.move(step)
        except StreamNotOpen:
            if tunnel.state in _LIVE:  # (a closed tunnel waiting for its reader just ignores it)
                tunnel.move(TunnelInput.SEND_RESET)
                self._reset_h2(tunnel.stream_id, _ERRORS.PROTOCOL_ERROR)
                self._discard(tunnel, out, _ERRORS.PROTOCOL_ERROR)
            return False
        return True

    def _frame(self, stream_id: int, data) -> int:
        """Queues as much of `data` as the windows allow, in frames; returns how many bytes that was."""
        conn = self._h2
        total = min(len(data), conn.local_flow_control_window(stream_id))
        if total <= 0:
            return 0
        frame = conn.max_outbound_frame_size
        taken = 0
        with memoryview(data) as view:
            while taken < total:
                size = min(frame, total - taken)
                conn.send_data(stream_id, view[taken:taken + size].tobytes())
                taken += size
        return taken

    def _drain_blocked(self, stream_id: int, out: list[Event]) -> None:
        """A window opened: send what waits, on that stream or (0) on every blocked one, in order."""
        if stream_id:
            tunnel = self._blocked.get(stream_id)
            if tunnel is not None:
                self._drain(tunnel, out)
        else:
            for tunnel in list(self._blocked.values()):
                self._drain(tunnel, out)

    def _drain(self, tunnel: _Tunnel, out: list[Event]) -> None:
        """Sends what waits as far as the windows allow; then the END_STREAM that waited for it."""
        stream_id = tunnel.stream_id
        if tunnel.unsent:
            try:
                taken = self._frame(stream_id, tunnel.unsent)
            except h2.exceptions.ProtocolError:
                self._broken(tunnel, out)
                return
            del tunnel.unsent[:taken]
            if tunnel.unsent:
                return
            self._blocked.pop(stream_id, None)
            self._update_reading(tunnel, out)
        if tunnel.state in _DRAINING:
            try:
                self._h2.end_stream(stream_id)
            except h2.exceptions.ProtocolError:
                self._broken(tunnel, out)
                return
            tunnel.move(TunnelInput.SEND_END_STREAM)
            if tunnel.state is TunnelState.CLOSED:
                self._finish(tunnel, out)

    def _update_reading(self, tunnel: _Tunnel, out: list[Event]) -> None:
        reading = not tunnel.unsent and not self._transport_paused
        if reading is not tunnel.reading:
            tunnel.reading = reading
            out.append(ReadingResumed(tunnel.stream_id) if reading else ReadingPaused(tunnel.stream_id))

    def _broken(self, tunnel: _Tunnel, out: list[Event]) -> None:
        """h2 refused to send on a stream the tunnel thought open (closed under it, GOAWAY): reset it."""
        tunnel.move(TunnelInput.SEND_RESET)
        self._reset_h2(tunnel.stream_id, _ERRORS.STREAM_CLOSED)
        self._discard(tunnel, out, _ERRORS.STREAM_CLOSED)

    def _reset_h2(self, stream_id: int, error_code: int) -> None:
        try:
            self._h2.reset_stream(stream_id, error_code)
        except h2.exceptions.ProtocolError:
            pass  # already closed in h2 (a reset crossed ours), or the connection is

    def _finish(self, tunnel: _Tunnel, out: list[Event]) -> None:
        """Both ends are done. A reader yet to attach learns of it after the bytes kept for it."""
        if tunnel.held is not None:
            tunnel.held.append(StreamClosed(tunnel.stream_id))
            return
        self._forget(tunnel)
        out.append(StreamClosed(tunnel.stream_id))

    def _discard(self, tunnel: _Tunnel, out: list[Event], reset_by: int | None = None) -> None:
        """The tunnel ends abruptly (reset, refused): what was kept for its reader goes, with a StreamReset first."""
        if reset_by is not None:
            out.append(StreamReset(tunnel.stream_id, int(reset_by)))
        self._forget(tunnel)
        out.append(StreamClosed(tunnel.stream_id))

    def _forget(self, tunnel: _Tunnel) -> None:
        """Drops the tunnel; the connection window gets back what its reader will never consume."""
        stream_id = tunnel.stream_id
        del self._tunnels[stream_id]
        self._blocked.pop(stream_id, None)
        owed = tunnel.withheld + tunnel.held_credit()
        tunnel.withheld, tunnel.held, tunnel.unsent = 0, None, bytearray()
        if owed:
            self._h2.acknowledge_received_data(owed, stream_id)  # h2 credits only the connection for a closed stream


class HboneClient(HboneConnection):
    client_side = True

    def open(self, authority: str, headers: tuple[tuple[str, str], ...] = ()) -> int:
        """Opens a CONNECT stream to `ip:port`; returns its stream id (answer comes as an event)."""
        parse_authority(authority)
        if self.closed:
            raise StreamLimitReached("connection is closing (GOAWAY); open a new one")
        if self._h2.open_outbound_streams >= self._h2.remote_settings.max_concurrent_streams:
            raise StreamLimitReached(
                f"peer allows {self._h2.remote_settings.max_concurrent_streams} concurrent streams, all in use")
        stream_id = self._h2.get_next_available_stream_id()
        try:
            self._h2.send_headers(stream_id, [(":method", "CONNECT"), (":authority", authority), *headers])
        except h2.exceptions.TooManyStreamsError as e:
            raise StreamLimitReached(str(e)) from None
        self._new_tunnel(stream_id)
        return stream_id

    def _on_response(self, ev, out: list[Event]) -> None:
        tunnel = self._tunnels.get(ev.stream_id)
        if tunnel is None:
            return  # we reset it while the answer was on its way
        headers = dict(ev.headers)
        status = int(headers.get(":status", "0"))
        if status == 200:
            if self._move_by_peer(tunnel, TunnelInput.ACCEPT, out):
                out.append(ConnectAccepted(ev.stream_id))
            return
        if not self._move_by_peer(tunnel, TunnelInput.REFUSE, out):
            return
        out.append(ConnectRefused(ev.stream_id, status, headers.get("shoal-reason", "")))
        # Close our half too, whatever the server did with its own, so the stream frees its slot both sides.
        self._reset_h2(ev.stream_id, _ERRORS.CANCEL)
        self._discard(tunnel, out)


class HboneServer(HboneConnection):
    client_side = False

    def accept(self, stream_id: int) -> None:
        """Answers 200: the tunnel is open."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None:
            raise self._unknown(stream_id)
        following = tunnel.following(TunnelInput.ACCEPT)
        try:
            self._h2.send_headers(stream_id, [(":status", "200")])
        except h2.exceptions.ProtocolError as e:
            raise StreamNotOpen(f"stream {stream_id} cannot be accepted: {e}", stream_id) from None
        tunnel.state = following

    def refuse(self, stream_id: int, status: int, reason: str) -> list[Event]:
        """Answers a CONNECT with an error status (401/403/503...); the stream is over. A stream already
        over (the client gave up) is left alone."""
        tunnel = self._tunnels.get(stream_id)
        if tunnel is None:
            return []
        tunnel.move(TunnelInput.REFUSE)
        self._answer_refusal(stream_id, status, reason)
        events: list[Event] = []
        self._discard(tunnel, events)
        return events

    def _answer_refusal(self, stream_id: int, status: int, reason: str) -> None:
        safe = reason.replace("\r", " ").replace("\n", " ")[:200]
        try:
            self._h2.send_headers(stream_id, [(":status", str(status)), ("shoal-reason", safe)], end_stream=True)
        except h2.exceptions.ProtocolError:
            return
        # RFC 9113 8.1: a complete answer, then RST_STREAM(NO_ERROR) so the client need send no more.
        # Without it the stream kept a concurrency slot on both sides until the client closed its half.
        self._reset_h2(stream_id, _ERRORS.NO_ERROR)

    def _on_request(self, ev, out: list[Event]) -> None:
        if self._last_served is not None and ev.stream_id > self._last_served:
            self._reset_h2(ev.stream_id, _ERRORS.REFUSED_STREAM)  # opened after our GOAWAY: never processed
            return
        headers = dict(ev.headers)
        if headers.get(":method") != "CONNECT":
            self._answer_refusal(ev.stream_id, 405, "HBONE accepts only CONNECT")
            return
        authority = headers.get(":authority", "")
        try:
            parse_authority(authority)
        except BadAuthority as e:
            self._answer_refusal(ev.stream_id, 400, str(e))
            return
        if ev.stream_ended is not None:
            self._answer_refusal(ev.stream_id, 400, "a CONNECT must leave its stream open for the tunnel's bytes")
            return
        self._new_tunnel(ev.stream_id)
        extra = tuple((k, v) for k, v in ev.headers if not k.startswith(":"))
        out.append(ConnectRequested(ev.stream_id, authority, extra))


__all__ = [
    "ALPN", "PORT", "Settings", "HboneError", "ProtocolViolation", "StreamLimitReached", "StreamNotOpen",
    "BadAuthority", "Event", "ConnectRequested", "ConnectAccepted", "ConnectRefused", "DataReceived",
    "StreamEnded", "StreamReset", "StreamClosed", "ReadingPaused", "ReadingResumed", "WindowOpened",
    "SettingsReceived", "ConnectionClosed", "TunnelState", "LARGEST_STREAM_ID", "TunnelInput", "TRANSITIONS", "HboneClient",
    "HboneServer", "HboneConnection", "parse_authority",
]
