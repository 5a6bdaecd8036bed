"""`python -m scripts.fuzz` in short, as CI runs it: each target for a few thousand generated inputs (the
program's seeded ones, then Hypothesis's, which shrink what they find), a short soak, and proof that the
harness catches each kind of failure it looks for.

Failures already reported (a target's KNOWN, pinned by strict xfails in tests/shoal/test_hbone_fuzz_findings.py)
are named, not failed on; anything else fails here.
"""

from __future__ import annotations

import logging
import math
import random

import pytest
import structlog
from hypothesis import HealthCheck, given, settings, strategies as st

from scripts import fuzz, fuzzing

TARGETS = fuzzing.TARGETS


@pytest.fixture(autouse=True, scope="module")
def quiet_logs():
    """The cores log every peer that breaks the protocol; here that is every other input."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    fuzz.quiet()
    yield
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level


def short_run(name: str, inputs: int = 2000, soak: int = 0) -> dict:
    return fuzz.fuzz_target(name, inputs, math.inf, seed=0, soak_cycles=soak, progress=False)


def new_failures(row: dict) -> list[str]:
    return [f["signature"] + "\n" + f["traceback"] for f in row["failure_list"] if f["known"] is None]


@pytest.mark.parametrize("name", TARGETS)
def test_a_few_thousand_inputs_and_a_soak_find_nothing_new(name):
    row = short_run(name, soak=2000)
    assert row["inputs"] == 2000
    assert new_failures(row) == []
    assert row["soak_kept_kib"] * 1024 <= fuzz.SOAK_BUDGET
    assert row["accepted"] > 0 and row["refused"] > 0   # the generator reaches both sides


@pytest.mark.parametrize("name", TARGETS)
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(rng=st.randoms(use_true_random=False))
def test_hypothesis_drives_the_same_generators(name, rng):
    module = fuzzing.target(name)
    try:
        module.run_one(rng)
    except Exception as error:
        if fuzzing.known(module, error) is None:
            raise


# --- the harness finds what it looks for ------------------------------------------------------


def test_an_error_that_is_not_the_modules_own_is_a_failure_and_its_seed_replays_it(monkeypatch):
    from waypoint import http1

    feed_eof = http1.MessageReader.feed_eof

    def broken(self):   # (not in a parser callback: the reader turns whatever those raise into BadRequest)
        if self.messages > 1:
            raise KeyError("a bug in the reader")
        return feed_eof(self)

    monkeypatch.setattr(http1.MessageReader, "feed_eof", broken)
    row = short_run("http1", 300)
    [failure] = [f for f in row["failure_list"] if "KeyError" in f["signature"]]
    assert failure["known"] is None and row["new"] >= 1
    with pytest.raises(KeyError):
        fuzzing.target("http1").run_one(random.Random(failure["first_seed"]))


def test_a_tunnel_kept_after_its_stream_closed_is_a_failure(monkeypatch):
    from shoal import hbone

    def keeps(self, tunnel):   # _forget that forgets nothing
        tunnel.held = None

    monkeypatch.setattr(hbone.HboneConnection, "_forget", keeps)
    row = short_run("hbone", 300)
    assert any("after StreamClosed" in f["signature"] or "Unbounded" in f["signature"]
               for f in row["failure_list"] if f["known"] is None)


def test_an_fd_neither_handed_on_nor_closed_is_a_failure(monkeypatch):
    from shoal import handoff

    monkeypatch.setattr(handoff, "_close_all", lambda fds: None)
    row = short_run("handoff", 500)
    assert any("neither handed on nor closed" in f["signature"] for f in row["failure_list"])


def test_a_ztunnel_that_strays_from_the_snapshot_rule_is_a_failure(monkeypatch):
    from shoal import handoff

    monkeypatch.setattr(handoff.ZtunnelSide, "_seen", lambda self, uid: self.known.add(uid))  # never replayed
    row = short_run("handoff", 500)
    assert any("the rule gives" in f["signature"] for f in row["failure_list"])


def test_an_error_escaping_a_request_task_of_the_h2_server_is_a_failure(monkeypatch):
    from waypoint import h2server

    queue = h2server.H2Server.queue

    def broken(self, stream, data, trailers=None):
        if trailers:
            raise RuntimeError("a bug in the response path")
        queue(self, stream, data, trailers)

    monkeypatch.setattr(h2server.H2Server, "queue", broken)
    row = short_run("h2", 300)
    assert any("RuntimeError" in f["signature"] for f in row["failure_list"])


def test_a_soak_that_keeps_memory_is_a_failure(monkeypatch):
    from waypoint import http1

    kept = []
    on_headers_complete = http1.MessageReader.on_headers_complete

    def hoards(self):
        on_headers_complete(self)
        kept.append(bytes(self._url) * 4)   # a record per request, never dropped

    monkeypatch.setattr(http1.MessageReader, "on_headers_complete", hoards)
    row = short_run("http1", 10, soak=20000)
    assert any("soak" in f["signature"] for f in row["failure_list"])


def test_the_report_names_known_failures_and_shows_new_ones_whole(monkeypatch):
    known = fuzzing.Known("hbone-authority-digit", "parse_authority: str.isdigit() takes digits int() refuses",
                          ValueError, "invalid literal")
    monkeypatch.setattr(fuzzing.target("hbone"), "KNOWN", (known,))
    rows = [{"target": "hbone", "inputs": 10, "failures": 3, "distinct": 2, "new": 1, "failure_list": [
        {"signature": "ValueError: x @ hbone.py:1", "count": 2, "first_seed": 7, "known": "hbone-authority-digit",
         "traceback": "Traceback: known"},
        {"signature": "KeyError: y @ hbone.py:2", "count": 1, "first_seed": 9, "known": None,
         "traceback": "Traceback: the new one"}]}]
    text = fuzz.report(rows)
    assert "[known: hbone-authority-digit]" in text and "Traceback: known" not in text
    assert "[NEW]" in text and "Traceback: the new one" in text and "--replay 9" in text
    assert "str.isdigit()" in text   # what the known failure is
