"""The HTTP side of the Kubernetes API double (support.kube_api): requests in, Status or objects out.

Each request: logged; a bearer token checked (when the double has `tokens`);
an injected fault answered (with Retry-After for 429); then discovery, a
review, or a resource route to the store. A watch is a chunked stream of
newline-delimited JSON events, as the real server sends it.
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

from support.kube_api import REASONS, JsonHandler, Request, status
from support.kube_resources import BUILTIN, REVIEWS, ApiStatus, ResourceType, parse_path

# What a DELETE answers: these kinds (and every custom resource) the deleted object, as the real server
# does (the generated client expects V1Pod, V1Service...); the other built-in kinds a Status, unless the
# deletion is still pending (finalizers, grace), when the object is returned with its deletionTimestamp.
RETURN_DELETED = {"pods", "services", "serviceaccounts", "persistentvolumeclaims", "persistentvolumes",
                  "podtemplates", "resourcequotas"}


_POD_PROXY = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/:]+)(?::(?P<port>\d+))?/proxy"
                        r"(?P<path>/.*)?$")


def _shaped(obj: dict, rtype: ResourceType, version: str) -> dict:
    obj = copy.deepcopy(obj)
    obj["apiVersion"], obj["kind"] = rtype.api_version(version), rtype.kind
    return obj


class Handler(JsonHandler):
    server_double = None   # bound by kube_api._handler

    # -- the common path --------------------------------------------------------------------------------

    def _serve(self, method: str) -> None:
        double = self.server_double
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self.read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
        double.requests.append(Request(method, url.path, query, body, dict(self.headers)))
        try:
            if double.tokens is not None:
                given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                if given not in double.tokens:
                    raise ApiStatus(401, "Unauthorized", "Unauthorized")
            fault = double._fault_for(method, url.path, query.get("watch") in ("1", "true"))
            if fault is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                raise ApiStatus(fault.code, REASONS.get(fault.code, "Failure"),
                                f"injected by the test: {fault.code}", headers)
            if self._discovery(method, url.path) or self._pod_proxy(method, url):
                return
            route = parse_path(url.path, double.store.namespaced_pairs())
            if route is None:
                raise ApiStatus(404, "NotFound", f"the server could not find the requested resource {url.path}")
            rtype = double.store.type_of(route.group, route.plural, route.version)
            getattr(self, f"_{method.lower()}")(rtype, route, query, body)
        except ApiStatus as e:
            self.send_json(e.code, status(e.code, e.reason, e.message), e.headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - a bug in the double: say so to the client, loudly
            self.send_json(500, status(500, "InternalError", f"the API double failed: {type(e).__name__}: {e}"))

    def _pod_proxy(self, method: str, url) -> bool:
        """`pods/NAME[:PORT]/proxy/PATH`: the request forwarded to the pod's IP and port over HTTP, as the real
        server does (a GET only here); a pod that is not there is 404, one that does not answer 503."""
        found = _POD_PROXY.match(url.path)
        if found is None:
            return False
        namespace, name, port, path = found.group("ns"), found.group("name"), found.group("port"), found.group("path")
        if method != "GET":
            raise ApiStatus(405, "MethodNotAllowed", "the double proxies GET only")
        pod = self.server_double.get("Pod", namespace, name)
        if pod is None:
            raise ApiStatus(404, "NotFound", f'pods "{name}" not found')
        address = (pod.get("status") or {}).get("podIP")
        if not address:
            raise ApiStatus(503, "ServiceUnavailable", f"pod {name} has no IP address")
        target = f"http://{address}:{port or 80}{path or '/'}" + (f"?{url.query}" if url.query else "")
        try:
            with urllib.request.urlopen(target, timeout=10) as answer:
                code, ctype, data = answer.status, answer.headers.get("Content-Type", ""), answer.read()
        except urllib.error.HTTPError as e:
            code, ctype, data = e.code, e.headers.get("Content-Type", ""), e.read()
        except OSError as e:
            raise ApiStatus(503, "ServiceUnavailable", f"error trying to reach service: {e}") from None
        self.send_response(code)
        self.send_header("Content-Type", ctype or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_PATCH(self):
        self._serve("PATCH")

    def do_DELETE(self):
        self._serve("DELETE")

    # -- discovery ------------------------------------------------------------------------------------

    def _discovery(self, method: str, path: str) -> bool:
        if method != "GET":
            return False
        store = self.server_double.store
        parts = [p for p in path.split("/") if p]
        if parts == ["version"]:
            self.send_json(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-shoal-double"})
        elif parts == ["api"]:
            self.send_json(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif parts == ["apis"]:
            groups = sorted({g for g, v in store.served.items() if g and v})
            self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in _ordered(store, g)],
                 "preferredVersion": {"groupVersion": f"{g}/{_ordered(store, g)[0]}", "version": _ordered(store, g)[0]}}
                for g in groups]})
        elif parts in (["api", "v1"],) or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
            if version not in store.served.get(group, set()):
                raise ApiStatus(404, "NotFound", f"the server could not find the requested resource {path}")
            resources = []
            for t in [t for (g, _), t in sorted(store.types.items()) if g == group and version in t.versions]:
                verbs = ["create"] if t.plural in REVIEWS else ["create", "delete", "get", "list", "patch", "update",
                                                                "watch"]
                resources.append({"name": t.plural, "singularName": t.kind.lower(), "kind": t.kind,
                                  "namespaced": t.namespaced, "verbs": verbs})
                if t.status:
                    resources.append({"name": f"{t.plural}/status", "singularName": "", "kind": t.kind,
                                      "namespaced": t.namespaced,
                                      "verbs": ["get", "patch", "update"]})
            self.send_json(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                 "groupVersion": f"{group}/{version}" if group else version, "resources": resources})
        else:
            return False
        return True

    # -- verbs ------------------------------------------------------------------------------------------

    def _get(self, rtype: ResourceType, route, query: dict, body) -> None:
        store = self.server_double.store
        if route.name:
            if route.subresource not in (None, "status"):
                raise ApiStatus(404, "NotFound", f"no subresource {route.subresource!r}")
            return self.send_json(200, _shaped(store.get(rtype, route.namespace, route.name), rtype, route.version))
        if query.get("watch") in ("1", "true"):
            return self._watch(rtype, route, query)
        items, rv = store.list(rtype, route.namespace, query.get("labelSelector"), query.get("fieldSelector"))
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        page = items[start:start + limit] if limit else items[start:]
        meta = {"resourceVersion": str(rv)}
        if limit and start + limit < len(items):
            meta.update({"continue": str(start + limit), "remainingItemCount": len(items) - start - limit})
        for item in page:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        self.send_json(200, {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version(route.version),
                             "metadata": meta, "items": page})

    def _post(self, rtype: ResourceType, route, query: dict, body) -> None:
        if route.name:
            raise ApiStatus(405, "MethodNotAllowed", "POST goes to a collection")
        if rtype.plural == "tokenreviews":
            review = dict(body or {})
            review["status"] = self.server_double.review(review.get("spec") or {})
            return self.send_json(201, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", **review})
        if not isinstance(body, dict):
            raise ApiStatus(400, "BadRequest", "the body is not an object")
        created = self.server_double.store.create(rtype, route.namespace, body)
        self.send_json(201, _shaped(created, rtype, route.version))

    def _put(self, rtype: ResourceType, route, query: dict, body) -> None:
        if not route.name or not isinstance(body, dict):
            raise ApiStatus(400, "BadRequest", "PUT needs an object path and an object body")
        if (body.get("metadata") or {}).get("name") not in (None, route.name):
            raise ApiStatus(400, "BadRequest", "the name of the object does not match the name on the URL")
        written = self.server_double.store.replace(rtype, route.namespace, route.name, body, route.subresource)
        self.send_json(200, _shaped(written, rtype, route.version))

    def _patch(self, rtype: ResourceType, route, query: dict, body) -> None:
        if not route.name:
            raise ApiStatus(405, "MethodNotAllowed", "PATCH needs an object path")
        written = self.server_double.store.patch(rtype, route.namespace, route.name, body,
                                                 self.headers.get("Content-Type") or "", route.subresource,
                                                 query.get("fieldManager"))
        self.send_json(200, _shaped(written, rtype, route.version))

    def _delete(self, rtype: ResourceType, route, query: dict, body) -> None:
        if not route.name:
            raise ApiStatus(405, "MethodNotAllowed", "deletecollection is not served by the double")
        options = body if isinstance(body, dict) else {}
        grace = options.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        propagation = options.get("propagationPolicy") or query.get("propagationPolicy") or "Background"
        obj, gone = self.server_double.store.delete(rtype, route.namespace, route.name,
                                                    grace=None if grace is None else int(grace),
                                                    propagation=propagation)
        custom = rtype.group not in {t.group for t in BUILTIN}
        if not gone or rtype.plural in RETURN_DELETED or custom:
            return self.send_json(200, _shaped(obj, rtype, route.version))
        self.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": route.name, "group": rtype.group, "kind": rtype.plural,
                                         "uid": obj["metadata"].get("uid")}})

    # -- watch -----------------------------------------------------------------------------------------

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, rtype: ResourceType, route, query: dict) -> None:
        double = self.server_double
        store = double.store
        wanted = store.matcher(rtype, route.namespace, query.get("labelSelector"), query.get("fieldSelector"))
        given = query.get("resourceVersion") or ""
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        with store.lock:
            gone = given not in ("", "0") and int(given) < store.oldest
            initial = [] if given not in ("", "0") else store.list(rtype, route.namespace,
                                                                   query.get("labelSelector"),
                                                                   query.get("fieldSelector"))[0]
            sent = int(given) if given not in ("", "0") else store.rv
        message = f"too old resource version: {given} ({store.oldest})"
        if gone and double.gone_as_http:
            raise ApiStatus(410, "Expired", message)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if gone:
            self._chunk({"type": "ERROR", "object": status(410, "Expired", message)})
            self.wfile.write(b"0\r\n\r\n")
            return
        for obj in initial:
            self._chunk({"type": "ADDED", "object": _shaped(obj, rtype, route.version)})
        with store.lock:
            double._streams.add(self)
            bookmarks_seen, drops_seen = double._bookmarks, double._drops
        try:
            while True:
                with store.changed:
                    pending = [c for c in store.history if c.rv > sent and c.key[:2] == (rtype.group, rtype.plural)]
                    send_bookmark = bookmarks and double._bookmarks != bookmarks_seen
                    bookmarks_seen = double._bookmarks
                    dropped = double._drops != drops_seen
                    current = store.rv
                    if not pending and not send_bookmark and not dropped:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        store.changed.wait(min(left, 0.5))
                        continue
                if dropped:
                    self.close_connection = True
                    return   # no terminating chunk: the client sees a broken stream
                for change in pending:
                    event = _as_seen(change, wanted)
                    if event is not None:
                        self._chunk({"type": event[0], "object": _shaped(event[1], rtype, route.version)})
                    sent = change.rv
                if send_bookmark:
                    sent = max(sent, current)
                    self._chunk({"type": "BOOKMARK", "object": {
                        "kind": rtype.kind, "apiVersion": rtype.api_version(route.version),
                        "metadata": {"resourceVersion": str(sent)}}})
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with store.lock:
                double._streams.discard(self)


def _ordered(store, group: str) -> list[str]:
    """The group's served versions, preferred first (as its resource types list them)."""
    known = [v for t in store.types.values() if t.group == group for v in t.versions]
    return sorted(store.served[group], key=lambda v: known.index(v) if v in known else len(known))


def _as_seen(change, wanted) -> tuple[str, dict] | None:
    """The event a watch with these selectors sees for a change: an object entering the selection is
    ADDED, one leaving it DELETED (as the real server's watch cache does)."""
    after = change.type != "DELETED" and wanted(change.object)
    before = change.before is not None and wanted(change.before)
    if change.type == "DELETED":
        return ("DELETED", change.object) if wanted(change.object) else None
    if after and before:
        return "MODIFIED", change.object
    if after:
        return "ADDED", change.object
    if before:
        return "DELETED", change.object
    return None
