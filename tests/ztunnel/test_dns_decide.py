"""The DNS proxy's decision, table-driven: which names the mesh answers, which it refuses, which go on."""

from __future__ import annotations

import pytest

from shoal.dns_message import TYPE_A, TYPE_AAAA, Question
from shoal.model import Resolution, Service, ServicePort
from shoal.proxy_state import ProxyState
from ztunnel.dns import Answer, Forward, NoSuchName, candidates, decide

WEB = Service("web", "shop", "web.shop.svc.cluster.local", ("198.18.16.10", "fd73:686f:616c:ff::a"),
              (ServicePort(80),))
DB = Service("db", "data", "db.data.svc.cluster.local", ("198.18.16.11",), (ServicePort(5432),))
HEADLESS = Service("peers", "shop", "peers.shop.svc.cluster.local", (), (ServicePort(80),))
API = Service("ext", "egress", "api.outside.test", ("198.18.64.7", "fd73:686f:616c:fe::7"), (ServicePort(80),),
              source_kind="ServiceEntry", resolution=Resolution.DNS)
WILD = Service("wild", "egress", "*.wild.test", ("198.18.48.30",), (ServicePort(80),),
               source_kind="ServiceEntry", resolution=Resolution.NONE)


def state() -> ProxyState:
    s = ProxyState()
    for service in (WEB, DB, HEADLESS, API, WILD):
        s.upsert(service)
    return s


@pytest.mark.parametrize("name, qtype, namespace, expected", [
    ("web", TYPE_A, "shop", Answer("web.shop.svc.cluster.local", ("198.18.16.10",))),
    ("web", TYPE_AAAA, "shop", Answer("web.shop.svc.cluster.local", ("fd73:686f:616c:ff::a",))),
    ("web.shop", TYPE_A, "data", Answer("web.shop.svc.cluster.local", ("198.18.16.10",))),
    ("web.shop.svc", TYPE_A, "data", Answer("web.shop.svc.cluster.local", ("198.18.16.10",))),
    ("web.shop.svc.cluster.local", TYPE_A, "data", Answer("web.shop.svc.cluster.local", ("198.18.16.10",))),
    ("db.data.svc.cluster.local", TYPE_AAAA, "shop", Answer("db.data.svc.cluster.local", ())),   # NODATA
    ("db.data.svc.cluster.local", 16, "shop", Answer("db.data.svc.cluster.local", ())),          # TXT: NODATA
    ("api.outside.test", TYPE_A, "shop", Answer("api.outside.test", ("198.18.64.7",))),
    ("api.outside.test", TYPE_AAAA, "shop", Answer("api.outside.test", ("fd73:686f:616c:fe::7",))),
    ("x.wild.test", TYPE_A, "shop", Answer("*.wild.test", ("198.18.48.30",))),
    ("a.b.wild.test", TYPE_A, "shop", Answer("*.wild.test", ("198.18.48.30",))),
    # a short name is the asker's namespace's only
    ("web", TYPE_A, "data", Forward("web")),
    # the search list's expansions of an outside name, and unknown Services, fail fast
    ("api.outside.test.shop.svc.cluster.local", TYPE_A, "shop", NoSuchName("api.outside.test.shop.svc.cluster.local")),
    ("nope.shop.svc.cluster.local", TYPE_A, "shop", NoSuchName("nope.shop.svc.cluster.local")),
    ("peers.shop.svc.cluster.local", TYPE_A, "shop", NoSuchName("peers.shop.svc.cluster.local")),   # no VIP
    ("wild.test", TYPE_A, "shop", Forward("wild.test")),
    ("example.com", TYPE_A, "shop", Forward("example.com")),
])
def test_decide(name, qtype, namespace, expected):
    assert decide(state(), namespace, Question(name, qtype, 1)) == expected


def test_candidates_follow_the_kubernetes_short_forms():
    assert candidates("a", "ns") == ["a", "a.ns.svc.cluster.local"]
    assert candidates("a.b", "ns") == ["a.b", "a.b.svc.cluster.local"]
    assert candidates("a.b.svc", "ns") == ["a.b.svc", "a.b.svc.cluster.local"]
    assert candidates("a.b.c", "ns") == ["a.b.c"]
