"""shoal: a sidecarless service mesh. This package is the shared core and the CLI.

Every piece that two parts share lives here, once (DESIGN.md, "Parts and layout").

The contracts between the parts:
    contracts.py      ports, the mark, the probe source, label and annotation keys, `enrollment()`
    errors.py         ShoalError, the root of every part's exceptions
    api/              protobuf and generated gRPC code; `api/convert.py` turns it into the model at the edge
    model/            the mesh's domain dataclasses: workloads, services, waypoints, policies, routes

What the ztunnel and the waypoint share (the proxy kit):
    proxy_state.py    the one state store, with named indexes and remove-before-insert
    proxy_process.py  the control-plane link, the admin ports, the stop sequence of a proxy process
    config_client.py  Config.Watch (versioned, acked, resumable) and the one Sign client
    certs.py          workload certificates: on demand, renewed at half life, kept on failure, forgotten
    trust_bundle.py   the mesh trust bundle on disk, reloaded when it changes
    identity.py       SPIFFE IDs, keys and CSRs, mesh mTLS contexts, peer checks
    hbone.py          HBONE, sans-IO: HTTP/2 CONNECT tunnels and their per-stream semantics
    hbone_lean.py     the fast DATA paths through h2
    hbone_io.py       HBONE over asyncio: sessions and tunnel streams
    hbone_relay.py    the relay between two sides, and the TCP side
    relay_lane.py     which relay carries established tunnels: native, the compiled lane (_relay.c), or Python
    native_io.py      native transports: sockets and TLS records of established connections in C (_native_*.c)
    hbone_pool.py     the HBONE client pool: connect, check the peer's identity, reuse, sweep
    sockets.py        listeners, original destinations and marked upstream connections, in any netns
    authz.py          AuthorizationPolicy evaluation (L4 for the ztunnel, L7 for the waypoint)
    admin_http.py     the small admin, metrics and readiness HTTP responder
    transparent.py    the source-IP return path inside a pod (installed by the ztunnel, removed by either)

The node agent and the ztunnel:
    handoff.py        the hand-off protocol, sans-IO; handoff_io.py its asyncio drivers

Processes and hosts:
    lifecycle.py, log.py, netns.py, tokens.py, store.py (the local cluster's object store)
    local/            `shoal local`: the whole mesh on one machine, in network namespaces
    cli/              the `shoal` command, the one place that imports the components
"""

__version__ = "0.1.0"
