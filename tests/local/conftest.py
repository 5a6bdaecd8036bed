"""Fixtures for the local cluster's tests: a real cluster in network namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces, veths, cgroups")


def shoal(*args: str, check: bool = True, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                            timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class Cluster:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, verb: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return shoal("local", verb, "--cluster", self.name, *args, **kwargs)

    def apply(self, yaml_text: str, check: bool = True) -> subprocess.CompletedProcess:
        return self("apply", "-f", "-", input=yaml_text, check=check)

    def exec(self, pod: str, *cmd: str, namespace: str = "default", check: bool = True, timeout: float = 60):
        return self("exec", "-n", namespace, pod, "--", *cmd, check=check, timeout=timeout)

    def pods(self, namespace: str = "default") -> dict[str, dict]:
        items = json.loads(self("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        return {p["metadata"]["name"]: p for p in items}

    def wait_pods_ready(self, namespace: str, count: int, timeout: float = 60) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods(namespace)
            ready = {n: p for n, p in pods.items()
                     if any(c["type"] == "Ready" and c["status"] == "True"
                            for c in (p.get("status") or {}).get("conditions", []))}
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(ready)} of {count} pods ready in {namespace}: "
                                     f"{json.dumps({n: p.get('status') for n, p in pods.items()}, indent=1)[:3000]}")
            time.sleep(0.2)


@pytest.fixture(scope="package")
def cluster():
    """A 2-node cluster shared by the tests of this package, removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, veths, cgroups")
    c = Cluster(f"t{os.getpid() % 100000}")
    try:
        c("up", "--nodes", "2", "--redirect", "iptables")
        yield c
    finally:  # also after an `up` that failed half-way
        c("down")
