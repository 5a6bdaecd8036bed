"""The one boundary between shoal and the Kubernetes API: requests, errors, retries.

- `KubeError` and its subclasses are what every part sees of a failed API
  call (the `kubernetes` client's ApiException and urllib3's errors are
  translated here, and only here). A message says what was being done, what
  the server answered, and what to check (credentials for 401, RBAC for
  403, the CRD for a 404 on a whole kind).
- `call(fn, doing=...)` runs one call of the generated client (or of `request`)
  and retries it as client-go does: a 429 or 5xx that carries `Retry-After`
  is tried again after that delay, up to `attempts` times; any other failure
  is raised at once, translated.
- `request(api_client, method, path, ...)`: a raw request (paths of any
  group/version, watch streams), through the client's own
  `param_serialize`/`call_api` (kubernetes >= 37), with its credentials.
- `Backoff`: the delays of a loop that retries for ever (a watch), doubling
  up to a ceiling, or the server's Retry-After when it gave one.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from shoal.errors import ShoalError

T = TypeVar("T")

HINTS = {
    401: "the API server refused the credentials: check the service-account token (in a pod) or the kubeconfig",
    403: "the service account lacks a permission: check shoal's ClusterRole (daemonset/rbac.yaml)",
    429: "the API server is throttling requests (API priority and fairness); it will be tried again",
}


class KubeError(ShoalError):
    """A Kubernetes API call failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class KubeUnreachable(KubeError):
    """No answer from the API server (connection refused, reset, timed out)."""


class KubeApiError(KubeError):
    """The API server answered with an error status."""


class KubeUnauthorized(KubeApiError):
    """401."""


class KubeForbidden(KubeApiError):
    """403: RBAC."""


class KubeNotFound(KubeApiError):
    """404: the object, or (for a list) the whole kind: its CRD is not installed."""


class KubeConflict(KubeApiError):
    """409: already exists, or changed since read."""


class KubeGone(KubeApiError):
    """410: the resourceVersion is too old; list again."""


class KubeUnavailable(KubeApiError):
    """429 or 5xx: the server is busy or failing; worth trying again later."""


_BY_STATUS = {401: KubeUnauthorized, 403: KubeForbidden, 404: KubeNotFound, 409: KubeConflict, 410: KubeGone,
              429: KubeUnavailable}


def _retry_after(headers) -> float | None:
    value = (headers or {}).get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def api_error(status: int, body: bytes | str | None, doing: str, headers=None) -> KubeApiError:
    """The KubeApiError for an answer: the Status message from the body, and what to check."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        parsed = json.loads(text)
        message = parsed.get("message") or parsed.get("reason") or text
    except (ValueError, AttributeError):
        message = text
    message = " ".join(str(message).split())[:300]
    cls = _BY_STATUS.get(status) or (KubeUnavailable if status >= 500 else KubeApiError)
    hint = HINTS.get(status) or ("the API server failed; it will be tried again" if status >= 500 else "")
    return cls(f"{doing}: HTTP {status} from the API server: {message}" + (f"; {hint}" if hint else ""),
               status, _retry_after(headers))


def translate(exc: BaseException, doing: str) -> KubeError:
    """A KubeError for whatever the kubernetes client raised."""
    if isinstance(exc, KubeError):
        return exc
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        return api_error(status, getattr(exc, "body", None) or getattr(exc, "reason", ""), doing,
                         getattr(exc, "headers", None))
    return KubeUnreachable(f"{doing}: no answer from the API server ({type(exc).__name__}: {exc}); check that it "
                           "is reachable (KUBERNETES_SERVICE_HOST in a pod, the kubeconfig's server outside)")


def retryable(error: KubeError) -> bool:
    """As client-go: a 429 or 5xx that says when to come back."""
    return isinstance(error, KubeUnavailable) and error.retry_after is not None


def call(fn: Callable[[], T], doing: str, *, attempts: int = 5, sleep: Callable[[float], None] = time.sleep,
         max_wait: float = 30.0) -> T:
    """`fn()`, retried while the server answers 429/5xx with Retry-After; KubeError otherwise."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - translated here, the one boundary
            error = translate(exc, doing)
            if attempt == attempts or not retryable(error):
                raise error from None
            sleep(min(error.retry_after, max_wait))
    raise AssertionError("unreachable")


def request(api_client, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body=None,
            content_type: str = "application/json", stream: bool = False, timeout: tuple[float, float] = (10.0, 60.0),
            doing: str = ""):
    """One raw request: the parsed JSON body (or, with `stream`, the open urllib3 response). KubeError
    on an error status or no answer; not retried (wrap it in `call`)."""
    doing = doing or f"{method} {path}"
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    try:
        method, url, headers, body, post = api_client.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"])
        response = api_client.call_api(method, url, header_params=headers, body=body, post_params=post,
                                       _request_timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - urllib3's errors: no answer
        raise translate(exc, doing) from None
    raw = response.response
    if response.status >= 400:
        data = raw.read() if stream else raw.data
        raw.release_conn()
        raise api_error(response.status, data, doing, raw.headers)
    if stream:
        return raw
    data = raw.data
    raw.release_conn()
    return json.loads(data) if data else {}


@dataclass(frozen=True)
class Backoff:
    """Delays for a loop that retries for ever: initial * factor**n up to maximum, with jitter;
    the server's Retry-After when it gave one."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, failures: int, retry_after: float | None = None, rand: Callable[[], float] = random.random) -> float:
        if retry_after is not None:
            return min(retry_after, self.maximum)
        base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        return base * (1 - self.jitter + 2 * self.jitter * rand())
