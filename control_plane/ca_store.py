"""Where the CA's roots live: files in the local cluster, a Secret in Kubernetes,
or files given on the command line.

Each store loads `(signing root, extra trusted roots)` or None when it holds
nothing yet; `load_or_create` generates a root on first start and saves it.

File layout (local cluster: `/run/shoal/<cluster>/ca/`):
- `ca.crt`, `ca.key` (mode 0600): the signing root;
- `bundle.pem`: every trusted root, the signing one included. It is public:
  proxies read it to verify the control plane's own certificate.

Kubernetes: Secret `shoal-ca` in `shoal-system` with `ca.crt`, `ca.key` and
`bundle.pem`; the bundle is also published in ConfigMap `shoal-ca-root-cert`
(key `root-cert.pem`) for proxies, which must never read the Secret.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from control_plane.ca import CaError, Root, RootInvalid, generate_root
from shoal import identity, log

logger = log.get("shoal.control_plane.ca")

SECRET_NAMESPACE = "shoal-system"
SECRET_NAME = "shoal-ca"
BUNDLE_CONFIGMAP = "shoal-ca-root-cert"

Loaded = tuple[Root, list[x509.Certificate]]


class RootStore(Protocol):
    def load(self) -> Loaded | None: ...

    def save(self, signer: Root, trusted: list[x509.Certificate]) -> None:
        """Replaces what is stored (rotation)."""

    def create(self, signer: Root, trusted: list[x509.Certificate]) -> bool:
        """Stores a first root; False when another process stored one first."""


def _bundle(pem: bytes | None, source: str) -> list[x509.Certificate]:
    if not pem:
        return []
    try:
        return identity.load_certificates(pem)
    except identity.IdentityError as e:
        raise RootInvalid(f"{source}: trust bundle unreadable: {e}") from None


class FileRootStore:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.cert_path, self.key_path = self.dir / "ca.crt", self.dir / "ca.key"
        self.bundle_path = self.dir / "bundle.pem"

    def load(self) -> Loaded | None:
        if not self.cert_path.exists() and not self.key_path.exists():
            return None
        if not (self.cert_path.exists() and self.key_path.exists()):
            raise RootInvalid(f"{self.dir}: one of ca.crt/ca.key is missing; restore it or remove both to "
                              "generate a new root (every workload certificate will be reissued)")
        root = Root.from_pem(self.cert_path.read_bytes(), self.key_path.read_bytes(), source=str(self.dir))
        bundle = _bundle(self.bundle_path.read_bytes() if self.bundle_path.exists() else None, str(self.bundle_path))
        return root, bundle

    def save(self, signer: Root, trusted: list[x509.Certificate]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.key_path, signer.key_pem(), 0o600)
        _write_atomic(self.cert_path, signer.chain_pem(), 0o644)
        _write_atomic(self.bundle_path, identity.certificates_pem(trusted), 0o644)

    def create(self, signer: Root, trusted: list[x509.Certificate]) -> bool:
        self.save(signer, trusted)  # one control plane per local cluster: no race to lose
        return True


class GivenFilesRootStore:
    """`--ca-cert/--ca-key`: read-only; the operator owns these files."""

    def __init__(self, cert_path: Path, key_path: Path, bundle_path: Path | None = None) -> None:
        self.cert_path, self.key_path, self.bundle_path = Path(cert_path), Path(key_path), bundle_path

    def load(self) -> Loaded:
        try:
            cert_pem, key_pem = self.cert_path.read_bytes(), self.key_path.read_bytes()
        except OSError as e:
            raise RootInvalid(f"cannot read the CA files given with --ca-cert/--ca-key: {e}") from None
        root = Root.from_pem(cert_pem, key_pem, source=f"{self.cert_path} / {self.key_path}")
        bundle = _bundle(Path(self.bundle_path).read_bytes(), str(self.bundle_path)) if self.bundle_path else []
        return root, bundle

    def save(self, signer: Root, trusted: list[x509.Certificate]) -> None:
        raise CaError("the CA was given as files (--ca-cert/--ca-key); rotate it by replacing them and restarting")

    create = save


class KubeSecretRootStore:
    """Secret `shoal-ca` in `shoal-system`, through a kubernetes `CoreV1Api` (passed in)."""

    def __init__(self, core_v1, namespace: str = SECRET_NAMESPACE, name: str = SECRET_NAME) -> None:
        self.api, self.namespace, self.name = core_v1, namespace, name

    def load(self) -> Loaded | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.api.read_namespaced_secret(self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise CaError(f"cannot read Secret {self.namespace}/{self.name}: {e.status} {e.reason}; "
                          "check the control plane's RBAC (get/create secrets in shoal-system)") from None
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        source = f"Secret {self.namespace}/{self.name}"
        if "ca.crt" not in data or "ca.key" not in data:
            raise RootInvalid(f"{source} lacks ca.crt or ca.key")
        return Root.from_pem(data["ca.crt"], data["ca.key"], source=source), _bundle(data.get("bundle.pem"), source)

    def create(self, signer: Root, trusted: list[x509.Certificate]) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.create_namespaced_secret(self.namespace, self._secret(signer, trusted))
        except ApiException as e:
            if e.status == 409:
                return False  # another replica created it first; use theirs
            raise CaError(f"cannot create Secret {self.namespace}/{self.name}: {e.status} {e.reason}; "
                          "check the control plane's RBAC (create secrets in shoal-system)") from None
        self._publish_bundle(trusted)
        return True

    def save(self, signer: Root, trusted: list[x509.Certificate]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.replace_namespaced_secret(self.name, self.namespace, self._secret(signer, trusted))
        except ApiException as e:
            raise CaError(f"cannot replace Secret {self.namespace}/{self.name}: {e.status} {e.reason}") from None
        self._publish_bundle(trusted)

    def _secret(self, signer: Root, trusted: list[x509.Certificate]):
        from kubernetes import client

        bundle = identity.certificates_pem(trusted)
        data = {"ca.crt": signer.chain_pem(), "ca.key": signer.key_pem(), "bundle.pem": bundle}
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace,
                                         labels={"app.kubernetes.io/part-of": "shoal"}),
            type="Opaque", data={k: base64.b64encode(v).decode() for k, v in data.items()})
        return body

    def _publish_bundle(self, trusted: list[x509.Certificate]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        bundle = identity.certificates_pem(trusted)
        configmap = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=BUNDLE_CONFIGMAP, namespace=self.namespace),
                                       data={"root-cert.pem": bundle.decode()})
        try:
            self.api.create_namespaced_config_map(self.namespace, configmap)
        except ApiException as e:
            if e.status != 409:
                raise CaError(f"cannot publish ConfigMap {self.namespace}/{BUNDLE_CONFIGMAP}: {e.status}") from None
            self.api.replace_namespaced_config_map(BUNDLE_CONFIGMAP, self.namespace, configmap)


def load_or_create(store: RootStore, trust_domain: str) -> Loaded:
    """The stored roots, or a new root, stored, on first start.

    In Kubernetes two replicas may race to create the Secret: the loser's
    create gets 409 and it loads the winner's root instead of replacing it.
    """
    loaded = store.load()
    if loaded is not None:
        return loaded
    root = generate_root(trust_domain)
    if store.create(root, [root.cert]):
        logger.info("generated a new mesh root", fingerprint=root.fingerprint[:16], trust_domain=trust_domain)
        return root, [root.cert]
    loaded = store.load()
    if loaded is None:
        raise CaError("the CA root was created by another replica but cannot be read back")
    return loaded


def rotate(store: RootStore, trust_domain: str) -> tuple[Root, list[x509.Certificate]]:
    """Stores a new signing root; the old ones stay in the bundle until `retire`d.

    A running control plane re-reads its RootStore and signs with the new root
    from then on; leaves of the old root keep verifying during the overlap.
    """
    loaded = store.load()
    if loaded is None:
        raise CaError("there is no CA root to rotate yet; start the control plane once first")
    old, trusted = loaded
    new = generate_root(trust_domain)
    bundle = [new.cert, *[c for c in [*old.anchors, *trusted] if c != new.cert]]
    bundle = list({c.fingerprint(hashes.SHA256()): c for c in bundle}.values())
    store.save(new, bundle)
    return new, bundle


def retire(store: RootStore, fingerprint: str) -> list[x509.Certificate]:
    """Removes a root (given by the start of its SHA-256 fingerprint) from the bundle."""
    loaded = store.load()
    if loaded is None:
        raise CaError("there is no CA root yet, so nothing to retire; the control plane creates one "
                      "when it first starts")
    signer, trusted = loaded
    matches = [c for c in trusted if c.fingerprint(hashes.SHA256()).hex().startswith(fingerprint.lower())]
    if len(fingerprint) < 8 or len(matches) != 1:
        raise CaError(f"fingerprint {fingerprint!r} must name exactly one trusted root (give at least 8 hex digits)")
    if matches[0] in signer.anchors:
        raise CaError("that is the signing root; rotate to a new root first")
    remaining = [c for c in trusted if c != matches[0]]
    store.save(signer, remaining)
    return remaining


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
