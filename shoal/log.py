"""One structlog set-up for every shoal process.

Human-readable lines on a console by default; one JSON object per line with
`--log-format json`. Standard-library logging (grpc, kubernetes, pyroute2) is
routed through the same renderer so that a process writes one format only.
"""

from __future__ import annotations

import logging
import sys

# structlog imports `rich`, when it is installed, for the console renderer's tracebacks: 5 MiB and 90
# modules resident in every shoal process, the proxies too, which log JSON and never render one. Hidden
# while structlog loads, so console lines show plain tracebacks; `rich` stays importable afterwards.
_HIDE_RICH = "rich" not in sys.modules and "structlog" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None   # `import rich` raises ImportError, which structlog takes as not installed
try:
    import structlog
finally:
    if _HIDE_RICH and sys.modules.get("rich", False) is None:
        del sys.modules["rich"]

from shoal import access_log  # noqa: E402  (after structlog, whose import is arranged above)

FORMATS = ("console", "json")


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was set up (a process,
    or a test runner, may swap it later; a closed old one must not break the caller)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def setup(fmt: str = "console", level: str = "info", stream=None, access_format: str | None = None) -> None:
    """`access_format` (json or text) is how access-log lines look; by default json with json, text else."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; choose one of {', '.join(FORMATS)}")
    access_format = access_format or ("json" if fmt == "json" else "text")
    if access_format not in access_log.FORMATS:
        raise ValueError(f"unknown access log format {access_format!r}; choose one of {', '.join(access_log.FORMATS)}")
    stream = stream or _Stderr()
    json_renderer = structlog.processors.JSONRenderer(sort_keys=False)
    base = json_renderer if fmt == "json" else structlog.dev.ConsoleRenderer(colors=stream.isatty())

    def renderer(logger, method, event: dict):
        if event.pop(access_log.MARK, False):
            return json_renderer(logger, method, event) if access_format == "json" else access_log.text_line(event)
        return base(logger, method, event)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(stream),   # a line and its newline in one write(), not two
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def get(name: str):
    return structlog.get_logger(name)


def get_access(name: str) -> "AccessLogger":
    """A logger for access-log lines: rendered as `--access-log-format` says (shoal.access_log), and
    written only while the process's access log is on (`set_access_log`)."""
    return AccessLogger(name)


_access_on = True


def set_access_log(on: bool) -> None:
    """Whether this process writes access-log lines at all. Off (the waypoint's default, as Istio's), every
    access logger is disabled at every level, so a proxy that asks `is_enabled_for` first builds no line."""
    global _access_on
    _access_on = on


class AccessLogger:
    """The access loggers of a process, switched on and off together; otherwise a structlog logger."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        # initial values, not .bind(): a lazy proxy's bind() fixes the configuration of the moment, and
        # modules take their access logger at import, before the process's setup() has run
        self._logger = structlog.get_logger(name, **{access_log.MARK: True})

    def is_enabled_for(self, level: int) -> bool:
        return _access_on and self._logger.is_enabled_for(level)

    def info(self, event: str, **fields) -> None:
        if _access_on:
            self._logger.info(event, **fields)
