"""The waypoint process (`waypoint.main.run`) against a real control plane on loopback.

It authenticates with its service-account token, gets its certificate from
Certificates.Sign (its own identity only), watches its namespace's config
over Config.Watch, turns ready, routes a request, and stops cleanly.
"""

import asyncio
import json

from shoal.lifecycle import Shutdown
from shoal.model import Endpoint, Protocol, Route, Service, ServicePort, Waypoint
from waypoint.config import Config
from waypoint.main import run

from support import net
from support.plane import start_plane
from support.polling import eventually_async
from wp_harness import App, AppBehaviour, Client, body_of, get, status_of
from wp_model import NS, table, to, workload

APP_IP, VIP = "127.0.0.21", "198.18.16.40"


def http_get(port: int, path: str) -> tuple[int, str]:
    return net.http_get(f"http://127.0.0.1:{port}{path}", timeout=2)


def test_waypoint_process_gets_identity_and_config_then_serves(tmp_path):
    app = App(APP_IP, AppBehaviour("v1"))

    async def main():
        plane = await start_plane(tmp_path / "run")
        pod = workload("reviews-v1", APP_IP, "v1", protocol=Protocol.TCP)
        plane.state.apply([pod, Waypoint("waypoint", NS, "waypoint"),
                           Service(name="reviews", namespace=NS, hostname=f"reviews.{NS}.svc.cluster.local",
                                   vips=(VIP,), ports=(ServicePort(9080, "http", app_protocol="http"),),
                                   endpoints=(Endpoint(pod.uid, 9080, app.port),)),
                           table(Route("only-v1", destinations=(to("v1"),)))])
        (tmp_path / "token").write_text(plane.sa_token(NS, "waypoint"))
        (tmp_path / "bundle.pem").write_bytes(plane.authority.bundle_pem)
        ports = {k: net.free_port() for k in ("hbone_port", "metrics_port", "readiness_port", "admin_port")}
        config = Config(namespace=NS, name="waypoint", control_plane=plane.target, ca_bundle=tmp_path / "bundle.pem",
                        token_file=tmp_path / "token", listen="127.0.0.1", drain_seconds=0.5, **ports)
        shutdown = Shutdown()
        task = asyncio.create_task(run(config, shutdown))
        loop = asyncio.get_running_loop()
        try:
            async def ready():
                status, _ = await loop.run_in_executor(None, http_get, ports["readiness_port"], "/healthz/ready")
                return status == 200
            await eventually_async(ready, 10, "the waypoint to turn ready", interval=0.05)
            _, dump = await loop.run_in_executor(None, http_get, ports["admin_port"], "/config_dump")
            dump = json.loads(dump)
            assert dump["certificate"]["identity"] == f"spiffe://cluster.local/ns/{NS}/sa/waypoint"
            assert f"reviews.{NS}.svc.cluster.local:9080" in dump["route_tables"]

            client = Client(plane_ca(plane), f"spiffe://cluster.local/ns/{NS}/sa/client")
            await client.open("127.0.0.1", ports["hbone_port"])
            response = await client.request(f"{VIP}:9080", get("/p"))
            client.close()
            assert status_of(response) == 200 and body_of(response) == b"v1 GET /p 0\n"
            _, metrics = await loop.run_in_executor(None, http_get, ports["metrics_port"], "/metrics")
            assert 'istio_requests_total{' in metrics and 'response_code="200"' in metrics
        finally:
            shutdown.stopping.set()
            assert await asyncio.wait_for(task, 10) == 0
            await plane.server.stop(0)
        assert http_get(ports["readiness_port"], "/healthz/ready")[0] == 0     # all ports closed
    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        app.close()


class _PlaneCA:
    """A client certificate from the plane's own CA (the waypoint must trust the mesh root only)."""

    def __init__(self, plane):
        self.plane = plane
        self.bundle_pem = plane.authority.bundle_pem

    def credential(self, uri):
        from shoal import identity
        key = identity.new_key()
        spiffe = identity.parse_spiffe_id(uri)
        signed = self.plane.authority.sign(identity.make_csr(key, spiffe), spiffe)
        return identity.Credential.from_pem(identity.key_pem(key), signed.chain_pem, self.bundle_pem)


def plane_ca(plane):
    return _PlaneCA(plane)
