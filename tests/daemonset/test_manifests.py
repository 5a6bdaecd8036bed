"""The Kubernetes manifests in daemonset/: complete, well-formed, and in step with the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shoal.cli import build_parser
from shoal.install.kustomize import render_objects

DAEMONSET = Path(__file__).resolve().parents[2] / "daemonset"


def objects() -> list[dict]:
    """What `kubectl kustomize daemonset/` prints (tests/daemonset/test_kustomize.py holds them equal)."""
    return render_objects(DAEMONSET)


def containers() -> list[tuple[str, dict]]:
    found = []
    for obj in objects():
        if obj["kind"] in ("DaemonSet", "Deployment"):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                found.append((f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}", c))
    return found


def test_every_manifest_is_listed_and_well_formed():
    listed = set(yaml.safe_load((DAEMONSET / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in DAEMONSET.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, f"manifests not in kustomization.yaml: {on_disk - listed}"
    for obj in objects():
        assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj


def test_the_mesh_is_all_there():
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects()}
    assert ("Namespace", "shoal-system") in kinds
    assert any(k == "DaemonSet" for k, _ in kinds)
    assert any(k == "Deployment" for k, _ in kinds)
    names = {n.split("/")[-1] for n, _ in containers()}
    assert {"node-agent", "ztunnel", "control-plane"} <= names


@pytest.mark.parametrize("name,container", containers(), ids=[n for n, _ in containers()])
def test_container_commands_parse_with_this_cli(name, container):
    argv = container.get("command", []) + container.get("args", [])
    assert argv[0] == "shoal", f"{name} does not run the shoal CLI"
    parser = build_parser()
    parser.exit_on_error = False
    try:
        parser.parse_args(argv[1:])
    except SystemExit as e:  # argparse reports unknown flags by exiting
        pytest.fail(f"{name}: `{' '.join(argv)}` is refused by the CLI ({e})")


def test_the_node_agent_gets_what_bcc_and_redirection_need():
    pod = next(o for o in objects() if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert pod.get("hostNetwork") and pod.get("hostPID")
    agent = next(c for c in pod["containers"] if c["name"] == "node-agent")
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert {"/lib/modules", "/usr/src", "/sys/fs/cgroup", "/sys/fs/bpf"} <= mounts
    assert agent["securityContext"].get("privileged")


def _allowed(role: dict, group: str, resource: str, verbs: set[str]) -> bool:
    return any(group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
               and verbs <= set(rule.get("verbs", [])) for rule in role["rules"])


def test_the_control_planes_role_covers_every_resource_it_watches():
    from control_plane.sources.kube import RESOURCES

    role = next(o for o in objects() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "shoal-control-plane")
    for resource in RESOURCES:
        assert _allowed(role, resource.group, resource.plural, {"list", "watch"}), \
            f"the control plane watches {resource.plural}.{resource.group or 'core'} but its ClusterRole forbids it"
    assert _allowed(role, "authentication.k8s.io", "tokenreviews", {"create"})


def test_the_node_agents_role_covers_what_it_watches():
    role = next(o for o in objects() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "shoal-node")
    for resource in ("pods", "namespaces"):
        assert _allowed(role, "", resource, {"list", "watch"})


def test_the_control_planes_role_lets_the_waypoint_controller_do_its_work():
    from control_plane.waypoints_kube import KINDS

    role = next(o for o in objects() if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "shoal-control-plane")
    plural = {"ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps", "Service": "services",
              "Deployment": "deployments"}
    for kind, (api, _) in KINDS.items():
        group = "apps" if api == "apps" else ""
        assert _allowed(role, group, plural[kind], {"list", "create", "patch", "delete"}), \
            f"the waypoint controller manages {kind} but the control plane's ClusterRole forbids it"
    assert _allowed(role, "gateway.networking.k8s.io", "gateways", {"list"})
