"""The lean paths of `shoal.hbone`: h2 with DATA frames kept out of its generic frame handling.

h2 is correct but costly per DATA frame: on receive it buffers and slices
the bytes several times, builds a frame object and computes `repr(frame)`
for a trace log even with logging off (hexlifying the payload); on send it
serializes every frame and joins everything into one buffer. Here:

- `LeanH2` (send): a DATA frame becomes a 9-byte header plus the payload
  object itself, in a list of chunks written with `writelines`. In the plain
  case (no END_STREAM, within the windows and the frame size, both state
  machines where h2's DATA transition is a no-op) `send_plain_data` does
  what h2's send_data does, the window arithmetic, without its state-machine
  steps, frame object and log formatting; `acknowledge_received_data` only
  counts when no WINDOW_UPDATE is due. The same plain case on receive is
  `DataSplitter._plain_data`. Tests hold all three to h2's wire bytes and
  window state (tests/shoal/test_hbone.py).
- `DataSplitter` (receive): DATA payloads on known streams are streamed
  through as they arrive, each piece accounted by h2's own
  `_receive_data_frame`, so the connection and stream windows, the stream
  state and END_STREAM stay exactly h2's. Every other frame goes to h2 as is,
  once whole; its header is checked first, so what is buffered for it is
  bounded: no frame above our max frame size, no header block (HEADERS and
  CONTINUATION) above `max_header_block`.

`GracefulH2` (under both, and under `lean=False` too) keeps a GOAWAY with
NO_ERROR from closing h2's state machine either way: h2 4.4 moves to CLOSED
on sending or receiving any GOAWAY, after which no stream can send, so a
drain could not let the streams it still carries finish.

Neither knows about tunnels: half-close, reset, buffering and credit per
stream are the core's (`shoal.hbone`); this module only makes h2's DATA
paths cheaper under it.

Both use h2 internals (`_prepare_for_sending`, `_data_to_send`,
`_receive_data_frame`, `_terminate_connection`, the incoming buffer's
preamble and header-block state), which is why pyproject keeps h2 below 5.
Measured in bench/hbone_throughput.py; see ztunnel/PERFORMANCE.md.
"""

from __future__ import annotations

import struct

import h2.connection
import h2.exceptions
import h2.errors
import h2.events
from h2.connection import ConnectionState
from h2.stream import StreamState
from hyperframe.frame import DataFrame, GoAwayFrame


_DATA_HEADER = struct.Struct(">HBBBL")  # 24-bit length (as 16+8), type 0, flags, stream id
_END_STREAM, _PADDED, _DATA = 0x1, 0x8, 0x0
_HEADERS, _PUSH_PROMISE, _CONTINUATION, _END_HEADERS = 0x1, 0x5, 0x9, 0x4
_JOIN_BELOW = 16384  # payloads up to one TLS record travel with their header in one chunk
# Where h2 lets DATA through without changing any state but the windows (its transition tables):
_CONNECTION_OPEN = frozenset((ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN))
_STREAM_SENDS = frozenset((StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE))
_STREAM_RECEIVES = frozenset((StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL))


class _InboundData:
    """What h2's `_receive_data_frame` reads from a DATA frame, without parsing one."""

    __slots__ = ("stream_id", "data", "flags", "flow_controlled_length")

    def __init__(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flags = ("END_STREAM",) if end_stream else ()
        self.flow_controlled_length = len(data)


def _queue_data(out: list, header: bytes, data) -> None:
    if len(data) <= _JOIN_BELOW:
        out.append(header + data)  # small: one chunk, so one TLS record, is cheaper than a copy saved
    else:
        out.append(header)
        out.append(data)


def _only_counts(window, size: int) -> bool:
    """Would h2's window manager (h2.windows.WindowManager) only count these bytes, not ask for an update?"""
    return window.current_window_size != 0 and window._bytes_processed + size < window.max_window_size // 2


class GracefulH2(h2.connection.H2Connection):
    """h2 with graceful GOAWAY both ways (RFC 9113 6.8): NO_ERROR announces a shutdown, not an end.

    `send_goaway()` queues a GOAWAY and leaves h2 open, so the streams at or
    below its last_stream_id can still send and receive. A GOAWAY received
    with NO_ERROR becomes a `ConnectionTerminated` event as in h2, but h2
    stays open and keeps what it was about to send; any other error code is
    h2's own handling (the connection is closed). What streams the GOAWAY
    ends, and refusing new ones, is the caller's (`shoal.hbone`).
    """

    def send_goaway(self, last_stream_id: int, error_code: int = 0, additional_data: bytes = b"") -> None:
        self._prepare_for_sending([GoAwayFrame(stream_id=0, last_stream_id=last_stream_id,
                                               error_code=error_code, additional_data=additional_data)])

    def _receive_goaway_frame(self, frame: GoAwayFrame):  # noqa: D401 - h2 hook
        if frame.error_code != h2.errors.ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class LeanH2(GracefulH2):
    """h2 with DATA frames kept out of its generic (copying, repr-ing) frame paths.

    Outbound: a DATA frame becomes a 9-byte header plus the payload object
    itself in a list of chunks (written with writelines), instead of being
    serialized and concatenated into one buffer. Other frames keep h2's
    serialization; order is kept by moving h2's buffer into the list first.
    Inbound: see DataSplitter; DATA that reaches h2 anyway skips the trace repr().
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._chunks: list = []

    def _prepare_for_sending(self, frames) -> None:
        if not frames:
            return
        out = self._chunks
        if self._data_to_send:
            out.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        for frame in frames:
            if frame.__class__ is DataFrame and "PADDED" not in frame.flags:
                data = frame.data
                length = len(data)
                _queue_data(out, _DATA_HEADER.pack(length >> 8, length & 0xFF, _DATA,
                                                   _END_STREAM if "END_STREAM" in frame.flags else 0,
                                                   frame.stream_id), data)
            else:
                out.append(frame.serialize())

    def send_plain_data(self, stream_id: int, data) -> bool:
        """Queues one DATA frame without END_STREAM in the plain case, doing exactly what h2's send_data would
        (the connection and stream windows go down; no state changes); False to take h2's own path.

        The plain case: both state machines in a state where h2's transition for sending DATA is a no-op,
        and `data` within the frame size and both windows. Everything else (END_STREAM, padding, an
        error to raise) is h2's. Per frame this skips h2's two state-machine steps, its DataFrame and
        its debug-log formatting: about a third of a request's HBONE work (bench/hbone_throughput.py)."""
        stream = self.streams.get(stream_id)
        length = len(data)
        if (stream is None or not length or length > self.max_outbound_frame_size
                or length > self.outbound_flow_control_window or length > stream.outbound_flow_control_window
                or self.state_machine.state not in _CONNECTION_OPEN
                or stream.state_machine.state not in _STREAM_SENDS):
            return False
        self.outbound_flow_control_window -= length
        stream.outbound_flow_control_window -= length
        out = self._chunks
        if self._data_to_send:
            out.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        _queue_data(out, _DATA_HEADER.pack(length >> 8, length & 0xFF, _DATA, 0, stream_id), data)
        return True

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """h2's, without its frames and logging when neither window is due an update (nearly every call).

        h2 sends a WINDOW_UPDATE once the bytes processed reach half the window (or once the window is
        empty); below that its window managers only count. When both the connection's and the stream's
        would only count, this counts; otherwise h2 does it all."""
        stream = self.streams.get(stream_id)
        if acknowledged_size > 0 and stream is not None and stream.open:
            connection_window = self._inbound_flow_control_window_manager
            stream_window = stream._inbound_window_manager
            if (_only_counts(connection_window, acknowledged_size)
                    and _only_counts(stream_window, acknowledged_size)):
                connection_window._bytes_processed += acknowledged_size
                stream_window._bytes_processed += acknowledged_size
                return
        super().acknowledge_received_data(acknowledged_size, stream_id)

    def chunks_to_send(self) -> list:
        out = self._chunks
        if self._data_to_send:
            out.append(bytes(self._data_to_send))
            self._data_to_send = bytearray()
        self._chunks = []
        return out

    def data_to_send(self, amount: int | None = None) -> bytes:
        data = b"".join(self.chunks_to_send())
        if amount is None or amount >= len(data):
            return data
        self._chunks = [data[amount:]]
        return data[:amount]

    def _receive_frame(self, frame):  # noqa: D401 - h2 hook
        if frame.__class__ is DataFrame and frame.stream_id in self.streams:
            frames, events = self._receive_data_frame(frame)
            self._prepare_for_sending(frames)
            return events
        return super()._receive_frame(frame)


class DataSplitter:
    """Splits received bytes into frames in front of an h2 connection."""

    def __init__(self, conn: h2.connection.H2Connection, max_header_block: int = 1 << 20) -> None:
        self.conn = conn
        self.max_header_block = max_header_block
        self._header_block = 0        # bytes of the header block under way (HEADERS, CONTINUATION...)
        self._inbound = bytearray()   # a partial frame header, or a whole non-DATA frame being collected
        self._frame_end = 0           # its full length, once its header is known
        self._data_stream = 0         # the DATA frame being streamed through, and what is left of it
        self._data_left = 0
        self._data_end = False

    def receive(self, data: bytes) -> list:
        """A frame splitter in front of h2 that streams DATA payloads through without buffering.

        A DATA frame's header (on a stream h2 knows, unpadded, within the frame
        size, outside a header block) is read here; its payload is then handed
        on piece by piece as it arrives, each piece accounted by h2's own
        `_receive_data_frame` (connection and stream windows, stream state,
        END_STREAM on the last piece). A read that is all payload passes
        through without a copy. Every other frame is collected whole and given
        to h2 as it is, so h2's own buffer only ever holds whole frames.
        """
        conn = self.conn
        events: list = []
        view = memoryview(data)
        size = len(data)
        pos = 0
        if conn.incoming_buffer._preamble_len:  # the client preface (server side), before any frame
            take = min(conn.incoming_buffer._preamble_len, size)
            events += conn.receive_data(data[:take])
            pos = take
        while pos < size:
            if self._data_left:
                take = min(self._data_left, size - pos)
                piece = data if take == size else bytes(view[pos:pos + take])
                self._data_left -= take
                pos += take
                self._data_piece(piece, self._data_end and not self._data_left, events)
                continue
            held = self._inbound
            if held or size - pos < 9:
                # A partial header or a non-DATA frame being collected.
                need = 9 - len(held) if len(held) < 9 else self._frame_end - len(held)
                take = min(need, size - pos)
                held += view[pos:pos + take]
                pos += take
                if len(held) == 9 and not self._frame_end:
                    self._frame_end = 9 + ((held[0] << 16) | (held[1] << 8) | held[2])
                    if self._start_data(held):
                        held.clear()
                        self._frame_end = 0
                        if not self._data_left:
                            self._data_piece(b"", self._data_end, events)
                        continue
                    self._check_header(held)
                if self._frame_end and len(held) == self._frame_end:
                    events += conn.receive_data(bytes(held))
                    held.clear()
                    self._frame_end = 0
                continue
            header = view[pos:pos + 9]
            if self._start_data(header):
                pos += 9
                if not self._data_left:  # an empty DATA frame (END_STREAM alone, say)
                    self._data_piece(b"", self._data_end, events)
                continue
            length = (header[0] << 16) | (header[1] << 8) | header[2]
            self._check_header(header)
            if size - pos >= 9 + length:
                events += conn.receive_data(bytes(view[pos:pos + 9 + length]))
                pos += 9 + length
            else:
                self._inbound += view[pos:pos + 9]
                self._frame_end = 9 + length
                pos += 9
        return events

    def _check_header(self, header) -> None:
        """A frame other than streamed DATA is about to be collected whole: refuse it first if it is too big."""
        conn = self.conn
        length = (header[0] << 16) | (header[1] << 8) | header[2]
        if length > conn.max_inbound_frame_size:
            self._refuse(h2.exceptions.FrameTooLargeError(
                f"a frame of {length} bytes is larger than our max frame size {conn.max_inbound_frame_size}"))
        kind = header[3]
        if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
            self._header_block += length
            if self._header_block > self.max_header_block:
                self._refuse(h2.exceptions.DenialOfServiceError(
                    f"a header block of over {self._header_block} bytes (HEADERS and CONTINUATION) is larger "
                    f"than the {self.max_header_block} allowed"))
            if header[4] & _END_HEADERS:
                self._header_block = 0

    def _refuse(self, error: h2.exceptions.ProtocolError):
        self.conn._terminate_connection(error.error_code)
        raise error

    def _start_data(self, header) -> bool:
        """If `header` opens a DATA frame this splitter can stream, remember it and say so."""
        conn = self.conn
        if header[3] != _DATA or header[4] & _PADDED:
            return False
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        length = (header[0] << 16) | (header[1] << 8) | header[2]
        if (stream_id not in conn.streams or length > conn.max_inbound_frame_size
                or conn.incoming_buffer._headers_buffer):
            return False
        self._data_stream, self._data_left, self._data_end = stream_id, length, bool(header[4] & _END_STREAM)
        return True

    def _data_piece(self, piece: bytes, end_stream: bool, events: list) -> None:
        conn = self.conn
        if piece and not end_stream and self._plain_data(conn, piece, events):
            return
        try:
            frames, more = conn._receive_data_frame(_InboundData(self._data_stream, piece, end_stream))
        except h2.exceptions.ProtocolError as e:
            conn._terminate_connection(e.error_code)
            raise
        conn._prepare_for_sending(frames)
        events += more

    def _plain_data(self, conn, piece: bytes, events: list) -> bool:
        """Accounts a piece of DATA exactly as h2's _receive_data_frame would, in the plain case; False otherwise.

        The plain case: both state machines where h2's transition for received DATA changes no state, the
        headers seen, no content-length to check (a CONNECT has none), and the piece within both inbound
        windows. Then all h2 does is shrink the windows, count the bytes and make a DataReceived, which is
        all done here; anything else (END_STREAM, a window overrun to refuse, a closed stream) is h2's."""
        stream = conn.streams.get(self._data_stream)
        if (stream is None or conn.state_machine.state not in _CONNECTION_OPEN
                or stream.state_machine.state not in _STREAM_RECEIVES or not stream.state_machine.headers_received
                or stream._expected_content_length is not None):
            return False
        length = len(piece)
        connection_window = conn._inbound_flow_control_window_manager
        stream_window = stream._inbound_window_manager
        if length > connection_window.current_window_size or length > stream_window.current_window_size:
            return False
        connection_window.current_window_size -= length
        stream_window.current_window_size -= length
        stream._actual_content_length += length
        events.append(h2.events.DataReceived(stream_id=self._data_stream, data=piece, flow_controlled_length=length))
        return True
