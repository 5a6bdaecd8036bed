"""The ztunnel process: wires the hand-off, the config stream, certificates, the proxy and its HTTP ports.

Readiness (15021 `/healthz/ready`) is true once the node agent's hand-off is
connected and the control plane's config has been received once; after that,
a control plane going away does not make the ztunnel unready (it keeps
serving with the last config). SIGTERM drains: listeners close at once (a new
ztunnel with SO_REUSEPORT takes new connections), open connections get until
`drain_seconds`, then are cut.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal import handoff_io, log, tokens
from shoal import admin_http as admin
from shoal.certs import CertManager
from shoal.config_client import ClientSettings, ConfigClient, SignClient
from shoal.lifecycle import Shutdown
from shoal.proxy_state import ProxyState
from shoal.trust_bundle import TrustBundle, TrustBundleMissing

from ztunnel.config import Config
from ztunnel.errors import StartupError
from ztunnel.proxy import Ztunnel

__all__ = ["StartupError", "run"]

logger = log.get("ztunnel")


def routes(z: Ztunnel, ready) -> tuple[dict, dict, dict]:
    dump = admin.json_route(z.dump)
    admin_routes = {
        "/config_dump": dump,
        "/workloads": admin.json_route(lambda: z.dump()["workloads"]),
        "/services": admin.json_route(lambda: z.dump()["services"]),
        "/policies": admin.json_route(lambda: {k: z.dump()[k] for k in ("policies", "peer_authentications")}),
        "/certs": admin.json_route(z.certs.dump),
    }
    metrics_routes = {"/metrics": lambda: (200, "text/plain; version=0.0.4", z.metrics.render()),
                      "/stats/prometheus": lambda: (200, "text/plain; version=0.0.4", z.metrics.render())}

    def readiness():
        ok, why = ready()
        return (200 if ok else 503), "text/plain", (why + "\n").encode()
    return admin_routes, metrics_routes, {"/healthz/ready": readiness}


async def run(config: Config, bundle_path: Path, shutdown: Shutdown) -> int:
    if config.token_file is None:
        raise StartupError("--token-file is required: the node's credential for the control plane")
    token_file = config.token_file
    tokens.read_token(token_file)  # fail now, clearly, rather than at the first call
    bundle = TrustBundle(bundle_path)
    try:
        await bundle.wait(shutdown.stopping)
    except TrustBundleMissing as e:
        raise StartupError(str(e)) from None
    settings = ClientSettings(target=config.control_plane, bundle_pem=bundle.current,
                              token=lambda: tokens.read_token(token_file), node=config.node)
    state = ProxyState(config.trust_domain)
    sign = SignClient(settings)
    certs = CertManager(sign.sign)
    z = Ztunnel(config, state, certs)
    watch = ConfigClient(settings, on_update=state.apply_update)
    agent = handoff_io.HandoffClient(config.socket_path, z)

    def ready():
        if not agent.connected.is_set():
            return False, f"not connected to the node agent at {config.socket_path}"
        if not watch.synced.is_set():
            return False, f"no config from the control plane at {config.control_plane} yet"
        return True, "ready"

    admin_routes, metrics_routes, ready_routes = routes(z, ready)
    servers = [
        await admin.serve(config.admin_address, config.admin_port, admin_routes),
        await admin.serve("0.0.0.0", config.metrics_port, metrics_routes),
        await admin.serve("0.0.0.0", config.readiness_port, ready_routes),
    ]
    loops = (watch.run(), agent.run(), certs.run(), z.pool.run_sweeper(), z.tracker.report_periodically())
    tasks = [asyncio.create_task(coro) for coro in loops]
    logger.info("ztunnel started", node=config.node, control_plane=config.control_plane,
                socket=str(config.socket_path))
    stop = asyncio.create_task(shutdown.stopping.wait())
    done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stop and task.exception() is not None:
            logger.error("ztunnel task failed", error=repr(task.exception()))

    # Drain.
    z.stop_accepting()
    agent.stop()
    logger.info("draining", connections=len(z.active), deadline_seconds=config.drain_seconds)
    await z.drain(config.drain_seconds, shutdown.urgent)
    watch.stop()
    for task in tasks + [stop]:
        task.cancel()
    await z.close()
    await sign.close()
    for server in servers:
        server.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    logger.info("ztunnel stopped")
    return 0
