"""The Kubernetes API server double: the real wire protocol over HTTP on 127.0.0.1, in memory.

It is the only double the project allows (tests only; product code never
imports it). The real `kubernetes` client, kubectl-style code and raw HTTP
all talk to it as to an API server.

Start it, point a client at it:

    with KubeApiServer() as api:                 # (KubeDouble and ApiDouble are the same class)
        client = api.api_client()                # a kubernetes.client.ApiClient
        api.kubeconfig(tmp_path / "kubeconfig")  # a kubeconfig file for subprocesses (KUBECONFIG=...)
        api.url                                  # http://127.0.0.1:<port>

Read and change what it stores, without HTTP (each change is a watch event):

    api.add(obj) / api.modify(obj)               # create or replace (kind and apiVersion say where)
    api.get("Deployment", "ns", "name")          # a copy, or None
    api.list("Gateway", namespace=None)
    api.delete("Pod", "ns", "name")              # immediate DELETED (a test lever; HTTP DELETE is graceful)
    api.objects["/api/v1/namespaces/ns/secrets/s"]   # by API path too (read, `in`, assign)
    api.requests                                 # every request: Request(method, path, query, body, headers)

Make it misbehave:

    api.fail(429, retry_after=2, method="GET", path="/pods", times=3)   # 401, 403, 404, 409, 429, 5xx...
    api.compact()            # forget history: watches from before get 410 Gone
    api.behind_the_watch(f)  # drop watches, change things unseen, compact: clients must list again
    api.drop_watches()       # close every open watch stream mid-way (as a load balancer)
    api.bookmark()           # a BOOKMARK to every watch that allowed them
    api.served["split.smi-spec.io"] = set()   # a CRD "not installed": its paths answer 404
    api.store.hold_pods = True                # a deleted Pod stays, with deletionTimestamp, until
    api.finish_deletion("Pod", "ns", "name")  # ... the "kubelet" finishes it

What it serves (kube_store and kube_rules hold the rules, kube_http the wire):
- every kind in kube_resources.BUILTIN and MESH_CRDS, and any kind whose
  CustomResourceDefinition is created; namespaced and cluster-scoped paths;
- GET one object (and `/status`); list with labelSelector, fieldSelector
  (metadata.name, metadata.namespace, and the per-kind fields the real server
  allows, e.g. spec.nodeName for Pods), limit/continue;
- watch (`?watch=1`): without resourceVersion (or with "0"), ADDED for every
  object first; from a resourceVersion, the changes after it, or 410 Gone
  (an ERROR event, or with `gone_as_http` an HTTP 410) when it is older than
  the history kept; BOOKMARKs with allowWatchBookmarks; timeoutSeconds;
  an object that enters or leaves the selectors is ADDED or DELETED;
- POST, PUT, PATCH (merge, JSON, strategic, apply), DELETE (graceful, with
  finalizers, garbage collection by ownerReferences), `status` subresources;
- POST tokenreviews: `reviews` (token -> user), `audiences` (token -> the
  audiences it was issued for), `audience_aware` (False: answers with no
  audiences, as an authenticator that ignores them);
- discovery: /api, /api/v1, /apis, /apis/<group>/<version>, /version;
- GET pods/NAME:PORT/proxy/PATH: forwarded to the pod's status.podIP over
  HTTP (a test gives its pod 127.0.0.1 and a real server's port);
- with `tokens` given, a request without one of them as its bearer gets 401.
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, NamedTuple

import yaml
from kubernetes import client

from support.kube_resources import ApiStatus, ResourceType, parse_path
from support.kube_store import Store

# The control plane's CA objects (by path).
CA_SECRET = "/api/v1/namespaces/shoal-system/secrets/shoal-ca"
CA_CONFIGMAP = "/api/v1/namespaces/shoal-system/configmaps/shoal-ca-root-cert"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # a token's audience unless it asked for another

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
           409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
           500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


def status(code: int, reason: str, message: str = "") -> dict:
    """A failure as the API server reports it (kind Status)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class Request(NamedTuple):
    method: str
    path: str
    query: dict
    body: object
    headers: dict


class Fault(NamedTuple):
    code: int
    times: int                     # how many matching requests it answers (then it is spent)
    method: str | None
    path: str | None               # a substring of the request path
    retry_after: float | None
    watch: bool | None             # only watches (True), only other requests (False), both (None)


class JsonHandler(BaseHTTPRequestHandler):
    """An API server's side of a request: HTTP/1.1 keep-alive, JSON bodies, no request log on stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def send_json(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:
            return {}
        if "yaml" in (self.headers.get("Content-Type") or ""):
            return yaml.safe_load(raw)
        return json.loads(raw)

    def read_json(self) -> dict:
        return self.read_body()


class _ObjectsByPath:
    """The stored objects by their API path (the CA store's tests read Secrets and ConfigMaps so)."""

    def __init__(self, server: "KubeApiServer") -> None:
        self.server = server

    def _find(self, path: str):
        route = parse_path(path, self.server.store.namespaced_pairs())
        if route is None or route.name is None:
            raise KeyError(path)
        return self.server.store.type_of(route.group, route.plural), route

    def get(self, path: str, default=None):
        try:
            rtype, route = self._find(path)
            return self.server.store.get(rtype, route.namespace, route.name)
        except (KeyError, ApiStatus):
            return default

    def __getitem__(self, path: str) -> dict:
        found = self.get(path)
        if found is None:
            raise KeyError(path)
        return found

    def __contains__(self, path: str) -> bool:
        return self.get(path) is not None

    def __setitem__(self, path: str, obj: dict) -> None:
        rtype, route = self._find(path)
        obj = {**obj, "apiVersion": rtype.api_version(), "kind": rtype.kind,
               "metadata": {**(obj.get("metadata") or {}), "name": route.name,
                            **({"namespace": route.namespace} if route.namespace else {})}}
        self.server.add(obj)


class KubeApiServer:
    def __init__(self, served: dict[str, set[str]] | None = None, *, gone_as_http: bool = False,
                 tokens: set[str] | None = None) -> None:
        self.store = Store(served)
        self.served = self.store.served
        self.gone_as_http = gone_as_http
        self.tokens = tokens
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.reviews: dict[str, dict] = {}          # token -> status.user
        self.audiences: dict[str, list[str]] = {}   # token -> the audiences it was issued for
        self.audience_aware = True
        self.objects = _ObjectsByPath(self)
        self._streams: set = set()
        self._bookmarks = 0
        self._drops = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    # -- life -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "KubeApiServer":
        return self     # serving since made; kept for `KubeDouble().start()`

    def stop(self) -> None:
        self.drop_watches()
        self._server.shutdown()
        self._server.server_close()

    close = stop

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def configuration(self, token: str | None = None) -> client.Configuration:
        config = client.Configuration()
        config.host = self.url
        if token:
            config.api_key = {"authorization": f"Bearer {token}"}
        return config

    def api_client(self, token: str | None = None) -> client.ApiClient:
        return client.ApiClient(self.configuration(token))

    api = api_client

    def kubeconfig(self, path, token: str | None = None, namespace: str = "default") -> Path:
        """Write a kubeconfig that points at this server; returns its path."""
        user = {"token": token} if token else {}
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "double",
                  "clusters": [{"name": "double", "cluster": {"server": self.url}}],
                  "users": [{"name": "double", "user": user}],
                  "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double",
                                                              "namespace": namespace}}]}
        path = Path(path)
        path.write_text(yaml.safe_dump(config))
        return path

    # -- the test's levers ------------------------------------------------------------------------------

    def _type(self, obj_or_kind) -> ResourceType:
        if isinstance(obj_or_kind, str):
            return self.store.type_for(obj_or_kind)
        return self.store.type_for(obj_or_kind["kind"], obj_or_kind.get("apiVersion"))

    def add(self, obj: dict) -> dict:
        """Create `obj`, or replace it if it exists (one ADDED or MODIFIED event)."""
        rtype = self._type(obj)
        namespace = (obj.get("metadata") or {}).get("namespace") or ("default" if rtype.namespaced else None)
        with self.store.lock:
            try:
                self.store.get(rtype, namespace, obj["metadata"]["name"])
            except ApiStatus:
                return self.store.create(rtype, namespace, obj)
            return self.modify(obj)

    put = add

    def modify(self, obj: dict) -> dict:
        rtype = self._type(obj)
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or ("default" if rtype.namespaced else None)
        body = copy.deepcopy(obj)
        body.setdefault("metadata", {}).pop("resourceVersion", None)
        written = self.store.replace(rtype, namespace, meta["name"], body)
        if rtype.status and "status" in obj:
            written = self.store.replace(rtype, namespace, meta["name"], body, subresource="status")
        return written

    def delete(self, kind: str, namespace: str | None, name: str) -> dict:
        """Remove at once (DELETED), finalizers and grace aside; KeyError if absent."""
        rtype = self._type(kind)
        with self.store.lock:
            key = self.store.key(rtype, namespace, name)
            if key not in self.store.objects:
                raise KeyError(f"{key} does not exist")
            return self.store._remove(key)

    def finish_deletion(self, kind: str, namespace: str | None, name: str) -> dict:
        return self.store.finish_deletion(self._type(kind), namespace, name)

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self.store.get(self._type(kind), namespace, name)
        except ApiStatus:
            return None

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        return self.store.list(self._type(kind), namespace)[0]

    @property
    def events(self) -> list[dict]:
        """The core/v1 Events stored (what `report_invalid` writes)."""
        return self.list("Event")

    @property
    def rv(self) -> int:
        return self.store.rv

    def compact(self) -> None:
        self.store.compact()

    def behind_the_watch(self, changes: Callable[["KubeApiServer"], None]) -> None:
        """Drop every open watch, run `changes(self)` unseen by them, and compact the history:
        the watchers come back with a version that is gone (410) and must list again."""
        with self.store.lock:
            self._drops += 1
            changes(self)
            self.store.compact()

    def bookmark(self) -> None:
        with self.store.changed:
            self._bookmarks += 1
            self.store.changed.notify_all()

    def drop_watches(self) -> None:
        with self.store.changed:
            self._drops += 1
            self.store.changed.notify_all()

    def open_watches(self) -> int:
        with self.store.lock:
            return len(self._streams)

    def fail(self, code: int, *, times: int = 1, method: str | None = None, path: str | None = None,
             retry_after: float | None = None, watch: bool | None = None) -> None:
        """Answer the next `times` matching requests with `code` (and a Status body)."""
        with self.store.lock:
            self.faults.append(Fault(code, times, method, path, retry_after, watch))

    def _fault_for(self, method: str, path: str, watching: bool) -> Fault | None:
        with self.store.lock:
            for i, fault in enumerate(self.faults):
                if ((fault.method is None or fault.method == method) and (fault.path is None or fault.path in path)
                        and (fault.watch is None or fault.watch == watching)):
                    if fault.times <= 1:
                        del self.faults[i]
                    else:
                        self.faults[i] = fault._replace(times=fault.times - 1)
                    return fault
        return None

    # -- what tests ask about the traffic --------------------------------------------------------------

    def watch_requests(self, plural: str) -> list[dict]:
        return [r.query for r in self.requests
                if r.method == "GET" and r.path.endswith("/" + plural) and r.query.get("watch")]

    def list_requests(self, plural: str) -> list[dict]:
        return [r.query for r in self.requests if r.method == "GET" and r.path.endswith("/" + plural)
                and not r.query.get("watch") and r.query.get("limit") != "1"]

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PUT", "PATCH", "DELETE")
                and not r.path.endswith("/tokenreviews")]

    # -- TokenReview ------------------------------------------------------------------------------------

    def review(self, spec: dict) -> dict:
        """A TokenReview's status, as the API server answers: a token is good for the audiences it was
        issued for, and the review for those of `spec.audiences` (by default, the API server's)."""
        token = spec.get("token") or ""
        user = self.reviews.get(token)
        if not user:
            return {"authenticated": False, "error": "invalid bearer token"}
        if not self.audience_aware:
            return {"authenticated": True, "user": user}
        wanted = spec.get("audiences") or [API_AUDIENCE]
        issued = self.audiences.get(token, [API_AUDIENCE])
        granted = [a for a in wanted if a in issued]
        if not granted:
            return {"authenticated": False,
                    "error": f"token audiences {issued} is invalid for the target audiences {wanted}"}
        return {"authenticated": True, "user": user, "audiences": granted}


KubeDouble = KubeApiServer
ApiDouble = KubeApiServer


def _handler(server: KubeApiServer):
    from support.kube_http import Handler   # the HTTP side, kept apart (one concept per module)

    return type("BoundHandler", (Handler,), {"server_double": server})
