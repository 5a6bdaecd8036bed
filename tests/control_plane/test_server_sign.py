"""Certificates.Sign over real gRPC: node authorization, waypoints, refusals, metrics, openssl."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
import pytest

from shoal import identity
from shoal.api import ca_pb2, ca_pb2_grpc
from shoal.config_client import ConfigClientError, open_channel, request_certificate
from shoal.identity import SpiffeId
from shoal import tokens

from support import metrics
from support.net import http_get
from support.plane import TD, running_plane, workload


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


PODS = [workload(1, node="node1", sa="reviews"), workload(2, node="node2", sa="ratings")]


def test_a_node_gets_identities_of_its_own_pods_only(tmp_path):
    async def main():
        async with running_plane(tmp_path, PODS) as plane:
            mine = SpiffeId(TD, "shop", "reviews")
            cred = await request_certificate(plane.settings("node1"), identity.new_key(), mine)
            assert cred.identity == mine
            (tmp_path / "chain.pem").write_bytes(cred.chain_pem)
            (tmp_path / "bundle.pem").write_bytes(cred.bundle_pem)
            verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem"),
                                     str(tmp_path / "chain.pem")], capture_output=True, text=True)
            assert verify.returncode == 0, verify.stderr
            # ratings runs on node2 only: node1 may not have it.
            with pytest.raises(ConfigClientError, match="PERMISSION_DENIED.*no pod with service account shop/ratings"):
                await request_certificate(plane.settings("node1"), identity.new_key(), SpiffeId(TD, "shop", "ratings"))
            # Once the pod is gone from node1, its identity is refused there too.
            plane.state.apply(removals=[("Workload", "uid-1")])
            with pytest.raises(ConfigClientError, match="PERMISSION_DENIED"):
                await request_certificate(plane.settings("node1"), identity.new_key(), mine)
            assert plane.server.metrics.csr_signed._value.get() == 1
            assert plane.server.metrics.csr_refused.labels("not-authorized")._value.get() == 2
    run(main())


def test_san_mismatch_and_bad_identity_are_refused(tmp_path):
    async def main():
        async with running_plane(tmp_path, PODS) as plane:
            async with open_channel(plane.settings("node1")) as channel:
                stub = ca_pb2_grpc.CertificatesStub(channel)
                meta = tokens.metadata(plane.settings("node1").current_token())
                lying = identity.make_csr(identity.new_key(), SpiffeId(TD, "shop", "ratings")).decode()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Sign(ca_pb2.SignRequest(csr=lying, identity=f"spiffe://{TD}/ns/shop/sa/reviews"),
                                    metadata=meta)
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "differs from the identity requested" in info.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Sign(ca_pb2.SignRequest(csr=lying, identity="reviews"), metadata=meta)
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Sign(ca_pb2.SignRequest(csr=lying, identity=f"spiffe://{TD}/ns/shop/sa/reviews"))
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert plane.server.metrics.csr_refused.labels("bad-csr")._value.get() == 1
            assert plane.server.metrics.csr_signed._value.get() == 0
    run(main())


def test_a_waypoint_gets_only_its_own_identity(tmp_path):
    async def main():
        async with running_plane(tmp_path, PODS) as plane:
            settings = plane.settings(waypoint_namespace="shop", waypoint_name="wp", token=plane.sa_token("shop", "wp"))
            own = await request_certificate(settings, identity.new_key(), SpiffeId(TD, "shop", "wp"))
            assert own.identity == SpiffeId(TD, "shop", "wp")
            with pytest.raises(ConfigClientError, match="may only get its own identity"):
                await request_certificate(settings, identity.new_key(), SpiffeId(TD, "shop", "reviews"))
            forged = settings.__class__(**{**settings.__dict__, "token": "shoal-sa1:shop:reviews:" + "0" * 64})
            with pytest.raises(ConfigClientError, match="UNAUTHENTICATED"):
                await request_certificate(forged, identity.new_key(), SpiffeId(TD, "shop", "reviews"))
    run(main())


def test_not_ready_until_synced_and_metrics_exported(tmp_path):
    async def main():
        async with running_plane(tmp_path, synced=False) as plane:
            loop = asyncio.get_running_loop()

            def get(path):
                return http_get(f"http://127.0.0.1:{plane.server.http_port}{path}")

            status, body = await loop.run_in_executor(None, get, "/healthz/ready")
            assert status == 503 and "first full list" in body
            with pytest.raises(ConfigClientError, match="UNAVAILABLE"):
                await request_certificate(plane.settings("node1"), identity.new_key(), SpiffeId(TD, "shop", "x"))
            plane.server.mark_synced()
            status, _ = await loop.run_in_executor(None, get, "/healthz/ready")
            assert status == 200
            plane.state.apply([workload(1, sa="x")])
            await request_certificate(plane.settings("node1"), identity.new_key(), SpiffeId(TD, "shop", "x"))
            status, text = await loop.run_in_executor(None, get, "/metrics")
            assert status == 200
            assert metrics.value(text, "shoal_csr_signed_total") == 1
            for name in ("shoal_xds_pushes_total", "shoal_xds_push_time_seconds", "shoal_xds_connected_proxies",
                         "shoal_xds_nacks_total", "shoal_csr_refused_total"):
                assert f"# TYPE {name.removesuffix('_total')}" in text, name
            status, page = await loop.run_in_executor(None, get, "/debug/config")
            assert status == 200 and '"Workload"' in page
    run(main())


def test_the_control_planes_status_lists_what_each_ztunnel_was_issued_while_its_pod_is_there(tmp_path):
    async def main():
        async with running_plane(tmp_path, PODS) as plane:
            assert plane.server.status()["certificates"] == []
            mine = SpiffeId(TD, "shop", "reviews")
            cred = await request_certificate(plane.settings("node1"), identity.new_key(), mine)
            (entry,) = plane.server.status()["certificates"]
            assert (entry["proxy"], entry["identity"]) == ("ztunnel on node1", str(mine))
            left = cred.not_after.timestamp() - plane.server.authority.clock().timestamp()
            assert abs(entry["expires_in_seconds"] - left) <= 5
            plane.state.apply(removals=[("Workload", "uid-1")])      # the pod left node1: no longer its concern
            assert plane.server.status()["certificates"] == []
    run(main())
