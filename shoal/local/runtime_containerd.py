"""`shoal local up --runtime containerd`: a containerd of each node's own, as kind runs one in each node container.

Each node gets Debian's `containerd` (its CRI plugin) and `runc`, started inside the
node's netns (`nsenter --net`, so the mount namespace stays the host's, where the CRI
mounts its netns pins), with everything it keeps under the node's run directory:

    /run/shoal/<cluster>/node<i>/containerd/{config.toml,containerd.sock,root,state,runc}
    /run/shoal/<cluster>/node<i>/cni/{bin,net.d,ipam}

Its CRI CNI config is a conflist of the node's own (Debian's `bridge` + `host-local` on the
node's pod range; the node agent chains shoal-cni after them), its bin dir holds links to
the Debian plugins (and shoal-cni, which the agent copies there). The CRI keeps sandbox netns
pins under its state dir (netns_mounts_under_state_dir), never in /var/run/netns. Pods run
the images scripts/image/local-images.sh builds (toolbox, pause), imported at `up`.

Two places outside the run directory are containerd's own and cannot be moved in 1.6: its
shims' sockets in /run/containerd/s and libcni's result cache in /var/lib/cni. `down`
removes this cluster's entries there, and the directories themselves when they were not
there before `up` and are empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shoal import log
from shoal.local import shoal_image
from shoal.local.errors import ClusterError
from shoal.local.layout import CGROUP_ROOT, Layout, pod_cidr

logger = log.get("shoal.local.containerd")

RUNTIMES = ("netns", "containerd")
REQUIRED_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter")
SYSTEM_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin works in
SHIM_STATE = Path("/run/containerd")  # containerd 1.6's shims put their sockets in /run/containerd/s
CNI_CACHE = Path("/var/lib/cni")      # libcni's result cache (not configurable through containerd 1.6)
REPO = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = REPO / "scripts" / "image" / "local-images.sh"
IMAGES_DIR = REPO / "build" / "local-images"
DISABLED_PLUGINS = ("io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing")
START_TIMEOUT = 60.0
STORE_SIZE = "8g"  # an upper bound only: tmpfs takes memory as it is written


@dataclass(frozen=True)
class NodePaths:
    """Every path of node `node`'s containerd and CNI."""
    base: Path
    cni: Path
    network: str  # the CNI network's name (libcni's cache files start with it)
    root: Path    # content and snapshots, on the cluster's tmpfs (store_dir)

    @classmethod
    def of(cls, layout: Layout, node: int) -> "NodePaths":
        return cls(layout.node_dir(node) / "containerd", layout.node_dir(node) / "cni",
                   f"{layout.prefix}node{node}", store_dir(layout) / f"node{node}")

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def config(self) -> Path:
        return self.base / "config.toml"

    @property
    def pidfile(self) -> Path:
        return self.base / "containerd.pid"

    @property
    def bin_dir(self) -> Path:
        return self.cni / "bin"

    @property
    def conf_dir(self) -> Path:
        return self.cni / "net.d"


def store_dir(layout: Layout) -> Path:
    """A tmpfs of the cluster's own for the nodes' image stores: importing and unpacking the images costs
    memory instead of disk writes, and `down` frees it all with one unmount (deleting the unpacked
    images file by file from disk took tens of seconds here)."""
    return layout.run_dir / "containerd-store"


def ensure_store(layout: Layout) -> None:
    path = store_dir(layout)
    path.mkdir(parents=True, exist_ok=True)
    if str(path) not in mounts_under(layout.run_dir):
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode=0700,size={STORE_SIZE}", "shoal-containerd",
                                 str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(f"cannot mount a tmpfs for the nodes' images at {path}: {result.stderr.strip()}")


def ensure_shared(path: Path) -> None:
    """`path` a mount of its own with shared propagation: the CRI pins pods' netns under the node's containerd
    state dir, and the node agent, a container, sees the pins made after it started only through a
    HostToContainer mount, which the CRI allows from a shared mount only (a real node's /var/run/netns is one;
    this host's /run is private, and the cluster changes no mount of the host's: only this, its own, which
    `down` unmounts with the others under the run directory)."""
    path.mkdir(parents=True, exist_ok=True)
    if str(path) in mounts_under(path.parent):
        return
    for argv in (["mount", "--bind", str(path), str(path)], ["mount", "--make-shared", str(path)]):
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(f"cannot make {path} a shared mount ({' '.join(argv)}): {result.stderr.strip()}")


def config_toml(paths: NodePaths, pause_image: str = "") -> str:
    """The node's containerd config (the tests' own containerd, tests/support/containerd.py, is built by this
    too); `pause_image` "" keeps containerd's default sandbox image."""
    disabled = ", ".join(f'"{name}"' for name in DISABLED_PLUGINS)
    return f"""version = 2
root = "{paths.root}"
state = "{paths.base}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{paths.socket}"
[ttrpc]
  address = "{paths.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

# The CRI as a kubelet uses it on this machine: runc with the cgroupfs driver (PID 1 is not systemd
# here; a systemd node says SystemdCgroup = true), the streaming server on loopback, and the
# node's own CNI dirs. Netns pins go under the state dir, not /var/run/netns.
[plugins."io.containerd.grpc.v1.cri"]
  {f'sandbox_image = "{pause_image}"' if pause_image else ""}
  netns_mounts_under_state_dir = true
  # A sandbox asks for oom_score_adj -998, which containerd here (not in the host's init
  # namespace's position) may not set: keep it no lower than containerd's own.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{paths.bin_dir}"
  conf_dir = "{paths.conf_dir}"
  max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "runc"
  Root = "{paths.base}/runc"
  SystemdCgroup = false
"""


def conflist(paths: NodePaths, node: int) -> dict:
    """The node's pod network: a bridge (its gateway the range's first address) and host-local on the node's
    pod range; pods route everything through the bridge, and the node routes other nodes' ranges."""
    cidr = pod_cidr(node)
    return {"cniVersion": "1.0.0", "name": paths.network, "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": str(paths.cni / "ipam"),
                  "ranges": [[{"subnet": str(cidr), "gateway": str(cidr.network_address + 1)}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}


# -- the cluster's runtime ------------------------------------------------------------------------

def runtime_of(layout: Layout) -> str:
    """The runtime the cluster's pods run on: "netns" (processes in network namespaces, the default) or
    "containerd"; `up` records it in the run directory."""
    try:
        return (layout.run_dir / "runtime").read_text().strip() or "netns"
    except OSError:
        return "netns"


def choose(layout: Layout, runtime: str | None) -> str:
    """The runtime `up` uses: the one asked (refused when the cluster is up with another), else the cluster's."""
    current = runtime_of(layout) if (layout.run_dir / "cluster.json").exists() else None
    if runtime is None:
        return current or "netns"
    if runtime not in RUNTIMES:
        raise ClusterError(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if current is not None and current != runtime:
        raise ClusterError(f"cluster {layout.cluster!r} is up with --runtime {current}; nothing changed: to change it, "
                           f"`shoal local down --cluster {layout.cluster}` first")
    if runtime == "containerd":
        check_prerequisites()  # before anything of the cluster is made
        shoal_image.require()
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    (layout.run_dir / "runtime").write_text(runtime)
    return runtime


def ensure(layout: Layout, nodes: int, progress) -> list[str]:
    """With --runtime containerd: the images, and every node's containerd running; what it started."""
    if runtime_of(layout) != "containerd":
        return []
    family = json.loads((layout.run_dir / "cluster.json").read_text()).get("ipFamily", "ipv4")
    if family != "ipv4":  # the nodes' CNI config gives pods IPv4 addresses only
        raise ClusterError(f"--runtime containerd gives pods IPv4 addresses only, not --ip-family {family}; use "
                           "--ip-family ipv4, or --runtime netns for IPv6; `shoal local down` this cluster first")
    check_prerequisites()
    refs = {**images(progress), "shoal_archive": shoal_image.require()}
    if shoal_image.stale():
        progress(stale_image_warning(layout))
    (layout.run_dir / "images.json").write_text(json.dumps({"toolbox": refs["toolbox"], "pause": refs["pause"]}))
    ensure_store(layout)  # once, before the nodes' threads
    _record_outside_dirs(layout)
    # The nodes side by side: an import is mostly one gunzip of a layer (the shoal image's is 211 MB), one core each.
    with ThreadPoolExecutor(max_workers=nodes) as pool:
        started = list(pool.map(lambda node: ensure_node(layout, node, refs, progress), range(1, nodes + 1)))
    return [f"containerd of node{node}" for node, did in zip(range(1, nodes + 1), started) if did]


def stale_image_warning(layout: Layout) -> str:
    """What to run when the shoal image archive is older than the checkout: build it, and take the cluster down
    and up (a node's containerd imports the image when it starts, so a running one keeps the old)."""
    return (f"warning: {shoal_image.ARCHIVE} is older than the checkout, and the node agent and the ztunnel run "
            f"the code it holds, not the checkout's; for the checkout's, run `make -C {REPO} image`, then "
            f"`shoal local down --cluster {layout.cluster}` and this `shoal local up` again")


def toolbox_image(layout: Layout) -> str:
    return json.loads((layout.run_dir / "images.json").read_text())["toolbox"]


# -- prerequisites and images ----------------------------------------------------------------

def check_prerequisites() -> None:
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    missing += [f"{SYSTEM_PLUGINS}/{p}" for p in PLUGINS if not (SYSTEM_PLUGINS / p).exists()]
    if missing:
        raise ClusterError(f"--runtime containerd needs {', '.join(missing)}; install them with "
                           "`scripts/setup.sh --packages containerd runc containernetworking-plugins util-linux`")


def images(progress) -> dict[str, Path | str]:
    """{"toolbox": ref, "pause": ref, "toolbox_archive": path, "pause_archive": path}, built first if needed
    (scripts/image/local-images.sh keeps them by the digest of their inputs)."""
    if not IMAGES_SCRIPT.exists():
        raise ClusterError(f"--runtime containerd builds its images with {IMAGES_SCRIPT}, which this installation "
                           "lacks; run `shoal local up --runtime containerd` from a checkout of shoal")
    progress("building the toolbox and pause images if their inputs changed (scripts/image/local-images.sh)")
    result = subprocess.run([str(IMAGES_SCRIPT)], capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"building the local images failed:\n{(result.stdout + result.stderr)[-2000:]}")
    refs = json.loads((IMAGES_DIR / "images.json").read_text())
    return {**refs, "toolbox_archive": IMAGES_DIR / "toolbox.oci.tar", "pause_archive": IMAGES_DIR / "pause.oci.tar"}


def ctr(paths: NodePaths, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "--address", str(paths.socket), "--namespace", CRI_NAMESPACE, *args],
                          capture_output=True, text=True, timeout=timeout)


# -- one node's containerd ------------------------------------------------------------------------

def containerd_pid(paths: NodePaths) -> int | None:
    """The pid of this node's containerd, if it runs (its command line names this node's config)."""
    try:
        pid = int(paths.pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(paths.config).encode() in cmdline else None


def ensure_cni_dirs(paths: NodePaths) -> None:
    """The node's dirs and CNI dirs, the plugins linked from the system's (tests/support/containerd.py too)."""
    for directory in (paths.base, paths.bin_dir, paths.conf_dir, paths.cni / "ipam"):
        directory.mkdir(parents=True, exist_ok=True)
    for plugin in PLUGINS:
        link = paths.bin_dir / plugin
        if not link.exists():
            link.symlink_to(SYSTEM_PLUGINS / plugin)


def ensure_node(layout: Layout, node: int, refs: dict, progress) -> bool:
    """Node `node`'s containerd runs, with its CNI config and the images; True when it had to start it."""
    paths = NodePaths.of(layout, node)
    ensure_cni_dirs(paths)
    conf = paths.conf_dir / "10-shoal-local.conflist"
    if not conf.exists():  # the node agent chains shoal-cni into it; a later `up` must not undo that
        conf.write_text(json.dumps(conflist(paths, node), indent=1))
    ensure_store(layout)
    ensure_shared(paths.base / "state")
    paths.config.write_text(config_toml(paths, refs["pause"]))
    _record_outside_dirs(layout)
    if containerd_pid(paths) is not None:
        return False
    progress(f"starting containerd of node{node} ({paths.socket})")
    cgroup = layout.cgroup_dir / f"containerd-node{node}"
    cgroup.mkdir(parents=True, exist_ok=True)
    procs = str(cgroup / "cgroup.procs")

    def preexec():
        os.setsid()
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    log_file = open(layout.logs_dir / f"containerd-node{node}.log", "ab")
    process = subprocess.Popen(["nsenter", f"--net=/run/netns/{layout.node_netns(node)}", "containerd",
                                "--config", str(paths.config)],
                               stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, preexec_fn=preexec,
                               close_fds=True)
    log_file.close()
    paths.pidfile.write_text(str(process.pid))  # nsenter execs containerd: the same pid
    deadline = time.monotonic() + START_TIMEOUT
    while ctr(paths, "version", timeout=10).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (layout.logs_dir / f"containerd-node{node}.log").read_text()[-2000:]
            raise ClusterError(f"containerd of node{node} did not start; its log ends:\n{tail}")
        time.sleep(0.1)
    for key in ("pause", "toolbox", "shoal"):
        began = time.monotonic()
        result = ctr(paths, "images", "import", str(refs[f"{key}_archive"]))
        if result.returncode != 0:
            raise ClusterError(f"importing the {key} image into node{node}'s containerd failed: "
                               f"{result.stderr.strip()}")
        logger.info("image imported", node=f"node{node}", image=key, seconds=round(time.monotonic() - began, 1))
    return True


def _record_outside_dirs(layout: Layout) -> None:
    """Notes, once, whether /run/containerd and /var/lib/cni were there before this cluster's containerd."""
    record = layout.run_dir / "containerd-outside.json"
    if not record.exists():
        record.write_text(json.dumps({str(SHIM_STATE): SHIM_STATE.exists(), str(CNI_CACHE): CNI_CACHE.exists()}))


def socket_of(layout: Layout, node: int) -> Path:
    return NodePaths.of(layout, node).socket


def node_agent_args(layout: Layout, node: int) -> list[str]:
    """The node agent's flags on containerd: shoal-cni into the node's CNI dirs, the pods' cgroups under the
    cluster's kubepods tree, and the node's CRI socket for pods that started before it."""
    if runtime_of(layout) != "containerd":
        return []
    paths = NodePaths.of(layout, node)
    return ["--cni", "--cni-bin-dir", str(paths.bin_dir), "--cni-conf-dir", str(paths.conf_dir),
            "--kubelet-cgroup-root", str(layout.cgroup_dir.relative_to(CGROUP_ROOT)),
            "--cri-socket", str(paths.socket)]


def mounts_under(top: Path) -> list[str]:
    """The mount points below `top` (this process's view, the host's mount namespace)."""
    prefix = str(top) + "/"
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]
