"""The config analysis: silent on a healthy config, and each problem, planted alone, found with its code and field."""

from __future__ import annotations

import copy

import pytest
import yaml

from control_plane.analysis import analyze, concerning, status_of
from control_plane.analysis import findings as codes
from control_plane.analysis.translated import split

HEALTHY = list(yaml.safe_load_all("""
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {shoal.io/dataplane-mode: ambient, shoal.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: shoal-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: shop}
spec:
  replicas: 1
  template:
    metadata: {labels: {app: reviews, version: v1}}
    spec: {containers: [{name: app, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: shop, labels: {app: reviews, version: v2}}
spec: {containers: [{name: app, command: [sleep, infinity]}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{port: 80, name: http}]}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 50}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-readers, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [shop]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""))


def with_changes(*changes) -> list[dict]:
    objects = copy.deepcopy(HEALTHY)
    for change in changes:
        change(objects)
    return objects


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def add(text: str):
    return lambda objects: objects.extend(yaml.safe_load_all(text))


def test_a_healthy_config_has_no_findings():
    assert analyze(HEALTHY) == []


def set_subset(objects):
    find(objects, "VirtualService", "reviews")["spec"]["http"][0]["route"][1]["destination"]["subset"] = "v3"


def set_host(objects):
    find(objects, "VirtualService", "reviews")["spec"]["http"][0]["route"][0]["destination"] = {"host": "ratings"}


def set_unknown_mode(objects):
    find(objects, "Namespace", "outside")["metadata"]["labels"] = {"shoal.io/dataplane-mode": "ambiant"}


def set_missing_waypoint(objects):
    find(objects, "Namespace", "shop")["metadata"]["labels"]["shoal.io/use-waypoint"] = "east"


def set_selector(objects):
    find(objects, "AuthorizationPolicy", "reviews-readers")["spec"]["selector"]["matchLabels"] = {"app": "review"}


def set_invalid(objects):
    find(objects, "VirtualService", "reviews")["spec"]["http"][0]["timeout"] = "soon"


UNENROLLED_CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: outside}
spec: {containers: [{name: app, command: [sleep, infinity]}]}
"""

LATER_VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews-canary, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v2}}]}]}
"""


@pytest.mark.parametrize("plant, code, obj, field", [
    (set_subset, codes.UNDEFINED_SUBSET, "VirtualService shop/reviews", "spec.http[0].route[1].destination.subset"),
    (set_host, codes.HOST_NOT_FOUND, "VirtualService shop/reviews", "spec.http[0].route[0].destination.host"),
    (add(LATER_VIRTUAL_SERVICE), codes.ROUTE_SHADOWED, "VirtualService shop/reviews-canary", "spec.hosts[0]"),
    (add(UNENROLLED_CLIENT), codes.STRICT_WITH_UNENROLLED_CLIENTS, "PeerAuthentication shop/strict",
     "spec.mtls.mode"),
    (set_missing_waypoint, codes.WAYPOINT_NOT_FOUND, "Namespace shop", "metadata.labels[shoal.io/use-waypoint]"),
    (set_selector, codes.POLICY_SELECTS_NOTHING, "AuthorizationPolicy shop/reviews-readers",
     "spec.selector.matchLabels"),
    (set_unknown_mode, codes.UNKNOWN_MESH_VALUE, "Namespace outside", "metadata.labels[shoal.io/dataplane-mode]"),
    (set_invalid, codes.INVALID_OBJECT, "VirtualService shop/reviews", "spec.http[0].timeout"),
], ids=lambda v: v.name if isinstance(v, codes.Code) else None)
def test_each_planted_problem_is_found_alone_with_its_code_object_and_field(plant, code, obj, field):
    found = analyze(with_changes(plant))
    assert [(f.code, f.object, f.field) for f in found] == [(code, obj, field)], [f.line() for f in found]
    (finding,) = found
    assert finding.message and finding.action
    assert finding.line().startswith(f"{code.severity.capitalize()} [{code.code}] {obj} {field}: ")


def test_the_subset_finding_says_which_subset_and_which_host():
    (finding,) = analyze(with_changes(set_subset))
    assert "'v3'" in finding.message and "reviews.shop.svc.cluster.local" in finding.message
    assert "DestinationRule" in finding.action


def test_a_policy_for_pods_of_a_deployment_not_yet_running_selects_them():
    # the Deployment's template carries app=reviews too: drop the bare pod, the policy still selects
    objects = [o for o in HEALTHY if not (o["kind"] == "Pod")]
    assert analyze(objects) == []


def test_concerning_keeps_the_findings_about_the_given_objects():
    found = analyze(with_changes(set_subset, set_unknown_mode))
    assert len(found) == 2
    mine = concerning(found, [("VirtualService", "shop", "reviews")])
    assert [f.code for f in mine] == [codes.UNDEFINED_SUBSET]


def test_the_status_says_accepted_and_whether_references_resolve():
    objects = with_changes(set_subset)
    vs = find(objects, "VirtualService", "reviews")
    vs["metadata"]["generation"] = 4
    vs["status"] = {"other": "kept"}
    status = status_of(vs, analyze(objects))
    accepted, resolved = status["conditions"]
    assert (accepted["type"], accepted["status"], accepted["observedGeneration"]) == ("Accepted", "True", 4)
    assert (resolved["type"], resolved["status"], resolved["reason"]) == ("ResolvedRefs", "False", "UndefinedSubset")
    (message,) = status["validationMessages"]
    assert (message["code"], message["field"]) == ("SH0103", "spec.http[0].route[1].destination.subset")
    assert status["other"] == "kept"
    clean = status_of(vs, [])
    assert [c["status"] for c in clean["conditions"]] == ["True", "True"] and "validationMessages" not in clean


def test_a_refused_object_is_not_accepted():
    objects = with_changes(set_invalid)
    vs = find(objects, "VirtualService", "reviews")
    accepted, _ = status_of(vs, analyze(objects))["conditions"]
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "spec.http[0].timeout" in accepted["message"]


@pytest.mark.parametrize("text, expected", [
    ("VirtualService a/b: spec.http[0].route[1].destination.subset: no such subset",
     ("spec.http[0].route[1].destination.subset", "no such subset")),
    ("VirtualService a/b: could not be translated (KeyError: 'x'): a bug", ("", "could not be translated (KeyError: 'x'): a bug")),
    ("HTTPRoute a/x, HTTPRoute a/y: spec.parentRefs[0]: ignored", ("spec.parentRefs[0]", "ignored")),
    ("Namespace b: metadata.labels[shoal.io/x]: bad", ("metadata.labels[shoal.io/x]", "bad")),
])
def test_translator_messages_split_into_field_and_reason(text, expected):
    kind, rest = text.split(" ", 1)
    key = (kind, "a", "b") if "/" in rest.split(":")[0] else (kind, "", "b")
    assert split(key, text) == expected


def test_a_route_to_a_service_entry_host_finds_its_host():
    objects = with_changes(add("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec: {hosts: [api.payments.example], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: payments, namespace: shop}
spec: {hosts: [api.payments.example], http: [{route: [{destination: {host: api.payments.example}}]}]}
"""))
    assert analyze(objects) == []


def test_a_gateways_controller_keeps_its_conditions_and_the_analysis_adds_its_own():
    gateway = find(HEALTHY, "Gateway", "waypoint")
    gateway = {**gateway, "status": {"addresses": [{"type": "IPAddress", "value": "198.18.16.20"}], "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "the controller's"},
        {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ready"}]}}
    status = status_of(gateway, [])
    assert [(c["type"], c["message"]) for c in status["conditions"]] == [
        ("Accepted", "the controller's"), ("Programmed", "ready"), ("ResolvedRefs", "everything it names exists")]
    assert status["addresses"] == gateway["status"]["addresses"]
    again = status_of({**gateway, "status": status}, [])
    assert again == status   # a second write changes nothing: no churn with the controller
