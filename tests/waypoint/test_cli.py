"""`shoal waypoint apply|list|delete` against a local cluster's store (no cluster processes needed)."""

from shoal.store import Store

from support import cli


def shoal(tmp_path, *args):
    """`shoal waypoint ARGS` against cluster "t" whose store is under tmp_path."""
    return cli.shoal("waypoint", *args, "--cluster", "t", check=False, timeout=60,
                     env={"SHOAL_RUN_ROOT": str(tmp_path)})


def test_apply_list_delete(tmp_path):
    store = Store("t", root=tmp_path)
    store.init()
    store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})

    r = shoal(tmp_path, "apply", "-n", "shop", "--enroll-namespace", "--for", "all")
    assert r.returncode == 0, r.stderr
    gateway = store.get("Gateway", "shop", "waypoint")
    assert gateway["spec"]["gatewayClassName"] == "shoal-waypoint"
    assert gateway["metadata"]["labels"]["istio.io/waypoint-for"] == "all"
    assert store.get("Namespace", None, "shop")["metadata"]["labels"]["shoal.io/use-waypoint"] == "waypoint"

    r = shoal(tmp_path, "list")
    assert r.returncode == 0 and "shop" in r.stdout and "waypoint" in r.stdout and "0/0" in r.stdout

    r = shoal(tmp_path, "delete", "-n", "shop")
    assert r.returncode == 0 and store.get("Gateway", "shop", "waypoint") is None
    r = shoal(tmp_path, "delete", "-n", "shop")
    assert r.returncode == 1 and "no waypoint shop/waypoint" in r.stderr


def test_apply_with_access_log_annotates_the_gateway_and_a_plain_reapply_removes_it(tmp_path):
    store = Store("t", root=tmp_path)
    store.init()
    store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})

    assert shoal(tmp_path, "apply", "-n", "shop", "--access-log").returncode == 0
    annotations = store.get("Gateway", "shop", "waypoint")["metadata"].get("annotations") or {}
    assert annotations.get("shoal.io/access-log") == "true"
    assert shoal(tmp_path, "apply", "-n", "shop").returncode == 0
    annotations = store.get("Gateway", "shop", "waypoint")["metadata"].get("annotations") or {}
    assert "shoal.io/access-log" not in annotations


def test_clear_errors(tmp_path):
    r = shoal(tmp_path, "apply", "-n", "shop")
    assert r.returncode == 1 and "is not up" in r.stderr
    store = Store("t", root=tmp_path)
    store.init()
    r = shoal(tmp_path, "apply", "-n", "nope")
    assert r.returncode == 1 and "namespace 'nope' does not exist" in r.stderr
    store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    store.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                 "metadata": {"name": "waypoint", "namespace": "shop"}, "spec": {"gatewayClassName": "nginx"}})
    r = shoal(tmp_path, "apply", "-n", "shop")
    assert r.returncode == 1 and "is not a waypoint" in r.stderr
    r = shoal(tmp_path, "run", "--namespace", "Bad_NS", "--name", "w")
    assert r.returncode == 2 and "lower-case DNS names" in r.stderr
