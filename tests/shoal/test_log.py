"""shoal.log: JSON and console formats, level filtering."""

from __future__ import annotations

import io
import json

import pytest

from shoal import log


def test_json_log_lines_are_json():
    out = io.StringIO()
    log.setup("json", "info", stream=out)
    log.get("t").info("hello", pod="a/b", bytes=3)
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["event"] == "hello" and line["pod"] == "a/b" and line["bytes"] == 3
    assert line["level"] == "info" and "timestamp" in line


def test_console_logs_are_human_and_levels_filter():
    out = io.StringIO()
    log.setup("console", "warning", stream=out)
    log.get("t").info("quiet")
    log.get("t").warning("loud", reason="x")
    text = out.getvalue()
    assert "quiet" not in text and "loud" in text and "reason" in text


def test_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="unknown log format"):
        log.setup("xml")


def test_default_stream_is_the_stderr_of_the_moment(monkeypatch):
    """Set up on stderr, then stderr is swapped (and the old one closed): lines follow the new one."""
    import sys

    old = io.StringIO()
    monkeypatch.setattr(sys, "stderr", old)
    log.setup("json", "info")
    new = io.StringIO()
    monkeypatch.setattr(sys, "stderr", new)
    old.close()
    log.get("t").info("after the swap")
    assert "after the swap" in new.getvalue()
