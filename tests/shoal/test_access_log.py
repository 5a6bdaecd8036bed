"""Access logs in JSON or as readable text, chosen per process (issue 14, item 6)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from shoal import log
from shoal.access_log import text_line

REQUEST = {"method": "GET", "path": "/reviews/1", "authority": "reviews:9080", "status": 503, "response_flags": "UF",
           "duration_ms": 3.2, "src_addr": "198.19.1.4:40000", "src_workload": "productpage", "src_namespace": "shop",
           "src_identity": "spiffe://cluster.local/ns/shop/sa/productpage", "dst_workload": "reviews-v1",
           "dst_namespace": "shop", "upstream": "198.19.2.7:9080", "bytes_received": 0, "bytes_sent": 95,
           "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "error": "connection refused", "policy": None,
           "event": "request complete", "level": "info", "timestamp": "2026-11-30T22:00:00Z"}
CONNECTION = {"direction": "inbound", "src_addr": "198.19.1.4:40000", "dst_addr": "198.19.2.7:9080",
              "src_workload": "waypoint", "src_namespace": "shop", "dst_workload": "reviews-v1", "dst_namespace": "shop",
              "mtls": True, "bytes_received": 120, "bytes_sent": 400, "duration_ms": 12.5, "response_flags": "-",
              "event": "connection complete", "level": "info", "timestamp": "2026-11-30T22:00:01Z"}


def test_a_request_reads_as_one_line():
    assert text_line(REQUEST) == (
        '[2026-11-30T22:00:00Z] "GET /reviews/1" 503 UF 0 95 3.2ms "reviews:9080" productpage.shop -> '
        'reviews-v1.shop src_identity=spiffe://cluster.local/ns/shop/sa/productpage '
        'trace_id=4bf92f3577b34da6a3ce929d0e0e4736 error="connection refused"')


def test_a_connection_reads_as_one_line():
    assert text_line(CONNECTION) == ("[2026-11-30T22:00:01Z] inbound 198.19.1.4:40000 -> 198.19.2.7:9080 - 120 400 "
                                     "12.5ms waypoint.shop -> reviews-v1.shop mtls=true")


@pytest.mark.parametrize("fmt, access, is_json", [("json", None, True), ("console", None, False),
                                                   ("console", "json", True), ("json", "text", False)])
def test_the_access_format_is_chosen_apart_from_the_process_log(fmt, access, is_json):
    out = io.StringIO()
    log.setup(fmt, "info", stream=out, access_format=access)
    fields = {k: v for k, v in REQUEST.items() if k not in ("event", "level", "timestamp")}
    log.get_access("waypoint.access").info("request complete", **fields)
    log.get("waypoint").info("an ordinary line", pod="p")
    access, ordinary = out.getvalue().splitlines()[-2:]
    assert "_access" not in access
    if is_json:
        assert json.loads(access)["trace_id"] == REQUEST["trace_id"]
    else:
        assert access.startswith("[") and '"GET /reviews/1" 503 UF' in access and "trace_id=4bf9" in access
    assert ordinary.startswith("{") == (fmt == "json")


def test_a_process_whose_access_log_is_off_writes_no_line_and_says_so_before_one_is_built():
    out = io.StringIO()
    log.setup("json", "info", stream=out)
    access = log.get_access("waypoint.access")
    try:
        log.set_access_log(False)
        assert not access.is_enabled_for(logging.INFO)
        access.info("request complete", path="/off")
        log.get("waypoint").info("an ordinary line")
        log.set_access_log(True)
        assert access.is_enabled_for(logging.INFO)
        access.info("request complete", path="/on")
    finally:
        log.set_access_log(True)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line.get("path")) for line in lines] == [("an ordinary line", None),
                                                                      ("request complete", "/on")]


def test_an_unknown_access_format_is_refused_by_the_cli():
    r = subprocess.run([sys.executable, "-m", "shoal", "--access-log-format", "xml", "stat", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--access-log-format" in r.stderr and "json" in r.stderr
    with pytest.raises(ValueError, match="access log format"):
        log.setup("json", "info", stream=io.StringIO(), access_format="xml")
