"""The node's iptables backend, as Istio detects it: one rule for every part that writes rules.

A node's rules live in one of two kernel backends: the legacy x_tables
(`iptables-legacy`), or nf_tables through the iptables-nft compatibility
layer (`iptables-nft`). kube-proxy, the CNI and the operator's tools all use
one, and the mesh uses the same, so that a node's rules read the same way
wherever they are and a node whose kernel or policy has only nf_tables works.
`detect`: legacy when the node holds legacy rules, in either family; nft when
it holds nft rules only (Istio's rule); with no rules in either, legacy if
the kernel takes it, else nft.

Two parts write rules in a pod: the node agent (its capture, node_agent/
backend.py, which also takes `--iptables-backend`) and the ztunnel (the
source-IP return path, shoal/transparent.py, which follows `this_node()`).
Both run in the node's netns (hostNetwork), so both see the same node.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

BACKENDS = ("legacy", "nft")


def tool(name: str, ipv6: bool, backend: str) -> str:
    """`iptables-nft-save`, `ip6tables-legacy-restore`, ... (name: "", "save" or "restore")."""
    return f"{'ip6' if ipv6 else 'ip'}tables-{backend}" + (f"-{name}" if name else "")


def run(netns: str | int | None, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """Runs `argv` in a netns (a path, a name under /run/netns, an open fd; None: this one), capturing text.

    The child is started from a short-lived thread that entered the netns (setns is per thread, and a
    child starts in its parent thread's netns), not through `nsenter`: enrollment runs a few of these
    per pod, and nsenter's extra exec and setns cost about 4 ms each (1 ms this way)."""
    kwargs = dict(input=stdin, capture_output=True, text=True, check=False)
    from shoal import netns as named
    try:
        if netns is None:
            return subprocess.run(argv, **kwargs)
        return named.run_in(netns, subprocess.run, argv, **kwargs)
    except FileNotFoundError:  # a failed run, as nsenter's was: the callers read the return code
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]} is not on PATH")
    except named.NetnsError as e:  # the netns is gone
        return subprocess.CompletedProcess(argv, 1, "", str(e))


def has_rules(backend: str, netns: str | None = None) -> bool:
    """Does the netns (None: this one) hold any rule of that backend, in either family?"""
    for ipv6 in (False, True):
        save = tool("save", ipv6, backend)
        if not shutil.which(save):
            continue
        saved = run(netns, [save]).stdout
        if any(line.startswith("-A ") for line in saved.splitlines()):
            return True
    return False


def legacy_usable(netns: str | None = None) -> bool:
    """Can this kernel hold legacy tables (no ip_tables module, or a policy against it: no)?"""
    argv = ["iptables-legacy", "-w", "-t", "nat", "-S"]
    if shutil.which(argv[0]) is None:
        return False
    return run(netns, argv).returncode == 0


def nft_available() -> bool:
    return all(shutil.which(tool(name, ipv6, "nft")) for name in ("save", "restore") for ipv6 in (False, True))


def detect(netns: str | None = None) -> tuple[str, str]:
    """(backend, why) for the node whose netns this is (None: the caller's own, hostNetwork).

    Istio's order: legacy rules present, legacy; otherwise nft. A node with no rules in
    either (no kube-proxy, a bare test node) keeps legacy when its kernel takes legacy
    tables; one whose kernel does not gets nft."""
    if has_rules("legacy", netns):
        return "legacy", "the node holds iptables-legacy rules"
    if has_rules("nft", netns):
        return "nft", "the node holds iptables-nft rules and no legacy ones"
    if legacy_usable(netns) or not nft_available():
        return "legacy", "the node holds no rules in either backend, and its kernel takes legacy tables"
    return "nft", "the node holds no rules, and its kernel refuses legacy tables"


@functools.cache
def this_node() -> str:
    """The backend of the node this process runs on (in its netns), detected once per process."""
    return detect()[0]
