"""The open-loop load generator: it keeps its schedule and does not hide a stall."""

from __future__ import annotations

import asyncio
import json

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


async def _serve(port_holder: list, stall_after: int | None):
    count = 0

    async def handle(reader, writer):
        nonlocal count
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                count += 1
                if stall_after is not None and count == stall_after:
                    await asyncio.sleep(0.2)  # one slow response holds the connection back
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_holder.append(server.sockets[0].getsockname()[1])
    return server


def _run(rps: float, duration: float, stall_after: int | None) -> dict:
    async def main():
        ports: list = []
        server = await _serve(ports, stall_after)
        async with server:
            return await loadgen.run_client(f"http://127.0.0.1:{ports[0]}/", rps, 1, duration, 0.2)

    return asyncio.run(main())


def test_the_schedule_is_kept():
    result = _run(rps=200, duration=1.0, stall_after=None)
    assert result["errors"] == 0
    assert 190 <= result["requests"] <= 201
    # Every percentile was measured, and they rise with the rank.
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["p999_ms"] <= result["max_ms"]


def test_a_stall_shows_in_the_tail_instead_of_being_omitted():
    # One 200 ms stall at 200 rps on one connection delays about 40 scheduled requests.
    # A closed-loop generator would record one slow request; an open-loop one sees them all.
    result = _run(rps=200, duration=1.0, stall_after=100)
    assert result["errors"] == 0
    assert result["max_ms"] >= 190
    assert result["p90_ms"] >= 50, result
