"""Translation of Kubernetes-shaped objects (every dialect) into shoal's model.

Entry points:
- `Translator`: holds the current objects; `apply_event(event)` then
  `flush()` -> `Update(delta, findings)`; `snapshot()` for everything.
- `validate(obj) -> list[str]`: the errors of one object, each
  `Kind ns/name: field.path: reason` (what `shoal local apply` refuses).
- `parse(obj)`: the dialect's value and `Findings(errors, warnings)`.

One module per dialect: `core` (Namespace, Pod, Service), `gateway_api`
(HTTPRoute, waypoint Gateway), `istio_routing` (VirtualService,
DestinationRule), `istio_security` (AuthorizationPolicy,
PeerAuthentication), `smi` (TrafficSplit). The precedence rule between
dialects is documented in `precedence`.
"""

from control_plane.translate.common import Findings, ObjectKey, parse_duration, resolve_host
from control_plane.translate.dispatch import ALL_KINDS, CORE_KINDS, MESH_KINDS, is_mesh_object, parse, validate
from control_plane.translate.translator import Translator, Update

__all__ = ["ALL_KINDS", "CORE_KINDS", "Findings", "MESH_KINDS", "ObjectKey", "Translator", "Update",
           "is_mesh_object", "parse", "parse_duration", "resolve_host", "validate"]
