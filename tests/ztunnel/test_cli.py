"""`shoal ztunnel` and `shoal config`: bad input is refused clearly; the dump renders as tables."""

from __future__ import annotations

from shoal.cli import config as config_cli

from support.cli import shoal


def run(*args):
    return shoal("ztunnel", *args, check=False, timeout=60)


def test_ztunnel_refuses_a_non_local_node_without_paths():
    result = run("--node", "worker-7")
    assert result.returncode == 2
    assert "--socket, --token-file and --ca-bundle" in result.stderr


def test_ztunnel_names_a_missing_token_file(tmp_path):
    result = run("--node", "worker-7", "--socket", str(tmp_path / "s"), "--token-file", str(tmp_path / "no-token"),
                 "--ca-bundle", str(tmp_path / "bundle.pem"))
    assert result.returncode == 1
    assert str(tmp_path / "no-token") in result.stderr


def test_ztunnel_refuses_a_bad_control_plane_address(tmp_path):
    result = run("--node", "node1", "--control-plane", "nocolon")
    assert result.returncode == 2 and "host:port" in result.stderr


DUMP = {
    "workloads": [{"uid": "u1", "name": "client", "namespace": "shop", "service_account": "client", "node": "node1",
                   "ips": ["198.19.1.2"], "protocol": "HBONE", "waypoint": None}],
    "services": [{"hostname": "server.shop.svc.cluster.local", "vips": ["198.18.16.10"], "ports": [{"port": 80}],
                  "endpoints": [{"workload_uid": "u2"}], "waypoint": {"namespace": "shop", "name": "wp"}}],
    "policies": [{"namespace": "shop", "name": "deny", "scope": "NAMESPACE", "action": "DENY", "rules": [{}]}],
    "peer_authentications": [{"namespace": "shop", "name": "strict", "scope": "NAMESPACE", "mode": "STRICT"}],
    "certificates": [{"identity": "spiffe://cluster.local/ns/shop/sa/client", "state": "valid",
                      "not_after": "2026-11-24T13:00:00+00:00", "renew_at": "2026-11-24T01:00:00+00:00"}],
}


def test_config_views_render_as_aligned_tables():
    workloads = config_cli.render("workloads", DUMP).splitlines()
    assert workloads[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert workloads[1].split() == ["shop", "client", "198.19.1.2", "node1", "HBONE", "client", "-"]
    assert "shop/wp" in config_cli.render("services", DUMP)
    policies = config_cli.render("policies", DUMP)
    assert "Authorization" in policies and "PeerAuthentication" in policies and "STRICT" in policies
    certs = config_cli.render("certs", DUMP).splitlines()
    assert certs[1].split()[:2] == ["spiffe://cluster.local/ns/shop/sa/client", "valid"]
