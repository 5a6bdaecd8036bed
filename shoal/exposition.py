"""The Prometheus text every shoal process serves on /metrics.

prometheus_client adds a `<name>_created` series (the time the series was
made) beside every counter and histogram. Istio's proxies export none, no
dashboard reads them, and they double the output, so they are turned off
here, once for the process, before anything is rendered.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest

disable_created_metrics()


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (0.0.4), without `_created` series."""
    return generate_latest(registry)
