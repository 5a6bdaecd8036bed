"""The control plane's one exception hierarchy.

Every error a control-plane module raises on purpose derives from
`ControlPlaneError`; its message says what happened and what to check.
Foreign exceptions (grpc, kubernetes, cryptography) are translated where
they are caught. (The translator's findings are data, not exceptions.)
"""


class ControlPlaneError(Exception):
    """Base of the control plane's errors."""
