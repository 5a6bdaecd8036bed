"""The API server's rules that need no state: selectors and patches (for support.kube_store).

- `label_matcher(selector)`: =, ==, !=, in, notin, `key`, `!key`;
- `field_matcher(selector, kind)`: = and != on metadata.name, metadata.namespace and the fields the
  real server allows for that kind (`FIELDS`); any other field is a 400, as there;
- `merge_patch` (RFC 7386), `json_patch` (RFC 6902), `strategic_merge_patch` (a merge patch whose
  lists of objects that all carry `name` are merged by name, the patchMergeKey of containers,
  volumes, env and ports; `$patch: delete` removes an item).
Malformed input is an `ApiStatus` (400 or 422), as the server answers it.
"""

from __future__ import annotations

import copy
import re

from support.kube_resources import ApiStatus


# -- selectors ------------------------------------------------------------------------------------------

_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_.\-/]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.\-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [t for t in terms + [current] if t.strip()]


def label_matcher(selector: str | None):
    """A predicate on a labels dict, from a label selector (=, ==, !=, in, notin, key, !key)."""
    tests = []
    for term in _split_terms(selector or ""):
        match = _TERM.match(term)
        if not match or (match.group(1) and (match.group(3) or match.group(5))):
            raise ApiStatus(400, "BadRequest", f"unable to parse requirement: {term!r}")
        negate, key, op, value, set_op, values = match.groups()
        if set_op:
            members = {v.strip() for v in values.split(",")}
            tests.append(lambda labels, k=key, m=members, inside=set_op == "in":
                         (k in labels and labels[k] in m) if inside else (labels.get(k) not in m))
        elif op:
            tests.append(lambda labels, k=key, v=value, equal=op != "!=": (labels.get(k) == v) == equal)
        else:
            tests.append(lambda labels, k=key, absent=bool(negate): (k in labels) != absent)
    return lambda labels: all(test(labels or {}) for test in tests)


# Fields each kind may be selected by, besides metadata.name and metadata.namespace (as the real server).
FIELDS = {
    "Pod": {"spec.nodeName", "spec.serviceAccountName", "status.phase", "status.podIP", "spec.restartPolicy",
            "spec.schedulerName", "status.nominatedNodeName", "spec.hostNetwork"},
    "Event": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
              "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
              "reason", "reportingComponent", "source", "type"},
    "Secret": {"type"},
    "Node": {"spec.unschedulable"},
    "Namespace": {"status.phase"},
}


def _field(obj: dict, path: str) -> str:
    value = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def field_matcher(selector: str | None, kind: str):
    tests = []
    for term in _split_terms(selector or ""):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise ApiStatus(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = match.groups()
        if path not in ("metadata.name", "metadata.namespace") and path not in FIELDS.get(kind, set()):
            raise ApiStatus(400, "BadRequest", f'field label not supported: "{path}" (kind {kind})')
        tests.append(lambda obj, p=path, v=value, equal=op != "!=": (_field(obj, p) == v) == equal)
    return lambda obj: all(test(obj) for test in tests)


# -- patches ---------------------------------------------------------------------------------------------

def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target, patch):
    """Merge patch, except lists of objects that all carry `name` are merged item by item by name."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        old = result.get(key)
        if value is None:
            result.pop(key, None)
        elif (isinstance(value, list) and isinstance(old, list) and value
              and all(isinstance(i, dict) and "name" in i for i in value + old)):
            merged = {i["name"]: i for i in old}
            for item in value:
                if item.get("$patch") == "delete":
                    merged.pop(item["name"], None)
                else:
                    merged[item["name"]] = strategic_merge_patch(merged.get(item["name"]), item)
            result[key] = list(merged.values())
        else:
            result[key] = strategic_merge_patch(old, value)
    return result


def _pointer(path: str) -> list:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiStatus(422, "Invalid", f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc, tokens: list):
    for token in tokens[:-1]:
        doc = doc[int(token)] if isinstance(doc, list) else doc[token]
    return doc


def json_patch(doc, operations):
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise ApiStatus(400, "BadRequest", "a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    try:
        for op in operations:
            tokens = _pointer(op["path"])
            kind = op["op"]
            if kind in ("move", "copy"):
                source = _pointer(op["from"])
                value = copy.deepcopy(_parent(doc, source)[source[-1] if isinstance(_parent(doc, source), dict)
                                                           else int(source[-1])])
                if kind == "move":
                    json_patch_remove(doc, source)
                doc = json_patch_add(doc, tokens, value)
            elif kind == "add":
                doc = json_patch_add(doc, tokens, copy.deepcopy(op["value"]))
            elif kind == "remove":
                json_patch_remove(doc, tokens)
            elif kind == "replace":
                json_patch_remove(doc, tokens)
                doc = json_patch_add(doc, tokens, copy.deepcopy(op["value"]))
            elif kind == "test":
                parent = _parent(doc, tokens)
                value = parent[int(tokens[-1])] if isinstance(parent, list) else parent[tokens[-1]]
                if value != op["value"]:
                    raise ApiStatus(422, "Invalid", f"test failed at {op['path']}")
            else:
                raise ApiStatus(400, "BadRequest", f"unknown JSON patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ApiStatus(422, "Invalid", f"the JSON patch does not apply: {e!r}") from None
    return doc


def json_patch_add(doc, tokens, value):
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    if isinstance(parent, list):
        parent.insert(len(parent) if tokens[-1] == "-" else int(tokens[-1]), value)
    else:
        parent[tokens[-1]] = value
    return doc


def json_patch_remove(doc, tokens):
    parent = _parent(doc, tokens)
    if isinstance(parent, list):
        del parent[int(tokens[-1])]
    else:
        del parent[tokens[-1]]
