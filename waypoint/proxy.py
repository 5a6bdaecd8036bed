"""The waypoint's request handling: decide (routing.decide) on a request's head, carry the plan out.

`exchange()` handles one request whatever the client spoke, answering
through a responder (`waypoint.responders` for HTTP/1.1, `waypoint.h2server`
for HTTP/2 and gRPC); the client connections' loops are
`waypoint.http1_server` and `waypoint.h2server`.

Everything is decided on the request's head; its body is a source
(`waypoint.streaming`) read only once the request goes somewhere. Per
request, in order: refusal (404/403/503 answered here, the body unread),
fault delay (counted within the route timeout), fault abort, mirrors (fire
and forget, never delaying or failing the request), then tries: each to the
next endpoint of the plan, each with `per_try_timeout`, all within
`timeout`; a try is retried when `retry_on` says so (connect-failure,
refused-stream, reset, 5xx, gateway-error, retriable-4xx,
retriable-status-codes (503), a status code, or a gRPC status name). The
body streams to the endpoint as it arrives, except on a route that retries
or mirrors: there it is kept whole, up to `max_body` (413 past it), to be
sent again. An HTTP/1.1 request answered before its body was read ends its
connection (lingering close). The response body streams to the client.
Endpoints are reached through `waypoint.exchange` (HTTP/1.1 kept alive,
HTTP/2 multiplexed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable

from shoal import log
from shoal.model import HeaderChanges

from waypoint import http1
from waypoint.channel import ChannelReset
from waypoint.draws import Draws
from waypoint.errors import DownstreamGone, UpstreamFailed, UpstreamTimeout, WaypointError
from waypoint.exchange import Http1Pool, open_exchange
from waypoint.h2upstream import H2Pool
from waypoint.routing import MirrorPlan, Peer, Plan, Refusal, Upstream, decide
from shoal.proxy_state import ProxyState
from waypoint.streaming import BodySource, BodyTooLarge
from waypoint.telemetry import Metrics, RequestRecord, new_request_id
from waypoint.upstream import Upstreams

logger = log.get("waypoint.proxy")

MAX_BODY = 16 << 20
BACKOFF_BASE = 0.025
MIRROR_TIMEOUT = 10.0


@dataclass(slots=True)
class Request:
    """One request as the client loops hand it in (not frozen, for its cost per request: changed copies are made
    with `dataclasses.replace`)."""
    head: http1.Head
    body: bytes
    port: int = 0          # the service port it came on (the CONNECT target's)
    stream: BodySource | None = None   # a body still to be read (then `body` is empty)


HOP_BY_HOP_H2 = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "expect"})
GRPC_CODES = {"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8", "internal": "13",
              "unavailable": "14"}


def retriable_grpc(head: http1.Head, conditions: tuple[str, ...]) -> bool:
    """A trailers-only gRPC answer whose grpc-status retry_on names (Istio's gRPC retry conditions)."""
    status = head.header("grpc-status")
    return status is not None and any(GRPC_CODES.get(c) == status for c in conditions)


def retriable_status(status: int, conditions: tuple[str, ...]) -> bool:
    for c in conditions:
        if c == "5xx" and status >= 500:
            return True
        if c == "gateway-error" and status in (502, 503, 504):
            return True
        if c == "retriable-4xx" and status == 409:
            return True
        if c == "retriable-status-codes" and status == 503:
            return True
        if c.isdigit() and int(c) == status:
            return True
    return False


def retriable_failure(kind: str, conditions: tuple[str, ...]) -> bool:
    """kind: connect-failure, refused-stream, reset, timeout (a per-try timeout)."""
    if kind == "timeout":
        return any(c in ("5xx", "gateway-error") for c in conditions)
    if kind == "refused-stream":
        return any(c in ("refused-stream", "5xx", "connect-failure") for c in conditions)
    return kind in conditions or "5xx" in conditions or (kind == "connect-failure" and "gateway-error" in conditions)


def apply_changes(headers: list[tuple[str, str]], changes: HeaderChanges) -> list[tuple[str, str]]:
    if not changes:
        return headers
    drop = {n.lower() for n in changes.remove} | {n.lower() for n, _ in changes.set}
    out = [(k, v) for k, v in headers if k not in drop]
    out += [(n.lower(), v) for n, v in changes.set]
    out += [(n.lower(), v) for n, v in changes.add]
    return out


RBAC_DENIED = "RBAC: access denied"   # all a denied client learns, as from Istio's waypoint


class Proxy:
    def __init__(self, state: ProxyState, upstreams: Upstreams, metrics: Metrics, *,
                 rand: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 max_body: int = MAX_BODY, idle_timeout: float = 300.0,
                 decider: Callable[[ProxyState, Peer, http1.Head, Callable[[], float]], Plan | Refusal] = decide,
                 tracer=None
                 ) -> None:
        self.state = state
        self.decide = decider      # the waypoint's routing.decide; the ingress gateway hands in its own
        self.upstreams = upstreams
        self.metrics = metrics
        self.rand = rand if rand is not None else Draws()   # weighted picks spread evenly per route (draws.py)
        self.sleep = sleep
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.tracer = tracer      # waypoint.tracing.Tracer, or None: no spans, trace headers pass as they came
        self._background: set[asyncio.Task] = set()
        self.http1_pool = Http1Pool()
        self.h2_pool = H2Pool()
        self.draining = False     # shutting down: answer what is in flight, keep no client connection

    async def exchange(self, request: Request, peer: Peer, responder, source_address) -> None:
        """Decides and carries out one request, answering through `responder` (HTTP/1.1 or HTTP/2)."""
        head = request.head
        authority = head.header("host") or ""
        record = RequestRecord(source_address, head.method, head.target, authority,
                               source_workload=self.state.workload_by_ip(peer.source_ip),
                               source_principal=str(peer.source or ""), bytes_received=len(request.body))
        record.request_id = head.header("x-request-id") or new_request_id()
        span = self.tracer.begin(head.headers, head.method, head.target, authority) if self.tracer else None
        if span is not None:   # upstream sees the waypoint's span as its parent
            request = replace(request, head=replace(head, headers=tuple(span.headers)))
            record.trace_id = span.trace_id
        record.grpc = (head.header("content-type") or "").startswith("application/grpc")
        self.metrics.active.inc()
        try:
            plan = self.decide(self.state, peer, head, self.rand)
            if isinstance(plan, Refusal):
                record.service, record.policy = plan.service, plan.policy
                record.flag(plan.flag, plan.reason)
                # Which policy denied is for the operator (the access log), not for a client probing it.
                self._answer(responder, record, plan.status, RBAC_DENIED if plan.flag == "RBAC" else plan.reason)
                return
            await self._carry_out(plan, request, responder, record)
        finally:
            self.metrics.active.dec()
            if request.stream is not None:
                record.bytes_received = request.stream.received
            record.bytes_sent += responder.bytes_sent
            record.finish(self.metrics)
            if span is not None:
                span.end(route=record.route, service=record.service, upstream=record.upstream, status=record.status,
                         flags=record.response_flags, tries=record.tries)

    def _answer(self, responder, record: RequestRecord, status: int, text: str) -> None:
        record.status = status
        responder.local(status, text, [("x-request-id", record.request_id)])

    async def _carry_out(self, plan: Plan, request: Request, responder, record: RequestRecord) -> None:
        record.service, record.route, record.subset, record.policy = (plan.service or plan.destination_service,
                                                                      plan.route, plan.subset, plan.policy)
        deadline = time.monotonic() + plan.timeout if plan.timeout else None
        if plan.fault.delay:
            # Whether the delay outlasts the timeout is known now: a timer that wakes a little early
            # (uvloop's have millisecond resolution) must not turn a DI,UT into a try.
            outlasts = plan.timeout is not None and plan.fault.delay >= plan.timeout
            await self.sleep(plan.timeout if outlasts else plan.fault.delay)
            if outlasts:
                record.flag("DI,UT", f"fault delay {plan.fault.delay:g}s outlasted the route timeout {plan.timeout:g}s")
                self._answer(responder, record, 504, "upstream request timeout")
                return
        if plan.fault.abort_status is not None:
            record.flag("FI", "fault injected: abort")
            self._answer(responder, record, plan.fault.abort_status, "fault filter abort")
            return
        use_h2 = self._upstream_h2(plan, request)
        if request.stream is not None and self._replayed(plan, record):
            # A retry (or a mirror) sends the body again: it is kept whole, up to max_body.
            try:
                request = replace(request, body=await request.stream.collect(self.max_body), stream=None)
            except BodyTooLarge as e:
                record.flag(e.response_flag, str(e))
                self._answer(responder, record, 413, str(e))
                return
            except (DownstreamGone, ChannelReset) as e:
                record.flag("DC", str(e))
                self._answer(responder, record, 400, str(e))
                return
        for mirror in (plan.mirrors if request.stream is None else ()):
            task = asyncio.get_running_loop().create_task(
                self._mirror(mirror, request, record.request_id, plan.request_headers, use_h2))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            exchange = await self._tries(plan, request, record, deadline, use_h2)
        except UpstreamTimeout as e:
            record.flag("UT", str(e))
            self._answer(responder, record, 504, "upstream request timeout")
            return
        except UpstreamFailed as e:
            broken = request.stream.broken if request.stream is not None else None
            if broken is not None:   # the client's body broke off, and the try with it
                record.flag("DC", str(broken))
                self._answer(responder, record, 400, str(broken))
                return
            record.flag(e.response_flag, str(e))
            self._answer(responder, record, 503, f"upstream connect error or disconnect/reset before headers: {e}")
            return
        if plan.fault.delay:
            record.flag("DI")
        await self._relay_response(plan, exchange, responder, record, deadline)

    @staticmethod
    def _replayed(plan: Plan, record: RequestRecord) -> bool:
        """Whether the body may be sent more than once: a route with retries, or mirrors (not for gRPC:
        a streaming call is never held back whole for a copy; it is not mirrored)."""
        return (plan.retry is not None and plan.retry.attempts > 0) or (bool(plan.mirrors) and not record.grpc)

    def _upstream_h2(self, plan: Plan, request: Request) -> bool:
        """The endpoint speaks what the port declares (http: HTTP/1.1; http2, grpc, h2c: HTTP/2), else
        what the client spoke (Istio's USE_DOWNSTREAM_PROTOCOL)."""
        number = plan.destination_port or request.port
        memo = self.state.cached("declared_protocols")   # (per state version: a port's lookup is a scan)
        declared = memo.get((plan.destination_service, number))
        if declared is None:
            service = self.state.services.get(plan.destination_service)
            port = service.port(number) if service is not None and number else None
            declared = memo[(plan.destination_service, number)] = port.app_protocol if port is not None else ""
        if declared == "http":
            return False
        if declared in ("http2", "grpc", "h2c"):
            return True
        return request.head.version == "2"

    async def _tries(self, plan: Plan, request: Request, record: RequestRecord, deadline: float | None, use_h2: bool):
        retry = plan.retry
        attempts = 1 + (retry.attempts if retry and request.stream is None else 0)   # a streamed body: once
        conditions = retry.retry_on if retry else ()
        for attempt in range(attempts):
            last = attempt == attempts - 1
            upstream = plan.upstreams[attempt % len(plan.upstreams)]
            record.tries = attempt + 1
            record.upstream = upstream.address_text
            record.destination_workload = self.state.workloads.get(upstream.workload_uid)
            record.destination_principal = upstream.principal
            if attempt:
                self.metrics.retries.labels(plan.destination_service).inc()
            budget = None if deadline is None else deadline - time.monotonic()
            if budget is not None and budget <= 0:
                raise UpstreamTimeout(f"route timeout {plan.timeout:g}s reached after {attempt} tries")
            per_try = retry.per_try_timeout if retry and retry.per_try_timeout else None
            limit = min(x for x in (budget, per_try) if x is not None) if (budget or per_try) else None
            try:
                if limit is None:   # (the common case: no route or per-try timeout, no timer to arm)
                    exchange = await self._try(upstream, request, record, plan.request_headers, use_h2=use_h2)
                else:
                    exchange = await asyncio.wait_for(
                        self._try(upstream, request, record, plan.request_headers, use_h2=use_h2), limit)
            except asyncio.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline - 0.001:
                    raise UpstreamTimeout(f"no response within the route timeout {plan.timeout:g}s") from None
                if last or not retriable_failure("timeout", conditions):
                    raise UpstreamTimeout(f"no response within the per-try timeout {per_try:g}s") from None
            except UpstreamFailed as e:
                if last or not retriable_failure(e.kind, conditions):
                    raise
            else:
                head = exchange.head
                if last or not (retriable_status(head.status, conditions) or retriable_grpc(head, conditions)):
                    return exchange
                exchange.reset()
            await self.sleep(self._backoff(retry, attempt))
        raise AssertionError("unreachable: the last try returns or raises")

    def _backoff(self, retry, attempt: int) -> float:
        base = retry.backoff if retry and retry.backoff else BACKOFF_BASE
        return min(base * (2 ** attempt), base * 10) * (0.5 + self.rand() / 2)

    async def _try(self, upstream: Upstream, request: Request, record: RequestRecord, changes: HeaderChanges,
                   authority: str | None = None, *, use_h2: bool):
        """Opens a connection to the endpoint, sends the request, reads the response head."""
        head = request.head
        plain = (head.plain_bytes() if not (use_h2 or changes or request.stream or request.body)
                 and authority is None else None)
        if plain is not None:
            # The plain case: the head as the client sent it (nothing in it to drop or change) with the
            # two headers the waypoint adds, in one piece; the pool keeps the connection (no close).
            added = b"x-forwarded-proto: http\r\n\r\n"
            if head.header("x-request-id") is None:
                added = b"x-request-id: " + record.request_id.encode("latin-1") + b"\r\n" + added
            return await open_exchange(self.upstreams, upstream, head, b"", [], record.authority,
                                       use_h2=False, pool=self.http1_pool, h2_pool=self.h2_pool,
                                       wire_head=plain[:-2] + added)
        headers = apply_changes(http1.end_to_end(head.headers) if not use_h2 else
                                [(k, v) for k, v in head.headers if k not in HOP_BY_HOP_H2], changes)
        if not any(k == "x-request-id" for k, _ in headers):
            headers.append(("x-request-id", record.request_id))
        headers.append(("x-forwarded-proto", "http"))
        return await open_exchange(self.upstreams, upstream, head, request.stream or request.body, headers,
                                   record.authority, use_h2=use_h2,
                                   pool=self.http1_pool if authority is None else None,
                                   h2_pool=self.h2_pool if authority is None else None)

    async def _relay_response(self, plan: Plan, exchange, responder, record: RequestRecord,
                              deadline: float | None) -> None:
        head = exchange.head
        record.status = head.status
        record.grpc_status = head.header("grpc-status") or ""
        plain = head.plain_bytes() if responder.plain_heads and not plan.response_headers else None
        if plain is not None:   # the plain case: HTTP/1.1 both ways, nothing to change in the head
            responder.plain_head(plain, head.status)
        else:
            headers = apply_changes([(k, v) for k, v in http1.end_to_end(head.headers)], plan.response_headers)
            # gRPC's Trailers-Only answer (grpc-status in the head) must stay one HEADERS frame that ends the stream.
            trailers_only = head.version == "2" and head.header("grpc-status") is not None
            responder.head(head.status, head.reason, headers, head.content_length, end=trailers_only)
        try:
            while True:
                budget = None if deadline is None else deadline - time.monotonic()
                if budget is not None and budget <= 0:
                    raise asyncio.TimeoutError
                events = await (exchange.events() if budget is None else asyncio.wait_for(exchange.events(), budget))
                for event in events:
                    if isinstance(event, http1.Body):
                        await responder.data(event.data)
                    elif isinstance(event, http1.End):
                        if event.trailers:
                            record.grpc_status = dict(event.trailers).get("grpc-status", record.grpc_status)
                        responder.end(event.trailers)
                        self._finish_upstream(exchange)
                        return
        except asyncio.CancelledError:
            exchange.reset()     # the client went away (or reset its stream): so does the call upstream
            raise
        except (asyncio.TimeoutError, WaypointError) as e:
            # The head is out: nothing left to answer with but a reset.
            flag = "UT" if isinstance(e, asyncio.TimeoutError) else getattr(e, "response_flag", "UC")
            record.flag(flag, "route timeout during the response body" if flag == "UT" else str(e))
            exchange.reset()
            responder.reset()

    def _finish_upstream(self, exchange) -> None:
        """Pools or ends a finished upstream; resets an ended one if it lingers (a server ignoring
        `connection: close`)."""
        if exchange.finish():
            return

        async def linger() -> None:
            try:
                await asyncio.wait_for(asyncio.shield(exchange.channel.closed), 5.0)
            except asyncio.TimeoutError:
                exchange.reset()
        task = asyncio.get_running_loop().create_task(linger())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mirror(self, mirror: MirrorPlan, request: Request, request_id: str, changes: HeaderChanges,
                      use_h2: bool) -> None:
        outcome = "ok"
        record = RequestRecord(("", 0), request.head.method, request.head.target, mirror.authority,
                               request_id=request_id)
        try:
            exchange = await asyncio.wait_for(
                self._try(mirror.upstream, request, record, changes, authority=mirror.authority, use_h2=use_h2),
                MIRROR_TIMEOUT)
            exchange.reset()
        except (WaypointError, asyncio.TimeoutError, OSError) as e:
            outcome = "failed"
            logger.info("mirror failed (the request itself is unaffected)", service=mirror.service,
                        error=str(e) or type(e).__name__)
        self.metrics.mirrors.labels(mirror.service, outcome).inc()

    async def close(self) -> None:
        self.http1_pool.close()
        self.h2_pool.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
