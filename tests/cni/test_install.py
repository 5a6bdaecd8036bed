"""Chaining shoal-cni into a node's conflist and taking it out again (node_agent/cni_install.py).

The decisions are pure (bytes in, bytes out); `ensure` and `remove` run against a
bin dir and a conf dir of the test's own. Removal leaves the conflist byte-for-byte
as the node's CNI wrote it, unless something else changed it meanwhile.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node_agent import cni_install
from node_agent.cni_install import CniInstallError, CniSettings, chained, unchained

# As a cluster's CNI writes it: its own spacing, key order and no final newline.
ORIGINAL = (b'{ "cniVersion": "1.0.0", "name": "k8s-pod-network",\n'
            b'  "plugins": [ {"type": "ptp", "ipam": {"type": "host-local", "subnet": "198.19.7.0/24"}},\n'
            b'               {"type": "portmap", "capabilities": {"portMappings": true}} ] }')


def settings(tmp_path: Path) -> CniSettings:
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "net.d").mkdir(exist_ok=True)
    return CniSettings(bin_dir=tmp_path / "bin", conf_dir=tmp_path / "net.d", socket=tmp_path / "cni.sock",
                       enrollment_file=tmp_path / "cni-enrollment.json", state_dir=tmp_path / "state")


def test_chained_appends_the_entry_last_and_keeps_the_rest():
    entry = {"type": "shoal-cni", "socket": "/s"}
    conf = json.loads(chained(ORIGINAL, entry))
    assert [p["type"] for p in conf["plugins"]] == ["ptp", "portmap", "shoal-cni"]
    assert conf["plugins"][-1] == entry
    assert {k: v for k, v in conf.items() if k != "plugins"} == {"cniVersion": "1.0.0", "name": "k8s-pod-network"}


def test_chained_twice_changes_nothing_and_a_changed_entry_is_replaced_not_added():
    first = chained(ORIGINAL, {"type": "shoal-cni", "socket": "/a"})
    assert chained(first, {"type": "shoal-cni", "socket": "/a"}) is None
    moved = json.loads(chained(first, {"type": "shoal-cni", "socket": "/b"}))
    assert [p for p in moved["plugins"] if p["type"] == "shoal-cni"] == [{"type": "shoal-cni", "socket": "/b"}]


def test_unchained_gives_back_the_original_bytes_when_only_the_entry_was_added():
    assert unchained(chained(ORIGINAL, {"type": "shoal-cni"}), ORIGINAL) == ORIGINAL
    assert unchained(ORIGINAL, ORIGINAL) is None  # not chained: nothing to do


def test_unchained_keeps_another_writers_change_and_drops_only_the_entry():
    conf = json.loads(chained(ORIGINAL, {"type": "shoal-cni"}))
    conf["plugins"].insert(1, {"type": "bandwidth"})
    result = json.loads(unchained(json.dumps(conf).encode(), ORIGINAL))
    assert [p["type"] for p in result["plugins"]] == ["ptp", "bandwidth", "portmap"]


@pytest.mark.parametrize("text, says", [
    (b"{not json", "not JSON"),
    (b'{"cniVersion": "1.0.0", "name": "x", "type": "bridge"}', "convert the single-plugin .conf"),
])
def test_a_conf_it_cannot_chain_into_is_refused_naming_why(text, says):
    with pytest.raises(CniInstallError, match=says):
        chained(text, {"type": "shoal-cni"})


def test_ensure_then_remove_leaves_the_conf_dir_and_bin_dir_as_they_were(tmp_path):
    s = settings(tmp_path)
    conflist = s.conf_dir / "10-k8s.conflist"
    conflist.write_bytes(ORIGINAL)
    os.chmod(conflist, 0o640)
    other = s.conf_dir / "99-later.conflist"
    other.write_bytes(b'{"cniVersion": "1.0.0", "name": "later", "plugins": [{"type": "bridge"}]}')

    assert cni_install.ensure(s) == conflist
    plugin = s.bin_dir / "shoal-cni"
    assert plugin.read_bytes() == cni_install.PLUGIN_SOURCE.read_bytes()
    assert os.access(plugin, os.X_OK)
    chained_conf = json.loads(conflist.read_bytes())
    assert chained_conf["plugins"][-1] == s.entry()
    assert conflist.stat().st_mode & 0o777 == 0o640
    assert b"shoal-cni" not in other.read_bytes(), "only the conflist the runtime uses is chained"
    assert cni_install.ensure(s) == conflist  # again: idempotent
    assert json.loads(conflist.read_bytes()) == chained_conf

    done = cni_install.remove(s)
    assert conflist.read_bytes() == ORIGINAL
    assert not plugin.exists()
    assert sorted(p.name for p in s.bin_dir.iterdir()) == []
    assert sorted(p.name for p in s.conf_dir.iterdir()) == ["10-k8s.conflist", "99-later.conflist"]
    assert not (s.state_dir / "cni").exists()
    assert done == [f"unchained {conflist}", f"removed {plugin}"]


def test_a_conflist_rewritten_by_its_cni_is_chained_again_and_its_new_bytes_restored(tmp_path):
    s = settings(tmp_path)
    conflist = s.conf_dir / "10-k8s.conflist"
    conflist.write_bytes(ORIGINAL)
    cni_install.ensure(s)
    rewritten = ORIGINAL.replace(b"198.19.7.0/24", b"198.19.8.0/24")
    conflist.write_bytes(rewritten)  # the node's CNI restarted and wrote its file anew
    cni_install.ensure(s)
    assert json.loads(conflist.read_bytes())["plugins"][-1]["type"] == "shoal-cni"
    cni_install.remove(s)
    assert conflist.read_bytes() == rewritten


def test_ensure_without_a_conflist_or_bin_dir_says_what_is_missing(tmp_path):
    s = settings(tmp_path)
    with pytest.raises(CniInstallError, match="no CNI network configuration in"):
        cni_install.ensure(s)
    (s.conf_dir / "10.conflist").write_bytes(ORIGINAL)
    s.bin_dir.rmdir()
    with pytest.raises(CniInstallError, match="--cni-bin-dir"):
        cni_install.ensure(s)
    assert (s.conf_dir / "10.conflist").read_bytes() == ORIGINAL


def test_remove_with_nothing_installed_touches_nothing(tmp_path):
    s = settings(tmp_path)
    conflist = s.conf_dir / "10-k8s.conflist"
    conflist.write_bytes(ORIGINAL)
    (s.conf_dir / "README").write_text("not a network config")
    before = conflist.stat().st_mtime_ns
    assert cni_install.remove(s) == []
    assert conflist.read_bytes() == ORIGINAL and conflist.stat().st_mtime_ns == before
