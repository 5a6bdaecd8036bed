"""The `shoal` command. The one place that imports the components, to start them.

Each subcommand lives in its own module under `shoal/cli/` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed args and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

import shoal
from shoal import log

# Modules under shoal/cli/, in the order `shoal --help` lists them. A module
# that is not there yet is skipped, so a part can be named here before it lands.
COMMANDS = (
    "local", "install", "check", "describe", "proxy_config", "stat",
    "control_plane", "node_agent", "ztunnel", "waypoint", "ingress_gateway", "config", "completion", "dashboard",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description="shoal: a sidecarless service mesh")
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    parser.add_argument("--log-format", choices=log.FORMATS, default="console", help="log output format")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    parser.add_argument("--access-log-format", choices=("json", "text"), default=None,
                        help="the proxies' access-log lines: json, or one readable line each (default: json with "
                             "--log-format json, else text)")
    parser.epilog = "shell completion: `source <(shoal completion bash)`; every command has --help"
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
    for each in parsers(parser):
        each.formatter_class = DefaultsHelpFormatter
    return parser


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default when it has one and does not say it already.
    A description of several lines (a module's docstring) is printed as written; one line is wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and default not in (None, False, argparse.SUPPRESS, [])
                and "default" not in text):
            text += f" (default: {default})"
        return text


def parsers(parser: argparse.ArgumentParser):
    """`parser` and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is a command to run (as in `shoal local exec POD -- CMD`),
    # so options may stand anywhere before it.
    trailing: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, trailing = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.trailing = trailing
    log.setup(args.log_format, args.log_level, access_format=args.access_log_format)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return closed_pipe()


def closed_pipe() -> int:
    """The reader went away (`shoal local get pods | head`): end quietly, as a Unix tool killed by SIGPIPE.

    stdout is pointed at /dev/null first, so the interpreter's own flush at exit does not fail again and
    print a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
