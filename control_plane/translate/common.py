"""What every dialect shares: object references, findings, field checks, hosts, durations.

A dialect parses an object with a `Checker`, which records errors (the object
is invalid: it is refused by `shoal local apply`, and the translator skips it)
and warnings (the object is valid, but shoal ignores or narrows part of it).
Every message names the object (`Kind ns/name`), the field path and the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

CLUSTER_DOMAIN = "cluster.local"
ROOT_NAMESPACES = ("shoal-system", "istio-system")

ObjectKey = tuple[str, str, str]  # (kind, namespace, name); cluster-scoped kinds use namespace ""


def metadata_of(obj: dict) -> dict:
    """obj.metadata, or {} when it is missing or not a mapping (an error `parse` reports)."""
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def key_of(obj: dict) -> ObjectKey:
    meta = metadata_of(obj)
    return (str(obj.get("kind") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def ref_of(obj: dict) -> str:
    """`Kind ns/name` (or `Kind name` for cluster-scoped objects), for messages."""
    kind, namespace, name = key_of(obj)
    name = name or "<no name>"
    return f"{kind or '<no kind>'} {namespace}/{name}" if namespace else f"{kind or '<no kind>'} {name}"


def created_of(obj: dict) -> str:
    return str(metadata_of(obj).get("creationTimestamp") or "")


@dataclass(frozen=True)
class Findings:
    """The outcome of checking one object: errors refuse it, warnings do not."""
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.errors or self.warnings)

    def __add__(self, other: "Findings") -> "Findings":
        return Findings(self.errors + other.errors, self.warnings + other.warnings)


@dataclass
class Checker:
    """Typed access to a k8s-shaped dict that records what is wrong, by field path."""
    ref: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    root_namespaces: tuple[str, ...] = ROOT_NAMESPACES   # where a policy without selector is mesh-wide

    @classmethod
    def for_object(cls, obj: dict, root_namespaces: tuple[str, ...] = ROOT_NAMESPACES) -> "Checker":
        return cls(ref_of(obj), root_namespaces=tuple(root_namespaces))

    def error(self, path: str, reason: str) -> None:
        self.errors.append(f"{self.ref}: {path}: {reason}")

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append(f"{self.ref}: {path}: {reason}")

    def findings(self) -> Findings:
        return Findings(tuple(self.errors), tuple(self.warnings))

    # -- typed getters: wrong types become errors and a harmless default -------

    def mapping(self, value: Any, path: str, *, required: bool = False) -> dict:
        if value is None:
            if required:
                self.error(path, "is required")
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {_type_name(value)}")
            return {}
        return value

    def sequence(self, value: Any, path: str, *, required: bool = False) -> list:
        if value is None:
            if required:
                self.error(path, "is required")
            return []
        if not isinstance(value, list):
            self.error(path, f"must be a list, not {_type_name(value)}")
            return []
        return value

    def string(self, value: Any, path: str, *, required: bool = False) -> str | None:
        if value is None or value == "":
            if required:
                self.error(path, "is required")
            return None
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {_type_name(value)}")
            return None
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        out = []
        for i, item in enumerate(self.sequence(value, path)):
            s = self.string(item, f"{path}[{i}]", required=True)
            if s is not None:
                out.append(s)
        return tuple(out)

    def integer(self, value: Any, path: str, *, required: bool = False,
                minimum: int | None = None, maximum: int | None = None) -> int | None:
        if value is None:
            if required:
                self.error(path, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                self.error(path, f"must be an integer, not {value!r}")
                return None
        if minimum is not None and value < minimum:
            self.error(path, f"must be at least {minimum}, not {value}")
            return None
        if maximum is not None and value > maximum:
            self.error(path, f"must be at most {maximum}, not {value}")
            return None
        return value

    def number(self, value: Any, path: str, *, minimum: float | None = None,
               maximum: float | None = None) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(path, f"must be a number, not {value!r}")
            return None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.error(path, f"must be between {minimum} and {maximum}, not {value}")
            return None
        return float(value)

    def port(self, value: Any, path: str, *, required: bool = False) -> int | None:
        return self.integer(value, path, required=required, minimum=1, maximum=65535)

    def duration(self, value: Any, path: str) -> float | None:
        """Seconds from "10s", "1.5s", "250ms", "1m30s", "1h" (Istio and Gateway API forms)."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(path, f"must be a duration string such as \"1.5s\" or \"250ms\", not {value!r}")
            return None
        seconds = parse_duration(value)
        if seconds is None:
            self.error(path, f"bad duration {value!r}: use a number with a unit h, m, s or ms (\"1.5s\", \"250ms\", \"1m30s\")")
        return seconds

    def regex(self, value: str, path: str) -> str | None:
        try:
            re.compile(value)
        except re.error as exc:
            self.error(path, f"bad regular expression {value!r}: {exc}")
            return None
        return value

    def fields(self, value: dict, path: str, known: Iterable[str], *,
               ignored: dict[str, str] | None = None) -> None:
        """Unknown keys are errors (as the API server's strict field validation says);
        keys in `ignored` are valid but not acted on: a warning with the reason."""
        known = set(known)
        ignored = ignored or {}
        for k in value:
            if k in ignored:
                self.warn(f"{path}.{k}" if path else k, ignored[k])
            elif k not in known:
                self.error(f"{path}.{k}" if path else k,
                           f"unknown field; expected one of: {', '.join(sorted(known | set(ignored)))}")


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Go-style durations (a sequence of number+unit); None when malformed or negative."""
    text = text.strip()
    if not text:
        return None
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total


def resolve_host(host: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """A service host as users write it, made a fully qualified name.

    `reviews` (in the object's namespace), `reviews.default`, `reviews.default.svc`
    and `reviews.default.svc.cluster.local` all name the same Service. A name with
    more dots that is not under `svc.<cluster domain>` is kept as written (an
    external host).
    """
    host = host.strip().rstrip(".").lower()
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.{cluster_domain}"
    if len(parts) == 2:
        return f"{host}.svc.{cluster_domain}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.{cluster_domain}"
    return host


def host_namespace(fqdn: str, cluster_domain: str = CLUSTER_DOMAIN) -> str | None:
    """The namespace of `name.ns.svc.<domain>`, or None for other hosts."""
    suffix = f".svc.{cluster_domain}"
    if not fqdn.endswith(suffix):
        return None
    parts = fqdn[: -len(suffix)].split(".")
    return parts[1] if len(parts) == 2 else None


def percentage(checker: Checker, value: Any, path: str) -> float | None:
    """An Istio `Percent` ({value: 0..100}); an error otherwise."""
    if value is None:
        return None
    mapping = checker.mapping(value, path)
    checker.fields(mapping, path, ("value",))
    if "value" not in mapping:
        return 0.0 if isinstance(value, dict) else None
    return checker.number(mapping["value"], f"{path}.value", minimum=0, maximum=100)
