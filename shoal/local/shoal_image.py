"""The mesh's node parts as containers of the shoal image, on `shoal local up --runtime containerd`.

On Kubernetes the node agent and the ztunnel are DaemonSets (daemonset/node.yaml,
daemonset/ztunnel.yaml) running the shoal image with hostNetwork, their securityContext
and hostPath mounts. On a containerd cluster the local cluster runs them the same way: the
pod a component makes (components.py, the same argv as on the netns runtime) gets the
image, the DaemonSet container's securityContext and its hostPath volumes, read from the
DaemonSet files themselves so the two cannot drift. The local kubelet then hands the pod to
the node's containerd (cri_pods.py), as it does any pod that names an image.

Three hostPaths are the node's own in the local cluster, not the host's: the agent's
/var/run/shoal (the node's sockets, token and ledger, which the argv names under the cluster's
run directory), the CNI dirs and the CRI's socket directory are the node's (one host, many
nodes: the host's own /etc/cni, /opt/cni/bin and /run/containerd are not the mesh's to touch).
Volumes that are not hostPaths (the ztunnel's projected token and CA configMap) are the files
the local control plane writes under the run directory, which the argv names.

The control plane and the ingress gateway stay processes: on Kubernetes they are Deployments,
scheduled anywhere, not a node's DaemonSet; the local cluster keeps them where it runs them.
"""

from __future__ import annotations

import copy
import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

import shoal
from shoal.local.errors import ClusterError
from shoal.local.layout import Layout

REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO / "build" / f"shoal-{shoal.__version__}.oci.tar"
REF = f"docker.io/library/shoal:{shoal.__version__}"
DAEMONSETS = {"node-agent": REPO / "daemonset" / "node.yaml", "ztunnel": REPO / "daemonset" / "ztunnel.yaml"}
RUN_SHOAL = "/var/run/shoal"
NETNS_DIR = "/var/run/netns"
# Env of the kubelet's own that shoal's parts need (the cluster's paths); not the checkout's venv.
PASSED_ENV = ("SHOAL_RUN_ROOT", "SHOAL_CGROUP_ROOT")


def require() -> Path:
    """The image archive `make image` builds; refused with what to run when it is not there."""
    if not ARCHIVE.exists():
        raise ClusterError(f"--runtime containerd runs the node agent and the ztunnel from the shoal image, and "
                           f"{ARCHIVE} is not there; build it with `make image` (about 10 minutes the first time, "
                           "cached after), then run `shoal local up --runtime containerd` again")
    return ARCHIVE


def stale() -> bool:
    """Whether `make image` would build the archive again (the checkout changed since): the containers run
    the code the image holds, not the checkout's."""
    try:
        result = subprocess.run(["make", "-q", "-C", str(REPO), str(ARCHIVE.relative_to(REPO))],
                                capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 1


@lru_cache(maxsize=None)
def daemonset_pod_spec(component: str) -> dict:
    """The pod template's spec of the component's DaemonSet."""
    for doc in yaml.safe_load_all(DAEMONSETS[component].read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            return doc["spec"]["template"]["spec"]
    raise ClusterError(f"{DAEMONSETS[component]} has no DaemonSet")


def node_host_paths(layout: Layout, paths) -> dict[str, str | None]:
    """The DaemonSet's hostPaths that are the node's own in the local cluster: where each is on this host
    (None: the local cluster has none, so the volume is left out). `paths`: the node's
    runtime_containerd.NodePaths."""
    return {RUN_SHOAL: str(layout.run_dir), "/opt/cni/bin": str(paths.bin_dir),
            "/etc/cni/net.d": str(paths.conf_dir), "/run/containerd": str(paths.base),
            "/var/run/crio": None}  # no CRI-O in the local cluster


def as_container(layout: Layout, paths, component: str, pod: dict) -> dict:
    """The component's pod (components.py) as its DaemonSet runs it: the shoal image, `shoal <argv>` as the
    command, the container's securityContext, hostPID, and the hostPath volumes (with the cluster's run
    directory mounted where the argv names it). `paths`: the node's runtime_containerd.NodePaths."""
    spec = daemonset_pod_spec(component)
    ds_container = spec["containers"][0]
    pod = copy.deepcopy(pod)
    container = pod["spec"]["containers"][0]
    argv = container.pop("command")
    container["image"] = REF
    container["command"] = ["shoal", *argv[argv.index("shoal") + 1:]]  # drops `<python> -m`
    container["securityContext"] = copy.deepcopy(ds_container.get("securityContext") or {})
    own = node_host_paths(layout, paths)
    volumes, mounts = [], []
    by_name = {v["name"]: v for v in spec.get("volumes") or ()}
    for mount in ds_container.get("volumeMounts") or ():
        source = by_name[mount["name"]].get("hostPath", {}).get("path")
        if source is None:
            continue  # projected token, configMap: files under the run directory here
        host = own.get(source, source)
        if host is None:
            continue
        volumes.append({"name": mount["name"], "hostPath": {"path": host}})
        mount = {k: v for k, v in mount.items() if k in ("name", "mountPath", "readOnly", "mountPropagation")}
        if source == RUN_SHOAL:  # the argv names the node's sockets, token, CA bundle and CNI dirs there
            mount["mountPath"] = str(layout.run_dir)
        mounts.append(mount)
    netns = next((m for m in mounts if m["mountPath"] == NETNS_DIR), None)
    if netns is not None:  # where the node's CRI pins pods' netns here, as the DaemonSet mounts /var/run/netns
        pins = str(paths.base / "state")
        volumes.append({"name": "cri-netns", "hostPath": {"path": pins}})
        mounts.append({"name": "cri-netns", "mountPath": pins,
                       **({"mountPropagation": netns["mountPropagation"]} if "mountPropagation" in netns else {})})
    if not any(m["mountPath"] == str(layout.run_dir) for m in mounts):  # the ztunnel's token and CA are there too
        volumes.append({"name": "run-shoal", "hostPath": {"path": str(layout.run_dir)}})
        mounts.append({"name": "run-shoal", "mountPath": str(layout.run_dir)})
    container["volumeMounts"] = mounts
    pod["spec"]["volumes"] = volumes
    if spec.get("hostPID"):
        pod["spec"]["hostPID"] = True
    return pod


def _mount_of(path: str) -> tuple[str, list[str]]:
    """(mount point, optional fields) of the host mount that holds `path` (the last listed wins: stacked mounts)."""
    best, fields = "/", []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point, optional = parts[4], parts[6:parts.index("-")]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, fields = point, optional
    return best, fields


def propagation(host_path: str, wanted: str | None) -> str | None:
    """The mount propagation a volumeMount gets here: what it asks, where the host's mount allows it. The CRI
    refuses Bidirectional from a private host mount and HostToContainer from one that is neither shared nor a
    slave; the local cluster does not change the host's mounts to suit (this host's /sys/fs/bpf is private),
    so such a mount is private: the agent's pins are files of the same bpffs and the host sees them all the
    same; what it would lose is only a mount it made under the path, which it does not make there."""
    if wanted not in ("Bidirectional", "HostToContainer"):
        return None
    _, fields = _mount_of(host_path)
    shared = any(f.startswith("shared:") for f in fields)
    slave = any(f.startswith("master:") for f in fields)
    if wanted == "Bidirectional":
        return wanted if shared else None
    return wanted if shared or slave else None
