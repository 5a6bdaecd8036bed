"""Bad manifests are refused whole, with the object, the field and the reason."""

from __future__ import annotations

import pytest

from shoal.local import manifest

from support.cluster import LocalCluster
from support.root import needs_root

GOOD_POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: fine}\nspec: {containers: [{name: c, command: [sleep, '1']}]}\n"

CASES = [
    ("bad-yaml", GOOD_POD + "---\nkind: Pod\nmetadata: {name: x\n", ["bad YAML at line"]),
    ("unknown-kind", GOOD_POD + "---\napiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n",
     ["Gizmo default/g: kind: unknown kind 'Gizmo'"]),
    ("missing-containers", GOOD_POD + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: empty}\nspec: {}\n",
     ["Pod default/empty: spec.containers: required field is missing"]),
    ("missing-name", "apiVersion: v1\nkind: Service\nmetadata: {}\nspec: {ports: [{port: 80}]}\n",
     ["metadata.name: required field is missing"]),
    ("bad-port", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 70000}]}\n",
     ["Service default/s: spec.ports[0].port: must be a port number from 1 to 65535"]),
    ("selector-mismatch", """apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec: {containers: [{name: c}]}
""", ["Deployment default/d: spec.template.metadata.labels: do not match"]),
    ("no-namespace", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: ghost}\n",
     ["ServiceAccount ghost/sa: metadata.namespace: namespace 'ghost' does not exist"]),
    ("wrong-api", "apiVersion: v2\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
     ["Pod default/p: apiVersion: 'v2' does not serve Pod"]),
    ("label-not-string", "apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {on: true}}\n",
     ["Namespace n: metadata.labels: must be a mapping of strings to strings"]),
    ("cluster-ip-outside", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
     "spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n",
     ["Service default/s: spec.clusterIP: 10.0.0.1 is outside the Service range 198.18.16.0/20"]),
]


def _errors(text: str) -> list[str]:
    try:
        objects = manifest._parse(text, "<test>")
    except manifest.ManifestError as e:
        return e.errors
    return manifest.validate(objects, existing_namespaces={"default"})


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_manifest_errors_name_object_field_and_reason(name, text, expected):
    errors = _errors(text)
    for fragment in expected:
        assert any(fragment in e for e in errors), f"{fragment!r} not in {errors}"


def test_good_manifest_has_no_errors():
    assert _errors(GOOD_POD) == []


def test_a_namespace_created_in_the_same_file_counts():
    text = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: fresh}\n---\n"
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa, namespace: fresh}\n")
    assert _errors(text) == []


@needs_root("creates network namespaces, veths, cgroups")
@pytest.mark.parametrize("name,text,expected", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_apply_refuses_the_whole_file_and_applies_nothing(cluster: LocalCluster, name, text, expected):
    store = cluster.layout.store()
    rv = store.resource_version()
    result = cluster.apply(text, check=False)
    assert result.returncode == 1
    assert "refused, nothing was applied" in result.stderr
    assert expected[0] in result.stderr
    assert store.resource_version() == rv
    assert store.get("Pod", "default", "fine") is None
