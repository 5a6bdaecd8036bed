"""What the service graph shows of one workload when it is clicked: its identity, the policies of its
namespace that reach it, and its recent connections from the ztunnels' access logs. Pure: pods,
policies and log records in, a dict out."""

from __future__ import annotations

from typing import Iterable

from shoal.model.identity import DEFAULT_TRUST_DOMAIN
from shoal.workload_names import workload_name

POLICY_KINDS = ("AuthorizationPolicy", "PeerAuthentication")
RECENT = 10


def pods_of(namespace: str, workload: str, pods: Iterable[dict]) -> list[dict]:
    return [p for p in pods if (p.get("metadata") or {}).get("namespace") == namespace and workload_name(p) == workload]


def _applies(policy: dict, labels: dict[str, str]) -> str:
    """How a policy of the namespace reaches the workload: its selector, a targetRef, or the whole namespace."""
    spec = policy.get("spec") or {}
    if spec.get("targetRefs") or spec.get("targetRef"):
        refs = spec.get("targetRefs") or [spec.get("targetRef")]
        return "via " + ", ".join(f"{r.get('kind', '?')}/{r.get('name', '?')}" for r in refs)
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    if not wanted:
        return "whole namespace"
    return "selector" if wanted.items() <= labels.items() else ""


def node_details(namespace: str, workload: str, pods: Iterable[dict], policies: Iterable[dict],
                 records: Iterable[dict], trust_domain: str = DEFAULT_TRUST_DOMAIN) -> dict:
    mine = pods_of(namespace, workload, pods)
    labels = ((mine[0].get("metadata") or {}).get("labels") or {}) if mine else {}
    accounts = sorted({(p.get("spec") or {}).get("serviceAccountName") or "default" for p in mine})
    reached = []
    for policy in policies:
        meta = policy.get("metadata") or {}
        if meta.get("namespace") != namespace:
            continue
        how = _applies(policy, labels)
        if how:
            reached.append({"kind": policy.get("kind"), "name": meta.get("name"),
                            "action": (policy.get("spec") or {}).get("action") or
                            ((policy.get("spec") or {}).get("mtls") or {}).get("mode") or "ALLOW", "applies": how})
    recent = [r for r in records
              if (r.get("src_workload") == workload and r.get("src_namespace") == namespace)
              or (r.get("dst_workload") == workload and r.get("dst_namespace") == namespace)][-RECENT:]
    return {
        "id": f"{namespace}/{workload}", "namespace": namespace, "workload": workload,
        "pods": sorted((p.get("metadata") or {}).get("name", "") for p in mine),
        "identities": [f"spiffe://{trust_domain}/ns/{namespace}/sa/{sa}" for sa in accounts],
        "labels": labels,
        "policies": sorted(reached, key=lambda p: (p["kind"], p["name"])),
        "recent_connections": [{k: r.get(k) for k in ("timestamp", "direction", "src_workload", "dst_workload",
                                                      "dst_service", "mtls", "bytes_sent", "bytes_received",
                                                      "response_flags")} for r in reversed(recent)],
    }
