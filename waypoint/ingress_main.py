"""The ingress gateway process: a waypoint's config stream, certificate and engine, with listeners for outside.

It runs as the pods an Istio Gateway's selector picks (in the local
cluster: `shoal-ingressgateway` in shoal-system, labelled `istio:
ingressgateway`). Its identity is its service account's; it watches config
as a waypoint of its own namespace (what the control plane lets a service
account do) and serves the route tables whose `gateway` is its
"namespace/service-account" (`control_plane.translate.ingress`), by Host
and port (`waypoint.ingress_routing`). Listeners: HTTP on each `--http`
port, HTTPS on each `--https` port with the TLS credentials addressed to
this gateway for that port (asked at each handshake, so a changed Secret
is served from the next connection on; SNI picks), and a listener of its
own on each other port the config names (`waypoint.ingress_ports`).
Readiness: config arrived once and a certificate is held.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from shoal import admin_http, contracts, log, sockets
from shoal.lifecycle import Shutdown
from shoal.proxy_process import ControlPlaneLink, serve_admin_ports, stop
from shoal.proxy_state import ProxyState
from shoal.trust_bundle import TrustBundleMissing

from waypoint import ingress_routing
from waypoint.config import Config
from waypoint.errors import StartupError
from waypoint.ingress import Certificate, IngressListener
from waypoint.ingress_ports import PortListeners, wanted_ports
from waypoint.main import run_dir, token_source
from waypoint.proxy import Proxy
from waypoint.telemetry import Metrics
from waypoint.upstream import Upstreams

logger = log.get("waypoint.ingress")

# Beside a node's ztunnel (hostNetwork), the gateway's own ports must differ from the ztunnel's.
METRICS_PORT = contracts.INGRESS_METRICS_PORT
READINESS_PORT = contracts.INGRESS_READINESS_PORT
ADMIN_PORT = contracts.INGRESS_ADMIN_PORT
PORT_CHECK_SECONDS = 0.5     # how soon a Gateway server on a new port gets its listener


@dataclass(frozen=True)
class IngressConfig:
    proxy: Config                                   # identity, control plane, paths, timeouts
    http_ports: tuple[int, ...] = (80,)
    https_ports: tuple[int, ...] = ()
    listen: str = sockets.ALL_ADDRESSES    # both families on one socket per port (0.0.0.0 without IPv6)
    metrics_port: int = METRICS_PORT
    readiness_port: int = READINESS_PORT
    admin_port: int = ADMIN_PORT
    # (listen port, the Gateway's port): a listener whose Gateway port differs, as in Kubernetes, where the
    # pod listens on 8080/8443 behind its Service's 80/443 and the Gateway names 80/443 (as with Istio).
    gateway_ports: tuple[tuple[int, int], ...] = ()

    def gateway_port(self, port: int) -> int:
        return dict(self.gateway_ports).get(port, port)

    @property
    def gateway(self) -> str:
        return f"{self.proxy.namespace}/{self.proxy.service_account}"


def routes_of(state: ProxyState, gateway: str) -> ingress_routing.IngressRoutes:
    """This gateway's tables by (host, port), memoized per state version."""
    memo = state.cached("ingress")
    found = memo.get(gateway)
    if found is None:
        found = memo[gateway] = {(t.hostname, t.port): t for t in state.route_tables.values() if t.gateway == gateway}
    return found


def certificates_of(state: ProxyState, gateway: str, port: int) -> tuple[Certificate, ...]:
    """The credentials this gateway holds for an HTTPS port, oldest Secret name first, memoized per state version."""
    memo = state.cached("ingress-tls")
    found = memo.get((gateway, port))
    if found is None:
        found = memo[(gateway, port)] = tuple(
            Certificate(c.secret, c.hosts, c.chain_pem, c.key_pem)
            for _, c in sorted(state.tls_credentials.items()) if c.gateway == gateway and c.port == port)
    return found


async def run(config: IngressConfig, shutdown: Shutdown) -> int:
    proxy_config = config.proxy
    me = proxy_config.identity
    try:
        link = await ControlPlaneLink.open(proxy_config.control_plane,
                                           proxy_config.ca_bundle or run_dir(proxy_config) / "ca" / "bundle.pem",
                                           token_source(proxy_config), trust_domain=proxy_config.trust_domain,
                                           stopping=shutdown.stopping,
                                           waypoint=(proxy_config.namespace, proxy_config.name))
    except TrustBundleMissing as e:
        raise StartupError(str(e)) from None
    link.certs.want(me)
    metrics = Metrics(reporter="source")     # Istio's gateways report as the client of the mesh
    upstreams = Upstreams(link.certs, me, connect_timeout=proxy_config.connect_timeout)
    gateway = config.gateway

    def decide(state, peer, head, rand):
        return ingress_routing.decide(state, lambda: routes_of(state, gateway), peer, head, rand)
    proxy = Proxy(link.state, upstreams, metrics, decider=decide)
    listeners = [IngressListener(proxy, port, host=config.listen, gateway_port=config.gateway_port(port))
                 for port in config.http_ports]
    listeners += [IngressListener(proxy, port, host=config.listen, gateway_port=config.gateway_port(port),
                                  certificates=lambda port=config.gateway_port(port): certificates_of(
                                      link.state, gateway, port))
                  for port in config.https_ports]
    fixed = {config.gateway_port(port) for port in config.http_ports + config.https_ports}

    def make_listener(port: int, https: bool) -> IngressListener:
        certificates = (lambda: certificates_of(link.state, gateway, port)) if https else ()
        return IngressListener(proxy, port, host=config.listen, certificates=certificates)
    more = PortListeners(make_listener)

    async def follow_ports() -> None:
        """Listeners for the other Gateway ports the config names, checked when the config changes."""
        seen = None
        while True:
            if link.state.version != seen:
                seen = link.state.version
                await more.sync(wanted_ports(link.state, routes_of(link.state, gateway), gateway, fixed))
            await asyncio.sleep(PORT_CHECK_SECONDS)

    def ready() -> tuple[bool, str]:
        return link.ready_as(me)

    def dump() -> dict:
        return {"gateway": gateway, "identity": str(me),
                "routes": sorted(f"{host}:{port}" for host, port in routes_of(link.state, gateway)),
                "tls": {port: [c.name for c in certificates_of(link.state, gateway, config.gateway_port(port))]
                        for port in config.https_ports},
                "other_ports": {port: "HTTPS" if https else "HTTP" for port, https in sorted(more.ports.items())},
                "certificate": link.certs.dump()[0]}

    servers = await serve_admin_ports(config.listen, render_metrics=metrics.render, ready=ready,
                                      admin_routes={"/config_dump": admin_http.json_route(dump)},
                                      metrics_port=config.metrics_port, readiness_port=config.readiness_port,
                                      admin_port=config.admin_port)
    tasks = [asyncio.create_task(coro) for coro in link.loops()]
    logger.info("ingress gateway starting", gateway=gateway, identity=str(me), http=list(config.http_ports),
                https=list(config.https_ports))
    stopping = asyncio.create_task(shutdown.stopping.wait())
    got_cert = asyncio.create_task(link.certs.wait_issued(me))
    await asyncio.wait([stopping, got_cert], return_when=asyncio.FIRST_COMPLETED)
    try:
        if got_cert.done():
            for listener in listeners:
                await listener.start()
            logger.info("listening", http=list(config.http_ports), https=list(config.https_ports))
            tasks.append(asyncio.create_task(follow_ports()))
            await stopping
    finally:
        got_cert.cancel()
        proxy.draining = True
        await link.close()
        for listener in listeners:
            await listener.close()
        await proxy.close()
        upstreams.close()
        await stop(tasks, servers)
        await more.close()           # after its loop has stopped, so nothing opens one again
    logger.info("ingress gateway stopped")
    return 0

