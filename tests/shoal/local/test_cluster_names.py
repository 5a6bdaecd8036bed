"""A cluster name becomes a run directory, a cgroup and a netns prefix: one that is not a
DNS label of at most 32 characters is refused wherever it enters, before anything is touched.
(`shoal local down --cluster ../..` once resolved its run directory to / and its cgroup to the
root cgroup.)"""

from __future__ import annotations

import argparse
import re

import pytest

from shoal.cli import build_parser
from shoal.local.layout import Layout
from shoal.store import Store

from support.cli import shoal

BAD = ["../..", "..", ".", "a/b", "/", "", "-a", "a-", "Default", "a_b", "a.b", " a", "a\n", "a" * 33, "ä"]
GOOD = ["a", "0", "default", "team-2", "a--b", "a" * 32]

# Every command that takes --cluster (DESIGN.md: every `shoal local` subcommand, `shoal waypoint`,
# `shoal config`, and the components that find their paths from it).
EXPECTED = {
    "local up", "local down", "local apply", "local delete", "local get", "local label", "local annotate",
    "local logs", "local exec", "waypoint apply", "waypoint delete", "waypoint list", "waypoint config",
    "waypoint run", "config", "ztunnel", "node-agent", "control-plane",
}


def commands_with_cluster(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its --cluster action) for every (sub)command of the CLI that has one."""
    if "--cluster" in parser._option_string_actions:
        yield " ".join(path), parser._option_string_actions["--cluster"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands_with_cluster(sub, (*path, name))


def test_every_command_that_takes_a_cluster_checks_its_name():
    found = dict(commands_with_cluster(build_parser()))
    assert EXPECTED <= set(found), f"commands without --cluster: {EXPECTED - set(found)}"
    for command, action in found.items():
        assert action.type is not None, f"shoal {command} --cluster takes any string"
        for bad in BAD:
            with pytest.raises(argparse.ArgumentTypeError, match="1 to 32 lowercase letters"):
                action.type(bad)
        for good in GOOD:
            assert action.type(good) == good


@pytest.mark.parametrize("bad", BAD)
def test_layout_and_store_refuse_a_name_that_is_not_a_cluster_name(bad, tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"cluster name {bad!r} is not valid")):
        Layout(bad)
    with pytest.raises(ValueError, match=re.escape(f"cluster name {bad!r} is not valid")):
        Store(bad, root=tmp_path)


@pytest.mark.parametrize("good", GOOD)
def test_good_names_stay_inside_the_run_root_and_the_cgroup_tree(good):
    layout = Layout(good)
    assert layout.run_dir.parent.resolve() == layout.run_dir.parent
    assert layout.run_dir.name == good and layout.cgroup_dir.name == good


def test_down_with_a_path_for_a_name_is_refused_and_touches_nothing(tmp_path):
    """Run in a sandbox (run root and cgroup root under tmp_path), so that even a shoal without
    the check could only harm the test's own directory."""
    run_root = tmp_path / "run" / "shoal"
    run_root.mkdir(parents=True)
    cgroup_root = tmp_path / "cgroup"
    (cgroup_root / "shoal").mkdir(parents=True)
    (cgroup_root / "cgroup.procs").write_text("")
    keep = tmp_path / "keep"
    keep.write_text("the directory two levels above the run root")
    env = {"SHOAL_RUN_ROOT": str(run_root), "SHOAL_CGROUP_ROOT": str(cgroup_root)}
    result = shoal("local", "down", "--cluster", "../..", check=False, env=env, timeout=60)
    assert result.returncode == 2, result
    assert "argument --cluster: cluster name '../..' is not valid" in result.stderr
    assert "lowercase letters, digits and '-'" in result.stderr
    assert keep.exists() and run_root.is_dir() and (cgroup_root / "shoal").is_dir()
