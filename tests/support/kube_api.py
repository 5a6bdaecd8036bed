"""Kubernetes API server doubles that the real kubernetes client talks to, over HTTP on 127.0.0.1.

- `KubeDouble`: the list/watch wire protocol of many kinds, for the control plane's and the node
  agent's Kubernetes sources (below);
- `ApiDouble`: Secrets and ConfigMaps by path, and TokenReview (with audiences), for the control plane's CA store
  and authenticator;
- `JsonHandler` and `status`: what their handlers (and the waypoint controller's double) share.

KubeDouble: the real list/watch wire protocol, in memory.

It serves, on 127.0.0.1, for the resources it is told about:
- `GET /api/v1/<plural>` and `GET /apis/<group>/<version>/<plural>`: a list
  (`{"kind": "<Kind>List", "metadata": {"resourceVersion"}, "items"}`; items
  without kind/apiVersion, as the real server sends them);
- `?watch=1&resourceVersion=N[&allowWatchBookmarks=true][&timeoutSeconds=T]`:
  a chunked stream of newline-delimited JSON events (ADDED, MODIFIED,
  DELETED, BOOKMARK), starting after N;
- a version older than the compacted history: `{"type": "ERROR", "object":
  {"kind": "Status", "code": 410, "reason": "Expired", ...}}` then the end of
  the stream (or, with `gone_as_http`, an HTTP 410 Status response);
- a group/version not in `served`: 404 with a Status body;
- `POST /api/v1/namespaces/<ns>/events`: stored in `events`, 409 on a name already used.

The test drives it: `add`, `modify`, `delete`, `bookmark` (a BOOKMARK to
every open watch), `compact` (forget history: older versions get 410),
`drop_watches` (close every open stream, as a load balancer would). Every
request is logged in `requests` as (method, path, query dict).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

# kind -> (group, plural); cluster-scoped kinds in CLUSTER_SCOPED.
KINDS = {
    "Namespace": ("", "namespaces"), "Pod": ("", "pods"), "Service": ("", "services"),
    "ServiceAccount": ("", "serviceaccounts"),
    "HTTPRoute": ("gateway.networking.k8s.io", "httproutes"), "Gateway": ("gateway.networking.k8s.io", "gateways"),
    "VirtualService": ("networking.istio.io", "virtualservices"),
    "DestinationRule": ("networking.istio.io", "destinationrules"),
    "AuthorizationPolicy": ("security.istio.io", "authorizationpolicies"),
    "PeerAuthentication": ("security.istio.io", "peerauthentications"),
    "TrafficSplit": ("split.smi-spec.io", "trafficsplits"),
}
CLUSTER_SCOPED = {"Namespace"}
DEFAULT_SERVED = {
    "": {"v1"},
    "gateway.networking.k8s.io": {"v1", "v1beta1"},
    "networking.istio.io": {"v1alpha3", "v1beta1", "v1"},
    "security.istio.io": {"v1beta1", "v1"},
    "split.smi-spec.io": {"v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"},
}


def status(code: int, reason: str, message: str = "") -> dict:
    """A failure as the API server reports it (kind Status)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class JsonHandler(BaseHTTPRequestHandler):
    """An API server's side of a request: HTTP/1.1 keep-alive, JSON bodies, no request log on stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_json(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")


class KubeDouble:
    def __init__(self, served: dict[str, set[str]] | None = None, *, gone_as_http: bool = False) -> None:
        self.served = copy.deepcopy(served if served is not None else DEFAULT_SERVED)
        self.gone_as_http = gone_as_http
        self.rv = 100
        self.objects: dict[tuple[str, str, str], dict] = {}    # (kind, ns, name) -> stored object
        self.history: list[tuple[int, str, dict]] = []          # (rv, type, object)
        self.oldest = 0                                         # watches from below this get 410
        self.requests: list[tuple[str, str, dict]] = []
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._streams: set = set()
        self._bookmarks = 0
        self._drops = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- life ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "KubeDouble":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.drop_watches()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the test's levers -----------------------------------------------------------

    def _change(self, type_: str, obj: dict) -> dict:
        with self._cond:
            self.rv += 1
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            kind = obj["kind"]
            if kind in CLUSTER_SCOPED:
                meta.pop("namespace", None)
            else:
                meta.setdefault("namespace", "default")
            key = (kind, meta.get("namespace", ""), meta["name"])
            old = self.objects.get(key)
            if type_ == "DELETED":
                if old is None:
                    raise KeyError(f"{key} does not exist")
                obj = copy.deepcopy(old)
                del self.objects[key]
            else:
                meta["uid"] = (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
                meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
                self.objects[key] = obj
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.history.append((self.rv, type_, copy.deepcopy(obj)))
            self._cond.notify_all()
            return obj

    def add(self, obj: dict) -> dict:
        return self._change("ADDED", obj)

    def modify(self, obj: dict) -> dict:
        return self._change("MODIFIED", obj)

    def delete(self, kind: str, namespace: str | None, name: str) -> dict:
        obj = {"kind": kind, "metadata": {"name": name}}
        if namespace:
            obj["metadata"]["namespace"] = namespace
        return self._change("DELETED", obj)

    def behind_the_watch(self, changes) -> None:
        """Drop every open watch, run `changes(self)` unseen by them, and compact the history:
        the watchers come back with a version that is gone (410) and must list again."""
        with self._cond:
            self._drops += 1
            changes(self)
            self.history.clear()
            self.oldest = self.rv

    def compact(self) -> None:
        """Forget the history: a watch from any version before now gets 410 Gone."""
        with self._cond:
            self.history.clear()
            self.oldest = self.rv

    def bookmark(self) -> None:
        with self._cond:
            self._bookmarks += 1
            self._cond.notify_all()

    def drop_watches(self) -> None:
        with self._cond:
            self._drops += 1
            self._cond.notify_all()

    def watch_requests(self, plural: str) -> list[dict]:
        return [q for m, p, q in self.requests if m == "GET" and p.endswith("/" + plural) and q.get("watch")]

    def list_requests(self, plural: str) -> list[dict]:
        return [q for m, p, q in self.requests
                if m == "GET" and p.endswith("/" + plural) and not q.get("watch") and q.get("limit") != "1"]

    def open_watches(self) -> int:
        with self._cond:
            return len(self._streams)

    # -- HTTP ---------------------------------------------------------------------------

    def _route(self, path: str):
        """(kind, group, version) for a collection path, or None."""
        parts = [p for p in path.split("/") if p]
        if len(parts) == 3 and parts[0] == "api":
            group, version, plural = "", parts[1], parts[2]
        elif len(parts) == 4 and parts[0] == "apis":
            group, version, plural = parts[1], parts[2], parts[3]
        else:
            return None
        for kind, (g, p) in KINDS.items():
            if g == group and p == plural:
                return kind, group, version
        return None

    def _handler(self):
        double = self

        class Handler(JsonHandler):

            def do_POST(self):
                url = urlsplit(self.path)
                double.requests.append(("POST", url.path, {}))
                parts = [p for p in url.path.split("/") if p]
                body = self.read_json()
                if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "events":
                    name = body.get("metadata", {}).get("name")
                    if any(e["metadata"]["name"] == name for e in double.events):
                        return self.send_json(409, status(409, "AlreadyExists", f"events {name!r} already exists"))
                    body.setdefault("metadata", {})["namespace"] = parts[3]
                    double.events.append(body)
                    return self.send_json(201, body)
                self.send_json(404, status(404, "NotFound", f"no route for POST {url.path}"))

            def do_GET(self):
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                double.requests.append(("GET", url.path, query))
                route = double._route(url.path)
                if route is None:
                    return self.send_json(404, status(404, "NotFound", f"the server could not find {url.path}"))
                kind, group, version = route
                if version not in double.served.get(group, set()):
                    return self.send_json(404, status(404, "NotFound", f"the server could not find {url.path}"))
                api_version = f"{group}/{version}" if group else version
                if query.get("watch") in ("1", "true"):
                    return self._watch(kind, api_version, query)
                with double._cond:
                    items = [copy.deepcopy(o) for k, o in sorted(double.objects.items()) if k[0] == kind]
                    rv = double.rv
                for item in items:
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                if query.get("limit"):
                    items = items[: int(query["limit"])]
                self.send_json(200, {"kind": f"{kind}List", "apiVersion": api_version,
                                 "metadata": {"resourceVersion": str(rv)}, "items": items})

            def _chunk(self, event: dict) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _watch(self, kind: str, api_version: str, query: dict) -> None:
                since = int(query.get("resourceVersion") or double.rv)
                bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
                timeout = float(query.get("timeoutSeconds") or 1800)
                with double._cond:
                    gone = since < double.oldest
                if gone and double.gone_as_http:
                    return self.send_json(410, status(410, "Expired", f"too old resource version: {since} ({double.oldest})"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if gone:
                    self._chunk({"type": "ERROR", "object": status(
                        410, "Expired", f"too old resource version: {since} ({double.oldest})")})
                    self.wfile.write(b"0\r\n\r\n")
                    return
                deadline = time.monotonic() + timeout
                sent = since
                with double._cond:
                    double._streams.add(self)
                    bookmarks_seen, drops_seen = double._bookmarks, double._drops
                try:
                    while True:
                        with double._cond:
                            pending = [(rv, t, o) for rv, t, o in double.history if rv > sent and o["kind"] == kind]
                            send_bookmark = bookmarks and double._bookmarks != bookmarks_seen
                            bookmarks_seen = double._bookmarks
                            dropped = double._drops != drops_seen
                            current = double.rv
                            if not pending and not send_bookmark and not dropped:
                                left = deadline - time.monotonic()
                                if left <= 0:
                                    break
                                double._cond.wait(min(left, 0.5))
                                continue
                        if dropped:
                            self.close_connection = True
                            return   # no terminating chunk: the client sees a broken stream
                        for rv, type_, obj in pending:
                            obj = copy.deepcopy(obj)
                            obj["apiVersion"] = api_version
                            self._chunk({"type": type_, "object": obj})
                            sent = rv
                        if send_bookmark:
                            sent = max(sent, current)
                            self._chunk({"type": "BOOKMARK", "object": {
                                "kind": kind, "apiVersion": api_version,
                                "metadata": {"resourceVersion": str(sent)}}})
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with double._cond:
                        double._streams.discard(self)

        return Handler


# The control plane's CA objects, as ApiDouble stores them (by path).
CA_SECRET = "/api/v1/namespaces/shoal-system/secrets/shoal-ca"
CA_CONFIGMAP = "/api/v1/namespaces/shoal-system/configmaps/shoal-ca-root-cert"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # a token's audience unless it asked for another


class ApiDouble:
    """Secrets and ConfigMaps by namespace/name, and a TokenReview table, over HTTP."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}   # "/api/v1/namespaces/ns/secrets/name" -> object
        self.reviews: dict[str, dict] = {}   # token -> status.user
        self.audiences: dict[str, list[str]] = {}  # token -> the audiences it was issued for (default: the API's)
        self.audience_aware = True           # False: an authenticator that ignores audiences (answers with none)
        self.pods: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.create_conflicts = 0            # answer this many creates with 409 (another replica won)
        double = self

        class Handler(JsonHandler):
            def do_GET(self):
                double.requests.append(("GET", self.path))
                obj = double.objects.get(self.path) or double.pods.get(self.path)
                if obj is None:
                    return self.send_json(404, status(404, "NotFound"))
                self.send_json(200, obj)

            def do_POST(self):
                double.requests.append(("POST", self.path))
                body = self.read_json()
                if self.path == "/apis/authentication.k8s.io/v1/tokenreviews":
                    return self.send_json(201, {**body, "status": double.review(body["spec"])})
                path = f"{self.path}/{body['metadata']['name']}"
                if double.create_conflicts or path in double.objects:
                    double.create_conflicts = max(0, double.create_conflicts - 1)
                    return self.send_json(409, status(409, "AlreadyExists"))
                double.objects[path] = body
                self.send_json(201, body)

            def do_PUT(self):
                double.requests.append(("PUT", self.path))
                double.objects[self.path] = self.read_json()
                self.send_json(200, double.objects[self.path])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def review(self, spec: dict) -> dict:
        """A TokenReview's status, as the API server answers: a token is good for the audiences it was
        issued for, and the review for those of `spec.audiences` (by default, the API server's)."""
        token = spec["token"]
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

    def api(self) -> client.ApiClient:
        config = client.Configuration()
        config.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(config)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
