"""The open-loop load generator: it keeps its schedule and does not hide a stall."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bench import loadgen, report


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert report.percentile(values, 0.5) == 50
    assert report.percentile(values, 0.99) == 99
    assert report.percentile(values, 1.0) == 100
    assert report.percentile([7.0], 0.999) == 7.0
    with pytest.raises(ValueError):
        report.percentile([], 0.5)


def test_summary_and_table_and_result_file(tmp_path):
    row = {"setup": "baseline", **report.summarize([3.0, 1.0, 2.0], "p50_ms")}
    assert row["p50_ms"] == 2.0 and row["p50_ms_min"] == 1.0 and row["p50_ms_max"] == 3.0
    text = report.table([row], ["setup", "p50_ms"])
    assert "baseline" in text and "2.000" in text
    run = report.Run("unit", {"rps": 10})
    run.add(**row)
    data = json.loads(run.write(tmp_path).read_text())
    assert data["results"] == [row] and data["settings"] == {"rps": 10}
    assert data["machine"]["cpus"] >= 1 and "started" in data


def test_result_file_under_another_results_directory(tmp_path):
    path = report.Run("unit", {}).write(under=tmp_path)
    assert path.name == "results.json" and path.parent.parent == tmp_path
    assert path.parent.name.endswith("Z-unit"), path  # <UTC timestamp>-<benchmark name>


class StallingServer:
    """Answers every request at once, except request number `stall_at`, which it holds for `stall`
    seconds: the connection behind it stalls, as a server's GC pause or a lost packet would stall it.
    It records when the stall began and ended, on the load generator's clock (perf_counter)."""

    def __init__(self, stall_at: int | None = None, stall: float = 0.05) -> None:
        self.stall_at, self.stall = stall_at, stall
        self.count = 0
        self.stalled: tuple[float, float] | None = None
        self.server = None

    async def handle(self, reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.count += 1
                if self.count == self.stall_at:
                    began = time.perf_counter()
                    await asyncio.sleep(self.stall)
                    self.stalled = (began, time.perf_counter())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run(self, rps: float, duration: float, samples: list | None = None) -> dict:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await loadgen.run_client(f"http://127.0.0.1:{port}/", rps, 1, duration, 0.2, samples=samples)


@pytest.mark.parametrize("intended, sent, previous_done, start", [
    (10.0, 10.0004, 9.9, 10.0004),     # connection free, timer woke late: the lateness is the generator's
    (10.0, 10.0, 9.9, 10.0),           # on time
    (10.0, 10.03, 10.03, 10.0),        # connection busy until after the intended time: the system held it
    (10.0, 10.0, 10.0, 10.0),          # finished exactly then: free
])
def test_when_a_request_is_timed_from(intended, sent, previous_done, start):
    assert loadgen.timed_from(intended, sent, previous_done) == start


def test_the_schedule_is_kept():
    result = asyncio.run(StallingServer().run(rps=200, duration=1.0))
    assert result["errors"] == 0
    assert 190 <= result["requests"] <= 201
    # Every percentile was measured, and they rise with the rank.
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["p999_ms"] <= result["max_ms"]


def test_a_50ms_stall_is_charged_to_every_request_it_held_back():
    # 500 requests/s on one connection; the server holds request 300 (mid-run) for 50 ms. The requests
    # due during the stall could not be sent before it ended: each one's latency must include its wait
    # since its intended time. A closed-loop generator would send them late and time them from then,
    # and the stall would show as one slow request.
    server = StallingServer(stall_at=300, stall=0.05)
    samples: list[loadgen.Sample] = []
    result = asyncio.run(server.run(rps=500, duration=1.0, samples=samples))
    assert result["errors"] == 0 and server.stalled is not None
    began, ended = server.stalled
    held_back = [s for s in samples if began < s.intended < ended]
    assert len(held_back) >= 10, (len(held_back), began, ended)   # about 25 were due in 50 ms
    for s in held_back:
        assert s.sent >= ended                       # it could not go out before the stall ended
        assert s.latency >= ended - s.intended       # and its wait is in its latency
        assert s.latency == pytest.approx(s.done - s.intended)
    # The stall shows in the distribution, not as one outlier: over 2% of requests waited 10 ms or more.
    slow = [s for s in samples if s.latency >= 0.010]
    assert len(slow) >= 10, len(slow)
    assert result["max_ms"] >= (ended - began) * 1000
