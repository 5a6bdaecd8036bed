"""The ztunnel: shoal's per-node L4 proxy (HBONE/mTLS, L4 policy, TCP telemetry).

    main.py         the process: hand-off client, config Watch, certificates, HTTP ports, drain
    config.py       the settings, one frozen object
    state.py        ProxyState: workloads, services, waypoints, policies, with indexes
    outbound.py     the pure outbound decision: (state, source, destination) -> Plan
    authz.py        L4 AuthorizationPolicy: a connection's facts, judged by shoal.authz
    proxy.py        per-pod listeners in the pod's netns; the outbound I/O (plans carried out)
    inbound.py      15008 (HBONE server: TLS, authz, app leg with the client's IP) and 15006 (plaintext)
    pool.py         HBONE connection pool
    certs.py        workload certificates: on demand, renewed at half life, kept on failure
    sockets.py      sockets inside pod netns: listeners, original destination, spare sockets, connect
    telemetry.py    Istio TCP metrics and the access log
    errors.py       ZtunnelError

HBONE itself is shared with the waypoint and lives in `shoal`: `shoal.hbone`
(sans-IO), `shoal.hbone_lean` (the fast DATA paths), `shoal.hbone_relay` and
`shoal.hbone_io` (asyncio). PERFORMANCE.md says what was measured.
"""
