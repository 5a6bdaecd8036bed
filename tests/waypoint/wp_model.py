"""A small mesh in model objects for the waypoint's pure tests (no sockets)."""

from __future__ import annotations

from shoal.model import (
    Action, Authorization, Destination, Endpoint, Operation, PolicyScope, Protocol, RouteTable, Rule,
    Service, ServicePort, Source, TargetRef, Waypoint, Workload, freeze_labels,
)

from shoal.proxy_state import ProxyState

NS = "shop"
REVIEWS = f"reviews.{NS}.svc.cluster.local"
SHADOW = f"reviews-shadow.{NS}.svc.cluster.local"
VIP = "198.18.16.10"
SHADOW_VIP = "198.18.16.11"


def workload(name, ip, version, protocol=Protocol.HBONE, app="reviews", deployment=None):
    return Workload(uid=f"uid-{name}", name=name, namespace=NS, service_account=app, node="node1", ips=(ip,),
                    labels=freeze_labels({"app": app, "version": version}), canonical_service=app,
                    canonical_revision=version, protocol=protocol, workload_name=deployment or name)


V1A = workload("reviews-v1-a", "198.19.1.11", "v1", deployment="reviews-v1")
V1B = workload("reviews-v1-b", "198.19.2.12", "v1", deployment="reviews-v1")
V2 = workload("reviews-v2", "198.19.1.13", "v2", protocol=Protocol.TCP)
SHADOW_POD = workload("reviews-shadow", "198.19.2.14", "v1", app="shadow")
CLIENT = workload("client", "198.19.1.20", "v1", app="client")


def service(name, vip, pods, port=9080, target=8080):
    return Service(name=name, namespace=NS, hostname=f"{name}.{NS}.svc.cluster.local", vips=(vip,),
                   ports=(ServicePort(port, "http", app_protocol="http"),),
                   endpoints=tuple(Endpoint(p.uid, port, target) for p in pods))


def subset(version):
    return freeze_labels({"version": version})


def table(*routes, host=REVIEWS, port=9080):
    return RouteTable(hostname=host, port=port, namespace=NS, routes=tuple(routes), origin="VirtualService shop/r")


def to(version, weight=100, host=REVIEWS, port=None):
    return Destination(host, port, subset(version), version, weight)


def policy(name, action, *, paths=(), methods=(), hosts=(), principals=(), not_paths=(), target="reviews",
           kind="Service", scope=PolicyScope.TARGETS, ports=()):
    op = Operation(paths=tuple(paths), methods=tuple(methods), hosts=tuple(hosts), not_paths=tuple(not_paths),
                   ports=tuple(ports))
    src = (Source(principals=tuple(principals)),) if principals else ()
    ops = (op,) if (paths or methods or hosts or not_paths or ports) else ()
    return Authorization(name=name, namespace=NS, scope=scope, action=Action(action),
                         rules=(Rule(sources=src, operations=ops),),
                         targets=(TargetRef(kind, target, NS),) if scope is PolicyScope.TARGETS else ())


def mesh(*extra) -> ProxyState:
    state = ProxyState(waypoint=(NS, "waypoint"))
    for item in (V1A, V1B, V2, SHADOW_POD, CLIENT, service("reviews", VIP, (V1A, V1B, V2)),
                 service("reviews-shadow", SHADOW_VIP, (SHADOW_POD,)),
                 Waypoint("waypoint", NS, "waypoint"), *extra):
        state.upsert(item)
    return state


def scripted(*values):
    """A random source that returns the given values, then 0.0."""
    it = iter(values)
    return lambda: next(it, 0.0)
