"""Health of a local cluster: what `shoal check` and `shoal local status` report.

    facts = gather(layout)      # reads the store, the daemon, the proxies' admin dumps (I/O)
    checks = judge(facts)       # pure: facts in, `shoal.preflight.Check`s out (SH02xx)

Healthy means: the daemon runs; every system pod is Ready; every proxy the
control plane serves is at its latest config and has nacked nothing; every
ztunnel and waypoint certificate is valid and not about to expire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from shoal.contracts import ADMIN_PORT, CONTROL_PLANE_HTTP_PORT, GATEWAY_NAME_LABEL, WAYPOINT_CLASSES
from shoal.local.cluster import ClusterConfig, daemon_pid
from shoal.local.components import SYSTEM_NAMESPACE
from shoal.local.layout import Layout, node_ip
from shoal.local.observe import admin_dump, http_get
from shoal.local.services import pod_ready
from shoal.preflight import Check

NEAR_EXPIRY_SECONDS = 3600  # a leaf lives 24 h and renews at half life: an hour left means renewal failed


@dataclass(frozen=True)
class HealthFacts:
    cluster: str
    daemon_pid: int | None
    nodes: int
    pods: dict[str, dict] = field(default_factory=dict)            # "ns/name" -> pod, system pods and waypoints
    expected: tuple[str, ...] = ()                                 # "ns/name" of every pod that must be Ready
    control_plane: dict | None = None                              # its /debug/config, or None
    control_plane_error: str = ""
    certificates: dict[str, list[dict]] = field(default_factory=dict)   # proxy -> its certificate entries
    dump_errors: dict[str, str] = field(default_factory=dict)           # proxy -> why no dump


def judge(facts: HealthFacts) -> list[Check]:
    out = [Check("SH0201", "cluster daemon", facts.daemon_pid is not None,
                 f"running (pid {facts.daemon_pid})" if facts.daemon_pid else "not running: nothing starts or "
                 "restarts pods", f"run `shoal local up --cluster {facts.cluster}`")]
    for key in facts.expected:
        pod = facts.pods.get(key)
        ready = pod is not None and pod_ready(pod)
        phase = ((pod or {}).get("status") or {}).get("phase", "missing") if pod else "missing"
        out.append(Check("SH0202", f"pod {key}", ready, "Ready" if ready else f"not ready ({phase})",
                         f"see `shoal local logs -n {key.split('/')[0]} {key.split('/')[1]} --cluster {facts.cluster}`"))
    if facts.control_plane is None:
        out.append(Check("SH0203", "config sync", False,
                         f"the control plane does not answer: {facts.control_plane_error}",
                         f"see `shoal local logs -n {SYSTEM_NAMESPACE} control-plane-node1`"))
    else:
        proxies = facts.control_plane.get("proxies") or []
        behind = [p["scope"] for p in proxies if not p.get("in_sync")]
        nacked = [f"{p['scope']} ({p['nacks']})" for p in proxies if p.get("nacks")]
        out.append(Check("SH0203", "config sync", not behind,
                         f"{len(proxies)} proxies at the latest config" if not behind
                         else f"not at the latest config: {', '.join(behind)}",
                         "wait a moment; if it stays, see the proxy's log"))
        out.append(Check("SH0204", "config nacks", not nacked,
                         "no proxy refused a config" if not nacked else f"refused config: {', '.join(nacked)}",
                         "the proxy's log says which resource it refused and why"))
    for proxy, error in sorted(facts.dump_errors.items()):
        out.append(Check("SH0205", f"certificates of {proxy}", False, f"no admin dump: {error}",
                         "see the proxy's log"))
    for proxy, certs in sorted(facts.certificates.items()):
        bad = [f"{c['identity']} {c.get('state')}" + (f" ({c['last_error']})" if c.get("last_error") else "")
               for c in certs if c.get("state") != "valid"]
        near = [f"{c['identity']} expires in {c['expires_in_seconds']} s" for c in certs
                if c.get("state") == "valid" and c.get("expires_in_seconds", NEAR_EXPIRY_SECONDS) < NEAR_EXPIRY_SECONDS]
        problems = bad + near
        out.append(Check("SH0205", f"certificates of {proxy}", not problems,
                         f"{len(certs)} valid" if not problems else "; ".join(problems),
                         "the proxy's log says why the control plane did not sign; check its token and node"))
    return out


def gather(layout: Layout, timeout: float = 5.0) -> HealthFacts:
    store = layout.store()
    config = ClusterConfig.read(layout)
    nodes = config.nodes if config else 0
    pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in store.list("Pod", SYSTEM_NAMESPACE)[0]}
    expected = [f"{SYSTEM_NAMESPACE}/control-plane-node1"] + [
        f"{SYSTEM_NAMESPACE}/{part}-node{n}" for n in range(1, nodes + 1) for part in ("node-agent", "ztunnel")]
    waypoint_pods = []
    for gateway in store.list("Gateway")[0]:
        if (gateway.get("spec") or {}).get("gatewayClassName") not in WAYPOINT_CLASSES:
            continue
        ns, name = gateway["metadata"]["namespace"], gateway["metadata"]["name"]
        mine = [p for p in store.list("Pod", ns)[0] if (p["metadata"].get("labels") or {}).get(GATEWAY_NAME_LABEL) == name]
        for pod in mine:
            key = f"{ns}/{pod['metadata']['name']}"
            pods[key] = pod
            expected.append(key)
            waypoint_pods.append(pod)
        if not mine:
            expected.append(f"{ns}/{name} (waypoint)")
    certificates, dump_errors = {}, {}
    for n in range(1, nodes + 1):
        proxy = f"ztunnel-node{n}"
        try:
            certificates[proxy] = admin_dump(layout.node_netns(n), ADMIN_PORT, timeout)["certificates"]
        except (OSError, ValueError, KeyError) as e:
            dump_errors[proxy] = str(getattr(e, "reason", e))
    for pod in waypoint_pods:
        proxy = f"waypoint {pod['metadata']['namespace']}/{pod['metadata']['name']}"
        where = ((pod.get("status") or {}).get("shoal") or {}).get("netns")
        if not where:
            continue
        try:
            certificates[proxy] = [admin_dump(where, ADMIN_PORT, timeout)["certificate"]]
        except (OSError, ValueError, KeyError) as e:
            dump_errors[proxy] = str(getattr(e, "reason", e))
    control_plane, cp_error = None, ""
    try:
        control_plane = json.loads(http_get(layout.node_netns(1), node_ip(1), CONTROL_PLANE_HTTP_PORT,
                                            "/debug/config", timeout))
    except (OSError, ValueError) as e:
        cp_error = str(getattr(e, "reason", e))
    return HealthFacts(layout.cluster, daemon_pid(layout), nodes, pods, tuple(expected), control_plane, cp_error,
                       certificates, dump_errors)
