"""The node agent's and the ztunnel's pods on `--runtime containerd`, as their DaemonSets say (no root).

The expectations are read from daemonset/node.yaml and daemonset/ztunnel.yaml here, apart from
shoal_image.py's own reading, so a DaemonSet that changes its privileges or mounts changes what
the local cluster must run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import shoal
from shoal.local import components, cri_client, runtime_containerd, shoal_image
from shoal.local.cri_pods import CriPods, volume_mounts
from shoal.local.errors import ClusterError
from shoal.local.layout import Layout

REPO = Path(__file__).resolve().parents[3]
SETTINGS = components.Settings(nodes=2, redirect="iptables")


def daemonset(path: str) -> dict:
    (ds,) = [d for d in yaml.safe_load_all((REPO / "daemonset" / path).read_text()) if d and d["kind"] == "DaemonSet"]
    return ds["spec"]["template"]["spec"]


@pytest.fixture
def layout(tmp_path, monkeypatch):
    monkeypatch.setattr("shoal.store.RUN_ROOT", tmp_path)
    layout = Layout("ctrd2unit")
    layout.run_dir.mkdir(parents=True)
    return layout


def on(layout: Layout, runtime: str) -> None:
    (layout.run_dir / "runtime").write_text(runtime)


@pytest.mark.parametrize("component, path", [("node-agent", "node.yaml"), ("ztunnel", "ztunnel.yaml")])
def test_the_pod_is_its_daemonsets_container_of_the_shoal_image_with_the_netns_runtimes_argv(layout, component, path):
    on(layout, "netns")
    plain = getattr(components, component.replace("-", "_"))(layout, 2, SETTINGS)
    on(layout, "containerd")
    pod = getattr(components, component.replace("-", "_"))(layout, 2, SETTINGS)
    ds = daemonset(path)
    (container,), (ds_container,) = pod["spec"]["containers"], ds["containers"]
    assert container["image"] == shoal_image.REF == f"docker.io/library/shoal:{shoal.__version__}"
    # The same argv as the process on the netns runtime, run by the image's `shoal` (its entrypoint's name).
    argv = plain["spec"]["containers"][0]["command"]
    assert argv[:3] == [components.shoal_argv()[0], "-m", "shoal"]
    # (the agent's CNI and CRI flags, which it takes on containerd whether it is a process or a container)
    extra = runtime_containerd.node_agent_args(layout, 2) if component == "node-agent" else []
    assert container["command"] == ["shoal", *argv[3:], *extra] and ds_container["command"][0] == "shoal"
    assert container["securityContext"] == ds_container["securityContext"]
    assert pod["spec"]["hostNetwork"] is True and bool(pod["spec"].get("hostPID")) == bool(ds.get("hostPID"))
    assert container["readinessProbe"] == plain["spec"]["containers"][0]["readinessProbe"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(m["name"] in volumes for m in container["volumeMounts"])
    ds_volumes = {v["name"]: v for v in ds["volumes"]}
    node = runtime_containerd.NodePaths.of(layout, 2)
    own = {"/var/run/shoal": str(layout.run_dir), "/opt/cni/bin": str(node.bin_dir),
           "/etc/cni/net.d": str(node.conf_dir), "/run/containerd": str(node.base)}
    for ds_mount in ds_container.get("volumeMounts", []):
        source = ds_volumes[ds_mount["name"]].get("hostPath", {}).get("path")
        if source is None or source == "/var/run/crio":
            assert ds_mount["name"] not in volumes  # not a hostPath, or no CRI-O here: not mounted
            continue
        where = str(layout.run_dir) if source == "/var/run/shoal" else ds_mount["mountPath"]
        mount = mounts[where]
        assert volumes[mount["name"]] == own.get(source, source), (source, volumes)
        assert mount.get("readOnly", False) == ds_mount.get("readOnly", False), mount
        assert mount.get("mountPropagation") == ds_mount.get("mountPropagation"), mount
    # Every path the argv names (sockets, token, CA bundle, CNI dirs, the CRI socket) is under a mount.
    for arg in container["command"]:
        if arg.startswith("/"):
            assert any(arg == m or arg.startswith(m.rstrip("/") + "/") for m in mounts), arg


def test_on_the_netns_runtime_nothing_changes_and_the_control_plane_stays_a_process(layout):
    on(layout, "netns")
    assert "image" not in components.ztunnel_pod(layout, 1)["spec"]["containers"][0]
    on(layout, "containerd")
    rollout = components.ztunnel_pod(layout, 1, pod_name="ztunnel-node1-abc", revision=1)
    assert rollout["spec"]["containers"][0]["image"] == shoal_image.REF  # a rollout's pod too
    assert CriPods.runs(rollout)
    for pod in (components.control_plane(layout, 1, SETTINGS), components.ingress_gateway(layout, 1, SETTINGS)):
        assert "image" not in pod["spec"]["containers"][0] and not CriPods.runs(pod)


def test_up_refuses_without_the_image_and_names_make_image_before_anything_is_made(layout, monkeypatch, tmp_path):
    monkeypatch.setattr(shoal_image, "ARCHIVE", tmp_path / "shoal-0.0.0.oci.tar")
    monkeypatch.setattr(runtime_containerd, "check_prerequisites", lambda: None)
    (layout.run_dir / "runtime").unlink(missing_ok=True)
    with pytest.raises(ClusterError, match="make image"):
        runtime_containerd.choose(layout, "containerd")
    assert not (layout.run_dir / "runtime").exists(), "the runtime is not recorded"


def test_host_path_mounts_become_cri_mounts_and_propagation_follows_the_hosts_mount(tmp_path):
    # / is private on most test hosts and shared on some: what the host gives decides, never a change to it.
    _, fields = shoal_image._mount_of(str(tmp_path))
    shared = any(f.startswith("shared:") for f in fields)
    spec = {"volumes": [{"name": "a", "hostPath": {"path": str(tmp_path)}}]}
    container = {"name": "c", "volumeMounts": [{"name": "a", "mountPath": "/x", "readOnly": True,
                                                "mountPropagation": "Bidirectional"}]}
    ((host, inside, readonly, propagation),) = volume_mounts(spec, container)
    assert (host, inside, readonly) == (str(tmp_path), "/x", True)
    assert propagation == (cri_client.PROPAGATION["Bidirectional"] if shared else 0)
    with pytest.raises(cri_client.CriError, match="hostPath"):
        volume_mounts({"volumes": [{"name": "a", "configMap": {"name": "x"}}]}, container)


def test_the_cri_request_carries_the_securitycontext_and_the_nodes_namespaces():
    spec = cri_client.ContainerSpec("ztunnel", 0, shoal_image.REF, ("shoal",), (), (), (("/h", "/c", False, 1),),
                                    "z/0.log", host_network=True, host_pid=True, run_as_user=0,
                                    add_capabilities=("NET_ADMIN",), drop_capabilities=("ALL",))
    sent = []

    class Fake(cri_client.Cri):
        def __init__(self):
            self.timeout = 60.0

        def call(self, method, request, response, timeout=None):
            sent.append(request)
            return cri_client.M[response](container_id="id")

    Fake().create_container("sb", None, spec)
    wire = cri_client.M["CreateContainerRequest"].FromString(sent[0].SerializeToString()).config
    security = wire.linux.security_context
    assert (security.namespace_options.network, security.namespace_options.pid) == (2, 2)
    assert security.HasField("run_as_user") and security.run_as_user.value == 0
    assert list(security.capabilities.add_capabilities) == ["NET_ADMIN"]
    assert list(security.capabilities.drop_capabilities) == ["ALL"]
    assert (wire.mounts[0].host_path, wire.mounts[0].propagation) == ("/h", 1)
    sandbox = cri_client.Cri.sandbox_config("shoal-system", "z", "u", log_directory="/l", cgroup_parent="/p",
                                            host_network=True, privileged=True)
    assert sandbox.hostname == "" and sandbox.linux.security_context.privileged
