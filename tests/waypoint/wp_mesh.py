"""The in-process mesh the waypoint's proxy tests share: a test CA, three app servers (two plain TCP,
one behind an HBONE terminator), a shadow, a meshed client, the waypoint between. Loopback only."""

import asyncio

from shoal.model import Endpoint, Protocol, Service, ServicePort
from shoal.proxy_state import ProxyState

from support.ca import TestCA
from support.net import free_port
from wp_harness import App, AppBehaviour, Client, HboneEndpoint, Waypoint
from wp_model import NS, VIP, workload

V1_IP, V1B_IP, V2_IP, SHADOW_IP, CLIENT_IP = "127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.1"
CLIENT_URI = f"spiffe://cluster.local/ns/{NS}/sa/client"


class Mesh:
    def __init__(self, *routing, v1=None, v1b=None, v2=None, shadow=None, rand=None, app_protocol="http"):
        self.ca = TestCA()
        self.behaviours = {"v1": v1 or AppBehaviour("v1"), "v1b": v1b or AppBehaviour("v1b"),
                           "v2": v2 or AppBehaviour("v2"), "shadow": shadow or AppBehaviour("shadow")}
        ips = {"v1": V1_IP, "v1b": V1B_IP, "v2": V2_IP, "shadow": SHADOW_IP}
        self.apps = {k: App(ips[k], b) for k, b in self.behaviours.items()}
        self.hbone_port = free_port(V2_IP)
        self.pods = {
            "v1": workload("reviews-v1", V1_IP, "v1", protocol=Protocol.TCP),
            "v1b": workload("reviews-v1b", V1B_IP, "v1", protocol=Protocol.TCP),
            "v2": workload("reviews-v2", V2_IP, "v2", protocol=Protocol.HBONE),
            "shadow": workload("reviews-shadow", SHADOW_IP, "v1", protocol=Protocol.TCP, app="shadow"),
        }
        self.client_pod = workload("client", CLIENT_IP, "v1", app="client")
        state = ProxyState(waypoint=(NS, "waypoint"))

        def svc(name, vip, keys):
            return Service(name=name, namespace=NS, hostname=f"{name}.{NS}.svc.cluster.local", vips=(vip,),
                           ports=(ServicePort(9080, "http", app_protocol=app_protocol),),
                           endpoints=tuple(Endpoint(self.pods[k].uid, 9080, self.apps[k].port) for k in keys))
        for item in (*self.pods.values(), self.client_pod, svc("reviews", VIP, ("v1", "v1b", "v2")),
                     svc("reviews-shadow", "198.18.16.11", ("shadow",)), *routing):
            state.upsert(item)
        self.state = state
        self.waypoint = Waypoint(self.ca, state, self.hbone_port, rand=rand)
        self.endpoint = HboneEndpoint(self.ca, f"spiffe://cluster.local/ns/{NS}/sa/reviews", V2_IP)
        self.client = Client(self.ca, CLIENT_URI)

    async def __aenter__(self):
        await self.waypoint.start()
        await self.endpoint.start(self.hbone_port)
        await self.client.open("127.0.0.1", self.waypoint.listener.port)
        return self

    async def __aexit__(self, *exc):
        self.client.close()
        self.endpoint.close()
        await self.waypoint.close()
        for app in self.apps.values():
            app.close()

    async def send(self, raw: bytes, port: int = 9080, vip: str = VIP, timeout: float = 5.0) -> bytes:
        return await self.client.request(f"{vip}:{port}", raw, timeout)

    def hits(self, key):
        return self.behaviours[key].hits


def run(coro, timeout: float = 30):
    """Runs a test's coroutine; the timeout bounds a hung test, it is not a claim about speed."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
