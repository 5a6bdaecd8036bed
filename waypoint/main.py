"""The waypoint process: config stream, certificate, the HBONE listener, metrics and readiness.

Readiness (15021 `/healthz/ready`) is true once the control plane's config
has arrived once and the waypoint holds a certificate; a control plane going
away later does not make it unready (it serves with the last config).
SIGTERM: the listener closes, open requests get `drain_seconds`, then all is cut.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shoal import log, store, tokens
from shoal import admin_http as admin
from shoal.certs import CertManager
from shoal.config_client import ClientSettings, ConfigClient, SignClient
from shoal.lifecycle import Shutdown
from shoal.proxy_state import ProxyState
from shoal.trust_bundle import TrustBundle, TrustBundleMissing

from waypoint.config import Config
from waypoint.errors import StartupError
from waypoint.proxy import Proxy
from waypoint.server import HboneListener
from waypoint.telemetry import Metrics
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
    bundle = TrustBundle(config.ca_bundle or run_dir(config) / "ca" / "bundle.pem")
    token = token_source(config)
    try:
        await bundle.wait(shutdown.stopping)
    except TrustBundleMissing as e:
        raise StartupError(str(e)) from None
    settings = ClientSettings(target=config.control_plane, bundle_pem=bundle.current, token=token,
                              waypoint_namespace=config.namespace, waypoint_name=config.name)
    state = ProxyState(config.trust_domain, waypoint=(config.namespace, config.name))
    watch = ConfigClient(settings, on_update=state.apply_update)
    sign = SignClient(settings)
    certs = CertManager(sign.sign)
    certs.want(config.identity)
    metrics = Metrics()
    upstreams = Upstreams(certs, config.identity, connect_timeout=config.connect_timeout)
    proxy = Proxy(state, upstreams, metrics)
    listener = HboneListener(proxy, lambda: certs.server_context(config.identity),
                             handshake_timeout=config.connect_timeout)

    def readiness():
        if not watch.synced.is_set():
            return 503, "text/plain", f"no config from the control plane at {config.control_plane} yet\n".encode()
        if certs.valid(config.identity) is None:
            why = certs.last_error.get(config.identity, "fetching")
            return 503, "text/plain", f"no certificate yet: {why}\n".encode()
        return 200, "text/plain", b"ready\n"

    def dump():
        out = summary(state)
        out["certificate"] = certs.dump()[0]   # the one identity, wanted from the start
        out["upstream_sessions"] = upstreams.pool.size
        return out

    metrics_body = lambda: (200, "text/plain; version=0.0.4", metrics.render())  # noqa: E731
    servers = [
        await admin.serve(config.listen, config.metrics_port, {"/metrics": metrics_body,
                                                               "/stats/prometheus": metrics_body}),
        await admin.serve(config.listen, config.readiness_port, {"/healthz/ready": readiness}),
        await admin.serve("127.0.0.1", config.admin_port, {"/config_dump": admin.json_route(dump)}),
    ]
    tasks = [asyncio.create_task(watch.run()), asyncio.create_task(certs.run()),
             asyncio.create_task(_sweep(upstreams, proxy))]
    logger.info("waypoint starting", waypoint=f"{config.namespace}/{config.name}", identity=str(config.identity),
                control_plane=config.control_plane)
    stop = asyncio.create_task(shutdown.stopping.wait())
    got_cert = asyncio.create_task(certs.wait_issued(config.identity))
    await asyncio.wait([stop, got_cert], return_when=asyncio.FIRST_COMPLETED)
    if got_cert.done():
        await listener.start(config.listen, config.hbone_port)
        logger.info("listening for HBONE", port=config.hbone_port)
        await stop
    got_cert.cancel()

    listener.stop_accepting()
    proxy.draining = True     # answers in flight carry `connection: close`; HTTP/2 clients get a GOAWAY
    deadline = time.monotonic() + config.drain_seconds
    while listener.sessions and time.monotonic() < deadline and not shutdown.urgent.is_set():
        if not any(s.open_streams for s in listener.sessions):
            break
        await asyncio.sleep(0.05)
    watch.stop()
    for task in tasks:
        task.cancel()
    await listener.close()
    await proxy.close()
    upstreams.close()
    await sign.close()
    for server in servers:
        server.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    logger.info("waypoint stopped")
    return 0


async def _sweep(upstreams: Upstreams, proxy: Proxy, every: float = 10.0) -> None:
    while True:
        await asyncio.sleep(every)
        proxy.http1_pool.sweep()
        upstreams.sweep()
