"""The waypoint's HTTP/1.1 proxy: read a request, decide (routing.decide), carry the plan out.

Per client connection (one HBONE stream from a ztunnel): requests are read
one at a time (keep-alive). A client that pipelines (sends the next request
before the answer to the previous one) gets its first answer with
`connection: close`, and the connection ends there: answering in order is
possible but not worth its risks in a proxy that retries.

Per request, in order: refusal (404/403/503 answered here), fault delay
(counted within the route timeout), fault abort, mirrors (fire and forget,
never delaying or failing the request), then tries: each to the next
endpoint of the plan, each with `per_try_timeout`, all within `timeout`;
a try is retried when `retry_on` says so (connect-failure, refused-stream,
reset, 5xx, gateway-error, retriable-4xx, retriable-status-codes (503), or a
status code). The request body is buffered (up to `max_body`) so that it can
be sent again; the response body is streamed to the client.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from shoal import log
from shoal.model import HeaderChanges

from waypoint import http1
from waypoint.channel import Channel, ChannelReset
from waypoint.errors import BadRequest, UpstreamFailed, UpstreamTimeout, WaypointError
from waypoint.routing import MirrorPlan, Peer, Plan, Refusal, RequestHead, Upstream, decide
from waypoint.state import WaypointState
from waypoint.telemetry import Metrics, RequestRecord
from waypoint.upstream import Upstreams

logger = log.get("waypoint.proxy")

MAX_BODY = 16 << 20
BACKOFF_BASE = 0.025
MIRROR_TIMEOUT = 10.0


@dataclass(frozen=True)
class Request:
    head: http1.Head
    body: bytes


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


class Proxy:
    def __init__(self, state: WaypointState, upstreams: Upstreams, metrics: Metrics, *,
                 rand: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 max_body: int = MAX_BODY, idle_timeout: float = 300.0) -> None:
        self.state = state
        self.upstreams = upstreams
        self.metrics = metrics
        self.rand = rand
        self.sleep = sleep
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self._background: set[asyncio.Task] = set()

    # --- a client connection ----------------------------------------------------------

    async def serve(self, client: Channel, peer: Peer, source_address: tuple[str, int]) -> None:
        reader = http1.MessageReader()
        queue: list = []
        try:
            while True:
                try:
                    request = await asyncio.wait_for(self._next_request(client, reader, queue), self.idle_timeout)
                except asyncio.TimeoutError:
                    client.end()
                    return
                except BadRequest as e:
                    client.send(http1.local_response(e.status, f"{e}\n", close=True))
                    client.end()
                    logger.info("bad request from a client", src=source_address[0], error=str(e))
                    return
                if request is None:
                    client.end()
                    return
                pipelined = bool(queue) or client.buffered > 0
                keep = await self.handle(request, peer, client, source_address, close=pipelined)
                if not keep:
                    client.end()
                    return
        except ChannelReset:
            return
        except asyncio.CancelledError:
            client.reset()
            raise

    async def _next_request(self, client: Channel, reader: http1.MessageReader, queue: list) -> Request | None:
        head, body = None, bytearray()
        while True:
            while queue:
                event = queue.pop(0)
                if isinstance(event, http1.Head):
                    head = event
                elif isinstance(event, http1.Body):
                    body += event.data
                    if len(body) > self.max_body:
                        raise BadRequest(f"request body larger than {self.max_body} bytes", 413)
                else:
                    return Request(head, bytes(body))
            data = await client.read()
            if not data:
                reader.feed_eof()
                return None
            queue.extend(reader.feed(data))

    # --- one request --------------------------------------------------------------------

    async def handle(self, request: Request, peer: Peer, client: Channel, source_address, *, close: bool) -> bool:
        """Answers one request on `client`; True when the connection may carry another."""
        head = request.head
        authority = head.header("host") or ""
        record = RequestRecord(source_address, head.method, head.target, authority,
                               source_workload=self.state.workload_by_ip(peer.source_ip),
                               source_principal=peer.source_principal or "", bytes_received=len(request.body))
        record.request_id = head.header("x-request-id") or str(uuid.uuid4())
        keep = head.keep_alive and not close
        self.metrics.active.inc()
        try:
            plan = decide(self.state, peer, RequestHead(head.method, head.target, authority, head.headers), self.rand)
            if isinstance(plan, Refusal):
                record.service, record.policy = plan.service, plan.policy
                record.flag(plan.flag, plan.reason)
                self._answer(client, record, plan.status, plan.reason, keep)
                return keep
            return await self._carry_out(plan, request, client, record, keep)
        finally:
            self.metrics.active.dec()
            record.finish(self.metrics)

    def _answer(self, client: Channel, record: RequestRecord, status: int, text: str, keep: bool) -> None:
        record.status = status
        data = http1.local_response(status, text + "\n", [("x-request-id", record.request_id)], close=not keep)
        record.bytes_sent += len(data)
        client.send(data)

    async def _carry_out(self, plan: Plan, request: Request, client: Channel, record: RequestRecord, keep: bool) -> bool:
        record.service, record.route, record.subset, record.policy = (plan.service or plan.destination_service,
                                                                      plan.route, plan.subset, plan.policy)
        deadline = time.monotonic() + plan.timeout if plan.timeout else None
        if plan.fault.delay:
            pause = plan.fault.delay if deadline is None else min(plan.fault.delay, plan.timeout)
            await self.sleep(pause)
            if deadline is not None and time.monotonic() >= deadline:
                record.flag("DI,UT", f"fault delay {plan.fault.delay:g}s outlasted the route timeout {plan.timeout:g}s")
                self._answer(client, record, 504, "upstream request timeout", keep)
                return keep
        if plan.fault.abort_status is not None:
            record.flag("FI", "fault injected: abort")
            self._answer(client, record, plan.fault.abort_status, "fault filter abort", keep)
            return keep
        for mirror in plan.mirrors:
            task = asyncio.get_running_loop().create_task(self._mirror(mirror, request, record.request_id, plan.request_headers))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            head, upstream, reader, pending = await self._tries(plan, request, record, deadline)
        except UpstreamTimeout as e:
            record.flag("UT", str(e))
            self._answer(client, record, 504, "upstream request timeout", keep)
            return keep
        except UpstreamFailed as e:
            record.flag(e.response_flag, str(e))
            self._answer(client, record, 503, f"upstream connect error or disconnect/reset before headers: {e}", keep)
            return keep
        if plan.fault.delay:
            record.flag("DI")
        return await self._relay_response(plan, request, head, upstream, reader, pending, client, record, deadline, keep)

    async def _tries(self, plan: Plan, request: Request, record: RequestRecord, deadline: float | None):
        retry = plan.retry
        attempts = 1 + (retry.attempts if retry else 0)
        conditions = retry.retry_on if retry else ()
        for attempt in range(attempts):
            last = attempt == attempts - 1
            upstream = plan.upstreams[attempt % len(plan.upstreams)]
            record.tries = attempt + 1
            record.upstream = f"{upstream.address[0]}:{upstream.address[1]}"
            record.destination_workload = self.state.workloads.get(upstream.workload_uid)
            record.destination_principal = upstream.identity if upstream.hbone else ""
            if attempt:
                self.metrics.retries.labels(plan.destination_service).inc()
            budget = None if deadline is None else deadline - time.monotonic()
            if budget is not None and budget <= 0:
                raise UpstreamTimeout(f"route timeout {plan.timeout:g}s reached after {attempt} tries")
            per_try = retry.per_try_timeout if retry and retry.per_try_timeout else None
            limit = min(x for x in (budget, per_try) if x is not None) if (budget or per_try) else None
            try:
                result = await asyncio.wait_for(self._try(upstream, request, record, plan.request_headers), limit)
            except asyncio.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline - 0.001:
                    raise UpstreamTimeout(f"no response within the route timeout {plan.timeout:g}s") from None
                if last or not retriable_failure("timeout", conditions):
                    raise UpstreamTimeout(f"no response within the per-try timeout {per_try:g}s") from None
            except UpstreamFailed as e:
                if last or not retriable_failure(e.kind, conditions):
                    raise
            else:
                head = result[0]
                if last or not retriable_status(head.status, conditions):
                    return result
                result[1].reset()
            await self.sleep(self._backoff(retry, attempt))
        raise AssertionError("unreachable: the last try returns or raises")

    def _backoff(self, retry, attempt: int) -> float:
        base = retry.backoff if retry and retry.backoff else BACKOFF_BASE
        return min(base * (2 ** attempt), base * 10) * (0.5 + self.rand() / 2)

    async def _try(self, upstream: Upstream, request: Request, record: RequestRecord, changes: HeaderChanges,
                   authority: str | None = None):
        """Opens a connection to the endpoint, sends the request, reads the response head."""
        channel = await self.upstreams.open(upstream)
        try:
            head = request.head
            headers = apply_changes(http1.end_to_end(head.headers), changes)
            if authority is not None:
                headers = [(k, v) for k, v in headers if k != "host"] + [("host", authority)]
            if not any(k == "x-request-id" for k, _ in headers):
                headers.append(("x-request-id", record.request_id))
            headers.append(("x-forwarded-proto", "http"))
            channel.send(http1.request_bytes(head.method, head.target, headers, request.body))
            reader = http1.MessageReader(response=True, head_request=head.method == "HEAD")
            pending: list = []
            while True:
                data = await channel.read()
                events = reader.feed(data) if data else reader.feed_eof()
                if not data and not events:
                    raise UpstreamFailed("the endpoint closed the connection before responding", "reset", "UC")
                pending.extend(events)
                if pending and isinstance(pending[0], http1.Head):
                    return pending.pop(0), channel, reader, pending
                if not data:
                    raise UpstreamFailed("the endpoint closed the connection before responding", "reset", "UC")
        except BadRequest as e:
            channel.reset()
            raise UpstreamFailed(f"the endpoint answered with malformed HTTP: {e}", "reset", "UPE") from None
        except BaseException:
            channel.reset()
            raise

    async def _relay_response(self, plan: Plan, request: Request, head: http1.Head, upstream: Channel,
                              reader: http1.MessageReader, pending: list, client: Channel, record: RequestRecord,
                              deadline: float | None, keep: bool) -> bool:
        record.status = head.status
        headers = apply_changes(http1.end_to_end(head.headers), plan.response_headers)
        bodyless = request.head.method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200
        chunked_out = not bodyless and head.content_length is None
        keep = keep and head.status >= 200
        out = http1.response_head_bytes(head.status, headers, content_length=head.content_length if not chunked_out
                                         else None, close=not keep, reason=head.reason)
        client.send(out)
        record.bytes_sent += len(out)
        try:
            while True:
                for event in pending:
                    if isinstance(event, http1.Body):
                        data = http1.chunk(event.data) if chunked_out else event.data
                        client.send(data)
                        record.bytes_sent += len(data)
                    elif isinstance(event, http1.End):
                        if chunked_out:
                            client.send(http1.LAST_CHUNK)
                        self._finish_upstream(upstream)
                        return keep
                pending = []
                await client.drain()
                budget = None if deadline is None else deadline - time.monotonic()
                if budget is not None and budget <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(upstream.read(), budget)
                pending = reader.feed(data) if data else reader.feed_eof()
                if not data and not pending:
                    raise UpstreamFailed("the endpoint closed the connection in the middle of the body", "reset", "UC")
        except (asyncio.TimeoutError, WaypointError) as e:
            # The head is out: nothing left to answer with but a reset.
            flag = "UT" if isinstance(e, asyncio.TimeoutError) else getattr(e, "response_flag", "UC")
            record.flag(flag, "route timeout during the response body" if flag == "UT" else str(e))
            upstream.reset()
            client.reset()
            return False

    def _finish_upstream(self, upstream: Channel) -> None:
        """Half-closes a finished upstream; resets it if it lingers (a server ignoring `connection: close`)."""
        upstream.end()

        async def linger() -> None:
            try:
                await asyncio.wait_for(asyncio.shield(upstream.closed), 5.0)
            except asyncio.TimeoutError:
                upstream.reset()
        task = asyncio.get_running_loop().create_task(linger())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mirror(self, mirror: MirrorPlan, request: Request, request_id: str, changes: HeaderChanges) -> None:
        outcome = "ok"
        channel = None
        record = RequestRecord(("", 0), request.head.method, request.head.target, mirror.authority,
                               request_id=request_id)
        try:
            _, channel, reader, pending = await asyncio.wait_for(
                self._try(mirror.upstream, request, record, changes, authority=mirror.authority), MIRROR_TIMEOUT)
            channel.reset()
        except (WaypointError, asyncio.TimeoutError, OSError) as e:
            outcome = "failed"
            logger.info("mirror failed (the request itself is unaffected)", service=mirror.service,
                        error=str(e) or type(e).__name__)
        self.metrics.mirrors.labels(mirror.service, outcome).inc()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
