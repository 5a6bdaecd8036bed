"""Property: flushing after any sequence of events gives the same model as translating the end state
from scratch, and the Deltas, applied in order, rebuild that model."""

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.translate import Translator
from shoal.model import ResourceType
from translate_objects import added, deleted, from_yaml, namespace, pod, service

NAMES = ["a", "b", "c", "d"]
LABELS = st.dictionaries(st.sampled_from(["app", "track"]), st.sampled_from(["web", "db"]), min_size=1, max_size=2)


def gateway(traffic):
    return from_yaml(f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: default, labels: {{istio.io/waypoint-for: {traffic}}}}}
spec: {{gatewayClassName: shoal-waypoint}}
""")[0]


def route(host, subset):
    return from_yaml(f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs-{host}, namespace: default}}
spec: {{hosts: [{host}], http: [{{route: [{{destination: {{host: {host}, subset: {subset}}}}}]}}]}}
""")[0]


def httproute(name, path, parent):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"parentRefs": [parent],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                                "backendRefs": [{"name": "web", "port": 80}]}]}}


RULE = from_yaml("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: default}
spec: {host: web, subsets: [{name: v1, labels: {track: web}}]}
""")[0]

objects = st.one_of(
    st.builds(lambda n, labels, phase: pod(n, labels=labels, phase=phase, ip=f"198.19.1.{NAMES.index(n) + 2}"),
              st.sampled_from(NAMES), LABELS, st.sampled_from(["Running", "Pending"])),
    st.builds(lambda n, sel, ports: service(n, selector=sel, ports=ports, vip=f"198.18.16.{len(n) + 10}",
                                            labels={"istio.io/use-waypoint": "waypoint"} if n == "a" else {}),
              st.sampled_from(["web", "a"]), LABELS,
              st.sampled_from([((80, 8080),), ((80, 8080), (9090, 9090))])),
    st.builds(lambda mode: namespace("default", labels={"shoal.io/dataplane-mode": mode,
                                                        "istio.io/use-waypoint": "waypoint"}),
              st.sampled_from(["ambient", "none"])),
    st.builds(gateway, st.sampled_from(["service", "workload", "all"])),
    st.builds(route, st.sampled_from(["web", "a"]), st.sampled_from(["v1", "v2"])),
    st.just(RULE),
    st.builds(httproute, st.sampled_from(["r1", "r2"]), st.sampled_from(["/", "/api"]),
              st.sampled_from([{"kind": "Service", "group": "", "name": "web"},
                               {"kind": "Service", "group": "", "name": "a", "port": 80}, {"name": "waypoint"}])),
)
steps = st.lists(st.tuples(st.sampled_from(["put", "put", "delete"]), objects, st.booleans()), max_size=25)


def key(obj):
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


@settings(max_examples=300, deadline=None)
@given(steps=steps)
def test_incremental_equals_from_scratch(steps):
    incremental = Translator()
    live = {}
    rebuilt = {t: {} for t in ResourceType}
    for action, obj, flush in steps + [("flush", None, True)]:
        if action == "put":
            incremental.apply_event(added(obj))
            live[key(obj)] = obj
        elif action == "delete" and key(obj) in live:
            incremental.apply_event(deleted(live.pop(key(obj))))
        if flush:
            delta = incremental.flush().delta
            for rtype in ResourceType:
                for k in delta.removed[rtype]:
                    rebuilt[rtype].pop(k)
                rebuilt[rtype].update(delta.upserted[rtype])
    scratch = Translator()
    scratch.apply_events(added(obj) for obj in live.values())    # the batch path (a source's list) agrees too
    scratch.flush()
    expected = scratch.snapshot()
    got = incremental.snapshot()
    for rtype in ResourceType:
        assert dict(got[rtype]) == dict(expected[rtype]), rtype
        assert rebuilt[rtype] == dict(expected[rtype]), rtype
    assert incremental.problems() == scratch.problems()


def test_a_batch_pauses_the_cycle_collector_and_leaves_it_as_it_found_it():
    """apply_events and flush run with the collector off (a large batch would trigger many full collections),
    and give it back on, also when the batch fails half-way; a collector its caller turned off stays off."""
    translator = Translator()
    seen = []

    def events():
        seen.append(gc.isenabled())
        yield added(namespace("default", labels={"shoal.io/dataplane-mode": "ambient"}))
        yield added(pod("a", ip="198.19.1.2"))
        raise RuntimeError("the source broke")

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        translator.apply_events(events())
    assert seen == [False] and gc.isenabled()
    assert [w.name for w in translator.flush().delta.upserted[ResourceType.WORKLOAD].values()] == ["a"]
    assert gc.isenabled()
    gc.disable()
    try:
        translator.apply_events([added(pod("b", ip="198.19.1.3"))])
        translator.flush()
        assert not gc.isenabled()
    finally:
        gc.enable()
