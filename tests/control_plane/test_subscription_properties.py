"""Property: whatever the interleaving of changes, acks, nacks and reconnects, a client that
applies what it accepts ends up holding exactly the state in its scope."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings, strategies as st

from control_plane.state import ConfigState
from control_plane.subscription import Scope, Subscription
from shoal.api import config_pb2, convert
from shoal.model import ResourceType, freeze_labels

from support.plane import workload

W = ResourceType.WORKLOAD

ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 7), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("deliver"), st.booleans(), st.just(0)),       # the next response: ack (True) or nack
    st.tuples(st.just("reconnect"), st.booleans(), st.just(0)),     # resume with held versions (True) or fresh
), max_size=40)


class Client:
    """Holds what it accepted, per type: key -> (version, resource)."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, tuple[str, object]]] = {}
        self.versions: dict[str, str] = {}

    def apply(self, msg: config_pb2.WatchResponse) -> None:
        view = {} if msg.replace else dict(self.held.get(msg.type, {}))
        for key in msg.removed:
            view.pop(key, None)
        for envelope in msg.resources:
            view[envelope.key] = (envelope.version, convert.from_resource(envelope)[1])
        self.held[msg.type] = view
        self.versions[msg.type] = msg.version

    def subscribe_held(self) -> dict[str, config_pb2.Held]:
        return {t: config_pb2.Held(version=self.versions.get(t, ""), resources={k: v for k, (v, _) in view.items()})
                for t, view in self.held.items()}


@settings(max_examples=150, deadline=None)
@given(ops)
def test_a_client_converges_to_the_scoped_state(operations):
    state = ConfigState()
    client = Client()
    sub = Subscription.start(Scope(node="node1"), state)
    for op, a, b in operations:
        if op == "put":
            state.apply([dataclasses.replace(workload(a), labels=freeze_labels({"rev": str(b)}))])
        elif op == "delete":
            state.apply(removals=[(W, f"uid-{a}")])
        elif op == "deliver":
            out = sub.next_response()
            if out is not None:
                msg = config_pb2.WatchResponse.FromString(out.payload)
                if a:
                    client.apply(msg)
                sub.on_ack(config_pb2.Ack(type=msg.type, nonce=msg.nonce, error="" if a else "refused"))
        elif op == "reconnect":
            if not a:
                client = Client()
            sub = Subscription.start(Scope(node="node1"), state, client.subscribe_held())
    # Converge: the state changes once more (a nack holds a type until then), then deliver and ack everything.
    state.apply([workload(99)])
    while (out := sub.next_response()) is not None:
        msg = config_pb2.WatchResponse.FromString(out.payload)
        client.apply(msg)
        sub.on_ack(config_pb2.Ack(type=msg.type, nonce=msg.nonce))
    expected = {e.key: e.resource for e in state.journals[W].current()}
    assert {k: r for k, (_, r) in client.held.get("Workload", {}).items()} == expected
    assert client.versions["Workload"] == state.version(W)
    assert sub.in_sync()
