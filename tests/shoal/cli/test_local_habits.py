"""kubectl's habits in `shoal local`, against a cluster's store (no daemon, no root)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from shoal.local.kubelet import restart_marker
from shoal.local.layout import Layout

from support.cli import SHOAL, shoal
from tests.shoal.cli.conftest import CLUSTER, local

WEB = """
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: web, labels: {app: server}}
spec:
  nodeName: node1
  containers: [{name: app, command: [sleep, infinity]}, {name: sidecarless, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: web}
spec: {selector: {app: server}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: front, namespace: web}
spec: {replicas: 1, selector: {matchLabels: {app: front}}, template: {metadata: {labels: {app: front}}, spec: {containers: [{name: app}]}}}
"""


def test_get_takes_comma_separated_kinds_and_all_with_ages(store):
    local("apply", "-f", "-", input=WEB)
    both = local("get", "pods,svc", "-n", "web").stdout.split("\n\n")
    assert [block.splitlines()[1].split()[0] for block in both] == ["pod/server", "service/server"]
    everything = local("get", "all", "-n", "web").stdout
    assert {"pod/server", "service/server", "deployment/front"} <= {line.split()[0] for line in everything.splitlines() if line}
    header, line = local("get", "svc", "-n", "web").stdout.splitlines()
    assert header.split()[-1] == "AGE" and re.fullmatch(r"\d+s", line.split()[-1]), line
    items = yaml.safe_load(local("get", "pods,svc", "-n", "web", "-o", "yaml").stdout)["items"]
    assert [i["kind"] for i in items] == ["Pod", "Service"]


def test_get_wide_shows_more_and_a_name_goes_with_one_kind(store):
    local("apply", "-f", "-", input=WEB)
    assert "SELECTOR" in local("get", "svc", "-n", "web", "-o", "wide").stdout
    assert "SELECTOR" not in local("get", "svc", "-n", "web").stdout
    result = local("get", "pods,svc", "server", "-n", "web", check=False)
    assert result.returncode == 1 and result.stderr.startswith("shoal: error: a name goes with one resource type")
    unknown = local("get", "pods,gizmos", check=False)
    assert unknown.returncode == 1 and "unknown resource type 'gizmos'" in unknown.stderr


def test_label_refuses_to_change_a_value_without_overwrite(store):
    local("apply", "-f", "-", input=WEB)
    local("label", "ns", "web", "team=a")
    refused = local("label", "ns", "web", "team=b", "tier=x", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("shoal: error: Namespace 'web' not changed: team is already 'a'; "
                                      "use --overwrite to change it")
    assert store.get("Namespace", None, "web")["metadata"]["labels"] == {"team": "a"}  # tier not set either
    local("label", "ns", "web", "team=a")        # the same value is no change
    local("label", "ns", "web", "team=b", "--overwrite")
    assert store.get("Namespace", None, "web")["metadata"]["labels"] == {"team": "b"}
    local("annotate", "svc", "server", "-n", "web", "note=one")
    assert local("annotate", "svc", "server", "-n", "web", "note=two", check=False).returncode == 1
    bad = local("label", "ns", "web", "Bad Key=x", check=False)
    assert bad.returncode == 1 and "not a valid key" in bad.stderr


def test_delete_of_a_missing_object_fails_unless_ignore_not_found(store):
    gone = "apiVersion: v1\nkind: Service\nmetadata: {name: nothing, namespace: default}\n"
    result = local("delete", "-f", "-", input=gone, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == ("shoal: error: Service 'nothing' not found in namespace default "
                                     "(--ignore-not-found to accept that)")
    assert local("delete", "-f", "-", "--ignore-not-found", input=gone).returncode == 0


def write_log(store, pod: str, container: str, text: str) -> None:
    """Where the kubelet writes: Layout.pod_log, under the test's run root."""
    path = store.dir.parent / Layout(CLUSTER).pod_log("web", pod, container).relative_to(Layout(CLUSTER).run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_logs_names_a_missing_container_and_shows_the_previous_run(store):
    local("apply", "-f", "-", input=WEB)
    missing = local("logs", "server", "-n", "web", "-c", "nginx", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("shoal: error: container 'nginx' is not in pod web/server; its containers: "
                                      "app, sidecarless")
    write_log(store, "server", "app", "first run\n" + restart_marker("app", 1, 3) + "second run\n"
              + restart_marker("app", 2, 3) + "third run\n")
    whole = local("logs", "server", "-n", "web", "-c", "app").stdout
    assert whole.count("--- shoal: restart ") == 2 and whole.endswith("third run\n")
    previous = local("logs", "server", "-n", "web", "-c", "app", "--previous").stdout
    assert previous.splitlines() == [restart_marker("app", 1, 3).strip()[:40] + previous.splitlines()[0][40:],
                                     "second run"]
    assert local("logs", "server", "-n", "web", "-c", "app", "--tail", "1").stdout == "third run\n"
    write_log(store, "server", "sidecarless", "only run\n")
    none = local("logs", "server", "-n", "web", "-c", "sidecarless", "-p", check=False)
    assert none.returncode == 1 and "has not restarted" in none.stderr


def test_a_closed_pipe_ends_quietly(store):
    local("apply", "-f", "-", input=WEB)
    write_log(store, "server", "app", "x" * 100 + "\n" * 20000)
    process = subprocess.Popen([*SHOAL, "local", "logs", "--cluster", CLUSTER, "-n", "web", "server", "-c", "app"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()          # the reader is gone before the first write, as `| head -0` would be
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141 and stderr == b""


def test_describe_any_kind_and_events(store):
    local("apply", "-f", "-", input=WEB + """
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: server, namespace: web}
spec: {hosts: [server], http: [{route: [{destination: {host: server, subset: v9}}]}]}
""", check=False)
    text = local("describe", "vs", "server", "-n", "web").stdout
    assert "ResolvedRefs=False UndefinedSubset" in text and "[SH0103]" in text
    header, line = local("get", "vs", "-n", "web").stdout.splitlines()
    assert header.split()[1:4] == ["ACCEPTED", "RESOLVED", "AGE"] and line.split()[1:3] == ["True", "False"]
    store.apply({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "web"},
                 "involvedObject": {"kind": "VirtualService", "name": "server", "namespace": "web"},
                 "reason": "ShoalInvalidConfig", "message": "planted", "type": "Warning",
                 "lastTimestamp": "2026-01-01T00:00:00Z"})
    events = local("events", "-n", "web").stdout
    assert "ShoalInvalidConfig" in events and "virtualservice/server" in events and "planted" in events
    assert "planted" in local("describe", "vs", "server", "-n", "web").stdout
    pod = local("describe", "pod", "server", "-n", "web").stdout
    assert "Enrolled:    no (neither the pod nor its namespace sets dataplane-mode ambient)" in pod


def test_the_current_cluster_comes_from_the_environment_or_the_only_one_up(store, tmp_path):
    local("apply", "-f", "-", input=WEB)
    implicit = shoal("local", "get", "svc", "-n", "web")        # the only cluster under this run root
    assert "server" in implicit.stdout
    named = shoal("local", "get", "svc", "-n", "web", env={"SHOAL_CLUSTER": "other"}, check=False)
    assert named.returncode == 1 and "cluster 'other' is not up" in named.stderr
    assert shoal("waypoint", "list", env={"KUBECONFIG": None}).stdout.strip() == "no waypoints"   # the same cluster
    listing = shoal("local", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "NODES", "REDIRECT", "IP-FAMILY", "DAEMON"]
    assert listing[1].split()[0] == CLUSTER
    second = type(store)("second", root=store.dir.parent.parent)
    second.init()
    ambiguous = shoal("local", "get", "svc", check=False)
    assert ambiguous.returncode == 1
    assert "several local clusters are up (clistore, second); choose one with --cluster NAME or SHOAL_CLUSTER" \
        in ambiguous.stderr
    waypoints = shoal("waypoint", "list", env={"KUBECONFIG": None}, check=False)
    assert waypoints.returncode == 1 and "several local clusters are up" in waypoints.stderr


def test_up_on_an_existing_cluster_says_what_differs_and_changes_nothing(store):
    config = store.dir.parent / "cluster.json"
    config.write_text(json.dumps({"nodes": 3, "redirect": "iptables"}))
    result = local("up", "--nodes", "2", "--ip-family", "dual", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (   # a cluster.json from before --ip-family is an IPv4 cluster
        f"shoal: error: cluster '{CLUSTER}' is up with 3 nodes, --redirect iptables and --ip-family ipv4; you asked "
        f"for --nodes 2 (it has 3), --ip-family dual (it has ipv4). Nothing changed: to change it, "
        f"`shoal local down --cluster {CLUSTER}` first")
    assert json.loads(config.read_text()) == {"nodes": 3, "redirect": "iptables"}


@pytest.mark.parametrize("argv", [("local", "get"), ("check", "--only", "nope"), ("describe", "pod")])
def test_usage_errors_exit_2(argv):
    assert shoal(*argv, check=False).returncode == 2


def test_logs_timestamps_take_the_first_checkpoint_that_covers_each_line(store):
    local("apply", "-f", "-", input=WEB)
    write_log(store, "server", "app", "one\ntwo\nthree\n")
    stamps = store.dir.parent / "logs" / "web_server_app.log.times"
    stamps.write_text("4 2026-01-01T00:00:01Z\n8 2026-01-01T00:00:05Z\n")   # 'three' is not covered yet
    out = local("logs", "server", "-n", "web", "-c", "app", "--timestamps").stdout.splitlines()
    assert out[:2] == ["2026-01-01T00:00:01Z one", "2026-01-01T00:00:05Z two"]
    when, line = out[2].split(" ")
    assert line == "three" and when > "2026-01-01T00:00:05Z"   # seen now
