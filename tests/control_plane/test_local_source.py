"""LocalSource over a real local-cluster Store in a temporary directory."""

import asyncio

import pytest

import shoal.store
from control_plane.sources.local import LocalSource, report_invalid
from control_plane.translate import Translator
from shoal.model import ResourceType
from shoal.store import Store

pytestmark = pytest.mark.timeout(60)


def pod(name, **labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"nodeName": "node1"}}


@pytest.fixture
def store(tmp_path):
    s = Store("test", root=tmp_path)
    s.init()
    return s


async def take_until(agen, predicate, limit=200):
    """Events from the source until one satisfies predicate (included)."""
    out = []
    for _ in range(limit):
        event = await asyncio.wait_for(agen.__anext__(), 5)
        out.append(event)
        if predicate(event):
            return out
    raise AssertionError(f"no matching event in {limit}: {out}")


def is_sync(event):
    return event.type == "BOOKMARK"


def named(events):
    return [(e.type, e.kind, e.object["metadata"]["name"]) for e in events if e.type != "BOOKMARK"]


def test_initial_list_changes_in_order_and_kinds_filtered(store):
    store.apply_many([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}, pod("a"),
                      {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}])

    async def main():
        source = LocalSource(store)
        agen = source.events()
        listed = await take_until(agen, is_sync)
        assert sorted(named(listed)) == [("ADDED", "Namespace", "default"), ("ADDED", "Pod", "a")]
        assert listed[-1].object["metadata"]["resourceVersion"] == str(store.resource_version())
        store.apply(pod("b"))
        store.patch_metadata("Pod", "default", "a", labels={"app": "web"})
        store.delete("Pod", "default", "b")
        store.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "e"}, "spec": {}})
        changes = await take_until(agen, lambda e: e.type == "DELETED")
        assert named(changes) == [("ADDED", "Pod", "b"), ("MODIFIED", "Pod", "a"), ("DELETED", "Pod", "b")]
        assert changes[1].object["metadata"]["labels"] == {"app": "web"}
        await agen.aclose()
    asyncio.run(main())


def test_expired_watch_lists_again_and_yields_the_difference(store, monkeypatch):
    store.apply_many([pod("keep"), pod("change"), pod("remove")])
    monkeypatch.setattr(shoal.store, "JOURNAL_MAX", 5)
    monkeypatch.setattr(shoal.store, "JOURNAL_KEEP", 2)

    async def main():
        source = LocalSource(store, relist_delay=0)
        agen = source.events()
        await take_until(agen, is_sync)
        assert source.lists == 1
        # While the source is not reading, the journal moves on and is compacted past its version.
        store.apply(pod("change", app="v2"))
        store.delete("Pod", "default", "remove")
        store.apply(pod("new"))
        for i in range(8):
            store.apply(pod("flash"))
            store.patch_metadata("Pod", "default", "flash", labels={"i": str(i)})
        store.delete("Pod", "default", "flash")
        diff = await take_until(agen, is_sync)
        assert source.lists == 2
        assert sorted(named(diff)) == [("ADDED", "Pod", "new"), ("DELETED", "Pod", "remove"),
                                       ("MODIFIED", "Pod", "change")]
        store.apply(pod("after"))
        (after,) = named(await take_until(agen, lambda e: e.type == "ADDED"))
        assert after == ("ADDED", "Pod", "after")
        await agen.aclose()
    asyncio.run(main())


def test_translator_fed_by_the_local_source_and_invalid_config_reported(store):
    store.apply_many([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default",
                                                              "labels": {"shoal.io/dataplane-mode": "ambient"}}},
        pod("a", app="web"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
         "metadata": {"name": "bad", "namespace": "default"},
         "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}, "weight": -1}]}]}},
    ])
    store.update_status("Pod", "default", "a", {"phase": "Running", "podIP": "198.19.1.4"})

    async def main():
        translator = Translator()
        agen = LocalSource(store).events()
        for event in await take_until(agen, is_sync):
            translator.apply_event(event)
        update = translator.flush()
        await agen.aclose()
        return translator, update
    translator, update = asyncio.run(main())
    snap = translator.snapshot()
    (service,) = snap[ResourceType.SERVICE].values()
    assert service.vips and service.vips[0].startswith("198.18.")   # allocated by the store
    assert [e.target_port for e in service.endpoints] == [8080]
    assert snap[ResourceType.ROUTE_TABLE] == {}
    key = ("VirtualService", "default", "bad")
    bad = store.get(*key)
    report_invalid(store, bad, update.findings[key].errors)
    (event,) = store.list("Event")[0]
    assert event["reason"] == "ShoalInvalidConfig" and event["involvedObject"]["name"] == "bad"
    assert "spec.http[0].route[0].weight: must be at least 0, not -1" in event["message"]
