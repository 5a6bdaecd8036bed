"""SMI `TrafficSplit` (split.smi-spec.io v1alpha1 to v1alpha4).

Requests for the root `spec.service` are split among `spec.backends` by
weight, on the port they came on. v1alpha1 weights are quantities ("500m",
"1", 80); later versions take integers. `matches` (v1alpha3+, references to
HTTPRouteGroups) are not supported: a split with matches is applied to every
request, with a warning.
"""

from __future__ import annotations

import re

from shoal.model import ANY_PORT, Destination, Route

from control_plane.translate.candidates import Dialect, RouteCandidate
from control_plane.translate.common import Checker, created_of, ref_of, resolve_host

GROUP = "split.smi-spec.io"
VERSIONS = ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1")  # newest first: the order of preference
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|k|M|G)?$")
_QUANTITY_SCALE = {None: 1000, "m": 1, "k": 1000_000, "M": 1000_000_000, "G": 1000_000_000_000}


def _weight(c: Checker, value, path: str, version: str) -> int | None:
    """Integer weights; v1alpha1 quantities become thousandths ("500m" -> 500, "1" -> 1000)."""
    if version != "v1alpha1":
        return c.integer(value, path, required=True, minimum=0)
    if isinstance(value, bool) or value is None:
        c.error(path, f"is required and must be a quantity such as 500m or 1, not {value!r}")
        return None
    m = _QUANTITY.match(str(value))
    if not m:
        c.error(path, f"bad quantity {value!r}: use an integer or milli-units such as 500m")
        return None
    return int(round(float(m.group(1)) * _QUANTITY_SCALE[m.group(2)]))


def traffic_split(obj: dict, c: Checker) -> list[RouteCandidate]:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    version = str(obj.get("apiVersion", "")).split("/")[-1]
    spec = c.mapping(obj.get("spec"), "spec", required=True)
    c.fields(spec, "spec", ("service", "backends", "matches"))
    if spec.get("matches"):
        c.warn("spec.matches", "HTTPRouteGroup matches are not supported by shoal; the split applies to every request")
    service = c.string(spec.get("service"), "spec.service", required=True)
    backends = []
    items = c.sequence(spec.get("backends"), "spec.backends", required=True)
    if "backends" in spec and not items:
        c.error("spec.backends", "needs at least one backend")
    for i, item in enumerate(items):
        path = f"spec.backends[{i}]"
        b = c.mapping(item, path)
        c.fields(b, path, ("service", "weight"))
        name = c.string(b.get("service"), f"{path}.service", required=True)
        weight = _weight(c, b.get("weight"), f"{path}.weight", version)
        if name and weight is not None:
            backends.append(Destination(host=resolve_host(name, namespace), weight=weight))
    if backends and sum(d.weight for d in backends) == 0:
        c.error("spec.backends", "the weights add up to 0: no backend would get any request")
    if service is None:
        return []
    return [RouteCandidate(resolve_host(service, namespace), ANY_PORT, (Route(name="split", destinations=tuple(backends)),),
                           namespace, ref_of(obj), Dialect.TRAFFICSPLIT, created_of(obj), "spec.service")]
