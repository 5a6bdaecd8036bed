"""`make demo`: a 2-node local cluster, a sample app, and a request by Service name.

Run as `python -m shoal.local.demo [--cluster NAME]`. It is idempotent: run
it again and it reuses what is already up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from shoal import log
from shoal.contracts import AMBIENT, DATAPLANE_MODE
from shoal.local import cluster as local_cluster
from shoal.local import observe
from shoal.local.layout import Layout, cluster_name

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello.yaml"


def step(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


def shoal(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, check=check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal-demo")
    parser.add_argument("--cluster", default="demo", type=cluster_name)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--redirect", default="auto")
    args = parser.parse_args(argv)
    log.setup("console", "warning")
    layout = Layout(args.cluster)
    c = ["--cluster", args.cluster]

    step(f"bringing up local cluster {args.cluster!r} with {args.nodes} nodes")
    try:
        local_cluster.up(layout, args.nodes, args.redirect, progress=lambda m: print(f"    {m}", flush=True))
    except local_cluster.ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    step(f"deploying the sample app ({EXAMPLE.relative_to(Path.cwd()) if EXAMPLE.is_relative_to(Path.cwd()) else EXAMPLE})")
    applied = shoal("local", "apply", "-f", str(EXAMPLE), *c, check=False)
    print("    " + applied.stdout.strip().replace("\n", "\n    "))
    if applied.returncode != 0:
        print(applied.stderr, file=sys.stderr)
        return 1

    step("waiting for the pods to be ready")
    store = layout.store()
    pods = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in _wait_for_pods(store, "demo", 3)]
    local_cluster.wait_ready(layout, pods, progress=lambda m: print(f"    {m}", flush=True), timeout=60)
    print(shoal("local", "get", "pods", "-n", "demo", *c).stdout)

    step("calling the Service by name from the client pod: curl http://hello")
    answers = []
    for _ in range(6):
        result = shoal("local", "exec", "-n", "demo", "client", *c, "--", "curl", "-sS", "-m", "5", "http://hello",
                       check=False)
        if result.returncode != 0:
            print(f"error: the request failed: {result.stderr.strip()}", file=sys.stderr)
            return 1
        answers.append(result.stdout.strip())
        print(f"    {answers[-1]}")
    print(f"    {len(set(answers))} replicas answered {len(answers)} requests")

    if not (store.list("Pod", "shoal-system")[0]):
        print("    (this build has no mesh components yet; nothing to enroll)")
    else:
        step(f"enrolling namespace demo in the mesh: label {DATAPLANE_MODE}={AMBIENT} (no pod restarts)")
        shoal("local", "label", "namespace", "demo", f"{DATAPLANE_MODE}={AMBIENT}", *c)
        found = observe.wait_for_mtls(layout, 1, lambda: shoal("local", "exec", "-n", "demo", "client", *c, "--",
                                                               "curl", "-sS", "-m", "5", "http://hello",
                                                               check=False).stdout,
                                      source_namespace="demo")
        if found is None:
            print("error: no mTLS connection showed up in ztunnel-node1's access log within 30s", file=sys.stderr)
            return 1
        line, body = found
        print(f"    {body.strip()}")
        print("    ztunnel-node1 access log: "
              + ", ".join(f"{k}={line.get(k)}" for k in ("src_identity", "dst_service", "upstream", "mtls", "error")
                          if k in line))
        restarts = sum(cs.get("restartCount", 0) for p in store.list("Pod", "demo")[0]
                       for cs in (p.get("status") or {}).get("containerStatuses", []))
        print(f"    pods restarted to join the mesh: {restarts}")

    print(f"""
Explore:
  .venv/bin/shoal local get pods -A --cluster {args.cluster}
  .venv/bin/shoal local get svc -n demo --cluster {args.cluster}
  .venv/bin/shoal local exec -n demo client --cluster {args.cluster} -- curl -s http://hello.demo.svc.cluster.local
  .venv/bin/shoal local logs -n demo client --cluster {args.cluster}
  .venv/bin/shoal local get nodes -o json --cluster {args.cluster}
  .venv/bin/shoal local get pods -n shoal-system --cluster {args.cluster}      (control plane, node agents, ztunnels)
  .venv/bin/shoal local logs -n shoal-system ztunnel-node1 --cluster {args.cluster}
  .venv/bin/shoal config workloads --cluster {args.cluster}

Tear down:
  make down CLUSTER={args.cluster}        (or: .venv/bin/shoal local down --cluster {args.cluster})""")
    return 0


def _wait_for_pods(store, namespace: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        pods = store.list("Pod", namespace)[0]
        if len(pods) >= count:
            return pods
        if time.monotonic() > deadline:
            raise SystemExit(f"error: only {len(pods)} of {count} pods were created in {namespace}")
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
