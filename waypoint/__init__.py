"""The waypoint: the per-namespace L7 proxy (see README.md beside this file).

    routing.py     the decision: request head -> Plan or Refusal (pure); the L4 one for opaque TCP
    http1.py       HTTP/1.1 messages: a sans-IO reader around httptools, and serializers
    channel.py     a readable byte channel over an HBONE stream or a TCP connection
    server.py      the HBONE listener (15008): TLS, CONNECT, protocol by port or sniffing
    proxy.py       carrying a plan out: faults, mirrors, tries with timeouts and retries
    responders.py  writing answers to HTTP/1.1 clients (h2server.py has the HTTP/2 one)
    h2server.py    HTTP/2 and gRPC from clients, one task per stream
    streaming.py   gRPC request bodies that stream while they arrive
    exchange.py    one request to an endpoint; HTTP/1.1 keep-alive pool
    h2upstream.py  HTTP/2 to endpoints, multiplexed per endpoint
    upstream.py    HBONE streams (shoal.hbone_pool) and TCP connections to endpoints, as Channels
    tcp.py         opaque TCP through the waypoint
    telemetry.py   istio_requests_total, istio_request_duration_milliseconds, istio_tcp_*, access log
    config.py      settings; main.py the process (its metrics, readiness and config dump: shoal.admin_http)

What the waypoint shares with the ztunnel lives once in `shoal`: the state
store (`shoal.proxy_state`, which also answers which policies target this
waypoint), the HBONE client pool (`shoal.hbone_pool`), its certificate
(`shoal.certs`, the one-identity case), the trust bundle
(`shoal.trust_bundle`), the control-plane client and Sign client
(`shoal.config_client`), sockets (`shoal.sockets`), authorization
(`shoal.authz`) and HBONE itself (`shoal.hbone`, `shoal.hbone_io`).
"""
