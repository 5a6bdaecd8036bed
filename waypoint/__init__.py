"""The waypoint: the per-namespace L7 proxy.

    state.py     what the control plane said, indexed (one writer: the config stream)
    authz.py     L7 AuthorizationPolicy evaluation (pure)
    routing.py   the decision: request head -> Plan or Refusal (pure)
    http1.py     HTTP/1.1 messages: a sans-IO parser and serializer around httptools
    upstream.py  HBONE sessions to endpoints (pooled) and plain TCP, as byte channels
    proxy.py     the I/O: HBONE server on 15008, carrying out plans
    telemetry.py istio_requests_total, istio_request_duration_milliseconds, access log
    main.py      the process: config stream, certificate, listeners, metrics and readiness
"""
