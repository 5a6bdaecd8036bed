"""What every `shoal` command prints the same way: errors, tables, ages.

One error prefix for the whole CLI: `shoal: error: ...` on stderr (argparse's
own usage errors say `shoal ...: error:` too).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

ERROR_PREFIX = "shoal: error: "


def fail(message: str, status: int = 1) -> int:
    """Prints `message` as an error and returns `status`, for `return fail(...)` in a command."""
    print(f"{ERROR_PREFIX}{message}", file=sys.stderr)
    return status


def table(headers: list[str], rows: list[list[object]], gap: str = "   ") -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [gap.join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += [gap.join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's AGE: `45s`, `12m`, `3h`, `2d` (and `<unknown>` for a missing or bad time)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"
