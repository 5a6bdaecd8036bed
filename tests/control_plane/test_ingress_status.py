"""The status shoal writes on a Gateway of class shoal (an ingress Gateway): Accepted, Programmed, address."""

from control_plane.waypoints import Observed, ingress_status

GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "public", "namespace": "web", "generation": 3},
           "spec": {"gatewayClassName": "shoal", "listeners": [{"name": "web", "port": 80, "protocol": "HTTP"}]}}


def conditions(status):
    return {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in status["conditions"]}


def test_programmed_follows_the_ingress_gateway_pods_and_the_address_is_its_load_balancers():
    pending = ingress_status(GATEWAY, Observed(False, None), "2026-11-30T23:00:00Z")
    assert conditions(pending) == {"Accepted": ("True", "Accepted", 3), "Programmed": ("False", "Pending", 3)}
    assert "addresses" not in pending
    ready = ingress_status({**GATEWAY, "status": pending}, Observed(True, "198.18.0.1"), "2026-11-30T23:01:00Z")
    assert conditions(ready)["Programmed"] == ("True", "Programmed", 3)
    assert ready["addresses"] == [{"type": "IPAddress", "value": "198.18.0.1"}]
    # Accepted did not change: its transition time is kept
    accepted = [c for c in ready["conditions"] if c["type"] == "Accepted"][0]
    assert accepted["lastTransitionTime"] == "2026-11-30T23:00:00Z"
    assert ingress_status({**GATEWAY, "status": ready}, Observed(True, "198.18.0.1"), "2026-11-30T23:02:00Z") == ready
