"""Pods that started before the agent, found through CRI (node_agent/cri.py), against a real containerd.

A containerd of the test's own (support/containerd.py) with its CRI plugin, runc, and a CNI
config of the test's (Debian's bridge + host-local); a pause image built here with the
project's OCI writer (scripts/image/oci.py) from the host's /bin/sleep and the two libraries
it needs. A pod sandbox is made with CRI RunPodSandbox, as a kubelet would; then
`CriClient.sandboxes()` must find it, with the pod's namespace, name and uid, its addresses
from the CNI (dual stack: the primary and additional_ips), the netns the runtime made (the
same inode as the sandbox process's) and the sandbox's pid. Stopping it all leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from node_agent import cri
from node_agent.cri import M, CriClient, RuntimeSandboxes
from node_agent.hostmounts import cgroup2_root
from node_agent.sources import KubeSource
from scripts.image import oci
from shoal import netns
from support.containerd import Containerd, node_paths
from support.root import needs_root

pytestmark = [needs_root("starts containerd, makes pod sandboxes with runc and CNI"), pytest.mark.timeout(900)]

PAUSE = "shoal-test-pause"
PAUSE_REF = f"docker.io/library/{PAUSE}:test"
SUBNET = "198.19.202.0/24"
SUBNET6 = "fd73:686f:616c:202::/64"


def pause_image(work: Path) -> Path:
    """An OCI archive whose one layer holds /bin/sleep with its loader and libc, and CMD sleep infinity."""
    layer = work / "pause-layer.tar"
    with tarfile.open(layer, "w") as tar:
        for path in ("/bin/sleep", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    dockerfile = work / "Dockerfile.pause"
    dockerfile.write_text('FROM scratch\nCMD ["/bin/sleep", "infinity"]\n')
    output = work / "pause.oci.tar"
    oci.build(dockerfile, [layer], name=PAUSE, tag="test", output=output, cache=work / "cache")
    return output


@pytest.fixture(scope="module")
def runtime():
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: run `make image`, which installs containerd and runc")
    if not Path("/lib64/ld-linux-x86-64.so.2").exists() or not Path("/usr/lib/cni/bridge").exists():
        pytest.skip("needs an x86-64 glibc host and containernetworking-plugins (scripts/setup.sh)")
    base = Path(tempfile.mkdtemp(prefix="shoal-cri-test-"))
    conf_dir = node_paths(base).conf_dir  # where the test's containerd reads its CNI config
    conf_dir.mkdir(parents=True)
    (conf_dir / "10-test.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "cri-test", "plugins": [
            {"type": "bridge", "bridge": f"cri{os.getpid()}"[:15], "isGateway": True, "ipMasq": False,
             # dual stack: the runtime reports the IPv6 address in PodSandboxNetworkStatus.additional_ips
             "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}], [{"subnet": SUBNET6}]],
                      "dataDir": str(base / "ipam"), "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}]}))
    # containerd (and so the bridge plugin, which turns on ip_forward) runs in a node netns of its own:
    # nothing of this test is made in the host's network.
    node = f"shoal-cri{os.getpid()}-node"
    netns.create(node)
    netns.run(node, ["ip", "link", "set", "lo", "up"])
    containerd = Containerd(base, sandbox_image=PAUSE_REF, net_ns=node)
    try:
        containerd.start()
        archive = pause_image(base)
        imported = subprocess.run(["ctr", "--address", str(containerd.socket), "--namespace", "k8s.io", "images",
                                   "import", str(archive)], capture_output=True, text=True, timeout=300)
        assert imported.returncode == 0, imported.stderr
        yield containerd
    finally:
        leftovers = containerd.stop()
        netns.remove(node)  # the bridge plugin's bridge goes with it
        shutil.rmtree(base)
        assert leftovers == [], leftovers


def run_sandbox(client: CriClient, containerd: Containerd, namespace: str, name: str, uid: str) -> str:
    config = M["PodSandboxConfig"](
        metadata=M["PodSandboxMetadata"](name=name, uid=uid, namespace=namespace, attempt=0),
        hostname=name, log_directory=str(containerd.base / "logs" / uid),
        linux=M["LinuxPodSandboxConfig"](cgroup_parent=f"/{containerd.cgroup_parent}/pod{uid}"))
    return client.call("RunPodSandbox", M["RunPodSandboxRequest"](config=config), "RunPodSandboxResponse").pod_sandbox_id


def remove_sandbox(client: CriClient, sandbox_id: str) -> None:
    client.call("StopPodSandbox", M["PodSandboxIdRequest"](pod_sandbox_id=sandbox_id), "Empty")
    client.call("RemovePodSandbox", M["PodSandboxIdRequest"](pod_sandbox_id=sandbox_id), "Empty")


def test_a_sandbox_made_through_cri_is_found_with_its_netns_address_and_pid(runtime):
    client = CriClient(runtime.socket, timeout=120)
    uid = str(uuid.uuid4())
    sandbox_id = run_sandbox(client, runtime, "demo", "early", uid)
    try:
        found = [s for s in client.sandboxes() if s.uid == uid]
        assert len(found) == 1, client.sandboxes()
        sandbox = found[0]
        assert (sandbox.id, sandbox.namespace, sandbox.name, sandbox.ready) == (sandbox_id, "demo", "early", True)
        assert sandbox.ip and sandbox.ip.startswith("198.19.202."), sandbox
        assert len(sandbox.ips) == 2 and sandbox.ips[0] == sandbox.ip, sandbox
        assert sandbox.ips[1].startswith("fd73:686f:616c:202:"), sandbox  # from additional_ips
        # pinned under containerd's state dir, as a local cluster's node has it (netns_mounts_under_state_dir)
        assert sandbox.netns and sandbox.netns.startswith(f"{runtime.base}/state/"), sandbox
        assert os.path.basename(sandbox.netns).startswith("cni-"), sandbox
        assert sandbox.pid and os.stat(sandbox.netns).st_ino == os.stat(f"/proc/{sandbox.pid}/ns/net").st_ino
    finally:
        remove_sandbox(client, sandbox_id)
    assert not os.path.exists(sandbox.netns), "RemovePodSandbox takes the netns away"
    assert [s for s in client.sandboxes() if s.uid == uid] == []
    client.close()


def test_the_kube_source_takes_the_netns_from_the_runtime_before_proc(runtime):
    client = CriClient(runtime.socket, timeout=120)
    uid = str(uuid.uuid4())
    sandbox_id = run_sandbox(client, runtime, "demo", "older", uid)
    try:
        netns = next(s.netns for s in client.sandboxes() if s.uid == uid)
        source = KubeSource("node1", api_client=object(), runtime=RuntimeSandboxes(runtime.socket, time.monotonic))
        pod = {"metadata": {"uid": uid, "namespace": "demo", "name": "older"}, "spec": {"nodeName": "node1"},
               "status": {"phase": "Running", "podIP": "198.19.202.9"}}
        found = source._with_sandbox(pod)["status"]["shoal"]
        assert found["netns"] == netns, found  # the runtime's path, not /proc/<pid>/ns/net
        assert found["netns_inode"] == os.stat(netns).st_ino
        # cgroupfs on this hybrid machine: runc places the sandbox in v1 controllers and in the v2
        # tree at the same path, so the pod-level v2 directory is found from its process.
        assert found["cgroup"] == str(cgroup2_root() / runtime.cgroup_parent / f"pod{uid}"), found
    finally:
        remove_sandbox(client, sandbox_id)
        client.close()
    assert KubeSource("node1", api_client=object(), runtime=RuntimeSandboxes(runtime.socket, time.monotonic)) \
        ._with_sandbox(pod)["status"].get("shoal") is None, "a removed sandbox is not found"


def test_an_unreachable_runtime_is_an_error_naming_the_socket(tmp_path):
    client = CriClient(tmp_path / "absent.sock", timeout=5)
    with pytest.raises(cri.CriError, match="absent.sock"):
        client.sandboxes()
    client.close()
