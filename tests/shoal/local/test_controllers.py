"""The pure parts of the local cluster: deployments, scheduling, kube-proxy rules, hosts files."""

from __future__ import annotations

from shoal.local import controllers, services


def deployment(name="web", replicas=2, image_cmd="serve"):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "ns", "uid": "u"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "command": [image_cmd]}]}}}}


def test_deployment_creates_its_replicas_and_removes_extras():
    d = deployment(replicas=3)
    create, delete = controllers.reconcile_deployments([d], [])
    assert len(create) == 3 and not delete
    assert all(p["metadata"]["labels"]["app"] == "web" for p in create)
    smaller = deployment(replicas=1)
    create2, delete2 = controllers.reconcile_deployments([smaller], create)
    assert not create2 and len(delete2) == 2


def test_a_template_change_replaces_the_pods():
    old = controllers.deployment_pods(deployment())
    create, delete = controllers.reconcile_deployments([deployment(image_cmd="serve-v2")], old)
    assert len(create) == 2 and len(delete) == 2


def test_pods_of_a_deleted_deployment_go():
    old = controllers.deployment_pods(deployment())
    _, delete = controllers.reconcile_deployments([], old)
    assert len(delete) == 2


def test_scheduler_spreads_and_honours_node_selection():
    pods = [{"metadata": {"namespace": "ns", "name": f"p{i}"}, "spec": {}} for i in range(4)]
    pods.append({"metadata": {"namespace": "ns", "name": "pinned"},
                 "spec": {"nodeSelector": {"kubernetes.io/hostname": "node2"}}})
    pods.append({"metadata": {"namespace": "ns", "name": "bound"}, "spec": {"nodeName": "node1"}})
    bindings = controllers.schedule(pods, 2)
    assert bindings[("ns", "pinned")] == "node2"
    assert ("ns", "bound") not in bindings
    counts = {}
    for node in [*bindings.values(), "node1"]:
        counts[node] = counts.get(node, 0) + 1
    assert counts == {"node1": 3, "node2": 3}


def test_unschedulable_pods_are_explained():
    pod = {"metadata": {"namespace": "ns", "name": "p"}, "spec": {"nodeSelector": {"kubernetes.io/hostname": "node9"}}}
    assert "matches no node" in controllers.unschedulable(pod, 2)
    assert controllers.schedule([pod], 2) == {}


def ready_pod(name, ip, labels, ports=()):
    return {"metadata": {"namespace": "ns", "name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": list(ports)}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


def test_endpoints_resolve_named_ports_and_skip_unready_pods():
    svc = {"metadata": {"namespace": "ns", "name": "s"},
           "spec": {"selector": {"app": "a"}, "clusterIP": "198.18.16.10",
                    "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}}
    ready = ready_pod("a1", "198.19.1.2", {"app": "a"}, [{"name": "web", "containerPort": 8080}])
    unready = ready_pod("a2", "198.19.1.3", {"app": "a"})
    unready["status"]["conditions"][0]["status"] = "False"
    other = ready_pod("b", "198.19.1.4", {"app": "b"})
    eps = services.endpoints(svc, [ready, unready, other])
    assert eps == [services.Endpoint("198.19.1.2", (("http", 80, 8080),))]
    rules = services.proxy_rules([(svc, eps)])
    assert "-d 198.18.16.10/32 -p tcp --dport 80" in rules
    assert "DNAT --to-destination 198.19.1.2:8080" in rules


def test_proxy_rules_balance_evenly_and_reject_without_endpoints():
    svc = {"metadata": {"namespace": "ns", "name": "s"},
           "spec": {"clusterIP": "198.18.16.11", "ports": [{"port": 80}]}}
    eps = [services.Endpoint(f"198.19.1.{i}", (("", 80, 80),)) for i in (2, 3, 4)]
    rules = services.proxy_rules([(svc, eps)])
    assert "--probability 0.3333333333" in rules and "--probability 0.5000000000" in rules
    assert rules.count("DNAT") == 3
    empty = services.proxy_rules([(svc, [])])
    assert "REJECT --reject-with tcp-reset" in empty.split("*filter")[1]


def test_hosts_file_gives_short_names_only_in_the_own_namespace():
    a = {"metadata": {"namespace": "ns", "name": "a"}, "spec": {"clusterIP": "198.18.16.10"}}
    b = {"metadata": {"namespace": "other", "name": "b"}, "spec": {"clusterIP": "198.18.16.11"}}
    text = services.hosts_file("ns", [a, b])
    assert "198.18.16.10\ta.ns.svc.cluster.local a.ns.svc a.ns a\n" in text
    assert "198.18.16.11\tb.other.svc.cluster.local b.other.svc b.other\n" in text
