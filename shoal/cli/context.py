"""Which local cluster a command acts on, as kind decides it.

In order: `--cluster NAME`; else `$SHOAL_CLUSTER`; else the one cluster that
is up; else `default` (what `shoal local up` makes). With several clusters up
and none named, the command refuses and lists them.
"""

from __future__ import annotations

import argparse
import os

from shoal import store
from shoal.local.layout import cluster_name

ENVIRONMENT = "SHOAL_CLUSTER"
DEFAULT = "default"


class AmbiguousCluster(store.StoreError):
    pass


def clusters_up() -> list[str]:
    """The local clusters that have a store under the run root, by name."""
    if not store.RUN_ROOT.is_dir():
        return []
    names = []
    for entry in sorted(store.RUN_ROOT.iterdir()):
        try:
            if store.Store(entry.name).exists():
                names.append(entry.name)
        except store.ClusterNameInvalid:
            continue  # not a cluster's directory
    return names


def current(explicit: str | None) -> str:
    if explicit:
        return explicit
    named = os.environ.get(ENVIRONMENT, "").strip()
    if named:
        return store.check_cluster_name(named)
    up = clusters_up()
    if len(up) == 1:
        return up[0]
    if len(up) > 1:
        raise AmbiguousCluster(f"several local clusters are up ({', '.join(up)}); choose one with --cluster NAME "
                               f"or {ENVIRONMENT}=NAME")
    return DEFAULT


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", type=cluster_name, default=None,
                        help=f"local cluster name (default: ${ENVIRONMENT}, else the only cluster up, "
                             f"else {DEFAULT})")


def resolve(args: argparse.Namespace) -> str:
    """`args.cluster` made definite (it stays so for the rest of the command); SystemExit(2) when ambiguous."""
    try:
        args.cluster = current(getattr(args, "cluster", None))
    except (AmbiguousCluster, store.ClusterNameInvalid) as e:
        raise SystemExit(f"shoal: error: {e}") from None
    return args.cluster
