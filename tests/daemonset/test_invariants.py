"""What every install of the mesh must hold: probes, resources and the image on every container,
every node covered, the node-level parts critical, the ztunnel upgraded by a surge that can
schedule, Pod Security Admission that lets the mesh run, the GatewayClass and CRDs shoal reads."""

from __future__ import annotations

from pathlib import Path

import pytest

import shoal
from shoal.cli import build_parser
from shoal.install.kustomize import render_objects

from .test_manifests import containers, objects

DAEMONSET = Path(__file__).resolve().parents[2] / "daemonset"
WORKLOADS = [o for o in objects() if o["kind"] in ("DaemonSet", "Deployment")]
DAEMONSETS = [o for o in WORKLOADS if o["kind"] == "DaemonSet"]


def one(kind: str, name: str) -> dict:
    (found,) = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("name, container", containers(), ids=[n for n, _ in containers()])
def test_every_container_has_probes_resources_and_the_versioned_image(name, container):
    for probe in ("readinessProbe", "livenessProbe"):
        assert container.get(probe), f"{name} has no {probe}"
    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        assert set(resources.get(bound) or {}) >= {"cpu", "memory"}, f"{name} has no cpu and memory {bound}"
    assert container["image"] == f"shoal:{shoal.__version__}"
    assert container.get("imagePullPolicy") == "IfNotPresent", f"{name}: a locally loaded image must do"


@pytest.mark.parametrize("name, container", containers(), ids=[n for n, _ in containers()])
def test_liveness_is_not_readiness(name, container):
    """A part that is alive but not ready (waiting on its peer) must not be restarted for it."""
    assert container["livenessProbe"] != container["readinessProbe"], name
    assert container["livenessProbe"]["httpGet"]["path"] != "/healthz/ready", name


@pytest.mark.parametrize("daemonset", DAEMONSETS, ids=lambda o: o["metadata"]["name"])
def test_every_daemonset_runs_on_every_node_and_is_node_critical(daemonset):
    pod = daemonset["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod.get("tolerations", []), "a tainted node would get no mesh"
    assert pod.get("priorityClassName") == "system-node-critical"


def test_the_node_agent_and_the_ztunnel_upgrade_apart():
    names = {o["metadata"]["name"] for o in DAEMONSETS}
    assert names == {"shoal-node-agent", "shoal-ztunnel"}
    for daemonset in DAEMONSETS:
        (container,) = daemonset["spec"]["template"]["spec"]["containers"]
        assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate", daemonset["metadata"]["name"]


def test_the_ztunnel_upgrades_by_a_surge_that_can_schedule():
    ztunnel = one("DaemonSet", "shoal-ztunnel")
    assert ztunnel["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = ztunnel["spec"]["template"]["spec"]
    assert pod["hostNetwork"]
    for container in pod["containers"]:
        # With hostNetwork a declared port is a host port: the surge pod could not be scheduled beside the old one.
        assert not container.get("ports"), f"the ztunnel declares ports {container['ports']}"
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["command"][1:])
    assert pod["terminationGracePeriodSeconds"] > args.drain_seconds + 5, \
        "the grace period does not cover the ztunnel's drain"


def test_the_namespace_lets_pod_security_admission_run_the_mesh():
    labels = one("Namespace", "shoal-system")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"


@pytest.mark.parametrize("name", ["shoal-control-plane", "shoal-ingressgateway"])
def test_the_deployments_run_as_the_images_user(name):
    (container,) = one("Deployment", name)["spec"]["template"]["spec"]["containers"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] and context["runAsUser"] == 10001 and context["runAsGroup"] == 10001
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
    assert not context["capabilities"].get("add"), f"{name} is given capabilities"


def test_the_ingress_gateway_listens_unprivileged_behind_its_load_balancers_80_and_443():
    """As Istio's gateway: the pod on 8080/8443, the Service's 80/443 to them, the Gateways' 80/443 served."""
    from shoal.cli.ingress_gateway import listen_port

    deployment, service = one("Deployment", "shoal-ingressgateway"), one("Service", "shoal-ingressgateway")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = build_parser().parse_args(container["command"][1:])
    served = dict(args.http + args.https)                       # listen port -> the Gateways' port
    assert served == {8080: 80, 8443: 443}
    assert listen_port("8080:80") == (8080, 80) and listen_port("80") == (80, 80)
    declared = {p["containerPort"] for p in container["ports"]}
    assert service["spec"]["type"] == "LoadBalancer"
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in declared and served[port["targetPort"]] == port["port"], port
    # Istio Gateways select it by Istio's label; it is not captured by the mesh it speaks HBONE to.
    assert pod["metadata"]["labels"]["istio"] == "ingressgateway"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["shoal.io/dataplane-mode"] == "none"
    assert pod["spec"]["serviceAccountName"] == args.service_account == "shoal-ingressgateway"
    assert pod["spec"]["automountServiceAccountToken"] is False
    probes = {container["readinessProbe"]["httpGet"]["port"], container["livenessProbe"]["httpGet"]["port"]}
    assert probes == {15121, 15090}


@pytest.mark.parametrize("name, container", containers(), ids=[n for n, _ in containers()])
def test_a_part_that_needs_root_says_so(name, container):
    """The image's default user is `shoal` (10001): a privileged container, or one given
    capabilities, left to that default would run without root's rights and fail on the node."""
    context = container.get("securityContext") or {}
    needs_root = context.get("privileged") or (context.get("capabilities") or {}).get("add")
    if needs_root:
        assert context.get("runAsUser") == 0, f"{name} needs root but would run as the image's user"
    else:
        assert context.get("runAsUser", 10001) != 0, f"{name} runs as root without needing it"


def test_the_waypoint_gatewayclass_names_shoals_controller():
    from shoal.contracts import WAYPOINT_CLASS

    gatewayclass = one("GatewayClass", WAYPOINT_CLASS)
    assert gatewayclass["spec"]["controllerName"] == "shoal.io/waypoint-controller"
    assert "namespace" not in gatewayclass["metadata"], "a GatewayClass is cluster-scoped"


def test_the_crds_serve_every_kind_and_version_shoal_reads():
    from control_plane.sources.kube import RESOURCES

    served = {(crd["spec"]["group"], crd["spec"]["names"]["plural"]): crd for crd in render_objects(DAEMONSET / "crds")}
    for resource in RESOURCES:
        if not resource.group:
            continue
        crd = served.get((resource.group, resource.plural))
        assert crd, f"daemonset/crds/ has no CRD for {resource.plural}.{resource.group}"
        assert crd["spec"]["names"]["kind"] == resource.kind
        versions = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
        assert set(resource.versions) <= set(versions), f"{resource.kind}: shoal reads {resource.versions}"
        assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == [resource.versions[0]]
        assert crd["metadata"]["name"] == f"{resource.plural}.{resource.group}"
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "shoal"  # uninstall --crds needs it
    assert ("gateway.networking.k8s.io", "gatewayclasses") in served
