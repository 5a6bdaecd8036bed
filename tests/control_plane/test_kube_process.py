"""The control plane's run loop with its Kubernetes parts: config from the list/watch double
(support.kube_api.KubeDouble) through the real KubeSource, the CA in a Secret and callers checked by
TokenReview (support.kube_api.ApiDouble), served over real gRPC."""

from __future__ import annotations

import asyncio

from kubernetes import client

from control_plane import app, ca_store
from control_plane.authn import TOKEN_AUDIENCE, KubeAuthenticator
from control_plane.sources.kube import KubeSource, make_api_client, report_invalid
from shoal import identity
from shoal.config_client import ClientSettings, ConfigClient, ConfigClientError, request_certificate
from shoal.identity import SpiffeId
from shoal.lifecycle import Shutdown
from shoal.model import ResourceType

from support.kube_api import CA_CONFIGMAP, ApiDouble, KubeDouble
from support.net import free_port, http_get
from support.polling import eventually_async


def test_kube_wiring_end_to_end():
    kube = KubeDouble().start()
    api_double = ApiDouble()
    try:
        kube.add({"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}})
        kube.add({"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "reviews-1", "namespace": "shop", "labels": {"app": "reviews"}},
                  "spec": {"nodeName": "worker-1", "serviceAccountName": "reviews", "containers": [{"name": "c"}]},
                  "status": {"phase": "Running", "podIP": "198.19.1.20"}})
        node_sa = "system:serviceaccount:shoal-system:shoal-node"
        api_double.reviews["zt-1"] = {"username": node_sa,
                                      "extra": {"authentication.kubernetes.io/node-name": ["worker-1"]}}
        api_double.reviews["zt-2"] = {"username": node_sa,
                                      "extra": {"authentication.kubernetes.io/node-name": ["worker-2"]}}
        api_double.audiences.update({"zt-1": [TOKEN_AUDIENCE], "zt-2": [TOKEN_AUDIENCE]})  # projected for shoal
        config = client.Configuration()
        config.host = kube.url
        kube_api = make_api_client(config)
        side_api = api_double.api()
        core = client.CoreV1Api(side_api)
        wiring = app.Wiring(roots=ca_store.KubeSecretRootStore(core),
                            authenticator=KubeAuthenticator(client.AuthenticationV1Api(side_api), core),
                            events=KubeSource(kube_api, retry_delay=0.05).events(),
                            report=lambda obj, errors: report_invalid(kube_api, obj, errors))
        grpc_port, http_port = free_port(), free_port()
        settings = app.Settings(source="kube", listen=f"127.0.0.1:{grpc_port}", http=f"127.0.0.1:{http_port}")

        async def main():
            shutdown = Shutdown()
            running = asyncio.create_task(app.run(settings, shutdown, wiring))
            loop = asyncio.get_running_loop()

            async def ready() -> bool:
                assert not running.done(), "the control plane stopped before it was ready"
                url = f"http://127.0.0.1:{http_port}/healthz/ready"
                return (await loop.run_in_executor(None, http_get, url, None, 1))[0] == 200
            await eventually_async(ready, 20, "the control plane to be ready", interval=0.05)
            bundle = api_double.objects[CA_CONFIGMAP]["data"]["root-cert.pem"].encode()

            def settings_for(token: str, node: str) -> ClientSettings:
                return ClientSettings(target=f"127.0.0.1:{grpc_port}", bundle_pem=bundle, token=token, node=node)
            watcher = ConfigClient(settings_for("zt-2", "worker-2"))
            watching = asyncio.create_task(watcher.run())
            await asyncio.wait_for(watcher.synced.wait(), 10)
            (workload,) = watcher.resources(ResourceType.WORKLOAD).values()
            assert (workload.name, workload.node, str(workload.protocol)) == ("reviews-1", "worker-1", "HBONE")
            reviews = SpiffeId("cluster.local", "shop", "reviews")
            cred = await request_certificate(settings_for("zt-1", "worker-1"), identity.new_key(), reviews)
            assert cred.identity == reviews
            try:
                await request_certificate(settings_for("zt-2", "worker-2"), identity.new_key(), reviews)
                raise AssertionError("worker-2 got a certificate for a pod of worker-1")
            except ConfigClientError as e:
                assert "PERMISSION_DENIED" in str(e)
            # A refused object becomes a Kubernetes Event next to it.
            kube.add({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                      "metadata": {"name": "bad", "namespace": "shop"}, "spec": {"mtls": {"mode": "SOMETIMES"}}})
            await eventually_async(lambda: any(e["involvedObject"]["name"] == "bad" for e in kube.events), 10,
                                   "an Event for the refused object", interval=0.05)
            watcher.stop()
            await watching
            shutdown.stopping.set()
            return await asyncio.wait_for(running, 10)

        assert asyncio.run(main()) == 0
    finally:
        api_double.close()
        kube.stop()
