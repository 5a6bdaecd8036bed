"""The control plane's listen addresses (issue 17): bracket-aware parsing, and `[::]` serving both families.

An IPv6-only cluster's waypoints reach the control plane at `[fd73:686f:616c::1]:15012`, so it listens
on `[::]` (gRPC and, when asked, HTTP): one socket each that takes IPv4 and IPv6 alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from control_plane.app import Settings, SettingsError
from control_plane.authn import LocalAuthenticator
from control_plane.ca import CertificateAuthority, generate_root
from control_plane.server import ConfigServer, Endpoints, split_address
from control_plane.state import ConfigState
from shoal import tokens
from shoal.config_client import ConfigClient
from shoal.model import ResourceType

from support.net import loopback_has_ipv6
from support.plane import NODE_TOKENS, TD, Plane, running, workload


@pytest.mark.parametrize("text, expected", [
    ("0.0.0.0:15012", ("0.0.0.0", 15012)),
    ("198.18.0.1:9", ("198.18.0.1", 9)),
    ("[::]:15012", ("::", 15012)),
    ("[fd73:686f:616c::1]:15012", ("fd73:686f:616c::1", 15012)),
    ("[::1]", ("::1", 15012)),
    (" [::]:0 ", ("::", 0)),
    (":15012", ("0.0.0.0", 15012)),
    ("15013", ("0.0.0.0", 15013)),
    ("localhost", ("localhost", 15012)),
    ("localhost:99", ("localhost", 99)),
])
def test_listen_addresses_split_into_host_and_port(text, expected):
    assert split_address(text, 15012) == expected


@pytest.mark.parametrize("text, says", [
    ("::", "write an IPv6 address in brackets, e.g. [::]:15012 or [::]"),
    ("::1:15012", "[::1:15012]"),                    # ::1 port 15012, or the address ::1:15012?
    ("[::1", "expected [IPV6]:PORT"),
    ("[::1]15012", "expected [IPV6]:PORT"),
    ("[198.18.0.1]:15012", "brackets hold an IPv6 address"),
    ("[localhost]:15012", "brackets hold an IPv6 address"),
    ("[::]:65536", "expected HOST:PORT"),
    ("0.0.0.0:http", "expected HOST:PORT"),
])
def test_an_unclear_listen_address_is_refused_saying_how_to_write_it(text, says):
    with pytest.raises(ValueError) as refused:
        split_address(text, 15012)
    assert says in str(refused.value) and repr(text) in str(refused.value)


def test_the_kubernetes_control_plane_listens_on_both_families():
    """An IPv6-only or dual-stack cluster's proxies reach it at its pod's IPv6 address too."""
    manifest = Path(__file__).resolve().parents[2] / "daemonset" / "control-plane.yaml"
    (deployment,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    for flag in ("--listen", "--http"):
        assert split_address(command[command.index(flag) + 1], 0)[0] == "::", (flag, command)


def test_the_settings_name_the_flag_of_a_bad_address():
    with pytest.raises(SettingsError, match=r"^--listen: bad listen address '::1:15012'"):
        Settings(listen="::1:15012")
    with pytest.raises(SettingsError, match=r"^--http: "):
        Settings(http="[::")
    assert Settings(listen="[::]:15012", http="[::]:15014").endpoints == Endpoints("::", 15012, "::", 15014)


@pytest.mark.skipif(not loopback_has_ipv6(), reason="needs IPv6 on loopback (::1)")
def test_a_control_plane_on_brackets_all_serves_config_and_http_over_both_families(tmp_path):
    async def http_ready(host: str, port: int) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz/ready HTTP/1.1\r\nhost: cp\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    async def main():
        (tmp_path / "bootstrap-tokens.json").write_text(json.dumps({t: n for n, t in NODE_TOKENS.items()}))
        authority = CertificateAuthority(generate_root(TD), trust_domain=TD)
        state = ConfigState()
        state.apply([workload(1)])
        server = ConfigServer(state=state, authority=authority,
                              authenticator=LocalAuthenticator(tmp_path / "bootstrap-tokens.json",
                                                               tokens.token_key(tmp_path, create=True)),
                              endpoints=Endpoints(*split_address("[::]:0", 0), *split_address("[::]:0", 0)))
        await server.start()
        server.mark_synced()
        plane = Plane(server, state, authority, tmp_path)
        try:
            for host in ("127.0.0.1", "[::1]"):
                settings = dataclasses.replace(plane.settings("node1"), target=f"{host}:{server.grpc_port}")
                async with running(ConfigClient(settings)) as client:
                    await asyncio.wait_for(client.synced.wait(), 10)
                    assert "uid-1" in client.resources(ResourceType.WORKLOAD), host
            for host in ("127.0.0.1", "::1"):
                answer = await http_ready(host, server.http_port)
                assert answer.startswith(b"HTTP/1.1 200"), (host, answer)
        finally:
            await server.stop(0)
    asyncio.run(asyncio.wait_for(main(), 60))
