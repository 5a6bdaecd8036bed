"""`shoal local apply` merges as `kubectl apply` does (three ways, with the last-applied
configuration), and `label`/`annotate` refuse what Kubernetes or the mesh would not take.

Re-applying an unchanged manifest once wiped the labels added with `shoal local label`:
a namespace enrolled by hand left the mesh, past its DENY policies, without a word. And
`shoal.io/dataplane-mode=ambiant` was taken as it came, un-enrolling the namespace.

These run the CLI as a user does, against a cluster's store alone (no daemon, no root):
the store is what `apply` and `label` write.
"""

from __future__ import annotations

import json

import pytest

from shoal.local.merge import LAST_APPLIED, three_way
from shoal.store import Store

from support.cli import shoal
from support.cluster import unique_name
from support.store_cluster import store_only

CLUSTER = unique_name("merge")  # this process's own, as every other test cluster's name


@pytest.fixture
def store(tmp_path, monkeypatch):
    return store_only(tmp_path, monkeypatch, CLUSTER)


def local(*args: str, input: str | None = None, check: bool = True):
    verb, *rest = args
    return shoal("local", verb, "--cluster", CLUSTER, *rest, input=input, check=check, timeout=60)


SHOP = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: checkout}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web, tier: front}}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


def labels(store: Store, kind: str, namespace: str | None, name: str) -> dict:
    return store.get(kind, namespace, name)["metadata"].get("labels") or {}


def test_reapplying_an_unchanged_manifest_keeps_what_was_labelled_and_annotated_by_hand(store):
    local("apply", "-f", "-", input=SHOP)
    local("label", "namespace", "shop", "shoal.io/dataplane-mode=ambient", "shoal.io/use-waypoint=waypoint")
    local("annotate", "service", "-n", "shop", "web", "note=added by hand")
    rv = store.resource_version()

    out = local("apply", "-f", "-", input=SHOP).stdout
    assert "namespace/shop unchanged" in out and "service/web unchanged" in out
    assert labels(store, "Namespace", None, "shop") == {
        "team": "checkout", "shoal.io/dataplane-mode": "ambient", "shoal.io/use-waypoint": "waypoint"}
    assert store.get("Service", "shop", "web")["metadata"]["annotations"]["note"] == "added by hand"
    assert store.resource_version() == rv  # nothing was written at all


def test_a_field_removed_from_the_manifest_is_removed_and_the_rest_is_kept(store):
    local("apply", "-f", "-", input=SHOP)
    local("label", "namespace", "shop", "shoal.io/dataplane-mode=ambient")
    vip = store.get("Service", "shop", "web")["spec"]["clusterIP"]
    store.update_status("Service", "shop", "web", {"loadBalancer": {}})

    changed = (SHOP.replace("labels: {team: checkout}", "labels: {owner: ana}")
                   .replace("labels: {app: web, tier: front}", "labels: {app: web}")
                   .replace("ports: [{port: 80}]", "ports: [{port: 8080}]"))
    out = local("apply", "-f", "-", input=changed).stdout
    assert "namespace/shop configured" in out and "service/web configured" in out
    # team was applied before and is no longer in the manifest: gone; the label added by hand stays.
    assert labels(store, "Namespace", None, "shop") == {"owner": "ana", "shoal.io/dataplane-mode": "ambient"}
    service = store.get("Service", "shop", "web")
    assert service["metadata"]["labels"] == {"app": "web"}
    assert service["spec"]["ports"] == [{"port": 8080}]
    assert service["spec"]["clusterIP"] == vip  # the store's field, in no manifest
    assert service["status"] == {"loadBalancer": {}}
    recorded = json.loads(service["metadata"]["annotations"][LAST_APPLIED])
    assert recorded["metadata"]["labels"] == {"app": "web"} and recorded["spec"]["ports"] == [{"port": 8080}]


def test_an_object_made_without_apply_loses_nothing_to_its_first_apply(store):
    # `up` makes the default namespace without a last-applied configuration.
    store.patch_metadata("Namespace", None, "default", labels={"shoal.io/dataplane-mode": "ambient"})
    local("apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {a: b}}\n")
    assert labels(store, "Namespace", None, "default") == {"shoal.io/dataplane-mode": "ambient", "a": "b"}


@pytest.mark.parametrize("last, manifest, live, expected", [
    # nothing applied yet: the manifest, as given
    (None, {"spec": {"a": 1}}, None, {"spec": {"a": 1}}),
    # a key the manifest drops since the last apply goes; one set by someone else stays
    ({"spec": {"a": 1, "b": 2}}, {"spec": {"a": 1}}, {"spec": {"a": 1, "b": 2, "c": 3}}, {"spec": {"a": 1, "c": 3}}),
    # the manifest's value wins over a live change of the same field
    ({"spec": {"a": 1}}, {"spec": {"a": 1}}, {"spec": {"a": 5}}, {"spec": {"a": 1}}),
    # lists are replaced whole
    ({"spec": {"l": [1, 2]}}, {"spec": {"l": [3]}}, {"spec": {"l": [1, 2]}}, {"spec": {"l": [3]}}),
    # a null in the manifest removes the field
    ({"spec": {"a": 1}}, {"spec": {"a": None}}, {"spec": {"a": 1, "z": 0}}, {"spec": {"z": 0}}),
    # a whole mapping dropped from the manifest goes, what others added in it too
    ({"spec": {"m": {"x": 1}}}, {"spec": {}}, {"spec": {"m": {"x": 1, "y": 2}}}, {"spec": {}}),
])
def test_three_way(last, manifest, live, expected):
    def with_meta(obj, annotations=None):
        return {"kind": "Thing", "metadata": {"name": "t", **({"annotations": annotations} if annotations else {})},
                **obj}
    live_obj = None if live is None else with_meta(
        live, {LAST_APPLIED: json.dumps(with_meta(last))} if last is not None else None)
    merged = three_way(live_obj, with_meta(manifest))
    annotations = merged["metadata"].pop("annotations")
    assert json.loads(annotations.pop(LAST_APPLIED)) == with_meta(manifest)
    assert not annotations
    assert merged == with_meta(expected)


def test_label_refuses_a_value_that_is_not_one_of_a_mesh_keys_values(store):
    local("apply", "-f", "-", input=SHOP)
    local("label", "namespace", "shop", "shoal.io/dataplane-mode=ambient")
    for change, reason in [
        ("shoal.io/dataplane-mode=ambiant", "'ambiant' is not a value of shoal.io/dataplane-mode: use ambient "
                                            "(enroll) or none (opt out) (to remove the key: `shoal.io/dataplane-mode-`)"),
        ("istio.io/dataplane-mode=", "'' is not a value of istio.io/dataplane-mode"),
        ("istio.io/dataplane-mode=Ambient", "'Ambient' is not a value of istio.io/dataplane-mode"),
        ("shoal.io/use-waypoint=My_Waypoint", "is not a value of shoal.io/use-waypoint: use the name of a waypoint"),
        ("istio.io/waypoint-for=everything", "use service, workload, all or none"),
    ]:
        result = local("label", "namespace", "shop", change, "team=other", check=False)
        assert result.returncode == 1, change
        assert "nothing changed" in result.stderr and reason in result.stderr, result.stderr
    assert labels(store, "Namespace", None, "shop") == {"team": "checkout", "shoal.io/dataplane-mode": "ambient"}
    result = local("annotate", "namespace", "shop", "shoal.io/dataplane-mode=ambiant", check=False)
    assert result.returncode == 1 and "'ambiant' is not a value of shoal.io/dataplane-mode" in result.stderr
    assert "shoal.io/dataplane-mode" not in (store.get("Namespace", None, "shop")["metadata"].get("annotations") or {})

    for good in ("shoal.io/dataplane-mode=none", "istio.io/use-waypoint=none", "shoal.io/use-waypoint=wp-1",
                 "istio.io/waypoint-for=all"):
        local("label", "namespace", "shop", good, "--overwrite")  # dataplane-mode was ambient
    local("label", "namespace", "shop", "shoal.io/dataplane-mode-")  # removing is always allowed
    assert "shoal.io/dataplane-mode" not in labels(store, "Namespace", None, "shop")


@pytest.mark.parametrize("verb, change, reason", [
    ("label", "bad key=x", "'bad key' is not a valid key"),
    ("label", "_lead=x", "is not a valid key"),
    ("label", "a" * 64 + "=x", "must be 1 to 63 letters"),
    ("label", "Example.COM/k=x", "its prefix 'Example.COM' must be a lower-case DNS subdomain"),
    ("label", "/k=x", "its prefix '' must be"),
    ("label", "a/b/c=x", "is not a valid key"),
    ("label", "=x", "a key must not be empty"),
    ("label", "app=has space", "'has space' is not a valid label value"),
    ("label", "app=" + "v" * 64, "is not a valid label value"),
    ("label", "app=-x", "is not a valid label value"),
    ("annotate", "bad key=x", "'bad key' is not a valid key"),
])
def test_label_and_annotate_refuse_what_kubernetes_would_refuse(store, verb, change, reason):
    local("apply", "-f", "-", input=SHOP)
    before = store.get("Service", "shop", "web")
    result = local(verb, "service", "-n", "shop", "web", change, check=False)
    assert result.returncode == 1 and reason in result.stderr, result.stderr
    assert store.get("Service", "shop", "web") == before


def test_annotation_values_are_free_and_label_values_may_be_empty(store):
    local("apply", "-f", "-", input=SHOP)
    local("annotate", "service", "-n", "shop", "web", "note=any text: at all, even / and spaces")
    local("label", "service", "-n", "shop", "web", "example.com/empty=", "k8s.io/x_y.z=A-b_c.9")
    meta = store.get("Service", "shop", "web")["metadata"]
    assert meta["annotations"]["note"] == "any text: at all, even / and spaces"
    assert meta["labels"]["example.com/empty"] == "" and meta["labels"]["k8s.io/x_y.z"] == "A-b_c.9"


def test_apply_refuses_a_manifest_with_a_mesh_key_misspelt_and_applies_nothing(store):
    bad = SHOP.replace("labels: {team: checkout}", "labels: {shoal.io/dataplane-mode: ambiant}")
    result = local("apply", "-f", "-", input=bad, check=False)
    assert result.returncode == 1
    assert ("Namespace shop: metadata.labels.shoal.io/dataplane-mode: 'ambiant' is not a value of "
            "shoal.io/dataplane-mode") in result.stderr
    assert store.get("Namespace", None, "shop") is None and store.get("Service", "shop", "web") is None
