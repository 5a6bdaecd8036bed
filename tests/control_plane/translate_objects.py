"""Builders of Kubernetes-shaped objects for the translation tests (plain dicts, as the store keeps them)."""

from __future__ import annotations

import itertools

import yaml

from shoal.store import Event

_counter = itertools.count(1)


def namespace(name, labels=None, annotations=None):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}}


def pod(name, ns="default", labels=None, ip=None, node="node1", phase="Running", sa="default",
        annotations=None, ports=(), host_network=False, uid=None):
    n = next(_counter)
    obj = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}-{ns}",
                        "labels": labels or {}, "annotations": annotations or {}},
           "spec": {"nodeName": node, "serviceAccountName": sa,
                    "containers": [{"name": "app", "ports": [dict(p) for p in ports]}]},
           "status": {"phase": phase}}
    if host_network:
        obj["spec"]["hostNetwork"] = True
    if ip is not False:
        obj["status"]["podIP"] = ip or f"198.19.1.{n % 250 + 2}"
    return obj


def service(name, ns="default", selector=None, ports=((80, 8080),), vip="198.18.16.10", labels=None,
            annotations=None, port_names=()):
    spec_ports = []
    for i, (port, target) in enumerate(ports):
        p = {"port": port, "targetPort": target, "protocol": "TCP"}
        if i < len(port_names):
            p["name"] = port_names[i]
        spec_ports.append(p)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"selector": selector if selector is not None else {"app": name},
                     "ports": spec_ports, "clusterIP": vip}}


def created(obj, timestamp):
    obj.setdefault("metadata", {})["creationTimestamp"] = timestamp
    return obj


def from_yaml(text):
    return [o for o in yaml.safe_load_all(text) if o]


def added(obj):
    return Event("ADDED", obj)


def deleted(obj):
    return Event("DELETED", obj)


def translate(*objects):
    """A flushed Translator over `objects` (and the Update of that first flush)."""
    from control_plane.translate import Translator
    t = Translator()
    for obj in objects:
        t.apply_event(added(obj))
    return t, t.flush()


def bookinfo_reviews(ns="default"):
    """reviews v1/v2/v3 pods, its Service on 9080, a DestinationRule with the subsets."""
    objs = [namespace(ns, labels={"shoal.io/dataplane-mode": "ambient"}),
            service("reviews", ns, ports=((9080, 9080),), port_names=("http",))]
    for v in ("v1", "v2", "v3"):
        objs.append(pod(f"reviews-{v}", ns, labels={"app": "reviews", "version": v}))
    objs.append(from_yaml(f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: reviews, namespace: {ns}}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
""")[0])
    return objs
