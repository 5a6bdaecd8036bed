"""One text per IP address, and `host:port` joins that bracket IPv6 (shoal.model.addresses)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from shoal.hbone import BadAuthority, parse_authority
from shoal.model.addresses import canonical_ip, canonical_ips, canonical_or_none, ip_version, join_host_port


@pytest.mark.parametrize("text, canonical", [
    ("198.19.1.5", "198.19.1.5"),
    ("FD73:686F:616C:1::5", "fd73:686f:616c:1::5"),
    ("fd73:686f:616c:0001:0000:0000:0000:0005", "fd73:686f:616c:1::5"),
    ("::ffff:198.19.1.5", "198.19.1.5"),          # v4-mapped: IPv4 on the wire
    ("::FFFF:c613:0105", "198.19.1.5"),
    (" 198.18.16.10 ", "198.18.16.10"),
    ("::1", "::1"),
])
def test_canonical_text(text, canonical):
    assert canonical_ip(text) == canonical


@pytest.mark.parametrize("text", ["", "web", "198.19.1.256", "[fd73::5]", "fd73::5%eth0x", "1.2.3"])
def test_not_an_address(text):
    with pytest.raises(ValueError):
        canonical_ip(text)
    assert canonical_or_none(text) is None


def test_versions():
    assert [ip_version(a) for a in ("198.19.1.5", "fd73::5", "::ffff:198.19.1.5")] == [4, 6, 4]


def test_a_list_keeps_its_order_and_drops_duplicates_and_junk():
    assert canonical_ips(["198.19.1.5", "FD73::5", "::ffff:198.19.1.5", "", None, "pod-a", "fd73::0:5"]) == \
        ("198.19.1.5", "fd73::5")


@pytest.mark.parametrize("host, port, joined", [
    ("198.19.1.5", 8080, "198.19.1.5:8080"),
    ("fd73:686f:616c:1::5", 8080, "[fd73:686f:616c:1::5]:8080"),
    ("[fd73::5]", 80, "[fd73::5]:80"),             # already bracketed: not twice
    ("web.app.svc.cluster.local", 80, "web.app.svc.cluster.local:80"),
])
def test_join(host, port, joined):
    assert join_host_port(host, port) == joined


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535))
def test_a_joined_authority_parses_back_to_the_same_address(address, port):
    """What the ztunnel's outbound side writes in :authority, the inbound side reads back."""
    host, parsed_port = parse_authority(join_host_port(str(address), port))
    assert (canonical_ip(host), parsed_port) == (canonical_ip(str(address)), port)
    assert ipaddress.ip_address(host) == address


@pytest.mark.parametrize("authority", ["fd73::5:8080", "[198.19.1.5]:80", "[fe80::1%eth0]:80", "[fd73::5]",
                                       "[fd73::5]:0", "web:80"])
def test_an_authority_that_is_ambiguous_or_not_an_address_is_refused(authority):
    with pytest.raises(BadAuthority):
        parse_authority(authority)


# canonical_ip takes IPv4 text already in canonical form as it is, without parsing: the octets that sit at
# the edges of that shortcut (leading zeros, 255/256, blanks, signs, non-ASCII digits) must give what parsing
# gives, in every position, and in pairs.
EDGE_OCTETS = ["0", "00", "01", "1", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "1000",
               "-1", " 1", "1 ", "\u0661", "+1", ""]


def edge_texts():
    for position in range(4):
        for octet in EDGE_OCTETS:
            yield ".".join(octet if i == position else "7" for i in range(4))
    for first in EDGE_OCTETS:
        for last in EDGE_OCTETS:
            yield f"{first}.7.7.{last}"
    yield from ("1.2.3", "1.2.3.4.5", "1.2.3.4\n", "1..2.3", "1.2.3.4.")


def test_the_ipv4_shortcut_answers_as_parsing_does():
    differ = []
    for text in edge_texts():
        try:
            parsed = str(ipaddress.ip_address(text.strip()))
        except ValueError:
            parsed = None
        if canonical_or_none(text) != parsed:
            differ.append((text, canonical_or_none(text), parsed))
    assert not differ, differ[:10]


def test_an_ipv4_mapped_peer_in_canonical_form_is_not_parsed(monkeypatch):
    # what a dual-stack listener reports for every IPv4 peer: the ztunnel canonicalises one per accepted connection
    from shoal.model import addresses

    def no_parse(text):
        raise AssertionError(f"{text!r} was parsed")
    monkeypatch.setattr(addresses.ipaddress, "ip_address", no_parse)
    assert addresses.canonical_ip("::ffff:198.19.1.5") == "198.19.1.5"
    assert addresses.canonical_address(("::ffff:198.19.1.5", 40000, 0, 0)) == ("198.19.1.5", 40000)
