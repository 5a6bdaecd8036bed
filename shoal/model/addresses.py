"""IP addresses as the model spells them: one canonical text per address, and `host:port` joins.

Every address in the model (a workload's `ips`, a service's `vips`) and every
address a proxy looks up is in one text form, so that an index keyed by text
finds it whichever way it was written:
- IPv6 compressed and lower case (`fd73:686f:616c:1::5`, never `FD73:0686:...`);
- an IPv4-mapped IPv6 address (`::ffff:198.19.1.5`, what a dual-stack socket
  reports for an IPv4 peer) is the IPv4 address it maps: it is IPv4 on the wire.

Where an address and a port are joined (an HBONE CONNECT authority, a log
field), an IPv6 address is bracketed, as RFC 3986 section 3.2.2 writes it:
`[fd73::5]:8080`; otherwise the last colon could not tell address from port.
"""

from __future__ import annotations

import ipaddress
import re

# An IPv4 address already in its canonical text: four decimal octets 0-255, none with a leading zero. Most
# addresses the mesh reads are; matching this is several times cheaper than parsing (the control plane
# canonicalises every pod's addresses, and a large cluster has many pods).
_CANONICAL_IPV4 = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
                             r"(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}")
_MAPPED = "::ffff:"


def canonical_ip(text: str) -> str:
    """The canonical text of an IP address; ValueError if `text` is not one (brackets are not
    an address's, so `[::1]` is refused too: strip them where a URL or authority carried them;
    nor is a zone, `%eth0`)."""
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    if text.startswith(_MAPPED) and _CANONICAL_IPV4.fullmatch(text, len(_MAPPED)):
        return text[len(_MAPPED):]   # an IPv4 peer of a dual-stack listener: every connection a ztunnel accepts
    address = ipaddress.ip_address(text.strip())
    if address.version == 6:
        if address.scope_id:
            # fe80::1%eth0 means something on one link of one host only: no pod or VIP is written so.
            raise ValueError(f"{text!r} carries a scope (%{address.scope_id}); the mesh's addresses have none")
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def canonical_or_none(text: str) -> str | None:
    """`canonical_ip`, or None for text that is not an IP address (a host name, say)."""
    try:
        return canonical_ip(text)
    except ValueError:
        return None


def ip_version(text: str) -> int:
    """4 or 6 (an IPv4-mapped address counts as 4); ValueError if `text` is not an address."""
    return 4 if "." in canonical_ip(text) else 6


def canonical_address(address: tuple) -> tuple[str, int]:
    """A socket address as (canonical host, port): `::ffff:a.b.c.d` is a.b.c.d, an AF_INET6 tuple's
    flow and scope go; a host that is not an IP address stays as it is."""
    return canonical_or_none(address[0]) or address[0], address[1]


def canonical_ips(texts) -> tuple[str, ...]:
    """Canonical addresses in their given order, duplicates (after canonicalisation) and
    anything that is not an IP address left out."""
    found = (canonical_or_none(str(text)) for text in texts if text)
    return tuple(dict.fromkeys(address for address in found if address is not None))


def join_host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address bracketed (`[fd73::5]:8080`)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def join_address(address: tuple) -> str:
    """`join_host_port` of a socket address tuple, (host, port) or an AF_INET6 4-tuple."""
    return join_host_port(str(address[0]), address[1])
