"""A small Kubernetes API server double for the waypoint controller: create, list (with a label
selector), read, merge-patch and delete, over HTTP, as the real API server answers them.

Resources: serviceaccounts, configmaps, services (core v1), deployments (apps/v1), and gateways
(gateway.networking.k8s.io/v1, cluster-wide list). Every write is logged in `writes`.
"""

from __future__ import annotations

import copy
import threading
import uuid
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from support.kube_api import JsonHandler, status

PLURALS = {"serviceaccounts": ("v1", "ServiceAccount"), "configmaps": ("v1", "ConfigMap"),
           "services": ("v1", "Service"), "deployments": ("apps/v1", "Deployment"),
           "gateways": ("gateway.networking.k8s.io/v1", "Gateway")}


def _merge(base: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class KubeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}   # (plural, namespace, name) -> object
        self.writes: list[tuple[str, str]] = []              # (method, path)
        self.rv = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def put(self, plural: str, obj: dict) -> dict:
        with self.lock:
            self.rv += 1
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            api_version, kind = PLURALS[plural]
            obj.setdefault("apiVersion", api_version)
            obj.setdefault("kind", kind)
            self.objects[(plural, meta.get("namespace", ""), meta["name"])] = obj
            return copy.deepcopy(obj)

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        return copy.deepcopy(self.objects.get((plural, namespace, name)))

    def remove(self, plural: str, namespace: str, name: str) -> None:
        with self.lock:
            self.objects.pop((plural, namespace, name), None)

    def _handler(self):
        api = self

        class Handler(JsonHandler):
            def _parse(self):
                """(plural, namespace or None, name or None, query)."""
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                parts = parts[2:] if parts[0] == "api" else parts[3:]    # drop api/v1 or apis/group/version
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if parts and parts[0] == "namespaces" and len(parts) >= 3:
                    return parts[2], parts[1], parts[3] if len(parts) > 3 else None, query
                return parts[0], None, None, query

            def do_GET(self):
                plural, namespace, name, query = self._parse()
                if plural not in PLURALS:
                    return self.send_json(404, status(404, "NotFound", f"no resource {plural}"))
                if name:
                    obj = api.get(plural, namespace, name)
                    return self.send_json(200, obj) if obj else self.send_json(404, status(404, "NotFound", name))
                selector = dict(s.split("=", 1) for s in query.get("labelSelector", "").split(",") if "=" in s)
                with api.lock:
                    items = [copy.deepcopy(o) for (p, ns, _), o in sorted(api.objects.items())
                             if p == plural and (namespace is None or ns == namespace)
                             and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]
                api_version, kind = PLURALS[plural]
                self.send_json(200, {"kind": f"{kind}List", "apiVersion": api_version,
                                 "metadata": {"resourceVersion": str(api.rv)}, "items": items})

            def do_POST(self):
                plural, namespace, _, _ = self._parse()
                body = self.read_json()
                body.setdefault("metadata", {})["namespace"] = namespace
                api.writes.append(("POST", self.path))
                if api.get(plural, namespace, body["metadata"]["name"]) is not None:
                    return self.send_json(409, status(409, "AlreadyExists", body["metadata"]["name"]))
                self.send_json(201, api.put(plural, body))

            def do_PATCH(self):
                plural, namespace, name, _ = self._parse()
                api.writes.append(("PATCH", self.path))
                obj = api.get(plural, namespace, name)
                if obj is None:
                    return self.send_json(404, status(404, "NotFound", name))
                self.send_json(200, api.put(plural, _merge(obj, self.read_json())))

            def do_DELETE(self):
                plural, namespace, name, _ = self._parse()
                api.writes.append(("DELETE", self.path))
                if api.get(plural, namespace, name) is None:
                    return self.send_json(404, status(404, "NotFound", name))
                gone = api.get(plural, namespace, name)
                api.remove(plural, namespace, name)
                # As the API server answers: the deleted object for services and service accounts,
                # a Status for the others.
                if plural in ("services", "serviceaccounts"):
                    return self.send_json(200, gone)
                self.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                 "details": {"name": name, "kind": plural}})

        return Handler
