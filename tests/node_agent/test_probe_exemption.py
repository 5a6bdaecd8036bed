"""Only the kubelet's probes pass as probes, and no pod marks its way out of capture (both redirect modes).

The probe exemption (the node SNATs to 169.254.7.127, which capture lets
through to the app) covers the kubelet's cgroup only: another host-network
process reaching an enrolled pod is captured like any peer, so a STRICT pod
refuses it. The 0x539 mark exempts the ztunnel's sockets, never a pod's own:
a pod process that sets it is captured all the same, and cannot make its flow
pass the peer's inbound capture either (in the eBPF mode, only the ztunnel's
cgroup can record a flow as uncaptured).
"""

from __future__ import annotations

import os

import pytest

from shoal.contracts import MARK, PROBE_SOURCE

from na_topology import POD_IPS, Server, client_code, listen_in, original_dst
from node_agent import netfilter, probes
from node_agent.hostmounts import hierarchy_path
from support.root import needs_root

pytestmark = needs_root("network namespaces, iptables, eBPF, cgroups")


@pytest.fixture
def meshed(topo, redirection):
    """Pods a and b enrolled, each with the ztunnel's 15001 and 15006 (played by the test)."""
    listeners = {}
    for name in ("a", "b"):
        pod = topo.pods[name]
        redirection.install(pod)
        ns = topo.pod_netns(name)
        listeners[name] = (listen_in(ns, 15001), listen_in(ns, 15006))
        redirection.set_inbound_listener(pod, listeners[name][1].fileno())
    yield listeners
    for name in ("a", "b"):
        for sock in listeners[name]:
            sock.close()
        redirection.remove(topo.pods[name])


def test_the_kubelets_probe_reaches_the_app_as_a_probe(topo, meshed):
    with listen_in(topo.pod_netns("a"), 8080) as app:
        server = Server(app, b"healthy")
        result = topo.run_on_node(client_code(POD_IPS["a"], 8080), topo.kubelet_cgroup)
        assert result.returncode == 0, result.stderr
        assert server.result().peer[0] == PROBE_SOURCE
        assert result.stdout.strip().endswith("healthy")


def test_another_host_process_is_captured_like_any_peer(topo, meshed):
    """Not the kubelet: no probe source, so the pod's capture hands it to the ztunnel (which STRICT refuses)."""
    _, inbound = meshed["a"]
    with listen_in(topo.pod_netns("a"), 8081) as app:
        captured = Server(inbound, b"ztunnel")
        result = topo.run_on_node(client_code(POD_IPS["a"], 8081), topo.host_cgroup)
        captured.result()
        assert captured.data == b"hello", result.stderr
        assert captured.peer[0] != PROBE_SOURCE
        assert original_dst(captured.conn) == (POD_IPS["a"], 8081)
        captured.conn.close()
        app.settimeout(0.2)
        with pytest.raises(TimeoutError):
            app.accept()


def test_a_pod_process_that_sets_the_mark_is_still_captured(topo, meshed):
    outbound, _ = meshed["a"]
    with listen_in(topo.node, 6070) as outside:  # an address outside the mesh
        captured = Server(outbound, b"ztunnel")
        result = topo.run_in_pod("a", client_code("169.254.1.1", 6070, mark=MARK))
        captured.result()
        assert captured.data == b"hello", result.stderr
        assert original_dst(captured.conn) == ("169.254.1.1", 6070)
        captured.conn.close()
        outside.settimeout(0.2)
        with pytest.raises(TimeoutError):
            outside.accept()


def test_a_marked_pod_cannot_pass_the_peers_inbound_capture(topo, meshed):
    """Pod b marks its socket and dials pod a's app: it lands on b's own 15001, never on a's app."""
    outbound_b, _ = meshed["b"]
    with listen_in(topo.pod_netns("a"), 8082) as app:
        captured = Server(outbound_b, b"ztunnel-b")
        result = topo.run_in_pod("b", client_code(POD_IPS["a"], 8082, mark=MARK))
        captured.result()
        assert captured.data == b"hello", result.stderr
        assert original_dst(captured.conn) == (POD_IPS["a"], 8082)
        captured.conn.close()
        app.settimeout(0.2)
        with pytest.raises(TimeoutError):
            app.accept()


def test_a_kubelet_restarted_in_a_new_cgroup_is_matched_again(topo, redirection, meshed):
    """systemd recreates a restarted kubelet's cgroup; the kernel bound the old rule to the old one."""
    assert not redirection.probes_stale()
    topo.kubelet_cgroup.rmdir()  # empty: every probe process above has exited
    topo.kubelet_cgroup.mkdir()
    assert redirection.probes_stale()
    redirection.sync_probes()  # what the agent's next reconcile does when probes_stale()
    assert not redirection.probes_stale()
    with listen_in(topo.pod_netns("a"), 8083) as app:
        server = Server(app, b"healthy")
        result = topo.run_on_node(client_code(POD_IPS["a"], 8083), topo.kubelet_cgroup)
        assert result.returncode == 0, result.stderr
        assert server.result().peer[0] == PROBE_SOURCE


def test_an_older_agents_rules_are_not_taken_as_installed(topo, redirection, test_bpffs):
    """Rules that exempt every marked socket, or SNAT every host process, are replaced when the agent restarts."""
    from node_agent.redirect import Redirection, choose
    pod = topo.pods["a"]
    redirection.install(pod)
    try:
        older_snat = dict(protocol="tcp", dst=f"{pod.ip}/32", matches=[("owner", {"socket_exists": ""})],
                          target="SNAT", target_args={"to_source": PROBE_SOURCE})
        redirection.tables.ensure(topo.node, probes.CHAINS, {probes.CHAIN: [older_snat]}, ipv6=False)
        if redirection.mode == "iptables":
            from node_agent.iptables import CAPTURE_CHAINS, OUTPUT_CHAIN
            older_output = [dict(out_interface="lo", target="RETURN"),
                            dict(matches=[("mark", {"mark": hex(MARK)})], target="RETURN"),
                            dict(protocol="tcp", target="REDIRECT", target_args={"to_ports": "15001"})]
            output_only = {"nat": CAPTURE_CHAINS["nat"][:1]}
            redirection.tables.ensure(pod.netns, output_only, {OUTPUT_CHAIN: older_output}, ipv6=False)
            assert not redirection.capture.installed(pod)

        again = Redirection(choose(redirection.mode, f"test-{os.getpid()}", bpffs=test_bpffs),
                            redirection.ledger.dir.parent, node_netns=topo.node,
                            kubelet_cgroup=str(topo.kubelet_cgroup))
        try:
            assert not again.installed(pod)
            again.install(pod)
            assert again.installed(pod)
        finally:
            again.close()
        assert "--socket-exists" not in netfilter.save(topo.node)
        assert f'-m cgroup --path "{hierarchy_path(topo.kubelet_cgroup)}"' in netfilter.save(topo.node)
    finally:
        redirection.remove(pod)
