"""The `shoal` command. The one place that imports the components, to start them.

Each subcommand lives in its own module under `shoal/cli/` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shoal import log

# Modules under shoal/cli/, in the order `shoal --help` lists them.
COMMANDS = ("local", "control_plane", "node_agent", "ztunnel", "waypoint", "config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description="shoal: a sidecarless service mesh")
    parser.add_argument("--log-format", choices=log.FORMATS, default="console", help="log output format")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"shoal.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"shoal.cli.{name}":
                raise
            continue  # that part is not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(args.log_format, args.log_level)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
