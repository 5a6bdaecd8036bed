"""Config.Watch over real gRPC (TLS, loopback, ephemeral ports) with the real client."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from control_plane.server import ConfigServer, Endpoints
from control_plane.state import ConfigState
from shoal import tokens
from shoal.api import config_pb2, config_pb2_grpc
from shoal.config_client import ConfigClient, open_channel
from shoal.model import ResourceType, freeze_labels

from support.net import free_port
from support.plane import NODE_TOKENS, running, running_plane, start_plane, workload
from support.polling import eventually_async

W = ResourceType.WORKLOAD


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class Recorder:
    def __init__(self, refuse=lambda update: None):
        self.updates = []
        self.refuse = refuse

    def __call__(self, update):
        self.refuse(update)
        self.updates.append(update)

    def of(self, rtype):
        return [u for u in self.updates if u.type is rtype]


def test_initial_snapshot_then_only_the_change(tmp_path):
    async def main():
        rec = Recorder()
        async with (running_plane(tmp_path, [workload(i) for i in range(50)]) as plane,
                    running(plane.client("node1", rec)) as client):
            await asyncio.wait_for(client.synced.wait(), 5)
            initial = rec.of(W)
            assert len(initial) == 1 and initial[0].initial
            assert set(initial[0].upserted) == {f"uid-{i}" for i in range(50)}
            assert {u.type for u in rec.updates} == {ResourceType.SERVICE, W, ResourceType.WAYPOINT,
                                                     ResourceType.AUTHORIZATION, ResourceType.PEER_AUTHENTICATION}
            moved = dataclasses.replace(workload(7), labels=freeze_labels({"app": "changed"}))
            plane.state.apply([moved])
            await eventually_async(lambda: len(rec.of(W)) == 2, what="the change")
            change = rec.of(W)[1]
            assert not change.initial and dict(change.upserted) == {"uid-7": moved} and not change.removed
            plane.state.apply(removals=[(W, "uid-3")])
            await eventually_async(lambda: len(rec.of(W)) == 3, what="the removal")
            assert rec.of(W)[2].removed == {"uid-3"} and not rec.of(W)[2].upserted
            assert len(client.resources(W)) == 49 and client.resources(W)["uid-7"] == moved
            # Same content again: no version bump, nothing pushed.
            plane.state.apply([moved])
            await asyncio.sleep(0.2)
            assert len(rec.of(W)) == 3
    run(main())


@pytest.mark.parametrize("server_restarts_with_new_state", [False, True])
def test_reconnect_resumes_with_only_what_changed(tmp_path, server_restarts_with_new_state):
    async def main():
        port = free_port()
        plane = await start_plane(tmp_path, grpc_port=port)
        plane.state.apply([workload(i) for i in range(200)])
        rec = Recorder()
        async with running(plane.client("node1", rec)) as client:
            await asyncio.wait_for(client.synced.wait(), 5)
            await plane.server.stop(0)
            await eventually_async(lambda: not client.connected.is_set(), what="disconnect")
            assert len(client.resources(W)) == 200  # kept while the server is away
            if server_restarts_with_new_state:
                state = ConfigState()  # a restarted control plane: new epoch, same content rebuilt
                state.apply([workload(i) for i in range(200) if i != 5])
            else:
                state = plane.state
                state.apply(removals=[(W, "uid-5")])
            state.apply([dataclasses.replace(workload(9), ips=("198.19.1.99",))])
            server = ConfigServer(state=state, authority=plane.authority, authenticator=plane.server.watch.authenticator,
                                  endpoints=Endpoints("127.0.0.1", port, "127.0.0.1", 0))
            await server.start()
            server.mark_synced()
            before = len(rec.of(W))
            await eventually_async(lambda: len(rec.of(W)) > before and client.connected.is_set(), what="resume")
            resumed = rec.of(W)[before]
            assert set(resumed.upserted) == {"uid-9"}
            assert resumed.removed == {"uid-5"}
            assert client.resources(W)["uid-9"].ips == ("198.19.1.99",)
            assert len(client.resources(W)) == 199
            # The other types had not changed: empty answers, nothing resent.
            others = [u for u in rec.updates[before:] if u.type is not W]
            assert all(not u.upserted and not u.removed for u in others)
            await server.stop(0)
    run(main())


def test_nack_keeps_the_previous_version_and_is_not_resent(tmp_path):
    def refuse(update):
        for w in update.upserted.values() if update.type is W else ():
            if dict(w.labels).get("app") == "bad":
                raise ValueError(f"workload {w.uid} has a label this proxy refuses")

    async def main():
        rec = Recorder(refuse)
        async with (running_plane(tmp_path, [workload(i) for i in range(5)]) as plane,
                    running(plane.client("node1", rec)) as client):
            await asyncio.wait_for(client.synced.wait(), 5)
            good_version = client.version(W)
            plane.state.apply([dataclasses.replace(workload(1), labels=freeze_labels({"app": "bad"}))])
            await eventually_async(lambda: client.nacks == 1, what="a NACK")
            await eventually_async(lambda: plane.server.metrics.nacks.labels("Workload")._value.get() == 1,
                             what="the nack metric")
            assert client.version(W) == good_version
            assert client.resources(W)["uid-1"] == workload(1)
            await asyncio.sleep(0.3)
            assert client.nacks == 1  # not re-sent while nothing changed
            fixed = dataclasses.replace(workload(1), labels=freeze_labels({"app": "fixed"}))
            plane.state.apply([fixed])
            await eventually_async(lambda: client.resources(W)["uid-1"] == fixed, what="the fixed version")
            assert client.nacks == 1 and client.version(W) != good_version
    run(main())


def test_a_slow_subscriber_does_not_hold_back_the_others(tmp_path):
    async def main():
        plane = await start_plane(tmp_path)
        plane.state.apply([workload(i) for i in range(3000)])  # ~ 600 KB: more than an HTTP/2 window
        # The slow one subscribes, then never reads nor acks.
        slow_channel = open_channel(plane.settings("node2"))
        slow_requests: asyncio.Queue = asyncio.Queue()
        slow_requests.put_nowait(config_pb2.WatchRequest(subscribe=config_pb2.Subscribe(node="node2")))

        async def slow_iter():
            while True:
                yield await slow_requests.get()

        slow_call = config_pb2_grpc.ConfigStub(slow_channel).Watch(
            slow_iter(), metadata=tokens.metadata(NODE_TOKENS["node2"]))
        await eventually_async(lambda: len(plane.server.watch.streams) == 1, what="the slow subscriber")
        clients = [plane.client("node1") for _ in range(3)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        try:
            await asyncio.gather(*(asyncio.wait_for(c.synced.wait(), 10) for c in clients))
            for round_ in range(20):
                plane.state.apply([dataclasses.replace(workload(round_), ips=(f"198.19.1.{round_ + 100}",))])
            final = plane.state.version(W)
            await eventually_async(lambda: all(c.version(W) == final for c in clients), timeout=10,
                             what="every fast subscriber to reach the last version")
            slow = next(s for s in plane.server.watch.streams if s.scope.node == "node2")
            assert not slow.subscription.in_sync()
        finally:
            for c in clients:
                c.stop()
            await asyncio.gather(*tasks)
            slow_call.cancel()
            await slow_channel.close()
            await plane.server.stop(0)
    run(main())


def test_bad_credentials_and_wrong_scope_are_refused(tmp_path):
    async def main():
        async with running_plane(tmp_path) as plane:
            async def first_error(settings, subscribe):
                async with open_channel(settings) as channel:
                    async def reqs():
                        yield config_pb2.WatchRequest(subscribe=subscribe)
                        await asyncio.sleep(5)
                    call = config_pb2_grpc.ConfigStub(channel).Watch(
                        reqs(), metadata=tokens.metadata(settings.current_token()))
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        async for _ in call:
                            pass
                    return info.value

            e = await first_error(plane.settings("node1", token="s3cr3t-forged-XYZ"), config_pb2.Subscribe(node="node1"))
            assert e.code() is grpc.StatusCode.UNAUTHENTICATED and "unknown token" in e.details()
            assert "s3cr3t-forged-XYZ" not in e.details()
            e = await first_error(plane.settings("node1"), config_pb2.Subscribe(node="node2"))
            assert e.code() is grpc.StatusCode.PERMISSION_DENIED and "only watch as node node1" in e.details()
            waypoint = plane.settings(waypoint_namespace="shop", waypoint_name="wp", token=plane.sa_token("shop", "wp"))
            e = await first_error(waypoint, config_pb2.Subscribe(waypoint=config_pb2.WaypointScope(namespace="bank")))
            assert e.code() is grpc.StatusCode.PERMISSION_DENIED
            e = await first_error(plane.settings("node1"), config_pb2.Subscribe())
            assert e.code() is grpc.StatusCode.INVALID_ARGUMENT
    run(main())


def test_client_retries_while_its_token_file_is_missing(tmp_path):
    async def main():
        plane = await start_plane(tmp_path / "plane")
        token_file = tmp_path / "token"
        settings = dataclasses.replace(plane.settings("node1"), token=lambda: tokens.read_token(token_file),
                                       bundle_pem=lambda: plane.authority.bundle_pem)
        client = ConfigClient(settings)
        task = asyncio.create_task(client.run())
        try:
            await eventually_async(lambda: client.reconnects >= 2, what="retries without a token")
            assert not task.done()
            token_file.write_text(NODE_TOKENS["node1"] + "\n")
            await asyncio.wait_for(client.synced.wait(), 5)
        finally:
            client.stop()
            await task
            await plane.server.stop(0)
    run(main())


def test_a_waypoint_gets_its_namespace_route_tables_over_grpc(tmp_path):
    from shoal.model import Destination, Route, RouteTable

    def table(ns):
        host = f"reviews.{ns}.svc.cluster.local"
        return RouteTable(hostname=host, port=9080, namespace=ns, routes=(Route(destinations=(Destination(host),)),))

    async def main():
        rec = Recorder()
        async with (running_plane(tmp_path, [table("shop"), table("bank"), workload(1)]) as plane,
                    running(plane.client(on_update=rec, waypoint_namespace="shop", waypoint_name="wp",
                                         token=plane.sa_token("shop", "wp"))) as client):
            await asyncio.wait_for(client.synced.wait(), 5)
            assert set(client.resources(ResourceType.ROUTE_TABLE)) == {"reviews.shop.svc.cluster.local:9080"}
            assert set(client.resources(W)) == {"uid-1"}
            assert ResourceType.PEER_AUTHENTICATION not in {u.type for u in rec.updates}
            plane.state.apply([dataclasses.replace(table("bank"), origin="x")])
            plane.state.apply([dataclasses.replace(table("shop"), origin="changed")])
            await eventually_async(lambda: client.resources(ResourceType.ROUTE_TABLE)[
                "reviews.shop.svc.cluster.local:9080"].origin == "changed", what="the shop table change")
            assert all("bank" not in key for u in rec.updates for key in u.upserted)
    run(main())
