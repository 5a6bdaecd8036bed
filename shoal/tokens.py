"""The credentials a proxy presents to the control plane, as gRPC call metadata.

Every call to the control plane (Config.Watch, Certificates.Sign) carries
`authorization: Bearer <token>`, over TLS. Which token:

- A ztunnel presents its *node* credential. In Kubernetes that is its
  service-account token (checked by TokenReview, bound to its node). In the
  local cluster it is the per-node bootstrap token that `shoal local up`
  writes to `/run/shoal/<cluster>/node<i>/token` (`read_token`).
- A waypoint presents a *service-account* credential for its own identity.
  In Kubernetes, its projected service-account token. In the local cluster,
  `local_service_account_token(run_dir, namespace, service_account)` mints
  one: an HMAC of the namespace and service account under the cluster's key
  `/run/shoal/<cluster>/ca/token.key`, which the control plane creates on its
  first start (root-only, like every file of the local cluster).

Tokens are never logged; `fingerprint()` gives a short digest to log instead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from shoal.errors import ShoalError

LOCAL_SA_PREFIX = "shoal-sa1"
TOKEN_KEY_FILE = Path("ca") / "token.key"


class TokenError(ShoalError):
    """A token is missing, unreadable or malformed."""


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def bearer(metadata_pairs) -> str | None:
    """The bearer token in call metadata, or None."""
    for key, value in metadata_pairs or ():
        if key.lower() == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip() or None
    return None


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def read_token(path: Path | str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise TokenError(f"cannot read the token at {path}: {e.strerror}; is the cluster up "
                         "(`shoal local up`) and the path right?") from None
    if not token:
        raise TokenError(f"the token file {path} is empty; it must hold the node's bootstrap token "
                         "(`shoal local up` writes it) or a projected service-account token")
    return token


def token_key(run_dir: Path, create: bool = False) -> bytes:
    """The local cluster's key for service-account tokens (created by the control plane)."""
    path = Path(run_dir) / TOKEN_KEY_FILE
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise TokenError(f"cannot read the service-account token key {path}: {e}; "
                         "it is created when the control plane first starts") from None


def _mac(key: bytes, namespace: str, service_account: str) -> str:
    return hmac.new(key, f"{namespace}/{service_account}".encode(), hashlib.sha256).hexdigest()


def mint_service_account_token(key: bytes, namespace: str, service_account: str) -> str:
    return f"{LOCAL_SA_PREFIX}:{namespace}:{service_account}:{_mac(key, namespace, service_account)}"


def local_service_account_token(run_dir: Path, namespace: str, service_account: str) -> str:
    return mint_service_account_token(token_key(run_dir), namespace, service_account)


def verify_service_account_token(key: bytes, token: str) -> tuple[str, str] | None:
    """(namespace, service account) for a valid local service-account token, else None."""
    parts = token.split(":")
    if len(parts) != 4 or parts[0] != LOCAL_SA_PREFIX:
        return None
    _, namespace, service_account, mac = parts
    if not hmac.compare_digest(mac, _mac(key, namespace, service_account)):
        return None
    return namespace, service_account
