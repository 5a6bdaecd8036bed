"""Access-log lines: one per proxied connection (ztunnel, waypoint TCP) or request (waypoint HTTP).

The proxies write them through `shoal.log.get_access(name)`; what a line looks
like is chosen per process with `--access-log-format`:
- `json`: one JSON object per line, every field (what tools read; the local
  cluster's components use it);
- `text`: one readable line in the spirit of Envoy's default format, the
  fields a person scans first, then the rest as key=value.

`text_line` is pure: a record (the event dict) in, a line out.
"""

from __future__ import annotations

FORMATS = ("json", "text")
MARK = "_access"     # set on access-log events, so the renderer can tell them from the process's own logs

_HTTP_FIRST = ("method", "path", "status", "response_flags", "bytes_received", "bytes_sent", "duration_ms",
               "authority", "src_addr", "upstream")
_TCP_FIRST = ("direction", "protocol", "src_addr", "dst_addr", "response_flags", "bytes_received", "bytes_sent",
              "duration_ms", "upstream")
_SKIP = {"event", "level", "timestamp", MARK}


def _end(record: dict, side: str) -> str:
    workload, namespace = record.get(f"{side}_workload"), record.get(f"{side}_namespace")
    return f"{workload}.{namespace}" if workload and namespace else "-"


def _value(value) -> str:
    if value is None or value == "":
        return "-"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f'"{text}"' if " " in text else text


def text_line(record: dict) -> str:
    """`[time] "GET /path" 200 - 0 512 3.1ms "host" src -> dst ...` for a request,
    `[time] outbound 10.0.0.1:40000 -> 10.0.0.2:80 - 100 200 5.0ms ...` for a connection; then the rest."""
    when = record.get("timestamp", "")
    if "method" in record:
        head = (f'[{when}] "{record.get("method")} {record.get("path")}" {_value(record.get("status"))} '
                f'{_value(record.get("response_flags"))} {_value(record.get("bytes_received"))} '
                f'{_value(record.get("bytes_sent"))} {_value(record.get("duration_ms"))}ms '
                f'"{record.get("authority") or "-"}" {_end(record, "src")} -> {_end(record, "dst")}')
        first = _HTTP_FIRST
    else:
        head = (f'[{when}] {record.get("direction") or record.get("protocol") or "-"} '
                f'{_value(record.get("src_addr"))} -> {_value(record.get("dst_addr") or record.get("dst"))} '
                f'{_value(record.get("response_flags"))} {_value(record.get("bytes_received"))} '
                f'{_value(record.get("bytes_sent"))} {_value(record.get("duration_ms"))}ms '
                f'{_end(record, "src")} -> {_end(record, "dst")}')
        first = _TCP_FIRST
    shown = {*first, "src_workload", "src_namespace", "dst_workload", "dst_namespace", "dst_addr", "dst"}
    rest = " ".join(f"{k}={_value(v)}" for k, v in record.items()
                    if k not in shown and k not in _SKIP and v not in (None, ""))
    return f"{head} {rest}".rstrip()
