"""The agent <-> ztunnel hand-off: the sans-IO cores, then the asyncio drivers over a real socket."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from shoal import handoff
from shoal.api import handoff_pb2 as pb
from shoal.handoff import (Acked, AgentSide, ProtocolViolation, SnapshotReceived, Workload, WorkloadAdded,
                           WorkloadDeleted, WorkloadKept, ZtunnelGreeted, ZtunnelSide)
from shoal.handoff_io import HandoffClient, HandoffServer

from support.polling import eventually_async

A = Workload("uid-a", "a", "demo", "sa-a")
B = Workload("uid-b", "b", "demo", "sa-b")


def shuttle(agent: AgentSide, ztunnel: ZtunnelSide, fd_for_ack=None):
    """Moves every queued agent message to the ztunnel and its ack back; returns (ztunnel events, acks)."""
    seen, acks = [], []
    while (send := agent.next_send()) is not None:
        fds = [os.dup(send.fd)] if send.fd is not None else []
        events = ztunnel.receive(send.payload, fds)
        seen.extend(events)
        for event in events:
            if isinstance(event, WorkloadAdded):
                os.close(event.netns_fd)
            ack = ztunnel.ack()
            acks.extend(agent.receive(ack.payload))
    return seen, acks


def greet(agent: AgentSide, ztunnel: ZtunnelSide):
    return agent.receive(ztunnel.hello().payload)


def test_hello_opens_the_connection_and_nothing_is_sent_before_it():
    agent, ztunnel = AgentSide(), ZtunnelSide()
    r, w = os.pipe()
    try:
        agent_fd = r
        assert agent.next_send() is None
        events = greet(agent, ztunnel)
        assert events == [ZtunnelGreeted(1)]
        agent.add(A, agent_fd)
        send = agent.next_send()
        assert send.fd == agent_fd
        decoded = pb.AgentMessage.FromString(send.payload)
        assert decoded.add.uid == "uid-a" and decoded.add.service_account == "sa-a"
    finally:
        os.close(r)
        os.close(w)


def test_one_message_in_flight_until_acked():
    agent, ztunnel = AgentSide(), ZtunnelSide()
    greet(agent, ztunnel)
    agent.delete("x")
    agent.delete("y")
    first = agent.next_send()
    assert first is not None
    assert agent.next_send() is None  # the second waits for the first ack
    ztunnel.receive(first.payload)
    events = agent.receive(ztunnel.ack().payload)
    assert events == [Acked("del", "x", None, ())]
    assert pb.AgentMessage.FromString(agent.next_send().payload).WhichOneof("payload") == "del"


def test_ack_errors_reach_the_agent():
    agent, ztunnel = AgentSide(), ZtunnelSide()
    greet(agent, ztunnel)
    agent.keep("k")
    ztunnel.receive(agent.next_send().payload)
    assert agent.receive(ztunnel.ack("no such pod").payload) == [Acked("keep", "k", "no such pod", ())]


def test_snapshot_sent_drops_what_was_not_replayed():
    ztunnel = ZtunnelSide(known={"uid-a", "uid-b", "uid-c"})
    agent = AgentSide()
    greet(agent, ztunnel)
    r, w = os.pipe()
    try:
        agent.add(A, r)
        agent.keep("uid-c")
        agent.snapshot_sent()
        seen, acks = shuttle(agent, ztunnel)
    finally:
        os.close(r)
        os.close(w)
    assert [type(e) for e in seen] == [WorkloadAdded, WorkloadKept, SnapshotReceived]
    assert seen[-1].stale == frozenset({"uid-b"})
    assert ztunnel.known == {"uid-a", "uid-c"}
    assert [a.kind for a in acks] == ["add", "keep", "snapshot_sent"]


def test_adds_after_the_snapshot_are_not_counted_as_replayed_but_are_known():
    ztunnel = ZtunnelSide()
    agent = AgentSide()
    greet(agent, ztunnel)
    agent.snapshot_sent()
    shuttle(agent, ztunnel)
    r, w = os.pipe()
    try:
        agent.add(B, r)
        seen, _ = shuttle(agent, ztunnel)
    finally:
        os.close(r)
        os.close(w)
    assert isinstance(seen[0], WorkloadAdded)
    assert ztunnel.known == {"uid-b"}
    agent.delete("uid-b")
    seen, _ = shuttle(agent, ztunnel)
    assert seen == [WorkloadDeleted("uid-b")] and ztunnel.known == set()


@pytest.mark.parametrize("payload, fds, why", [
    (pb.ZtunnelMessage(ack=pb.Ack()).SerializeToString(), 0, "expected Hello first"),
    (b"\xff\xff\xff", 0, "undecodable"),
    (pb.ZtunnelMessage(hello=pb.Hello(version=9)).SerializeToString(), 0, "version 9"),
    (pb.ZtunnelMessage(hello=pb.Hello(version=1)).SerializeToString(), 1, "must not carry"),
])
def test_agent_refuses_a_bad_greeting(payload, fds, why):
    agent = AgentSide()
    r, w = os.pipe()
    os.close(w)
    passed = [r] if fds else []
    with pytest.raises(ProtocolViolation, match=why):
        agent.receive(payload, passed)
    assert agent.state == "closed"
    if fds:  # the core closed the fd it refused
        with pytest.raises(OSError):
            os.fstat(r)
    else:
        os.close(r)


def test_agent_refuses_an_unsolicited_ack():
    agent, ztunnel = AgentSide(), ZtunnelSide()
    greet(agent, ztunnel)
    with pytest.raises(ProtocolViolation, match="no message waiting"):
        agent.receive(pb.ZtunnelMessage(ack=pb.Ack()).SerializeToString())


def test_ztunnel_refuses_add_without_exactly_one_fd_and_early_messages():
    ztunnel = ZtunnelSide()
    add = pb.AgentMessage(add=pb.AddWorkload(uid="u")).SerializeToString()
    with pytest.raises(ProtocolViolation, match="before Hello"):
        ztunnel.receive(add)
    ztunnel.hello()
    with pytest.raises(ProtocolViolation, match="exactly one netns fd"):
        ztunnel.receive(add, [])
    ztunnel.receive(pb.AgentMessage(snapshot_sent=pb.SnapshotSent()).SerializeToString())
    with pytest.raises(ProtocolViolation, match="before the previous one was acked"):
        ztunnel.receive(pb.AgentMessage(keep=pb.KeepWorkload(uid="u")).SerializeToString())
    ztunnel.ack()
    with pytest.raises(ProtocolViolation, match="after SnapshotSent"):
        ztunnel.receive(pb.AgentMessage(keep=pb.KeepWorkload(uid="u")).SerializeToString())


# -- the drivers, over a real SOCK_SEQPACKET socket ------------------------------


class RecordingHandler:
    """Plays the ztunnel: records what it is told and checks each netns fd."""

    def __init__(self, fail_uids=()):
        self.workloads: dict[str, Workload] = {}
        self.netns_inodes: dict[str, int] = {}
        self.deleted: list[str] = []
        self.fail_uids = set(fail_uids)
        self.listener = socket.socket()

    async def add_workload(self, workload, netns_fd):
        try:
            if workload.uid in self.fail_uids:
                raise RuntimeError("cannot enter the netns")
            self.workloads[workload.uid] = workload
            self.netns_inodes[workload.uid] = os.fstat(netns_fd).st_ino
            return self.listener
        finally:
            os.close(netns_fd)

    async def del_workload(self, uid):
        self.workloads.pop(uid, None)
        self.deleted.append(uid)


def test_fd_passing_acks_and_replay_after_reconnect(tmp_path):
    """The received fd IS the netns given; acks flow back; a reconnect replays and drops the rest."""
    netns_file = "/proc/self/ns/net"
    expected_inode = os.stat(netns_file).st_ino

    async def main():
        fds = {A.uid: os.open(netns_file, os.O_RDONLY), B.uid: os.open(netns_file, os.O_RDONLY)}
        wanted = {A.uid: A, B.uid: B}
        events = []

        def on_event(event, server):
            events.append(event)
            if isinstance(event, Acked):
                for fd in event.fds:
                    os.close(fd)

        server = HandoffServer(tmp_path / "ztunnel.sock", lambda: [(w, fds[u]) for u, w in wanted.items()], on_event)
        await server.start()
        handler = RecordingHandler()
        client = HandoffClient(server.path, handler, retry_seconds=0.05)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.synced.wait(), 5)
            assert set(handler.workloads) == {A.uid, B.uid}
            assert handler.netns_inodes == {A.uid: expected_inode, B.uid: expected_inode}
            await eventually_async(lambda: sum(isinstance(e, Acked) for e in events) == 3)
            acks = [e for e in events if isinstance(e, Acked)]
            assert [(a.kind, a.error) for a in acks] == [("add", None), ("add", None), ("snapshot_sent", None)]
            assert server.peer_pid == os.getpid()
            # The ztunnel still holds B; the agent forgets it, then the connection breaks.
            del wanted[B.uid]
            events.clear()
            server.disconnect()
            await eventually_async(lambda: any(isinstance(e, Acked) and e.kind == "snapshot_sent" for e in events))
            await eventually_async(lambda: B.uid in handler.deleted)
            assert set(handler.workloads) == {A.uid}
            # Live changes after the replay.
            server.delete(A.uid)
            await eventually_async(lambda: A.uid in handler.deleted)
        finally:
            client.stop()
            await asyncio.wait_for(task, 5)
            await server.close()
            for fd in fds.values():
                os.close(fd)
        assert not server.path.exists()

    asyncio.run(main())


def test_a_nack_is_reported_and_the_ack_of_an_add_carries_the_inbound_listener(tmp_path):
    async def main():
        r, w = os.pipe()
        acks = []
        server = HandoffServer(tmp_path / "z.sock", lambda: [(A, r), (B, r)],
                               lambda e, s: acks.append(e) if isinstance(e, Acked) else None)
        await server.start()
        handler = RecordingHandler(fail_uids={B.uid})
        client = HandoffClient(server.path, handler, retry_seconds=0.05)
        task = asyncio.create_task(client.run())
        try:
            await eventually_async(lambda: len(acks) == 3)
            ok, failed, _ = acks
            assert ok.error is None and len(ok.fds) == 1
            assert os.fstat(ok.fds[0]).st_ino == os.fstat(handler.listener.fileno()).st_ino
            assert "cannot enter the netns" in failed.error and failed.fds == ()
            assert B.uid not in client.known
            os.close(ok.fds[0])
        finally:
            client.stop()
            await asyncio.wait_for(task, 5)
            await server.close()
            os.close(r)
            os.close(w)
            handler.listener.close()

    asyncio.run(main())


def test_a_peer_breaking_the_protocol_loses_only_its_connection(tmp_path):
    async def main():
        events = []
        server = HandoffServer(tmp_path / "z.sock", lambda: [], lambda e, s: events.append(e))
        await server.start()
        try:
            rogue = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            rogue.connect(str(server.path))
            rogue.send(b"garbage\xff")
            rogue.settimeout(5)
            assert await asyncio.to_thread(rogue.recv, 100) == b""  # closed on it
            rogue.close()
            client = HandoffClient(server.path, RecordingHandler(), retry_seconds=0.05)
            task = asyncio.create_task(client.run())
            await asyncio.wait_for(client.synced.wait(), 5)  # the server still serves
            client.stop()
            await asyncio.wait_for(task, 5)
        finally:
            await server.close()

    asyncio.run(main())


def test_default_socket_path_is_the_designs():
    assert str(handoff.DEFAULT_SOCKET) == "/var/run/shoal/ztunnel.sock"


def test_a_ztunnel_that_never_acks_is_dropped(tmp_path):
    async def main():
        events = []
        r, w = os.pipe()
        server = HandoffServer(tmp_path / "z.sock", lambda: [(A, r)], lambda e, s: events.append(e), ack_timeout=0.3)
        await server.start()
        try:
            silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            silent.connect(str(server.path))
            silent.send(ZtunnelSide().hello().payload)
            silent.settimeout(5)
            data, ancdata, _, _ = await asyncio.to_thread(silent.recvmsg, 1000, socket.CMSG_SPACE(4))
            assert pb.AgentMessage.FromString(data).add.uid == A.uid
            for _, _, payload in ancdata:
                os.close(int.from_bytes(payload[:4], "little"))
            assert await asyncio.to_thread(silent.recv, 100) == b""  # dropped, no ack came
            await eventually_async(lambda: events and events[-1] is None)
            silent.close()
        finally:
            await server.close()
            os.close(r)
            os.close(w)

    asyncio.run(main())


from hypothesis import given, settings, strategies as st  # noqa: E402

uids = st.sampled_from(["u1", "u2", "u3", "u4"])
steps = st.lists(st.tuples(st.sampled_from(["add", "keep", "del"]), uids), max_size=12)


@settings(max_examples=200, deadline=None)
@given(held=st.sets(uids), replay=steps, after=steps)
def test_whatever_the_sequence_the_ztunnel_ends_with_what_the_agent_said(held, replay, after):
    """Replay, SnapshotSent, live changes: the ztunnel holds exactly what was added or kept and not deleted."""
    agent, ztunnel = AgentSide(), ZtunnelSide(known=held)
    greet(agent, ztunnel)
    r, w = os.pipe()
    try:
        expected = set()
        for kind, uid in replay:
            if kind == "add":
                agent.add(Workload(uid, uid, "ns"), r)
                expected.add(uid)
            elif kind == "keep":
                agent.keep(uid)
                expected.add(uid)
            else:
                agent.delete(uid)
                expected.discard(uid)
        agent.snapshot_sent()
        for kind, uid in after:
            if kind == "keep":
                continue  # only allowed before SnapshotSent
            if kind == "add":
                agent.add(Workload(uid, uid, "ns"), r)
                expected.add(uid)
            else:
                agent.delete(uid)
                expected.discard(uid)
        seen, acks = shuttle(agent, ztunnel)
    finally:
        os.close(r)
        os.close(w)
    assert ztunnel.known == expected
    assert len(acks) == len(seen)  # one ack per message, in order
    assert agent.in_flight is None and not agent.queue
