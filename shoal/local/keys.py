"""Label and annotation keys and values, checked where a user writes them (`apply`, `label`, `annotate`).

Kubernetes' rules, which its API server enforces and the local store must too:
- a key is a name of at most 63 characters (letters, digits, '-', '_' and
  '.', starting and ending with a letter or digit), optionally after a
  prefix, a DNS subdomain of at most 253 characters, and '/';
- a label value is empty or such a name (at most 63 characters);
- an annotation value is any string.

The mesh's own keys (shoal.contracts) take only their values. A typo must not
pass silently: `shoal.io/dataplane-mode=ambiant` on a namespace would take
it out of the mesh, past its policies, without a word.
"""

from __future__ import annotations

import re
from typing import Mapping

from shoal.contracts import (
    AMBIENT, DATAPLANE_MODE_KEYS, NONE, SELECT_HOST_NETWORK, USE_WAYPOINT_KEYS, USE_WAYPOINT_NAMESPACE_KEYS,
    WAYPOINT_FOR_KEYS,
)

NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
PREFIX_MAX = 253

# key -> (what its values mean, its values: a tuple of them, or a pattern that `none` joins)
MESH_KEYS: dict[str, tuple[str, tuple[str, ...] | re.Pattern]] = {}
for _key in DATAPLANE_MODE_KEYS:
    MESH_KEYS[_key] = (f"{AMBIENT} (enroll) or {NONE} (opt out)", (AMBIENT, NONE))
for _key in WAYPOINT_FOR_KEYS:
    MESH_KEYS[_key] = ("service, workload, all or none", ("service", "workload", "all", NONE))
for _key in USE_WAYPOINT_KEYS:
    MESH_KEYS[_key] = (f"the name of a waypoint Gateway, or {NONE}", DNS_LABEL)
for _key in USE_WAYPOINT_NAMESPACE_KEYS:
    MESH_KEYS[_key] = ("the name of the waypoint's namespace", DNS_LABEL)
MESH_KEYS[SELECT_HOST_NETWORK] = ("true or false", ("true", "false"))


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid label or annotation key, or None."""
    if not isinstance(key, str):
        return f"{key!r} must be a string (quote it)"
    if not key:
        return "a key must not be empty"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > PREFIX_MAX or not DNS_SUBDOMAIN.fullmatch(prefix)):
        return (f"{key!r} is not a valid key: its prefix {prefix!r} must be a lower-case DNS subdomain "
                f"of at most {PREFIX_MAX} characters (such as example.com)")
    if not NAME.fullmatch(name):
        return (f"{key!r} is not a valid key: {name!r} must be 1 to 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (optionally after a prefix and '/', such as "
                "example.com/my-key)")
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if not isinstance(value, str):
        return f"{value!r} must be a string (quote numbers and booleans)"
    if value and not NAME.fullmatch(value):
        return (f"{value!r} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def mesh_value_problem(key: str, value: str) -> str | None:
    """Why `value` is not one of the values of the mesh key `key`, or None (also for other keys)."""
    if key not in MESH_KEYS:
        return None
    meaning, allowed = MESH_KEYS[key]
    ok = value in allowed if isinstance(allowed, tuple) else (
        isinstance(value, str) and (value == NONE or bool(allowed.fullmatch(value))))
    if ok:
        return None
    return f"{value!r} is not a value of {key}: use {meaning} (to remove the key: `{key}-`)"


def problems(field: str, values: Mapping[str, object] | None) -> list[tuple[str, str]]:
    """(key, reason) for every key of `values` (the labels or the annotations of an object) that
    Kubernetes or the mesh would refuse; `field` is "labels" or "annotations"."""
    found = []
    for key, value in (values or {}).items():
        reason = key_problem(key)
        if reason is None and field == "labels":
            reason = label_value_problem(value)
        if reason is None and not isinstance(value, str):
            reason = f"{value!r} must be a string (quote numbers and booleans)"
        if reason is None:
            reason = mesh_value_problem(key, value)
        if reason is not None:
            found.append((key, reason))
    return found
