"""Traces: the waypoint joins the caller's trace, records one span per request, and passes the trace on.

Two halves:
- pure: reading a trace context from W3C `traceparent` or B3 (`b3` single
  header, or `x-b3-traceid`/`x-b3-spanid`/`x-b3-sampled`), the sampling
  decision (the caller's, when it gave one; else `sampling` percent of new
  traces), and the headers sent upstream: both formats, naming the
  waypoint's span as the parent, so a server that speaks either joins in;
- `Tracer`, which records spans with the OpenTelemetry SDK and exports them
  over OTLP/HTTP in a background batch. The SDK is imported when the first
  `Tracer` is made, so a waypoint without tracing never loads it.

A span per request: named after the route (or the service), with the
method, path, authority, destination service, upstream, status and
response flags; each try beyond the first is a `retry` event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

Headers = Sequence[tuple[str, str]]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_HEX = re.compile(r"^[0-9a-f]+$")
PROPAGATION_HEADERS = frozenset({"traceparent", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
                                 "x-b3-sampled", "x-b3-flags"})


@dataclass(frozen=True)
class TraceContext:
    """The caller's span: the trace, the span that is our parent, and the caller's sampling decision."""
    trace_id: int
    span_id: int
    sampled: bool | None        # None: the caller left it to us


def _get(headers: Headers, name: str) -> str:
    return next((v.strip().lower() for k, v in headers if k.lower() == name), "")


def _ids(trace: str, span: str) -> tuple[int, int] | None:
    if not (_HEX.match(trace) and _HEX.match(span)) or len(trace) not in (16, 32) or len(span) != 16:
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    return (trace_id, span_id) if trace_id and span_id else None


def incoming(headers: Headers) -> TraceContext | None:
    """The caller's context from traceparent (preferred), `b3`, or the x-b3-* headers; None when there is none
    or it is malformed (then the request starts a trace of its own)."""
    match = _TRACEPARENT.match(_get(headers, "traceparent"))
    if match and (ids := _ids(match[1], match[2])):
        return TraceContext(*ids, sampled=bool(int(match[3], 16) & 1))
    single = _get(headers, "b3")
    if single and single not in ("0", "1", "d"):
        parts = single.split("-")
        if len(parts) >= 2 and (ids := _ids(parts[0], parts[1])):
            return TraceContext(*ids, sampled=_b3_sampled(parts[2] if len(parts) > 2 else ""))
    ids = _ids(_get(headers, "x-b3-traceid"), _get(headers, "x-b3-spanid"))
    if ids:
        flags = "d" if _get(headers, "x-b3-flags") == "1" else _get(headers, "x-b3-sampled")
        return TraceContext(*ids, sampled=_b3_sampled(flags))
    return None


def _b3_sampled(flag: str) -> bool | None:
    return {"1": True, "d": True, "true": True, "0": False, "false": False}.get(flag)


def sampled(context: TraceContext | None, sampling: float, rand: Callable[[], float]) -> bool:
    """The caller's decision when it made one; else `sampling` percent (0..100) of requests."""
    if context is not None and context.sampled is not None:
        return context.sampled
    return rand() * 100 < sampling


def outgoing(headers: Headers, trace_id: int, span_id: int, parent_id: int | None, is_sampled: bool
             ) -> list[tuple[str, str]]:
    """The request's headers for upstream: the old propagation headers out, ours in, in both formats."""
    kept = [(k, v) for k, v in headers if k.lower() not in PROPAGATION_HEADERS]
    flag = "1" if is_sampled else "0"
    ours = [("traceparent", f"00-{trace_id:032x}-{span_id:016x}-0{flag}"),
            ("x-b3-traceid", f"{trace_id:032x}"), ("x-b3-spanid", f"{span_id:016x}"), ("x-b3-sampled", flag)]
    if parent_id:
        ours.append(("x-b3-parentspanid", f"{parent_id:016x}"))
    return kept + ours


def otlp_url(endpoint: str) -> str:
    """An OTLP/HTTP collector's address as given (http://host:4318) made the traces URL the SDK posts to."""
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"--tracing-endpoint {endpoint!r}: give an OTLP/HTTP URL such as http://collector:4318")
    rest = endpoint.split("://", 1)[1]
    return endpoint if "/" in rest.rstrip("/") else endpoint.rstrip("/") + "/v1/traces"


class Span:
    """One request's span, begun and not yet ended; `headers` are what goes upstream."""

    def __init__(self, span, headers: list[tuple[str, str]], trace_id: str) -> None:
        self._span, self.headers, self.trace_id = span, headers, trace_id

    def end(self, *, route: str, service: str, upstream: str, status: int, flags: str, tries: int) -> None:
        if self._span is None:
            return
        span = self._span
        if route:
            span.update_name(route)
        for name, value in (("shoal.route", route), ("shoal.destination_service", service),
                            ("shoal.upstream", upstream), ("shoal.response_flags", flags)):
            if value:
                span.set_attribute(name, value)
        span.set_attribute("http.response.status_code", status)
        for attempt in range(2, tries + 1):
            span.add_event("retry", {"shoal.try": attempt})
        if status == 0 or status >= 500:
            from opentelemetry.trace import Status, StatusCode
            span.set_status(Status(StatusCode.ERROR, flags))
        span.end()


class Tracer:
    """Records spans and exports them to an OTLP/HTTP endpoint (`sampling`: percent of new traces)."""

    def __init__(self, endpoint: str, sampling: float, service: str, rand: Callable[[], float],
                 export_delay_ms: int = 1000) -> None:
        if not 0 <= sampling <= 100:
            raise ValueError(f"--tracing-sampling {sampling}: a percentage, 0 to 100")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        self.sampling, self.rand = sampling, rand
        # Sampling is decided here (sampled()), so the SDK records every span it is asked to.
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=ALWAYS_ON)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_url(endpoint)),
                                                            schedule_delay_millis=export_delay_ms))
        self.tracer = self.provider.get_tracer("shoal.waypoint")

    def begin(self, headers: Headers, method: str, path: str, authority: str) -> Span:
        from opentelemetry import trace

        context = incoming(headers)
        keep = sampled(context, self.sampling, self.rand)
        parent = None
        if context is not None:
            remote = trace.SpanContext(context.trace_id, context.span_id, is_remote=True,
                                       trace_flags=trace.TraceFlags(1 if keep else 0))
            parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        if not keep:
            # Not recorded, still passed on: the trace stays whole for whoever does record it.
            trace_id = context.trace_id if context else self.provider.id_generator.generate_trace_id()
            span_id = self.provider.id_generator.generate_span_id()
            return Span(None, outgoing(headers, trace_id, span_id, context.span_id if context else None, False),
                        "")
        span = self.tracer.start_span(f"{method} {authority}", context=parent, kind=trace.SpanKind.SERVER,
                                      attributes={"http.request.method": method, "url.path": path,
                                                  "server.address": authority})
        ids = span.get_span_context()
        return Span(span, outgoing(headers, ids.trace_id, ids.span_id, context.span_id if context else None, True),
                    f"{ids.trace_id:032x}")

    def shutdown(self) -> None:
        self.provider.shutdown()
