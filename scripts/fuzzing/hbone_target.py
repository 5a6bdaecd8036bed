"""Fuzz target: the HBONE server, `shoal.hbone.HboneServer` (sans-IO), and its asyncio driver
`shoal.hbone_io.HboneSession` over an in-memory transport.

An input is one client connection: the preface, SETTINGS, then CONNECTs
(valid and not), DATA, window updates, resets, pings, GOAWAY, rapid resets
and unknown frames, fields mutated (`scripts.fuzzing.h2frames`), cut into
random chunks. Between chunks a simulated driver plays the app's side:
accepts or refuses each CONNECT (now or later), attaches late, consumes
or withholds credit, sends, half-closes, resets, and pauses the transport.

What must hold:
- `receive_data` raises nothing but `ProtocolViolation`, after which the
  connection is closed and a GOAWAY queued; a command raises nothing but an
  `HboneError`;
- a ConnectRequested names an authority `parse_authority` takes; no stream
  has an event after its StreamClosed, and it is forgotten then;
- bounds: live tunnels <= our max concurrent streams, h2's stream records
  <= that too, credit held for an absent or paused reader <= one stream
  window, the lean splitter never commits to buffering a frame larger than
  the largest frame h2 accepts, nor h2 a header block over max_header_block;
- through HboneSession (`scripts.fuzzing.hbone_session`): nothing escapes
  `data_received`, no handler fails with anything but an HboneError, and
  once the connection is lost no stream record is left;
- the lean DATA path and h2 as shipped, given the same pieces, tell the
  same events where both take the input.

An input is the core with the simulated driver (65%), the session (20%) or
the two paths side by side (15%).
"""

from __future__ import annotations

from h2.connection import ConnectionState

from shoal import hbone

from scripts.fuzzing import Broken, Known, Unbounded, hbone_session, measure_growth
from scripts.fuzzing.generate import chance, chunked, mutate_pieces, size
from scripts.fuzzing.h2frames import Conversation, noise, odd_text, preface

NAME = "hbone"
EXPECTED = (hbone.HboneError,)
KNOWN: tuple = ()   # every bug found so far is fixed; tests/shoal/test_hbone_fuzz_findings.py keeps them fixed

AUTHORITIES = ("198.19.2.5:8080", "10.0.0.1:80", "[fd00::1]:443", "127.0.0.1:15006", "0.0.0.0:1", "1.2.3.4:65535",
               "host.example:80", "1.2.3.4", "1.2.3.4:0", "1.2.3.4:65536", "[::1]", ":80", "", "1.2.3.4:80:80",
               "[1.2.3.4]:80", "01.2.3.4:80", " 1.2.3.4:80", "1.2.3.4:+80", "1.2.3.4:-1", "[::ffff:1.2.3.4]:80")


def connect_request(talk: Conversation) -> list:
    rng = talk.rng
    authority = rng.choice(AUTHORITIES if talk.odd(0.3) else AUTHORITIES[:6])
    if talk.odd(0.1):
        authority = odd_text(rng, authority)
    method = rng.choice(("GET", "connect", "POST", "")) if talk.odd(0.05) else "CONNECT"
    headers = [(":method", method), (":authority", authority)]
    if chance(rng, 0.3):
        headers.append(("baggage", "k8s.namespace.name=demo"))
    return headers


def fuzz_settings(rng) -> hbone.Settings:
    return hbone.Settings(max_frame_size=rng.choice((16384, 16384, 1 << 20)),
                          stream_window=rng.choice((65535, 65535, 1 << 20)),
                          connection_window=rng.choice((65535, 1 << 20, 64 << 20)),
                          max_concurrent_streams=rng.choice((1, 2, 4, 8, 100)),
                          max_header_list_size=rng.choice((1024, 16 << 10)),
                          max_header_block=rng.choice((1024, 32 << 10)),
                          early_resets_allowed=rng.choice((1, 5, 200)))


def client_bytes(rng, settings: hbone.Settings) -> bytes:
    talk = Conversation(rng, connect_request, end_on_headers=0.05, max_frame=settings.max_frame_size,
                        max_streams=settings.max_concurrent_streams, noise=noise(rng))
    frames = talk.frames(1 + size(rng, 10, 100))
    talk.mutate_fields(frames)
    pieces = [frame.encode() for frame in frames]
    if talk.odd(0.2):
        pieces = mutate_pieces(rng, pieces, lambda r: b"".join(f.encode() for f in talk.frame()), flood=500)
    return preface(talk) + b"".join(pieces)


# --- the sans-IO core, with a simulated driver -----------------------------------------------

class Driver:
    """Plays the asyncio driver and the apps behind it, choosing at random, and checks every event."""

    def __init__(self, rng, server: hbone.HboneServer) -> None:
        self.rng = rng
        self.server = server
        self.requested: set[int] = set()     # ConnectRequested seen, not closed
        self.unanswered: list[int] = []      # requested, neither accepted nor refused yet
        self.unattached: list[int] = []      # accepted or waiting, the reader not attached (hold mode)
        self.accepted: set[int] = set()
        self.closed: set[int] = set()
        self.owed: list[tuple[int, int]] = []   # credit to give back later (a slow app)

    def command(self, call, *args):
        try:
            return call(*args) or []
        except EXPECTED:
            return []

    def handle(self, events: list) -> None:
        rng = self.rng
        for ev in events:
            sid = getattr(ev, "stream_id", 0)
            if sid and sid in self.closed:
                raise Broken(f"{ev} after StreamClosed({sid})")
            cls = ev.__class__
            if cls is hbone.ConnectRequested:
                try:
                    hbone.parse_authority(ev.authority)
                except hbone.BadAuthority as e:
                    raise Broken(f"ConnectRequested with an authority the core should have refused: {e}") from None
                if sid in self.requested or sid % 2 == 0:
                    raise Broken(f"ConnectRequested twice or on an even stream: {ev}")
                self.requested.add(sid)
                self.unanswered.append(sid)
                if self.server.hold_until_attached:
                    self.unattached.append(sid)
            elif cls is hbone.DataReceived:
                if sid not in self.requested:
                    raise Broken(f"{ev} on a stream never requested")
                if chance(rng, 0.85):
                    self.server.consumed(sid, ev.flow_controlled_length)
                else:
                    self.owed.append((sid, ev.flow_controlled_length))
            elif cls is hbone.StreamClosed:
                self.closed.add(sid)
                self.requested.discard(sid)
                self.accepted.discard(sid)
                if self.server.state_of(sid) is not None:
                    raise Broken(f"stream {sid} still has state {self.server.state_of(sid)} after StreamClosed")
                self.unattached = [s for s in self.unattached if s != sid]
                self.unanswered = [s for s in self.unanswered if s != sid]

    def act(self) -> None:
        """A few things an app and the driver might do between two reads."""
        rng, server = self.rng, self.server
        for _ in range(rng.randrange(4)):
            roll = rng.random()
            if roll < 0.35 and self.unanswered:
                sid = self.unanswered.pop(rng.randrange(len(self.unanswered)))
                if chance(rng, 0.8):
                    self.command(server.accept, sid)
                    self.accepted.add(sid)
                else:
                    self.handle(self.command(server.refuse, sid, rng.choice((401, 403, 503)), "policy\r\nsays no"))
            elif roll < 0.5 and self.unattached and (sid := rng.choice(self.unattached)) not in self.unanswered:
                self.unattached.remove(sid)
                self.handle(self.command(server.attach, sid))
            elif roll < 0.65 and self.accepted:
                sid = rng.choice(sorted(self.accepted))
                self.handle(self.command(server.send, sid, rng.randbytes(rng.choice((1, 100, 70000)))))
            elif roll < 0.7 and self.accepted:
                self.handle(self.command(server.end, rng.choice(sorted(self.accepted))))
            elif roll < 0.75 and self.requested:
                self.handle(self.command(server.reset, rng.choice(sorted(self.requested))))
            elif roll < 0.8 and self.owed:
                for sid, length in self.owed:
                    server.consumed(sid, length)
                self.owed.clear()
            elif roll < 0.85 and self.requested:
                sid = rng.choice(sorted(self.requested))
                (server.pause_receiving if chance(rng, 0.5) else server.resume_receiving)(sid)
            elif roll < 0.9:
                self.handle(server.transport_paused() if chance(rng, 0.5) else server.transport_resumed())
            elif roll < 0.91:
                server.close()
            server.data_to_send()


def check_bounds(server: hbone.HboneServer, unattached: int) -> None:
    h2conn = server._h2
    limit = h2conn.local_settings.max_concurrent_streams
    live = sum(1 for t in server._tunnels.values() if t.state is not hbone.TunnelState.CLOSED)
    if live > limit:
        raise Unbounded(f"{live} live tunnels, more than the {limit} concurrent streams allowed")
    if len(server._tunnels) > limit + unattached:
        raise Unbounded(f"{len(server._tunnels)} tunnel records for {live} live streams and {unattached} readers to come")
    if len(h2conn.streams) > limit + 1:
        raise Unbounded(f"h2 holds {len(h2conn.streams)} stream records for at most {limit} concurrent streams")
    window = max(65535, h2conn.local_settings.initial_window_size, server.settings.stream_window)
    for tunnel in server._tunnels.values():
        if tunnel.held_credit() > window or tunnel.withheld > window:
            raise Unbounded(f"stream {tunnel.stream_id} keeps {tunnel.held_credit()} bytes for its reader and "
                            f"withholds {tunnel.withheld} of credit, more than a stream window ({window})")
    if not set(server._blocked) <= set(server._tunnels):
        raise Broken("a blocked stream that has no tunnel")
    splitter = server._splitter
    if splitter is not None:
        largest = 9 + h2conn.max_inbound_frame_size
        if splitter._frame_end > largest or len(splitter._inbound) > largest:
            raise Unbounded(f"the lean splitter buffers a frame of {splitter._frame_end - 9} bytes before h2 sees "
                            f"it; h2 refuses frames over {h2conn.max_inbound_frame_size}")
        block = sum(len(frame.data) for frame in h2conn.incoming_buffer._headers_buffer)
        if block > server.settings.max_header_block:
            raise Unbounded(f"h2 buffers a header block of {block} bytes, over max_header_block "
                            f"({server.settings.max_header_block})")


def preface_pending(server: hbone.HboneServer) -> bool:
    return bool(server._h2.incoming_buffer._preamble_len)


def run_core(rng) -> str:
    settings = fuzz_settings(rng)
    server = hbone.HboneServer(settings, lean=chance(rng, 0.7), hold_until_attached=chance(rng, 0.5))
    server.initiate()
    driver = Driver(rng, server)
    for chunk in chunked(rng, client_bytes(rng, settings)):
        try:
            events = server.receive_data(chunk)
        except hbone.ProtocolViolation as e:
            if not server.closed:
                raise Broken("ProtocolViolation raised, but the connection is not marked closed") from None
            # h2 is CLOSED once it queued a GOAWAY; RFC 9113 3.4 lets a peer without the preface go without one.
            if server._h2.state_machine.state is not ConnectionState.CLOSED and not preface_pending(server):
                raise Broken(f"ProtocolViolation raised, but no GOAWAY was queued ({e})") from None
            driver.handle(e.events)
            server.data_to_send()
            driver.handle(server.abandon_streams())
            return "refused"
        driver.handle(events)
        check_bounds(server, len(driver.unattached))
        driver.act()
        check_bounds(server, len(driver.unattached))
    driver.handle(server.abandon_streams())
    return "accepted"


def run_session(rng) -> str:
    settings = fuzz_settings(rng)
    return hbone_session.run(rng, settings, client_bytes(rng, settings), lean=chance(rng, 0.8))


# --- the lean DATA path against h2 as shipped ------------------------------------------------

def merged(events: list) -> list:
    """Events with each run of DataReceived on one stream joined: the lean path hands DATA over as it
    arrives, h2 a frame at a time."""
    out: list = []
    for ev in events:
        last = out[-1] if out else None
        if ev.__class__ is hbone.DataReceived and last.__class__ is hbone.DataReceived and last.stream_id == ev.stream_id:
            out[-1] = hbone.DataReceived(ev.stream_id, last.data + ev.data,
                                         last.flow_controlled_length + ev.flow_controlled_length)
        else:
            out.append(ev)
    return out


def mid_frame(server: hbone.HboneServer) -> bool:
    """Whether the server holds part of a frame, waiting for the rest."""
    splitter = server._splitter
    if splitter is not None and (splitter._inbound or splitter._data_left):
        return True
    return bool(server._h2.incoming_buffer._data)


def run_differential(rng) -> str:
    """The same bytes, in the same pieces, to a lean server and to one on h2 as shipped, each accepting every
    CONNECT and consuming every byte at once: where both take the input, they must tell the same events."""
    settings = fuzz_settings(rng)
    servers = [hbone.HboneServer(settings, lean=lean, clock=lambda: 0.0) for lean in (True, False)]
    seen: list[list] = [[], []]
    refused: list[str | None] = [None, None]
    for server in servers:
        server.initiate()
    for chunk in chunked(rng, client_bytes(rng, settings)):
        for n, server in enumerate(servers):
            if refused[n] is not None:
                continue
            try:
                events = server.receive_data(chunk)
            except hbone.ProtocolViolation as e:
                refused[n] = str(e)
                continue
            for ev in events:
                if ev.__class__ is hbone.ConnectRequested and server.state_of(ev.stream_id) is not None:
                    try:   # (unless a reset later in `events` ended it, or a GOAWAY the connection)
                        server.accept(ev.stream_id)
                    except EXPECTED:
                        pass
                elif ev.__class__ is hbone.DataReceived:
                    server.consumed(ev.stream_id, ev.flow_controlled_length)
            seen[n] += events
            server.data_to_send()
    # Only inputs both took are compared. Whether a frame on a stream the peer already ended is a stream error
    # or a connection error depends, in h2, on whether our answer on that stream went out before the frame
    # was parsed; the lean path parses a DATA frame's header as soon as it arrives, h2 once the frame is
    # whole, so on such input one may refuse the connection where the other resets the stream.
    lean, plain = servers
    if refused == [None, None] and not mid_frame(lean) and not mid_frame(plain) and merged(seen[0]) != merged(seen[1]):
        first = next(i for i, (a, b) in enumerate(zip(merged(seen[0]) + [None], merged(seen[1]) + [None])) if a != b)
        raise Broken(f"the lean path and h2 as shipped tell different events, from #{first}: "
                     f"{merged(seen[0])[first:first + 2]} against {merged(seen[1])[first:first + 2]}")
    return "refused" if refused[0] else "accepted"


def run_one(rng) -> str:
    roll = rng.random()
    return run_session(rng) if roll < 0.2 else run_differential(rng) if roll < 0.35 else run_core(rng)


# --- soak: one connection, many tunnels -----------------------------------------------------

def soak(cycles: int) -> dict:
    """`cycles` tunnels opened and ended (each way: both half-closes, a reset either side, a refusal) on one
    connection; returns the memory the second half left behind. h2 remembers up to 2**16 closed stream ids
    per connection; the cap is lowered to a quarter of the
    cycles here, so that the first half reaches that steady state."""
    client, server = hbone.HboneClient(), hbone.HboneServer(hold_until_attached=True)
    for side in (client, server):
        side.initiate()
        side._h2._closed_streams._size_limit = max(16, cycles // 4)

    def pump() -> list:
        events = []
        for _ in range(4):
            events += server.receive_data(client.data_to_send())
            client.receive_data(server.data_to_send())
        return events

    pump()

    def cycle(n: int) -> None:
        sid = client.open(f"10.0.{n % 250}.{n % 200 + 1}:8080")
        pump()
        if n % 7 == 0:
            server.refuse(sid, 403, "denied")
            pump()
            return
        server.accept(sid)
        server.attach(sid)
        pump()
        client.send(sid, b"request" * (n % 50))
        pump()
        server.send(sid, b"response" * (n % 30))
        for ev in pump():
            if isinstance(ev, hbone.DataReceived):
                server.consumed(ev.stream_id, ev.flow_controlled_length)
        if n % 5 == 0:
            (client if n % 2 else server).reset(sid)
        else:
            client.end(sid)
            server.end(sid)
        pump()

    return measure_growth(cycle, cycles, lambda: {"tunnels": len(server._tunnels), "h2_streams": len(server._h2.streams)})

