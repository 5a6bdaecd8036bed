"""bench.waypoint_core drives real requests through the waypoint's HTTP/1.1 path in memory."""

from __future__ import annotations

import asyncio
import re

from bench import waypoint_core


def test_every_request_is_answered_over_one_kept_alive_endpoint_connection():
    spent, opened = asyncio.run(waypoint_core.run_once(requests=200, connections=4, body_bytes=512))
    assert spent > 0
    # The endpoint answers at once, so requests never overlap: without the keep-alive pool this would be 200.
    assert opened == 1


def test_the_program_prints_cpu_per_request(capsys):
    assert waypoint_core.main(["--requests", "200", "--repeats", "1", "--access-log", "off"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"access log off: [0-9.]+ CPU-µs per request", out), out
