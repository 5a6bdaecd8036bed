"""`shoal local apply` says what the analysis finds about what it applied, and mesh objects carry a status."""

from __future__ import annotations

import yaml

from tests.shoal.cli.conftest import local

SHOP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
"""

RULE = """
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v2, labels: {version: v2}}]}
"""


def status(kind: str, name: str) -> dict:
    return yaml.safe_load(local("get", kind, name, "-n", "shop", "-o", "yaml").stdout)["status"]


def test_a_route_to_a_missing_subset_is_reported_by_apply_and_in_the_status(store):
    applied = local("apply", "-f", "-", input=SHOP)
    assert applied.returncode == 0  # a warning does not refuse the object: the mesh applies it
    (line,) = applied.stderr.splitlines()
    assert line.startswith("Error [SH0103] VirtualService shop/reviews spec.http[0].route[0].destination.subset: ")
    assert "subset 'v2'" in line and "DestinationRule" in line
    conditions = {c["type"]: c for c in status("vs", "reviews")["conditions"]}
    assert conditions["Accepted"]["status"] == "True"
    assert (conditions["ResolvedRefs"]["status"], conditions["ResolvedRefs"]["reason"]) == ("False", "UndefinedSubset")
    (message,) = status("vs", "reviews")["validationMessages"]
    assert message["code"] == "SH0103" and message["field"] == "spec.http[0].route[0].destination.subset"

    # the DestinationRule that defines the subset clears the VirtualService's status and says nothing
    fixed = local("apply", "-f", "-", input=RULE)
    assert fixed.stderr == ""
    after = status("vs", "reviews")
    assert [c["status"] for c in after["conditions"]] == ["True", "True"] and "validationMessages" not in after
    assert status("dr", "reviews")["conditions"][0]["type"] == "Accepted"

    # deleting it brings the finding back on the VirtualService
    local("delete", "-f", "-", input=RULE)
    assert status("vs", "reviews")["validationMessages"][0]["code"] == "SH0103"


def test_apply_reports_only_the_objects_it_applied(store):
    local("apply", "-f", "-", input=SHOP)
    other = local("apply", "-f", "-", input="""
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {selector: {app: ratings}, ports: [{port: 80}]}
""")
    assert other.stderr == "" and other.stdout == "service/ratings created\n"


def test_a_status_write_is_not_a_change_of_the_object(store):
    local("apply", "-f", "-", input=SHOP)
    again = local("apply", "-f", "-", input=SHOP)
    assert "virtualservice/reviews unchanged" in again.stdout
