"""The node agent's one exception hierarchy. Messages say what happened and what to check."""

from __future__ import annotations

import errno as _errno
import os

from shoal.errors import ShoalError


class NodeAgentError(ShoalError):
    """Base of every error the node agent raises."""


class SourceError(NodeAgentError):
    """Listing or watching pods and namespaces failed (the local store or the Kubernetes API)."""


class PrerequisiteMissing(NodeAgentError):
    """Something the chosen redirect mode needs is not on this node."""

    def __init__(self, what: str, detail: str, remedy: str) -> None:
        self.what, self.detail, self.remedy = what, detail, remedy
        super().__init__(f"{what} is missing: {detail}; {remedy}")


class RedirectError(NodeAgentError):
    """Installing or removing redirection in a pod failed."""


class BpfError(RedirectError):
    def __init__(self, what: str, code: int) -> None:
        self.code = code
        name = _errno.errorcode.get(code, str(code))
        hint = ""
        if code in (_errno.EPERM, _errno.EACCES):
            hint = "; the node agent needs CAP_BPF and CAP_SYS_ADMIN (run it privileged)"
        super().__init__(f"{what}: {name} ({os.strerror(code)}){hint}")
