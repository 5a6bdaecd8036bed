"""The local store: list and watch with resource versions, as the API server does."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from shoal import store as store_module
from shoal.store import Expired, Store


@pytest.fixture
def store(tmp_path):
    s = Store("unit", root=tmp_path)
    s.init()
    return s


def pod(name, ns="default", **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c"}], **spec}}


def test_apply_assigns_server_fields_and_versions(store):
    a = store.apply(pod("a"))
    b = store.apply(pod("b"))
    assert int(a["metadata"]["resourceVersion"]) < int(b["metadata"]["resourceVersion"])
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"]
    items, rv = store.list("Pod")
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    assert rv == int(b["metadata"]["resourceVersion"])


def test_reapply_unchanged_makes_no_event(store):
    store.apply(pod("a"))
    rv = store.resource_version()
    store.apply(pod("a"))
    assert store.resource_version() == rv
    changed = store.apply(pod("a", nodeName="node1"))
    assert int(changed["metadata"]["resourceVersion"]) == rv + 1
    assert changed["metadata"]["generation"] == 2


def test_status_survives_a_reapply_and_binding_is_kept(store):
    store.apply(pod("a"))
    store.mutate("Pod", "default", "a", lambda p: p["spec"].__setitem__("nodeName", "node2"))
    store.update_status("Pod", "default", "a", {"phase": "Running"})
    again = store.apply(pod("a"))
    assert again["status"] == {"phase": "Running"}
    assert again["spec"]["nodeName"] == "node2"


def test_services_get_distinct_vips_from_the_service_range(store):
    svc = lambda n: {"apiVersion": "v1", "kind": "Service", "metadata": {"name": n},  # noqa: E731
                     "spec": {"ports": [{"port": 80}]}}
    a, b = store.apply_many([svc("a"), svc("b")])
    assert a["spec"]["clusterIP"] != b["spec"]["clusterIP"]
    assert a["spec"]["clusterIP"].startswith("198.18.")
    assert store.apply(svc("a"))["spec"]["clusterIP"] == a["spec"]["clusterIP"]


def test_watch_from_a_list_version_sees_exactly_what_came_after(store):
    store.apply(pod("a"))
    _, rv = store.list("Pod")
    store.apply(pod("b"))
    store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    store.update_status("Pod", "default", "a", {"phase": "Running"})
    store.delete("Pod", "default", "b")
    seen = []
    for event in store.watch(rv, kinds=["Pod"], stop=lambda: len(seen) >= 3):
        seen.append((event.type, event.object["metadata"]["name"]))
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


def test_watch_across_processes_style_concurrency(store):
    _, rv = store.list("Pod")
    got = []

    def consume():
        for event in store.watch(rv, stop=lambda: len(got) >= 50):
            got.append(event.resource_version)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(50):
        store.apply(pod(f"p{i}"))
    t.join(timeout=10)
    assert got == sorted(got) and len(got) == 50


def test_bookmarks_carry_the_latest_version(store, monkeypatch):
    monkeypatch.setattr(store_module, "BOOKMARK_SECONDS", 0.05)
    store.apply(pod("a"))
    rv = store.resource_version()
    events = []
    for event in store.watch(0, stop=lambda: len(events) >= 2):
        events.append(event)
    assert events[0].type == "ADDED"
    assert events[1].type == "BOOKMARK" and events[1].resource_version == rv


def test_compaction_expires_old_versions(store, monkeypatch):
    compact_past_the_first_versions(store, monkeypatch)
    with pytest.raises(Expired):
        next(store.watch(1))
    _, rv = store.list("Pod")
    store.apply(pod("late"))
    assert next(store.watch(rv)).object["metadata"]["name"] == "late"


def compact_past_the_first_versions(store, monkeypatch):
    """30 changes with a journal that keeps 10 once it has 20: version 1 is no longer in it."""
    monkeypatch.setattr(store_module, "JOURNAL_MAX", 20)
    monkeypatch.setattr(store_module, "JOURNAL_KEEP", 10)
    monkeypatch.setattr(Store, "_maybe_compact", _compact_small)
    for i in range(30):
        store.apply(pod(f"p{i}"))


def _compact_small(self):
    lines = self.journal_path.read_text().splitlines(keepends=True)
    if len(lines) > store_module.JOURNAL_MAX:
        self.journal_path.write_text("".join(lines[-store_module.JOURNAL_KEEP:]))


def test_async_watch(store):
    async def main():
        _, rv = store.list("Pod")
        store.apply(pod("z"))
        async for event in store.awatch(rv):
            return event

    event = asyncio.run(asyncio.wait_for(main(), 5))
    assert event.type == "ADDED" and event.object["metadata"]["name"] == "z"


def test_a_quiet_async_watch_looks_at_the_journal_once_not_in_a_loop(store, monkeypatch):
    looks = []
    real_poll = store_module._JournalReader.poll
    monkeypatch.setattr(store_module._JournalReader, "poll", lambda self: looks.append(1) or real_poll(self))

    async def main():
        _, rv = store.list("Pod")
        watching = asyncio.create_task(anext(store.awatch(rv, bookmarks=False)))
        await asyncio.sleep(0.3)  # quiet: a polling watcher would have looked about 15 times
        quiet_looks = len(looks)
        store.apply(pod("woken"))
        event = await asyncio.wait_for(watching, 10)
        return quiet_looks, event

    quiet_looks, event = asyncio.run(main())
    assert quiet_looks == 1
    assert event.object["metadata"]["name"] == "woken"


def test_a_watch_ends_when_the_cluster_is_taken_down(store):
    import shutil

    async def main():
        _, rv = store.list("Pod")
        watching = asyncio.create_task(anext(store.awatch(rv, bookmarks=False)))
        await asyncio.sleep(0.05)
        shutil.rmtree(store.dir)
        await asyncio.wait_for(watching, 10)

    with pytest.raises(store_module.StoreError, match="taken down"):
        asyncio.run(main())


def test_a_blocking_watch_ends_on_a_stop_set_by_another_thread(store, monkeypatch):
    monkeypatch.setattr(store_module, "STOP_CHECK_SECONDS", 0.05)
    stopped = threading.Event()
    threading.Timer(0.05, stopped.set).start()
    assert list(store.watch(store.resource_version(), stop=stopped.is_set, bookmarks=False)) == []


def test_no_watch_leaves_a_file_descriptor_open_however_it_ends(store, monkeypatch):
    """Each watch holds an inotify watch and the journal; closed early, cancelled or Expired, it lets both go
    (and the last watch of the process the inotify fd)."""
    import os

    def open_fds() -> dict:
        out = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                out[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass  # the listing's own fd, gone already
        return out

    before = open_fds()
    store.apply(pod("a"))
    watch = store.watch(0, bookmarks=False)
    assert next(watch).object["metadata"]["name"] == "a"
    watch.close()  # a consumer that stopped after one event
    assert open_fds() == before

    async def cancelled():
        waiting = asyncio.create_task(anext(store.awatch(store.resource_version(), bookmarks=False)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    asyncio.run(cancelled())
    assert open_fds() == before

    compact_past_the_first_versions(store, monkeypatch)
    with pytest.raises(Expired):
        next(store.watch(1))
    with pytest.raises(Expired):
        asyncio.run(anext(store.awatch(1)))
    assert open_fds() == before


def test_a_version_left_in_the_journal_by_a_writer_that_died_is_not_given_again(store):
    store.apply(pod("a"))
    since = store.resource_version()
    # A writer died after appending its event and before writing the rv file.
    died = {**pod("b"), "metadata": {"name": "b", "namespace": "default", "resourceVersion": str(since + 1)}}
    with open(store.journal_path, "a") as journal:
        journal.write(json.dumps({"type": "ADDED", "object": died}) + "\n")
    assert store.resource_version() == since + 1
    store.apply(pod("c"))
    seen = []
    for event in store.watch(since, bookmarks=False, stop=lambda: seen and seen[-1][1] >= store.resource_version()):
        seen.append((event.object["metadata"]["name"], event.resource_version))
    assert seen == [("b", since + 1), ("c", since + 2)]


def test_a_line_torn_by_a_writer_that_died_is_skipped_and_the_next_change_is_whole(store):
    store.apply(pod("a"))
    since = store.resource_version()
    with open(store.journal_path, "a") as journal:
        journal.write('{"type": "ADDED", "object": {"kind": "Pod", "metad')     # died mid-line
    assert store.resource_version() == since
    store.apply(pod("b"))
    event = next(store.watch(since, bookmarks=False))
    assert (event.object["metadata"]["name"], event.resource_version) == ("b", since + 1)
