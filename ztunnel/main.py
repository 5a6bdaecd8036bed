"""The ztunnel process: wires the hand-off, the config stream, certificates, the proxy and its HTTP ports.

Readiness (15021 `/healthz/ready`) is true once the node agent's hand-off is
connected and the control plane's config has been received once; after that,
a control plane going away does not make the ztunnel unready (it keeps
serving with the last config). SIGTERM drains: listeners close at once (a new
ztunnel with SO_REUSEPORT takes new connections) and every HBONE peer gets a
graceful GOAWAY (its next tunnel opens a connection to the new ztunnel), open
connections get until `drain_seconds`, then are cut.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal import admin_http, handoff_io, log, tokens
from shoal.lifecycle import Shutdown
from shoal.proxy_process import ControlPlaneLink, serve_admin_ports, stop
from shoal.trust_bundle import TrustBundleMissing

from ztunnel.config import Config
from ztunnel.errors import StartupError
from ztunnel.proxy import Ztunnel

__all__ = ["StartupError", "run"]

logger = log.get("ztunnel")


def admin_routes(z: Ztunnel) -> dict:
    return {
        "/config_dump": admin_http.json_route(z.dump),
        "/workloads": admin_http.json_route(lambda: z.dump()["workloads"]),
        "/services": admin_http.json_route(lambda: z.dump()["services"]),
        "/policies": admin_http.json_route(lambda: {k: z.dump()[k] for k in ("policies", "peer_authentications")}),
        "/certs": admin_http.json_route(z.certs.dump),
    }


async def run(config: Config, bundle_path: Path, shutdown: Shutdown) -> int:
    if config.token_file is None:
        raise StartupError("--token-file is required: the node's credential for the control plane")
    token_file = config.token_file
    tokens.read_token(token_file)  # fail now, clearly, rather than at the first call
    try:
        link = await ControlPlaneLink.open(config.control_plane, bundle_path, lambda: tokens.read_token(token_file),
                                           trust_domain=config.trust_domain, stopping=shutdown.stopping,
                                           node=config.node)
    except TrustBundleMissing as e:
        raise StartupError(str(e)) from None
    z = Ztunnel(config, link.state, link.certs)
    agent = handoff_io.HandoffClient(config.socket_path, z)

    def ready() -> tuple[bool, str]:
        if not agent.connected.is_set():
            return False, f"not connected to the node agent at {config.socket_path}"
        missing = link.config_missing()
        return (False, missing) if missing else (True, "ready")

    servers = await serve_admin_ports(config.listen, render_metrics=z.metrics.render, ready=ready,
                                      admin_routes=admin_routes(z), admin_address=config.admin_address,
                                      metrics_port=config.metrics_port, readiness_port=config.readiness_port,
                                      admin_port=config.admin_port)
    loops = (*link.loops(), agent.run(), z.pool.run_sweeper(), z.tracker.report_periodically(z.live_workloads))
    tasks = [asyncio.create_task(coro) for coro in loops]
    logger.info("ztunnel started", node=config.node, control_plane=config.control_plane,
                socket=str(config.socket_path))
    stopping = asyncio.create_task(shutdown.stopping.wait())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stopping and task.exception() is not None:
            logger.error("ztunnel task failed", error=repr(task.exception()))

    # Drain: listeners close and HBONE peers get a GOAWAY at once, open connections get until the deadline.
    z.stop_accepting()
    agent.stop()
    logger.info("draining", connections=len(z.active), deadline_seconds=config.drain_seconds)
    await z.drain(config.drain_seconds, shutdown.urgent)
    await link.close()
    await z.close()
    await stop(tasks + [stopping], servers)
    logger.info("ztunnel stopped")
    return 0
