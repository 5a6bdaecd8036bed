"""The ingress gateway's listeners for Gateway ports it was not started with (waypoint.ingress_ports): which ports
(pure), and real listeners opened, swapped and closed as the config changes; a port that cannot be bound is
logged once and tried again."""

import asyncio
import socket

from structlog.testing import capture_logs

from shoal.model import RouteTable, TlsCredential
from shoal.proxy_state import ProxyState
from waypoint.ingress import IngressListener
from waypoint.ingress_ports import PortListeners, wanted_ports

from support.net import free_port

GATEWAY = "shoal-system/shoal-ingressgateway"


def routes(*keys):
    return {(host, port): RouteTable(host, port, "shoal-system", (), "test", GATEWAY) for host, port in keys}


def state_with(*credentials):
    state = ProxyState()
    state.apply(list(credentials), [])
    return state


def test_the_ports_the_config_names_beyond_the_fixed_ones_https_where_a_certificate_is():
    cert = TlsCredential(GATEWAY, 8443, "shoal-system/alt", ("example.com",), b"C", b"K")
    other = TlsCredential("other/gateway", 9443, "other/x", ("x.test",), b"C", b"K")
    tables = routes(("example.com", 80), ("example.com", 8081), ("example.com", 8443), ("*", 0))
    assert wanted_ports(state_with(cert, other), tables, GATEWAY, fixed={80, 443}) == {8081: False, 8443: True}
    assert wanted_ports(state_with(), routes(("a.test", 80)), GATEWAY, fixed={80}) == {}


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_listeners_open_change_and_close_with_the_config():
    async def body():
        made = []

        def make(port, https):
            made.append((port, https))
            return IngressListener(None, port, host="127.0.0.1")
        listeners = PortListeners(make)
        a, b = free_port(), free_port()
        await listeners.sync({a: False, b: False})
        assert listeners.ports == {a: False, b: False} and not refused(a) and not refused(b)
        await listeners.sync({a: False})                       # b no longer named: closed
        assert listeners.ports == {a: False} and refused(b)
        await listeners.sync({a: True})                        # a becomes HTTPS: opened again as such
        assert listeners.ports == {a: True} and made[-1] == (a, True)
        held = socket.socket()
        held.bind(("127.0.0.1", b))
        held.listen()
        with capture_logs() as logs:
            await listeners.sync({a: True, b: False})          # b is taken: logged once, not opened
            await listeners.sync({a: True, b: False})
        assert listeners.ports == {a: True}
        assert len([e for e in logs if e["event"].startswith("cannot listen") and e["port"] == b]) == 1
        held.close()
        await listeners.sync({a: True, b: False})              # freed: opened at the next sync
        assert listeners.ports == {a: True, b: False}
        await listeners.close()
        assert refused(a) and refused(b)
    asyncio.run(body())
