"""KubeSource against the list/watch test double (support.kube_api.KubeDouble), over the real kubernetes client."""

import asyncio
import functools

import pytest
from kubernetes import client
from structlog.testing import capture_logs

from control_plane.sources.kube import RESOURCES, KubeSource, make_api_client, report_invalid

from support.kube_api import KubeDouble
from support.polling import eventually_async

pytestmark = pytest.mark.timeout(60)


def in_loop(fn):
    """Run an async test body in a fresh event loop (no pytest plugin needed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def ns(name):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pod(name, ns="default", **labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "node1", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": "198.19.1.9"}}


def vs(name):
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}}]}]}}


class Run:
    """Drives source.events() in the test's loop, collecting what it yields."""

    def __init__(self, double: KubeDouble, **kwargs) -> None:
        config = client.Configuration()
        config.host = double.url
        self.api = make_api_client(config)
        self.source = KubeSource(self.api, retry_delay=0.05, **kwargs)
        self.events = []
        self._task = None

    async def __aenter__(self):
        async def pump():
            async for event in self.source.events():
                self.events.append(event)
        self._task = asyncio.create_task(pump())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.source.stop()
        self.api.close()

    async def until(self, predicate, timeout=10.0):
        """The events so far, once `predicate(events)` holds."""
        def so_far():
            return [(e.type, e.object.get("kind"), e.object["metadata"].get("name")) for e in self.events]
        await eventually_async(lambda: predicate(self.events), timeout, lambda: f"the events; so far: {so_far()}")
        return self.events

    async def watching(self, double):
        """Once the first list is synced and every served resource has its watch open."""
        await self.until(synced)
        await self.until(lambda ev: self.all_watching(double))

    def all_watching(self, double):
        """Every served resource has its watch open (the double sees them)."""
        served = [k for k, v in self.source.served.items() if v is not None]
        return len(self.source.served) == len(RESOURCES) and double.open_watches() == len(served)

    def synced_at(self):
        return next(i for i, e in enumerate(self.events) if e.type == "BOOKMARK" and e.object.get("kind") == "")

    def after_sync(self, *types):
        start = self.synced_at()
        return [e for e in self.events[start + 1:] if e.type in types]


def synced(events):
    """The source has listed every resource (its one BOOKMARK with no kind)."""
    return any(e.type == "BOOKMARK" and e.object.get("kind") == "" for e in events)


def named(events):
    return [(e.type, e.object["kind"], e.object["metadata"]["name"]) for e in events]


@pytest.fixture
def double():
    with KubeDouble(served={"": {"v1"}, "networking.istio.io": {"v1alpha3", "v1beta1"},
                            "security.istio.io": {"v1"}, "gateway.networking.k8s.io": {"v1"}}) as d:
        yield d


@in_loop
async def test_initial_list_then_synced(double):
    double.add(ns("default"))
    double.add(pod("a"))
    double.add(vs("reviews"))
    async with Run(double) as run:
        await run.until(synced)
        assert [e.type for e in run.events].index("BOOKMARK") == run.synced_at()  # the first BOOKMARK: synced
        listed = run.events[:run.synced_at()]
        assert sorted(named(listed)) == [("ADDED", "Namespace", "default"), ("ADDED", "Pod", "a"),
                                         ("ADDED", "VirtualService", "reviews")]
        (virtual_service,) = [e.object for e in listed if e.object["kind"] == "VirtualService"]
        assert virtual_service["apiVersion"] == "networking.istio.io/v1beta1"  # v1 is not served: next one
        assert run.source.served["VirtualService"] == "v1beta1"
        assert run.source.served["TrafficSplit"] is None                     # not served at all: skipped
        assert double.list_requests("virtualservices")[0] == {}
        watch = double.watch_requests("pods")[0]
        assert watch["allowWatchBookmarks"] == "true" and watch["resourceVersion"] == "103"


@in_loop
async def test_events_in_order(double):
    async with Run(double) as run:
        await run.watching(double)
        double.add(pod("a"))
        double.modify(pod("a", app="web"))
        double.add(vs("reviews"))
        double.delete("Pod", "default", "a")
        await run.until(lambda ev: len(run.after_sync("ADDED", "MODIFIED", "DELETED")) == 4)
        changes = run.after_sync("ADDED", "MODIFIED", "DELETED")
        pod_events = [c for c in changes if c.object["kind"] == "Pod"]
        assert [e.type for e in pod_events] == ["ADDED", "MODIFIED", "DELETED"]
        assert pod_events[1].object["metadata"]["labels"] == {"app": "web"}
        assert [int(e.object["metadata"]["resourceVersion"]) for e in pod_events] == [101, 102, 104]


@in_loop
async def test_bookmarks_advance_the_version_and_resume_from_it(double):
    async with Run(double) as run:
        await run.watching(double)
        double.add(vs("reviews"))       # rv 101: only the VirtualService stream sees it
        double.add(pod("a"))            # rv 102
        await run.until(lambda ev: len(run.after_sync("ADDED")) == 2)
        double.bookmark()
        await run.until(lambda ev: any(e.type == "BOOKMARK" and e.object["kind"] == "Service"
                                       and e.object["metadata"]["resourceVersion"] == "102" for e in ev))
        assert run.source.caches["Service"].versions["Service"] == "102"   # advanced though no Service changed
        bookmarks = [e for e in run.events[run.synced_at() + 1:] if e.type == "BOOKMARK"]
        assert all(set(e.object) == {"kind", "metadata"} for e in bookmarks)
        before = len(double.watch_requests("services"))
        double.drop_watches()
        await run.until(lambda ev: len(double.watch_requests("services")) > before)
        assert double.watch_requests("services")[-1]["resourceVersion"] == "102"
        assert len(double.list_requests("services")) == 1


@in_loop
async def test_dropped_connection_resumes_from_the_last_version_without_a_list(double):
    async with Run(double) as run:
        await run.watching(double)
        double.add(pod("a"))
        await run.until(lambda ev: len(run.after_sync("ADDED")) == 1)
        double.drop_watches()
        await run.until(lambda ev: len(double.watch_requests("pods")) >= 2)
        double.add(pod("b"))
        await run.until(lambda ev: len(run.after_sync("ADDED")) == 2)
        assert double.watch_requests("pods")[-1]["resourceVersion"] == "101"
        assert len(double.list_requests("pods")) == 1
        assert named(run.after_sync("ADDED")) == [("ADDED", "Pod", "a"), ("ADDED", "Pod", "b")]


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
@in_loop
async def test_410_gone_lists_again_and_yields_the_difference(gone_as_http):
    served = {"": {"v1"}, "networking.istio.io": {"v1"}}
    with KubeDouble(served=served, gone_as_http=gone_as_http) as double:
        for name in ("keep", "change", "remove"):
            double.add(pod(name))
        async with Run(double) as run:
            await run.watching(double)

            def changes(d):
                d.modify(pod("change", app="v2"))
                d.delete("Pod", "default", "remove")
                d.add(pod("new"))
                d.add(pod("flash"))
                d.delete("Pod", "default", "flash")      # born and gone while unwatched: never shown
            double.behind_the_watch(changes)
            await run.until(lambda ev: len(run.after_sync("ADDED", "MODIFIED", "DELETED")) >= 3)
            await asyncio.sleep(0.2)
            assert sorted(named(run.after_sync("ADDED", "MODIFIED", "DELETED"))) == [
                ("ADDED", "Pod", "new"), ("DELETED", "Pod", "remove"), ("MODIFIED", "Pod", "change")]
            assert len(double.list_requests("pods")) == 2
            assert run.source.lists["Pod"] == 2
            # and the watch goes on from the new list's version
            double.add(pod("later"))
            await run.until(lambda ev: ("ADDED", "Pod", "later") in named(run.after_sync("ADDED")))


def test_report_invalid_creates_a_warning_event():
    with KubeDouble() as double:
        config = client.Configuration()
        config.host = double.url
        with client.ApiClient(config) as api:
            bad = vs("reviews")
            bad["metadata"]["uid"] = "u-1"
            errors = ["VirtualService default/reviews: spec.http[0].route[0].weight: must be at least 0, not -5"]
            created = report_invalid(api, bad, errors)
            assert created["reason"] == "ShoalInvalidConfig"
            (event,) = double.events
            assert event["type"] == "Warning" and event["metadata"]["namespace"] == "default"
            assert event["involvedObject"] == {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                                               "name": "reviews", "namespace": "default", "uid": "u-1",
                                               "resourceVersion": ""}
            assert event["message"] == errors[0]
            assert report_invalid(api, bad, errors) is None   # the same report again: already there
            assert len(double.events) == 1


@in_loop
async def test_a_crd_installed_later_is_picked_up():
    with KubeDouble(served={"": {"v1"}}) as double:
        async with Run(double, rediscover_interval=0.1) as run:
            await run.until(synced)
            assert run.source.served["TrafficSplit"] is None
            double.served["split.smi-spec.io"] = {"v1alpha2"}
            double.add({"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
                        "metadata": {"name": "s", "namespace": "default"},
                        "spec": {"service": "a", "backends": [{"service": "b", "weight": 1}]}})
            await run.until(lambda ev: ("ADDED", "TrafficSplit", "s") in named(run.after_sync("ADDED")))
            assert run.source.served["TrafficSplit"] == "v1alpha2"
            (split,) = [e.object for e in run.after_sync("ADDED")]
            assert split["apiVersion"] == "split.smi-spec.io/v1alpha2"


def trafficsplit_crd():
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "trafficsplits.split.smi-spec.io"},
            "spec": {"group": "split.smi-spec.io", "scope": "Namespaced",
                     "names": {"plural": "trafficsplits", "kind": "TrafficSplit"},
                     "versions": [{"name": "v1alpha2", "served": True, "storage": True}]}}


def split(name):
    return {"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"service": "a", "backends": [{"service": "b", "weight": 1}]}}


@in_loop
async def test_a_missing_crd_is_empty_named_once_and_picked_up_when_created_then_emptied_when_deleted():
    with KubeDouble(served={"": {"v1"}}) as double, capture_logs() as logs:
        async with Run(double, rediscover_interval=0.05) as run:
            await run.until(synced)
            await asyncio.sleep(0.3)        # several looks at the missing kinds
            missing = [entry for entry in logs if "trafficsplits.split.smi-spec.io" in entry["event"]]
            assert len(missing) == 1 and missing[0]["log_level"] == "warning"
            assert "not served" in missing[0]["event"] and "treated as empty" in missing[0]["event"]
            with double.api_client() as c:   # the CRD is installed through the API, then an object of it
                c.call_api(*c.param_serialize("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                              body=trafficsplit_crd())).read()
            double.add(split("s"))
            await run.until(lambda ev: ("ADDED", "TrafficSplit", "s") in named(run.after_sync("ADDED")))
            assert run.source.served["TrafficSplit"] == "v1alpha2"
            double.delete("CustomResourceDefinition", None, "trafficsplits.split.smi-spec.io")
            await run.until(lambda ev: ("DELETED", "TrafficSplit", "s") in named(run.after_sync("DELETED")))


@pytest.mark.parametrize("code", [401, 403, 429, 500, 503])
@in_loop
async def test_a_failed_list_or_watch_is_retried_with_backoff(double, code):
    double.add(pod("a"))
    double.fail(code, method="GET", path="/pods", times=3, watch=False)
    double.fail(code, method="GET", path="/services", times=2, watch=True)
    async with Run(double) as run:
        await run.until(synced, timeout=30)
        assert ("ADDED", "Pod", "a") in named(run.events[:run.synced_at()])
        await run.until(lambda ev: not double.faults, timeout=30)
        double.add(pod("b"))
        double.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
                    "spec": {"ports": [{"port": 80}]}})
        await run.until(lambda ev: {("ADDED", "Pod", "b"), ("ADDED", "Service", "s")} <= set(
            named(run.after_sync("ADDED"))), timeout=30)
    pods_lists = [r for r in double.requests if r.path == "/api/v1/pods" and not r.query.get("watch")]
    assert len(pods_lists) >= 4          # the version pick and the list were asked again after each failure


@in_loop
async def test_graceful_deletion_is_a_modification_with_a_deletion_timestamp_then_a_deletion(double):
    double.add(pod("a"))
    async with Run(double) as run:
        await run.watching(double)
        with double.api_client() as c:
            client.CoreV1Api(c).delete_namespaced_pod("a", "default")
        await run.until(lambda ev: ("DELETED", "Pod", "a") in named(run.after_sync("DELETED")))
        changes = [(e.type, bool(e.object["metadata"].get("deletionTimestamp")))
                   for e in run.after_sync("MODIFIED", "DELETED")]
        assert changes == [("MODIFIED", True), ("DELETED", True)]


@in_loop
async def test_a_broken_stream_then_a_failed_watch_request_loses_no_event(double):
    async with Run(double) as run:
        await run.watching(double)
        double.fail(500, path="/pods", watch=True)       # the next watch request fails
        double.drop_watches()
        double.add(pod("a"))
        await run.until(lambda ev: ("ADDED", "Pod", "a") in named(run.after_sync("ADDED")), timeout=30)
        assert not double.faults
        assert named(run.after_sync("ADDED", "MODIFIED", "DELETED")) == [("ADDED", "Pod", "a")]   # once


@in_loop
async def test_an_unreachable_api_server_is_retried_with_growing_delays():
    from support.net import free_port
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{free_port()}"      # nothing listens there
    source = KubeSource(make_api_client(config), [r for r in RESOURCES if r.kind == "Pod"], retry_delay=0.02)

    async def pump():
        async for _ in source.events():
            pass
    with capture_logs() as logs:
        task = asyncio.create_task(pump())
        try:
            await eventually_async(lambda: len([e for e in logs if e.get("resource") == "pods"]) >= 4, 30,
                                   "four failed attempts logged")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    failures = [e for e in logs if e.get("resource") == "pods"][:4]
    assert all(e["log_level"] == "warning" and "no answer from the API server" in e["error"] for e in failures)
    delays = [e["retry_in"] for e in failures]
    assert delays == sorted(delays) and delays[-1] > delays[0]      # backing off, not spinning
