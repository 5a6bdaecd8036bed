"""The control plane writes the analysis's conditions into mesh objects' status on Kubernetes
(control_plane.status_kube), against the API double: the finding's condition, cleared when fixed, no write
when nothing changed, and a 404 (deleted meanwhile) skipped."""

from __future__ import annotations

import pytest

from control_plane.status_kube import KubeStatusWriter, plan

from support.kube_api import KubeApiServer

pytestmark = pytest.mark.timeout(60)

KINDS = ("Namespace", "Service", "Pod", "VirtualService", "DestinationRule")


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "name": "http"}]}}


def destination_rule(subsets: list[str]) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": [{"name": s, "labels": {"version": s}} for s in subsets]}}


VIRTUAL_SERVICE = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                   "metadata": {"name": "reviews", "namespace": "shop"},
                   "spec": {"hosts": ["reviews"],
                            "http": [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]}}


def condition(obj: dict, kind: str) -> dict:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


@pytest.fixture
def api():
    with KubeApiServer() as server:
        server.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        server.add(service("reviews"))
        server.add(destination_rule(["v1"]))
        server.add(VIRTUAL_SERVICE)
        yield server


def writer_for(api: KubeApiServer) -> KubeStatusWriter:
    # What the config source's caches hold: the objects as the API serves them.
    return KubeStatusWriter(api.api_client(), lambda: [o for kind in KINDS for o in api.list(kind)])


def status_writes(api: KubeApiServer) -> list:
    return [r for r in api.requests if r.method == "PATCH" and r.path.endswith("/status")]


def test_a_route_to_a_missing_subset_gets_the_findings_condition_and_fixing_it_clears_it(api):
    writer = writer_for(api)
    assert writer.step(writer.objects()) == 2          # the VirtualService and the DestinationRule
    vs = api.get("VirtualService", "shop", "reviews")
    resolved = condition(vs, "ResolvedRefs")
    assert (resolved["status"], resolved["reason"]) == ("False", "UndefinedSubset")
    assert "v2" in resolved["message"]
    assert condition(vs, "Accepted")["status"] == "True"
    assert [m["code"] for m in vs["status"]["validationMessages"]] == ["SH0103"]
    assert condition(api.get("DestinationRule", "shop", "reviews"), "ResolvedRefs")["status"] == "True"

    api.modify(destination_rule(["v1", "v2"]))          # the fix: the subset exists
    assert writer.step(writer.objects()) == 2            # the DestinationRule's observedGeneration moved too
    dr = api.get("DestinationRule", "shop", "reviews")
    assert condition(dr, "Accepted")["observedGeneration"] == dr["metadata"]["generation"] == 2
    vs = api.get("VirtualService", "shop", "reviews")
    assert condition(vs, "ResolvedRefs")["status"] == "True"
    assert "validationMessages" not in vs["status"]    # merge patch with null removed them


def test_nothing_is_written_when_nothing_changed(api):
    writer = writer_for(api)
    writer.step(writer.objects())
    before = len(status_writes(api))
    assert before == 2
    assert writer.step(writer.objects()) == 0
    assert len(status_writes(api)) == before


def test_a_write_whose_echo_has_not_come_is_not_repeated(api):
    writer = writer_for(api)
    stale = writer.objects()                 # the watch has not shown the written status yet
    writer.step(stale)
    assert writer.step(stale) == 0
    assert plan(stale, [], {}) != []         # without the memory it would write again


def test_an_object_deleted_meanwhile_is_skipped_and_another_kinds_status_is_kept(api):
    writer = writer_for(api)
    objects = writer.objects()
    api.delete("VirtualService", "shop", "reviews")
    assert writer.step(objects) == 1           # the DestinationRule; the VirtualService's 404 skipped
    dr = api.get("DestinationRule", "shop", "reviews")
    dr["status"]["conditions"].append({"type": "Reconciled", "status": "True", "reason": "ByOther", "message": ""})
    api.modify(dr)
    api.add(VIRTUAL_SERVICE)
    writer.step(writer.objects())
    kinds = [c["type"] for c in api.get("DestinationRule", "shop", "reviews")["status"]["conditions"]]
    assert "Reconciled" in kinds                # another writer's condition is left in place
    assert condition(api.get("VirtualService", "shop", "reviews"), "ResolvedRefs")["reason"] == "UndefinedSubset"


HTTP_ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
              "metadata": {"name": "reviews", "namespace": "shop"},
              "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}],
                       "rules": [{"backendRefs": [{"name": "reviews", "port": 80}]}]}}


def test_an_httproutes_status_is_written_in_gateway_apis_shape_beside_other_controllers(api):
    route = api.add(HTTP_ROUTE)
    other = {"parentRef": {"name": "elsewhere"}, "controllerName": "example.com/other",
             "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]}
    api.modify({**route, "status": {"parents": [other]}})
    writer = KubeStatusWriter(api.api_client(), lambda: [o for kind in (*KINDS, "HTTPRoute") for o in api.list(kind)])
    writer.step(writer.objects())
    status = api.get("HTTPRoute", "shop", "reviews")["status"]
    assert set(status) == {"parents"}, status         # no conditions or validationMessages at the top
    theirs, mine = status["parents"]
    assert theirs == other
    assert mine["controllerName"] == "shoal.io/waypoint-controller"
    assert mine["parentRef"] == HTTP_ROUTE["spec"]["parentRefs"][0]
    assert {c["type"]: c["status"] for c in mine["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True"}
    assert writer.step(writer.objects()) == 0         # and it is not rewritten


def test_a_status_the_api_server_refuses_is_skipped_and_the_others_are_written(api):
    writer = writer_for(api)
    api.fail(422, method="PATCH", path="/virtualservices/reviews/status", times=1)   # the first one written
    assert writer.step(writer.objects()) == 1          # the DestinationRule's, after the VirtualService's refusal
    assert "status" in api.get("DestinationRule", "shop", "reviews")
    assert "status" not in api.get("VirtualService", "shop", "reviews")
    assert writer.step(writer.objects()) == 0          # the refused one is not tried again until it changes


def test_the_control_planes_kubernetes_wiring_writes_status_from_its_sources_complete_view(api, tmp_path,
                                                                                           monkeypatch):
    """app.kube_wiring: the writer reads the config source's caches, once the source has listed every kind."""
    import asyncio

    from control_plane import app
    from support.polling import eventually_async

    # the client reads $KUBECONFIG when it is imported: point its default at the double's
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
                        str(api.kubeconfig(tmp_path / "kubeconfig")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    wiring = app.kube_wiring(app.Settings(source="kube"))
    writer = wiring.controllers[1].__self__
    assert isinstance(writer, KubeStatusWriter)
    writer.poll = 0.2

    async def main():
        async def pump():
            async for _ in wiring.events:
                pass
        tasks = [asyncio.create_task(pump()), asyncio.create_task(writer.run())]
        try:
            def written():
                status = api.get("VirtualService", "shop", "reviews").get("status") or {}
                return {c["type"]: c["reason"] for c in status.get("conditions") or ()}.get("ResolvedRefs")
            await eventually_async(lambda: written() == "UndefinedSubset", 30, "the VirtualService's status")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(main())
    # the DestinationRule was in the view before anything was written: never a false "no such DestinationRule"
    assert condition(api.get("DestinationRule", "shop", "reviews"), "ResolvedRefs")["status"] == "True"


def test_nothing_is_written_before_the_source_holds_a_complete_view(api):
    import asyncio

    from support.polling import eventually_async
    complete = []
    writer = KubeStatusWriter(api.api_client(), lambda: [o for kind in KINDS for o in api.list(kind)], poll=0.1,
                              ready=lambda: bool(complete))

    async def main():
        task = asyncio.create_task(writer.run())
        try:
            await asyncio.sleep(0.5)
            assert status_writes(api) == [], "written from a partial view"
            complete.append(True)
            await eventually_async(lambda: len(status_writes(api)) == 2, 10, "the writes once the view is complete")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())


def test_the_analysis_runs_again_only_when_the_view_changed(api):
    import asyncio

    from support.polling import eventually_async
    view = [1]
    writer = KubeStatusWriter(api.api_client(), lambda: [o for kind in KINDS for o in api.list(kind)], poll=0.05,
                              version=lambda: view[0])

    async def main():
        task = asyncio.create_task(writer.run())
        try:
            await eventually_async(lambda: writer.passes == 1, 10, "the first pass")
            await asyncio.sleep(0.5)                       # ten polls of the same view
            assert writer.passes == 1
            view[0] = 2
            await eventually_async(lambda: writer.passes == 2, 10, "a pass for the changed view")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
