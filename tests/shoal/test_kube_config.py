"""`shoal config` against a Kubernetes cluster: the ztunnel pod of the node is found through the
API (the double), and its admin port reached through the API server's port-forward, as kubectl does.

The double does not speak port-forward (a websocket, `v4.channel.k8s.io`), so a front in this file
answers `.../pods/NAME/portforward` as the API server does, joined to a real admin server (the
proxies' own `shoal.admin_http`) on loopback, and passes every other request to the double."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shoal import admin_http
from shoal.contracts import ADMIN_PORT
from support.cli import shoal
from support.kube_api import KubeApiServer

aiohttp = pytest.importorskip("aiohttp", reason="the kubernetes client brings it")
from aiohttp import ClientSession, WSMsgType, web  # noqa: E402

NODE = "worker-1"
DUMP = {
    "workloads": [{"namespace": "shop", "name": "cart-7d9f", "ips": ["10.244.1.7"], "node": NODE,
                   "protocol": "HBONE", "service_account": "cart",
                   "waypoint": {"namespace": "shop", "name": "waypoint"}}],
    "services": [{"hostname": "cart.shop.svc.cluster.local", "vips": ["10.96.0.12"], "ports": [{"port": 80}],
                  "endpoints": [{}], "waypoint": None}],
    "policies": [], "peer_authentications": [],
    "certificates": [{"identity": "spiffe://cluster.local/ns/shop/sa/cart", "state": "valid"}],
}


class Front:
    """Port-forward to `targets[(pod, port)]` on 127.0.0.1; anything else to the double."""

    def __init__(self, double: KubeApiServer) -> None:
        self.double = double
        self.targets: dict[tuple[str, int], int] = {}
        self.forwards: list[tuple[str, str, list[int]]] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self.run(self._start())

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _start(self) -> int:
        self.session = ClientSession()
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/pods/{name}/portforward", self._portforward)
        app.router.add_route("*", "/{tail:.*}", self._pass)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.admin = await admin_http.serve("127.0.0.1", 0, {"/config_dump": admin_http.json_route(lambda: DUMP)})
        return self.runner.addresses[0][1]

    @property
    def admin_port(self) -> int:
        return self.admin.sockets[0].getsockname()[1]

    async def _pass(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.session.request(request.method, self.double.url + request.rel_url.raw_path_qs,
                                        headers=headers, data=await request.read()) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type=answer.content_type)

    async def _portforward(self, request: web.Request) -> web.WebSocketResponse:
        name = request.match_info["name"]
        ports = [int(p) for value in request.query.getall("ports") for p in value.split(",")]
        self.forwards.append((request.match_info["namespace"], name, ports))
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        (port,) = ports
        for channel in (0, 1):  # data and error channels each start with the port, little-endian
            await ws.send_bytes(bytes((channel, port & 0xFF, port >> 8)))
        target = self.targets.get((name, port))
        if target is None:
            await ws.send_bytes(b"\x01" + f"error forwarding port {port}: connection refused".encode())
            await ws.close()
            return ws
        reader, writer = await asyncio.open_connection("127.0.0.1", target)

        async def upstream():
            async for message in ws:
                if message.type == WSMsgType.BINARY and message.data[:1] == b"\x00":
                    writer.write(message.data[1:])
                    await writer.drain()

        sending = asyncio.ensure_future(upstream())
        while data := await reader.read(65536):
            await ws.send_bytes(b"\x00" + data)
        writer.close()
        await ws.close()
        sending.cancel()
        return ws

    def close(self) -> None:
        async def stop():
            self.admin.close()
            await self.session.close()
            await self.runner.cleanup()
        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


@pytest.fixture
def cluster(tmp_path):
    with KubeApiServer() as double:
        front = Front(double)
        kubeconfig = double.kubeconfig(tmp_path / "kubeconfig")
        kubeconfig.write_text(kubeconfig.read_text().replace(double.url, f"http://127.0.0.1:{front.port}"))
        try:
            yield double, front, str(kubeconfig)
        finally:
            front.close()


def ztunnel_pod(name: str, node: str, created: str, phase: str = "Running") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shoal-system", "labels": {"app": "shoal-ztunnel"},
                         "creationTimestamp": created},
            "spec": {"nodeName": node, "hostNetwork": True, "containers": [{"name": "ztunnel", "image": "shoal"}]},
            "status": {"phase": phase}}


def test_config_reads_the_nodes_ztunnel_through_a_port_forward(cluster):
    double, front, kubeconfig = cluster
    double.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shoal-system"}})
    double.add(ztunnel_pod("shoal-ztunnel-a", "worker-2", "2026-11-30T10:00:00Z"))
    double.add(ztunnel_pod("shoal-ztunnel-old", NODE, "2026-11-30T10:00:00Z"))
    double.add(ztunnel_pod("shoal-ztunnel-new", NODE, "2026-11-30T11:00:00Z"))   # a surge: the newer holds the pods
    front.targets[("shoal-ztunnel-new", ADMIN_PORT)] = front.admin_port

    result = shoal("config", "workloads", "--node", NODE, "--kubeconfig", kubeconfig, timeout=60)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "IPS", "NODE", "PROTOCOL", "IDENTITY", "SA", "WAYPOINT"]
    assert lines[1].split() == ["shop", "cart-7d9f", "10.244.1.7", NODE, "HBONE", "cart", "shop/waypoint"]
    assert front.forwards == [("shoal-system", "shoal-ztunnel-new", [ADMIN_PORT])]

    result = shoal("config", "certs", "-o", "json", "--node", NODE, "--kubeconfig", kubeconfig, timeout=60)
    assert '"spiffe://cluster.local/ns/shop/sa/cart"' in result.stdout


def test_config_says_what_to_check_when_there_is_no_ztunnel_or_it_does_not_answer(cluster):
    double, front, kubeconfig = cluster
    double.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shoal-system"}})
    result = shoal("config", "all", "--node", NODE, "--kubeconfig", kubeconfig, check=False, timeout=60)
    assert result.returncode == 1 and f"no running ztunnel on node '{NODE}'" in result.stderr
    assert "kubectl -n shoal-system get pods -l app=shoal-ztunnel" in result.stderr

    double.add(ztunnel_pod("shoal-ztunnel-x", NODE, "2026-11-30T10:00:00Z", phase="Pending"))
    result = shoal("config", "all", "--node", NODE, "--kubeconfig", kubeconfig, check=False, timeout=60)
    assert result.returncode == 1 and "no running ztunnel" in result.stderr

    double.add(ztunnel_pod("shoal-ztunnel-x", NODE, "2026-11-30T10:00:00Z"))   # running, but nothing on 15000
    result = shoal("config", "all", "--node", NODE, "--kubeconfig", kubeconfig, check=False, timeout=60)
    assert result.returncode == 1 and "connection refused" in result.stderr and "Traceback" not in result.stderr
    assert "kubectl -n shoal-system logs shoal-ztunnel-x" in result.stderr

    result = shoal("config", "all", "--kubeconfig", kubeconfig, check=False, timeout=60)
    assert result.returncode == 2 and "--node NAME" in result.stderr
