"""The hand-off between a node agent and its ztunnel (protocol in shoal/api/handoff.proto).

The node agent is the server of a SOCK_SEQPACKET unix socket; the ztunnel
connects, says Hello, and is then told about workloads one message at a time:
AddWorkload (with the pod's netns fd as SCM_RIGHTS), KeepWorkload, DelWorkload
and, at the end of every replay, SnapshotSent. It acks each message before the
next one is sent. A pod counts as enrolled only after its AddWorkload was acked
without error.

The two protocol cores are sans-IO: `AgentSide` and `ZtunnelSide` take bytes
(plus received fds) and return events; sending is a `Send` command, payload
plus optional fd, carried out by a driver. The asyncio drivers are
`HandoffServer` (node agent) and `HandoffClient` (ztunnel).

What SnapshotSent means: after a (re)connect the agent replays every workload
it wants meshed; SnapshotSent closes that replay, and the ztunnel drops every
workload it still holds that was neither added nor kept since its Hello.
`ZtunnelSide` computes that set for the ztunnel (`SnapshotReceived.stale`).

Fd ownership: fds received by a core are handed on in its events; whoever
handles the event owns them (closes them when done).
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Protocol

from google.protobuf.message import DecodeError

from shoal import log
from shoal.api import handoff_pb2 as pb

VERSION = 1
DEFAULT_SOCKET = Path("/var/run/shoal/ztunnel.sock")
MAX_PACKET = 64 * 1024
MAX_FDS = 4

logger = log.get("shoal.handoff")


class HandoffError(Exception):
    """Base of the hand-off errors."""


class ProtocolViolation(HandoffError):
    """The peer sent something the protocol does not allow here; the connection is dropped."""


class NotConnected(HandoffError):
    pass


@dataclass(frozen=True)
class Workload:
    uid: str
    name: str
    namespace: str
    service_account: str = "default"


# -- commands and events -------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Command: send one packet, with `fd` attached as SCM_RIGHTS when not None."""
    payload: bytes
    fd: int | None = None


@dataclass(frozen=True)
class ZtunnelGreeted:
    version: int


@dataclass(frozen=True)
class Acked:
    """The ztunnel acked one message. `fds` came with the ack (owned by the receiver)."""
    kind: str  # add, keep, del, snapshot_sent
    uid: str
    error: str | None
    fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class WorkloadAdded:
    workload: Workload
    netns_fd: int


@dataclass(frozen=True)
class WorkloadKept:
    uid: str


@dataclass(frozen=True)
class WorkloadDeleted:
    uid: str


@dataclass(frozen=True)
class SnapshotReceived:
    """The replay is complete; `stale` were held before and not replayed: drop them."""
    stale: frozenset[str]


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- the agent's side ----------------------------------------------------------


@dataclass
class _Pending:
    kind: str
    uid: str
    payload: bytes
    fd: int | None


class AgentSide:
    """One ztunnel connection, seen from the agent. Sans-IO.

    States: `greeting` (waiting for Hello), `open`, `closed`. Messages queued
    with add/keep/delete/snapshot_sent go out one at a time: `next_send()`
    returns the next `Send` only when nothing is waiting for its ack.
    Fds passed to `add` are borrowed: the driver sends them and the caller
    keeps ownership.
    """

    def __init__(self) -> None:
        self.state = "greeting"
        self.queue: deque[_Pending] = deque()
        self.in_flight: _Pending | None = None
        self.version: int | None = None

    def add(self, workload: Workload, netns_fd: int) -> None:
        message = pb.AgentMessage(add=pb.AddWorkload(
            uid=workload.uid, name=workload.name, namespace=workload.namespace,
            service_account=workload.service_account))
        self._queue("add", workload.uid, message, netns_fd)

    def keep(self, uid: str) -> None:
        self._queue("keep", uid, pb.AgentMessage(keep=pb.KeepWorkload(uid=uid)))

    def delete(self, uid: str) -> None:
        self._queue("del", uid, pb.AgentMessage(**{"del": pb.DelWorkload(uid=uid)}))

    def snapshot_sent(self) -> None:
        self._queue("snapshot_sent", "", pb.AgentMessage(snapshot_sent=pb.SnapshotSent()))

    def _queue(self, kind: str, uid: str, message: pb.AgentMessage, fd: int | None = None) -> None:
        if self.state == "closed":
            raise NotConnected("the ztunnel connection is closed")
        self.queue.append(_Pending(kind, uid, message.SerializeToString(), fd))

    def next_send(self) -> Send | None:
        if self.state != "open" or self.in_flight is not None or not self.queue:
            return None
        self.in_flight = self.queue.popleft()
        return Send(self.in_flight.payload, self.in_flight.fd)

    def receive(self, data: bytes, fds: Iterable[int] = ()) -> list:
        fds = tuple(fds)
        try:
            return self._receive(data, fds)
        except BaseException:
            _close_all(fds)
            self.state = "closed"
            raise

    def _receive(self, data: bytes, fds: tuple[int, ...]) -> list:
        if self.state == "closed":
            raise ProtocolViolation("message after the connection was closed")
        message = pb.ZtunnelMessage()
        try:
            message.ParseFromString(data)
        except DecodeError as e:
            raise ProtocolViolation(f"undecodable ZtunnelMessage ({len(data)} bytes): {e}") from None
        kind = message.WhichOneof("payload")
        if self.state == "greeting":
            if kind != "hello":
                raise ProtocolViolation(f"expected Hello first, got {kind or 'an empty message'}")
            if fds:
                raise ProtocolViolation("Hello must not carry file descriptors")
            if message.hello.version != VERSION:
                raise ProtocolViolation(f"ztunnel speaks hand-off version {message.hello.version}; this agent speaks {VERSION}")
            self.state = "open"
            self.version = message.hello.version
            return [ZtunnelGreeted(message.hello.version)]
        if kind != "ack":
            raise ProtocolViolation(f"expected Ack, got {kind or 'an empty message'}")
        if self.in_flight is None:
            raise ProtocolViolation("Ack with no message waiting for one")
        if fds and self.in_flight.kind != "add":
            raise ProtocolViolation(f"only the Ack of an AddWorkload may carry fds, not of {self.in_flight.kind}")
        if len(fds) > 1:
            raise ProtocolViolation(f"an Ack carries at most one fd (the inbound listener), got {len(fds)}")
        done, self.in_flight = self.in_flight, None
        return [Acked(done.kind, done.uid, message.ack.error or None, fds)]

    def close(self) -> None:
        self.state = "closed"
        self.queue.clear()
        self.in_flight = None


# -- the ztunnel's side --------------------------------------------------------


class ZtunnelSide:
    """The ztunnel's end of one connection. Sans-IO.

    `known` is the set of workload uids the ztunnel holds (it survives
    reconnects: pass the previous set in). Every event returned by `receive`
    must be answered with exactly one `ack()` before more can arrive.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known = set(known)
        self.replayed: set[str] = set()
        self.awaiting_ack = False
        self.snapshot_done = False
        self.hello_sent = False

    def hello(self) -> Send:
        self.hello_sent = True
        return Send(pb.ZtunnelMessage(hello=pb.Hello(version=VERSION)).SerializeToString())

    def ack(self, error: str | None = None, fd: int | None = None) -> Send:
        if not self.awaiting_ack:
            raise ProtocolViolation("nothing to ack")
        self.awaiting_ack = False
        return Send(pb.ZtunnelMessage(ack=pb.Ack(error=error or "")).SerializeToString(), fd)

    def receive(self, data: bytes, fds: Iterable[int] = ()) -> list:
        fds = tuple(fds)
        try:
            return self._receive(data, fds)
        except BaseException:
            _close_all(fds)
            raise

    def _receive(self, data: bytes, fds: tuple[int, ...]) -> list:
        if not self.hello_sent:
            raise ProtocolViolation("message before Hello was sent")
        if self.awaiting_ack:
            raise ProtocolViolation("the agent sent a message before the previous one was acked")
        message = pb.AgentMessage()
        try:
            message.ParseFromString(data)
        except DecodeError as e:
            raise ProtocolViolation(f"undecodable AgentMessage ({len(data)} bytes): {e}") from None
        kind = message.WhichOneof("payload")
        if kind != "add" and fds:
            raise ProtocolViolation(f"{kind} must not carry file descriptors")
        if kind == "add":
            if len(fds) != 1:
                raise ProtocolViolation(f"AddWorkload must carry exactly one netns fd, got {len(fds)}")
            add = message.add
            if not add.uid:
                raise ProtocolViolation("AddWorkload without a uid")
            self._seen(add.uid)
            event = WorkloadAdded(Workload(add.uid, add.name, add.namespace, add.service_account or "default"), fds[0])
        elif kind == "keep":
            if self.snapshot_done:
                raise ProtocolViolation("KeepWorkload after SnapshotSent")
            self._seen(message.keep.uid)
            event = WorkloadKept(message.keep.uid)
        elif kind == "del":
            self.known.discard(getattr(message, "del").uid)
            self.replayed.discard(getattr(message, "del").uid)
            event = WorkloadDeleted(getattr(message, "del").uid)
        elif kind == "snapshot_sent":
            stale = frozenset(self.known - self.replayed)
            self.known -= stale
            self.snapshot_done = True
            event = SnapshotReceived(stale)
        else:
            raise ProtocolViolation("empty AgentMessage")
        self.awaiting_ack = True
        return [event]

    def _seen(self, uid: str) -> None:
        self.known.add(uid)
        if not self.snapshot_done:
            self.replayed.add(uid)


# -- socket plumbing -----------------------------------------------------------


def _recv_packet(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One packet and its fds; b'' at end of stream. Raises BlockingIOError when none is ready."""
    data, ancdata, flags, _ = sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(MAX_FDS * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
            fds.extend(arr)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        _close_all(fds)
        raise ProtocolViolation("packet or its fds were truncated")
    return data, fds


def _send_packet(sock: socket.socket, send: Send) -> None:
    ancdata = []
    if send.fd is not None:
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [send.fd]))]
    sock.sendmsg([send.payload], ancdata)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    future = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: future.done() or future.set_result(None))
    try:
        await future
    finally:
        loop.remove_reader(fd)


async def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return _recv_packet(sock)
        except BlockingIOError:
            await _readable(loop, sock)


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a unix socket (SO_PEERCRED)."""
    import struct
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


# -- the agent's driver --------------------------------------------------------


class HandoffServer:
    """The node agent's asyncio server: one ztunnel at a time (a new one replaces the old).

    - `snapshot()` returns the agent's whole set, as (Workload, netns fd or
      None) pairs; a None fd is replayed as KeepWorkload. Called at every Hello.
    - `on_event(event, server)` receives `ZtunnelGreeted` (with the peer pid
      in `server.peer_pid`), every `Acked`, and None when the ztunnel left.
    - `add`/`delete` queue messages for the connected ztunnel; they are
      dropped when none is connected (the next replay carries the state).
    """

    def __init__(self, path: str | os.PathLike,
                 snapshot: Callable[[], Iterable[tuple[Workload, int | None]]],
                 on_event: Callable[[object, "HandoffServer"], Awaitable[None] | None]) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self.on_event = on_event
        self.listener: socket.socket | None = None
        self.side: AgentSide | None = None
        self.conn: socket.socket | None = None
        self.peer_pid: int | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._serve_task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.side is not None and self.side.state == "open"

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a stale socket from a previous run of this agent
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(4)
        listener.setblocking(False)
        self.listener = listener
        self._serve_task = asyncio.create_task(self._accept_loop(), name="handoff-accept")

    async def close(self) -> None:
        for task in [self._serve_task, *self._tasks]:
            if task:
                task.cancel()
        for task in [self._serve_task, *self._tasks]:
            if task:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        if self.listener:
            self.listener.close()
            self.listener = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def add(self, workload: Workload, netns_fd: int) -> bool:
        if not self.connected:
            return False
        self.side.add(workload, netns_fd)
        self._wake.set()
        return True

    def delete(self, uid: str) -> bool:
        if not self.connected:
            return False
        self.side.delete(uid)
        self._wake.set()
        return True

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            conn.setblocking(False)
            if self.conn is not None:
                logger.info("a new ztunnel connected; dropping the previous connection")
            for task in list(self._tasks):
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
            task = asyncio.create_task(self._serve(conn), name="handoff-conn")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def disconnect(self) -> None:
        """Ends the current ztunnel connection (it will reconnect and get a replay)."""
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _forget(self, conn: socket.socket) -> bool:
        conn.close()
        if self.conn is not conn:
            return False
        if self.side:
            self.side.close()
        self.side, self.conn, self.peer_pid = None, None, None
        return True

    async def _emit(self, event) -> None:
        result = self.on_event(event, self)
        if asyncio.iscoroutine(result):
            await result

    async def _serve(self, conn: socket.socket) -> None:
        side = AgentSide()
        self.side, self.conn = side, conn
        try:
            self.peer_pid = peer_pid(conn)
        except OSError:
            self.peer_pid = None
        reader = asyncio.create_task(_recv(conn))
        try:
            while True:
                waker = asyncio.create_task(self._wake.wait())
                done, _ = await asyncio.wait({reader, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                self._wake.clear()
                if reader in done:
                    data, fds = reader.result()
                    if not data and not fds:
                        logger.info("ztunnel disconnected", pid=self.peer_pid)
                        return
                    for event in side.receive(data, fds):
                        if isinstance(event, ZtunnelGreeted):
                            logger.info("ztunnel connected", pid=self.peer_pid, version=event.version)
                            for workload, fd in self.snapshot():
                                side.add(workload, fd) if fd is not None else side.keep(workload.uid)
                            side.snapshot_sent()
                        await self._emit(event)
                    reader = asyncio.create_task(_recv(conn))
                while (send := side.next_send()) is not None:
                    _send_packet(conn, send)
        except ProtocolViolation as e:
            logger.warning("ztunnel broke the hand-off protocol; dropping its connection", error=str(e))
        except (ConnectionError, OSError) as e:
            logger.info("ztunnel connection lost", error=str(e))
        finally:
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass
            if self._forget(conn):
                await self._emit(None)


# -- the ztunnel's driver ------------------------------------------------------


class WorkloadHandler(Protocol):
    """What the ztunnel implements to receive workloads from its node agent.

    Raising from a method nacks the message (Ack.error is the exception text).
    """

    async def add_workload(self, workload: Workload, netns_fd: int) -> socket.socket | None:
        """Starts serving the pod (listeners 15001/15006/15008 in its netns).

        Owns `netns_fd` (close it when done). Return the 15006 listening socket
        so that the eBPF redirect mode can steer inbound traffic to it (the
        agent receives a duplicate; returning None is fine in iptables mode).
        Called again for a workload already held (after a reconnect): keep it
        and return its existing inbound listener.
        """

    async def del_workload(self, uid: str) -> None:
        """Stops serving the pod: close its listeners and connections."""


class HandoffClient:
    """The ztunnel's asyncio client: connects (and reconnects), says Hello, serves the agent.

    `run()` loops until `stop()`; `synced` is set once a replay completed on
    the current connection. Stale workloads after a replay are handed to
    `handler.del_workload`.
    """

    def __init__(self, path: str | os.PathLike, handler: WorkloadHandler, *,
                 retry_seconds: float = 0.2, max_retry_seconds: float = 5.0) -> None:
        self.path = Path(path)
        self.handler = handler
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.known: set[str] = set()
        self.synced = asyncio.Event()
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._sock: socket.socket | None = None

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    async def run(self) -> None:
        delay = self.retry_seconds
        while not self._stopping.is_set():
            try:
                await self.run_once()
                delay = self.retry_seconds
            except (FileNotFoundError, ConnectionRefusedError) as e:
                logger.debug("node agent not reachable yet", path=str(self.path), error=str(e))
            except ProtocolViolation as e:
                logger.warning("node agent broke the hand-off protocol; reconnecting", error=str(e))
            except (ConnectionError, OSError) as e:
                logger.info("hand-off connection lost; reconnecting", error=str(e))
            if self._stopping.is_set():
                break
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, self.max_retry_seconds)

    async def run_once(self) -> None:
        """One connection: until the agent closes it (or `stop()`)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        self._sock = sock
        try:
            await loop.sock_connect(sock, str(self.path))
            side = ZtunnelSide(self.known)
            _send_packet(sock, side.hello())
            self.connected.set()
            while not self._stopping.is_set():
                data, fds = await _recv(sock)
                if not data and not fds:
                    return
                for event in side.receive(data, fds):
                    send = await self._handle(side, event)
                    try:
                        _send_packet(sock, send)
                    finally:
                        if send.fd is not None:
                            os.close(send.fd)
                self.known = set(side.known)
        finally:
            self.connected.clear()
            self.synced.clear()
            self._sock = None
            sock.close()

    async def _handle(self, side: ZtunnelSide, event) -> Send:
        try:
            if isinstance(event, WorkloadAdded):
                listener = await self.handler.add_workload(event.workload, event.netns_fd)
                return side.ack(fd=os.dup(listener.fileno()) if listener is not None else None)
            if isinstance(event, WorkloadDeleted):
                await self.handler.del_workload(event.uid)
            elif isinstance(event, SnapshotReceived):
                for uid in sorted(event.stale):
                    await self.handler.del_workload(uid)
                self.synced.set()
            return side.ack()
        except Exception as e:  # the handler's failure is reported to the agent, not fatal here
            if isinstance(event, WorkloadAdded):
                side.known.discard(event.workload.uid)
            logger.warning("workload hand-off failed", message=type(event).__name__, error=str(e))
            return side.ack(error=f"{type(e).__name__}: {e}")
