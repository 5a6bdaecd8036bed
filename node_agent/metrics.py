"""The agent's metrics and readiness, on its own port (15022; 15020/15021 are the ztunnel's).

GET /metrics        Prometheus text format
GET /healthz/ready  200 once the redirect mode is loaded, the hand-off socket
                    listens and the first list of pods is reconciled; else 503
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shoal import log
from shoal.exposition import render

logger = log.get("node_agent.metrics")

ENROLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, mode: str) -> None:
        self.registry = CollectorRegistry()
        self.enrolled = Gauge("shoal_node_agent_enrolled_pods", "Pods redirected and acked by the ztunnel",
                              registry=self.registry)
        self.pending = Gauge("shoal_node_agent_pending_pods", "Pods that should be meshed but are not yet",
                             registry=self.registry)
        self.reconcile_errors = Counter("shoal_node_agent_reconcile_errors", "Failed steps of a reconcile",
                                        ["step"], registry=self.registry)
        self.enroll_seconds = Histogram("shoal_node_agent_enroll_seconds",
                                        "Time from a pod seen as wanted in the mesh to its redirection active",
                                        buckets=ENROLL_BUCKETS, registry=self.registry)
        self.unmeshable = Gauge("shoal_node_agent_unmeshable_pods",
                                "Running pods that should be meshed but cannot be (the log says why)",
                                registry=self.registry)
        self.ztunnel_connected = Gauge("shoal_node_agent_ztunnel_connected", "1 while a ztunnel is connected",
                                       registry=self.registry)
        self.mode = Gauge("shoal_node_agent_redirect_mode", "The redirect mode in use", ["mode"],
                          registry=self.registry)
        self.mode.labels(mode=mode).set(1)
        self.ready = False

    def render(self) -> bytes:
        return render(self.registry)  # without _created series, as every shoal process


async def serve(metrics: Metrics, host: str, port: int) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode(errors="replace") if request.count(b" ") >= 2 else "/"
            if path.startswith("/metrics"):
                status, body, kind = "200 OK", metrics.render(), CONTENT_TYPE_LATEST
            elif path.startswith("/healthz/ready"):
                status = "200 OK" if metrics.ready else "503 Service Unavailable"
                body, kind = (b"ready\n" if metrics.ready else b"not ready\n"), "text/plain"
            else:
                status, body, kind = "404 Not Found", b"try /metrics or /healthz/ready\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    logger.info("metrics and readiness listening", port=port)
    return server
