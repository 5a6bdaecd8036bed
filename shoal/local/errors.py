"""The local cluster's one exception hierarchy, under `LocalClusterError`.

- `ClusterError`: bringing a cluster up or taking it down (a missing privilege
  or tool, settings that differ from the running cluster's, parts not ready,
  a component's cleanup).
- `KubeletError` (shoal.local.kubelet): a pod's sandbox, cgroup or address.
- `ManifestError` (shoal.local.manifest): a manifest refused whole, with every
  reason.
- `ProxyRulesError` (shoal.local.services): a node's kube-proxy rules could
  not be loaded.

Each message says what happened and what to check.
"""

from __future__ import annotations

from shoal.errors import ShoalError


class LocalClusterError(ShoalError):
    """Base of every error the local cluster raises."""


class ClusterError(LocalClusterError):
    """Bringing the cluster up or taking it down failed."""
