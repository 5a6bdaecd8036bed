"""The local cluster's tests share one 2-node cluster (iptables redirect), up for this package only."""

from __future__ import annotations

import pytest

from support.cluster import running_cluster
from support.root import IS_ROOT


@pytest.fixture(scope="package")
def cluster():
    if not IS_ROOT:
        pytest.skip("needs root: creates network namespaces, veths, cgroups")
    with running_cluster("t") as c:
        yield c
