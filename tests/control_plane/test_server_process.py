"""The real `shoal control-plane --source local` process against a local store made here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from shoal import identity
from shoal.config_client import ClientSettings, ConfigClient, ConfigClientError, request_certificate
from shoal.identity import SpiffeId
from shoal.model import ResourceType
from shoal.store import Store

from support import metrics
from support.cli import SHOAL, shoal
from support.net import free_port, http_get
from support.polling import eventually, eventually_async

CLUSTER = "cptest"
TOKENS = {"node1": "n1-" + "c" * 30, "node2": "n2-" + "d" * 30}
W = ResourceType.WORKLOAD


def pod(name: str, node: str, sa: str, ip: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", "labels": labels or {"app": name}},
            "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c"}]}}


def put_pod(store: Store, obj: dict, ip: str) -> None:
    store.apply(obj)
    store.update_status("Pod", "shop", obj["metadata"]["name"], {"phase": "Running", "podIP": ip})


@pytest.fixture
def cluster(tmp_path):
    store = Store(CLUSTER, root=tmp_path)
    store.init()
    run_dir = tmp_path / CLUSTER
    (run_dir / "bootstrap-tokens.json").write_text(json.dumps({t: n for n, t in TOKENS.items()}))
    store.apply({"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": "shop", "labels": {"shoal.io/dataplane-mode": "ambient"}}})
    put_pod(store, pod("reviews-1", "node1", "reviews", "198.19.1.5"), "198.19.1.5")
    put_pod(store, pod("ratings-1", "node2", "ratings", "198.19.2.5"), "198.19.2.5")
    return tmp_path, store


class Process:
    def __init__(self, root: Path, *extra: str) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        argv = [*SHOAL, "--log-format", "json", "control-plane", "--source", "local",
                "--cluster", CLUSTER, "--listen", f"127.0.0.1:{self.grpc_port}",
                "--http", f"127.0.0.1:{self.http_port}", *extra]
        self.log = open(root / f"cp-{self.grpc_port}.log", "w+")
        self.proc = subprocess.Popen(argv, env={**os.environ, "SHOAL_RUN_ROOT": str(root),
                                                "SHOAL_CA_RELOAD_SECONDS": "0.2"},
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.http_port}{path}", timeout=2)

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"the control plane exited; log:\n{self.logs()}"
            return self.get("/healthz/ready")[0] == 200
        eventually(ready, timeout, lambda: f"the control plane to be ready; log:\n{self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()


def settings(root: Path, port: int, node: str) -> ClientSettings:
    bundle = (root / CLUSTER / "ca" / "bundle.pem").read_bytes()
    return ClientSettings(target=f"127.0.0.1:{port}", bundle_pem=bundle, token=TOKENS[node], node=node,
                          backoff_initial=0.05, backoff_max=0.5)


def test_process_serves_config_and_certificates_then_stops_cleanly(cluster):
    root, store = cluster
    cp = Process(root)
    try:
        cp.wait_ready()

        async def main():
            updates = []
            client = ConfigClient(settings(root, cp.grpc_port, "node1"), updates.append)
            task = asyncio.create_task(client.run())
            try:
                await asyncio.wait_for(client.synced.wait(), 10)
                assert {w.name for w in client.resources(W).values()} == {"reviews-1", "ratings-1"}
                n = len(updates)
                store.patch_metadata("Pod", "shop", "reviews-1", labels={"app": "reviews-1", "version": "v2"})
                await eventually_async(lambda: any(u.type is W for u in updates[n:]), what="the Workload update")
                change = next(u for u in updates[n:] if u.type is W)
                assert [w.name for w in change.upserted.values()] == ["reviews-1"] and not change.removed
                assert dict(next(iter(change.upserted.values())).labels)["version"] == "v2"

                s1 = settings(root, cp.grpc_port, "node1")
                cred = await request_certificate(s1, identity.new_key(), SpiffeId("cluster.local", "shop", "reviews"))
                assert cred.identity.service_account == "reviews"
                with pytest.raises(ConfigClientError, match="PERMISSION_DENIED"):
                    await request_certificate(s1, identity.new_key(), SpiffeId("cluster.local", "shop", "ratings"))
            finally:
                client.stop()
                await task
        asyncio.run(asyncio.wait_for(main(), 30))

        # A bad object is refused with its reason: log, metric and an Event; the rest keeps working.
        store.apply({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                     "metadata": {"name": "broken", "namespace": "shop"}, "spec": {"action": "MAYBE"}})
        eventually(lambda: metrics.value(cp.get("/metrics")[1], "shoal_config_rejected_total",
                                         kind="AuthorizationPolicy") == 1, 10,
                   lambda: f"the refusal to be counted; log:\n{cp.logs()}")
        events, _ = store.list("Event", "shop")
        assert any(e["involvedObject"]["name"] == "broken" and "action" in e["message"] for e in events)
        assert cp.get("/healthz/ready")[0] == 200
        status, page = cp.get("/")
        assert status == 200 and "Connected proxies" in page
    finally:
        code = cp.stop()
    assert code == 0, cp.logs()
    assert '"control plane stopped"' in cp.logs()
    assert TOKENS["node1"] not in cp.logs() and TOKENS["node2"] not in cp.logs()


def test_root_persists_across_restarts_and_bad_flags_fail_clearly(cluster):
    root, _ = cluster
    first = Process(root)
    first.wait_ready()
    assert first.stop() == 0
    bundle = (root / CLUSTER / "ca" / "bundle.pem").read_bytes()
    assert ((root / CLUSTER / "ca" / "ca.key").stat().st_mode & 0o077) == 0
    second = Process(root)
    second.wait_ready()
    assert second.stop() == 0
    assert (root / CLUSTER / "ca" / "bundle.pem").read_bytes() == bundle

    bad = shoal("control-plane", "--ca-cert", str(root / "x.crt"), check=False, env={"SHOAL_RUN_ROOT": str(root)})
    assert bad.returncode == 2 and "--ca-cert and --ca-key go together" in bad.stderr


def test_rotation_while_running(cluster, tmp_path):
    """`--rotate-ca` against a running control plane: the new root is trusted at once (the bundle file,
    every Sign answer) and does not sign yet; the rest of the schedule is test_rotation's, on a fake clock."""
    root, _ = cluster
    cp = Process(root)  # with SHOAL_CA_RELOAD_SECONDS=0.2
    try:
        cp.wait_ready()
        ca_dir = root / CLUSTER / "ca"

        async def sign(service_account: str = "reviews"):
            return await request_certificate(settings(root, cp.grpc_port, "node1"), identity.new_key(),
                                             SpiffeId("cluster.local", "shop", service_account))
        old_leaf = asyncio.run(sign())
        old_root = (ca_dir / "ca.crt").read_bytes()
        old_fp = identity.load_certificates(old_root)[0].fingerprint(hashes.SHA256()).hex()
        env = {"SHOAL_RUN_ROOT": str(root)}
        out = shoal("control-plane", "--cluster", CLUSTER, "--rotate-ca", check=False, env=env)
        assert out.returncode == 0 and "is trusted from now on" in out.stdout, out.stderr
        assert len(identity.load_certificates((ca_dir / "bundle.pem").read_bytes())) == 2   # at once
        new_fp = (set(c.fingerprint(hashes.SHA256()).hex()
                      for c in identity.load_certificates((ca_dir / "bundle.pem").read_bytes())) - {old_fp}).pop()

        def answered_with_both_roots():  # the process adopts the new root within its reload period
            leaf = asyncio.run(sign())
            return leaf if len(identity.load_certificates(leaf.bundle_pem)) == 2 else None
        trusting_leaf = eventually(answered_with_both_roots, 10, lambda: f"the new root adopted; log:\n{cp.logs()}",
                                   interval=0.2)

        def verify(ca: bytes, leaf: bytes) -> int:
            (tmp_path / "ca.pem").write_bytes(ca)
            (tmp_path / "leaf.pem").write_bytes(leaf)
            return subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
                                  capture_output=True).returncode
        # Still signed by the old root: peers that have not renewed yet trust it.
        assert verify(old_root, trusting_leaf.chain_pem) == 0 and verify(old_root, old_leaf.chain_pem) == 0
        assert (ca_dir / "ca.crt").read_bytes() == old_root
        shown = shoal("control-plane", "--cluster", CLUSTER, "--show-roots", check=False, env=env)
        assert shown.returncode == 0 and f"signing root:  {old_fp[:16]}" in shown.stdout
        assert f"{new_fp[:16]}  incoming: trusted since" in shown.stdout
        again = shoal("control-plane", "--cluster", CLUSTER, "--rotate-ca", check=False, env=env)
        assert again.returncode == 1 and "a rotation is under way" in again.stderr
        refused = shoal("control-plane", "--cluster", CLUSTER, "--retire-ca", old_fp[:16], check=False, env=env)
        assert refused.returncode == 1 and "signing root" in refused.stderr
        # Retiring the incoming root cancels the rotation: it signed nothing.
        out = shoal("control-plane", "--cluster", CLUSTER, "--retire-ca", new_fp[:16], check=False, env=env)
        assert out.returncode == 0, out.stderr
        assert len(identity.load_certificates((ca_dir / "bundle.pem").read_bytes())) == 1
        eventually(lambda: len(identity.load_certificates(asyncio.run(sign()).bundle_pem)) == 1, 10,
                   lambda: f"the cancelled root dropped; log:\n{cp.logs()}", interval=0.2)
        bad = shoal("control-plane", "--cluster", CLUSTER, "--retire-ca", "0000", check=False, env=env)
        assert bad.returncode == 1 and "at least 8 hex digits" in bad.stderr
    finally:
        assert cp.stop() == 0, cp.logs()
