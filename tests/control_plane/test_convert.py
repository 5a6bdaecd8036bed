"""shoal.api.convert: every model field survives protobuf and back, and bad messages are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.api import config_pb2, convert
from shoal.api import resources_pb2 as pb
from shoal.model import (Action, Authorization, Destination, Endpoint, Fault, HeaderChanges, HeaderMatch, MatchKind,
                         Mirror, Operation, PeerAuthentication, PeerAuthMode, PolicyScope, Protocol, RetryPolicy,
                         Route, RouteMatch, RouteTable, Rule, Service, ServicePort, Source, StringMatch, TargetRef,
                         Waypoint, WaypointRef, Workload, freeze_labels)
from translate_objects import bookinfo_reviews, from_yaml, translate

FULL = [
    Workload(uid="u1", name="reviews-v1-abc", namespace="shop", service_account="reviews", node="node2",
             ips=("198.19.2.7",), labels=freeze_labels({"app": "reviews", "version": "v1"}),
             canonical_service="reviews", canonical_revision="v1", waypoint=WaypointRef("shop", "wp"),
             protocol=Protocol.HBONE),
    Workload(uid="u2", name="plain", namespace="shop", service_account="default", node="node1", ips=()),
    Service(name="reviews", namespace="shop", hostname="reviews.shop.svc.cluster.local", vips=("198.18.16.9",),
            ports=(ServicePort(9080, "http", "TCP", "http"), ServicePort(9443, "", "TCP", "")),
            endpoints=(Endpoint("u1", 9080, 8080),), waypoint=WaypointRef("shop", "wp"),
            labels=freeze_labels({"app": "reviews"})),
    Waypoint(name="wp", namespace="shop", service_account="wp", traffic_type="all", ports=(15008, 15021)),
    Authorization(name="allow-ro", namespace="shop", scope=PolicyScope.WORKLOAD, action=Action.DENY,
                  rules=(Rule(sources=(Source(principals=("cluster.local/ns/a/sa/b",), not_principals=("x*",),
                                              namespaces=("a",), not_namespaces=("b",),
                                              ip_blocks=("198.19.0.0/16",), not_ip_blocks=("198.19.9.9/32",)),),
                              operations=(Operation(ports=(80,), not_ports=(81,), methods=("GET",),
                                                    not_methods=("POST",), paths=("/api*",), not_paths=("/x",),
                                                    hosts=("h",), not_hosts=("n",)),)),
                         Rule()),
                  selector=freeze_labels({"app": "reviews"}),
                  targets=(TargetRef("Service", "reviews", "shop", ""), TargetRef("Gateway", "wp", "shop", "gw"))),
    PeerAuthentication(name="strict", namespace="shop", scope=PolicyScope.WORKLOAD, mode=PeerAuthMode.STRICT,
                       selector=freeze_labels({"app": "db"}),
                       port_modes=((5432, PeerAuthMode.PERMISSIVE), (80, PeerAuthMode.DISABLE))),
    PeerAuthentication(name="default", namespace="istio-system", scope=PolicyScope.MESH, mode=PeerAuthMode.UNSET),
    RouteTable(hostname="reviews.shop.svc.cluster.local", port=9080, namespace="shop", origin="VirtualService shop/r",
               routes=(
                   Route(name="canary",
                         matches=(RouteMatch(path=StringMatch(MatchKind.PREFIX, "/api"), method="GET",
                                             headers=(HeaderMatch("x-user", StringMatch(MatchKind.REGEX, "a.*")),
                                                      HeaderMatch("x-debug", StringMatch(MatchKind.PRESENT), True)),
                                             query_params=(HeaderMatch("q", StringMatch(MatchKind.EXACT, "1")),)),
                                  RouteMatch()),
                         destinations=(Destination("reviews.shop.svc.cluster.local", 9080,
                                                   freeze_labels({"version": "v2"}), "v2", 10),
                                       Destination("reviews.shop.svc.cluster.local", None, (), "", 90)),
                         timeout=1.5, retry=RetryPolicy(3, 0.25, ("5xx", "reset"), 0.05),
                         mirrors=(Mirror(Destination("shadow.shop.svc.cluster.local"), 12.5),),
                         fault=Fault(delay=0.2, delay_percentage=5.0, abort_status=503, abort_percentage=1.5),
                         request_headers=HeaderChanges(set=(("x-a", "1"),), add=(("x-b", "2"), ("x-b", "3")),
                                                       remove=("x-c",)),
                         response_headers=HeaderChanges(remove=("server",))),
                   Route(destinations=(Destination("reviews.shop.svc.cluster.local"),),
                         retry=RetryPolicy(0), fault=Fault(abort_status=500)),
               )),
]


@pytest.mark.parametrize("resource", FULL, ids=lambda r: f"{type(r).__name__}:{r.key}")
def test_round_trip_keeps_every_field(resource):
    assert convert.from_proto(convert.to_proto(resource)) == resource
    envelope = convert.resource_message(resource)
    wire = config_pb2.Resource.FromString(envelope.SerializeToString())
    assert convert.from_resource(wire) == (convert.type_of(resource), resource)
    assert wire.key == resource.key


def test_version_is_a_content_digest():
    a, b = FULL[0], FULL[1]
    assert convert.resource_message(a).version == convert.resource_message(a).version
    assert convert.resource_message(a).version != convert.resource_message(b).version


def test_everything_the_translator_makes_from_the_seeds_round_trips():
    seeds = Path(__file__).parent / "seeds"
    objects = [o for p in sorted(seeds.glob("*.yaml")) if "as_printed" not in p.name
               for o in from_yaml(p.read_text())]
    translator, _ = translate(*bookinfo_reviews(), *objects)
    resources = list(translator.snapshot().all())
    assert len(resources) > 5
    for resource in resources:
        assert convert.from_resource(convert.resource_message(resource))[1] == resource


def test_bad_messages_are_refused_with_the_resource_named():
    with pytest.raises(convert.ConversionError, match="no body"):
        convert.from_resource(config_pb2.Resource(key="k"))
    mismatched = convert.resource_message(FULL[0])
    mismatched.key = "other"
    with pytest.raises(convert.ConversionError, match="its content has key 'u1'"):
        convert.from_resource(mismatched)
    unknown_enum = config_pb2.Resource(key="shop/x", authorization=pb.Authorization(name="x", namespace="shop",
                                                                                     action=7))
    with pytest.raises(convert.ConversionError, match="Authorization shop/x: action: unknown value 7"):
        convert.from_resource(unknown_enum)
