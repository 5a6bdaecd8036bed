"""`shoal check` against a Kubernetes cluster (`--kubeconfig`, `--context`, or `$KUBECONFIG` with no
`--cluster`): the same three parts, read through the API server.

- pre-flight: the CRDs of each config dialect are served (Gateway API is
  required: waypoints are Gateways; the others only say which dialects shoal
  cannot read there). Kernel features are the nodes' own: `shoal check --only
  preflight` on a node, or the node agent's log, says which redirect mode it
  chose and why.
- health: on every node a Ready ztunnel and node agent, and a Ready control
  plane; config sync and nacks as the control plane sees them: its
  /debug/config (every connected proxy, at the latest config or not, and its
  nacks), read through the API server's pod proxy
  (`pods/NAME:15014/proxy/debug/config`), so no port-forward and no route
  to the pod network are needed, only `get` on `pods/proxy` in shoal-system.
  Certificates (SH0205) as the CA issued them: for each ztunnel, what it
  last got for each identity of the pods still on its node, and how long
  that has left (a ztunnel renews at half life, so an hour left means its
  renewals fail). The local cluster's check reads each proxy's own admin
  dump instead, which is out of reach here: the admin port listens on
  127.0.0.1 inside the proxy's pod and the API server's proxy reaches a
  pod's IP only (`kubectl -n shoal-system port-forward` to a ztunnel's
  15000 and its /config_dump show them). Waypoints' certificates are not
  in the CA's view (a waypoint's identity outlives its pods).
- config analysis: every object of the kinds the control plane reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.contracts import CONTROL_PLANE_HTTP_PORT
from shoal.local.components import SYSTEM_NAMESPACE
from shoal.preflight import Check

CORE = {"Namespace": "/api/v1/namespaces", "Pod": "/api/v1/pods", "Service": "/api/v1/services",
        "ServiceAccount": "/api/v1/serviceaccounts", "Deployment": "/apis/apps/v1/deployments"}
REQUIRED_GROUPS = ("gateway.networking.k8s.io",)
REFERENCE_GRANTS = "gateway.networking.k8s.io/v1beta1"
CONTROL_PLANE_APP = "shoal-control-plane"
COMPONENTS = {"shoal-ztunnel": "per node", "shoal-node-agent": "per node", CONTROL_PLANE_APP: "one"}


def plural(kind: str) -> str:
    """The resource name of a mesh kind (Gateway -> gateways, AuthorizationPolicy -> authorizationpolicies,
    ServiceEntry -> serviceentries), as the CRDs name them."""
    word = kind.lower()
    return word[:-1] + "ies" if word.endswith("y") and word[-2] not in "aeiou" else word + "s"


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


@dataclass
class KubeTarget:
    cluster: object            # shoal.install.cluster.Cluster
    name: str = "kubernetes"
    _versions: dict | None = None

    def mesh_versions(self) -> dict[str, str | None]:
        """kind -> the apiVersion the API server serves for it (the newest shoal reads), or None."""
        from control_plane.translate.dispatch import MESH_KINDS

        if self._versions is None:
            self._versions = {kind: next((f"{group}/{v}" for v in versions if self._serves(f"{group}/{v}", plural(kind))),
                                         None)
                              for kind, (group, versions, _) in MESH_KINDS.items()}
        return self._versions

    def _serves(self, group_version: str, resource: str) -> bool:
        """Whether the API server's discovery lists `resource` in `group_version` (a CRD installed)."""
        from shoal.kube_client import KubeNotFound

        try:
            found = self.cluster.call("GET", f"/apis/{group_version}", f"asking whether {group_version} is served")
        except KubeNotFound:
            return False
        return any(r.get("name") == resource for r in found.get("resources") or ())

    def preflight(self) -> list[Check]:
        from control_plane.translate.dispatch import MESH_KINDS

        checks = []
        for kind, served in self.mesh_versions().items():
            group = MESH_KINDS[kind][0]
            required = group in REQUIRED_GROUPS
            checks.append(Check("SH0006", f"CRD {plural(kind)}.{group}", served is not None,
                                f"served as {served}" if served else "not served" + (
                                    "" if required else f": {kind} objects are not read"),
                                "install the CRDs: `shoal install` or daemonset/crds/README.md", counts=required))
        return checks

    def objects(self) -> list[dict]:
        objects = []
        for kind, path in CORE.items():
            objects += self._list(kind, path, path.split("/", 3)[2] if path.startswith("/apis/") else "v1")
        for kind, api_version in self.mesh_versions().items():
            if api_version is not None:
                objects += self._list(kind, f"/apis/{api_version}/{plural(kind)}", api_version)
        # What other namespaces grant (cross-namespace certificateRefs and backendRefs), as the control plane reads it.
        grants = f"{REFERENCE_GRANTS}/referencegrants"
        if self._serves(REFERENCE_GRANTS, "referencegrants"):
            objects += self._list("ReferenceGrant", f"/apis/{grants}", REFERENCE_GRANTS)
        return objects

    def _list(self, kind: str, path: str, api_version: str) -> list[dict]:
        items = self.cluster.call("GET", path, f"listing {path.rsplit('/', 1)[1]}")["items"]
        # a list's items carry no kind or apiVersion; the analysis needs both
        return [{**item, "kind": kind, "apiVersion": item.get("apiVersion") or
                 ("apps/v1" if kind == "Deployment" else api_version)} for item in items]

    def health(self) -> list[Check]:
        nodes = [n["metadata"]["name"] for n in self.cluster.call("GET", "/api/v1/nodes", "listing nodes")["items"]]
        pods = self.cluster.call("GET", f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods",
                                 f"listing pods in {SYSTEM_NAMESPACE}")["items"]
        checks = []
        for app, where in COMPONENTS.items():
            mine = [p for p in pods if (p["metadata"].get("labels") or {}).get("app") == app]
            if where == "one":
                ready = [p for p in mine if _ready(p)]
                checks.append(Check("SH0202", app, bool(ready), f"{len(ready)}/{len(mine)} Ready",
                                    f"`kubectl -n {SYSTEM_NAMESPACE} describe pods -l app={app}`"))
                if app == CONTROL_PLANE_APP:
                    checks += self._config_sync(ready)
                continue
            for node in nodes:
                on_node = [p for p in mine if (p.get("spec") or {}).get("nodeName") == node]
                ok = any(_ready(p) for p in on_node)
                checks.append(Check("SH0202", f"{app} on {node}", ok,
                                    "Ready" if ok else ("not Ready" if on_node else "no pod"),
                                    f"`kubectl -n {SYSTEM_NAMESPACE} get pods -l app={app} -o wide` and its log"))
        return checks

    def _config_sync(self, ready: list[dict]) -> list[Check]:
        """SH0203 (every proxy at the latest config) and SH0204 (no nacks), from a Ready control plane's
        /debug/config through the API server's pod proxy."""
        from shoal.install import InstallError
        from shoal.kube_client import KubeError

        action = f"`kubectl -n {SYSTEM_NAMESPACE} logs -l app={CONTROL_PLANE_APP}` and the proxy's log"
        if not ready:
            return [Check("SH0203", "config sync", False, "no Ready control plane to ask", action)]
        name = ready[0]["metadata"]["name"]
        path = f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/{name}:{CONTROL_PLANE_HTTP_PORT}/proxy/debug/config"
        try:
            status = self.cluster.call("GET", path, f"asking the control plane ({name}) for its proxies' config")
        except (KubeError, InstallError) as e:    # 404: the pod went meanwhile; 503: it does not answer
            return [Check("SH0203", "config sync", False, f"the control plane does not answer: {e}",
                          f"{action}; asking needs get on pods/proxy in {SYSTEM_NAMESPACE}")]
        proxies = status.get("proxies") or [] if isinstance(status, dict) else []
        behind = [p.get("scope", "?") for p in proxies if not p.get("in_sync")]
        nacked = [f"{p.get('scope', '?')} ({p['nacks']})" for p in proxies if p.get("nacks")]
        return [Check("SH0203", "config sync", not behind,
                      f"{len(proxies)} proxies at the latest config" if not behind
                      else f"not at the latest config: {', '.join(behind)}",
                      "wait a moment; if it stays, see " + action),
                Check("SH0204", "config nacks", not nacked,
                      "no proxy refused a config" if not nacked else f"refused config: {', '.join(nacked)}",
                      "the proxy's log says which resource it refused and why"),
                *_certificates(status.get("certificates") or [] if isinstance(status, dict) else [])]


def _certificates(issued: list[dict]) -> list[Check]:
    """SH0205 per ztunnel, from what the CA last issued it for its pods (the control plane's view: a ztunnel
    renews at half life, so one with an hour left, or none, has failed to renew)."""
    from shoal.local.health import NEAR_EXPIRY_SECONDS

    by_proxy: dict[str, list[dict]] = {}
    for entry in issued:
        by_proxy.setdefault(str(entry.get("proxy", "?")), []).append(entry)
    out = []
    for proxy, entries in sorted(by_proxy.items()):
        left = {str(e.get("identity")): int(e.get("expires_in_seconds", 0)) for e in entries}
        expired = [f"{who} expired" for who, seconds in sorted(left.items()) if seconds <= 0]
        near = [f"{who} expires in {seconds} s" for who, seconds in sorted(left.items())
                if 0 < seconds < NEAR_EXPIRY_SECONDS]
        problems = expired + near
        out.append(Check("SH0205", f"certificates of {proxy}", not problems,
                         f"{len(entries)} valid" if not problems else "; ".join(problems),
                         f"its log says why it did not renew (`kubectl -n {SYSTEM_NAMESPACE} logs` of the "
                         "ztunnel on that node); check its token and node"))
    return out
