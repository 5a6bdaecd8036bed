"""The ztunnel: shoal's per-node L4 proxy (HBONE/mTLS, L4 policy, TCP telemetry).

    main.py           the process: hand-off client, config Watch, certificates, HTTP ports, drain
    config.py         the settings, one frozen object
    proxy.py          the node's ztunnel put together: each part built and handed its dependencies
    pods.py           PodRegistry: enrolled pods, their listeners in the pod's netns, how the app is reached
    connections.py    ConnectionTracker: open connections, byte reports, drain
    outbound.py       the pure outbound decision: (state, source, destination) -> Plan
    outbound_io.py    carrying a Plan out: TCP, or a stream on a pooled HBONE connection
    inbound.py        the pure inbound decision: (state, workload, connection) -> InboundPlan | Refusal
    inbound_io.py     15008 (HBONE server) and 15006 (plaintext), carrying the inbound decision out
    telemetry.py      Istio TCP metrics and the access log
    errors.py         ZtunnelError

What the ztunnel shares with the waypoint lives once in `shoal`:
`shoal.proxy_state` (the state store), `shoal.hbone_pool` (the HBONE client
pool), `shoal.certs` (certificates), `shoal.trust_bundle`,
`shoal.config_client` (Config.Watch and the Sign client), `shoal.sockets`,
`shoal.authz`, `shoal.admin_http`, and HBONE itself: `shoal.hbone` (sans-IO),
`shoal.hbone_lean` (the fast DATA paths), `shoal.hbone_relay` and
`shoal.hbone_io` (asyncio). PERFORMANCE.md says what was measured.
"""
