"""The ztunnel process: wires the hand-off, the config stream, certificates, the proxy and its HTTP ports.

Order at start, for upgrades (`ztunnel.takeover`): the node ports (15020,
15021, 15000) are bound first, shared with an older ztunnel on the node,
which answers them until this one is ready; the node agent's hand-off is
taken only once the control plane's config is whole, since the hand-off is
what moves every pod's new connections to this process (an old ztunnel keeps
serving them until then; a ztunnel alone on its node serves nothing
meanwhile).

Readiness (15021 `/healthz/ready`, and `/healthz/ready/<pod name>`, which
only this pod's process answers) is true once the config has been received
and the hand-off's replay is done; after that, a control plane going away
does not make the ztunnel unready (it keeps serving with the last config).
SIGTERM drains: listeners close at once (the new ztunnel takes new
connections) and every HBONE peer gets a graceful GOAWAY (its next tunnel
opens a connection to the new ztunnel), open connections get until
`drain_seconds`, then are cut.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from shoal import admin_http, handoff_io, log, tokens
from shoal.lifecycle import Shutdown
from shoal.proxy_process import ControlPlaneLink, metrics_routes, readiness_routes, stop
from shoal.sockets import SocketError
from shoal.trust_bundle import TrustBundleMissing

from ztunnel import takeover
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


def node_ports(config: Config) -> dict[str, socket.socket]:
    try:
        return {"metrics": takeover.node_listener(config.listen, config.metrics_port),
                "readiness": takeover.node_listener(config.listen, config.readiness_port),
                "admin": takeover.node_listener(config.admin_address, config.admin_port)}
    except SocketError as e:
        raise StartupError(str(e)) from None


async def run(config: Config, bundle_path: Path, shutdown: Shutdown) -> int:
    if config.token_file is None:
        raise StartupError("--token-file is required: the node's credential for the control plane")
    token_file = config.token_file
    tokens.read_token(token_file)  # fail now, clearly, rather than at the first call
    ports = node_ports(config)
    parts: dict = {}                 # link, ztunnel, agent: filled in as they exist
    admin: dict = {}                 # admin routes, once the ztunnel exists (looked up per request)

    def ready() -> tuple[bool, str]:
        if shutdown.stopping.is_set():
            return False, "draining: stopping"
        if "agent" not in parts:
            return False, "starting: waiting for the trust bundle; not connected to the node agent yet"
        link, agent = parts["link"], parts["agent"]
        missing = [why] if (why := link.config_missing()) else []
        if not agent.connected.is_set():
            missing.append(f"not connected to the node agent at {config.socket_path}"
                           + (" (taken only once the config is whole)" if missing else ""))
        elif not agent.synced.is_set():
            missing.append("the node agent's hand-off is still replaying the pods")
        return (False, "; ".join(missing)) if missing else (True, "ready")

    def render_metrics() -> bytes:
        return parts["ztunnel"].metrics.render() if "ztunnel" in parts else b""

    readiness = readiness_routes(ready)
    if config.pod_name:
        readiness[f"/healthz/ready/{config.pod_name}"] = readiness["/healthz/ready"]
    servers = [await admin_http.serve("", 0, metrics_routes(render_metrics), sock=ports["metrics"]),
               await admin_http.serve("", 0, readiness, sock=ports["readiness"]),
               await admin_http.serve("", 0, admin, sock=ports["admin"])]
    try:
        link = await ControlPlaneLink.open(config.control_plane, bundle_path, lambda: tokens.read_token(token_file),
                                           trust_domain=config.trust_domain, stopping=shutdown.stopping,
                                           node=config.node)
    except TrustBundleMissing as e:
        await stop([], servers)
        raise StartupError(str(e)) from None
    z = Ztunnel(config, link.state, link.certs)
    agent = handoff_io.HandoffClient(config.socket_path, z)
    parts.update(link=link, ztunnel=z, agent=agent)
    admin.update(admin_routes(z))

    async def hand_off_once_configured() -> None:
        await link.watch.synced.wait()
        await agent.run()

    async def answer_the_node_once_ready() -> None:
        """The node ports are the older ztunnel's until this one is ready (ztunnel.takeover)."""
        while not ready()[0]:
            await asyncio.sleep(0.05)
        for sock in ports.values():
            takeover.prefer_newest(sock)
        logger.info("ready: answering the node's metrics, readiness and admin ports")
        await shutdown.stopping.wait()     # a loop of the process: it ends with it, not before

    loops = (*link.loops(), hand_off_once_configured(), answer_the_node_once_ready(), z.pool.run_sweeper(),
             z.tracker.report_periodically(z.live_workloads))
    tasks = [asyncio.create_task(coro) for coro in loops]
    logger.info("ztunnel started", node=config.node, control_plane=config.control_plane,
                socket=str(config.socket_path), pod=config.pod_name)
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
