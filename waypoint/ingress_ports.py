"""Listeners for the Gateway ports the ingress gateway was not started with: opened as the config names them.

The gateway starts with its fixed listeners (`--http`, `--https`). Any other
port that its route tables or TLS credentials name (a Gateway server on
8081, say) gets a listener of its own on that port number, as Istio's
gateway opens a listener per Gateway server port: HTTPS when the port has a
certificate, HTTP otherwise. The control plane gives no tables to an HTTPS
port that no certificate serves (`control_plane.translate.ingress.tables`),
so a port meant for TLS is never opened as plain HTTP. A port no longer
named is closed; one that changes protocol is opened again.

`wanted_ports` decides (pure); `PortListeners.sync` does. A port that cannot
be bound (in use, or below 1024 for a non-root gateway) is logged once with
what to check and tried again at the next sync.
"""

from __future__ import annotations

from typing import Callable

from shoal import log
from shoal.sockets import SocketError
from shoal.model import ANY_PORT
from shoal.proxy_state import ProxyState

from waypoint.ingress import IngressListener

logger = log.get("waypoint.ingress")


def wanted_ports(state: ProxyState, routes: dict, gateway: str, fixed: set[int]) -> dict[int, bool]:
    """gateway port -> HTTPS? for each port this gateway's tables (`routes`, by (host, port)) or credentials
    name that no fixed listener serves."""
    https = {c.port for c in state.tls_credentials.values() if c.gateway == gateway}
    ports = {port for _, port in routes} | https
    return {port: port in https for port in sorted(ports - fixed) if port != ANY_PORT and 0 < port < 65536}


class PortListeners:
    """The gateway's listeners beyond its fixed ones. `make(port, https)` builds one (not started)."""

    def __init__(self, make: Callable[[int, bool], IngressListener]) -> None:
        self.make = make
        self.open: dict[int, tuple[IngressListener, bool]] = {}
        self._failed: dict[int, str] = {}      # port -> the error last logged (logged again only if it changes)

    async def sync(self, wanted: dict[int, bool]) -> None:
        for port, (listener, https) in list(self.open.items()):
            if wanted.get(port) != https:
                del self.open[port]
                await listener.close()
                logger.info("gateway port closed", port=port, https=https)
        for port, https in wanted.items():
            if port in self.open:
                continue
            listener = self.make(port, https)
            try:
                await listener.start()
            except (OSError, SocketError) as e:
                if self._failed.get(port) != str(e):
                    self._failed[port] = str(e)
                    logger.warning("cannot listen on a Gateway server's port; check that nothing else holds it "
                                   "(and that a non-root gateway is not asked for a port below 1024)",
                                   port=port, error=str(e))
                continue
            self._failed.pop(port, None)
            self.open[port] = (listener, https)
            logger.info("gateway port opened", port=port, https=https)
        for port in set(self._failed) - set(wanted):
            del self._failed[port]

    @property
    def ports(self) -> dict[int, bool]:
        return {port: https for port, (_, https) in self.open.items()}

    async def close(self) -> None:
        for listener, _ in self.open.values():
            await listener.close()
        self.open.clear()
