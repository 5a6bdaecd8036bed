"""CLI tests against a local cluster's store alone (no daemon, no root): what `apply`, `get`, `label`
and `check --only config` read and write is the store, under a SHOAL_RUN_ROOT of the test's own."""

from __future__ import annotations

import pytest

from shoal.store import Store

from support.cli import shoal

CLUSTER = "clistore"


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "run"
    s = Store(CLUSTER, root=root)
    s.init()
    s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    monkeypatch.setenv("SHOAL_RUN_ROOT", str(root))  # for the shoal processes the tests start
    monkeypatch.delenv("SHOAL_CLUSTER", raising=False)
    return s


def local(*args: str, input: str | None = None, check: bool = True):
    """`shoal local VERB --cluster clistore ARGS...`."""
    verb, *rest = args
    return shoal("local", verb, "--cluster", CLUSTER, *rest, input=input, check=check, timeout=60)
