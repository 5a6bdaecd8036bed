"""Every object in daemonset/ and daemonset/crds/ validates against the Kubernetes 1.30 schemas
(kubernetes-validate, strict: an unknown field is an error); the GatewayClass, a custom
resource, validates against the CRD that ships with it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from shoal.install.kustomize import render_objects

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' brings it")
jsonschema = pytest.importorskip("jsonschema", reason="kubernetes-validate brings it")

DAEMONSET = Path(__file__).resolve().parents[2] / "daemonset"
KUBERNETES = "1.30.0"
BUILT_IN = render_objects(DAEMONSET)
CRDS = render_objects(DAEMONSET / "crds")
CUSTOM_GROUPS = {crd["spec"]["group"] for crd in CRDS}


def custom(obj: dict) -> bool:
    return obj["apiVersion"].rpartition("/")[0] in CUSTOM_GROUPS


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize("obj", [o for o in BUILT_IN + CRDS if not custom(o)], ids=name_of)
def test_every_object_validates_against_the_kubernetes_schemas(obj):
    validate(obj)


def crd_schema(obj: dict) -> dict:
    group, _, version = obj["apiVersion"].rpartition("/")
    for crd in CRDS:
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == obj["kind"]:
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            assert served["served"], f"{name_of(obj)} is written in {version}, which its CRD does not serve"
            return served["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{name_of(obj)}: no CRD in daemonset/crds/ defines {obj['kind']}.{group}")


@pytest.mark.parametrize("obj", [o for o in BUILT_IN if custom(o)], ids=name_of)
def test_every_custom_object_validates_against_its_crd(obj):
    schema = crd_schema(obj)
    # The API server adds apiVersion, kind and metadata to every CRD's schema.
    jsonschema.validate({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema)


def test_the_validation_is_in_force():
    """A control: what the API server would refuse, the tests refuse too."""
    deployment = next(o for o in BUILT_IN if o["kind"] == "Deployment")
    for breakage in (lambda d: d["spec"].update(replicas="one"),
                     lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy2="Always"),
                     lambda d: d["spec"].pop("selector")):
        broken = copy.deepcopy(deployment)
        breakage(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)
    gatewayclass = next(o for o in BUILT_IN if o["kind"] == "GatewayClass")
    for spec in ({}, {"controllerName": "no-slash"}, {"controllerName": "shoal.io/x", "description": "d" * 65}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"spec": spec}, crd_schema(gatewayclass))
