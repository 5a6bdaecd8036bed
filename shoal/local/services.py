"""Services in the local cluster: endpoints, the kube-proxy rules and name resolution.

- `endpoints(service, pods)` picks the ready pods a Service selects, with each
  service port's target port resolved (numbers, or named container ports).
- `proxy_rules(...)` renders the nat table a node needs so that unmeshed
  clients reach Service VIPs, balanced over the endpoints, the way kube-proxy's
  iptables mode does it. It is applied with `iptables-legacy-restore --noflush`
  into chains of its own (KPROXY-*), so it never touches anyone else's rules;
  in a dual-stack or IPv6 cluster the same for IPv6, with ip6tables, from each
  Service's IPv6 cluster IP to its endpoints' IPv6 addresses.
- `hosts_file(namespace, services)` is a pod's /etc/hosts: `svc`, `svc.ns` and
  `svc.ns.svc.cluster.local` for every Service (short names for the pod's own
  namespace only), at each of its cluster IPs (so names resolve to A and AAAA),
  since the local cluster runs no DNS server.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from shoal import netns
from shoal.local.errors import LocalClusterError

CLUSTER_DOMAIN = "cluster.local"
MASQUERADE_MARK = "0x4000/0x4000"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    ports: tuple[tuple[str, int, int], ...]  # (service port name, service port, target port)


def selects(selector: dict | None, labels: dict | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))


def target_port(pod: dict, port: dict) -> int | None:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod.get("spec", {}).get("containers", []):
        for cport in container.get("ports", []) or []:
            if cport.get("name") == target:
                return int(cport["containerPort"])
    return None


def family_of(address: str) -> str:
    return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"


def pod_ip_of(pod: dict, family: str | None) -> str | None:
    """The pod's address in `family` (IPv4, IPv6), or its primary one (status.podIP) for None."""
    status = pod.get("status") or {}
    if family is None:
        return status.get("podIP")
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or [status.get("podIP")]
    return next((ip for ip in ips if ip and family_of(ip) == family), None)


def cluster_ips(service: dict) -> list[str]:
    """A Service's VIPs, primary first (none for a headless one)."""
    spec = service.get("spec") or {}
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    return [ip for ip in ips if ip and ip != "None"]


def endpoints(service: dict, pods: list[dict], family: str | None = None) -> list[Endpoint]:
    """The ready pods the Service selects, at their address in `family` (default: the Service's primary
    family, as the Endpoints object carries it); a pod without one is left out."""
    namespace = service["metadata"]["namespace"]
    family = family or next(iter((service.get("spec") or {}).get("ipFamilies") or []), None)
    selector = service.get("spec", {}).get("selector")
    out = []
    for pod in pods:
        if pod["metadata"]["namespace"] != namespace or not selects(selector, pod["metadata"].get("labels")):
            continue
        if not pod_ready(pod):
            continue
        ports = []
        for port in service["spec"].get("ports", []):
            target = target_port(pod, port)
            if target is not None:
                ports.append((port.get("name", ""), int(port["port"]), target))
        ip = pod_ip_of(pod, family)
        if ip:
            out.append(Endpoint(ip, tuple(ports)))
    return sorted(out, key=lambda e: e.ip)


def endpoints_object(service: dict, eps: list[Endpoint]) -> dict:
    """A core/v1 Endpoints object, as the endpoints controller writes it."""
    meta = service["metadata"]
    ports = [{"name": p.get("name", ""), "port": p["port"], "protocol": p.get("protocol", "TCP")}
             for p in service["spec"].get("ports", [])]
    subsets = [{"addresses": [{"ip": e.ip} for e in eps], "ports": ports}] if eps else []
    return {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "subsets": subsets}


def _chain(prefix: str, *parts) -> str:
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:12].upper()
    return f"KPROXY-{prefix}-{digest}"  # chain names stop at 28 characters


def proxy_rules(services: list[tuple[dict, list[Endpoint]]], family: str = "IPv4") -> str:
    """The nat table content for one node and one family (each Service's VIP of that family, the endpoints
    given in it), for iptables-legacy-restore --noflush (ip6tables-legacy-restore for IPv6)."""
    lines = ["*nat", ":KPROXY-SERVICES - [0:0]", ":KPROXY-POSTROUTING - [0:0]"]
    rules = []
    rejects = []  # REJECT is a filter-table target: Services with no endpoint refuse there
    host_bits = 128 if family == "IPv6" else 32
    for service, eps in sorted(services, key=lambda s: (s[0]["metadata"]["namespace"], s[0]["metadata"]["name"])):
        vip = next((ip for ip in cluster_ips(service) if family_of(ip) == family), None)
        if not vip:
            continue
        ns, name = service["metadata"]["namespace"], service["metadata"]["name"]
        for port in service["spec"].get("ports", []):
            if port.get("protocol", "TCP") != "TCP":
                continue
            svc_port = int(port["port"])
            comment = f'-m comment --comment "{ns}/{name}:{port.get("name") or svc_port}"'
            backends = [(e.ip, t) for e in eps for (_, p, t) in e.ports if p == svc_port]
            if not backends:
                rejects.append(f"-A KPROXY-FILTER -d {vip}/{host_bits} -p tcp --dport {svc_port} {comment} "
                               "-j REJECT --reject-with tcp-reset")
                continue
            svc_chain = _chain("SVC", ns, name, svc_port)
            lines.append(f":{svc_chain} - [0:0]")
            rules.append(f"-A KPROXY-SERVICES -d {vip}/{host_bits} -p tcp --dport {svc_port} {comment} -j {svc_chain}")
            for i, (ip, target) in enumerate(backends):
                sep_chain = _chain("SEP", ns, name, svc_port, ip, target)
                lines.append(f":{sep_chain} - [0:0]")
                remaining = len(backends) - i
                pick = f"-m statistic --mode random --probability {1 / remaining:.10f} " if remaining > 1 else ""
                rules.append(f"-A {svc_chain} {pick}-j {sep_chain}")
                # A pod reaching itself through its own Service must come back from the node (hairpin).
                rules.append(f"-A {sep_chain} -s {ip}/{host_bits} -j MARK --set-xmark {MASQUERADE_MARK}")
                to = f"[{ip}]:{target}" if family == "IPv6" else f"{ip}:{target}"
                rules.append(f"-A {sep_chain} -p tcp -j DNAT --to-destination {to}")
    rules.append(f"-A KPROXY-POSTROUTING -m mark --mark {MASQUERADE_MARK} -j MASQUERADE")
    return "\n".join(lines + rules + ["COMMIT", "*filter", ":KPROXY-FILTER - [0:0]", *rejects, "COMMIT", ""])


class ProxyRulesError(LocalClusterError):
    """A node's kube-proxy rules could not be loaded."""


HOOKS = (("nat", "PREROUTING", "KPROXY-SERVICES"), ("nat", "OUTPUT", "KPROXY-SERVICES"),
         ("nat", "POSTROUTING", "KPROXY-POSTROUTING"),
         ("filter", "FORWARD", "KPROXY-FILTER"), ("filter", "OUTPUT", "KPROXY-FILTER"))


def apply_proxy_rules(node_netns: str, rules: str, family: str = "IPv4") -> None:
    """Loads the rules into the node's nat table (ip6tables' for IPv6); the jumps from the built-in chains
    are added once."""
    tool = "ip6tables-legacy" if family == "IPv6" else "iptables-legacy"
    current = netns.run(node_netns, [f"{tool}-save", "-t", "nat"]).stdout
    wanted = {line.split()[0][1:] for line in rules.splitlines() if line.startswith(":")}
    stale = sorted({line.split()[0][1:] for line in current.splitlines()
                    if line.startswith(":KPROXY-")} - wanted)
    if stale:  # flush them in the same transaction, then delete them: no rule refers to them any more
        nat_end = rules.index("COMMIT")
        rules = (rules[:nat_end] + "".join(f":{c} - [0:0]\n" for c in stale)
                 + "".join(f"-X {c}\n" for c in stale) + rules[nat_end:])
    result = netns.run(node_netns, [f"{tool}-restore", "--noflush"], input=rules, check=False)
    if result.returncode != 0:
        raise ProxyRulesError(f"{tool}-restore in {node_netns} failed: {result.stderr.strip()}; "
                              f"check that the {tool} tools and the nat table work there")
    for table, builtin, chain in HOOKS:
        exists = netns.run(node_netns, [tool, "-t", table, "-C", builtin, "-j", chain], check=False)
        if exists.returncode != 0:
            netns.run(node_netns, [tool, "-t", table, "-A", builtin, "-j", chain])


def hosts_file(namespace: str, services: list[dict]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for service in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        ns, name = service["metadata"]["namespace"], service["metadata"]["name"]
        names = [f"{name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == namespace:
            names.append(name)
        for vip in cluster_ips(service):
            lines.append(f"{vip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    # No nameserver runs in the local cluster: names come from the hosts file. The search
    # list still matters to programs that expand short names themselves.
    return (f"search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "nameserver 127.0.0.1\noptions ndots:5 timeout:1 attempts:1\n")
