"""validate(): each error names the object, the field path and the reason; bad objects harm nothing else."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.translate import parse, parse_duration, resolve_host, validate
from shoal.model import ResourceType
from translate_objects import bookinfo_reviews, from_yaml, translate

VS = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
{http}
"""

CASES = [
    (VS.format(http="""
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: -5}
"""), "VirtualService default/reviews: spec.http[0].route[1].weight: must be at least 0, not -5"),
    (VS.format(http="""
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - {destination: {host: reviews, subset: v2}}
"""), "VirtualService default/reviews: spec.http[0].route: with several destinations, give each a weight; they are all 0"),
    (VS.format(http="""
  - route:
    - {destination: {host: reviews}, weight: "half"}
"""), "VirtualService default/reviews: spec.http[0].route[0].weight: must be an integer, not 'half'"),
    (VS.format(http="""
  - match: [{uri: {regex: "/api/(v1"}}]
    route: [{destination: {host: reviews}}]
"""), "VirtualService default/reviews: spec.http[0].match[0].uri.regex: bad regular expression '/api/(v1'"),
    (VS.format(http="""
  - match: [{uri: {exact: /a, prefix: /b}}]
    route: [{destination: {host: reviews}}]
"""), "VirtualService default/reviews: spec.http[0].match[0].uri: needs exactly one of exact, prefix or regex"),
    (VS.format(http="""
  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews}
    mirrorPercentage: {value: 150}
"""), "VirtualService default/reviews: spec.http[0].mirrorPercentage.value: must be between 0 and 100, not 150"),
    (VS.format(http="""
  - route: [{destination: {host: reviews}}]
    mirrorPercentage: {value: 10}
"""), "VirtualService default/reviews: spec.http[0].mirrorPercentage: is set but there is no mirror"),
    (VS.format(http="""
  - route: [{destination: {host: reviews}}]
    timeout: 10 seconds
"""), "VirtualService default/reviews: spec.http[0].timeout: bad duration '10 seconds'"),
    (VS.format(http="""
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 3, perTryTimeout: 2}
"""), "VirtualService default/reviews: spec.http[0].retries.perTryTimeout: must be a duration string"),
    (VS.format(http="""
  - route: [{destination: {host: reviews}}]
    fault: {abort: {httpStatus: 99, percentage: {value: 10}}}
"""), "VirtualService default/reviews: spec.http[0].fault.abort.httpStatus: must be at least 200, not 99"),
    (VS.format(http="""
  - route: [{destination: {subset: v1}}]
"""), "VirtualService default/reviews: spec.http[0].route[0].destination.host: is required"),
    (VS.format(http="""
  - match: [{uri: {prefix: /}}]
"""), "VirtualService default/reviews: spec.http[0].route: is required: at least one destination"),
    (VS.format(http="""
  - route: [{destination: {host: reviews}}]
    retry: {attempts: 3}
"""), "VirtualService default/reviews: spec.http[0].retry: unknown field; expected one of"),
    ("""
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: reviews}
spec: {hosts: [reviews]}
""", "VirtualService reviews: apiVersion: VirtualService is served as networking.istio.io/v1, "
     "networking.istio.io/v1beta1, networking.istio.io/v1alpha3, not networking.istio.io/v2"),
    ("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: Reviews_Bad}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
""", "VirtualService Reviews_Bad: metadata.name: 'Reviews_Bad' is not a valid name"),
    ("""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]
""", "DestinationRule default/reviews: spec.subsets[1].name: subset 'v1' is defined twice"),
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - backendRefs: [{name: reviews, port: 9080, weight: 1}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 3, denominator: 2}}}]
""", "HTTPRoute default/r: spec.rules[0].filters[0].requestMirror.fraction: numerator 3 is larger than denominator 2"),
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{backendRefs: [{name: reviews}]}]
""", "HTTPRoute default/r: spec.rules[0].backendRefs[0].port: is required"),
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  rules: [{backendRefs: [{name: reviews, port: 80}]}]
""", "HTTPRoute default/r: spec.parentRefs: is required"),
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{matches: [{path: {type: Prefix, value: /a}}], backendRefs: [{name: reviews, port: 80}]}]
""", "HTTPRoute default/r: spec.rules[0].matches[0].path.type: unknown path match type 'Prefix'; use Exact, PathPrefix or RegularExpression"),
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{retry: {codes: [200]}, backendRefs: [{name: reviews, port: 80}]}]
""", "HTTPRoute default/r: spec.rules[0].retry.codes[0]: must be at least 400, not 200"),
    ("""
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: s, namespace: default}
spec: {service: reviews, backends: [{service: a, weight: 0}, {service: b, weight: 0}]}
""", "TrafficSplit default/s: spec.backends: the weights add up to 0"),
    ("""
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: s, namespace: default}
spec: {service: reviews, backends: [{service: a, weight: lots}]}
""", "TrafficSplit default/s: spec.backends[0].weight: bad quantity 'lots'"),
    ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec: {action: PERMIT}
""", "AuthorizationPolicy default/p: spec.action: unknown action 'PERMIT'; use ALLOW or DENY"),
    ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  rules: [{from: [{source: {ipBlocks: [10.0.0.300]}}], to: [{operation: {ports: ["http"]}}]}]
""", "AuthorizationPolicy default/p: spec.rules[0].from[0].source.ipBlocks[0]: '10.0.0.300' is not an IP address or CIDR block"),
    ("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  rules: [{to: [{operation: {ports: ["http"]}}]}]
""", "AuthorizationPolicy default/p: spec.rules[0].to[0].operation.ports[0]: must be an integer, not 'http'"),
    ("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, labels: {istio.io/waypoint-for: everything}}
spec: {gatewayClassName: shoal-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
""", "Gateway default/waypoint: metadata.labels.istio.io/waypoint-for: unknown traffic type 'everything'"),
    ("""
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {istio.io/use-waypoint: "My Waypoint"}}
spec: {selector: {app: web}, ports: [{port: 80}]}
""", "Service default/web: metadata.labels.istio.io/use-waypoint: must name a waypoint Gateway"),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[1].split(": ")[1] + " " + c[1].split(": ")[2][:30] for c in CASES])
def test_validation_names_object_field_and_reason(text, expected):
    (obj,) = from_yaml(text)
    errors = validate(obj)
    assert any(e.startswith(expected) for e in errors), errors


VALID = [
    VS.format(http="  - route: [{destination: {host: reviews}}]"),
    """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress}
spec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]}
""",
    """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public}
spec: {gatewayClassName: nginx, listeners: [{name: http, port: 80, protocol: HTTP}]}
""",
    """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}}
""",
]


@pytest.mark.parametrize("text", VALID)
def test_valid_and_foreign_objects_have_no_errors(text):
    (obj,) = from_yaml(text)
    assert validate(obj) == []


def test_unsupported_features_are_warnings_not_errors():
    (obj,) = from_yaml(VS.format(http="""
  - route: [{destination: {host: reviews}}]
    rewrite: {uri: /v2}
    corsPolicy: {allowOrigins: [{exact: "*"}]}
"""))
    findings = parse(obj).findings
    assert findings.errors == ()
    assert [w.split(": ")[1] for w in findings.warnings] == ["spec.http[0].rewrite", "spec.http[0].corsPolicy"]


def test_a_bad_object_does_not_break_the_rest():
    bad = from_yaml(VS.format(http="  - route: [{destination: {host: reviews}, weight: -1}]"))[0]
    bad["metadata"]["name"] = "bad"
    good_policy = from_yaml("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec: {rules: [{}]}
""")[0]
    t, update = translate(*bookinfo_reviews(), bad, good_policy)
    snap = t.snapshot()
    assert snap[ResourceType.ROUTE_TABLE] == {}
    assert set(snap[ResourceType.AUTHORIZATION]) == {"default/p"}
    assert len(snap[ResourceType.WORKLOAD]) == 3 and len(snap[ResourceType.SERVICE]) == 1
    assert update.findings[("VirtualService", "default", "bad")].errors


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10.0), ("1.5s", 1.5), ("250ms", 0.25), ("1m30s", 90.0), ("1h", 3600.0), ("0s", 0.0), ("100us", 1e-4),
    ("", None), ("10", None), ("-1s", None), ("1d", None), ("s", None), ("10 s", None),
])
def test_durations(text, seconds):
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize("host, expected", [
    ("reviews", "reviews.ns.svc.cluster.local"),
    ("reviews.other", "reviews.other.svc.cluster.local"),
    ("reviews.other.svc", "reviews.other.svc.cluster.local"),
    ("Reviews.Other.svc.cluster.local.", "reviews.other.svc.cluster.local"),
    ("api.example.com", "api.example.com"),
])
def test_host_resolution(host, expected):
    assert resolve_host(host, "ns") == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["hosts", "http", "route", "destination", "host", "weight", "match", "uri", "exact",
                         "regex", "mirror", "mirrorPercentage", "value", "rules", "from", "to", "source",
                         "operation", "ports", "backendRefs", "parentRefs", "name", "port", "filters", "type",
                         "timeouts", "retry", "fault", "delay", "abort", "subsets", "labels", "backends",
                         "service", "mtls", "mode", "selector", "matchLabels", "action", "x"]),
        children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["VirtualService", "DestinationRule", "HTTPRoute", "AuthorizationPolicy",
                             "PeerAuthentication", "TrafficSplit", "Gateway"]),
       spec=json_values)
def test_validate_never_raises_and_always_names_the_object(kind, spec):
    group = {"VirtualService": "networking.istio.io/v1", "DestinationRule": "networking.istio.io/v1",
             "HTTPRoute": "gateway.networking.k8s.io/v1", "Gateway": "gateway.networking.k8s.io/v1",
             "AuthorizationPolicy": "security.istio.io/v1", "PeerAuthentication": "security.istio.io/v1",
             "TrafficSplit": "split.smi-spec.io/v1alpha4"}[kind]
    obj = {"apiVersion": group, "kind": kind, "metadata": {"name": "x", "namespace": "ns"}, "spec": spec}
    for message in validate(obj):
        assert message.startswith(f"{kind} ns/x: ")
    t, _ = translate(obj)   # the translator survives whatever validate said
    t.snapshot()


def test_malformed_core_objects_cost_only_themselves():
    from translate_objects import pod, service
    odd_pod = pod("odd", labels={"app": "web"})
    odd_pod["spec"]["containers"] = "not a list"
    odd_pod["metadata"]["labels"]["weird"] = {"nested": True}
    odd_service = service("odd", vip="198.18.16.11")
    odd_service["spec"]["ports"] = [{"port": "eighty"}, 7]
    t, update = translate(odd_pod, odd_service, service("web"), pod("fine", labels={"app": "web"}))
    snap = t.snapshot()
    assert {w.name for w in snap[ResourceType.WORKLOAD].values()} == {"odd", "fine"}
    assert snap[ResourceType.SERVICE]["odd.default.svc.cluster.local"].ports == ()
    assert len(snap[ResourceType.SERVICE]["web.default.svc.cluster.local"].endpoints) == 2
    pod_errors = update.findings[("Pod", "default", "odd")].errors
    assert "Pod default/odd: spec.containers: must be a list, not a string" in pod_errors
    assert "Pod default/odd: metadata.labels.weird: must be a string, not {'nested': True}" in pod_errors
    service_errors = update.findings[("Service", "default", "odd")].errors
    assert "Service default/odd: spec.ports[0].port: must be an integer, not 'eighty'" in service_errors
    assert "Service default/odd: spec.ports[1]: must be a mapping, not 7" in service_errors


def test_a_translation_bug_costs_one_object(monkeypatch):
    from control_plane.translate import core
    from translate_objects import pod
    real = core.workload_of

    def broken(p, *args):
        if p["metadata"]["name"] == "cursed":
            raise KeyError("boom")
        return real(p, *args)
    monkeypatch.setattr(core, "workload_of", broken)
    t, update = translate(pod("cursed"), pod("fine"))
    assert {w.name for w in t.snapshot()[ResourceType.WORKLOAD].values()} == {"fine"}
    (error,) = update.findings[("Pod", "default", "cursed")].errors
    assert error.startswith("Pod default/cursed: could not be translated (KeyError: 'boom')")


core_leaf = st.none() | st.booleans() | st.integers(-2, 70000) | st.text(max_size=6) | st.sampled_from(
    ["Running", "web", "http", "TCP", "None", "198.19.1.9", "ambient"])
core_values = st.recursive(core_leaf, lambda children: st.lists(children, max_size=3) | st.dictionaries(
    st.sampled_from(["spec", "status", "metadata", "labels", "annotations", "ports", "port", "targetPort", "name",
                     "selector", "containers", "containerPort", "podIP", "podIPs", "ip", "phase", "hostNetwork",
                     "nodeName", "serviceAccountName", "clusterIP", "clusterIPs", "appProtocol", "ownerReferences",
                     "kind", "controller", "app", "shoal.io/dataplane-mode", "istio.io/use-waypoint", "type"]),
    children, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(objects=st.lists(st.tuples(st.sampled_from(["Pod", "Service", "Namespace"]), st.sampled_from(["a", "b"]),
                                  core_values), max_size=6))
def test_arbitrary_core_objects_never_break_the_translator(objects):
    from control_plane.translate import Translator
    from translate_objects import added, deleted
    t = Translator()
    for kind, name, body in objects:
        obj = dict(body) if isinstance(body, dict) else {"spec": body}
        meta = obj.get("metadata")
        obj.update(kind=kind, apiVersion="v1", metadata={**(meta if isinstance(meta, dict) else {}), "name": name})
        if kind != "Namespace":
            obj["metadata"]["namespace"] = "default"
        t.apply_event(added(obj))
    t.flush()
    for kind, name, _ in objects[:2]:
        t.apply_event(deleted({"kind": kind, "apiVersion": "v1", "metadata": {"name": name, "namespace": "default"}}))
    t.flush()
    for findings in t.problems().values():
        assert all("could not be translated" not in e for e in findings.errors)


def test_misspelt_shoal_labels_in_a_deployment_template_are_refused():
    (obj,) = from_yaml("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, shoal.io/dataplane-mode: off}}
    spec: {containers: [{name: c}]}
""")
    assert validate(obj) == ["Deployment shop/web: spec.template.metadata.labels.shoal.io/dataplane-mode: "
                             "must be 'ambient' or 'none', not False"]


# Shapes that raised out of validate() (so `shoal local apply` failed with a traceback) or out of the
# translator's flush (so one bad object stopped every update), each refused now by field path.
WRONG_SHAPES = [
    ({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": 7, "spec": {}},
     "VirtualService <no name>: metadata: must be a mapping, not an integer"),
    ({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "ns"},
      "spec": {"hosts": ["r"], "http": [{"route": 5}]}},
     "VirtualService ns/r: spec.http[0].route: must be a list, not an integer"),
    ({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "ns"},
      "spec": {"parentRefs": [{"name": "r"}], "rules": [{"filters": [{"type": ["RequestMirror"]}]}]}},
     "HTTPRoute ns/r: spec.rules[0].filters[0].type: must be a string, not a list"),
    ({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
      "metadata": {"name": "w", "namespace": "ns", "labels": 3},
      "spec": {"gatewayClassName": "shoal-waypoint", "listeners": [{"name": "m", "port": 15008, "protocol": "HBONE"}]}},
     "Gateway ns/w: metadata.labels: must be a mapping, not an integer"),
    ({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g", "namespace": "ns"},
      "spec": {"gatewayClassName": "shoal", "listeners": [{"name": "s", "port": 443, "protocol": "HTTPS",
                                                           "tls": {"certificateRefs": []}}]}},
     "Gateway ns/g: spec.listeners[0].tls.certificateRefs: is empty: name the Secret that holds the listener's "
     "certificate (tls.crt and tls.key)"),
]


@pytest.mark.parametrize("obj, error", WRONG_SHAPES)
def test_a_wrong_shape_is_refused_by_field_and_costs_only_itself(obj, error):
    assert error in validate(obj)
    t, update = translate(obj, *bookinfo_reviews())
    assert "reviews.default.svc.cluster.local" in t.snapshot()[ResourceType.SERVICE]
    assert all("could not be translated" not in e for f in update.findings.values() for e in f.errors)


def test_a_kind_that_is_not_a_string_is_not_tracked():
    from translate_objects import added
    t, _ = translate(*bookinfo_reviews())
    t.apply_event(added({"apiVersion": "networking.istio.io/v1", "kind": ["VirtualService"],
                         "metadata": {"name": "x", "namespace": "default"}}))
    t.flush()
    assert "kind: is required" in " ".join(validate({"apiVersion": "v1", "kind": ["Pod"], "metadata": {"name": "x"}}))
