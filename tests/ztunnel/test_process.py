"""The whole ztunnel process wiring, in-process: the real control plane (gRPC, TLS, tokens),
the real node-agent hand-off server, and `ztunnel.main.run`, with the pod in a test netns.
The ztunnel's own ports are free ones on this host, so they collide with nothing; the process
stays in the host's netns because gRPC keeps threads, for the life of the process, in the netns
they started in."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from shoal import handoff, netns
from shoal.handoff_io import HandoffServer
from shoal.lifecycle import Shutdown
from ztunnel.config import Config
from ztunnel.main import run

from support.net import free_port
from support.plane import NODE_TOKENS, start_plane, workload
from support.polling import eventually_async
from support.root import needs_root

pytestmark = needs_root("runs the ztunnel in its own network namespace")

POD_NS = f"shoal-ztp{os.getpid() % 100000}-pod"
POD_IP = "198.19.7.2"


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    data = await reader.read(-1)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
def namespaces():
    try:
        netns.create(POD_NS)
        yield
    finally:
        netns.remove(POD_NS)


PORTS = {}


def ports() -> dict:
    """Free admin, metrics and readiness ports, as Config fields."""
    PORTS.update(admin_port=free_port(), metrics_port=free_port(), readiness_port=free_port())
    return dict(PORTS, listen="127.0.0.1")


def test_ready_only_with_agent_and_config_serves_dump_keeps_serving_and_drains(namespaces, tmp_path):
    async def main():
        plane = await start_plane(tmp_path / "cp")
        pod = workload(1, node="node1", namespace="shop", sa="default")
        plane.state.apply([pod])
        token_file = tmp_path / "token"
        token_file.write_text(NODE_TOKENS["node1"])
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(plane.authority.bundle_pem)
        sock_path = tmp_path / "ztunnel.sock"

        config = Config(node="node1", control_plane=plane.target, socket_path=sock_path, token_file=token_file,
                        drain_seconds=1.0, preserve_source_ip=False, **ports())
        shutdown = Shutdown()
        zt = asyncio.create_task(run(config, bundle, shutdown))

        async def readiness():
            try:
                return await http_get(PORTS["readiness_port"], "/healthz/ready")
            except OSError:
                return None
        status, body = await eventually_async(readiness, 30, "the readiness endpoint", interval=0.1)
        assert status == 503 and b"node agent" in body

        # The agent comes up and hands over the pod.
        agent = HandoffServer(sock_path, lambda: [(handoff.Workload(pod.uid, pod.name, "shop", "default"),
                                                  netns.open_fd(POD_NS))], lambda e, s: None)
        await agent.start()

        async def ready():
            status, _ = await http_get(PORTS["readiness_port"], "/healthz/ready")
            return status == 200
        await eventually_async(ready, 30, "ready", interval=0.1)

        async def cert_issued():
            _, body = await http_get(PORTS["admin_port"], "/config_dump")
            dump = json.loads(body)
            certs = {c["identity"]: c for c in dump["certificates"]}
            return dump if certs.get("spiffe://cluster.local/ns/shop/sa/default", {}).get("state") == "valid" else None
        dump = await eventually_async(cert_issued, 30, "the pod's certificate", interval=0.1)
        assert [w["uid"] for w in dump["workloads"]] == ["uid-1"]
        assert dump["pods"][0]["identity"] == "spiffe://cluster.local/ns/shop/sa/default"

        status, metrics = await http_get(PORTS["metrics_port"], "/metrics")
        assert status == 200 and b"# TYPE istio_tcp_connections_opened_total counter" in metrics

        # Listeners are inside the pod's netns.
        probe = netns.socket_in(POD_NS)
        probe.settimeout(2)
        probe.connect(("127.0.0.1", 15008))
        probe.close()

        # The control plane goes away: still ready, still the same config.
        await plane.server.stop(grace=0)
        await asyncio.sleep(0.5)
        assert (await http_get(PORTS["readiness_port"], "/healthz/ready"))[0] == 200
        assert json.loads((await http_get(PORTS["admin_port"], "/workloads"))[1])[0]["uid"] == "uid-1"

        shutdown.stopping.set()
        code = await asyncio.wait_for(zt, 10)
        await agent.close()
        with pytest.raises(OSError):
            await http_get(PORTS["readiness_port"], "/healthz/ready")
        probe = netns.socket_in(POD_NS)
        probe.settimeout(2)
        with pytest.raises(OSError):
            probe.connect(("127.0.0.1", 15008))
        probe.close()
        return code

    assert asyncio.run(main()) == 0


def test_a_ztunnel_started_while_the_control_plane_is_down_serves_no_pod_until_its_config_is_whole(
        namespaces, tmp_path):
    """Fail closed: with no config, the defaults (PERMISSIVE, no DENY) must not decide. The ztunnel does not
    take the pod from the node agent until its config is whole (an old ztunnel would go on serving it in an
    upgrade), so plaintext captured into 15006 is refused while the control plane is down, and served once
    the config arrives."""
    import subprocess

    from control_plane.authn import LocalAuthenticator
    from control_plane.server import ConfigServer, Endpoints
    from control_plane.state import ConfigState
    from shoal import tokens

    # The pod has an address of its own, and plaintext to it on 8080 from inside the pod is captured into
    # the ztunnel's 15006, as iptables mode does for inbound; the ztunnel's own (marked) connection is not.
    for argv in (["ip", "-n", POD_NS, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                 ["ip", "-n", POD_NS, "addr", "add", f"{POD_IP}/32", "dev", "eth0"],
                 ["ip", "-n", POD_NS, "link", "set", "eth0", "up"],
                 ["ip", "netns", "exec", POD_NS, "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                  "-d", POD_IP, "--dport", "8080", "-m", "mark", "!", "--mark", "0x539",
                  "-j", "REDIRECT", "--to-ports", "15006"]):
        subprocess.run(argv, check=True)

    async def main():
        plane = await start_plane(tmp_path / "cp")
        port = plane.server.grpc_port
        await plane.server.stop(grace=0)        # the control plane is down from the ztunnel's start on
        token_file = tmp_path / "token"
        token_file.write_text(NODE_TOKENS["node1"])
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(plane.authority.bundle_pem)
        sock_path = tmp_path / "ztunnel.sock"
        config = Config(node="node1", control_plane=f"127.0.0.1:{port}", socket_path=sock_path,
                        token_file=token_file, drain_seconds=0.5, preserve_source_ip=False, **ports())
        shutdown = Shutdown()
        zt = asyncio.create_task(run(config, bundle, shutdown))
        agent = HandoffServer(sock_path, lambda: [(handoff.Workload("uid-p", "p", "shop", "default"),
                                                  netns.open_fd(POD_NS))], lambda e, s: None)
        await agent.start()

        app_saw: list[bytes] = []

        async def app(reader, writer):
            data = await reader.read(100)
            app_saw.append(data)
            writer.write(b"app:" + data)
            await writer.drain()
            writer.close()
        listener = netns.socket_in(POD_NS)
        listener.bind(("0.0.0.0", 8080))
        listener.listen()
        server = await asyncio.start_server(app, sock=listener)

        async def call() -> bytes | None:
            """One plaintext connection into the pod, as a client outside the mesh makes it."""
            sock = netns.socket_in(POD_NS)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (POD_IP, 8080))
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(b"hello")
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(100), 5)
                writer.close()
                return answer
            except (OSError, asyncio.TimeoutError):
                sock.close()
                return None

        async def answering():
            try:
                return await http_get(PORTS["admin_port"], "/config_dump")
            except OSError:
                return None                     # not listening yet
        await eventually_async(answering, 30, "the ztunnel's admin port", interval=0.1)
        await asyncio.sleep(1.0)                # time to take the hand-off, if it (wrongly) would
        _, body = await http_get(PORTS["admin_port"], "/config_dump")
        assert json.loads(body)["pods"] == [] and not agent.connected   # no pod is taken without config
        for _ in range(3):
            assert not await call()            # reset or closed: nothing of the app's
        assert app_saw == []
        status, body = await http_get(PORTS["readiness_port"], "/healthz/ready")
        assert status == 503 and b"no config" in body

        # The control plane comes back (same root, same port): the config is whole, the pod is served.
        state = ConfigState()
        state.apply([])
        auth = LocalAuthenticator(tmp_path / "cp" / "bootstrap-tokens.json", tokens.token_key(tmp_path / "cp"))
        again = ConfigServer(state=state, authority=plane.authority, authenticator=auth,
                             endpoints=Endpoints("127.0.0.1", port, "127.0.0.1", 0))
        await again.start()
        again.mark_synced()
        assert await eventually_async(call, 60, "plaintext served once the config arrived", interval=0.2) == \
            b"app:hello"
        assert app_saw == [b"hello"]

        shutdown.stopping.set()
        code = await asyncio.wait_for(zt, 10)
        await agent.close()
        server.close()
        await again.stop(0)
        return code

    assert asyncio.run(main()) == 0
