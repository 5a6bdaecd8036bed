"""HBONE, sans-IO: HTTP/2 CONNECT tunnels over one connection, on `h2`.

HBONE carries an app's TCP connection as the DATA of one HTTP/2 `CONNECT`
stream (`:authority` = the target `ip:port`) inside an mTLS connection. This
module is the protocol core only: it takes bytes and returns events, and the
caller's commands queue bytes that `data_to_send()` hands over. No socket, no
event loop, no TLS (the driver wraps the transport).

    client = HboneClient(); client.initiate()
    sid = client.open("198.19.2.5:8080")
    server.receive_data(client.data_to_send())  -> [ConnectRequested(sid, ...)]
    server.accept(sid); client.receive_data(server.data_to_send()) -> [ConnectAccepted(sid)]

Events are past tense (what the peer did); commands are imperative methods.
Every error is an `HboneError`; a `ProtocolViolation` carries the HTTP/2
error code and means the connection is finished (a GOAWAY is queued).

Flow control is the consumer's job on purpose: `DataReceived` does not
reopen the window; the driver calls `consumed(stream_id, n)` once it has
actually written those bytes onward. A slow reader therefore stops the peer
after one stream window, instead of growing buffers. On the sending side,
`send()` takes only what the windows allow and returns how much it took; the
rest waits for `WindowOpened`.

Throughput: with `lean=True` (the default) DATA frames bypass h2's generic
frame handling on both sides, keeping h2's flow-control state exact; see
`shoal.hbone_lean`. `lean=False` is h2 as shipped (tests compare the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from shoal.contracts import HBONE_PORT as PORT
from shoal.hbone_lean import DataSplitter, LeanH2

ALPN = "h2"
LARGEST_FRAME = (1 << 24) - 1
LARGEST_WINDOW = (1 << 31) - 1


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

    def __post_init__(self) -> None:
        if not 16384 <= self.max_frame_size <= LARGEST_FRAME:
            raise ValueError(f"max_frame_size {self.max_frame_size} must be within 16384..{LARGEST_FRAME}")
        for name in ("stream_window", "connection_window"):
            value = getattr(self, name)
            if not 65535 <= value <= LARGEST_WINDOW:
                raise ValueError(f"{name} {value} must be within 65535..{LARGEST_WINDOW}")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")


# --- errors ----------------------------------------------------------------


class HboneError(Exception):
    """Anything that went wrong in HBONE."""


class ProtocolViolation(HboneError):
    """The peer broke HTTP/2 or HBONE; the whole connection is closed (GOAWAY queued)."""

    def __init__(self, message: str, error_code: int = h2.errors.ErrorCodes.PROTOCOL_ERROR):
        super().__init__(message)
        self.error_code = int(error_code)


class StreamLimitReached(HboneError):
    """The peer allows no more concurrent streams on this connection; open another connection."""


class StreamNotOpen(HboneError):
    """A command named a stream that is closed, reset, or was never opened."""


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
    """(client) The server answered with a non-200 status; the stream is over."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True)
class DataReceived(Event):
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
    """The peer reset the tunnel (RST_STREAM): the TCP connection it carries is aborted."""

    stream_id: int
    error_code: int


@dataclass(frozen=True)
class WindowOpened(Event):
    """Send capacity grew, on one stream or (stream_id 0) on the whole connection."""

    stream_id: int


@dataclass(frozen=True)
class SettingsReceived(Event):
    """The peer's settings arrived or changed (e.g. its max concurrent streams)."""

    max_concurrent_streams: int


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The peer sent GOAWAY: no new streams; streams up to last_stream_id may finish."""

    error_code: int
    last_stream_id: int
    reason: str = ""


def parse_authority(authority: str) -> tuple[str, int]:
    """`ip:port` (or `[v6]:port`) into (ip, port); BadAuthority otherwise."""
    import ipaddress

    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadAuthority(f"CONNECT authority {authority!r} is not ip:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise BadAuthority(f"CONNECT authority {authority!r} does not name an IP address") from None
    return host, int(port)


# --- the connection ----------------------------------------------------------


class HboneConnection:
    """What client and server share: data, half-close, reset, flow control."""

    client_side: bool

    def __init__(self, settings: Settings = Settings(), *, lean: bool = True) -> None:
        self.settings = settings
        config = h2.config.H2Configuration(client_side=self.client_side, header_encoding="utf-8")
        self._h2 = (LeanH2 if lean else h2.connection.H2Connection)(config=config)
        self.lean = lean
        self._splitter = DataSplitter(self._h2) if lean else None
        self.closed = False
        # Streams whose END_STREAM we sent / received, to refuse writes after a half-close early.
        self._local_ended: set[int] = set()

    # commands ---------------------------------------------------------------

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
        # h2 reads these once, in its constructor; the settings above replace its defaults.
        self._h2.max_inbound_frame_size = s.max_frame_size
        self._h2.initiate_connection()
        grow = s.connection_window - self._h2.inbound_flow_control_window
        if grow > 0:
            self._h2.increment_flow_control_window(grow)

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queues as much of `data` as flow control allows; returns how many bytes it took."""
        if stream_id in self._local_ended:
            raise StreamNotOpen(f"stream {stream_id} is half-closed by us; nothing more can be sent on it")
        conn = self._h2
        try:
            room = conn.local_flow_control_window(stream_id)
        except h2.exceptions.StreamClosedError:
            raise StreamNotOpen(f"stream {stream_id} is closed") from None
        except h2.exceptions.NoSuchStreamError:
            raise StreamNotOpen(f"stream {stream_id} was never opened") from None
        total = min(len(data), room)
        if total <= 0:
            return 0
        frame = conn.max_outbound_frame_size
        taken = 0
        try:
            if total == len(data) and total <= frame and isinstance(data, bytes):
                conn.send_data(stream_id, data)  # the common case: one read, one frame, no copy
                return total
            view = memoryview(data)
            while taken < total:
                chunk = view[taken:taken + min(frame, total - taken)]
                conn.send_data(stream_id, chunk.tobytes())
                taken += len(chunk)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            raise StreamNotOpen(f"stream {stream_id} cannot take data: {e}") from None
        return taken

    def sendable(self, stream_id: int) -> int:
        """How many bytes send() would take now on this stream."""
        try:
            return max(0, self._h2.local_flow_control_window(stream_id))
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
            return 0

    def end(self, stream_id: int) -> None:
        """Half-closes our side (the app shut down writing)."""
        if stream_id in self._local_ended:
            return
        try:
            self._h2.end_stream(stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, h2.exceptions.ProtocolError) as e:
            raise StreamNotOpen(f"stream {stream_id} cannot be half-closed: {e}") from None
        self._local_ended.add(stream_id)

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CONNECT_ERROR) -> None:
        """Aborts the stream (the app's TCP connection was reset). Resetting a closed stream is a no-op."""
        try:
            self._h2.reset_stream(stream_id, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, h2.exceptions.ProtocolError):
            pass
        self._local_ended.discard(stream_id)

    def consumed(self, stream_id: int, length: int) -> None:
        """`length` received bytes were handed on; lets the peer send that much more."""
        if length <= 0:
            return
        self._h2.acknowledge_received_data(length, stream_id)

    def close(self, error_code: int = h2.errors.ErrorCodes.NO_ERROR, reason: str = "") -> None:
        """Queues GOAWAY: no new streams; the connection is done once data_to_send() is written."""
        if not self.closed:
            self._h2.close_connection(error_code, additional_data=reason.encode()[:256] or None)
            self.closed = True

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def chunks_to_send(self) -> list:
        """What data_to_send() gives, as a list of byte strings to write in order (no joining copy)."""
        if self.lean:
            return self._h2.chunks_to_send()
        data = self._h2.data_to_send()
        return [data] if data else []

    # queries ----------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return self._h2.open_outbound_streams if self.client_side else self._h2.open_inbound_streams

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self._h2.remote_settings.max_concurrent_streams

    # input ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        try:
            raw = self._splitter.receive(data) if self._splitter is not None else self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.closed = True
            raise ProtocolViolation(f"peer broke HTTP/2: {e}", getattr(e, "error_code", 1)) from None
        events: list[Event] = []
        for ev in raw:
            self._translate(ev, events)
        return events

    def _translate(self, ev, out: list[Event]) -> None:
        cls = ev.__class__
        if cls is h2.events.DataReceived:
            out.append(DataReceived(ev.stream_id, ev.data, ev.flow_controlled_length))
            if ev.stream_ended is not None:
                out.append(StreamEnded(ev.stream_id))
        elif cls is h2.events.StreamEnded:
            # h2 reports END_STREAM on a DATA frame twice (stream_ended and this); keep one.
            if not out or out[-1] != StreamEnded(ev.stream_id):
                out.append(StreamEnded(ev.stream_id))
        elif cls is h2.events.WindowUpdated:
            out.append(WindowOpened(ev.stream_id))
        elif cls is h2.events.StreamReset:
            self._local_ended.discard(ev.stream_id)
            out.append(StreamReset(ev.stream_id, int(ev.error_code)))
        elif cls is h2.events.RemoteSettingsChanged:
            out.append(SettingsReceived(self._h2.remote_settings.max_concurrent_streams))
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                out.append(WindowOpened(0))
        elif cls is h2.events.ConnectionTerminated:
            self.closed = True
            reason = (ev.additional_data or b"").decode("utf-8", "replace")
            out.append(ConnectionClosed(int(ev.error_code), ev.last_stream_id or 0, reason))
        elif cls is h2.events.RequestReceived:
            self._on_request(ev, out)
        elif cls is h2.events.ResponseReceived:
            self._on_response(ev, out)
        # Pings, settings acks, priority and trailers need nothing from a tunnel.

    def _on_request(self, ev, out: list[Event]) -> None:
        self.reset(ev.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)

    def _on_response(self, ev, out: list[Event]) -> None:
        self.reset(ev.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)


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
        return stream_id

    def _on_response(self, ev, out: list[Event]) -> None:
        headers = dict(ev.headers)
        status = int(headers.get(":status", "0"))
        if status == 200:
            out.append(ConnectAccepted(ev.stream_id))
        else:
            out.append(ConnectRefused(ev.stream_id, status, headers.get("shoal-reason", "")))
            if not ev.stream_ended:
                self.reset(ev.stream_id, h2.errors.ErrorCodes.CANCEL)


class HboneServer(HboneConnection):
    client_side = False

    def accept(self, stream_id: int) -> None:
        try:
            self._h2.send_headers(stream_id, [(":status", "200")])
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, h2.exceptions.ProtocolError) as e:
            raise StreamNotOpen(f"stream {stream_id} cannot be accepted: {e}") from None

    def refuse(self, stream_id: int, status: int, reason: str) -> None:
        """Answers a CONNECT with an error status (401/403/503...) and ends the stream."""
        safe = reason.replace("\r", " ").replace("\n", " ")[:200]
        try:
            self._h2.send_headers(stream_id, [(":status", str(status)), ("shoal-reason", safe)], end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def _on_request(self, ev, out: list[Event]) -> None:
        headers = dict(ev.headers)
        if headers.get(":method") != "CONNECT":
            self.refuse(ev.stream_id, 405, "HBONE accepts only CONNECT")
            return
        authority = headers.get(":authority", "")
        try:
            parse_authority(authority)
        except BadAuthority as e:
            self.refuse(ev.stream_id, 400, str(e))
            return
        extra = tuple((k, v) for k, v in ev.headers if not k.startswith(":"))
        out.append(ConnectRequested(ev.stream_id, authority, extra))


__all__ = [
    "ALPN", "PORT", "Settings", "HboneError", "ProtocolViolation", "StreamLimitReached", "StreamNotOpen",
    "BadAuthority", "Event", "ConnectRequested", "ConnectAccepted", "ConnectRefused", "DataReceived",
    "StreamEnded", "StreamReset", "WindowOpened", "SettingsReceived", "ConnectionClosed", "HboneClient",
    "HboneServer", "HboneConnection", "parse_authority",
]
