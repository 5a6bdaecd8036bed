"""The TLS Secrets ingress Gateways name, read one by one by name: never a list or watch of Secrets.

An ingress gateway's HTTPS servers name their certificates: Istio's
`tls.credentialName` (looked up in the namespace of the gateway pods the
Gateway selects, then in the Gateway's own, as the translator does) and a
Gateway API Gateway of class `shoal`'s `tls.certificateRefs` (in the
Gateway's namespace, or in another namespace while a ReferenceGrant there
allows the Gateway to name it: an ungranted one is not read at all, and is
forgotten when its grant goes). `wanted_secrets` works out, from what the
source has seen, which (namespace, name) pairs those are.

Why `get` by name and not list/watch: RBAC cannot narrow a list or watch of
Secrets to names nobody knows in advance, so watching them would let the
control plane read every Secret of the cluster. A `get` needs the name, so
the control plane reads only what a Gateway names. The price is that a
changed Secret is seen at the next poll (`SecretReader.interval`), not at
once; a newly named one is read as soon as the Gateway (or a selected Pod)
is seen.

`SecretReader.read` is the I/O: it returns the ADDED/MODIFIED/DELETED
events that take a consumer from what it had to what the API holds now. A
Secret that is not `kubernetes.io/tls` is treated as absent (its data is not
kept); a 404 is absent; a 403 is absent and warned once with what to grant.
"""

from __future__ import annotations

from typing import Callable, Iterable

from shoal import log
from shoal.contracts import INGRESS_CLASS
from shoal.kube_client import KubeError, KubeForbidden, KubeNotFound, call, request
from shoal.store import Event

from control_plane.translate.reference_grants import grants_of, permits

_log = log.get("shoal.control_plane.kube_secrets")

ISTIO_GROUP = "networking.istio.io"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
TLS_TYPE = "kubernetes.io/tls"
SecretKey = tuple[str, str]   # (namespace, name)


def _group(obj: dict) -> str:
    return str(obj.get("apiVersion") or "").rpartition("/")[0]


def _namespace(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def _selects(selector: dict, pod: dict) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def wanted_secrets(gateways: Iterable[dict], pods: Iterable[dict], grants: Iterable[dict] = ()) -> frozenset[SecretKey]:
    """The Secrets the HTTPS servers of these Gateways (either dialect) may name, given the Pods and the
    ReferenceGrants seen."""
    pods = list(pods)
    allowed = grants_of(grants)
    out: set[SecretKey] = set()
    for gateway in gateways:
        spec = gateway.get("spec") if isinstance(gateway.get("spec"), dict) else {}
        own = _namespace(gateway)
        if gateway.get("kind") == "Gateway" and _group(gateway) == ISTIO_GROUP:
            selector = spec.get("selector") if isinstance(spec.get("selector"), dict) else {}
            places = {own} | {_namespace(p) for p in pods if _selects(selector, p)}
            for server in spec.get("servers") or []:
                name = ((server or {}).get("tls") or {}).get("credentialName") if isinstance(server, dict) else None
                if isinstance(name, str) and name:
                    out |= {(namespace, name) for namespace in places}
        elif (gateway.get("kind") == "Gateway" and _group(gateway) == GATEWAY_API_GROUP
              and spec.get("gatewayClassName") == INGRESS_CLASS):
            for listener in spec.get("listeners") or []:
                tls = (listener or {}).get("tls") if isinstance(listener, dict) else None
                for ref in (tls or {}).get("certificateRefs") or [] if isinstance(tls, dict) else []:
                    if (isinstance(ref, dict) and str(ref.get("kind") or "Secret") == "Secret"
                            and str(ref.get("group") or "") in ("", "core") and ref.get("name")):
                        where, name = str(ref.get("namespace") or own), str(ref["name"])
                        if permits(allowed, "Gateway", own, "Secret", where, name):
                            out.add((where, name))
    return frozenset(out)


class SecretReader:
    """Reads the wanted Secrets by name; remembers what it last passed on, to send only changes."""

    def __init__(self, api_client, interval: float = 30.0) -> None:
        self.api = api_client
        self.interval = interval
        self.seen: dict[SecretKey, dict] = {}
        self._forbidden_warned: set[SecretKey] = set()

    def _get(self, key: SecretKey) -> dict | None:
        namespace, name = key
        try:
            obj = call(lambda: request(self.api, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}",
                                       timeout=(10.0, 30.0)),
                       f"reading TLS Secret {namespace}/{name} (named by an ingress Gateway)", attempts=2)
        except KubeNotFound:
            return None
        except KubeForbidden:
            if key not in self._forbidden_warned:
                self._forbidden_warned.add(key)
                _log.warning("cannot read a TLS Secret an ingress Gateway names: grant the control plane's "
                             "service account get on secrets (daemonset/control-plane.yaml)",
                             namespace=namespace, name=name)
            return None
        if obj.get("type") != TLS_TYPE:
            return None          # not a certificate: its data is not the mesh's to hold
        obj.setdefault("kind", "Secret")
        obj.setdefault("apiVersion", "v1")
        return obj

    def read(self, wanted: frozenset[SecretKey], keys: Iterable[SecretKey] | None = None,
             warn: Callable[[str, KubeError], None] | None = None) -> list[Event]:
        """Events for the Secrets in `keys` (default: all wanted) read again, and for those no longer wanted.
        A Secret that cannot be read for another reason (5xx, no answer) keeps what was seen."""
        events = [Event("DELETED", self.seen.pop(key)) for key in sorted(set(self.seen) - wanted)]
        for key in sorted(wanted if keys is None else set(keys) & wanted):
            try:
                obj = self._get(key)
            except KubeError as e:
                if warn is not None:
                    warn(f"{key[0]}/{key[1]}", e)
                continue
            old = self.seen.get(key)
            if obj is None:
                if old is not None:
                    events.append(Event("DELETED", self.seen.pop(key)))
            elif old is None or _content(old) != _content(obj):
                self.seen[key] = obj
                events.append(Event("ADDED" if old is None else "MODIFIED", obj))
        return events


def _content(secret: dict) -> tuple:
    return (secret.get("type"), secret.get("data"), secret.get("stringData"))
