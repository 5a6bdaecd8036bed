"""One Config.Watch subscriber, sans-IO: what to send it next, and what its acks mean.

The gRPC driver (`control_plane.watch`) calls `next_response()` whenever the
subscriber may be sent something, writes the bytes it returns, and feeds the
client's acks to `on_ack()`. Nothing here waits or does I/O, so the logic is
tested with a `ConfigState` and plain calls.

Per resource type the subscription knows the client's *base*: what the client
holds and has acked, either a counter of the state's journal or, right after
a (re)subscribe, the versions the client said it holds. A response is a diff
from that base to the current state, restricted to the subscriber's scope.

- At most one response per type is in flight. Changes that arrive meanwhile
  are coalesced into the next response, so a slow client gets fewer, larger
  responses and never holds back the producer or other subscribers.
- ACK: the in-flight response becomes the base.
- NACK: the base stays; the type is held until the state changes again (past
  the version that was refused), so the bad update is not re-sent in a loop.
- After Subscribe every type of the scope is answered once, even if empty,
  so the client knows when it is in sync.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from control_plane.state import ConfigState, TypeJournal
from shoal.api import config_pb2
from shoal.config_client import NODE_TYPES, WAYPOINT_TYPES
from shoal.model import PolicyScope, ResourceType



@dataclass(frozen=True)
class Scope:
    """Who subscribes. A ztunnel gets everything it needs for L4 on any node
    (all workloads, services, waypoints and L4 policy); a waypoint gets the
    services and workloads it may route to, the policy it may enforce (its
    namespace's and mesh-wide), and the route tables of its namespace; an
    ingress gateway (a waypoint-scoped subscriber named by its service
    account) also gets the TLS credentials addressed to it."""

    node: str = ""
    waypoint_namespace: str = ""
    waypoint_name: str = ""
    root_namespace: str = "istio-system"

    @property
    def is_waypoint(self) -> bool:
        return bool(self.waypoint_namespace)

    @property
    def types(self) -> tuple[ResourceType, ...]:
        return WAYPOINT_TYPES if self.is_waypoint else NODE_TYPES

    def describe(self) -> str:
        return (f"waypoint {self.waypoint_namespace}/{self.waypoint_name}" if self.is_waypoint
                else f"node {self.node}")

    def admits(self, rtype: ResourceType, resource: Any) -> bool:
        """Whether the subscriber gets `resource`. Invariant: the answer depends only on
        what a resource's key fixes (its namespace), so a resource never moves in or
        out of a scope by changing; only adding and deleting it matter."""
        if not self.is_waypoint:
            return rtype in NODE_TYPES
        if rtype is ResourceType.ROUTE_TABLE:
            return resource.namespace == self.waypoint_namespace
        if rtype is ResourceType.TLS_CREDENTIAL:       # a private key: to its own gateway only
            return resource.gateway == f"{self.waypoint_namespace}/{self.waypoint_name}"
        if rtype is ResourceType.AUTHORIZATION:
            return (resource.namespace == self.waypoint_namespace or resource.scope is PolicyScope.MESH
                    or resource.namespace == self.root_namespace)
        return rtype in WAYPOINT_TYPES


class AckOutcome(Enum):
    ACKED = "acked"
    NACKED = "nacked"
    STALE = "stale"        # an ack for a nonce that is not in flight: ignored


@dataclass
class _Base:
    counter: int | None = None             # the client holds the state at this journal counter
    held: dict[str, str] | None = None     # ... or exactly these key -> version (after Subscribe)


@dataclass
class _InFlight:
    nonce: str
    counter: int


@dataclass
class _TypeProgress:
    base: _Base
    initial_sent: bool = False
    in_flight: _InFlight | None = None
    hold_until: int = -1                   # after a NACK: send only once the counter passes this


@dataclass(frozen=True)
class Outgoing:
    """A response ready to write: its bytes, plus what the driver reports in metrics and logs."""
    type: ResourceType
    nonce: str
    version: str
    payload: bytes
    upserts: int
    removals: int
    first_change_at: float | None   # perf_counter of the oldest change it carries (None: initial)


@dataclass
class Subscription:
    scope: Scope
    state: ConfigState
    progress: dict[ResourceType, _TypeProgress] = field(default_factory=dict)
    _nonces: Any = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def start(cls, scope: Scope, state: ConfigState, held: dict[str, config_pb2.Held] | None = None
              ) -> "Subscription":
        sub = cls(scope, state)
        held = held or {}
        for rtype in scope.types:
            h = held.get(str(rtype))
            base = _Base(held={})
            if h is not None:
                counter = state.parse_version(rtype, h.version) if h.version else None
                base = _Base(counter=counter) if counter is not None else _Base(held=dict(h.resources))
            sub.progress[rtype] = _TypeProgress(base)
        return sub

    # -- deciding what to send --------------------------------------------------------

    def pending(self) -> bool:
        return any(self._wants(t, p) for t, p in self.progress.items())

    def _wants(self, rtype: ResourceType, p: _TypeProgress) -> bool:
        if p.in_flight is not None:
            return False
        if not p.initial_sent:
            return True
        counter = self.state.journals[rtype].counter
        return counter > p.hold_until and (p.base.counter is None or counter > p.base.counter)

    def next_response(self) -> Outgoing | None:
        """The next response to write, or None when there is nothing to send now."""
        for rtype in self.scope.types:
            p = self.progress[rtype]
            while self._wants(rtype, p):
                out = self._build(rtype, p)
                if out is not None:
                    return out
        return None

    def _build(self, rtype: ResourceType, p: _TypeProgress) -> Outgoing | None:
        journal = self.state.journals[rtype]
        counter = journal.counter
        initial = not p.initial_sent
        replace = False
        first_change = None
        if p.base.counter is not None and p.base.counter >= journal.floor:
            wires, removed = self._journal_diff(rtype, journal, p.base.counter)
            first_change = journal.first_change_after(p.base.counter)
        elif p.base.held is not None:
            wires, removed = self._full_diff(rtype, journal, p.base.held)
        else:  # the journal no longer reaches back to the base: resend the whole scope
            wires, removed, replace = [e.wire for e in journal.current() if self.scope.admits(rtype, e.resource)], [], True
        if not wires and not removed and not initial:
            p.base = _Base(counter=counter)  # nothing in scope changed: the client is current
            return None
        nonce = str(next(self._nonces))
        header = config_pb2.WatchResponse(type=str(rtype), version=self.state.version(rtype, counter), nonce=nonce,
                                          removed=removed, initial=initial, replace=replace)
        payload = header.SerializeToString() + b"".join(wires)
        p.initial_sent = True
        p.in_flight = _InFlight(nonce, counter)
        return Outgoing(rtype, nonce, header.version, payload, len(wires), len(removed), first_change)

    def _journal_diff(self, rtype: ResourceType, journal: TypeJournal, since: int) -> tuple[list[bytes], list[str]]:
        wires, removed = [], []
        for entry in journal.since(since):
            if entry.resource is not None and self.scope.admits(rtype, entry.resource):
                wires.append(entry.wire)
            elif entry.resource is None and self.scope.admits(rtype, entry.last):
                removed.append(entry.key)
        wires.reverse()  # oldest change first
        return wires, removed

    def _full_diff(self, rtype: ResourceType, journal: TypeJournal, held: dict[str, str]
                   ) -> tuple[list[bytes], list[str]]:
        wires, present = [], set()
        for entry in journal.current():
            if not self.scope.admits(rtype, entry.resource):
                continue
            present.add(entry.key)
            if held.get(entry.key) != entry.version:
                wires.append(entry.wire)
        removed = sorted(k for k in held if k not in present)
        return wires, removed

    # -- acks -----------------------------------------------------------------------

    def on_ack(self, ack: config_pb2.Ack) -> AckOutcome:
        try:
            rtype = ResourceType(ack.type)
        except ValueError:
            return AckOutcome.STALE
        p = self.progress.get(rtype)
        if p is None or p.in_flight is None or p.in_flight.nonce != ack.nonce:
            return AckOutcome.STALE
        sent, p.in_flight = p.in_flight, None
        if ack.error:
            p.hold_until = sent.counter
            return AckOutcome.NACKED
        p.base = _Base(counter=sent.counter)
        return AckOutcome.ACKED

    def in_sync(self) -> bool:
        return all(p.initial_sent and p.in_flight is None for p in self.progress.values())
