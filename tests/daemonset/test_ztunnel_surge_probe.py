"""The ztunnel's readiness probe during a surge: two ztunnels share port 15021 on the node, and
the older answers it until the newer is ready, so the probe must ask for this pod by name
(the ztunnel answers /healthz/ready/<POD_NAME> only in that pod's process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from shoal import netns
from tests.support.root import needs_root

from .test_invariants import one


def ztunnel_container() -> dict:
    (container,) = one("DaemonSet", "shoal-ztunnel")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_pod_knows_its_name_and_the_probe_asks_for_it():
    container = ztunnel_container()
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    probe = container["readinessProbe"]
    assert "httpGet" not in probe, "an httpGet path cannot name the pod: the older ztunnel would answer it"
    assert "POD_NAME" in " ".join(probe["exec"]["command"])


@needs_root("creates a network namespace and listens in it")
def test_the_probe_passes_only_for_its_own_pod():
    """The probe command, run as the kubelet would, against a readiness port that knows one pod."""
    name = f"shoal-test-probe-{os.getpid()}"
    server = textwrap.dedent("""
        import http.server, sys
        class Ready(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/healthz/ready/ztunnel-new" else 503)
                self.end_headers()
            def log_message(self, *args):
                pass
        server = http.server.HTTPServer(("127.0.0.1", 15021), Ready)
        print("ready", flush=True)
        server.serve_forever()
    """)
    netns.create(name)
    try:
        netns.run(name, ["ip", "link", "set", "lo", "up"])
        proc = netns.popen(name, [sys.executable, "-c", server], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            command = ztunnel_container()["readinessProbe"]["exec"]["command"]
            command = [sys.executable if command[0] == "python3" else command[0], *command[1:]]

            def probe(pod: str) -> int:
                return netns.run(name, command, check=False, env={**os.environ, "POD_NAME": pod}).returncode
            assert probe("ztunnel-new") == 0
            assert probe("ztunnel-old") != 0
        finally:
            proc.kill()
            proc.wait()
    finally:
        netns.remove(name)
