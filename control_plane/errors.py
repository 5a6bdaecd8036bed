"""The control plane's one exception hierarchy.

Every error a control-plane module raises on purpose derives from
`ControlPlaneError` (itself a `shoal.errors.ShoalError`); its message says
what happened and what to check. The config sources' errors are
`control_plane.sources.SourceError`, a ControlPlaneError too.
Foreign exceptions (grpc, kubernetes, cryptography) are translated where
they are caught. (The translator's findings are data, not exceptions.)
"""

from shoal.errors import ShoalError


class ControlPlaneError(ShoalError):
    """Base of the control plane's errors."""


class CaError(ControlPlaneError):
    """Base of the CA's errors (control_plane.ca, .rotation, .ca_store)."""
