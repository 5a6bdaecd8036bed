"""The `shoal control-plane` process: settings, wiring, and a clean shutdown.

    source (local store | Kubernetes) -> Feed(Translator) -> ConfigState -> ConfigServer (gRPC 15012, HTTP 15014)
                                                                             CertificateAuthority (roots from a RootStore)

Local cluster (`--source local --cluster C`), everything under /run/shoal/C/:
the CA in `ca/` (generated on first start), the bundle in `ca/bundle.pem`
for the proxies, the service-account token key in `ca/token.key`, node
bootstrap tokens read from `bootstrap-tokens.json`.

Roots rotate without a restart (`control_plane.rotation`): `--rotate-ca`
stores a new root, which the `RootKeeper` adopts and publishes within
`roots_poll_seconds`; the keeper also stores the switch to the new signer
and the old root's retirement when they fall due.

Kubernetes (`--source kube`): in-cluster credentials (or ~/.kube/config),
the CA in Secret shoal-system/shoal-ca (created if absent), the bundle
published in ConfigMap shoal-system/shoal-ca-root-cert, callers checked with
TokenReview, refused objects reported as Events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from control_plane import ca_store, rotation
from control_plane.authn import Authenticator, KubeAuthenticator, LocalAuthenticator
from control_plane.ca import CaError, CertificateAuthority, utc_now
from control_plane.errors import ControlPlaneError
from control_plane.feed import Feed, Reporter
from control_plane.metrics import Metrics
from control_plane.server import ConfigServer, Endpoints, split_address
from control_plane.state import ConfigState
from control_plane.translate import Translator
import shoal
from shoal import identity, log, store, tokens
from shoal.contracts import CONTROL_PLANE_GRPC_PORT, CONTROL_PLANE_HTTP_PORT
from shoal.lifecycle import Shutdown
from shoal.model.addresses import join_host_port

logger = log.get("shoal.control_plane")

SOURCES = ("local", "kube")
DRAIN_SECONDS = 2.0
ROOTS_POLL_SECONDS = 5.0


class SettingsError(ControlPlaneError, ValueError):
    """A flag's value is unusable; the message names the flag."""


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str, flag: str = "--cert-ttl") -> dt.timedelta:
    m = _DURATION.match(text.strip()) if text else None
    if not m or not any(m.groups()):
        raise SettingsError(f"{flag} {text!r}: expected a duration such as 24h, 90m, 1h30m or 3600s")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    value = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value < dt.timedelta(minutes=1):
        raise SettingsError(f"{flag} {text!r}: must be at least 1m")
    return value


@dataclass(frozen=True)
class Settings:
    source: str = "local"
    cluster: str = "default"
    listen: str = f"0.0.0.0:{CONTROL_PLANE_GRPC_PORT}"
    http: str = f"0.0.0.0:{CONTROL_PLANE_HTTP_PORT}"
    ca_cert: Path | None = None
    ca_key: Path | None = None
    cert_ttl: dt.timedelta = dt.timedelta(hours=24)
    trust_domain: str = identity.DEFAULT_TRUST_DOMAIN
    root_namespace: str = "istio-system"
    roots_poll_seconds: float = ROOTS_POLL_SECONDS   # env SHOAL_CA_RELOAD_SECONDS
    run_root: Path = field(default_factory=lambda: store.RUN_ROOT)
    # Mesh-wide tracing, handed to every waypoint this control plane deploys (Istio's extension provider).
    tracing_endpoint: str = ""       # an OTLP/HTTP collector, http(s)://host:port[/path]; empty: no tracing
    tracing_sampling: float = 1.0    # percent of new traces the waypoints record

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SettingsError(f"--source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if (self.ca_cert is None) != (self.ca_key is None):
            raise SettingsError("--ca-cert and --ca-key go together: give both or neither")
        try:
            identity.format_spiffe_id(self.trust_domain, "ns", "sa")
        except identity.InvalidSpiffeId:
            raise SettingsError(f"--trust-domain {self.trust_domain!r}: must be a lower-case DNS name") from None
        for flag, value, port in (("--listen", self.listen, CONTROL_PLANE_GRPC_PORT),
                                  ("--http", self.http, CONTROL_PLANE_HTTP_PORT)):
            try:
                split_address(value, port)
            except ValueError as e:
                raise SettingsError(f"{flag}: {e}") from None
        if self.tracing_endpoint and not self.tracing_endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"--tracing-endpoint {self.tracing_endpoint!r}: give an OTLP/HTTP URL such as "
                                "http://collector:4318")
        if not 0 <= self.tracing_sampling <= 100:
            raise SettingsError(f"--tracing-sampling {self.tracing_sampling:g}: a percentage, 0 to 100")

    @property
    def waypoint_args(self) -> tuple[str, ...]:
        """What every waypoint's command gets from the mesh-wide settings."""
        if not self.tracing_endpoint:
            return ()
        return ("--tracing-endpoint", self.tracing_endpoint, "--tracing-sampling", f"{self.tracing_sampling:g}")

    @property
    def run_dir(self) -> Path:
        return self.run_root / self.cluster

    @property
    def endpoints(self) -> Endpoints:
        grpc_host, grpc_port = split_address(self.listen, CONTROL_PLANE_GRPC_PORT)
        http_host, http_port = split_address(self.http, CONTROL_PLANE_HTTP_PORT)
        return Endpoints(grpc_host, grpc_port, http_host, http_port)


# -- wiring ------------------------------------------------------------------------------

@dataclass
class Wiring:
    """What differs between the local cluster and Kubernetes."""
    roots: ca_store.RootStore
    authenticator: Authenticator
    events: object            # an async iterator of shoal.store.Event
    report: Reporter | None
    controllers: tuple = ()   # coroutine functions run beside the feed (the waypoint controller)


def local_wiring(settings: Settings) -> Wiring:
    from control_plane.sources.local import LocalSource, report_invalid
    from control_plane.waypoints import LocalWaypointController, local_argv
    from shoal.local.layout import node_ip, node_ip_v6

    cluster_store = store.Store(settings.cluster, root=settings.run_root)
    if not cluster_store.exists():
        raise SettingsError(f"no local cluster {settings.cluster!r} under {settings.run_root}; "
                            f"run `shoal local up --cluster {settings.cluster}` first")
    roots = root_store(settings)
    key = tokens.token_key(settings.run_dir, create=True)
    authenticator = LocalAuthenticator(settings.run_dir / "bootstrap-tokens.json", key)
    # Waypoint pods reach the control plane where the local cluster runs it: node 1, in the cluster's first
    # family (the pods of an IPv6-only cluster have no route to node 1's IPv4 address).
    ipv6_first = ":" in cluster_store.service_ranges()[0]
    control_plane_address = join_host_port(node_ip_v6(1) if ipv6_first else node_ip(1), settings.endpoints.grpc_port)
    waypoints = LocalWaypointController(cluster_store, local_argv(settings.cluster, control_plane_address,
                                                                  settings.waypoint_args))
    return Wiring(roots, authenticator, LocalSource(cluster_store).events(),
                  lambda obj, errors: report_invalid(cluster_store, obj, errors), controllers=(waypoints.run,))


def kube_wiring(settings: Settings) -> Wiring:
    from kubernetes import client

    from control_plane.sources import kube as kube_source
    from control_plane.status_kube import KubeStatusWriter
    from control_plane.waypoints_kube import KubeWaypointController, published_bundle

    try:
        api = kube_source.make_api_client()
    except Exception as e:  # noqa: BLE001 - the kubernetes client raises several kinds
        raise SettingsError(f"--source kube: no in-cluster credentials and no usable kubeconfig ({e})") from None
    core = client.CoreV1Api(api)
    roots = (ca_store.GivenFilesRootStore(settings.ca_cert, settings.ca_key) if settings.ca_cert
             else ca_store.KubeSecretRootStore(core))
    authenticator = KubeAuthenticator(client.AuthenticationV1Api(api), core)
    waypoints = KubeWaypointController(api, image=os.environ.get("SHOAL_WAYPOINT_IMAGE", f"shoal:{shoal.__version__}"),
                                       bundle=published_bundle(api), waypoint_args=settings.waypoint_args)
    source = kube_source.KubeSource(api)
    # The mesh objects' status, from the analysis of what the source holds (no second list of the cluster).
    status = KubeStatusWriter(api, lambda: [o for cache in source.caches.values() for o in cache.objects.values()],
                              ready=lambda: source.synced, version=source.view_version)
    return Wiring(roots, authenticator, source.events(),
                  lambda obj, errors: kube_source.report_invalid(api, obj, errors),
                  controllers=(waypoints.run, status.run))


def build_authority(settings: Settings, roots: ca_store.RootStore) -> CertificateAuthority:
    stored = ca_store.load_or_create(roots, settings.trust_domain)
    authority = CertificateAuthority(stored, trust_domain=settings.trust_domain, leaf_ttl=settings.cert_ttl)
    logger.info("CA ready", signer=authority.signer.cert.subject.rfc4514_string(), roots=len(authority.trusted),
                fingerprint=authority.signer.fingerprint[:16])
    return authority


def publish_bundle(path: Path, bundle_pem: bytes) -> None:
    """Where the local cluster's proxies read the trust bundle (public, like Istio's root-cert ConfigMap)."""
    if path.exists() and path.read_bytes() == bundle_pem:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bundle_pem)
    tmp.chmod(0o644)
    tmp.replace(path)


def _short(cert) -> str:
    return rotation.fingerprint(cert)[:16]


class RootKeeper:
    """Keeps the CA's roots, the RootStore and the published bundle in step.

    Each `step()`: reads the store (an operator may have begun a rotation or
    retired a root), stores what fell due by the CA's clock (the new root
    signs; an old root leaves the bundle), hands the result to the CA, and
    publishes the bundle (`publish`: the local cluster's bundle file; a
    Secret store publishes its ConfigMap itself when it is written).
    """

    def __init__(self, store: ca_store.RootStore, authority: CertificateAuthority,
                 publish: Callable[[bytes], None] | None = None) -> None:
        self.store = store
        self.authority = authority
        self.publish = publish
        self._told = authority.current()   # what the log has said so far

    def step(self) -> bool:
        """True when the CA's roots changed."""
        stored = self.store.load()
        if stored is None:
            return False
        now, overlap = self.authority.clock(), self.authority.overlap
        if rotation.advance(stored, now, overlap) != stored:
            stored = self.store.update(lambda latest: rotation.advance(latest, now, overlap))
        changed = self.authority.adopt(stored)
        current = self.authority.current()
        if self.publish is not None:
            self.publish(current.bundle_pem)
        if current != self._told:
            self._log(self._told, current)
            self._told = current
        return changed

    def _log(self, before: rotation.Roots, after: rotation.Roots) -> None:
        overlap = self.authority.overlap
        if after.incoming is not None and after.incoming != before.incoming:
            logger.info("new root trusted; it signs once every certificate issued before has expired",
                        root=after.incoming.fingerprint[:16],
                        signs_from=after.switch_at(overlap).isoformat(timespec="seconds"))
        if after.signer != before.signer:
            logger.info("signing with a new root", signer=after.signer.fingerprint[:16],
                        retiring={fp[:16]: at.isoformat(timespec="seconds") for fp, at in after.retiring})
        gone = {rotation.fingerprint(c) for c in before.trusted} - {rotation.fingerprint(c) for c in after.trusted}
        for fp in sorted(gone):
            logger.info("root left the trust bundle", root=fp[:16])
        logger.info("CA roots now", signer=after.signer.fingerprint[:16],
                    trusted=[_short(c) for c in after.trusted])

    async def run(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.step)
            except (CaError, OSError) as e:
                logger.warning("cannot re-read or store the CA roots; keeping the current ones", error=str(e))


def root_store(settings: Settings) -> ca_store.RootStore:
    if settings.ca_cert:
        return ca_store.GivenFilesRootStore(settings.ca_cert, settings.ca_key)
    if settings.source == "local":
        return ca_store.FileRootStore(settings.run_dir / "ca")
    from kubernetes import client

    from control_plane.sources import kube as kube_source
    return ca_store.KubeSecretRootStore(client.CoreV1Api(kube_source.make_api_client()))


def describe_roots(roots: rotation.Roots, overlap: dt.timedelta) -> str:
    """What `--show-roots` prints: who signs, what is trusted, and what is scheduled."""
    lines = [f"signing root:  {roots.signer.fingerprint[:16]}  {roots.signer.cert.subject.rfc4514_string()}"]
    for cert in roots.trusted:
        fp = rotation.fingerprint(cert)
        if roots.incoming is not None and cert in roots.incoming.anchors:
            note = f"incoming: trusted since {roots.incoming_since.isoformat(timespec='seconds')}, " \
                   f"signs from {roots.switch_at(overlap).isoformat(timespec='seconds')}"
        elif cert in roots.signer.anchors:
            note = "signing"
        elif roots.retire_at(fp) is not None:
            note = f"rotated out: leaves the bundle at {roots.retire_at(fp).isoformat(timespec='seconds')}"
        else:
            note = "trusted (no schedule: retire it by hand with --retire-ca when nothing it signed is in use)"
        lines.append(f"trusted root:  {fp[:16]}  {note}")
    return "\n".join(lines)


def rotate_roots(settings: Settings, retire: str | None = None, show: bool = False) -> int:
    """`--rotate-ca`, `--retire-ca FINGERPRINT`, `--show-roots`: one-shot changes to, or a look at, the stored roots.

    The times shown assume the control plane runs with this `--cert-ttl`."""
    overlap = CertificateAuthority.overlap_for(settings.cert_ttl)
    try:
        store_ = root_store(settings)
        if show:
            stored = store_.load()
            if stored is None:
                raise CaError("there is no CA root yet; the control plane creates one when it first starts")
            print(describe_roots(rotation.advance(stored, utc_now(), overlap), overlap))
        elif retire:
            remaining, cert = ca_store.retire(store_, retire)
            print(f"retired root {rotation.fingerprint(cert)[:16]}: it leaves the trust bundle now (if it was the "
                  f"incoming root, the rotation is cancelled); certificates it signed, if any, no longer verify.\n"
                  + describe_roots(remaining, overlap))
        else:
            roots = ca_store.begin_rotation(store_, settings.trust_domain)
            old = roots.signer
            print(f"new root {roots.incoming.fingerprint[:16]} is trusted from now on, and signs from "
                  f"{roots.switch_at(overlap).isoformat(timespec='seconds')}, once every certificate issued "
                  f"before it was trusted has expired (--cert-ttl {settings.cert_ttl} and a margin).\n"
                  f"The signing root {old.fingerprint[:16]} stays trusted until the last certificate it signs "
                  f"expires, {overlap} after that, and then leaves the bundle. Nothing else to do: the control "
                  f"plane does each step on time (see --show-roots).")
    except (CaError, SettingsError) as e:
        print(f"shoal control-plane: {e}", file=sys.stderr)
        return 1
    return 0


# -- the process ---------------------------------------------------------------------------

async def run(settings: Settings, shutdown: Shutdown, wiring: Wiring | None = None) -> int:
    try:
        wiring = wiring or (local_wiring(settings) if settings.source == "local" else kube_wiring(settings))
        authority = build_authority(settings, wiring.roots)
    except (SettingsError, CaError, tokens.TokenError, OSError) as e:
        logger.error("cannot start the control plane", error=str(e))
        return 2
    publish = ((lambda pem: publish_bundle(settings.run_dir / "ca" / "bundle.pem", pem))
               if settings.source == "local" else None)
    keeper = RootKeeper(wiring.roots, authority, publish)
    try:
        await asyncio.to_thread(keeper.step)   # what fell due while we were down, and the bundle file
    except (CaError, OSError) as e:
        logger.error("cannot start the control plane", error=str(e))
        return 2
    state = ConfigState()
    metrics = Metrics()
    server = ConfigServer(state=state, authority=authority, authenticator=wiring.authenticator, metrics=metrics,
                          endpoints=settings.endpoints, root_namespace=settings.root_namespace)
    try:
        await server.start()
    except OSError as e:
        logger.error("cannot start the control plane", error=str(e))
        return 2
    feed = Feed(Translator(), state, metrics, server.mark_synced, wiring.report)
    feeding = asyncio.ensure_future(feed.run(wiring.events))
    rooting = asyncio.ensure_future(keeper.run(settings.roots_poll_seconds))
    controllers = [asyncio.ensure_future(run_controller()) for run_controller in wiring.controllers]
    stopping = asyncio.ensure_future(shutdown.wait())
    code = 0
    try:
        await asyncio.wait({feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if feeding.done():
            error = feeding.exception()
            logger.error("the config source failed; exiting so that the supervisor restarts us",
                         error=f"{type(error).__name__}: {error}")
            code = 1
    finally:
        feeding.cancel()
        rooting.cancel()
        for controller in controllers:
            controller.cancel()
        stopping.cancel()
        await server.stop(0 if shutdown.urgent.is_set() else DRAIN_SECONDS)
        logger.info("control plane stopped")
    return code
