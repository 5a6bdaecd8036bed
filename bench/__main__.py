"""`python -m bench NAME [ARGS...]` runs the benchmark program `bench.NAME`.

With no NAME, lists the programs (modules of `bench` that define `main`).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def programs() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"bench.{info.name}")
        except ImportError:
            continue
        if callable(getattr(module, "main", None)):
            names.append(info.name)
    return sorted(names)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bench NAME [ARGS...]\n\nbenchmarks: " + ", ".join(programs()))
        return 0 if argv else 2
    name = argv[0].replace("-", "_")
    if name not in programs():
        print(f"python -m bench: no benchmark {argv[0]!r}; choose one of {', '.join(programs())}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"bench.{name}").main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
