"""Fuzz target: the node agent <-> ztunnel hand-off, `shoal.handoff`'s two sans-IO cores.

Each packet is one protobuf message (SOCK_SEQPACKET), with file descriptors
beside it. An input is one connection seen from one side:
- `AgentSide`, fed by a ztunnel: Hello (right version or not), then acks
  (with errors, with fds) for what the agent sends, and out of turn: a
  second Hello, acks with nothing in flight, empty or undecodable messages;
- `ZtunnelSide`, fed by an agent: AddWorkload, KeepWorkload, DelWorkload
  and SnapshotSent, with the wrong number of fds, before their ack, keeps
  after the snapshot.
Messages are built valid and then mutated: fields set to long, empty or
non-UTF-8 strings, fields of the wrong wire type or unknown numbers, two
members of the oneof, lengths that run past the end, bytes flipped, cut
or added, packets dropped, repeated and swapped.

What must hold:
- `receive` raises nothing but `ProtocolViolation` (`ack` too, when there
  is nothing to ack); after one the agent's side is closed;
- every fd handed to `receive` is either in the events it returned or
  closed (none leaks, none is closed and handed on);
- the agent acks its messages in the order it sent them, kind and uid;
- the ztunnel's record of workloads follows the documented rule (a model
  of it runs beside): adds and keeps before SnapshotSent are replayed,
  SnapshotSent drops what was known and not replayed, dels forget, and
  `replayed` stays within `known`.
"""

from __future__ import annotations

import os

from shoal import handoff
from shoal.api import handoff_pb2 as pb
from shoal.handoff import (Acked, AgentSide, ProtocolViolation, SnapshotReceived, Workload, WorkloadAdded,
                           WorkloadDeleted, WorkloadKept, ZtunnelGreeted, ZtunnelSide)

from scripts.fuzzing import Broken, measure_growth
from scripts.fuzzing.generate import chance, junk, mutate_bytes, mutate_pieces, size

NAME = "handoff"
EXPECTED = (handoff.HandoffError,)

UIDS = ("uid-a", "uid-b", "uid-c", "9f1c0a6e-0b7a-4d1e-8f0e-1a2b3c4d5e6f", "")
# Wire-level oddities protobuf parsers must refuse or skip: a field of the wrong wire type, an unknown
# field, a length past the end, a string that is not UTF-8, a group that never ends, a huge varint.
ODD_WIRE = (b"\x08\x01", b"\x78\x01", b"\x0a\x05ab", b"\x0a\x03\x0a\x01\xff", b"\x0b", b"\x0a\xff\xff\xff\xff\x0f",
            b"\x10" + b"\xff" * 10, b"\x12\x00\x0a\x00", b"\xfa\xff\xff\xff\x0f\x00", b"\x00")

_null: int | None = None


def null_fd() -> int:
    """An fd to hand to the cores (a fresh dup of /dev/null each time)."""
    global _null
    if _null is None:
        _null = os.open(os.devnull, os.O_RDONLY)
    return os.dup(_null)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def odd_string(rng, usual: str) -> str:
    roll = rng.random()
    if roll < 0.8:
        return usual
    if roll < 0.9:
        return "u" * size(rng, 64, 70000)
    return rng.choice(("", "\x00", "é", "\ud7ff", "a/b", "../..", " "))


def packet(rng, message, wrong: float) -> bytes:
    data = message.SerializeToString()
    if rng.random() < 0.15 * wrong:
        data = mutate_bytes(rng, data)
    if rng.random() < 0.05 * wrong:
        data = rng.choice((data + rng.choice(ODD_WIRE), rng.choice(ODD_WIRE) + data, rng.choice(ODD_WIRE)))
    return data


def hand_over(side, data: bytes, count: int) -> list:
    """Calls side.receive with `count` fresh fds and checks that each one is handed on or closed."""
    fds = [null_fd() for _ in range(count)]
    try:
        events = side.receive(data, fds)
    except ProtocolViolation:
        leaked = [fd for fd in fds if is_open(fd)]
        for fd in leaked:
            os.close(fd)
        if leaked:
            raise Broken(f"{len(leaked)} fds neither handed on nor closed after a refused packet") from None
        raise
    handed = [e.netns_fd for e in events if isinstance(e, WorkloadAdded)]
    handed += [fd for e in events if isinstance(e, Acked) for fd in e.fds]
    for fd in fds:
        if fd in handed and not is_open(fd):
            raise Broken(f"fd {fd} was handed on in an event, but closed")
        if fd not in handed and is_open(fd):
            os.close(fd)
            raise Broken(f"fd {fd} was neither handed on nor closed")
    for fd in handed:
        os.close(fd)
    return events


# --- the agent's side, fed by a fuzzed ztunnel --------------------------------------------

def run_agent(rng, wrong: float) -> str:
    agent = AgentSide()
    borrowed = null_fd()   # the netns fd the agent sends with each add (borrowed: the caller keeps it)
    expected: list[tuple[str, str]] = []
    try:
        for _ in range(size(rng, 6, 60)):
            roll = rng.randrange(4)
            uid = odd_string(rng, rng.choice(UIDS))
            if roll == 0:
                agent.add(Workload(uid, odd_string(rng, "a"), odd_string(rng, "demo"), "sa"), borrowed)
            elif roll == 1:
                agent.keep(uid)
            elif roll == 2:
                agent.delete(uid)
            else:
                agent.snapshot_sent()
                uid = ""
            expected.append((("add", "keep", "del", "snapshot_sent")[roll], uid))
        packets = [(packet(rng, pb.ZtunnelMessage(hello=pb.Hello(version=1 if rng.random() > 0.05 * wrong else
                                                                             rng.choice((0, 2, 1 << 31)))), wrong), 0)]
        for kind, _ in expected:
            error = rng.choice(("", "", "no such pod", "é" * 3)) if chance(rng, 0.3) else ""
            fds = 1 if kind == "add" and chance(rng, 0.5) else 0
            if rng.random() < 0.05 * wrong:
                fds = rng.choice((0, 1, 2, 4))
            packets.append((packet(rng, pb.ZtunnelMessage(ack=pb.Ack(error=error)), wrong), fds))
        if rng.random() < 0.2 * wrong:
            packets = mutate_pieces(rng, packets, lambda r: (junk(r, 20), r.randrange(3)), flood=50)
        for data, fds in packets:
            sent = agent.next_send()
            try:
                events = hand_over(agent, data, fds)
            except ProtocolViolation:
                if agent.state != "closed":
                    raise Broken(f"ProtocolViolation left the agent's side {agent.state!r}, not closed") from None
                return "refused"
            for event in events:
                if isinstance(event, ZtunnelGreeted):
                    continue
                if not isinstance(event, Acked) or sent is None:
                    raise Broken(f"{event} with nothing sent")
                want = expected.pop(0)
                if (event.kind, event.uid) != want:
                    raise Broken(f"ack of {(event.kind, event.uid)}, expected of {want}")
        return "accepted"
    finally:
        os.close(borrowed)


# --- the ztunnel's side, fed by a fuzzed agent --------------------------------------------

class Model:
    """The ztunnel's workload record as shoal/handoff.py's docstrings describe it."""

    def __init__(self, known: set[str]) -> None:
        self.known, self.replayed, self.snapshot_done = set(known), set(), False

    def seen(self, uid: str) -> None:
        self.known.add(uid)
        if not self.snapshot_done:
            self.replayed.add(uid)

    def apply(self, event) -> None:
        if isinstance(event, WorkloadAdded):
            self.seen(event.workload.uid)
        elif isinstance(event, WorkloadKept):
            self.seen(event.uid)
        elif isinstance(event, WorkloadDeleted):
            self.known.discard(event.uid)
            self.replayed.discard(event.uid)
        elif isinstance(event, SnapshotReceived):
            stale = frozenset(self.known - self.replayed)
            if event.stale != stale:
                raise Broken(f"SnapshotReceived.stale is {sorted(event.stale)}, the rule gives {sorted(stale)}")
            self.known -= stale
            self.snapshot_done = True


def agent_message(rng, wrong: float):
    """One AgentMessage and how many fds come with it."""
    uid = odd_string(rng, rng.choice(UIDS[:-1] if rng.random() > 0.05 * wrong else UIDS))
    roll = rng.random()
    if roll < 0.4:
        message = pb.AgentMessage(add=pb.AddWorkload(uid=uid, name=odd_string(rng, "a"),
                                                     namespace=odd_string(rng, "demo"),
                                                     service_account=rng.choice(("sa", "", "default"))))
        fds = 1
    elif roll < 0.6:
        message, fds = pb.AgentMessage(keep=pb.KeepWorkload(uid=uid)), 0
    elif roll < 0.8:
        message, fds = pb.AgentMessage(**{"del": pb.DelWorkload(uid=uid)}), 0
    elif roll < 0.95:
        message, fds = pb.AgentMessage(snapshot_sent=pb.SnapshotSent()), 0
    else:
        message, fds = pb.AgentMessage(), 0
    if rng.random() < 0.05 * wrong:
        fds = rng.choice((0, 1, 2, 4))
    return packet(rng, message, wrong), fds


def run_ztunnel(rng, wrong: float) -> str:
    known = {f"old-{n}" for n in range(rng.randrange(4))} | ({"uid-a"} if chance(rng, 0.5) else set())
    ztunnel, model = ZtunnelSide(known), Model(known)
    packets = [agent_message(rng, wrong) for _ in range(size(rng, 6, 60))]
    if rng.random() < 0.2 * wrong:
        packets = mutate_pieces(rng, packets, lambda r: (junk(r, 20), r.randrange(3)), flood=50)
    if rng.random() > 0.02 * wrong:
        ztunnel.hello()
    for data, fds in packets:
        try:
            events = hand_over(ztunnel, data, fds)
        except ProtocolViolation:
            return "refused"
        for event in events:
            model.apply(event)
        if (ztunnel.known, ztunnel.replayed) != (model.known, model.replayed):
            raise Broken(f"the ztunnel knows {sorted(ztunnel.known)} (replayed {sorted(ztunnel.replayed)}); "
                         f"the rule gives {sorted(model.known)} (replayed {sorted(model.replayed)})")
        if not ztunnel.replayed <= ztunnel.known:
            raise Broken("replayed holds workloads that are not known")
        for _ in range(len(events) if rng.random() > 0.05 * wrong else rng.choice((0, 2))):
            try:
                ztunnel.ack(rng.choice((None, None, "netns gone")))
            except ProtocolViolation:
                return "refused"
    return "accepted"


def run_one(rng) -> str:
    wrong = rng.choice((0.0, 0.0, 0.3, 1.0))
    return run_agent(rng, wrong) if chance(rng, 0.5) else run_ztunnel(rng, wrong)


# --- soak: one connection, many workloads -----------------------------------------------------

def soak(cycles: int) -> dict:
    """`cycles` workloads added, kept or deleted on one connection (the agent's and the ztunnel's cores
    talking to each other, a snapshot every 100); returns the memory the second half left behind."""
    agent, ztunnel = AgentSide(), ZtunnelSide()
    agent.receive(ztunnel.hello().payload)
    borrowed = null_fd()

    def cycle(n: int) -> None:
        uid = f"pod-{n % 500}"
        (agent.add(Workload(uid, "p", "demo"), borrowed) if n % 3 else agent.delete(uid))
        if n % 100 == 0:
            agent.snapshot_sent()
        while (send := agent.next_send()) is not None:
            events = ztunnel.receive(send.payload, [os.dup(send.fd)] if send.fd is not None else [])
            for event in events:
                if isinstance(event, WorkloadAdded):
                    os.close(event.netns_fd)
            agent.receive(ztunnel.ack().payload)

    try:
        return measure_growth(cycle, cycles, lambda: {"known": len(ztunnel.known), "queued": len(agent.queue)})
    finally:
        os.close(borrowed)

