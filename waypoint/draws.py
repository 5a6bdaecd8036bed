"""The random source the waypoint's decision draws from, with an even spread for weighted picks.

A weighted pick from independent uniform draws is right only on average:
over 400 requests a 50/50 route lands outside 180..220 about once in 20
runs. `Draws` keeps, per route, a low-discrepancy stream instead: the
golden-ratio sequence r(n+1) = frac(r(n) + 1/phi), started at a random
point. Any interval of [0, 1) then receives its share of draws within a
few counts at every length, so a route's destinations get their weights'
proportions over short runs too, while the order stays unpredictable to a
client. One stream per route (its name and destinations) for the whole process (every connection and
every request draw from it), so the spread holds across connections; each
worker process keeps its own, and the sum of evenly spread streams is even.

The decision stays pure: `routing.follow` asks `weighted_draw(rand, route)`,
which is `rand.weighted(route)` for a `Draws` and a plain `rand()` for any
other source (tests pass seeded or scripted callables).
"""

from __future__ import annotations

import random
from typing import Callable

STEP = (5 ** 0.5 - 1) / 2      # 1/phi: the additive step with the lowest discrepancy
MAX_STREAMS = 4096             # routes of configs replaced long ago are forgotten past this


class Draws:
    """Callable as `rand()` (uniform in [0, 1)); `weighted(route)` is the route's next spread draw."""

    def __init__(self, rand: Callable[[], float] = random.random) -> None:
        self._rand = rand
        self._streams: dict[tuple, float] = {}
        # id(route) -> (route, its stream's key): the key is made once per route object, not per request. The
        # entry holds the route, so its id is not reused while it is here.
        self._keys: dict[int, tuple] = {}

    def __call__(self) -> float:
        return self._rand()

    def weighted(self, route) -> float:
        # Keyed by what the pick is made among (a route may be rebuilt per request, e.g. the ingress gives
        # a port-less destination its port), so every request of that route draws from one stream.
        known = self._keys.get(id(route))
        if known is not None and known[0] is route:
            key = known[1]
        else:
            key = (route.name, tuple((d.host, d.port, d.subset_name, d.weight) for d in route.destinations))
            if len(self._keys) >= MAX_STREAMS:
                self._keys.clear()
            self._keys[id(route)] = (route, key)
        position = self._streams.get(key)
        if position is None:
            if len(self._streams) >= MAX_STREAMS:
                self._streams.clear()
            position = self._rand()
        self._streams[key] = (position + STEP) % 1.0
        return position


def weighted_draw(rand: Callable[[], float], route) -> float:
    """The draw a weighted pick of `route` uses: the route's spread stream if `rand` keeps them, else rand()."""
    weighted = getattr(rand, "weighted", None)
    return weighted(route) if weighted is not None else rand()
