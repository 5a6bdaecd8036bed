"""The iptables backend of the in-pod rules (node_agent/backend.py): the node's, detected, or the one named.

- the rules written as iptables-save lines are what iptables-nft-save prints back (table, no root);
- detection in network namespaces: legacy rules present, legacy; nft rules only, nft; none, legacy;
- the iptables mode with the nft backend, in a real pod netns: install is idempotent and captures
  (SO_ORIGINAL_DST checked), `installed` sees a flushed chain, removal leaves nothing, and nothing
  ever lands in the legacy tables; a pod moved from one backend to the other keeps nothing of the old;
- a node with only nftables rules: every rule of a dual-stack pod (capture, DNS capture, the node's
  probe SNAT) goes to nft in both families, IPv4 and IPv6 captured, nothing in legacy; the override
  (--iptables-backend) wins over detection.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from shoal import iptables_backend, netns, transparent
from shoal.contracts import PROBE_SOURCE6

from na_topology import listen_in, original_dst
from node_agent import backend, netfilter
from node_agent.iptables import IptablesRedirector, capture_specs, refuse_specs
from node_agent.model import PodTarget
from node_agent.redirect import Redirection
from support.root import IS_ROOT, needs_root

TAG = f"nft{os.getpid()}"
CGROUP = Path("/sys/fs/cgroup/unified") / f"shoal-{TAG}"
POD_IP = "198.19.201.2"
POD_IP6 = "fd73:686f:616c:c9::2"


def pod(netns_path: str, cgroup: str | None = None) -> PodTarget:
    return PodTarget("uid-nft", "demo", "web", POD_IP, netns_path, cgroup)


@pytest.mark.parametrize("spec, line", [
    (dict(out_interface="lo", target="RETURN"), "-o lo -j RETURN"),
    (dict(src="169.254.7.127/32", target="RETURN"), "-s 169.254.7.127/32 -j RETURN"),
    (dict(protocol="tcp", matches=[("tcp", {"dport": "15008"})], target="RETURN"),
     "-p tcp -m tcp --dport 15008 -j RETURN"),
    (dict(matches=[("mark", {"mark": "0x539"}), ("cgroup", {"path": "!kubepods/pod1"})], target="RETURN"),
     '-m mark --mark 0x539 -m cgroup ! --path "kubepods/pod1" -j RETURN'),  # quoted, as iptables-save does
    (dict(matches=[("cgroup", {"path": "!shoal-test_1"})], target="RETURN"), "-m cgroup ! --path shoal-test_1 -j RETURN"),
    (dict(protocol="tcp", target="REDIRECT", target_args={"to_ports": "15001"}), "-p tcp -j REDIRECT --to-ports 15001"),
    (dict(protocol="icmpv6", target="RETURN"), "-p ipv6-icmp -j RETURN"),
    (dict(target="REJECT", target_args={"reject_with": "icmp6-adm-prohibited"}),
     "-j REJECT --reject-with icmp6-adm-prohibited"),
])
def test_a_rule_is_written_as_iptables_save_prints_it(spec, line):
    assert netfilter.rule_text(**spec) == line


def test_a_failed_write_says_what_the_agent_needs_and_how_to_choose_the_other_backend():
    from node_agent.errors import RedirectError
    with pytest.raises(RedirectError, match="CAP_NET_ADMIN.*--iptables-backend legacy[|]nft"):
        backend.writer("nft")._run("/nonexistent-netns", ["iptables-nft-save"])


def test_an_unknown_backend_is_refused_naming_the_choices():
    with pytest.raises(Exception, match="choose one of auto, legacy, nft"):
        backend.resolve("bpfilter")


@pytest.fixture
def scratch():
    """Network namespaces made by the test (names under /run/netns), removed after it."""
    if not IS_ROOT:
        pytest.skip("needs root: network namespaces and iptables")
    made = []

    def make(suffix: str) -> str:
        name = f"shoal-{TAG}-{suffix}"
        netns.create(name)
        made.append(name)
        netns.run(name, ["ip", "link", "set", "lo", "up"])
        return name

    yield make
    for name in made:
        netns.remove(name)


@needs_root("network namespaces and iptables")
def test_detection_follows_the_rules_the_node_holds(scratch):
    legacy_node, nft_node, bare_node = scratch("legacy"), scratch("nft"), scratch("bare")
    netns.run(legacy_node, ["iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"])
    netns.run(nft_node, ["iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"])
    assert backend.detect(str(netns.path(legacy_node)))[0] == "legacy"
    assert backend.detect(str(netns.path(nft_node))) == ("nft", "the node holds iptables-nft rules and no legacy ones")
    assert backend.detect(str(netns.path(bare_node)))[0] == "legacy"  # this kernel takes legacy tables


def pod_netns(scratch) -> str:
    name = scratch("pod")
    for argv in (["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"], ["ip", "link", "set", "d1", "up"], ["ip", "addr", "add", f"{POD_IP}/24", "dev", "d0"],
                 ["ip", "link", "set", "d0", "up"], ["ip", "route", "add", "default", "dev", "d0"]):
        netns.run(name, argv)
    return str(netns.path(name))


def nft_save(path: str, ipv6: bool = False) -> str:
    tool = "ip6tables-nft-save" if ipv6 else "iptables-nft-save"
    return subprocess.run(["nsenter", f"--net={path}", tool], capture_output=True, text=True, check=True).stdout


def original_dst6(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.IPPROTO_IPV6, 80, 28)  # IP6T_SO_ORIGINAL_DST: a sockaddr_in6
    port, packed = struct.unpack("!2xH4x16s4x", raw)
    return socket.inet_ntop(socket.AF_INET6, packed), port


def captured(path: str, destination: str = "198.18.99.1") -> tuple[str, int]:
    """Connects from the pod to an address nobody serves; returns where the 15001 listener says it was going."""
    ipv6 = ":" in destination
    if ipv6:
        listener = netns.socket_in(path, socket.AF_INET6)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(("::", 15001))
        listener.listen(4)
        listener.settimeout(5)
    else:
        listener = listen_in(path, 15001)
    got = {}

    def accept():
        conn, _ = listener.accept()
        got["dst"] = original_dst6(conn) if ipv6 else original_dst(conn)
        conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = f"import socket; socket.create_connection(({destination!r}, 8080), timeout=5).close()"
    result = subprocess.run(["nsenter", f"--net={path}", "python3", "-c", code], capture_output=True, text=True,
                            timeout=60)
    thread.join(30)
    listener.close()
    assert result.returncode == 0, result.stderr
    return got["dst"]


@needs_root("network namespaces, cgroups and iptables")
def test_the_nft_backend_captures_is_idempotent_sees_a_flushed_chain_and_removes_everything(scratch):
    path = pod_netns(scratch)
    CGROUP.mkdir(parents=True, exist_ok=True)
    try:
        target = pod(path, str(CGROUP))
        capture = IptablesRedirector("nft")
        capture.load()
        capture.install(target)
        capture.install(target)
        saved = nft_save(path)
        expected = [f"-A SHOAL_OUTPUT {netfilter.rule_text(**spec)}" for spec in capture_specs(target)["SHOAL_OUTPUT"]]
        assert [line for line in saved.splitlines() if line.startswith("-A SHOAL_OUTPUT")] == expected
        assert saved.count("-A OUTPUT -j SHOAL_OUTPUT") == 1 and saved.count("-A PREROUTING -j SHOAL_PREROUTING") == 1
        assert f"! --path shoal-{TAG}" in saved
        v6 = nft_save(path, ipv6=True)
        assert [line for line in v6.splitlines() if line.startswith("-A SHOAL_INPUT")] == \
            [f"-A SHOAL_INPUT {netfilter.rule_text(**spec)}" for spec in refuse_specs(ipv6=True)["SHOAL_INPUT"]]
        assert "SHOAL" not in netfilter.save(path), "nothing goes into the legacy tables"
        assert capture.installed(target)
        assert captured(path) == ("198.18.99.1", 8080)

        subprocess.run(["nsenter", f"--net={path}", "iptables-nft", "-t", "nat", "-F", "SHOAL_PREROUTING"], check=True)
        assert not capture.installed(target)
        capture.install(target)
        assert capture.installed(target)

        capture.remove(target)
        assert "SHOAL" not in nft_save(path) and "SHOAL" not in nft_save(path, ipv6=True)
        assert not capture.installed(target)
    finally:
        CGROUP.rmdir()


@needs_root("network namespaces and iptables")
def test_a_pod_moved_to_the_other_backend_keeps_nothing_of_the_old_one(scratch):
    path = pod_netns(scratch)
    target = pod(path)  # no cgroup yet, as a pod captured at CNI ADD
    legacy = IptablesRedirector("legacy")
    legacy.load()
    legacy.install(target)
    assert "SHOAL_OUTPUT" in netfilter.save(path)
    nft = IptablesRedirector("nft")
    nft.load()
    nft.drop_backend(target, "legacy")
    nft.install(target)
    assert "SHOAL" not in netfilter.save(path) and "SHOAL" not in netfilter.save(path, ipv6=True)
    assert nft.installed(target) and captured(path) == ("198.18.99.1", 8080)
    legacy.install(target)  # and back; removal by either takes both
    nft.remove(target)
    assert "SHOAL" not in netfilter.save(path) and "SHOAL" not in nft_save(path)


def test_in_ebpf_mode_the_flag_chooses_the_backend_of_dns_capture_and_the_probe_snat(tmp_path):
    """The eBPF mode writes iptables rules too (DNS capture, the node's probe SNAT): --iptables-backend
    decides their backend, as it does the iptables mode's."""
    ebpf_capture = SimpleNamespace(mode="ebpf")  # what Redirection reads of a capture that has no backend
    for wanted in ("legacy", "nft"):
        assert Redirection(ebpf_capture, tmp_path / wanted, iptables_backend=wanted).tables.name == wanted
    with pytest.raises(Exception, match="choose one of auto, legacy, nft"):
        Redirection(ebpf_capture, tmp_path / "bad", iptables_backend="xtables")


@needs_root("network namespaces, cgroups and iptables")
def test_a_node_with_only_nftables_gets_every_rule_of_a_dual_stack_pod_in_nft(scratch, tmp_path):
    node = scratch("nftnode")
    netns.run(node, ["iptables-nft", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"])
    node_path = str(netns.path(node))
    chosen = backend.resolve("auto", node_path)
    assert chosen == "nft"
    assert backend.resolve("legacy", node_path) == "legacy"  # --iptables-backend wins over detection
    path = pod_netns(scratch)
    for argv in (["ip", "-6", "addr", "add", f"{POD_IP6}/64", "dev", "d0", "nodad"],
                 ["ip", "-6", "route", "add", "default", "dev", "d0"]):
        subprocess.run(["nsenter", f"--net={path}", *argv], check=True)
    kubelet = CGROUP / "kubelet"
    kubelet.mkdir(parents=True, exist_ok=True)
    try:
        target = PodTarget("uid-nft", "demo", "web", POD_IP, path, str(CGROUP), dns_capture=True,
                           ips=(POD_IP, POD_IP6))
        redirection = Redirection(IptablesRedirector(chosen), tmp_path, node_netns=node_path,
                                  kubelet_cgroup=str(kubelet))
        assert redirection.tables.name == "nft"
        assert Redirection(SimpleNamespace(mode="ebpf"), tmp_path / "ebpf", node_netns=node_path).tables.name == "nft"
        redirection.install(target)
        redirection.install(target)
        assert redirection.installed(target)
        for ipv6 in (False, True):
            saved = nft_save(path, ipv6=ipv6)
            assert [line for line in saved.splitlines() if line.startswith("-A OUTPUT")] == \
                ["-A OUTPUT -j SHOAL_DNS", "-A OUTPUT -j SHOAL_OUTPUT"], saved
            assert "-A SHOAL_OUTPUT -p tcp -j REDIRECT --to-ports 15001" in saved
            assert "-A SHOAL_DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053" in saved
            assert "SHOAL_INPUT" not in saved  # neither family is refused: the pod has both
            for where in (path, node_path):
                assert "SHOAL" not in netfilter.save(where, ipv6=ipv6), "nothing goes into the legacy tables"
        assert f"-A SHOAL_PREROUTING -s {PROBE_SOURCE6}/128 -j RETURN" in nft_save(path, ipv6=True)
        assert f"-d {POD_IP}/32 -p tcp" in nft_save(node_path)
        assert f"-d {POD_IP6}/128 -p tcp" in nft_save(node_path, ipv6=True)
        assert redirection.probes.covered() == {POD_IP, POD_IP6}
        assert captured(path) == ("198.18.99.1", 8080)
        assert captured(path, "fd73:686f:616c:99::1") == ("fd73:686f:616c:99::1", 8080)

        # The ztunnel's return path, in the node's backend as the ztunnel writes it: removal takes it too.
        fd = os.open(path, os.O_RDONLY)
        try:
            assert transparent.install(fd, backend="nft")  # both families: the pod has IPv6
        finally:
            os.close(fd)
        for ipv6 in (False, True):
            assert "-A OUTPUT -j SHOAL_ZTUNNEL" in nft_save(path, ipv6=ipv6)
            assert "SHOAL" not in netfilter.save(path, ipv6=ipv6)

        redirection.remove(target)
        for ipv6 in (False, True):
            assert "SHOAL" not in nft_save(path, ipv6=ipv6) and "SHOAL" not in nft_save(node_path, ipv6=ipv6)
        assert not redirection.installed(target)
    finally:
        kubelet.rmdir()
        CGROUP.rmdir()


def _saved(tables: backend.Tables, path: str, ipv6: bool) -> str:
    """The family's tables as -save prints them, without counters and comments (they differ between netns)."""
    return "\n".join(line for line in backend.run(path, [backend.tool("save", ipv6, tables.name)]).stdout.splitlines()
                     if not line.startswith("#"))


@needs_root("network namespaces, cgroups and iptables")
@pytest.mark.parametrize("which", ["legacy", "nft"])
def test_a_pod_seen_first_is_written_in_one_restore_per_family_the_same_rules_and_only_there(scratch, which,
                                                                                            monkeypatch):
    from node_agent import dns_capture
    CGROUP.mkdir(parents=True, exist_ok=True)
    runs = []
    real_run = iptables_backend.run  # the shared writer's (shoal.iptables_backend.Tables) runs
    monkeypatch.setattr(iptables_backend, "run", lambda where, argv, stdin=None: runs.append(argv[0]) or
                        real_run(where, argv, stdin))
    try:
        fresh, read = str(netns.path(scratch(f"fresh{which}"))), str(netns.path(scratch(f"read{which}")))
        capture = IptablesRedirector(which)
        target = PodTarget("uid-fresh", "demo", "web", POD_IP, fresh, str(CGROUP), dns_capture=True)

        def install(pod, **kwargs):
            capture.install(pod, also=lambda ipv6: dns_capture.family_rules(pod, ipv6), **kwargs)

        install(target, fresh=True)
        assert runs == [backend.tool("restore", True, which), backend.tool("restore", False, which)], runs
        install(PodTarget("uid-fresh", "demo", "web", POD_IP, read, str(CGROUP), dns_capture=True))  # reads first
        for ipv6 in (False, True):
            assert _saved(capture.tables, fresh, ipv6) == _saved(capture.tables, read, ipv6)
        assert "-A OUTPUT -j SHOAL_DNS\n-A OUTPUT -j SHOAL_OUTPUT" in _saved(capture.tables, fresh, False)

        # Where the chains are there already, `fresh` changes nothing and the rules are read and refilled.
        before = {ipv6: _saved(capture.tables, fresh, ipv6) for ipv6 in (False, True)}
        runs.clear()
        install(target, fresh=True)
        assert backend.tool("save", False, which) in runs
        assert {ipv6: _saved(capture.tables, fresh, ipv6) for ipv6 in (False, True)} == before
        assert capture.installed(target, also=lambda ipv6: dns_capture.family_rules(target, ipv6))

        # The ztunnel's return path: made in one restore, and a second install leaves one jump and one rule.
        fd = os.open(fresh, os.O_RDONLY)
        try:
            transparent.install(fd, backend=which, ipv6=False)
            transparent.install(fd, backend=which, ipv6=False)
            rules = netns.run(fresh.rsplit("/", 1)[1], ["ip", "rule", "show"], capture_output=True, text=True).stdout
            assert rules.count(f"{transparent.PRIORITY}:") == 1, rules
            assert _saved(capture.tables, fresh, False).count(f"-A OUTPUT -j {transparent.CHAIN}") == 1
            transparent.remove(fd)
        finally:
            os.close(fd)
        capture.remove(target)
        for ipv6 in (False, True):
            assert "SHOAL" not in _saved(capture.tables, fresh, ipv6)
    finally:
        CGROUP.rmdir()


def test_the_probe_snat_takes_the_agents_backend_and_has_no_default_of_its_own():
    """Probes once defaulted to legacy: a caller that forgot the backend wrote the node's probe SNAT (and read
    it back) in the tables an nft node does not use. Now it cannot be built, or read, without the backend."""
    from node_agent import probes
    with pytest.raises(TypeError, match="tables"):
        probes.Probes("system.slice/kubelet.service", None)
    with pytest.raises(TypeError, match="tables"):
        probes.covered(None, None)
    nft = backend.Tables("nft")
    assert probes.Probes("system.slice/kubelet.service", None, tables=nft).tables is nft


@needs_root("network namespaces and iptables")
def test_a_failed_drop_of_the_other_backend_s_chains_is_raised_not_swallowed(scratch, monkeypatch):
    """Removal swallowed any failure of the other backend as "no tables there": its chains stayed in the pod,
    capturing it, while the ledger forgot the pod. Only a backend that cannot read the netns is skipped."""
    from node_agent import backend as backends
    from node_agent.errors import RedirectError
    path = pod_netns(scratch)
    target = pod(path)
    legacy = IptablesRedirector("legacy")
    legacy.load()
    legacy.install(target)
    nft = IptablesRedirector("nft")
    nft.load()
    real_drop = backends.Tables.drop

    def refused(self, netns_path, chains, *, ipv6):
        if self.name == "legacy":
            raise RedirectError("iptables-legacy-restore in the pod's netns failed: refused")
        return real_drop(self, netns_path, chains, ipv6=ipv6)
    monkeypatch.setattr(backends.Tables, "drop", refused)
    with pytest.raises(RedirectError, match="refused"):
        nft.remove(target)
    assert "SHOAL_OUTPUT" in netfilter.save(path)  # still there, and said
    monkeypatch.undo()
    nft.remove(target)
    assert "SHOAL" not in netfilter.save(path) and "SHOAL" not in nft_save(path)
