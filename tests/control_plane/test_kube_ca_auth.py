"""The Kubernetes halves of the CA and of authentication, through the real kubernetes
client against a small HTTP API double: Secret shoal-ca (read, create on first start,
409 race), the bundle ConfigMap, and TokenReview (node tokens, other service accounts)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from control_plane import ca_store
from control_plane.authn import AuthenticationFailed, KubeAuthenticator
from control_plane.ca import generate_root

TD = "cluster.local"


class ApiDouble:
    """Secrets and ConfigMaps by namespace/name, and a TokenReview table, over HTTP."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}   # "/api/v1/namespaces/ns/secrets/name" -> object
        self.reviews: dict[str, dict] = {}   # token -> status.user
        self.pods: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.create_conflicts = 0            # answer this many creates with 409 (another replica won)
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

            def do_GET(self):
                double.requests.append(("GET", self.path))
                obj = double.objects.get(self.path) or double.pods.get(self.path)
                if obj is None:
                    return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "NotFound", "code": 404})
                self._send(200, obj)

            def do_POST(self):
                double.requests.append(("POST", self.path))
                body = self._body()
                if self.path == "/apis/authentication.k8s.io/v1/tokenreviews":
                    user = double.reviews.get(body["spec"]["token"])
                    status = {"authenticated": True, "user": user} if user else {"authenticated": False,
                                                                                  "error": "invalid bearer token"}
                    return self._send(201, {**body, "status": status})
                path = f"{self.path}/{body['metadata']['name']}"
                if double.create_conflicts or path in double.objects:
                    double.create_conflicts = max(0, double.create_conflicts - 1)
                    return self._send(409, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                            "reason": "AlreadyExists", "code": 409})
                double.objects[path] = body
                self._send(201, body)

            def do_PUT(self):
                double.requests.append(("PUT", self.path))
                double.objects[self.path] = self._body()
                self._send(200, double.objects[self.path])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def api(self) -> client.ApiClient:
        config = client.Configuration()
        config.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(config)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def double():
    d = ApiDouble()
    yield d
    d.close()


SECRET = "/api/v1/namespaces/shoal-system/secrets/shoal-ca"
CONFIGMAP = "/api/v1/namespaces/shoal-system/configmaps/shoal-ca-root-cert"


def test_secret_is_created_on_first_start_then_reused(double):
    core = client.CoreV1Api(double.api())
    root, trusted = ca_store.load_or_create(ca_store.KubeSecretRootStore(core), TD)
    assert SECRET in double.objects and set(double.objects[SECRET]["data"]) == {"ca.crt", "ca.key", "bundle.pem"}
    assert "BEGIN CERTIFICATE" in double.objects[CONFIGMAP]["data"]["root-cert.pem"]
    assert "PRIVATE KEY" not in double.objects[CONFIGMAP]["data"]["root-cert.pem"]
    again, _ = ca_store.load_or_create(ca_store.KubeSecretRootStore(client.CoreV1Api(double.api())), TD)
    assert again.fingerprint == root.fingerprint
    assert [m for m, p in double.requests if p.startswith(SECRET.rsplit("/", 1)[0])].count("POST") == 1


def test_losing_the_creation_race_uses_the_winners_root(double):
    core = client.CoreV1Api(double.api())
    winner = generate_root(TD)
    store = ca_store.KubeSecretRootStore(core)

    real_create = store.create

    def create_after_the_other_replica(signer, trusted):
        real_create(winner, [winner.cert])          # the other replica gets there first
        return real_create(signer, trusted)         # ours then gets 409
    store.create = create_after_the_other_replica
    root, _ = ca_store.load_or_create(store, TD)
    assert root.fingerprint == winner.fingerprint


def test_unreadable_secret_is_a_clear_error(double):
    double.objects[SECRET] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shoal-ca"},
                              "data": {"ca.crt": "bm9wZQ=="}}
    with pytest.raises(ca_store.RootInvalid, match="lacks ca.crt or ca.key"):
        ca_store.KubeSecretRootStore(client.CoreV1Api(double.api())).load()


def _authenticator(double) -> KubeAuthenticator:
    api = double.api()
    return KubeAuthenticator(client.AuthenticationV1Api(api), client.CoreV1Api(api))


def test_token_review_node_and_service_account_callers(double):
    double.reviews["ztunnel-token"] = {"username": "system:serviceaccount:shoal-system:shoal-node",
                                       "extra": {"authentication.kubernetes.io/node-name": ["worker-3"]}}
    double.reviews["waypoint-token"] = {"username": "system:serviceaccount:shop:waypoint"}
    double.reviews["user-token"] = {"username": "alice"}
    auth = _authenticator(double)
    assert auth.authenticate("ztunnel-token").node == "worker-3"
    wp = auth.authenticate("waypoint-token")
    assert (wp.namespace, wp.service_account, wp.node) == ("shop", "waypoint", "")
    with pytest.raises(AuthenticationFailed, match="not a service account"):
        auth.authenticate("user-token")
    with pytest.raises(AuthenticationFailed, match="invalid bearer token"):
        auth.authenticate("forged")
    reviews = sum(1 for m, p in double.requests if p.endswith("/tokenreviews"))
    auth.authenticate("ztunnel-token")  # cached: no second review
    assert sum(1 for m, p in double.requests if p.endswith("/tokenreviews")) == reviews


def test_node_token_without_node_falls_back_to_the_pod(double):
    double.reviews["old-style"] = {"username": "system:serviceaccount:shoal-system:shoal-node",
                                   "extra": {"authentication.kubernetes.io/pod-name": ["shoal-node-abcde"]}}
    double.pods["/api/v1/namespaces/shoal-system/pods/shoal-node-abcde"] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shoal-node-abcde", "namespace": "shoal-system"},
        "spec": {"nodeName": "worker-7", "containers": [{"name": "c"}]}}
    double.reviews["unbound"] = {"username": "system:serviceaccount:shoal-system:shoal-node"}
    auth = _authenticator(double)
    assert auth.authenticate("old-style").node == "worker-7"
    with pytest.raises(AuthenticationFailed, match="not bound to a node"):
        auth.authenticate("unbound")
