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
from shoal.config_client import ClientSettings, ConfigClient, request_certificate
from shoal.lifecycle import Shutdown

from waypoint.certs import Certificates
from waypoint.config import Config
from waypoint.errors import StartupError
from waypoint.proxy import Proxy
from waypoint.server import HboneListener
from waypoint.state import WaypointState
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


async def read_bundle(path: Path, shutdown: Shutdown, wait_seconds: float = 60.0) -> bytes:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            data = path.read_bytes()
            if data.strip():
                return data
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline or shutdown.stopping.is_set():
            raise StartupError(f"no mesh trust bundle at {path}; start the control plane first or pass --ca-bundle")
        await asyncio.sleep(0.5)


async def run(config: Config, shutdown: Shutdown) -> int:
    bundle_path = config.ca_bundle or run_dir(config) / "ca" / "bundle.pem"
    token = token_source(config)
    await read_bundle(bundle_path, shutdown)
    settings = ClientSettings(target=config.control_plane, bundle_pem=lambda: bundle_path.read_bytes(), token=token,
                              waypoint_namespace=config.namespace, waypoint_name=config.name)
    state = WaypointState(config.namespace, config.name, config.trust_domain)
    watch = ConfigClient(settings, on_update=state.apply_update)
    certs = Certificates(lambda key, who: request_certificate(settings, key, who), config.identity)
    metrics = Metrics()
    upstreams = Upstreams(certs.client_context, connect_timeout=config.connect_timeout)
    proxy = Proxy(state, upstreams, metrics)
    listener = HboneListener(proxy, certs.server_context, handshake_timeout=config.connect_timeout)

    def readiness():
        if not watch.synced.is_set():
            return 503, "text/plain", f"no config from the control plane at {config.control_plane} yet\n".encode()
        if not certs.ready.is_set():
            return 503, "text/plain", f"no certificate yet: {certs.last_error or 'fetching'}\n".encode()
        return 200, "text/plain", b"ready\n"

    def dump():
        out = state.dump()
        cred = certs.credential
        out["certificate"] = ({"identity": str(cred.identity), "not_after": cred.not_after.isoformat()}
                              if cred else {"identity": str(config.identity), "state": "missing",
                                            "last_error": certs.last_error})
        out["upstream_sessions"] = sum(len(s) for s in upstreams.sessions.values())
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
    got_cert = asyncio.create_task(certs.ready.wait())
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
