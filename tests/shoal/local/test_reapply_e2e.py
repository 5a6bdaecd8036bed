"""No silent exit from the mesh, end to end (root): a namespace enrolled by hand with
`shoal local label` stays in the mesh when its unchanged manifest is applied again.

Re-applying once wiped the label, and the node agents took the namespace's pods out of
the mesh without a word. Here a pod added in the re-applied manifest is the witness that
the agent has seen the re-apply: it is captured only if the namespace is still enrolled,
and then the first pod must still be captured too.

Uses the package's shared cluster (`--redirect iptables`, tests/shoal/local/conftest.py)
and removes what it applied.
"""

from __future__ import annotations

from node_agent import netfilter
from shoal.contracts import DATAPLANE_MODE

from support.cluster import LocalCluster
from support.polling import eventually
from support.root import needs_root

pytestmark = needs_root("runs a local cluster")

NAMESPACE = "reapplied"

POD = """
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  containers: [{{name: sh, command: ["sleep", "infinity"]}}]
"""
MANIFEST = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}, labels: {{team: a}}}}\n" + \
    POD.format(name="first", namespace=NAMESPACE)
WITH_WITNESS = MANIFEST + POD.format(name="witness", namespace=NAMESPACE)


def captured(cluster: LocalCluster, pod: str) -> bool:
    return "SHOAL_OUTPUT" in netfilter.save(cluster.layout.pod_netns(NAMESPACE, pod))


def namespace_labels(cluster: LocalCluster) -> dict:
    (namespace,) = [n for n in cluster.items("namespaces") if n["metadata"]["name"] == NAMESPACE]
    return namespace["metadata"].get("labels") or {}


def test_a_namespace_labelled_by_hand_stays_enrolled_when_its_manifest_is_applied_again(cluster):
    try:
        cluster.apply(MANIFEST)
        cluster.wait_pods_ready(NAMESPACE, 1)
        cluster("label", "namespace", NAMESPACE, f"{DATAPLANE_MODE}=ambient")
        eventually(lambda: captured(cluster, "first"), 60, "the node agent to capture the labelled namespace's pod")

        out = cluster.apply(WITH_WITNESS).stdout
        assert namespace_labels(cluster) == {"team": "a", DATAPLANE_MODE: "ambient"}
        assert f"namespace/{NAMESPACE} unchanged" in out
        cluster.wait_pods_ready(NAMESPACE, 2)
        eventually(lambda: captured(cluster, "witness"), 60,
                   lambda: f"the witness pod to be captured (namespace labels now {namespace_labels(cluster)})")
        assert captured(cluster, "first"), "the re-apply took the first pod out of the mesh"
    finally:
        cluster.delete(WITH_WITNESS, check=False)
