"""Traces through the waypoint (issue 14, item 3).

The pure half: reading W3C traceparent and B3, the sampling decision, the headers sent upstream. Then, in
process on loopback: a client that starts a trace, the waypoint, and a server that joins it all export
their spans over OTLP/HTTP to a small receiver built from opentelemetry-proto, and the parent-child links
are checked across the three.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest

from shoal.model import Endpoint, Protocol, Service, ServicePort
from waypoint.tracing import TraceContext, Tracer, incoming, otlp_url, outgoing, sampled

from support.net import free_port
from support.polling import eventually
from wp_harness import get as harness_get
from wp_mesh import Mesh, run
from wp_model import NS, workload

T, S = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize("headers, expected", [
    ([("traceparent", f"00-{T}-{S}-01")], TraceContext(int(T, 16), int(S, 16), True)),
    ([("TraceParent", f"00-{T}-{S}-00")], TraceContext(int(T, 16), int(S, 16), False)),
    ([("b3", f"{T}-{S}-1")], TraceContext(int(T, 16), int(S, 16), True)),
    ([("b3", f"{T[16:]}-{S}")], TraceContext(int(T[16:], 16), int(S, 16), None)),       # 64-bit trace id
    ([("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-sampled", "0")], TraceContext(int(T, 16), int(S, 16), False)),
    ([("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-flags", "1")], TraceContext(int(T, 16), int(S, 16), True)),
    ([("traceparent", f"00-{T}-{S}-01"), ("b3", f"{'1' * 32}-{'2' * 16}-0")], TraceContext(int(T, 16), int(S, 16), True)),
    ([("traceparent", f"00-{'0' * 32}-{S}-01")], None),            # an all-zero trace id is invalid
    ([("traceparent", f"01-{T}-{S}-01-extra")], None),
    ([("traceparent", "garbage"), ("b3", "0")], None),              # b3: 0 is a decision without a trace
    ([("x-b3-traceid", "xyz"), ("x-b3-spanid", S)], None),
    ([], None),
])
def test_incoming_trace_context(headers, expected):
    assert incoming(headers) == expected


def test_the_callers_decision_wins_else_the_sampling_percentage():
    assert sampled(TraceContext(1, 2, False), 100, lambda: 0.0) is False
    assert sampled(TraceContext(1, 2, True), 0, lambda: 0.99) is True
    assert sampled(TraceContext(1, 2, None), 10, lambda: 0.05) is True
    assert sampled(None, 10, lambda: 0.2) is False


def test_outgoing_headers_name_the_waypoints_span_in_both_formats_and_drop_the_old():
    headers = [("host", "reviews"), ("traceparent", f"00-{T}-{S}-01"), ("x-b3-spanid", S), ("tracestate", "a=1")]
    out = outgoing(headers, int(T, 16), 0xABC, int(S, 16), True)
    assert out == [("host", "reviews"), ("tracestate", "a=1"), ("traceparent", f"00-{T}-0000000000000abc-01"),
                   ("x-b3-traceid", T), ("x-b3-spanid", "0000000000000abc"), ("x-b3-sampled", "1"),
                   ("x-b3-parentspanid", S)]


def test_otlp_endpoint():
    assert otlp_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_url("http://collector:4318/custom/path") == "http://collector:4318/custom/path"
    with pytest.raises(ValueError, match="OTLP/HTTP URL"):
        otlp_url("collector:4318")


def test_a_waypoint_without_tracing_does_not_load_the_sdk():
    code = ("import sys, waypoint.main, waypoint.proxy, waypoint.config\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# -- in process, with a receiver ---------------------------------------------------------------------------

class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest; keeps every span."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        spans, lock = [], threading.Lock()
        self.spans, self._lock = spans, lock

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    service = next((a.value.string_value for a in resource.resource.attributes
                                    if a.key == "service.name"), "")
                    for scope in resource.scope_spans:
                        with lock:
                            spans.extend({"service": service, "name": s.name, "trace_id": s.trace_id.hex(),
                                          "span_id": s.span_id.hex(), "parent_span_id": s.parent_span_id.hex(),
                                          "attributes": {a.key: _value(a.value) for a in s.attributes},
                                          "events": [e.name for e in s.events]} for s in scope.spans)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of(self, service: str) -> list[dict]:
        with self._lock:
            return [s for s in self.spans if s["service"] == service]

    def close(self) -> None:
        self.server.shutdown()


def _value(v):
    return v.string_value or v.int_value or v.bool_value


def sdk_tracer(receiver: Receiver, service: str):
    """The client's and the server's own instrumentation: the SDK, exporting each span as it ends."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp_url(receiver.endpoint))))
    return provider.get_tracer(service)


class TracedServer:
    """A real HTTP server that joins the caller's trace (W3C traceparent) with a span of its own."""

    def __init__(self, host: str, receiver: Receiver) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        tracer, seen = sdk_tracer(receiver, "ratings"), []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen.append(headers)
                parent = TraceContextTextMapPropagator().extract(headers)
                with tracer.start_as_current_span("ratings GET", context=parent):
                    body = b"rated\n"
                    self.send_response(200)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = free_port(host)
        self.server = http.server.ThreadingHTTPServer((host, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


RATINGS_IP, RATINGS_VIP = "127.0.0.15", "198.18.16.20"


def ratings_mesh(server_port: int) -> Mesh:
    pod = workload("ratings-v1", RATINGS_IP, "v1", protocol=Protocol.TCP, app="ratings")
    service = Service(name="ratings", namespace=NS, hostname=f"ratings.{NS}.svc.cluster.local", vips=(RATINGS_VIP,),
                      ports=(ServicePort(9080, "http", app_protocol="http"),),
                      endpoints=(Endpoint(pod.uid, 9080, server_port),))
    return Mesh(pod, service, rand=lambda: 0.5)


def get(path: str, *headers: tuple[str, str]) -> bytes:
    return harness_get(path, host="ratings:9080", headers=headers)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_client_waypoint_and_server_spans_are_one_trace_parent_to_child(receiver):
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    server = TracedServer(RATINGS_IP, receiver)
    client = sdk_tracer(receiver, "productpage")

    async def main():
        async with ratings_mesh(server.port) as m:
            tracer = Tracer(receiver.endpoint, 0, "waypoint.shop", lambda: 0.5, export_delay_ms=100)
            m.waypoint.proxy.tracer = tracer
            with client.start_as_current_span("productpage GET ratings"):
                carrier = {}
                TraceContextTextMapPropagator().inject(carrier)
                answer = await m.send(get("/ratings/1", ("traceparent", carrier["traceparent"])), vip=RATINGS_VIP)
            assert answer.endswith(b"rated\n"), answer
            tracer.shutdown()
    run(main())
    try:
        spans = eventually(lambda: (c := receiver.of("productpage")) and (w := receiver.of("waypoint.shop")) and
                           (s := receiver.of("ratings")) and (c[0], w[0], s[0]), 20, "the three spans")
    finally:
        server.close()
    client_span, waypoint_span, server_span = spans
    assert client_span["trace_id"] == waypoint_span["trace_id"] == server_span["trace_id"]
    assert waypoint_span["parent_span_id"] == client_span["span_id"]       # the waypoint joined the client's span
    assert server_span["parent_span_id"] == waypoint_span["span_id"]       # and the server joined the waypoint's
    assert waypoint_span["attributes"]["http.response.status_code"] == 200
    assert waypoint_span["attributes"]["shoal.destination_service"] == f"ratings.{NS}.svc.cluster.local"
    assert waypoint_span["attributes"]["url.path"] == "/ratings/1"
    b3 = server.seen[0]
    assert (b3["x-b3-traceid"], b3["x-b3-spanid"], b3["x-b3-parentspanid"], b3["x-b3-sampled"]) == (
        waypoint_span["trace_id"], waypoint_span["span_id"], client_span["span_id"], "1")


def test_b3_joins_and_an_unsampled_trace_is_passed_on_but_not_recorded(receiver):
    server = TracedServer(RATINGS_IP, receiver)

    async def main():
        async with ratings_mesh(server.port) as m:
            tracer = Tracer(receiver.endpoint, 100, "waypoint.shop", lambda: 0.5, export_delay_ms=100)
            m.waypoint.proxy.tracer = tracer
            await m.send(get("/b3", ("x-b3-traceid", T), ("x-b3-spanid", S), ("x-b3-sampled", "1")), vip=RATINGS_VIP)
            await m.send(get("/not-sampled", ("traceparent", f"00-{'a' * 32}-{S}-00")), vip=RATINGS_VIP)
            tracer.shutdown()
    run(main())
    server.close()
    recorded = receiver.of("waypoint.shop")
    assert [(s["trace_id"], s["parent_span_id"], s["attributes"]["url.path"]) for s in recorded] == [(T, S, "/b3")]
    unsampled = server.seen[1]
    assert unsampled["traceparent"].startswith(f"00-{'a' * 32}-") and unsampled["traceparent"].endswith("-00")
    assert unsampled["traceparent"].split("-")[2] != S             # a span id of the waypoint's, as a parent


def test_sampling_decides_for_requests_that_bring_no_trace(receiver):
    server = TracedServer(RATINGS_IP, receiver)
    draws = iter([0.05, 0.5, 0.07, 0.9])        # with 10%: the 1st and 3rd are kept

    async def main():
        async with ratings_mesh(server.port) as m:
            tracer = Tracer(receiver.endpoint, 10, "waypoint.shop", lambda: next(draws), export_delay_ms=100)
            m.waypoint.proxy.tracer = tracer
            for i in range(4):
                await m.send(get(f"/r{i}"), vip=RATINGS_VIP)
            tracer.shutdown()
    run(main())
    server.close()
    assert sorted(s["attributes"]["url.path"] for s in receiver.of("waypoint.shop")) == ["/r0", "/r2"]
    assert all(h["traceparent"].endswith("-01") == (i in (0, 2)) for i, h in enumerate(server.seen))
    assert len({s["trace_id"] for s in receiver.of("ratings")}) == 2       # each kept request is a trace of its own
