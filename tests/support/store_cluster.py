"""A local cluster's store alone, for CLI tests that need no daemon and no root.

    store = store_only(tmp_path, monkeypatch, unique_name("merge"))

The store lives under a run root of the test's own (SHOAL_RUN_ROOT, which the
`shoal` processes a test starts inherit), with the `default` namespace that
`shoal local up` would make; what `apply`, `get`, `label` or `check --only
config` read and write is this store.
"""

from __future__ import annotations

from shoal.store import Store


def store_only(tmp_path, monkeypatch, cluster: str) -> Store:
    root = tmp_path / "run"
    store = Store(cluster, root=root)
    store.init()
    store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    monkeypatch.setenv("SHOAL_RUN_ROOT", str(root))
    monkeypatch.delenv("SHOAL_CLUSTER", raising=False)
    return store
