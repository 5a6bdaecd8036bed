"""Reading the ztunnel's access log to see a namespace's first mTLS connection."""

from __future__ import annotations

import json

from shoal.local import observe
from shoal.local.layout import Layout


def test_wait_for_mtls_finds_the_record_the_call_caused(tmp_path, monkeypatch):
    layout = Layout("obs")
    log = tmp_path / "ztunnel.log"
    monkeypatch.setattr(Layout, "pod_log", lambda self, ns, name, container: log)
    log.write_text(json.dumps({"direction": "outbound", "mtls": True, "src_identity": "spiffe://cluster.local/ns/x/sa/a"})
                   + "\nnot json\n")
    calls = []

    def call():
        calls.append(1)
        with open(log, "a") as f:
            if len(calls) == 1:  # the first call still goes around the mesh
                f.write(json.dumps({"direction": "outbound", "mtls": False,
                                    "src_identity": "spiffe://cluster.local/ns/demo/sa/a"}) + "\n")
            else:
                f.write(json.dumps({"direction": "outbound", "mtls": True,
                                    "src_identity": "spiffe://cluster.local/ns/demo/sa/a"}) + "\n")
        return len(calls)

    record, result = observe.wait_for_mtls(layout, 1, call, source_namespace="demo", timeout=5)
    assert result == 2 and record["mtls"] and "/ns/demo/" in record["src_identity"]
    assert len(observe.access_log(layout, 1)) == 3


def test_wait_for_mtls_gives_up(tmp_path, monkeypatch):
    monkeypatch.setattr(Layout, "pod_log", lambda self, ns, name, container: tmp_path / "missing.log")
    assert observe.wait_for_mtls(Layout("obs"), 1, lambda: None, source_namespace="demo", timeout=0.3) is None
