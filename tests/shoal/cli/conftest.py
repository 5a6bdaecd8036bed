"""CLI tests against a local cluster's store alone (no daemon, no root): what `apply`, `get`, `label`
and `check --only config` read and write is the store, under a SHOAL_RUN_ROOT of the test's own."""

from __future__ import annotations

import pytest

from support.cli import shoal
from support.store_cluster import store_only

CLUSTER = "clistore"


@pytest.fixture
def store(tmp_path, monkeypatch):
    return store_only(tmp_path, monkeypatch, CLUSTER)


def local(*args: str, input: str | None = None, check: bool = True):
    """`shoal local VERB --cluster clistore ARGS...`."""
    verb, *rest = args
    return shoal("local", verb, "--cluster", CLUSTER, *rest, input=input, check=check, timeout=60)
