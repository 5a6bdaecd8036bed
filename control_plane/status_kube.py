"""Mesh objects' `status` on Kubernetes: the analysis's conditions, written where they changed.

On the local cluster `shoal local apply` (and delete, label, annotate)
rewrites every mesh object's status from the analysis
(`shoal.cli.mesh_status`). On Kubernetes nobody runs the CLI after a
`kubectl apply`, so the control plane does it: every `poll` seconds it
takes the objects its config source holds (the same list/watch the
translator is fed from: no extra list of the cluster; once it has listed
every kind, so a partial view writes nothing untrue), runs the analysis
(`control_plane.analysis.analyze`) and, for each mesh object whose status
should differ from what it carries, PATCHes its `status` subresource with a
merge patch: `status.conditions` (Accepted, ResolvedRefs) and
`validationMessages`, as Istio writes them.

Only when they change: an object is written when its status differs from
the one the watch last showed, and not again while the watch still shows the
resourceVersion it had when it was written (the write's own MODIFIED event
has not arrived yet). A Gateway's status is not written here: its
controller (`control_plane.waypoints_kube`) owns it, and two writers of one
conditions list would undo each other's work. A TrafficSplit has no status
subresource (SMI's CRD declares none), so it has none to write. An
HTTPRoute's status is written in Gateway API's shape, which its upstream
CRD requires (`status.parents`: one entry per parentRef, with shoal's
controllerName and the same conditions; other controllers' entries kept;
no validationMessages, which that schema has no place for). An object the
API server refuses to take a status for (422: a CRD whose schema differs)
is skipped, warned once, and does not stop the others.

The control plane runs one replica (daemonset/control-plane.yaml) and has no
leader election; with several replicas each would write the same status,
which is harmless but wasteful. API failures are
`shoal.kube_client.KubeError`s: 429/5xx with Retry-After are retried, a
404 (deleted meanwhile) is skipped, anything else ends the pass, logged with
what to check, and the next poll tries again. The calls it makes are in
`shoal.kube_calls.API_CALLS`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

from shoal import log
from shoal.kube_client import KubeApiError, KubeError, KubeNotFound, call, request

from control_plane.sources.kube import RESOURCES
from control_plane.waypoints import WAYPOINT_CONTROLLER as CONTROLLER

logger = log.get("shoal.control_plane.status")

OWNED_ELSEWHERE = ("Gateway",)          # their controller writes their status
NO_STATUS = ("TrafficSplit",)           # SMI's CRDs have no status subresource
MERGE_PATCH = "application/merge-patch+json"
Key = tuple[str, str, str]


@dataclass(frozen=True)
class StatusWrite:
    """One status to write: where, what the object looked like, and the merge patch."""
    key: Key                 # (kind, namespace, name)
    path: str                # .../<plural>/<name>/status
    resource_version: str    # the object's, as the watch showed it when the write was planned
    status: dict             # the status it should carry
    patch: dict              # {"status": ...}: keys it carries and should not, set to None (merge patch deletes)


def _plurals() -> dict[tuple[str, str], str]:
    return {(r.kind, r.group): r.plural for r in RESOURCES}


def _path(obj: dict, plural: str) -> str:
    meta = obj["metadata"]
    return (f"/apis/{obj['apiVersion']}/namespaces/{meta.get('namespace') or 'default'}/{plural}/{meta['name']}"
            f"/status")


def plan(objects: Iterable[dict], findings: Iterable, written: dict[Key, tuple[str, dict]]) -> list[StatusWrite]:
    """The status writes that take the mesh objects among `objects` to what `findings` say of them.
    `written`: key -> (resourceVersion seen, status) of the writes already made (their echo may be pending)."""
    from control_plane.analysis import status_of
    from control_plane.translate import is_mesh_object

    plurals = _plurals()
    by_key: dict[Key, list] = defaultdict(list)
    for finding in findings:
        by_key[finding.key].append(finding)
    out = []
    for obj in objects:
        if not is_mesh_object(obj) or obj.get("kind") in OWNED_ELSEWHERE + NO_STATUS:
            continue
        meta = obj.get("metadata") or {}
        kind, group = str(obj.get("kind")), str(obj.get("apiVersion", "")).rpartition("/")[0]
        plural = plurals.get((kind, group))
        if plural is None or not meta.get("name"):
            continue
        key = (kind, str(meta.get("namespace") or "default"), str(meta["name"]))
        status = status_of(obj, by_key.get(key, ()))
        if kind == "HTTPRoute":
            status = route_status(obj, status["conditions"])
        have = obj.get("status") or {}
        version = str(meta.get("resourceVersion") or "")
        if status == have or written.get(key) == (version, status):
            continue
        patch = {**status, **{k: None for k in have if k not in status}}
        out.append(StatusWrite(key, _path(obj, plural), version, status, {"status": patch}))
    return out


def route_status(route: dict, conditions: list[dict]) -> dict:
    """An HTTPRoute's status as Gateway API has it: for each of its parentRefs, shoal's entry with these
    conditions; the entries of other controllers kept as they are."""
    have = route.get("status") or {}
    others = [p for p in have.get("parents") or () if isinstance(p, dict) and p.get("controllerName") != CONTROLLER]
    mine = [{"parentRef": ref, "controllerName": CONTROLLER, "conditions": conditions}
            for ref in (route.get("spec") or {}).get("parentRefs") or () if isinstance(ref, dict)]
    return {**{k: v for k, v in have.items() if k not in ("parents", "conditions", "validationMessages")},
            "parents": others + mine}


class KubeStatusWriter:
    """Writes the analysis's status on the mesh objects `objects()` returns (the config source's view)."""

    def __init__(self, api_client, objects: Callable[[], list[dict]], poll: float = 10.0,
                 ready: Callable[[], bool] = lambda: True, version: Callable[[], object] | None = None) -> None:
        """`ready()`: the source holds a complete view (before, a route seen without its DestinationRule
        would get a condition that is not true). `version()`: changes whenever the view does; while it
        stays, a pass is skipped (the analysis translates the whole cluster: not every poll for nothing)."""
        self.api = api_client
        self.objects = objects
        self.poll = poll
        self.ready = ready
        self.version = version
        self.passes = 0                      # analyses run
        self.written: dict[Key, tuple[str, dict]] = {}
        self._refused: set[Key] = set()      # warned about once
        self.writes = 0

    def step(self, objects: list[dict]) -> int:
        """One pass over `objects`: analyse, write what changed. The writes made; KubeError ends the pass."""
        from control_plane.analysis import analyze

        self.passes += 1
        todo = plan(objects, analyze(objects), self.written)
        live = {(str(o.get("kind")), str((o.get("metadata") or {}).get("namespace") or "default"),
                 str((o.get("metadata") or {}).get("name"))) for o in objects}
        for key in set(self.written) - live:
            del self.written[key]          # gone: a same-named successor starts afresh
        done = 0
        for write in todo:
            kind, namespace, name = write.key
            try:
                call(lambda: request(self.api, "PATCH", write.path, body=write.patch, content_type=MERGE_PATCH,
                                     timeout=(10.0, 30.0)),
                     f"writing the status of {kind} {namespace}/{name}")
            except KubeNotFound:
                continue                   # deleted since the watch showed it
            except KubeApiError as e:
                if e.status != 422:
                    raise
                if write.key not in self._refused:
                    self._refused.add(write.key)
                    logger.warning("the API server refused this object's status (its CRD's schema differs from "
                                   "the one shoal writes for); skipped", kind=kind, namespace=namespace, name=name,
                                   error=str(e))
                self.written[write.key] = (write.resource_version, write.status)   # not again until it changes
                continue
            self.written[write.key] = (write.resource_version, write.status)
            done += 1
        self.writes += done
        return done

    async def run(self) -> None:
        while not self.ready():
            await asyncio.sleep(min(self.poll, 0.5))
        done = None
        while True:
            seen = self.version() if self.version is not None else None
            if seen is None or seen != done:
                objects = list(self.objects())      # read in the loop, where the source's caches change
                try:
                    await asyncio.to_thread(self.step, objects)
                    done = seen
                except KubeError as e:
                    logger.warning("writing mesh objects' status failed; retrying at the next poll (check the "
                                   "control plane's RBAC for <kind>/status patch: daemonset/control-plane.yaml)",
                                   error=str(e), status=e.status)
            await asyncio.sleep(self.poll)
