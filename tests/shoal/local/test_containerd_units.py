"""The pieces of `--runtime containerd` that need no root: its configs, the runtime choice, the CRI
messages on the wire, and the CRI log lines the kubelet copies into its own log files."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from shoal.local import cri_client, runtime_containerd
from shoal.local.cri_pods import CriContainer, CriPod, CriPods
from shoal.local.errors import ClusterError
from shoal.local.layout import Layout


@pytest.fixture
def layout(tmp_path, monkeypatch):
    monkeypatch.setattr("shoal.store.RUN_ROOT", tmp_path)
    return Layout("ctrdunit")


def test_each_node_has_its_own_paths_network_and_pod_range(layout):
    one, two = runtime_containerd.NodePaths.of(layout, 1), runtime_containerd.NodePaths.of(layout, 2)
    assert one.socket != two.socket and one.root != two.root and one.network != two.network
    assert all(str(p).startswith(str(layout.run_dir)) for p in (one.socket, one.root, one.bin_dir, one.conf_dir))
    conf = runtime_containerd.conflist(two, 2)
    bridge = conf["plugins"][0]
    assert (conf["name"], bridge["type"], bridge["ipam"]["type"]) == (two.network, "bridge", "host-local")
    subnet = ipaddress.ip_network(bridge["ipam"]["ranges"][0][0]["subnet"])
    assert subnet == ipaddress.ip_network("198.19.2.0/24")
    assert bridge["ipam"]["dataDir"].startswith(str(layout.run_dir)), "IPAM state stays in the run directory"


def test_containerd_keeps_everything_under_the_run_directory(layout):
    paths = runtime_containerd.NodePaths.of(layout, 1)
    toml = runtime_containerd.config_toml(paths, "docker.io/library/shoal-pause:x")
    for key, value in (("root", paths.root), ("state", paths.base / "state"), ("address", paths.socket),
                       ("bin_dir", paths.bin_dir), ("conf_dir", paths.conf_dir), ("Root", paths.base / "runc")):
        assert f'{key} = "{value}"' in toml, key
    assert "netns_mounts_under_state_dir = true" in toml  # not /var/run/netns
    assert 'sandbox_image = "docker.io/library/shoal-pause:x"' in toml
    assert "/var/lib/containerd" not in toml and "/run/containerd" not in toml


def test_the_runtime_is_chosen_once_per_cluster(layout, monkeypatch):
    monkeypatch.setattr(runtime_containerd, "check_prerequisites", lambda: None)  # the next test has its own
    monkeypatch.setattr(runtime_containerd.shoal_image, "require", lambda: None)  # test_containerd_shoal_image has it
    assert runtime_containerd.runtime_of(layout) == "netns"
    assert runtime_containerd.node_agent_args(layout, 1) == []
    assert runtime_containerd.choose(layout, "containerd") == "containerd"
    (layout.run_dir / "cluster.json").write_text("{}")
    assert runtime_containerd.choose(layout, None) == "containerd"
    args = runtime_containerd.node_agent_args(layout, 1)
    assert args[:1] == ["--cni"] and "--cri-socket" in args
    with pytest.raises(ClusterError, match="is up with --runtime containerd"):
        runtime_containerd.choose(layout, "netns")
    with pytest.raises(ClusterError, match="not one of"):
        runtime_containerd.choose(Layout("other"), "docker")


def test_a_sandbox_config_survives_the_wire_with_the_fields_containerd_reads():
    config = cri_client.Cri.sandbox_config("shop", "client", "u-1", log_directory="/logs", cgroup_parent="/shoal/c/p",
                                           dns_searches=("shop.svc.cluster.local",))
    wire = cri_client.M["RunPodSandboxRequest"](config=config).SerializeToString()
    back = cri_client.M["RunPodSandboxRequest"].FromString(wire).config
    assert (back.metadata.namespace, back.metadata.name, back.metadata.uid) == ("shop", "client", "u-1")
    assert back.linux.cgroup_parent == "/shoal/c/p" and back.log_directory == "/logs"
    assert back.labels["io.kubernetes.pod.uid"] == "u-1"
    assert list(back.dns_config.searches) == ["shop.svc.cluster.local"]


def test_the_cri_log_is_copied_as_plain_lines_partial_ones_joined(tmp_path):
    runtime = CriPod(namespace="ns", name="p", uid="u", node=1, node_netns="n", cgroup=tmp_path / "cg",
                     restart_policy="Always", grace=1, cri=None, files=tmp_path / "etc", logs=tmp_path / "cri")
    container = CriContainer("app", ["sh"], None)
    (tmp_path / "cri" / "app").mkdir(parents=True)
    source = tmp_path / "cri" / "app" / "0.log"
    source.write_bytes(b"2026-01-01T00:00:00Z stdout F hello world\n"
                       b"2026-01-01T00:00:01Z stderr P part one \n"
                       b"2026-01-01T00:00:01Z stderr F and two\n"
                       b"2026-01-01T00:00:02Z stdout F half a li")
    target = tmp_path / "out.log"
    CriPods._copy_log(runtime, container, 0, target)
    assert target.read_text() == "hello world\npart one and two\n"
    with open(source, "ab") as f:
        f.write(b"ne\n")
    CriPods._copy_log(runtime, container, 0, target)
    assert target.read_text() == "hello world\npart one and two\nhalf a line\n"


def test_images_come_from_the_projects_script():
    assert runtime_containerd.IMAGES_SCRIPT.exists()
    assert Path(runtime_containerd.IMAGES_SCRIPT).stat().st_mode & 0o111, "the script is executable"


def test_missing_tools_are_named_before_anything_is_made(layout, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: None if tool in ("containerd", "ctr") else f"/usr/bin/{tool}")
    with pytest.raises(ClusterError, match="needs containerd, ctr[;,].*install them with `scripts/setup.sh --packages"):
        runtime_containerd.choose(layout, "containerd")
    assert not layout.run_dir.exists()


def test_the_tests_containerd_is_configured_by_the_products_builder(tmp_path):
    """tests/support/containerd.py had a near-copy of the config; it now writes the product's, so a node's
    containerd and the tests' cannot drift apart."""
    from support.containerd import node_paths
    paths = node_paths(tmp_path)
    assert runtime_containerd.config_toml(paths) == runtime_containerd.config_toml(paths, "")
    assert "sandbox_image" not in runtime_containerd.config_toml(paths)  # "": containerd's default
    assert (paths.socket, paths.config) == (tmp_path / "containerd.sock", tmp_path / "config.toml")
    assert f'conf_dir = "{tmp_path}/cni/net.d"' in runtime_containerd.config_toml(paths)


def test_get_pods_wide_shows_the_images_a_containerd_clusters_pods_run():
    import io
    from shoal.cli import local_read

    def pod(name: str, images: list[str]) -> dict:
        return {"kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": "node1"},
                "status": {"phase": "Running", "podIP": "198.19.1.5", "containerStatuses": [
                    {"name": f"c{i}", "ready": True, "restartCount": 0, **({"image": image} if image else {})}
                    for i, image in enumerate(images)]}}

    class Listing:  # the store's list(), for these pods
        def list(self, kind, namespace):
            return [pod("shell", ["docker.io/library/shoal-toolbox:0123456789abcdef"]),
                    pod("web", ["docker.io/library/web:1", "docker.io/library/shoal-toolbox:0123456789abcdef"]),
                    pod("host-process", [""])], 7   # a hostNetwork process that runs no image

    out = io.StringIO()
    assert local_read.get(Listing(), ["Pod"], None, "default", False, "wide", out=out) == 0
    head, *lines = out.getvalue().splitlines()
    column = head.split().index("IMAGES")
    rows = {line.split()[0]: line.split()[column] for line in lines}
    assert rows == {"shell": "docker.io/library/shoal-toolbox:0123456789abcdef",
                    "web": "docker.io/library/web:1,docker.io/library/shoal-toolbox:0123456789abcdef",
                    "host-process": "<none>"}


def test_a_stale_shoal_image_is_met_with_the_commands_that_bring_the_checkouts_code(layout):
    warning = runtime_containerd.stale_image_warning(layout)
    assert f"`make -C {runtime_containerd.REPO} image`" in warning
    assert f"`shoal local down --cluster {layout.cluster}`" in warning and "`shoal local up` again" in warning
