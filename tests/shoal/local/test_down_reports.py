"""`shoal local down` fails (exit 1, naming what is left and what to do) when anything of the
cluster remains or a part's cleanup failed; it used to print a warning and exit 0.

In process, in a sandbox: the run root, the cgroup root and the bpffs are directories under
tmp_path, and the components' cleanups are the test's own, so nothing of the host is touched.
"""

from __future__ import annotations

import pytest

from shoal import store
from shoal.cli import main
from shoal.local import cluster as local_cluster
from shoal.local import components
from shoal.local import layout as layout_module
from shoal.local.layout import Layout

NAME = "downrep"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RUN_ROOT", tmp_path / "run")
    monkeypatch.setattr(layout_module, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(layout_module, "BPFFS", tmp_path / "bpffs", raising=False)
    monkeypatch.setattr(local_cluster, "check_prerequisites", lambda: None)
    monkeypatch.setattr(components, "CLEANUPS", [])
    layout = Layout(NAME)
    layout.run_dir.mkdir(parents=True)
    (layout.run_dir / "cluster.json").write_text("{}")
    return tmp_path


def down(capsys) -> tuple[int, str, str]:
    code = main(["local", "down", "--cluster", NAME])
    out, err = capsys.readouterr()
    return code, out, err


def test_down_of_a_cluster_that_leaves_nothing_succeeds(sandbox, capsys):
    code, out, err = down(capsys)
    assert code == 0, err
    assert f"cluster {NAME!r} removed" in out
    assert not Layout(NAME).run_dir.exists()


def test_pins_that_survive_down_make_it_fail_and_name_them(sandbox, capsys):
    pins = sandbox / "bpffs" / "shoal" / f"{NAME}-node2"
    pins.mkdir(parents=True)
    code, out, err = down(capsys)
    assert code == 1
    assert f"cluster {NAME!r} was not removed whole" in err
    assert f"left: pinned eBPF objects {pins}" in err
    assert f"run `shoal local down --cluster {NAME}` again" in err
    assert not Layout(NAME).run_dir.exists()  # the rest went all the same


def test_a_failed_cleanup_makes_down_fail_after_removing_the_rest(sandbox, capsys, monkeypatch):
    def node_agent_cleanup(layout):
        raise RuntimeError("the agent on node1 would not let go")
    monkeypatch.setattr(components, "CLEANUPS", [node_agent_cleanup])
    code, out, err = down(capsys)
    assert code == 1
    assert "failed: node_agent_cleanup: the agent on node1 would not let go" in err
    assert not Layout(NAME).run_dir.exists()


def test_another_clusters_pins_are_not_this_ones(sandbox):
    shoal_pins = sandbox / "bpffs" / "shoal"
    for name in (f"{NAME}-node1", f"{NAME}-node12", f"{NAME}-node1-node2", f"{NAME}x-node1", f"{NAME}-nodes"):
        (shoal_pins / name).mkdir(parents=True)
    assert [p.name for p in Layout(NAME).bpf_pins()] == [f"{NAME}-node1", f"{NAME}-node12"]
    assert [p.name for p in Layout(f"{NAME}-node1").bpf_pins()] == [f"{NAME}-node1-node2"]
