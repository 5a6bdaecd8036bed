"""Who is calling: bearer tokens -> `Caller`.

- `LocalAuthenticator` (local cluster): node bootstrap tokens from
  `/run/shoal/<cluster>/bootstrap-tokens.json` (`{"<token>": "node<i>"}`,
  re-read when the file changes) and service-account tokens minted with the
  cluster's key (`shoal.tokens`).
- `KubeAuthenticator` (Kubernetes): TokenReview, for shoal's own audience
  (`TOKEN_AUDIENCE`): proxies present a projected service-account token
  requested for it, and the review must say the token is good for it. A
  pod's default token, whose audience is the API server, is refused, and a
  token shoal accepts is refused by the API server. A token of one of the
  ztunnel's service accounts is a node credential, bound to the node named in
  the token's `authentication.kubernetes.io/node-name` extra (or, failing
  that, the node of the pod named in `.../pod-name`). Any other
  service-account token is a workload credential for that service account.
  Reviews are cached briefly, keyed by a digest of the token.

Tokens are compared as SHA-256 digests, and never logged.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from control_plane.errors import ControlPlaneError
from shoal import tokens


# The audience of the tokens proxies present (`serviceAccountToken.audience` of their
# projected volume, in daemonset/ and in the waypoint Deployments the controller makes).
TOKEN_AUDIENCE = "shoal"


class AuthenticationFailed(ControlPlaneError):
    """The token is missing, unknown or invalid; the message says which, never the token."""


@dataclass(frozen=True)
class Caller:
    node: str = ""                 # a node credential (ztunnel)
    namespace: str = ""            # a service-account credential (waypoint)
    service_account: str = ""

    @property
    def is_node(self) -> bool:
        return bool(self.node)

    def describe(self) -> str:
        return f"node {self.node}" if self.node else f"serviceaccount {self.namespace}/{self.service_account}"


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Caller: ...


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LocalAuthenticator:
    def __init__(self, bootstrap_tokens: Path, token_key: bytes) -> None:
        self.path = Path(bootstrap_tokens)
        self.key = token_key
        self._mtime: float | None = None
        self._nodes: dict[str, str] = {}

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._nodes, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # being rewritten; keep the previous map
        self._nodes = {_digest(t): str(n) for t, n in raw.items()} if isinstance(raw, dict) else {}
        self._mtime = mtime

    def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise AuthenticationFailed("no credential: send `authorization: Bearer <token>` metadata "
                                       "(a node's bootstrap token, or a service-account token)")
        sa = tokens.verify_service_account_token(self.key, token)
        if sa is not None:
            return Caller(namespace=sa[0], service_account=sa[1])
        self._reload()
        node = self._nodes.get(_digest(token))
        if node is None:
            raise AuthenticationFailed(f"unknown token (sha256 {tokens.fingerprint(token)}): not in {self.path} "
                                       "and not a valid service-account token of this cluster")
        return Caller(node=node)


class KubeAuthenticator:
    NODE_EXTRA = "authentication.kubernetes.io/node-name"
    POD_EXTRA = "authentication.kubernetes.io/pod-name"
    CACHE_SECONDS = 30.0

    def __init__(self, authentication_v1, core_v1, *, node_service_accounts: frozenset[tuple[str, str]] =
                 frozenset({("shoal-system", "shoal-node")}), audiences: tuple[str, ...] = (TOKEN_AUDIENCE,),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not audiences:
            raise ValueError("TokenReview needs shoal's audience: with none, any pod's API token would pass")
        self.auth_api, self.core_api = authentication_v1, core_v1
        self.node_service_accounts = node_service_accounts
        self.audiences = tuple(audiences)
        self.clock = clock
        self._cache: dict[str, tuple[float, Caller]] = {}

    def authenticate(self, token: str | None) -> Caller:
        if not token:
            raise AuthenticationFailed("no credential: send `authorization: Bearer <service-account token>`")
        digest = _digest(token)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > self.clock():
            return hit[1]
        caller = self._review(token)
        self._cache[digest] = (self.clock() + self.CACHE_SECONDS, caller)
        if len(self._cache) > 10_000:
            now = self.clock()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return caller

    def _review(self, token: str) -> Caller:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=list(self.audiences)))
        try:
            result = self.auth_api.create_token_review(review)
        except ApiException as e:
            raise AuthenticationFailed(f"TokenReview failed: {e.status} {e.reason}; check the control plane's "
                                       "RBAC (create tokenreviews)") from None
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            reason = getattr(status, "error", None) or "not authenticated"
            raise AuthenticationFailed(f"token rejected by TokenReview (sha256 {tokens.fingerprint(token)}): {reason}; "
                                       f"proxies must present a projected service-account token with the "
                                       f"audience {self.audiences[0]!r}")
        # An authenticator that ignores audiences answers with none: then the token was checked
        # only against the API server's audience, and must not pass (TokenReviewStatus.audiences).
        granted = set(status.audiences or ()) & set(self.audiences)
        if not granted:
            raise AuthenticationFailed(f"the token (sha256 {tokens.fingerprint(token)}) is not for shoal: TokenReview "
                                       f"did not confirm the audience {self.audiences[0]!r} (it answered "
                                       f"{list(status.audiences or [])}); mount a projected service-account token "
                                       f"with `audience: {self.audiences[0]}`")
        parts = (status.user.username or "").split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise AuthenticationFailed(f"{status.user.username!r} is not a service account; "
                                       "only service-account tokens are accepted")
        namespace, service_account = parts[2], parts[3]
        if (namespace, service_account) not in self.node_service_accounts:
            return Caller(namespace=namespace, service_account=service_account)
        extra = status.user.extra or {}
        node = (extra.get(self.NODE_EXTRA) or [""])[0]
        if not node:
            pod = (extra.get(self.POD_EXTRA) or [""])[0]
            if pod:
                try:
                    node = self.core_api.read_namespaced_pod(pod, namespace).spec.node_name or ""
                except ApiException:
                    node = ""
        if not node:
            raise AuthenticationFailed(f"the token of {namespace}/{service_account} is not bound to a node; "
                                       "mount a projected service-account token (bound tokens carry the node)")
        return Caller(node=node)
