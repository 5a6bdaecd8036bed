"""The waypoint's one exception hierarchy. Each carries Envoy's response flag.

Foreign and shared errors become these at the waypoint's boundaries:
`waypoint.upstream` for connections to endpoints (sockets, HBONE, TLS),
`waypoint.http1` and `waypoint.h2server` for what clients send.
"""

from shoal.errors import ShoalError


class WaypointError(ShoalError):
    """Base of the waypoint's errors; the message says what to check."""

    response_flag = "UF"


class UpstreamFailed(WaypointError):
    """Could not reach the endpoint, or it broke the connection."""

    def __init__(self, message: str, kind: str = "connect-failure", flag: str = "UF") -> None:
        super().__init__(message)
        self.kind = kind            # connect-failure, reset, refused-stream (retry_on names)
        self.response_flag = flag


class UpstreamTimeout(WaypointError):
    response_flag = "UT"


class BadRequest(WaypointError):
    """The client sent something that is not HTTP/1.1 we accept."""

    response_flag = "DPE"

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class StartupError(WaypointError):
    pass


class DownstreamGone(WaypointError):
    """The client closed or reset its connection while its answer was being sent."""

    response_flag = "DC"
