"""`shoal local up --addons`: names checked before anything is made; the Prometheus pod and its files."""

from __future__ import annotations

import json

import pytest

from shoal import store
from shoal.local import addons
from shoal.local.errors import ClusterError
from shoal.local.layout import Layout


def test_addon_names_are_checked_and_deduplicated():
    assert addons.parse("") == [] and addons.parse(None) == []
    assert addons.parse("prometheus, prometheus") == ["prometheus"]
    with pytest.raises(ClusterError, match="unknown addon grafana; the addons are: prometheus"):
        addons.parse("prometheus,grafana")


def test_the_prometheus_pod_runs_on_node1_with_its_files_under_the_clusters_run_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RUN_ROOT", tmp_path)
    layout = Layout("obsunit")
    pod = addons.prometheus_pod(layout)
    root = tmp_path / "obsunit" / "addons" / "prometheus"
    assert pod["spec"]["nodeName"] == "node1" and pod["spec"]["hostNetwork"] is True
    targets, prometheus = pod["spec"]["containers"]
    assert targets["command"][1:4] == ["-m", "shoal.observe.targets", "--cluster"]
    assert f"--config.file={root / 'prometheus.yml'}" in prometheus["command"]
    assert f"--storage.tsdb.path={root / 'data'}" in prometheus["command"]
    config = json.loads((root / "prometheus.yml").read_text())       # YAML, written as JSON
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(root / "targets.json")]
    assert json.loads((root / "targets.json").read_text()) == []     # Prometheus may start before the writer
    assert addons.prometheus_url(layout) == "http://198.18.0.1:9090"


def test_a_missing_prometheus_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RUN_ROOT", tmp_path)
    monkeypatch.setattr(addons.shutil, "which", lambda name: None)
    with pytest.raises(ClusterError, match="prometheus is not installed: run scripts/setup.sh"):
        addons.install(Layout("obsunit"), ["prometheus"])
    assert not (tmp_path / "obsunit").exists()                       # nothing made
