"""Which metric series belong to workloads that are gone: shared by the ztunnel's and the waypoint's telemetry.

Istio's labels name both ends of a request or connection by
(`<side>_workload_namespace`, `<side>_workload`). A series whose source or
destination workload is no longer known (deleted pod, scaled-down
Deployment) would otherwise stay in `/metrics` for ever: one per pod that
ever talked. "unknown" (a peer outside the mesh) is never pruned.
"""

from __future__ import annotations

from typing import Iterable, Sequence


def gone_series(keys: Iterable[tuple], label_names: Sequence[str], live: set[tuple[str, str]],
                in_use: set[tuple] = frozenset()) -> list[tuple]:
    """The label-value tuples (ordered as `label_names`) whose source or destination (namespace, workload)
    is not in `live`, except those in `in_use` (still counted on by something open)."""
    ends = [(label_names.index(f"{side}_workload_namespace"), label_names.index(f"{side}_workload"))
            for side in ("source", "destination") if f"{side}_workload" in label_names]
    return [key for key in keys if key not in in_use
            and any(key[w] != "unknown" and (key[ns], key[w]) not in live for ns, w in ends)]
