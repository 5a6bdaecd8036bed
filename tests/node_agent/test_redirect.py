"""Redirection in a real pod netns, in both modes (the `redirection` fixture is parametrized).

The test process plays the ztunnel: it holds listeners inside pod a's netns
(and sits in its own cgroup, where the eBPF mode attaches its SO_ORIGINAL_DST
answer). Apps are real processes in the pods' netns and cgroups.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading

import pytest

from shoal import netns
from shoal.contracts import MARK, PROBE_SOURCE

from na_topology import (POD_IPS, Server, bpftool_cgroup, bpftool_links, client_code, listen_in, netns_inode,
                         original_dst, socket_cookie)
from na_topology import sockhash_cookie as pinned_sockhash_cookie
from node_agent import netfilter, probes
from support.rules import shoal_rules
from support.root import needs_root

pytestmark = needs_root("network namespaces, iptables, eBPF")

@pytest.fixture
def enrolled(redirection, topo):
    pod = topo.pods["a"]
    redirection.install(pod)
    yield pod
    redirection.remove(pod)


@pytest.fixture
def ztunnel_listeners(topo, redirection, enrolled):
    """15001 and 15006 in pod a, as the ztunnel holds them (15006 handed to the eBPF sockhash)."""
    ns = topo.pod_netns("a")
    outbound, inbound = listen_in(ns, 15001), listen_in(ns, 15006)
    redirection.set_inbound_listener(enrolled, inbound.fileno())
    yield outbound, inbound
    outbound.close()
    inbound.close()


def test_outbound_connect_lands_on_15001_with_the_original_destination(topo, ztunnel_listeners):
    outbound, _ = ztunnel_listeners
    server = Server(outbound, b"from-ztunnel")
    result = topo.run_in_pod("a", client_code(POD_IPS["b"], 8080))
    server.result()
    assert result.returncode == 0, result.stderr
    assert server.data == b"hello"
    assert original_dst(server.conn) == (POD_IPS["b"], 8080)
    # The app's own view is untouched: its peer is the address it dialled.
    assert result.stdout.strip() == f"{POD_IPS['b']}:8080 from-ztunnel"
    server.conn.close()


def test_inbound_from_another_pod_lands_on_15006_with_the_original_destination(topo, ztunnel_listeners):
    _, inbound = ztunnel_listeners
    server = Server(inbound, b"inbound-ok")
    result = topo.run_in_pod("b", client_code(POD_IPS["a"], 8080))
    server.result()
    assert result.returncode == 0, result.stderr
    assert server.data == b"hello"
    assert server.peer[0] == POD_IPS["b"]
    assert original_dst(server.conn) == (POD_IPS["a"], 8080)
    server.conn.close()


def test_hbone_port_is_not_captured(topo, ztunnel_listeners):
    with listen_in(topo.pod_netns("a"), 15008) as hbone:
        server = Server(hbone, b"hbone")
        result = topo.run_in_pod("b", client_code(POD_IPS["a"], 15008))
        assert server.result().data == b"hello"
        assert result.stdout.strip().endswith("hbone")


def test_the_ztunnels_marked_sockets_are_not_captured(topo, ztunnel_listeners):
    """The ztunnel's own sockets in the pod (marked, made outside the pod's cgroup) go where they were sent."""
    with listen_in(topo.pod_netns("b"), 9090) as target:
        server = Server(target, b"direct")
        # cgroup=False: the process stays in the test's cgroup, the ztunnel's
        result = topo.run_in_pod("a", client_code(POD_IPS["b"], 9090, mark=MARK), cgroup=False)
        assert result.returncode == 0, result.stderr
        assert server.result().data == b"hello"
        assert result.stdout.strip() == f"{POD_IPS['b']}:9090 direct"


def test_loopback_is_not_captured(topo, ztunnel_listeners):
    with listen_in(topo.pod_netns("a"), 7070, "127.0.0.1") as local:
        server = Server(local, b"loop")
        result = topo.run_in_pod("a", client_code("127.0.0.1", 7070))
        assert result.returncode == 0, result.stderr
        assert server.result().data == b"hello"


def test_kubelet_probes_reach_the_app_not_the_ztunnel(topo, redirection, ztunnel_listeners):
    """The kubelet's TCP is SNATed to the probe address, which the pod's capture lets through."""
    assert POD_IPS["a"] in probes.covered(topo.node, None, tables=redirection.tables)
    with listen_in(topo.pod_netns("a"), 8080) as app:
        server = Server(app, b"healthy")
        result = topo.run_on_node(client_code(POD_IPS["a"], 8080, payload=b"GET /healthz"), topo.kubelet_cgroup)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("healthy")
        assert server.result().peer[0] == PROBE_SOURCE


def test_pods_outside_the_mesh_are_untouched(topo, redirection, ztunnel_listeners):
    with listen_in(topo.node, 6060) as node_listener:
        server = Server(node_listener, b"node")
        result = topo.run_in_pod("b", client_code("169.254.1.1", 6060))
        assert result.returncode == 0, result.stderr
        assert server.result().data == b"hello"
    assert shoal_rules(topo.pod_netns("b")) == []
    assert bpftool_cgroup(topo.pods["b"].cgroup) == []


def test_install_is_idempotent_and_removal_leaves_nothing(topo, redirection):
    pod = topo.pods["a"]
    for _ in range(3):
        redirection.install(pod)
    assert redirection.installed(pod)
    saved = netfilter.save(topo.pod_netns("a"))
    node_saved = netfilter.save(topo.node)
    if redirection.mode == "iptables":
        assert saved.count("-A OUTPUT -j SHOAL_OUTPUT") == 1
        assert saved.count("-A PREROUTING -j SHOAL_PREROUTING") == 1
        assert saved.count("--to-ports 15001") == 1 and saved.count("--to-ports 15006") == 1
    else:
        names = [line.split()[-1] for line in bpftool_cgroup(pod.cgroup)]
        assert sorted(names) == ["shoal_connect4", "shoal_connect6", "shoal_getpeer4", "shoal_getpeer6",
                                 "shoal_sendmsg6", "shoal_sockops"], names
        assert len(re.findall(rf"netns_ino {netns_inode(pod.netns)}\b", bpftool_links())) == 1
    assert node_saved.count(f"-d {POD_IPS['a']}/32") == 1

    redirection.remove(pod)
    assert not redirection.installed(pod)
    assert shoal_rules(topo.pod_netns("a")) == []
    assert shoal_rules(topo.node) == []
    assert bpftool_cgroup(pod.cgroup) == []
    assert f"netns_ino {netns_inode(pod.netns)}" not in bpftool_links()
    redirection.remove(pod)  # removing twice is fine

    # And traffic flows as if the mesh had never been there.
    with listen_in(topo.pod_netns("b"), 8081) as app:
        server = Server(app, b"plain")
        result = topo.run_in_pod("a", client_code(POD_IPS["b"], 8081))
        assert result.returncode == 0, result.stderr
        assert server.result().data == b"hello"


def test_a_fresh_agent_finds_what_is_installed_and_adds_no_duplicate(topo, redirection, test_bpffs, tmp_path):
    """A restarted agent (new process state, same pins and ledger) sees the pod as installed."""
    from node_agent.redirect import Redirection, choose
    pod = topo.pods["a"]
    redirection.install(pod)
    try:
        again = Redirection(choose(redirection.mode, f"test-{os.getpid()}", bpffs=test_bpffs),
                            redirection.ledger.dir.parent, node_netns=topo.node,
                            kubelet_cgroup=str(topo.kubelet_cgroup))
        assert set(again.recorded()) == {pod.uid}
        assert again.installed(pod)
        again.install(pod)
        if redirection.mode == "ebpf":
            assert len(bpftool_cgroup(pod.cgroup)) == 6
            assert again.capture.prog_ids == redirection.capture.prog_ids  # the very same programs
        else:
            assert netfilter.save(topo.pod_netns("a")).count("--to-ports 15001") == 1
        again.close()
    finally:
        redirection.remove(pod)


def test_inbound_without_a_ztunnel_listener_does_not_reach_the_app(topo, redirection, enrolled):
    """Fail closed: while no ztunnel serves the pod, inbound traffic is not let through to the app."""
    with listen_in(topo.pod_netns("a"), 8082) as app:
        result = topo.run_in_pod("b", client_code(POD_IPS["a"], 8082).replace("settimeout(5)", "settimeout(1)"))
        assert result.returncode != 0
        app.settimeout(0.2)
        with pytest.raises(socket.timeout):
            app.accept()


def test_the_ztunnel_delivering_to_the_app_over_loopback_is_not_steered(topo, ztunnel_listeners):
    """The ztunnel hands inbound traffic to the app from inside the pod: that must reach the app."""
    with listen_in(topo.pod_netns("a"), 8083) as app:
        server = Server(app, b"app")
        delivery = netns.socket_in(topo.pod_netns("a"))
        delivery.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        delivery.settimeout(5)
        delivery.connect((POD_IPS["a"], 8083))
        delivery.sendall(b"hello")
        assert delivery.recv(10) == b"app"
        delivery.close()
        assert server.result().data == b"hello"


def bpftool_map_entries(pinned) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pinned)], capture_output=True, text=True,
                         check=True).stdout
    return len(json.loads(out or "[]"))


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)  # the eBPF mode's maps only
def test_ebpf_maps_hold_nothing_for_closed_connections(topo, redirection, ztunnel_listeners):
    outbound, _ = ztunnel_listeners
    prog_dir = redirection.capture.prog_dir
    code = f"""
import socket
for i in range(30):
    s = socket.socket()
    s.settimeout(5)
    s.connect(({POD_IPS['b']!r}, 9000 + i))
    s.recv(1)
    s.close()
print("done")
"""
    accepted = []

    def accept_all():
        for _ in range(30):
            conn, _ = outbound.accept()
            accepted.append(original_dst(conn))
            conn.sendall(b"x")
            conn.close()

    thread = threading.Thread(target=accept_all, daemon=True)
    thread.start()
    result = topo.run_in_pod("a", code)
    thread.join(10)
    assert result.stdout.strip() == "done", result.stderr
    assert accepted == [(POD_IPS["b"], 9000 + i) for i in range(30)]
    # The port-keyed hand-over entries were consumed at accept. (The per-socket
    # records are socket storage: the kernel frees them with their sockets, and
    # bpftool cannot list that map type.)
    assert bpftool_map_entries(prog_dir / "orig_by_port") == 0
    if redirection.mode == "ebpf":
        assert bpftool_map_entries(redirection.capture.prog_dir / "uncaptured") == 0


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)  # the eBPF mode's programs only
def test_a_newer_build_replaces_an_older_ones_programs(topo, redirection, test_bpffs, tmp_path, monkeypatch):
    """An agent upgraded to changed C source attaches its programs and detaches the old ones: no duplicates."""
    from node_agent import ebpf
    from node_agent.redirect import Redirection
    pod = topo.pods["a"]
    redirection.install(pod)
    old_ids = set(redirection.capture.prog_ids.values())
    source = ebpf.SOURCE.read_text() + "\n// a newer build\n"
    newer_source = tmp_path / "redirect.c"
    newer_source.write_text(source)
    monkeypatch.setattr(ebpf, "SOURCE", newer_source)
    newer = Redirection(ebpf.EbpfRedirector(f"test-{os.getpid()}", test_bpffs), redirection.ledger.dir.parent,
                        node_netns=topo.node, kubelet_cgroup=str(topo.kubelet_cgroup))
    try:
        assert not newer.installed(pod)  # the old build's programs are not this build's
        newer.install(pod)
        assert newer.installed(pod)
        attached = bpftool_cgroup(pod.cgroup)
        assert len(attached) == 6
        ids = {int(line.split()[0]) for line in attached}
        assert not ids & old_ids
        assert not (redirection.capture.prog_dir).exists()  # the old build was unpinned
    finally:
        newer.remove(pod)
        newer.close()
    assert bpftool_cgroup(pod.cgroup) == []


def test_unenrolling_also_removes_the_ztunnels_return_path(topo, redirection):
    """A pod that leaves the mesh while no ztunnel runs keeps none of the ztunnel's source-IP rules."""
    from shoal import transparent

    pod = topo.pods["a"]
    redirection.install(pod)
    fd = os.open(pod.netns, os.O_RDONLY)
    try:
        transparent.install(fd)  # as the ztunnel does when the pod is handed over
    finally:
        os.close(fd)

    def rules() -> str:
        return subprocess.run(["ip", "netns", "exec", topo.pod_netns("a"), "ip", "-4", "rule", "show"],
                              capture_output=True, text=True, check=True).stdout

    assert transparent.CHAIN in netfilter.save(topo.pod_netns("a"))
    assert f"{transparent.PRIORITY}:" in rules()
    redirection.remove(pod)  # the ztunnel is gone: nobody else would remove them
    assert shoal_rules(topo.pod_netns("a"), transparent.CHAIN) == []
    assert f"{transparent.PRIORITY}:" not in rules()


LOAD_IN_A_FRESH_AGENT = """
import json, sys
from pathlib import Path
from node_agent.ebpf import EbpfRedirector
capture = EbpfRedirector(sys.argv[1], Path(sys.argv[2]))
capture.load()
mapped = open("/proc/self/maps").read()
print(json.dumps({"bcc_imported": "bcc" in sys.modules, "libbcc_mapped": "libbcc" in mapped,
                  "llvm_mapped": "LLVM" in mapped, "prog_ids": capture.prog_ids}))
"""


def test_ebpf_programs_are_compiled_in_a_child_and_bcc_never_loads_in_the_agent(test_bpffs, tmp_path):
    """bcc and LLVM stay in the short-lived builder; its pins outlive it (and the agent that asked for them)."""
    from node_agent.ebpf import PROGRAMS, EbpfRedirector
    agent_id = f"test-child-build-{os.getpid()}"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    first = subprocess.run([sys.executable, "-c", LOAD_IN_A_FRESH_AGENT, agent_id, str(test_bpffs)],
                           capture_output=True, text=True, timeout=600, cwd=repo)
    again = EbpfRedirector(agent_id, test_bpffs)
    try:
        assert first.returncode == 0, first.stderr
        loaded = json.loads(first.stdout.strip().splitlines()[-1])
        assert loaded == {**loaded, "bcc_imported": False, "libbcc_mapped": False, "llvm_mapped": False}
        assert set(loaded["prog_ids"]) == set(PROGRAMS)
        # Both the builder and the agent process are gone: the programs live on in their pins.
        again.load()
        assert again.prog_ids == loaded["prog_ids"]
    finally:
        again.unload()
    assert not (test_bpffs / "shoal" / agent_id).exists()


def test_a_build_that_does_not_compile_names_the_prerequisite_and_leaves_no_pins(test_bpffs, tmp_path, monkeypatch):
    from node_agent import ebpf
    from node_agent.errors import PrerequisiteMissing
    broken = tmp_path / "redirect.c"
    broken.write_text(ebpf.SOURCE.read_text() + "\nthis is not C;\n")
    monkeypatch.setattr(ebpf, "SOURCE", broken)
    capture = ebpf.EbpfRedirector(f"test-broken-build-{os.getpid()}", test_bpffs)
    try:
        with pytest.raises(PrerequisiteMissing) as info:
            capture.load()
        assert "could not compile" in str(info.value) and "--redirect iptables" in str(info.value)
        assert not capture.prog_dir.exists()
        assert capture.prog_fds == {}
    finally:
        capture.unload()


def _waiting_for_a_flock(pid: int) -> bool:
    """Is `pid` blocked on a flock (a `->` line of /proc/locks)?"""
    with open("/proc/locks") as locks:
        return any("->" in line and "FLOCK" in line and f" {pid} " in line for line in locks)


def test_a_build_waits_for_an_orphaned_one_and_then_builds_nothing(test_bpffs):
    """kill -9 of the agent leaves its builder running; the restarted agent's builder takes its turn after it."""
    import fcntl
    from node_agent import ebpf, libbpf
    from support.polling import eventually
    agent_dir = test_bpffs / "shoal" / f"test-build-turns-{os.getpid()}"
    prog_dir = agent_dir / ebpf.source_hash()
    agent_dir.mkdir(parents=True)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = [sys.executable, "-m", "node_agent.ebpf_build", str(ebpf.SOURCE), str(prog_dir)]
    held = os.open(agent_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)   # the orphaned build, still at work
        waiting = subprocess.Popen(build, cwd=repo, stderr=subprocess.PIPE, text=True)
        eventually(lambda: _waiting_for_a_flock(waiting.pid), timeout=120, what="the second build waiting its turn")
        assert not prog_dir.exists()
        fcntl.flock(held, fcntl.LOCK_UN)
        assert waiting.wait(timeout=600) == 0, waiting.stderr.read()
        first = {}
        for name in ebpf.PROGRAMS:
            fd = libbpf.get_pinned(str(prog_dir / name))
            first[name] = libbpf.prog_info(fd)[0]
            os.close(fd)
        again = subprocess.run(build, cwd=repo, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        for name, prog_id in first.items():   # the set was whole: nothing rebuilt
            fd = libbpf.get_pinned(str(prog_dir / name))
            assert libbpf.prog_info(fd)[0] == prog_id
            os.close(fd)
    finally:
        os.close(held)
        shutil.rmtree(agent_dir, ignore_errors=True)


def in_sockhash(redirection, address: str) -> bool:
    """Does the agent's sockhash hold a key for this address?"""
    return sockhash_cookie(redirection, address) is not None


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)  # the eBPF mode's sockhash only
def test_an_address_the_pod_loses_or_a_pod_that_leaves_leaves_no_sockhash_key(topo, redirection):
    """A stale key would steer inbound traffic for an address another pod gets next to this pod's listener."""
    kept, lost = POD_IPS["a"], "198.19.250.7"
    two = dataclasses.replace(topo.pods["a"], ips=(kept, lost))
    redirection.install(two)
    with listen_in(topo.pod_netns("a"), 15006) as inbound:
        try:
            redirection.set_inbound_listener(two, inbound.fileno())
            assert in_sockhash(redirection, kept) and in_sockhash(redirection, lost)
            one = dataclasses.replace(two, ips=(kept,))
            redirection.install(one)  # the pod lost an address (its listener is still open)
            assert not in_sockhash(redirection, lost)
            assert in_sockhash(redirection, kept)
            redirection.remove(one)
            assert not in_sockhash(redirection, kept) and not in_sockhash(redirection, lost)
        finally:
            redirection.remove(two)


def sockhash_cookie(redirection, address: str) -> int | None:
    return pinned_sockhash_cookie(redirection.capture.sockhash_fd, address)


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)  # the eBPF mode's sockhash only
@pytest.mark.parametrize("old_owner_goes", ["installed without it", "removed"])
def test_an_address_taken_over_keeps_the_new_owners_key_when_the_old_owner_lets_go(topo, redirection,
                                                                                   old_owner_goes):
    """Pod b takes over an address (and the ztunnel hands b's listener over) before pod a, which held it, is
    installed again without it or removed: a's letting go must not delete b's key, else b's inbound for
    that address is dropped until b's next Ack."""
    moved = "198.19.250.8"
    a = dataclasses.replace(topo.pods["a"], ips=(POD_IPS["a"], moved))
    b = dataclasses.replace(topo.pods["b"], ips=(POD_IPS["b"], moved))
    redirection.install(a)
    with listen_in(topo.pod_netns("a"), 15006) as inbound_a, listen_in(topo.pod_netns("b"), 15006) as inbound_b:
        try:
            redirection.set_inbound_listener(a, inbound_a.fileno())
            redirection.install(b)
            redirection.set_inbound_listener(b, inbound_b.fileno())
            assert sockhash_cookie(redirection, moved) == socket_cookie(inbound_b)
            if old_owner_goes == "removed":
                redirection.remove(a)
            else:
                redirection.install(dataclasses.replace(a, ips=(POD_IPS["a"],)))
            assert sockhash_cookie(redirection, moved) == socket_cookie(inbound_b)  # still b's
            assert sockhash_cookie(redirection, POD_IPS["b"]) == socket_cookie(inbound_b)
            redirection.remove(b)  # the last holder: now it goes
            assert sockhash_cookie(redirection, moved) is None
        finally:
            redirection.remove(a)
            redirection.remove(b)


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)
def test_an_address_taken_over_but_not_yet_acked_fails_closed_when_the_old_owner_lets_go(topo, redirection):
    """Pod b is given the address, but the ztunnel has not handed b's listener over yet: a's key must go when
    a lets go of it (b's inbound there is dropped until b's Ack), not stay steering it to a's listener."""
    moved = "198.19.250.9"
    a = dataclasses.replace(topo.pods["a"], ips=(POD_IPS["a"], moved))
    b = dataclasses.replace(topo.pods["b"], ips=(POD_IPS["b"], moved))
    redirection.install(a)
    with listen_in(topo.pod_netns("a"), 15006) as inbound_a:
        try:
            redirection.set_inbound_listener(a, inbound_a.fileno())
            redirection.install(b)  # no Ack of b yet
            assert sockhash_cookie(redirection, moved) == socket_cookie(inbound_a)
            redirection.install(dataclasses.replace(a, ips=(POD_IPS["a"],)))
            assert sockhash_cookie(redirection, moved) is None
            assert sockhash_cookie(redirection, POD_IPS["a"]) == socket_cookie(inbound_a)
        finally:
            redirection.remove(a)
            redirection.remove(b)


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)
def test_after_an_agent_restart_a_pod_letting_go_keeps_the_keys_of_other_pods_listeners(topo, redirection, tmp_path):
    """Pod b took over an address from pod a (and its listener was handed over) before the agent restarted;
    the restarted agent knows whose listener each key holds before any Ack: removing a keeps b's traffic
    flowing, at its own address and at the one it took over, and a's address steers nowhere."""
    from node_agent.redirect import Redirection, choose
    moved = "198.19.250.10"
    a = dataclasses.replace(topo.pods["a"], ips=(POD_IPS["a"], moved))
    b = dataclasses.replace(topo.pods["b"], ips=(POD_IPS["b"], moved))
    routes = [(topo.pod_netns("b"), "addr", [f"{moved}/32", "dev", "eth0"]),
              (topo.node, "route", [f"{moved}/32", "dev", topo.layout.pod_veth("demo", b.name)])]
    for where, what, argv in routes:  # the moved address really is b's: traffic to it reaches b's netns
        subprocess.run(["ip", "-n", where, what, "add", *argv], check=True, capture_output=True)

    def agent():  # one agent's life: its own capture (the pins of the fixture's agent id) and this state dir
        capture = choose("ebpf", redirection.capture.agent_dir.name, bpffs=redirection.capture.bpffs)
        return Redirection(capture, tmp_path / "state", node_netns=topo.node, kubelet_cgroup=str(topo.kubelet_cgroup))

    before, after = agent(), None
    try:
        with listen_in(topo.pod_netns("a"), 15006) as inbound_a, listen_in(topo.pod_netns("b"), 15006) as inbound_b:
            before.install(a)
            before.set_inbound_listener(a, inbound_a.fileno())
            before.install(b)
            before.set_inbound_listener(b, inbound_b.fileno())
            before.close()
            after = agent()
            after.remove(a)  # the restarted agent, before the ztunnel acked anything to it
            for address in (POD_IPS["b"], moved):
                server = Server(inbound_b, b"b-inbound")
                result = topo.run_in_pod("a", client_code(address, 8080))
                server.result()
                assert result.returncode == 0, result.stderr
                assert server.data == b"hello" and original_dst(server.conn) == (address, 8080)
                server.conn.close()
            assert sockhash_cookie(after, moved) == socket_cookie(inbound_b)
            assert sockhash_cookie(after, POD_IPS["a"]) is None
            after.remove(b)  # the last holder: now its keys go
            assert sockhash_cookie(after, moved) is None and sockhash_cookie(after, POD_IPS["b"]) is None
    finally:
        after = after or agent()
        after.remove(a)
        after.remove(b)
        after.close()
        for where, what, argv in reversed(routes):
            subprocess.run(["ip", "-n", where, what, "del", *argv], capture_output=True)


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)
def test_a_pod_s_sk_lookup_link_is_replaced_without_a_moment_unlinked(topo, redirection, monkeypatch):
    """Replacing a pod's link to an older program (an upgrade) unpinned the old one before making the new:
    for that moment, and for good when the new one could not be made, the pod's inbound reached the app
    around the mesh. The new link is pinned over the old one; a failure leaves the old in place."""
    from node_agent import ebpf, libbpf
    from node_agent.errors import BpfError
    pod = topo.pods["a"]
    capture = redirection.capture
    redirection.install(pod)
    try:
        assert len(re.findall(rf"netns_ino {netns_inode(pod.netns)}\b", bpftool_links())) == 1
        monkeypatch.setitem(capture.prog_ids, "shoal_sk_lookup", -1)  # the pinned link's program is "older"

        def refused(*args):
            raise BpfError("create link (type 36)", 1)
        monkeypatch.setattr(libbpf, "link_create", refused)
        with pytest.raises(BpfError):
            capture._link_netns(pod)
        assert (capture.links_dir / ebpf._safe(pod.uid)).exists()  # the old link stays pinned, and linked
        assert len(re.findall(rf"netns_ino {netns_inode(pod.netns)}\b", bpftool_links())) == 1
        monkeypatch.undo()
        monkeypatch.setitem(capture.prog_ids, "shoal_sk_lookup", -1)
        capture._link_netns(pod)  # replaced: one link, to the program of this build
        monkeypatch.undo()
        assert len(re.findall(rf"netns_ino {netns_inode(pod.netns)}\b", bpftool_links())) == 1
        assert redirection.installed(pod)
        assert not list(capture.links_dir.glob("*-new"))
    finally:
        redirection.remove(pod)


@pytest.mark.parametrize("redirection", ["ebpf"], indirect=True)
def test_the_record_of_ztunnel_cgroups_keeps_only_those_still_there(topo, redirection):
    """Each ztunnel restart is a new pod, so a new cgroup: the record grew by one line per restart, for good."""
    gone, new = topo.cgroup_dir / "ztunnel-gone", topo.cgroup_dir / "ztunnel-new"
    gone.mkdir()
    try:
        redirection.attach_ztunnel(gone)
        gone.rmdir()  # that ztunnel's pod went, and its cgroup with it
        new.mkdir()
        redirection.attach_ztunnel(new)
        assert redirection.ztunnel_cgroups() == [str(topo.ztunnel_cgroup), str(new)]
    finally:
        redirection.capture.detach_ztunnel(new)
        for cgroup in (gone, new):
            if cgroup.exists():
                cgroup.rmdir()
