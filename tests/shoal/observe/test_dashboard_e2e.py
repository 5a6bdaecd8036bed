"""`shoal dashboard` (issue 14, item 4) in headless Chromium (Debian's, installed by scripts/setup.sh) while
traffic flows: the workloads are drawn as nodes, the calls as edges with their figures, mTLS and the
waypoint; selecting a workload shows its identity, policies and recent connections. A screenshot is kept
under build/test-artifacts/ (gitignored)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.net import free_port, http_get
from support.polling import eventually

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "build" / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: run scripts/setup.sh")

POLICY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "no-admin", "namespace": "shop"},
          "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}], "action": "DENY",
                   "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}}


def dashboard(observed, port: int, origin: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shoal", "dashboard", "--cluster", observed.name, "--port",
                             str(port), "--from", origin], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def browse(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Chromium loads the page, runs its script for up to 15 s of page time, then does what `extra` asks."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,820",
                           "--virtual-time-budget=15000", *extra, url], capture_output=True, text=True, timeout=120)


def edges(dom: str) -> dict[tuple[str, str], dict]:
    found = {}
    for tag in re.findall(r'<g class="edge[^"]*"[^>]*>', dom):
        attrs = dict(re.findall(r'data-([a-z0-9-]+)="([^"]*)"', tag))
        found[(attrs["source"], attrs["target"])] = {k: html.unescape(v) for k, v in attrs.items()}
    return found


@pytest.fixture(params=["prometheus", "proxies"])
def served(observed, request):
    port = free_port()
    process = dashboard(observed, port, request.param)
    try:
        def ready():
            status, body = http_get(f"http://127.0.0.1:{port}/api/graph")
            graph = json.loads(body) if status == 200 else {}
            pairs = {(e["source"], e["target"]): e for e in graph.get("edges", [])}
            # reviews-v2 answers every other request with a 503; until the window holds both answers
            # (a rate needs two samples of a series, and the 200s' series may start a scrape later),
            # its error rate reads 1 or nothing, and the page's figure could not be judged
            flaky = pairs.get(("shop/load", "shop/reviews-v2"), {}).get("error_rate")
            # and until every proxy on the calls' paths has been scraped once: the waypoint's requests can
            # be in the window a scrape before the receiving ztunnels' TCP series, which say mTLS
            # (tests/shoal/observe/test_service_graph.py holds the graph to its mTLS rule)
            calls = [pairs.get(("shop/load", "shop/reviews-v1")), pairs.get(("shop/load", "shop/echo"))]
            return graph if all(call and call["mtls"] for call in calls) \
                and flaky is not None and 0 < flaky < 1 else None
        graph = eventually(ready, 90, f"the dashboard's graph from {request.param}", interval=1)
        assert graph["origin"] == request.param
        yield port, request.param
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_page_draws_the_workloads_and_the_calls_between_them(served, observed, tmp_path):
    port, origin = served
    observed.apply([POLICY])
    url = f"http://127.0.0.1:{port}/?select=shop/reviews-v1"
    dom = browse(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    nodes = set(re.findall(r'<g class="node[^"]*" data-id="([^"]+)"', page))
    assert {"shop/load", "shop/reviews-v1", "shop/reviews-v2", "shop/echo"} <= nodes, nodes
    assert "shop/waypoint" not in nodes               # the waypoint is drawn on the edges it carries
    drawn = edges(page)
    reviews, echo = drawn[("shop/load", "shop/reviews-v1")], drawn[("shop/load", "shop/echo")]
    assert (reviews["protocol"], reviews["mtls"], reviews["waypoint"]) == ("http", "true", "shop/waypoint"), reviews
    assert float(reviews["rps"]) > 0 and reviews["p99-ms"] != ""
    flaky = drawn[("shop/load", "shop/reviews-v2")]
    assert 0 < float(flaky["error-rate"]) < 1, flaky    # every other answer of reviews-v2 is a 503
    assert (echo["protocol"], echo["mtls"], echo["waypoint"]) == ("tcp", "true", "shop/waypoint"), echo
    # The selected workload's details, as a click shows them.
    assert "spiffe://cluster.local/ns/shop/sa/reviews" in page
    assert "AuthorizationPolicy no-admin: DENY (via Service/reviews)" in page
    assert re.search(r'<ul class="connections"><li>[^<]*load → reviews-v1 mTLS', page) or \
        re.search(r'<ul class="connections"><li>[^<]*waypoint → reviews-v1 mTLS', page), \
        re.search(r'<ul class="connections">.*?</ul>', page, re.S).group(0)[:500]
    assert f"from {origin}" in page

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"service-graph-{origin}.png"
    taken = browse(url, tmp_path, f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
