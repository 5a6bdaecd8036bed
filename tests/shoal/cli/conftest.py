"""CLI tests against a local cluster's store alone (no daemon, no root): what `apply`, `get`, `label`
and `check --only config` read and write is the store, under a SHOAL_RUN_ROOT of the test's own.

The modules that need a running cluster (root) share one, `running`: each puts its objects in a namespace
of its own and takes them out again when it is done, so that none sees another's."""

from __future__ import annotations

from typing import Iterator

import pytest

from support.cli import shoal
from support.cluster import LocalCluster, running_cluster
from support.store_cluster import store_only

CLUSTER = "clistore"


@pytest.fixture
def store(tmp_path, monkeypatch):
    return store_only(tmp_path, monkeypatch, CLUSTER)


RUNNING_NODES = 2


@pytest.fixture(scope="package")
def running() -> Iterator[LocalCluster]:
    """A 2-node iptables cluster, up for every module here that asks for it (one `up` and `down`, not three)."""
    with running_cluster("cli", nodes=RUNNING_NODES) as cluster:
        yield cluster


def local(*args: str, input: str | None = None, check: bool = True):
    """`shoal local VERB --cluster clistore ARGS...`."""
    verb, *rest = args
    return shoal("local", verb, "--cluster", CLUSTER, *rest, input=input, check=check, timeout=60)
