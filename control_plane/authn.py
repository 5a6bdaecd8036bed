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
  Each call is one TokenReview.
- `GuardedAuthenticator`: how the gRPC services ask either of them, from the
  event loop. A flood of bad tokens must not stall the control plane, so
  verdicts are cached by the token's digest (a refusal briefly, a success a
  little longer), calls for one token share one check, and checks are
  bounded: a few at once, in threads of their own, a bounded queue behind
  them, and beyond it an immediate `AuthenticationUnavailable` (the caller
  answers UNAVAILABLE, and the client retries after its backoff).

Tokens are compared as SHA-256 digests, and never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from control_plane.errors import ControlPlaneError
from shoal import kube_client, tokens


# The audience of the tokens proxies present (`serviceAccountToken.audience` of their
# projected volume, in daemonset/ and in the waypoint Deployments the controller makes).
TOKEN_AUDIENCE = "shoal"


class AuthenticationFailed(ControlPlaneError):
    """The token is missing, unknown or invalid; the message says which, never the token."""


class AuthenticationUnavailable(AuthenticationFailed):
    """The token could not be checked now (too many checks under way, or the API server failed);
    not a verdict on the token: the caller should retry shortly."""


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

    def __init__(self, authentication_v1, core_v1, *, node_service_accounts: frozenset[tuple[str, str]] =
                 frozenset({("shoal-system", "shoal-node")}), audiences: tuple[str, ...] = (TOKEN_AUDIENCE,)) -> None:
        if not audiences:
            raise ValueError("TokenReview needs shoal's audience: with none, any pod's API token would pass")
        self.auth_api, self.core_api = authentication_v1, core_v1
        self.node_service_accounts = node_service_accounts
        self.audiences = tuple(audiences)

    def authenticate(self, token: str | None) -> Caller:
        """One TokenReview (blocking); callers go through GuardedAuthenticator, which caches and bounds them."""
        if not token:
            raise AuthenticationFailed("no credential: send `authorization: Bearer <service-account token>`")
        return self._review(token)

    def _review(self, token: str) -> Caller:
        from kubernetes import client

        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=list(self.audiences)))
        try:
            # 429/5xx with Retry-After are asked again (kube_client.call); other failures are no verdict.
            result = kube_client.call(lambda: self.auth_api.create_token_review(review), "TokenReview",
                                      attempts=3, max_wait=5.0)
        except kube_client.KubeError as e:
            check = {401: "the control plane's own credentials (its service-account token)",
                     403: "the control plane's RBAC (create tokenreviews.authentication.k8s.io)"}.get(
                         e.status, "that the API server is reachable and healthy")
            raise AuthenticationUnavailable(f"{e}; check {check}") from None
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
                    node = kube_client.call(lambda: self.core_api.read_namespaced_pod(pod, namespace),
                                            f"reading pod {namespace}/{pod}", attempts=3, max_wait=5.0
                                            ).spec.node_name or ""
                except kube_client.KubeNotFound:
                    node = ""       # the pod is gone: the token is bound to nothing that runs
                except kube_client.KubeError as e:
                    raise AuthenticationUnavailable(f"{e}; the node of the token's pod cannot be checked now, "
                                                    "check the control plane's RBAC (get pods)") from None
        if not node:
            raise AuthenticationFailed(f"the token of {namespace}/{service_account} is not bound to a node; "
                                       "mount a projected service-account token (bound tokens carry the node)")
        return Caller(node=node)


@dataclass(frozen=True)
class _Verdict:
    until: float               # on the guard's clock
    caller: Caller | None      # None: refused, for `refusal`
    refusal: str = ""


class GuardedAuthenticator:
    """An Authenticator as the event loop asks it: verdicts cached, checks bounded.

    - A verdict is cached under the token's SHA-256 digest (never the token):
      a success for `success_seconds`, a refusal for `failure_seconds` (briefly:
      a token added to the bootstrap file meanwhile passes once it lapses). A
      check that could not be made (AuthenticationUnavailable) is not cached.
    - Calls for one token while it is being checked wait for that one check.
    - At most `concurrency` checks run at once, in threads of their own (a flood
      never holds the default executor that the rest of the process uses), and
      at most `backlog` more wait for a turn; beyond that a call is refused at
      once with AuthenticationUnavailable.
    - The cache holds at most `max_entries` verdicts; the oldest go first.
    """

    def __init__(self, inner: Authenticator, *, concurrency: int = 4, backlog: int = 64,
                 success_seconds: float = 30.0, failure_seconds: float = 10.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.concurrency, self.backlog = concurrency, backlog
        self.success_seconds, self.failure_seconds = success_seconds, failure_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._verdicts: OrderedDict[str, _Verdict] = OrderedDict()
        self._checking: dict[str, asyncio.Future] = {}
        self._turns: asyncio.Semaphore | None = None      # made in the loop that first uses it
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="shoal-authn")

    async def authenticate(self, token: str | None) -> Caller:
        key = _digest(token or "")
        verdict = self._cached(key)
        if verdict is None:
            check = self._checking.get(key)
            if check is None:
                if len(self._checking) >= self.concurrency + self.backlog:
                    raise AuthenticationUnavailable(
                        f"too many credentials being checked ({len(self._checking)}); retry shortly")
                check = asyncio.ensure_future(self._check(key, token))
                self._checking[key] = check
                check.add_done_callback(lambda done: self._checked(key, done))
            verdict = await asyncio.shield(check)   # a caller that gives up leaves the check to the others
        if verdict.caller is None:
            raise AuthenticationFailed(verdict.refusal)
        return verdict.caller

    def _checked(self, key: str, check: asyncio.Future) -> None:
        self._checking.pop(key, None)
        if not check.cancelled():
            check.exception()   # retrieved here too, for when every caller gave up waiting

    def _cached(self, key: str) -> _Verdict | None:
        verdict = self._verdicts.get(key)
        if verdict is not None and verdict.until <= self.clock():
            del self._verdicts[key]
            return None
        return verdict

    async def _check(self, key: str, token: str | None) -> _Verdict:
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.concurrency)
        async with self._turns:
            try:
                caller = await asyncio.get_running_loop().run_in_executor(self._threads, self.inner.authenticate,
                                                                          token)
            except AuthenticationUnavailable:
                raise
            except AuthenticationFailed as e:
                verdict = _Verdict(self.clock() + self.failure_seconds, None, str(e))
            else:
                verdict = _Verdict(self.clock() + self.success_seconds, caller)
        self._verdicts[key] = verdict
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > self.max_entries:
            self._verdicts.popitem(last=False)
        return verdict

    @property
    def cached(self) -> int:
        return len(self._verdicts)
