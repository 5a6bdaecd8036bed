"""The waypoint process: config stream, certificate, the HBONE listener, metrics and readiness.

Readiness (15021 `/healthz/ready`) is true once the control plane's config
has arrived once and the waypoint holds a certificate; a control plane going
away later does not make it unready (it serves with the last config).
SIGTERM: the listener closes, open requests get `drain_seconds`, then all is cut.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from shoal import admin_http, log, store, tokens
from shoal.lifecycle import Shutdown
from shoal.proxy_process import ControlPlaneLink, serve_admin_ports, stop
from shoal.proxy_state import ProxyState
from shoal.trust_bundle import TrustBundleMissing

from waypoint.config import Config
from waypoint.errors import StartupError
from waypoint.proxy import Proxy
from waypoint.server import HboneListener
from waypoint.telemetry import Metrics, live_workloads
from waypoint.upstream import Upstreams

logger = log.get("waypoint")


def run_dir(config: Config) -> Path:
    return store.RUN_ROOT / config.cluster


def token_source(config: Config):
    """The waypoint's credential for the control plane: a token file, or one minted in the local cluster."""
    if config.token_file is not None:
        path = config.token_file
        tokens.read_token(path)
        return lambda: tokens.read_token(path)
    directory = run_dir(config)
    tokens.local_service_account_token(directory, config.namespace, config.service_account)  # fail now, clearly
    return lambda: tokens.local_service_account_token(directory, config.namespace, config.service_account)


def summary(state: ProxyState) -> dict:
    """What a waypoint's config dump shows of its state: names, not whole objects."""
    return {"waypoint": "/".join(state.waypoint or ()), "services": sorted(state.services),
            "workloads": sorted(w.name for w in state.workloads.values()),
            "route_tables": sorted(state.route_tables), "policies": sorted(state.authorizations)}


async def run(config: Config, shutdown: Shutdown) -> int:
    me = config.identity
    try:
        link = await ControlPlaneLink.open(config.control_plane, config.ca_bundle or run_dir(config) / "ca" / "bundle.pem",
                                           token_source(config), trust_domain=config.trust_domain,
                                           stopping=shutdown.stopping, waypoint=(config.namespace, config.name))
    except TrustBundleMissing as e:
        raise StartupError(str(e)) from None
    link.certs.want(me)
    metrics = Metrics()
    upstreams = Upstreams(link.certs, me, connect_timeout=config.connect_timeout)
    tracer = None
    if config.tracing_endpoint:
        from waypoint.tracing import Tracer   # the OpenTelemetry SDK is loaded only when tracing is on
        tracer = Tracer(config.tracing_endpoint, config.tracing_sampling, f"{config.name}.{config.namespace}",
                        random.random)
    proxy = Proxy(link.state, upstreams, metrics, tracer=tracer)
    listener = HboneListener(proxy, lambda: link.certs.server_context(me), handshake_timeout=config.connect_timeout)

    def ready() -> tuple[bool, str]:
        return link.ready_as(me)

    def dump() -> dict:
        out = summary(link.state)
        out["certificate"] = link.certs.dump()[0]   # the one identity, wanted from the start
        out["upstream_sessions"] = upstreams.pool.size
        out["state"] = link.state.dump()   # whole objects, for `shoal proxy-config` (the names above stay)
        return out

    servers = await serve_admin_ports(config.listen, render_metrics=metrics.render, ready=ready,
                                      admin_routes={"/config_dump": admin_http.json_route(dump)},
                                      metrics_port=config.metrics_port, readiness_port=config.readiness_port,
                                      admin_port=config.admin_port)
    tasks = [asyncio.create_task(coro) for coro in (*link.loops(), _sweep(upstreams, proxy, link.state, metrics))]
    logger.info("waypoint starting", waypoint=f"{config.namespace}/{config.name}", identity=str(me),
                control_plane=config.control_plane)
    stopping = asyncio.create_task(shutdown.stopping.wait())
    got_cert = asyncio.create_task(link.certs.wait_issued(me))
    await asyncio.wait([stopping, got_cert], return_when=asyncio.FIRST_COMPLETED)
    if got_cert.done():
        await listener.start(config.listen, config.hbone_port)
        logger.info("listening for HBONE", port=config.hbone_port)
        await stopping
    got_cert.cancel()

    listener.stop_accepting()
    proxy.draining = True     # answers in flight carry `connection: close`; HTTP/2 clients get a GOAWAY
    deadline = time.monotonic() + config.drain_seconds
    while listener.sessions and time.monotonic() < deadline and not shutdown.urgent.is_set():
        if not any(s.open_streams for s in listener.sessions):
            break
        await asyncio.sleep(0.05)
    await link.close()
    await listener.close()
    await proxy.close()
    upstreams.close()
    if tracer is not None:
        tracer.shutdown()     # the last spans are sent before the process ends
    await stop(tasks, servers)
    logger.info("waypoint stopped")
    return 0


async def _sweep(upstreams: Upstreams, proxy: Proxy, state: ProxyState, metrics: Metrics,
                 every: float = 10.0) -> None:
    """Idle upstream connections close; the metric series of deleted workloads go."""
    while True:
        await asyncio.sleep(every)
        proxy.http1_pool.sweep()
        upstreams.sweep()
        metrics.prune(live_workloads(state.workloads.values()))
