"""The Grafana dashboards in dashboards/ (issue 14, item 2): every panel's PromQL, run against the local
cluster's real Prometheus while traffic flows, returns series.

Grafana's own variables are filled as Grafana fills them: `$__rate_interval` with a window of four
scrapes, and each dashboard variable with a value its own `label_values(...)` query offers (the test
checks that it does), so the variable queries are tried too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.polling import eventually

DASHBOARDS = Path(__file__).resolve().parents[3] / "dashboards"
FILES = sorted(DASHBOARDS.glob("*.json"))
# The value each variable takes in the test cluster (conftest.py): reviews is behind the waypoint.
CHOSEN = {"namespace": "shop", "workload": "reviews-v1", "service": "reviews.shop.svc.cluster.local"}
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>[a-zA-Z_]+)\)$")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p.get("type") != "row"]


def fill(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "20s")
    for name, value in values.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"a variable is left in {expr}"
    return expr


def test_the_five_dashboards_are_there_and_well_formed():
    assert [p.stem for p in FILES] == ["control-plane", "mesh-overview", "service", "workload",
                                       "ztunnel-waypoint-performance"]
    uids = set()
    for path in FILES:
        d = load(path)
        uids.add(d["uid"])
        assert d["title"].startswith("shoal / ") and panels(d), path.name
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), path.name
        for p in panels(d):
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), (path.name, p["title"])
            assert p["datasource"]["uid"] == "${datasource}"     # works with whichever Prometheus Grafana has
    assert len(uids) == len(FILES)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_panel_returns_series_from_the_clusters_prometheus(observed, path):
    dashboard = load(path)
    values = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable["query"]["query"])
        assert match, variable
        selector, label = fill(match["selector"] or label_query_all(match["label"]), values), match["label"]
        offered = {r["metric"].get(label) for r in observed.query(selector)}
        assert CHOSEN[variable["name"]] in offered, (variable["name"], offered)
        values[variable["name"]] = CHOSEN[variable["name"]]
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = fill(target["expr"], values)
            series = eventually(lambda: observed.query(expr), 90, f"{path.name} / {panel['title']}: {expr}",
                                interval=3)
            assert series, expr


def label_query_all(label: str) -> str:
    return f'{{{label}!=""}}'
