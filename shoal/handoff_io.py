"""The asyncio drivers of the hand-off (protocol cores in shoal/handoff.py).

- `HandoffServer`, the node agent's: listens on the SOCK_SEQPACKET socket,
  serves one ztunnel at a time (a newer one replaces the old; an older one
  that reconnects is turned away), replays the agent's set at every Hello,
  sends one message at a time, and drops a ztunnel that does not ack within
  `ack_timeout`.
- `HandoffClient`, the ztunnel's: connects and reconnects with backoff, says
  Hello, and calls its `WorkloadHandler` for every message, acking each.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import struct
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Protocol

from shoal import log
from shoal.handoff import (MAX_FDS, MAX_PACKET, AgentSide, ProtocolViolation, Send, SnapshotReceived,
                           Workload, WorkloadAdded, WorkloadDeleted, ZtunnelGreeted, ZtunnelSide, _close_all)

logger = log.get("shoal.handoff")

ACK_TIMEOUT = 30.0


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
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def process_start(pid: int | None) -> int | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat, field 22); None if unknown.
    Pids are reused, start times are not: this is what tells a newer ztunnel from an older one."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# -- the agent's driver --------------------------------------------------------


class HandoffServer:
    """The node agent's asyncio server: one ztunnel at a time, the newest.

    During an upgrade two ztunnels run on the node: the new one connects and
    replaces the old, which loses its connection and keeps trying to connect
    while it drains. Such an older process (by start time) is turned away
    while the newer one is connected; otherwise the two would take the
    hand-off from each other in turn, and in eBPF mode the pods' inbound
    capture would point at the draining ztunnel's closed listener.

    - `snapshot()` returns the agent's whole set, as (Workload, netns fd or
      None) pairs; a None fd is replayed as KeepWorkload. Called at every Hello.
    - `on_event(event, server)` receives `ZtunnelGreeted` (with the peer pid
      in `server.peer_pid`), every `Acked`, and None when the ztunnel left.
    - `add`/`delete` queue messages for the connected ztunnel; they are
      dropped when none is connected (the next replay carries the state).
    """

    def __init__(self, path: str | os.PathLike,
                 snapshot: Callable[[], Iterable[tuple[Workload, int | None]]],
                 on_event: Callable[[object, "HandoffServer"], Awaitable[None] | None], *,
                 ack_timeout: float = ACK_TIMEOUT) -> None:
        self.path = Path(path)
        self.ack_timeout = ack_timeout
        self.snapshot = snapshot
        self.on_event = on_event
        self.listener: socket.socket | None = None
        self.side: AgentSide | None = None
        self.conn: socket.socket | None = None
        self.peer_pid: int | None = None
        self.peer_started: int | None = None
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
            if self._older_than_current(conn):
                conn.close()
                continue
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

    def _older_than_current(self, conn: socket.socket) -> bool:
        """Is the connecting process older than the connected ztunnel? (Unknown start times: not older.)"""
        if self.conn is None or self.peer_started is None:
            return False
        try:
            pid = peer_pid(conn)
        except OSError:
            return False
        started = process_start(pid)
        if started is None or started >= self.peer_started:
            return False
        logger.debug("an older ztunnel tried to connect while a newer one holds the hand-off; turned away",
                     pid=pid, current=self.peer_pid)
        return True

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
        self.side, self.conn, self.peer_pid, self.peer_started = None, None, None, None
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
        self.peer_started = process_start(self.peer_pid)
        reader = asyncio.create_task(_recv(conn))
        loop = asyncio.get_running_loop()
        sent_at = 0.0
        try:
            while True:
                waker = asyncio.create_task(self._wake.wait())
                timeout = None
                if side.in_flight is not None:
                    timeout = max(0.0, sent_at + self.ack_timeout - loop.time())
                done, _ = await asyncio.wait({reader, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                self._wake.clear()
                if not done:
                    logger.warning("the ztunnel did not ack within the timeout; dropping its connection",
                                   message=side.in_flight.kind, uid=side.in_flight.uid, seconds=self.ack_timeout)
                    return
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
                    sent_at = loop.time()
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
