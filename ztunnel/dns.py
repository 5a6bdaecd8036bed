"""The DNS proxy's decision: answer a name from the mesh's config, refuse it, or forward it.

`decide(state, namespace, question)` is pure. The names it answers:
- a Service by `svc` (in the asking pod's namespace), `svc.ns`, `svc.ns.svc`
  and `svc.ns.svc.<cluster domain>`;
- a ServiceEntry host as written (a wildcard host `*.example.com` answers
  for its subdomains), with the entry's addresses, auto-allocated ones
  included.
A and AAAA get the host's addresses of that family (none: an empty answer,
NODATA, so the client tries the other family); other types for a known
host get NODATA too. A name under the cluster domain that no Service holds
is NXDOMAIN: the ztunnel knows every Service, and a search-list expansion
such as `api.example.com.ns.svc.cluster.local` must fail fast, not travel.
Every other name is forwarded to the pod's own resolver, unchanged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from shoal.dns_message import TYPE_A, TYPE_AAAA, Question
from shoal.model import Service
from shoal.proxy_state import ProxyState

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Answer:
    hostname: str                       # the host that answered (for the log)
    addresses: tuple[str, ...]          # of the question's family; () is NODATA


@dataclass(frozen=True)
class NoSuchName:
    name: str


@dataclass(frozen=True)
class Forward:
    name: str


Decision = Answer | NoSuchName | Forward


def candidates(name: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN) -> list[str]:
    """The hosts `name` may mean, asked from `namespace`, most specific first."""
    found = [name]
    labels = name.split(".")
    if len(labels) == 1:
        found.append(f"{name}.{namespace}.svc.{cluster_domain}")
    elif len(labels) == 2:
        found.append(f"{name}.svc.{cluster_domain}")
    elif len(labels) == 3 and labels[2] == "svc":
        found.append(f"{name}.{cluster_domain}")
    return found


def _addresses(service: Service, qtype: int) -> tuple[str, ...]:
    version = 4 if qtype == TYPE_A else 6 if qtype == TYPE_AAAA else 0
    return tuple(vip for vip in service.vips if ipaddress.ip_address(vip).version == version)


def _wildcard(state: ProxyState, name: str) -> Service | None:
    labels = name.split(".")
    for i in range(1, len(labels)):
        service = state.service_by_host("*." + ".".join(labels[i:]))
        if service is not None and service.vips:
            return service
    return None


def decide(state: ProxyState, namespace: str, question: Question,
           cluster_domain: str = CLUSTER_DOMAIN) -> Decision:
    name = question.name
    for host in candidates(name, namespace, cluster_domain):
        service = state.service_by_host(host)
        if service is not None and service.vips:
            return Answer(host, _addresses(service, question.qtype))
    service = _wildcard(state, name)
    if service is not None:
        return Answer(service.hostname, _addresses(service, question.qtype))
    if name == cluster_domain or name.endswith("." + cluster_domain):
        return NoSuchName(name)
    return Forward(name)
