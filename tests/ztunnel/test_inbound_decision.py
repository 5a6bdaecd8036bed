"""The pure inbound decision, table-driven: (state, workload, connection, reach) -> InboundPlan | Refusal."""

from __future__ import annotations

import pytest

from shoal.identity import parse_spiffe_id
from shoal.model import (
    Action, Authorization, Endpoint, Operation, PeerAuthentication, PeerAuthMode, PolicyScope, Protocol, Rule,
    Service, ServicePort, Source, Workload, freeze_labels,
)
from shoal.proxy_state import ProxyState
from ztunnel.inbound import AppReach, InboundConnection, InboundPlan, Refusal, decide_inbound

DB_IP, CLIENT_IP = "198.19.2.2", "198.19.1.2"
FRONT = parse_spiffe_id("spiffe://cluster.local/ns/front/sa/web")
BACK = parse_spiffe_id("spiffe://cluster.local/ns/back/sa/api")
DB_HOST = "db.app.svc.cluster.local"


def wl(uid, ip=None, labels=None, ns="app"):
    return Workload(uid=uid, name=uid, namespace=ns, service_account="db", node="node2",
                    ips=(ip,) if ip else (), labels=freeze_labels(labels or {}), protocol=Protocol.HBONE)


DB = wl("db", DB_IP, {"app": "db"})
UNKNOWN = wl("new-pod")           # handed over by the agent, not yet in the config: no IPs, no labels
DB_SERVICE = Service(name="db", namespace="app", hostname=DB_HOST, vips=("198.18.16.20",),
                     ports=(ServicePort(80),), endpoints=(Endpoint("db", 80, 5432),))


def authz(name, action, rules, scope=PolicyScope.NAMESPACE, selector=None):
    return Authorization(name=name, namespace="app", scope=scope, action=action, rules=tuple(rules),
                         selector=freeze_labels(selector or {}))


ALLOW_FRONT = authz("allow-front", Action.ALLOW, [Rule(sources=(Source(principals=(FRONT.principal,)),))])
DENY_BACK = authz("deny-back", Action.DENY, [Rule(sources=(Source(namespaces=("back",)),))])
DENY_DB_BY_LABEL = authz("deny-db", Action.DENY, [Rule()], scope=PolicyScope.WORKLOAD, selector={"app": "db"})
ALLOW_CIDR = authz("allow-cidr", Action.ALLOW, [Rule(sources=(Source(ip_blocks=("198.19.1.0/24",)),))])
ALLOW_PORT = authz("allow-9090", Action.ALLOW, [Rule(operations=(Operation(ports=(9090,)),))])
STRICT_NS = PeerAuthentication("strict", "app", PolicyScope.NAMESPACE, PeerAuthMode.STRICT)
STRICT_DB_PORT = PeerAuthentication("db-port", "app", PolicyScope.WORKLOAD, PeerAuthMode.PERMISSIVE,
                                    selector=freeze_labels({"app": "db"}), port_modes=((5432, PeerAuthMode.STRICT),))


def hbone(peer=FRONT, target=(DB_IP, 5432), problem=""):
    return InboundConnection(CLIENT_IP, target, mtls=True, peer=peer, peer_problem=problem)


def plaintext(port=5432, source=CLIENT_IP):
    return InboundConnection(source, (DB_IP, port))


TRANSPARENT = AppReach(transparent=True, addresses=(DB_IP,))
OPAQUE = AppReach(transparent=False, addresses=(DB_IP,))
LOOPBACK = AppReach(transparent=False, via_loopback=True, addresses=(DB_IP,))
ADDRESSES_UNREAD = AppReach(transparent=True)       # the pod's netns could not be read: the config's word only

ADMIT = InboundPlan((DB_IP, 5432), CLIENT_IP, DB_HOST)

CASES = [
    # name, resources, workload, connection, reach, expected (a plan, or (status, flag, words in the reason))
    ("hbone, no policy", [], DB, hbone(), TRANSPARENT, ADMIT),
    ("hbone, source IP not kept", [], DB, hbone(), OPAQUE, InboundPlan((DB_IP, 5432), None, DB_HOST)),
    ("hbone, app reached over loopback", [], DB, hbone(), LOOPBACK,
     InboundPlan(("127.0.0.1", 5432), None, DB_HOST, via_loopback=True)),
    ("hbone, the pod's loopback is not a target", [], DB, hbone(target=("127.0.0.1", 5432)), TRANSPARENT,
     (400, "NR", "never its loopback")),
    ("hbone, the ztunnel's own port is not a target", [], DB, hbone(target=(DB_IP, 15006)), TRANSPARENT,
     (400, "NR", "refusing to loop")),
    ("hbone, addresses from the config when the netns gave none", [], DB, hbone(), ADDRESSES_UNREAD, ADMIT),
    ("hbone, unknown pod: its netns's addresses decide", [], UNKNOWN, hbone(target=("198.19.2.3", 5432)),
     TRANSPARENT, (400, "NR", "not this pod")),
    ("hbone, unknown pod and no address known: refused", [], UNKNOWN, hbone(), ADDRESSES_UNREAD,
     (503, "NR", "addresses are not known")),
    ("plaintext to another address than the pod's", [], DB, InboundConnection(CLIENT_IP, ("198.19.2.3", 5432)),
     TRANSPARENT, (400, "NR", "not this pod")),
    ("hbone, other port has no service", [], DB, hbone(target=(DB_IP, 7000)), TRANSPARENT,
     InboundPlan((DB_IP, 7000), CLIENT_IP, "")),
    ("hbone, target is another pod", [], DB, hbone(target=("198.19.2.3", 5432)), TRANSPARENT,
     (400, "NR", "not this pod")),
    ("hbone, certificate without a mesh identity", [], DB, hbone(peer=None, problem="no SPIFFE URI"), TRANSPARENT,
     (401, "UAEX", "no SPIFFE URI")),
    ("hbone, allowed principal", [ALLOW_FRONT], DB, hbone(), TRANSPARENT, ADMIT),
    ("hbone, other principal not allowed", [ALLOW_FRONT], DB, hbone(peer=BACK), TRANSPARENT,
     (403, "UAEX", "allow-front")),
    ("hbone, denied namespace", [DENY_BACK], DB, hbone(peer=BACK), TRANSPARENT, (403, "UAEX", "deny-back")),
    ("hbone, deny by label hits the labelled pod", [DENY_DB_BY_LABEL], DB, hbone(), TRANSPARENT,
     (403, "UAEX", "deny-db")),
    ("hbone, labels unknown and label policies exist: fail closed", [DENY_DB_BY_LABEL], UNKNOWN, hbone(),
     TRANSPARENT, (403, "UAEX", "not in the config yet")),
    ("hbone, labels unknown, no label policies", [ALLOW_FRONT], UNKNOWN, hbone(), TRANSPARENT,
     InboundPlan((DB_IP, 5432), CLIENT_IP, "")),
    ("hbone, STRICT does not concern mTLS", [STRICT_NS], DB, hbone(), TRANSPARENT, ADMIT),
    ("plaintext, permissive by default", [], DB, plaintext(), TRANSPARENT, ADMIT),
    ("plaintext, STRICT namespace refuses", [STRICT_NS], DB, plaintext(), TRANSPARENT, (400, "UAEX", "STRICT")),
    ("plaintext, STRICT on this port only", [STRICT_DB_PORT], DB, plaintext(), TRANSPARENT, (400, "UAEX", "STRICT")),
    ("plaintext, other port stays permissive", [STRICT_DB_PORT], DB, plaintext(port=80), TRANSPARENT,
     InboundPlan((DB_IP, 80), CLIENT_IP, "")),
    ("plaintext, labels unknown and a label PeerAuthentication exists: STRICT", [STRICT_DB_PORT], UNKNOWN,
     plaintext(port=80), TRANSPARENT, (400, "UAEX", "STRICT")),
    ("plaintext to the ztunnel's own port never loops", [], DB, plaintext(port=15006), TRANSPARENT,
     (400, "NR", "refusing to loop")),
    ("plaintext has no principal to allow", [ALLOW_FRONT], DB, plaintext(), TRANSPARENT, (403, "UAEX", "allow-front")),
    ("plaintext allowed by IP block", [ALLOW_CIDR], DB, plaintext(), TRANSPARENT, ADMIT),
    ("plaintext outside the IP block", [ALLOW_CIDR], DB, plaintext(source="198.19.3.9"), TRANSPARENT,
     (403, "UAEX", "allow-cidr")),
    ("port rule admits its port only", [ALLOW_PORT], DB, hbone(), TRANSPARENT, (403, "UAEX", "allow-9090")),
]


@pytest.mark.parametrize("connection", [hbone(), plaintext()], ids=["hbone", "plaintext"])
def test_no_connection_is_served_before_the_whole_config_arrived(connection):
    """Not even plaintext to a pod whose policy would be PERMISSIVE by default: nothing is known yet."""
    from shoal.model import ResourceType

    state = ProxyState(expects=(ResourceType.WORKLOAD, ResourceType.PEER_AUTHENTICATION))
    got = decide_inbound(state, UNKNOWN, connection, TRANSPARENT)
    assert isinstance(got, Refusal) and got.status == 503 and "no config" in got.reason


@pytest.mark.parametrize("name,resources,workload,connection,reach,expected", CASES, ids=[c[0] for c in CASES])
def test_decide_inbound(name, resources, workload, connection, reach, expected):
    state = ProxyState()
    for resource in (DB, DB_SERVICE, *resources):
        state.upsert(resource)
    got = decide_inbound(state, workload, connection, reach)
    if isinstance(expected, InboundPlan):
        assert got == expected
    else:
        status, flag, words = expected
        assert isinstance(got, Refusal) and not got
        assert (got.status, got.response_flag) == (status, flag)
        assert words in got.reason
