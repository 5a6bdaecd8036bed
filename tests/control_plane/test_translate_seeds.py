"""Every piece of mesh YAML in the seed articles (/work/shared/seeds) translates as written.

The fixtures in seeds/ are the articles' YAML blocks; where an article lost the
indentation, the fixture restores it and `000_as_printed.yaml` checks that the
unindented text is refused with a message pointing at the indentation.
"""

from pathlib import Path

import pytest

from control_plane.translate import validate
from shoal.model import Destination, Mirror, ResourceType
from translate_objects import bookinfo_reviews, from_yaml, namespace, pod, translate

SEEDS = Path(__file__).parent / "seeds"
RT = ResourceType.ROUTE_TABLE


def load(name):
    return from_yaml((SEEDS / name).read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in SEEDS.glob("*.yaml") if "as_printed" not in p.name))
def test_every_seed_object_validates(name):
    for obj in load(name):
        assert validate(obj) == [], (name, obj.get("kind"))


def test_seed_000_routes_reviews_to_v1():
    t, update = translate(*bookinfo_reviews(), *load("000_virtualservice_reviews.yaml"))
    rt = t.snapshot()[RT]["reviews.default.svc.cluster.local:9080"]
    assert rt.origin == "VirtualService default/reviews"
    (route,) = rt.routes
    assert route.destinations == (Destination("reviews.default.svc.cluster.local", None, (("version", "v1"),), "v1", 100),)
    assert not update.findings.get(("VirtualService", "default", "reviews"))


def test_seed_000_as_printed_is_refused_pointing_at_indentation():
    (obj,) = load("000_as_printed.yaml")
    errors = validate(obj)
    assert "VirtualService <no name>: name: unknown top-level field; the fields of metadata and spec must be " \
           "indented under them" in errors
    assert "VirtualService <no name>: metadata.name: is required" in errors


def test_seed_001_product_service():
    objs = load("001_product_service.yaml")
    assert [o["kind"] for o in objs] == ["Deployment", "Service", "Ingress", "VirtualService", "TrafficSplit"]
    pods = [pod(f"product-service-{i}", labels={"app": "product-service"}) for i in range(3)]
    t, update = translate(namespace("default"), *objs, *pods)
    snap = t.snapshot()
    service = snap[ResourceType.SERVICE]["product-service.default.svc.cluster.local"]
    assert [(e.service_port, e.target_port) for e in service.endpoints] == [(80, 8080)] * 3
    rt = snap[RT]["product-service.default.svc.cluster.local:80"]
    # Precedence: the VirtualService wins over the TrafficSplit for the same host.
    assert rt.origin == "VirtualService default/product-service"
    # The article defines no DestinationRule: subset v1 selects nothing, and says so.
    assert rt.routes[0].destinations[0].subset == (("shoal.io/undefined-subset", "v1"),)
    vs_warnings = update.findings[("VirtualService", "default", "product-service")].warnings
    assert any("subset 'v1' of product-service.default.svc.cluster.local is defined by no DestinationRule" in w
               for w in vs_warnings)
    split_warnings = update.findings[("TrafficSplit", "default", "product-service")].warnings
    assert any("is routed by VirtualService default/product-service" in w for w in split_warnings)


def test_seed_001_traffic_split_alone():
    (split,) = [o for o in load("001_product_service.yaml") if o["kind"] == "TrafficSplit"]
    service = [o for o in load("001_product_service.yaml") if o["kind"] == "Service"][0]
    t, _ = translate(service, split)
    (route,) = t.snapshot()[RT]["product-service.default.svc.cluster.local:80"].routes
    weights = {d.host: d.weight for d in route.destinations}
    total = sum(weights.values())
    assert {h: w / total for h, w in weights.items()} == {
        "product-service-v1.default.svc.cluster.local": 0.8, "product-service-v2.default.svc.cluster.local": 0.2}


def test_seed_002_makes_no_mesh_config():
    t, update = translate(*load("002_istio_gateway_and_deployments.yaml"))
    assert len(t.snapshot()) == 0
    assert not any(f.errors for f in update.findings.values())


def test_seed_003_mirrors_reviews_to_v2_in_bookinfo():
    t, update = translate(*bookinfo_reviews("bookinfo"), *load("003_virtualservice_mirror.yaml"))
    (route,) = t.snapshot()[RT]["reviews.bookinfo.svc.cluster.local:9080"].routes
    host = "reviews.bookinfo.svc.cluster.local"
    assert route.destinations == (Destination(host, None, (("version", "v1"),), "v1", 100),)
    assert route.mirrors == (Mirror(Destination(host, None, (("version", "v2"),), "v2", 1), 100.0),)
    assert not update.findings.get(("VirtualService", "bookinfo", "reviews"))
