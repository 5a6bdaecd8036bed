"""The hand-off between a node agent and its ztunnel (protocol in shoal/api/handoff.proto).

The node agent is the server of a SOCK_SEQPACKET unix socket; the ztunnel
connects, says Hello, and is then told about workloads one message at a time:
AddWorkload (with the pod's netns fd as SCM_RIGHTS), KeepWorkload, DelWorkload
and, at the end of every replay, SnapshotSent. It acks each message before the
next one is sent. A pod counts as enrolled only after its AddWorkload was acked
without error.

The two protocol cores (this module) are sans-IO: `AgentSide` and
`ZtunnelSide` take bytes (plus received fds) and return events; sending is a
`Send` command, payload plus optional fd, carried out by a driver. The asyncio
drivers are `HandoffServer` (node agent) and `HandoffClient` (ztunnel) in
shoal/handoff_io.py, which imports this module and not the other way round:
import them from there.

What SnapshotSent means: after a (re)connect the agent replays every workload
it wants meshed; SnapshotSent closes that replay, and the ztunnel drops every
workload it still holds that was neither added nor kept since its Hello.
`ZtunnelSide` computes that set for the ztunnel (`SnapshotReceived.stale`).

Fd ownership: fds received by a core are handed on in its events; whoever
handles the event owns them (closes them when done).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from google.protobuf.message import DecodeError

from shoal.api import handoff_pb2 as pb
from shoal.errors import ShoalError

VERSION = 1
DEFAULT_SOCKET = Path("/var/run/shoal/ztunnel.sock")
MAX_PACKET = 64 * 1024
MAX_FDS = 4


class HandoffError(ShoalError):
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
            uid = getattr(message, "del").uid  # `del` is a Python keyword
            self.known.discard(uid)
            self.replayed.discard(uid)
            event = WorkloadDeleted(uid)
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
