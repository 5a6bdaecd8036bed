"""The analysis where the operator looks: `apply`'s output and the mesh objects' `status`.

`refresh(store)` analyses every object of a local cluster, writes each mesh
object's status (Accepted, ResolvedRefs, validationMessages) where it
changed, and returns the findings. `shoal local apply`, `delete`, `label`
and `annotate` call it after they wrote, so the status follows every change
made through the CLI.
"""

from __future__ import annotations

from collections import defaultdict

from shoal.store import CLUSTER_SCOPED, NotFound, Store

Key = tuple[str, str, str]


def key_of(obj: dict) -> Key:
    """(kind, namespace, name) as the analysis names objects: namespace "" when cluster-scoped."""
    meta = obj.get("metadata") or {}
    kind = str(obj.get("kind"))
    return (kind, "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or "default"), str(meta.get("name")))


def refresh(store: Store) -> list:
    from control_plane.analysis import analyze, status_of
    from control_plane.translate import is_mesh_object

    objects = [obj for kind in store.kinds() for obj in store.list(kind)[0]]
    findings = analyze(objects)
    by_key = defaultdict(list)
    for finding in findings:
        by_key[finding.key].append(finding)
    for obj in objects:
        if not is_mesh_object(obj):
            continue
        kind, namespace, name = key_of(obj)
        status = status_of(obj, by_key.get((kind, namespace, name), ()))
        if status != obj.get("status"):
            try:
                store.update_status(kind, namespace or None, name, status)
            except NotFound:
                continue  # deleted since it was listed: nothing to say about it
    return findings


def report(findings: list, keys: list[Key], stream) -> None:
    """kubectl's way with warnings: `Warning: ...` on stderr, for the objects just written."""
    wanted = set(keys)
    for finding in findings:
        if finding.key in wanted:
            print(f"{finding.line()}", file=stream)
