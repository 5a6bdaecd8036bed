"""Inbound, the decision half: may a connection reach this pod's app, and how?

`decide_inbound(state, workload, connection, reach)` is pure. It returns an
`InboundPlan` (where to connect, from which source address, the service to
report) or a `Refusal` (the HBONE status, the response flag, and a reason
that says what to check). The I/O half (`ztunnel.inbound_io`) carries it
out. Two kinds of connection arrive:

- HBONE (15008): the client's certificate was verified against the mesh
  root; the CONNECT target must be one of this pod's own addresses (read
  from its netns at enrollment, so this holds while the control plane has
  not described the pod yet), never loopback, never the ztunnel's own
  ports; then L4 authorization.
- plaintext (15006): PeerAuthentication first (STRICT refuses), then L4
  authorization with no principal. A connection to the ztunnel's own ports
  is refused, so capture can never loop.

Both address families alike: addresses are compared in their canonical
text (an IPv4-mapped source or target is its IPv4 address), the pod's own
addresses are those of both families, and the client's source is kept only
when it is of the target's family and the pod's return path covers that
family (`shoal.transparent`); otherwise the app sees the pod's own address.

Fail closed: a pod handed over by its node agent before the control plane's
Workload (with its labels) arrived cannot be judged by label-selected
policies; if any exist in its namespace, the connection is refused (and
plaintext is treated as STRICT) rather than judged without them.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal import authz, contracts
from shoal.identity import SpiffeId
from shoal.model import PeerAuthMode, Workload
from shoal.model.addresses import canonical_or_none
from shoal.proxy_state import ProxyState

LOOPBACK = "127.0.0.1"
LOOPBACK_IPV6 = "::1"


@dataclass(frozen=True)
class InboundConnection:
    """What the ztunnel knows of one inbound connection before deciding."""

    source_ip: str
    target: tuple[str, int]               # the CONNECT target (HBONE) or the original destination (plaintext)
    mtls: bool = False                    # arrived as HBONE
    peer: SpiffeId | None = None          # the client's verified identity (HBONE)
    peer_problem: str = ""                # HBONE whose certificate carries no mesh identity: why


@dataclass(frozen=True)
class AppReach:
    """How the app in this pod can be reached, and at which addresses (found when the pod was enrolled)."""

    transparent: bool = True              # connect from the client's IP (IP_TRANSPARENT)
    via_loopback: bool = False            # capture would catch our own connections to the pod IP
    addresses: tuple[str, ...] = ()       # the pod's own addresses, both families, loopback left out
    transparent_ipv6: bool = True         # the return path covers IPv6 too (IPV6_TRANSPARENT)

    def keeps_source(self, source: str, target: str) -> bool:
        """Can the app see `source` as its peer on a connection to `target`? Only within one family
        (a socket binds one), and only where the pod's return path brings the replies back."""
        if not self.transparent or (":" in source) != (":" in target):
            return False
        return ":" not in source or self.transparent_ipv6


@dataclass(frozen=True)
class InboundPlan:
    connect: tuple[str, int]              # the app's address
    transparent_source: str | None        # bind this source IP, so the app sees the client
    service: str = ""                     # the service hostname to report, when it is unambiguous
    via_loopback: bool = False            # only if the app listens beyond loopback (the driver checks)


@dataclass(frozen=True)
class Refusal:
    status: int                           # the HBONE answer (plaintext gets a reset)
    response_flag: str
    reason: str

    def __bool__(self) -> bool:
        return False


def decide_inbound(state: ProxyState, workload: Workload, connection: InboundConnection,
                   reach: AppReach = AppReach()) -> InboundPlan | Refusal:
    host, port = connection.target
    host = canonical_or_none(host) or host
    source_ip = canonical_or_none(connection.source_ip) or connection.source_ip
    if not state.synced:
        return Refusal(503, "UAEX", "no config from the control plane yet: this ztunnel serves no pod until it "
                                    "has the whole of it; check that the control plane is reachable")
    known = workload.uid in state.workloads
    if port in contracts.ZTUNNEL_POD_PORTS:
        return Refusal(400, "NR", f"a connection to the ztunnel's own port {port}; refusing to loop")
    own = reach.addresses or workload.ips
    if not own:
        return Refusal(503, "NR", "this pod's own addresses are not known yet; retry in a moment")
    if host not in own:
        return Refusal(400, "NR", f"{host} is not this pod ({', '.join(own)}); check the client's outbound "
                                  "decision (a tunnel reaches only the pod it names, never its loopback)")
    if connection.mtls:
        if connection.peer is None:
            return Refusal(401, "UAEX", "client certificate carries no mesh identity: "
                           f"{connection.peer_problem or 'none presented'}")
    else:
        if _peer_auth_mode(state, workload, port, known) is PeerAuthMode.STRICT:
            return Refusal(400, "UAEX", "plaintext refused: PeerAuthentication is STRICT for this workload; "
                                        "the client must be in the mesh")
    if not known and state.authorizations_select_by_label(workload.namespace):
        return Refusal(403, "UAEX", "policy denied: this workload's labels are not in the config yet and "
                                    "label-selected policies exist in its namespace; retry in a moment")
    peer = connection.peer
    verdict = authz.authorize(state.policies_for(workload), authz.RequestFacts(
        source_ip, peer.principal if peer else None, peer.namespace if peer else None, port,
        l4_only=True))
    if not verdict:
        return Refusal(403, "UAEX", f"policy denied: {verdict.reason}")
    if reach.via_loopback:
        loopback = LOOPBACK_IPV6 if ":" in host else LOOPBACK
        return InboundPlan((loopback, port), None, _service_of(state, workload, port), via_loopback=True)
    return InboundPlan((host, port), source_ip if reach.keeps_source(source_ip, host) else None,
                       _service_of(state, workload, port))


def _peer_auth_mode(state: ProxyState, workload: Workload, port: int, known: bool) -> PeerAuthMode:
    if not known and state.peer_authentications_select_by_label(workload.namespace):
        return PeerAuthMode.STRICT
    return state.peer_auth_mode(workload, port)


def _service_of(state: ProxyState, workload: Workload, port: int) -> str:
    """The service this connection most likely came through: the one whose endpoint targets this port."""
    services = [s for s in state.services_of(workload)
                if any(e.workload_uid == workload.uid and e.target_port == port for e in s.endpoints)]
    return services[0].hostname if len(services) == 1 else ""
