"""A Service's IP families and cluster IPs, decided as the Kubernetes API server decides them.

The cluster's Service ranges (`--service-cluster-ip-range` on a real API
server) name its families, the first one primary: 198.18.16.0/20 alone for
`--ip-family ipv4`, both for `dual`, fd73:686f:616c:ff::/112 alone for
`ipv6`. From those and a Service's spec:

- `spec.ipFamilyPolicy` is SingleStack unless asked, or RequireDualStack when
  the spec names two families or two cluster IPs;
- `spec.ipFamilies` is what the spec asks (from `ipFamilies`, else from the
  families of the cluster IPs it gives), else the cluster's primary family;
  PreferDualStack and RequireDualStack add the cluster's other family when
  it has one; RequireDualStack on a one-family cluster is refused;
- `spec.clusterIPs` holds one address per family, in the same order, and
  `spec.clusterIP` is the first (`None` stays `None`: headless);
- an update keeps the addresses it had; a Service that drops to SingleStack
  keeps its first family and address, as a downgrade does in Kubernetes.

`problems(spec, ranges)` is the check `shoal local apply` runs before it
applies anything; `assign(spec, old_spec, ranges, used)` is what the store
writes, with the same checks.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from shoal.errors import ShoalError

IPV4, IPV6 = "IPv4", "IPv6"
POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
HEADLESS = "None"
FIRST_USABLE = 10  # the first addresses of a range stay free, for Services that ask for them by number


class ServiceIPError(ShoalError, ValueError):
    """A Service's families or cluster IPs cannot be given as asked; the message says which field and why."""


def family_of(address: str) -> str:
    return IPV6 if ipaddress.ip_address(address).version == 6 else IPV4


@dataclass(frozen=True)
class Decision:
    policy: str
    families: tuple[str, ...]
    given: tuple[str | None, ...]  # per family: the address the spec (or the old object) names, else None
    headless: bool


def problems(spec: dict, ranges: tuple[str, ...]) -> list[tuple[str, str]]:
    """(field, reason) for every way `spec` cannot be served by a cluster with these Service ranges."""
    try:
        decide(spec, None, ranges)
    except ServiceIPError as e:
        field, _, reason = str(e).partition(": ")
        return [(field, reason)]
    return []


def decide(spec: dict, old_spec: dict | None, ranges: tuple[str, ...]) -> Decision:
    networks = {family_of(str(ipaddress.ip_network(r).network_address)): ipaddress.ip_network(r) for r in ranges}
    cluster_families = tuple(networks)
    policy = spec.get("ipFamilyPolicy")
    asked = spec.get("ipFamilies")
    if asked is not None and (not isinstance(asked, list) or not all(f in (IPV4, IPV6) for f in asked)
                              or not 1 <= len(asked) <= 2 or len(set(asked)) != len(asked)):
        raise ServiceIPError(f"spec.ipFamilies: {asked!r} is not one or two distinct families of IPv4, IPv6")
    addresses = _cluster_ips(spec)
    headless = addresses[:1] == [HEADLESS]
    if policy is None:
        policy = "RequireDualStack" if len(asked or ()) == 2 or len(addresses) == 2 else "SingleStack"
    if policy not in POLICIES:
        raise ServiceIPError(f"spec.ipFamilyPolicy: {policy!r} is not one of {', '.join(POLICIES)}")
    given_families = [] if headless else [family_of(a) for a in addresses]
    if len(set(given_families)) != len(given_families):
        raise ServiceIPError(f"spec.clusterIPs: {addresses} holds two addresses of one family; "
                             "give at most one IPv4 and one IPv6 address")
    families = list(asked or given_families)
    for i, (want, got) in enumerate(zip(families, given_families)):
        if want != got:
            raise ServiceIPError(f"spec.clusterIPs[{i}]: {addresses[i]} is {got}, but spec.ipFamilies[{i}] is {want}")
    if policy == "SingleStack" and (len(families) > 1 or len(addresses) > 1):
        if old_spec and len(old_spec.get("ipFamilies") or ()) == 2:   # a downgrade: keep the primary
            families, addresses, given_families = families[:1], addresses[:1], given_families[:1]
        else:
            raise ServiceIPError("spec.ipFamilyPolicy: SingleStack allows one family; use PreferDualStack or "
                                 "RequireDualStack for two")
    if policy == "RequireDualStack" and len(cluster_families) < 2:
        raise ServiceIPError(f"spec.ipFamilyPolicy: RequireDualStack needs a dual-stack cluster, and this one "
                             f"serves {cluster_families[0]} only; use SingleStack or PreferDualStack, or a "
                             "cluster made with `shoal local up --ip-family dual`")
    for i, family in enumerate(given_families):
        if family not in networks:
            raise ServiceIPError(f"spec.clusterIPs[{i}]: {addresses[i]} is {family}, which this cluster does not "
                                 f"serve ({', '.join(cluster_families)} only)")
    for i, family in enumerate(families):
        if family not in networks:
            raise ServiceIPError(f"spec.ipFamilies[{i}]: {family} is not served by this cluster "
                                 f"({', '.join(cluster_families)} only); `shoal local up --ip-family dual` makes "
                                 "a cluster that serves both")
    if not families:
        families = [cluster_families[0]]
    if policy != "SingleStack":
        families += [f for f in cluster_families if f not in families]
    old_families = tuple((old_spec or {}).get("ipFamilies") or ())
    if old_families and families[0] != old_families[0]:
        raise ServiceIPError(f"spec.ipFamilies[0]: a Service's primary family cannot change (it is "
                             f"{old_families[0]}); delete the Service and create it again")
    for i, address in enumerate(addresses if not headless else []):
        if ipaddress.ip_address(address) not in networks[family_of(address)]:
            field = f"spec.clusterIPs[{i}]" if spec.get("clusterIPs") else "spec.clusterIP"
            raise ServiceIPError(f"{field}: {address} is outside the Service range {networks[family_of(address)]}")
    old_by_family = {} if headless else {family_of(a): a for a in _cluster_ips(old_spec or {}) if a != HEADLESS}
    given = {} if headless else dict(zip(given_families, addresses))
    return Decision(policy, tuple(families), tuple(given.get(f) or old_by_family.get(f) for f in families), headless)


def assign(spec: dict, old_spec: dict | None, ranges: tuple[str, ...], used: set[str]) -> None:
    """Sets `ipFamilyPolicy`, `ipFamilies`, `clusterIPs` and `clusterIP` in `spec`, allocating what is missing
    from the ranges (skipping `used`); ServiceIPError when the spec asks what the cluster cannot give."""
    decision = decide(spec, old_spec, ranges)
    spec["ipFamilyPolicy"] = decision.policy
    spec["ipFamilies"] = list(decision.families)
    if decision.headless:
        spec["clusterIP"], spec["clusterIPs"] = HEADLESS, [HEADLESS]
        return
    networks = {family_of(str(ipaddress.ip_network(r).network_address)): ipaddress.ip_network(r) for r in ranges}
    addresses = [given or _allocate(networks[family], used) for family, given in zip(decision.families, decision.given)]
    spec["clusterIPs"] = addresses
    spec["clusterIP"] = addresses[0]


def _allocate(network, used: set[str]) -> str:
    for offset in range(FIRST_USABLE, min(network.num_addresses - 1, 1 << 16)):
        address = str(network.network_address + offset)
        if address not in used:
            used.add(address)
            return address
    raise ServiceIPError(f"spec.clusterIPs: the Service range {network} is exhausted; delete Services you no "
                         "longer need")


def _cluster_ips(spec: dict) -> list[str]:
    """The addresses a spec names: `clusterIPs`, else `clusterIP`; each checked to be an address."""
    addresses = spec.get("clusterIPs")
    single = spec.get("clusterIP")
    if addresses in (None, []):
        addresses = [single] if single not in (None, "") else []
    if not isinstance(addresses, list) or len(addresses) > 2:
        raise ServiceIPError(f"spec.clusterIPs: {addresses!r} is not a list of one or two addresses")
    if single not in (None, "") and addresses and addresses[0] != single:
        raise ServiceIPError(f"spec.clusterIPs[0]: {addresses[0]} must equal spec.clusterIP ({single})")
    if HEADLESS in addresses and addresses != [HEADLESS]:
        raise ServiceIPError("spec.clusterIPs: None (headless) stands alone")
    for i, address in enumerate(addresses):
        if address == HEADLESS:
            continue
        try:
            ipaddress.ip_address(address)
        except (ValueError, TypeError):
            field = f"spec.clusterIPs[{i}]" if spec.get("clusterIPs") else "spec.clusterIP"
            raise ServiceIPError(f"{field}: {address!r} is not an IP address") from None
    return [str(a) for a in addresses]
