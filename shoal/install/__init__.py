"""Installing the mesh on a Kubernetes cluster: `shoal install` and `shoal uninstall`.

- `kustomize`: renders `daemonset/` as `kubectl kustomize` does, in Python.
- `plan`: decides, from what is rendered and what the cluster has, what to
  apply and what to delete, in which order (no I/O).
- `cluster`: carries a plan out with the kubernetes client.
"""

from __future__ import annotations

from shoal.errors import ShoalError


class InstallError(ShoalError):
    """Rendering or applying the mesh's manifests failed; the message says what to check."""
