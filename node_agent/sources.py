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
import os
import threading
from typing import Awaitable, Callable

from shoal import log, store as local_store
from shoal.kube_client import Backoff
from shoal.kube_watch import Changed, Kind, Listed, ListWatch

logger = log.get("node_agent.sources")

OnChange = Callable[[dict[str, dict], dict[str, dict]], Awaitable[None]]

UNMESHABLE = "ShoalNotMeshed"  # the reason of the Warning Event about a pod that should be meshed and is not


def unmeshable_event(namespace: str, name: str, uid: str, message: str, node: str, now: str) -> dict:
    """A core/v1 Warning Event about the pod, from the node agent (`kubectl describe pod` shows it)."""
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.shoal-not-meshed", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": uid},
            "reason": UNMESHABLE, "message": message, "type": "Warning",
            "source": {"component": "shoal-node-agent", "host": node},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1}


def _now() -> str:
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    async def report(self, namespace: str, name: str, uid: str, message: str) -> None:
        """A Warning Event about a pod that should be meshed and is not (`shoal local events`)."""
        event = unmeshable_event(namespace, name, uid, message, self.node, _now())
        try:
            await asyncio.to_thread(self.store.apply, event)
        except local_store.StoreError as e:
            logger.debug("event not written", pod=f"{namespace}/{name}", error=str(e))


class KubeSource:
    """The Kubernetes API: pods with fieldSelector spec.nodeName=<node>, and namespaces.

    Each kind is a `shoal.kube_watch.ListWatch` in a thread (the kubernetes
    client is synchronous): list, watch, list again after 410 Gone, failures
    retried with backoff. Their records come to the event loop through a queue.
    """

    def __init__(self, node: str, api_client=None, discover=None, *, backoff: Backoff = Backoff(),
                 runtime=None) -> None:
        self.node = node
        self.api_client = api_client
        self.backoff = backoff
        self._stop = threading.Event()
        # A real kubelet does not report the pod's netns and cgroup: shoal-cni's call tells (agent.py).
        # Else the container runtime (`runtime`: cri.RuntimeSandboxes), then /proc.
        self.discover = discover or (lambda pod: _discover(pod, runtime))
        self._sandboxes: dict[str, dict] = {}
        self.watchers: list[ListWatch] = []

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
        api = self._client()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        pods: dict[str, dict] = {}
        namespaces: dict[str, dict] = {}
        listed = {"Pod": False, "Namespace": False}
        self.watchers = [
            ListWatch(api, Kind("Pod", "", ("v1",), "pods", field_selector=f"spec.nodeName={self.node}"),
                      watch_timeout=60, backoff=self.backoff),
            ListWatch(api, Kind("Namespace", "", ("v1",), "namespaces"), watch_timeout=60, backoff=self.backoff),
        ]

        def emit(record) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, record)

        for watcher in self.watchers:
            threading.Thread(target=watcher.run, args=(emit, self._stop), name=f"kube-{watcher.kind.plural}",
                             daemon=True).start()
        try:
            while True:
                record = await queue.get()
                if not isinstance(record, (Listed, Changed)):
                    continue
                is_pod = record.kind == "Pod"
                target = pods if is_pod else namespaces
                key_of = _pod_key if is_pod else (lambda o: o["metadata"]["name"])
                # The selector asked the server for this node's pods only; hold to it anyway.
                on_node = (lambda o: (o.get("spec") or {}).get("nodeName") == self.node) if is_pod else (lambda o: True)
                if isinstance(record, Listed):
                    target.clear()
                    target.update({key_of(o): o for o in record.items if on_node(o)})
                    listed[record.kind] = True
                elif record.type == "DELETED" or not on_node(record.object):
                    target.pop(key_of(record.object), None)
                else:
                    target[key_of(record.object)] = record.object
                if all(listed.values()):
                    current = {(p.get("metadata") or {}).get("uid") for p in pods.values()}
                    self._sandboxes = {u: s for u, s in self._sandboxes.items() if u in current}
                    await on_change({k: self._with_sandbox(p) for k, p in pods.items()}, dict(namespaces))
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        for watcher in self.watchers:
            watcher.stop()

    async def report(self, namespace: str, name: str, uid: str, message: str) -> None:
        """A Warning Event about a pod that should be meshed and is not (`kubectl describe pod` shows it)."""
        import hashlib
        from shoal import kube_client
        event = unmeshable_event(namespace, name, uid, message, self.node, _now())
        event["metadata"]["name"] += "." + hashlib.sha256(message.encode()).hexdigest()[:10]
        api = self._client()

        def post():
            return kube_client.call(lambda: kube_client.request(
                api, "POST", f"/api/v1/namespaces/{namespace}/events", body=event, timeout=(10.0, 30.0)),
                f"recording a {UNMESHABLE} event in {namespace}")
        try:
            await asyncio.to_thread(post)
        except kube_client.KubeConflict:
            pass  # the same event, already there
        except kube_client.KubeError as e:
            logger.debug("event not written", pod=f"{namespace}/{name}", error=str(e))

    def _with_sandbox(self, pod: dict) -> dict:
        """`discover`, remembered per uid once found (a scan of /proc is not free), and looked for again
        when the sandbox changed: its netns gone, or another one at that path (a recreated sandbox)."""
        uid = (pod.get("metadata") or {}).get("uid", "")
        known = self._sandboxes.get(uid)
        if known is not None and _same_netns(known):
            return {**pod, "status": {**(pod.get("status") or {}), "shoal": known}}
        self._sandboxes.pop(uid, None)
        filled = self.discover(pod)
        found = (filled.get("status") or {}).get("shoal")
        if found and found.get("netns") and os.path.exists(found["netns"]):
            self._sandboxes[uid] = found
        return filled


def _same_netns(found: dict) -> bool:
    try:
        inode = os.stat(found["netns"]).st_ino
    except OSError:
        return False
    return found.get("netns_inode") in (None, inode)


def _discover(pod: dict, runtime=None) -> dict:
    from node_agent.discover import with_sandbox
    return with_sandbox(pod, runtime=runtime.lookup if runtime is not None else None)
