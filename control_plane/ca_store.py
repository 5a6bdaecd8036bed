"""Where the CA's roots live: files in the local cluster, a Secret in Kubernetes,
or files given on the command line.

A store holds a `control_plane.rotation.Roots` (the signer, the trusted roots,
a rotation under way) or nothing yet; `load_or_create` generates a root on
first start and stores it. Changes go through `update(change)`, a
read-modify-write that no other writer can interleave (a file lock; the
Secret's resourceVersion), because two writers do meet: the operator's
`--rotate-ca` and the control plane storing a switch or a retirement that
fell due.

File layout (local cluster: `/run/shoal/<cluster>/ca/`):
- `ca.crt`, `ca.key` (mode 0600): the signing root;
- `bundle.pem`: every trusted root, the signing one included. It is public:
  proxies read it to verify the control plane's own certificate;
- during a rotation, `incoming.crt` and `incoming.key` (0600): the new root,
  trusted and not signing yet; `rotation.json`: since when it is trusted,
  and when rotated-out roots leave the bundle;
- `roots.lock`: taken by readers (shared) and writers (exclusive).

Kubernetes: Secret `shoal-ca` in `shoal-system` with the same keys; the bundle
is also published in ConfigMap `shoal-ca-root-cert` (key `root-cert.pem`) for
proxies, which must never read the Secret.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Callable, Iterator, Protocol

from cryptography import x509

from control_plane import rotation
from control_plane.ca import CaError, Root, RootInvalid, generate_root, utc_now
from control_plane.rotation import Roots
from shoal import identity, log

logger = log.get("shoal.control_plane.ca")

SECRET_NAMESPACE = "shoal-system"
SECRET_NAME = "shoal-ca"
BUNDLE_CONFIGMAP = "shoal-ca-root-cert"
UPDATE_ATTEMPTS = 5

Change = Callable[[Roots], Roots]


class RootStore(Protocol):
    def load(self) -> Roots | None: ...

    def create(self, roots: Roots) -> bool:
        """Stores a first root; False when another process stored one first."""

    def update(self, change: Change) -> Roots:
        """Stores `change(stored)` with no other write in between; returns it. CaError when empty."""


def _bundle(pem: bytes | None, source: str) -> list[x509.Certificate]:
    if not pem:
        return []
    try:
        return identity.load_certificates(pem)
    except identity.IdentityError as e:
        raise RootInvalid(f"{source}: trust bundle unreadable: {e}") from None


def _decode(files: dict[str, bytes], source: str) -> Roots:
    """Roots from the stored keys (ca.crt, ca.key, bundle.pem, incoming.crt, incoming.key, rotation.json)."""
    signer = Root.from_pem(files["ca.crt"], files["ca.key"], source=source)
    incoming = None
    if "incoming.crt" in files or "incoming.key" in files:
        if not ("incoming.crt" in files and "incoming.key" in files):
            raise RootInvalid(f"{source}: one of incoming.crt/incoming.key is missing; cancel the rotation with "
                              "--retire-ca <its fingerprint>, or restore the file")
        incoming = Root.from_pem(files["incoming.crt"], files["incoming.key"], source=f"{source} (incoming root)")
    try:
        schedule = json.loads(files.get("rotation.json") or b"{}")
        since = schedule.get("incoming_since")
        since = dt.datetime.fromisoformat(since) if since else None
        retiring = tuple(sorted(((fp, dt.datetime.fromisoformat(at)) for fp, at in
                                 (schedule.get("retiring") or {}).items()), key=lambda r: (r[1], r[0])))
    except (ValueError, TypeError, AttributeError) as e:
        raise RootInvalid(f"{source}: rotation.json unreadable: {e}") from None
    if incoming is not None and since is None:
        raise RootInvalid(f"{source}: an incoming root without `incoming_since` in rotation.json; cancel the "
                          "rotation with --retire-ca <its fingerprint> and begin it again")
    trusted = rotation.unique([*_bundle(files.get("bundle.pem"), f"{source} bundle.pem"), *signer.anchors,
                                *(incoming.anchors if incoming else [])])
    roots = Roots(signer, trusted, incoming, since, retiring)
    try:
        roots.check()
    except CaError as e:
        raise RootInvalid(f"{source}: {e}") from None
    return roots


def _encode(roots: Roots) -> dict[str, bytes]:
    files = {"ca.crt": roots.signer.chain_pem(), "ca.key": roots.signer.key_pem(), "bundle.pem": roots.bundle_pem}
    if roots.incoming is not None:
        files["incoming.crt"], files["incoming.key"] = roots.incoming.chain_pem(), roots.incoming.key_pem()
    if roots.incoming is not None or roots.retiring:
        files["rotation.json"] = json.dumps({
            "incoming_since": roots.incoming_since.isoformat() if roots.incoming_since else None,
            "retiring": {fp: at.isoformat() for fp, at in roots.retiring}}, indent=1).encode()
    return files


STORED_FILES = {"ca.key": 0o600, "incoming.key": 0o600, "ca.crt": 0o644, "incoming.crt": 0o644,
                "rotation.json": 0o644, "bundle.pem": 0o644}   # in the order written: the bundle last


class FileRootStore:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.cert_path, self.key_path = self.dir / "ca.crt", self.dir / "ca.key"
        self.bundle_path = self.dir / "bundle.pem"
        self.lock_path = self.dir / "roots.lock"

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        if exclusive:
            self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def load(self) -> Roots | None:
        if not self.dir.is_dir():
            return None
        with self._locked(exclusive=False):
            return self._read()

    def _read(self) -> Roots | None:
        if not self.cert_path.exists() and not self.key_path.exists():
            return None
        if not (self.cert_path.exists() and self.key_path.exists()):
            raise RootInvalid(f"{self.dir}: one of ca.crt/ca.key is missing; restore it or remove both to "
                              "generate a new root (every workload certificate will be reissued)")
        files = {name: (self.dir / name).read_bytes() for name in STORED_FILES if (self.dir / name).exists()}
        return _decode(files, str(self.dir))

    def _write(self, roots: Roots) -> None:
        files = _encode(roots)
        for name, mode in STORED_FILES.items():
            if name in files:
                _write_atomic(self.dir / name, files[name], mode)
            else:
                (self.dir / name).unlink(missing_ok=True)

    def create(self, roots: Roots) -> bool:
        with self._locked(exclusive=True):
            if self._read() is not None:
                return False
            self._write(roots)
            return True

    def update(self, change: Change) -> Roots:
        with self._locked(exclusive=True):
            stored = self._read()
            if stored is None:
                raise CaError(f"there is no CA root in {self.dir} yet; start the control plane once first")
            changed = change(stored)
            if changed != stored:
                self._write(changed)
            return changed


class GivenFilesRootStore:
    """`--ca-cert/--ca-key`: read-only; the operator owns these files."""

    def __init__(self, cert_path: Path, key_path: Path, bundle_path: Path | None = None) -> None:
        self.cert_path, self.key_path, self.bundle_path = Path(cert_path), Path(key_path), bundle_path

    def load(self) -> Roots:
        try:
            cert_pem, key_pem = self.cert_path.read_bytes(), self.key_path.read_bytes()
        except OSError as e:
            raise RootInvalid(f"cannot read the CA files given with --ca-cert/--ca-key: {e}") from None
        root = Root.from_pem(cert_pem, key_pem, source=f"{self.cert_path} / {self.key_path}")
        bundle = _bundle(Path(self.bundle_path).read_bytes(), str(self.bundle_path)) if self.bundle_path else []
        return Roots.first(root, bundle)

    def update(self, change: Change) -> Roots:
        stored = self.load()
        if change(stored) != stored:
            raise CaError("the CA was given as files (--ca-cert/--ca-key); rotate it by replacing them and restarting")
        return stored

    def create(self, roots: Roots) -> bool:
        raise CaError("the CA was given as files (--ca-cert/--ca-key); the control plane does not write them")


class KubeSecretRootStore:
    """Secret `shoal-ca` in `shoal-system`, through a kubernetes `CoreV1Api` (passed in)."""

    def __init__(self, core_v1, namespace: str = SECRET_NAMESPACE, name: str = SECRET_NAME) -> None:
        self.api, self.namespace, self.name = core_v1, namespace, name

    @property
    def source(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    def _get(self):
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.read_namespaced_secret(self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise CaError(f"cannot read {self.source}: {e.status} {e.reason}; check the control plane's RBAC "
                          "(get/create secrets in shoal-system)") from None

    def _roots(self, secret) -> Roots:
        files = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        if "ca.crt" not in files or "ca.key" not in files:
            raise RootInvalid(f"{self.source} lacks ca.crt or ca.key")
        return _decode(files, self.source)

    def load(self) -> Roots | None:
        secret = self._get()
        return None if secret is None else self._roots(secret)

    def create(self, roots: Roots) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.create_namespaced_secret(self.namespace, self._secret(roots))
        except ApiException as e:
            if e.status == 409:
                return False  # another replica created it first; use theirs
            raise CaError(f"cannot create {self.source}: {e.status} {e.reason}; "
                          "check the control plane's RBAC (create secrets in shoal-system)") from None
        self._publish_bundle(roots)
        return True

    def update(self, change: Change) -> Roots:
        from kubernetes.client.exceptions import ApiException

        for _ in range(UPDATE_ATTEMPTS):
            secret = self._get()
            if secret is None:
                raise CaError(f"there is no {self.source} yet; start the control plane once first")
            stored = self._roots(secret)
            changed = change(stored)
            if changed == stored:
                return stored
            body = self._secret(changed, resource_version=secret.metadata.resource_version)
            try:
                self.api.replace_namespaced_secret(self.name, self.namespace, body)
            except ApiException as e:
                if e.status == 409:
                    continue  # written meanwhile (another replica, the operator): read it again
                raise CaError(f"cannot replace {self.source}: {e.status} {e.reason}") from None
            self._publish_bundle(changed)
            return changed
        raise CaError(f"{self.source} kept changing under us ({UPDATE_ATTEMPTS} attempts); try again")

    def _secret(self, roots: Roots, resource_version: str | None = None):
        from kubernetes import client

        return client.V1Secret(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace, resource_version=resource_version,
                                         labels={"app.kubernetes.io/part-of": "shoal"}),
            type="Opaque", data={k: base64.b64encode(v).decode() for k, v in _encode(roots).items()})

    def _publish_bundle(self, roots: Roots) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        configmap = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=BUNDLE_CONFIGMAP, namespace=self.namespace),
                                       data={"root-cert.pem": roots.bundle_pem.decode()})
        try:
            self.api.create_namespaced_config_map(self.namespace, configmap)
        except ApiException as e:
            if e.status != 409:
                raise CaError(f"cannot publish ConfigMap {self.namespace}/{BUNDLE_CONFIGMAP}: {e.status}") from None
            self.api.replace_namespaced_config_map(BUNDLE_CONFIGMAP, self.namespace, configmap)


def load_or_create(store: RootStore, trust_domain: str, now: dt.datetime | None = None) -> Roots:
    """The stored roots, or a new root, stored, on first start.

    In Kubernetes two replicas may race to create the Secret: the loser's
    create gets 409 and it loads the winner's root instead of replacing it.
    """
    loaded = store.load()
    if loaded is not None:
        return loaded
    root = generate_root(trust_domain, now)
    roots = Roots.first(root)
    if store.create(roots):
        logger.info("generated a new mesh root", fingerprint=root.fingerprint[:16], trust_domain=trust_domain)
        return roots
    loaded = store.load()
    if loaded is None:
        raise CaError("the CA root was created by another replica but cannot be read back")
    return loaded


def begin_rotation(store: RootStore, trust_domain: str, now: dt.datetime | None = None) -> Roots:
    """Phase 1: stores a new root, trusted from `now`; the running control plane publishes it at once
    and signs with it one leaf lifetime later (see control_plane.rotation)."""
    now = now or utc_now()
    new = generate_root(trust_domain, now)
    return store.update(lambda stored: rotation.begin(stored, new, now))


def retire(store: RootStore, fingerprint: str) -> tuple[Roots, x509.Certificate]:
    """Takes a root (given by the start of its SHA-256 fingerprint) out of the bundle at once."""
    retired: list[x509.Certificate] = []

    def change(stored: Roots) -> Roots:
        roots, cert = rotation.retire(stored, fingerprint)
        retired[:] = [cert]
        return roots
    if store.load() is None:
        raise CaError("there is no CA root yet, so nothing to retire; the control plane creates one "
                      "when it first starts")
    return store.update(change), retired[0]


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
