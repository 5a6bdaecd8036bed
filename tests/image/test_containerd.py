"""shoal's image, run for real: imported from `make image`'s archive into a containerd of
the test's own (conftest.py), and run with runc.

- `shoal --version` answers the package version;
- the node agent's eBPF prerequisite check, with the host mounts its DaemonSet gives
  (/lib/modules, /usr/src, /sys/fs/cgroup, /sys/fs/bpf), finds everything; without the
  kernel headers it names them and the remedy; and the agent compiles and pins its eBPF
  programs there (bcc and LLVM from the image, headers from the host), and its
  --cleanup unpins them (hostPID is not given: runc here cannot join PID 1's namespace
  through ctr, and nothing of this needs it);
- a node of its own (a network namespace standing in for the node's network, as the
  DaemonSets' hostNetwork pods share it): the control plane as the image's user 10001,
  the node agent privileged, and the ztunnel with its three capabilities, until the
  ztunnel reports ready on 15021 (config received, the node agent's hand-off done);
- and stopping it all leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import shoal
from node_agent import bpffs
from shoal import store
from shoal.contracts import CONTROL_PLANE_GRPC_PORT, READINESS_PORT
from support.net import http_get
from support.polling import eventually
from support.root import needs_root

REPO = Path(__file__).resolve().parents[2]
CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN = 13, 12, 21

# Importing the image and compiling eBPF in it take a while on a busy machine: the waits
# below are generous, and pytest's own limit is raised to cover them.
pytestmark = [needs_root("starts containerd and runs containers with runc"), pytest.mark.timeout(900)]

# The DaemonSet's host mounts of the node agent (daemonset/node.yaml), as (host, container, options).
NODE_AGENT_MOUNTS = (
    ("/lib/modules", "/lib/modules", "rbind:ro"),
    ("/usr/src", "/usr/src", "rbind:ro"),
    ("/sys/fs/cgroup", "/sys/fs/cgroup", "rbind:rw"),
    ("/sys/fs/bpf", "/sys/fs/bpf", "rbind:rw"),
)
HOST_PID = "pid:/proc/1/ns/pid"
CHECK_EBPF = ("from node_agent.redirect import check_ebpf\n"
              "from node_agent.errors import PrerequisiteMissing\n"
              "try:\n    check_ebpf()\n"
              "except PrerequisiteMissing as e:\n    print('missing:', e)\n    raise SystemExit(1)\n"
              "print('ebpf prerequisites: present')\n")


def test_containerd_runs_with_its_cri_plugin_up(containerd):
    plugins = [line.split() for line in containerd.ctr("plugins", "ls").stdout.splitlines()[1:]]
    status = {(words[0], words[1]): words[-1] for words in plugins if len(words) >= 4}
    assert status.get(("io.containerd.grpc.v1", "cri")) == "ok", plugins
    assert status.get(("io.containerd.runtime.v2", "task")) == "ok", plugins
    assert status.get(("io.containerd.snapshotter.v1", "overlayfs")) == "ok", plugins


def test_shoal_version_is_the_package_version(containerd):
    result = containerd.run("version", ["shoal", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"shoal {shoal.__version__}"


def test_the_image_runs_as_its_non_root_user_unless_told_otherwise(containerd):
    result = containerd.run("whoami", ["id"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["uid=10001(shoal)", "gid=10001(shoal)"], result.stdout


def test_the_image_has_both_iptables_backends_iproute2_and_the_ebpf_source(containerd):
    result = containerd.run("tools", ["sh", "-c", "iptables-legacy --version && iptables-nft --version && ip -V && "
                                                  "python3 -c 'from node_agent.ebpf import SOURCE; print(SOURCE.stat().st_size)'"])
    assert result.returncode == 0, result.stderr
    legacy, nft, iproute, source_size = result.stdout.strip().splitlines()
    assert "(legacy)" in legacy and "(nf_tables)" in nft, result.stdout
    assert "iproute2" in iproute, result.stdout
    assert int(source_size) == (REPO / "bpf" / "redirect.c").stat().st_size, \
        "the eBPF program the node agent compiles is not the repository's bpf/redirect.c"


def test_the_node_agents_prerequisite_check_finds_ebpf_ready_with_the_daemonsets_mounts(containerd):
    containerd.start_as_root("check-mounted", privileged=True, mounts=NODE_AGENT_MOUNTS)
    result = containerd.exec_as_root("check-mounted", ["python3", "-c", CHECK_EBPF])
    containerd.remove_container("check-mounted")
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.stdout.strip() == "ebpf prerequisites: present"


def test_without_the_kernel_headers_the_check_names_them_and_the_remedy(containerd):
    without_headers = tuple(m for m in NODE_AGENT_MOUNTS if m[0] not in ("/lib/modules", "/usr/src"))
    containerd.start_as_root("check-unmounted", privileged=True, mounts=without_headers)
    result = containerd.exec_as_root("check-unmounted", ["python3", "-c", CHECK_EBPF])
    containerd.remove_container("check-unmounted")
    assert result.returncode == 1, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    assert "missing: kernel headers" in result.stdout, result.stdout
    assert "mount /lib/modules and /usr/src" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def node(containerd):
    """A local cluster's store and a network namespace of the test's own, for one node."""
    cluster = f"img{os.getpid()}"
    run_root = containerd.base / "run"
    cluster_store = store.Store(cluster, root=run_root)
    cluster_store.init()
    cluster_store.apply({"kind": "Node", "metadata": {"name": "node1"}})
    run_dir = run_root / cluster
    token = "tok-image-test-" + "c" * 24
    (run_dir / "bootstrap-tokens.json").write_text(json.dumps({token: "node1"}))
    (run_dir / "node1").mkdir()
    (run_dir / "node1" / "token").write_text(token)
    for path in [run_dir, *run_dir.rglob("*")]:
        os.chown(path, 10001, 10001)  # the control plane runs as the image's user
    netns = f"shoal-{cluster}-node1"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        yield cluster, netns, run_root
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)


def test_a_ztunnel_reports_ready_against_a_control_plane_run_as_the_non_root_user(containerd, node):
    cluster, netns, run_root = node
    shared = (str(run_root), "/run/shoal", "rbind:rw")
    environment = ("SHOAL_RUN_ROOT=/run/shoal",)
    containerd.start_container("control-plane", ["shoal", "control-plane", "--source", "local", "--cluster", cluster],
                               net_ns=netns, mounts=(shared,), env=environment)
    containerd.start_as_root("node-agent", ["shoal", "node-agent", "--source", "local", "--cluster", cluster,
                                              "--node", "node1", "--redirect", "iptables"],
                             net_ns=netns, privileged=True, mounts=(*NODE_AGENT_MOUNTS, shared),
                               env=environment)
    containerd.start_as_root("ztunnel", ["shoal", "ztunnel", "--cluster", cluster, "--node", "node1",
                                           "--control-plane", f"127.0.0.1:{CONTROL_PLANE_GRPC_PORT}"],
                             net_ns=netns, caps=("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"),
                               mounts=(shared,), env=environment)

    def logs() -> str:
        return "\n".join(f"--- {name}:\n{containerd.container_log(name)}"
                         for name in ("control-plane", "node-agent", "ztunnel"))

    status, body = eventually(lambda: (lambda answer: answer if answer[0] == 200 else None)(
        http_get(f"http://127.0.0.1:{READINESS_PORT}/healthz/ready", netns=netns)), timeout=180,
        what=lambda: f"the ztunnel to be ready: {http_get(f'http://127.0.0.1:{READINESS_PORT}/healthz/ready', netns=netns)}\n{logs()}")
    assert status == 200 and "ready" in body

    # The control plane runs as the image's user, as its Deployment has it (runAsNonRoot).
    pid = containerd.task_pid("control-plane")
    uids = [line.split()[1:] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith(("Uid:", "Gid:"))]
    assert uids == [["10001"] * 4, ["10001"] * 4], uids

    # The ztunnel runs as root with its three capabilities and no others, as its DaemonSet has it.
    ztunnel = containerd.process_in("ztunnel", "shoal ztunnel")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{ztunnel}/status").read_text().splitlines())
    assert status["Uid"].split()[0] == "0"
    assert int(status["CapEff"], 16) == (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN), status["CapEff"]


@pytest.fixture
def host_bpffs():
    """The host's bpffs at /sys/fs/bpf, as a node has it (systemd mounts it at boot; the DaemonSet's
    Bidirectional mount shares it with the agent): mounted for the test if this machine has none, and
    unmounted after if the test mounted it and nothing is pinned in it. Without it, the agent in the
    container mounts a bpffs of its own over the bind mount, and its pins never reach the host."""
    mounted_here = not bpffs.mounted()
    bpffs.ensure()
    yield bpffs.BPFFS
    if mounted_here and bpffs.mounted():
        # The agent's --cleanup in the container found the bpffs empty and unmounted it in the container's
        # own mount namespace, taking the mount marker with it: the host's mount is still this test's.
        (bpffs.BPFFS / bpffs.MOUNT_MARKER).mkdir(exist_ok=True)
    bpffs.release(empty=(bpffs.BPFFS / "shoal",))


def test_the_node_agent_compiles_and_pins_its_ebpf_programs_in_the_image_and_its_cleanup_unpins_them(
        containerd, node, host_bpffs):
    cluster, netns, run_root = node
    pins = host_bpffs / "shoal" / f"{cluster}-node1"
    shared = (str(run_root), "/run/shoal", "rbind:rw")
    # An agent of its own (socket, state, no metrics port), beside the one the ztunnel test may run.
    agent = ["shoal", "node-agent", "--source", "local", "--cluster", cluster, "--node", "node1",
             "--socket", "/run/shoal/ebpf-agent.sock", "--state-dir", "/run/shoal/ebpf-agent", "--metrics-port", "0"]
    options = dict(net_ns=netns, privileged=True, mounts=(*NODE_AGENT_MOUNTS, shared),
                   env=("SHOAL_RUN_ROOT=/run/shoal",))
    try:
        containerd.start_as_root("agent-ebpf", [*agent, "--redirect", "ebpf"], **options)
        eventually(lambda: "compiled and pinned eBPF programs" in containerd.container_log("agent-ebpf")
                   or "reusing pinned eBPF programs" in containerd.container_log("agent-ebpf"), timeout=300,
                   what=lambda: f"the agent to pin its programs:\n{containerd.container_log('agent-ebpf')}")
        assert pins.is_dir() and any(pins.rglob("*")), f"nothing pinned under {pins}"
        containerd.remove_container("agent-ebpf")  # killed, as a node agent pod is: the pins stay, by design
        assert pins.is_dir()

        containerd.start_as_root("agent-cleanup", **options)
        result = containerd.exec_as_root("agent-cleanup", [*agent, "--cleanup"])
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert not pins.exists(), f"--cleanup left {sorted(map(str, pins.rglob('*')))}"
    finally:
        for name in ("agent-ebpf", "agent-cleanup"):
            if name in containerd.containers:
                containerd.remove_container(name)


def test_stopping_containerd_leaves_nothing_behind(containerd):
    leftovers = containerd.stop()
    assert leftovers == [], leftovers
