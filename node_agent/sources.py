"""Where the agent learns about pods and namespaces: the local cluster's store, or Kubernetes.

Both sources list, then watch from the listed resourceVersion, and list again
when told the version expired (410 Gone). Each keeps the current Pods of its
node and all Namespaces, as Kubernetes-shaped dicts, and calls
`on_change(pods, namespaces)` after its first full list and after every
change. The agent's decisions are made from those dicts alone
(reconcile.pod_info / namespace_enrolled), whichever the source.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Awaitable, Callable

from shoal import log, store as local_store

from node_agent.errors import SourceError

logger = log.get("node_agent.sources")

OnChange = Callable[[dict[str, dict], dict[str, dict]], Awaitable[None]]


def _pod_key(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name')}"


class LocalSource:
    """The local cluster's store (shoal.store), watched with `awatch`."""

    def __init__(self, cluster: str, node: str, root=None) -> None:
        self.store = local_store.Store(cluster, root=root)
        self.node = node

    async def run(self, on_change: OnChange) -> None:
        while True:
            pods_list, rv_pods = await asyncio.to_thread(self.store.list, "Pod")
            ns_list, rv_ns = await asyncio.to_thread(self.store.list, "Namespace")
            pods = {_pod_key(p): p for p in pods_list if (p.get("spec") or {}).get("nodeName") == self.node}
            namespaces = {n["metadata"]["name"]: n for n in ns_list}
            await on_change(dict(pods), dict(namespaces))
            try:
                async for event in self.store.awatch(since=min(rv_pods, rv_ns), kinds=["Pod", "Namespace"]):
                    if event.type == "BOOKMARK":
                        continue
                    obj = event.object
                    if event.kind == "Namespace":
                        name = obj["metadata"]["name"]
                        if event.type == "DELETED":
                            namespaces.pop(name, None)
                        else:
                            namespaces[name] = obj
                    else:
                        key = _pod_key(obj)
                        if event.type == "DELETED" or (obj.get("spec") or {}).get("nodeName") != self.node:
                            if pods.pop(key, None) is None:
                                continue
                        else:
                            pods[key] = obj
                    await on_change(dict(pods), dict(namespaces))
            except local_store.Expired as e:
                logger.info("watch expired; listing again", reason=str(e))


class KubeSource:
    """The Kubernetes API: pods with fieldSelector spec.nodeName=<node>, and namespaces.

    The kubernetes client is synchronous; each watch runs in a thread and
    hands its events to the event loop.
    """

    def __init__(self, node: str, api_client=None, discover=None) -> None:
        self.node = node
        self.api_client = api_client
        self._stop = threading.Event()
        # A real kubelet does not report the pod's netns and cgroup: find them in /proc.
        self.discover = discover or _discover
        self._sandboxes: dict[str, dict] = {}


    def _client(self):
        if self.api_client is not None:
            return self.api_client
        from kubernetes import client, config
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return client.ApiClient()

    async def run(self, on_change: OnChange) -> None:
        from kubernetes import client
        api = client.CoreV1Api(self._client())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        pods: dict[str, dict] = {}
        namespaces: dict[str, dict] = {}
        listed = {"Pod": False, "Namespace": False}

        def pump(kind: str, lister, **kwargs):
            serialize = api.api_client.sanitize_for_serialization
            while not self._stop.is_set():
                try:
                    result = lister(**kwargs)
                    items = [serialize(i) for i in result.items]
                    loop.call_soon_threadsafe(queue.put_nowait, (kind, "LIST", items))
                    rv = result.metadata.resource_version
                    while not self._stop.is_set():
                        stream = lister(watch=True, resource_version=rv, allow_watch_bookmarks=True,
                                        timeout_seconds=60, **kwargs)
                        for line in stream:
                            raw = json.loads(line)
                            obj = raw.get("object") or {}
                            if raw.get("type") == "ERROR":
                                if obj.get("code") == 410:
                                    raise _Gone()
                                raise SourceError(f"the {kind} watch failed: {obj.get('message', obj)}")
                            rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                            if raw.get("type") != "BOOKMARK":
                                loop.call_soon_threadsafe(queue.put_nowait, (kind, raw["type"], obj))
                except _Gone:
                    logger.info("watch expired (410 Gone); listing again", kind=kind)
                except Exception as e:  # API server restarts, network blips: list again after a pause
                    if self._stop.is_set():
                        return
                    logger.warning("kubernetes watch failed; retrying", kind=kind, error=str(e))
                    self._stop.wait(1.0)

        threads = [
            threading.Thread(target=pump, args=("Pod", _iter_lines(api.list_pod_for_all_namespaces)),
                             kwargs={"field_selector": f"spec.nodeName={self.node}"}, daemon=True),
            threading.Thread(target=pump, args=("Namespace", _iter_lines(api.list_namespace)), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while True:
                kind, kind_of_event, payload = await queue.get()
                if kind == "Pod":  # the selector asked the server for these only; hold to it anyway
                    on_node = lambda o: (o.get("spec") or {}).get("nodeName") == self.node  # noqa: E731
                    if kind_of_event == "LIST":
                        payload = [o for o in payload if on_node(o)]
                    elif not on_node(payload):
                        kind_of_event = "DELETED"
                target = pods if kind == "Pod" else namespaces
                key_of = _pod_key if kind == "Pod" else (lambda o: o["metadata"]["name"])
                if kind_of_event == "LIST":
                    target.clear()
                    target.update({key_of(o): o for o in payload})
                    listed[kind] = True
                elif kind_of_event == "DELETED":
                    target.pop(key_of(payload), None)
                else:
                    target[key_of(payload)] = payload
                if all(listed.values()):
                    current = {(p.get("metadata") or {}).get("uid") for p in pods.values()}
                    self._sandboxes = {u: s for u, s in self._sandboxes.items() if u in current}
                    await on_change({k: self._with_sandbox(p) for k, p in pods.items()}, dict(namespaces))
        finally:
            self._stop.set()


    def _with_sandbox(self, pod: dict) -> dict:
        """`discover`, remembered per uid once found (a scan of /proc is not free)."""
        uid = (pod.get("metadata") or {}).get("uid", "")
        known = self._sandboxes.get(uid)
        if known is not None:
            return {**pod, "status": {**(pod.get("status") or {}), "shoal": known}}
        filled = self.discover(pod)
        found = (filled.get("status") or {}).get("shoal")
        if found and found.get("netns") and os.path.exists(found["netns"]):
            self._sandboxes[uid] = found
        return filled


class _Gone(SourceError):
    """The watch's resourceVersion expired (410 Gone): list again."""


def _discover(pod: dict) -> dict:
    from node_agent.discover import with_sandbox
    return with_sandbox(pod)


def _iter_lines(lister):
    """Wraps a kubernetes list call so that watch=True yields raw JSON lines."""
    def call(watch: bool = False, **kwargs):
        if not watch:
            return lister(**kwargs)
        response = lister(watch=True, _preload_content=False, **kwargs)
        return (line for line in response if line.strip())
    return call
