"""The Kubernetes API double's memory, with no HTTP: objects, their history, and the API server's rules.

What it keeps, and the rules it holds (as the real API server does):
- one object per (group, plural, namespace, name), whatever version it was
  written in (the server converts; here only `apiVersion` changes);
- one cluster-wide resourceVersion counter; every change is a history entry
  (rv, type, object, the object before), which watches read; `compact()`
  forgets the history, so a watch from before gets 410 Gone;
- create: 409 AlreadyExists, `generateName`, uid, creationTimestamp,
  generation 1; replace/patch: 409 Conflict on a stale resourceVersion,
  generation bumped when anything but metadata and status changes;
- a kind with a status subresource: its main path ignores `status`, its
  `/status` path changes only `status`;
- patches: merge (RFC 7386), JSON patch (RFC 6902), strategic merge (built-in
  kinds only: a custom resource answers 415, as the real server does; lists of
  objects with a `name` are merged by name, the patchMergeKey of containers,
  volumes, env and ports), server-side apply (needs `fieldManager`; creates
  when absent; merged like a merge patch);
- deletion: with finalizers, or a Pod (graceful), the object first gets
  `deletionTimestamp` (a MODIFIED event), and goes (DELETED) once its
  finalizers are gone (a Pod: at once, unless `hold_pods`); a Namespace takes
  its objects with it; dependents (ownerReferences) are garbage-collected
  (background propagation; `Orphan` drops the reference instead);
- a CustomResourceDefinition, once created, serves its kind; deleted, takes
  its objects with it.

Errors are `ApiStatus(code, reason, message)`, which the HTTP side answers
as a `kind: Status` body.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import uuid
from dataclasses import dataclass

from support.kube_resources import BUILTIN, MESH_CRDS, REVIEWS, ApiStatus, ResourceType, from_crd
from support.kube_rules import field_matcher, json_patch, label_matcher, merge_patch, strategic_merge_patch

Key = tuple[str, str, str, str]   # (group, plural, namespace, name)
CRD_GROUP = "apiextensions.k8s.io"


@dataclass(frozen=True)
class Change:
    rv: int
    type: str                  # ADDED, MODIFIED, DELETED
    key: Key
    object: dict
    before: dict | None        # the object before (selectors: an object may enter or leave a watch)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the store -------------------------------------------------------------------------------------------

def _spec_of(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Store:
    """Objects and history, under one lock; `changed` is notified on every change (watches wait on it)."""

    def __init__(self, served: dict[str, set[str]] | None = None) -> None:
        self.types: dict[tuple[str, str], ResourceType] = {(t.group, t.plural): t for t in BUILTIN + MESH_CRDS}
        crd_groups = {t.group for t in MESH_CRDS}
        if served is None:
            served = {}
            for t in MESH_CRDS:       # a group serves every version any of its kinds is served in
                served.setdefault(t.group, set()).update(t.versions)
        # group -> the versions served. Built-in groups are always served; CRD groups as given.
        self.served: dict[str, set[str]] = {g: set(v) for g, v in served.items()}
        for t in BUILTIN:
            self.served.setdefault(t.group, set()).update(t.versions)
        self._crd_groups = crd_groups
        self.objects: dict[Key, dict] = {}
        self.history: list[Change] = []
        self.rv = 100
        self.oldest = 0
        self.hold_pods = False      # True: a deleted Pod keeps its deletionTimestamp until finish_deletion
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)

    # -- types ------------------------------------------------------------------------------------------

    def type_of(self, group: str, plural: str, version: str | None = None) -> ResourceType:
        rtype = self.types.get((group, plural))
        if rtype is None or (version is not None and version not in self.served.get(group, set())) or (
                version is not None and version not in rtype.versions):
            where = f"{group}/{version}" if group else version
            raise ApiStatus(404, "NotFound", f"the server could not find the requested resource ({where} {plural})")
        return rtype

    def type_for(self, kind: str, api_version: str | None = None) -> ResourceType:
        group = api_version.rpartition("/")[0] if api_version else None
        for rtype in self.types.values():
            if rtype.kind == kind and (group is None or rtype.group == group):
                return rtype
        raise KeyError(f"no resource type of kind {kind!r} ({api_version or 'any group'}); "
                       "register it (store.types) or create its CustomResourceDefinition")

    def namespaced_pairs(self) -> set[tuple[str, str]]:
        return {k for k, t in self.types.items() if t.namespaced}

    # -- reads ------------------------------------------------------------------------------------------

    def key(self, rtype: ResourceType, namespace: str | None, name: str) -> Key:
        return (rtype.group, rtype.plural, (namespace or "") if rtype.namespaced else "", name)

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        with self.lock:
            obj = self.objects.get(self.key(rtype, namespace, name))
            if obj is None:
                raise ApiStatus(404, "NotFound", f'{rtype.plural}{"." + rtype.group if rtype.group else ""} '
                                                 f'"{name}" not found')
            return copy.deepcopy(obj)

    def list(self, rtype: ResourceType, namespace: str | None, labels: str | None = None,
             fields: str | None = None) -> tuple[list[dict], int]:
        wanted = self.matcher(rtype, namespace, labels, fields)
        with self.lock:
            items = [copy.deepcopy(o) for k, o in sorted(self.objects.items())
                     if k[:2] == (rtype.group, rtype.plural) and wanted(o)]
            return items, self.rv

    def matcher(self, rtype: ResourceType, namespace: str | None, labels: str | None, fields: str | None):
        by_labels, by_fields = label_matcher(labels), field_matcher(fields, rtype.kind)

        def wanted(obj: dict) -> bool:
            meta = obj.get("metadata") or {}
            return ((not namespace or meta.get("namespace") == namespace)
                    and by_labels(meta.get("labels")) and by_fields(obj))
        return wanted

    # -- writes -----------------------------------------------------------------------------------------

    def _record(self, type_: str, key: Key, obj: dict | None, before: dict | None) -> dict:
        """Store (or drop, for DELETED) under a new resourceVersion, and log the change."""
        self.rv += 1
        if type_ == "DELETED":
            obj = copy.deepcopy(before)
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append(Change(self.rv, type_, key, copy.deepcopy(obj), copy.deepcopy(before)))
        self.changed.notify_all()
        return copy.deepcopy(obj)

    def create(self, rtype: ResourceType, namespace: str | None, body: dict) -> dict:
        if rtype.plural in REVIEWS:
            raise ApiStatus(405, "MethodNotAllowed", f"{rtype.plural} are answered, not stored")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            if namespace and meta.get("namespace") not in (None, "", namespace):
                raise ApiStatus(400, "BadRequest", "the namespace of the provided object does not match "
                                                   "the namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiStatus(422, "Invalid", f"{rtype.kind}: metadata.name: Required value: name or "
                                                "generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        with self.lock:
            key = self.key(rtype, meta.get("namespace"), meta["name"])
            if key in self.objects:
                raise ApiStatus(409, "AlreadyExists", f'{rtype.plural} "{meta["name"]}" already exists')
            if rtype.plural == "customresourcedefinitions":
                self._install_crd(obj)
            obj["apiVersion"], obj["kind"] = rtype.api_version(), rtype.kind
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            for field in ("resourceVersion", "deletionTimestamp"):
                meta.pop(field, None)
            return self._record("ADDED", key, obj, None)

    def replace(self, rtype: ResourceType, namespace: str | None, name: str, body: dict,
                subresource: str | None = None) -> dict:
        with self.lock:
            old = self.get(rtype, namespace, name)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise ApiStatus(409, "Conflict", f'Operation cannot be fulfilled on {rtype.plural} "{name}": the '
                                                 "object has been modified; please apply your changes to the "
                                                 "latest version and try again")
            return self._update(rtype, old, copy.deepcopy(body), subresource)

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, body, content_type: str,
              subresource: str | None = None, field_manager: str | None = None) -> dict:
        content_type = content_type.split(";")[0].strip()
        custom = rtype.group in self._crd_groups or rtype.group not in {t.group for t in BUILTIN}
        if content_type == "application/strategic-merge-patch+json" and custom:
            raise ApiStatus(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                            "accepted media types include: application/json-patch+json, "
                            "application/merge-patch+json, application/apply-patch+yaml")
        with self.lock:
            if content_type == "application/apply-patch+yaml":
                if not field_manager:
                    raise ApiStatus(400, "BadRequest", "PATCH with apply needs a fieldManager query parameter")
                try:
                    old = self.get(rtype, namespace, name)
                except ApiStatus:
                    if subresource:
                        raise
                    return self.create(rtype, namespace, {**body, "metadata": {
                        **(body.get("metadata") or {}), "name": name}})
                return self._update(rtype, old, merge_patch(old, body), subresource, check_version=body)
            old = self.get(rtype, namespace, name)
            if content_type == "application/json-patch+json":
                new = json_patch(old, body)
            elif content_type == "application/merge-patch+json":
                new = merge_patch(old, body)
            elif content_type == "application/strategic-merge-patch+json":
                new = strategic_merge_patch(old, body)
            else:
                raise ApiStatus(415, "UnsupportedMediaType", f"unknown patch type {content_type!r}")
            return self._update(rtype, old, new, subresource, check_version=body if isinstance(body, dict) else None)

    def _update(self, rtype: ResourceType, old: dict, new: dict, subresource: str | None,
                check_version: dict | None = None) -> dict:
        wanted = ((check_version or {}).get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise ApiStatus(409, "Conflict", f'the object {old["metadata"]["name"]} has been modified')
        if subresource == "status":
            if not rtype.status:
                raise ApiStatus(404, "NotFound", f"{rtype.plural} has no status subresource")
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status")
            if merged["status"] is None:
                merged.pop("status")
            new = merged
        elif subresource:
            raise ApiStatus(404, "NotFound", f"no subresource {subresource!r} on {rtype.plural}")
        elif rtype.status:
            new = {**new, "status": old["status"]} if "status" in old else {k: v for k, v in new.items()
                                                                              if k != "status"}
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if _spec_of(new) != _spec_of(old):
            meta["generation"] = int(old["metadata"].get("generation") or 1) + 1
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        key = self.key(rtype, meta.get("namespace"), meta["name"])
        if new == old:
            return copy.deepcopy(old)   # a no-op write: no new version, no event (as the real server)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._record("MODIFIED", key, new, old)
            return self._remove(key)
        return self._record("MODIFIED", key, new, old)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, *, grace: int | None = None,
               propagation: str = "Background") -> tuple[dict, bool]:
        """(the object, gone now). Graceful: a Pod or an object with finalizers first gets deletionTimestamp."""
        with self.lock:
            old = self.get(rtype, namespace, name)
            key = self.key(rtype, namespace, name)
            if propagation == "Orphan":
                self._orphan(old["metadata"]["uid"])
            meta = old["metadata"]
            graceful = bool(meta.get("finalizers")) or rtype.kind == "Namespace" or (
                rtype.kind == "Pod" and grace != 0)
            if meta.get("deletionTimestamp"):
                return old, False
            if not graceful:
                return self._remove(key), True
            marked = copy.deepcopy(old)
            marked["metadata"]["deletionTimestamp"] = now()
            if rtype.kind == "Pod":
                marked["metadata"]["deletionGracePeriodSeconds"] = 30 if grace is None else grace
            if rtype.kind == "Namespace":
                marked.setdefault("status", {})["phase"] = "Terminating"
            shown = self._record("MODIFIED", key, marked, old)
            if rtype.kind == "Namespace":
                for other in [k for k in self.objects if k[2] == name and self.types[k[:2]].namespaced]:
                    self._remove(other)
            if meta.get("finalizers") or (rtype.kind == "Pod" and self.hold_pods):
                return shown, False
            self._remove(key)
            return shown, True

    def finish_deletion(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        """What the kubelet does for a Pod being deleted gracefully: it goes."""
        with self.lock:
            return self._remove(self.key(rtype, namespace, name))

    def _remove(self, key: Key) -> dict:
        old = self.objects[key]
        gone = self._record("DELETED", key, None, old)
        if key[:2] == (CRD_GROUP, "customresourcedefinitions"):
            rtype = from_crd(old)
            for other in [k for k in self.objects if k[:2] == (rtype.group, rtype.plural)]:
                self._remove(other)
            self.served[rtype.group] = self.served.get(rtype.group, set()) - set(rtype.versions)
        uid = old["metadata"].get("uid")
        for dependent, obj in list(self.objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if dependent in self.objects and any(o.get("uid") == uid for o in owners):
                rtype = self.types[dependent[:2]]
                self.delete(rtype, dependent[2] or None, dependent[3])
        return gone

    def _orphan(self, uid: str) -> None:
        for key, obj in list(self.objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [o for o in owners if o.get("uid") != uid]
                self._record("MODIFIED", key, new, obj)

    def _install_crd(self, crd: dict) -> None:
        try:
            rtype = from_crd(crd)
        except ValueError as e:
            raise ApiStatus(422, "Invalid", str(e)) from None
        self.types[(rtype.group, rtype.plural)] = rtype
        self._crd_groups.add(rtype.group)
        self.served.setdefault(rtype.group, set()).update(rtype.versions)
        crd["status"] = {"conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}],
                         "acceptedNames": (crd.get("spec") or {}).get("names") or {}}

    def compact(self) -> None:
        """Forget the history: a watch from any version before now gets 410 Gone."""
        with self.lock:
            self.history.clear()
            self.oldest = self.rv
