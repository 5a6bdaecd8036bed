"""`shoal local apply` merges as `kubectl apply` does: three ways, with the last-applied configuration.

The three are the configuration applied last time (kept on the object, in
the annotation `kubectl.kubernetes.io/last-applied-configuration`), the
manifest applied now, and the live object. The result is the live object with:
- every field of the manifest set to the manifest's value (mappings merged
  key by key, lists and scalars replaced whole; a null removes the field);
- every field that the last-applied configuration had and the manifest no
  longer has removed;
- everything else kept: labels and annotations added with `shoal local
  label|annotate`, fields that controllers and the store set (status, a
  Service's clusterIP, a Pod's nodeName).

So re-applying an unchanged manifest changes nothing, and a label that a user
added by hand (a namespace's `shoal.io/dataplane-mode: ambient`) survives it.
An object that has no last-applied configuration (made by `up`, a controller,
or an older shoal) is treated as if nothing had been applied before: nothing
is removed from it.

Lists are replaced whole, as a JSON merge patch does (kubectl merges some
lists of built-in kinds, containers by name for instance, by their patch
strategy; the local store sets nothing inside lists, so replacing them loses
nothing).
"""

from __future__ import annotations

import copy
import json

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def last_applied(obj: dict | None) -> dict:
    """The configuration last applied to `obj`, or {} if it has none (or an unreadable one)."""
    text = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def configuration(manifest: dict) -> dict:
    """What is recorded as applied: the manifest, without its own last-applied annotation."""
    config = copy.deepcopy(manifest)
    annotations = (config.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(LAST_APPLIED, None)
        if not annotations:
            del config["metadata"]["annotations"]
    return config


def three_way(live: dict | None, manifest: dict) -> dict:
    """The object to store when `manifest` is applied over `live` (None when it does not exist yet)."""
    config = configuration(manifest)
    merged = _merge(last_applied(live), config, copy.deepcopy(live)) if live is not None else copy.deepcopy(config)
    meta = merged.setdefault("metadata", {})
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        annotations = meta["annotations"] = {}
    annotations[LAST_APPLIED] = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return merged


def _merge(original: dict, modified: dict, current: dict) -> dict:
    for key in original:
        if key not in modified:
            current.pop(key, None)  # removed from the manifest since the last apply
    for key, value in modified.items():
        if value is None:
            current.pop(key, None)
        elif isinstance(value, dict) and isinstance(current.get(key), dict):
            before = original.get(key)
            current[key] = _merge(before if isinstance(before, dict) else {}, value, current[key])
        else:
            current[key] = copy.deepcopy(value)
    return current
