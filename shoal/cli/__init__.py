"""The `shoal` command. The one place that imports the components, to start them.

Each subcommand lives in its own module under `shoal/cli/` and exposes
`register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed args and returning an exit code. A new command is named in
`COMMANDS` with its module; only the chosen command's module is imported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

import shoal
from shoal import log

# Every command, and the module under shoal/cli/ that registers it, in the order `shoal --help` lists
# them. A command's module is imported only when that command runs, or when the whole tree is wanted
# (help, completion, a misspelt command): the proxies start through this parser, and whatever it
# imports stays resident in each of them (the local cluster's modules alone were 17 MiB of the waypoint).
COMMANDS = {
    "local": "local", "install": "install", "uninstall": "install", "check": "check", "describe": "describe",
    "proxy-config": "proxy_config", "stat": "stat", "top": "stat", "control-plane": "control_plane",
    "node-agent": "node_agent", "ztunnel": "ztunnel", "waypoint": "waypoint",
    "ingress-gateway": "ingress_gateway", "config": "config", "completion": "completion", "dashboard": "dashboard",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command tree; with `command` (a name in COMMANDS), only that command's module is
    imported and registered, and its parser is the same as in the whole tree."""
    parser = root_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [COMMANDS[command]] if command is not None else dict.fromkeys(COMMANDS.values())
    for name in modules:
        importlib.import_module(f"shoal.cli.{name}").register(sub)
    for each in parsers(parser):
        each.formatter_class = DefaultsHelpFormatter
    return parser


def root_parser() -> argparse.ArgumentParser:
    """`shoal` and its options that come before the command."""
    parser = argparse.ArgumentParser(prog="shoal", description="shoal: a sidecarless service mesh")
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    parser.add_argument("--log-format", choices=log.FORMATS, default="console", help="log output format")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    parser.add_argument("--access-log-format", choices=("json", "text"), default=None,
                        help="the proxies' access-log lines: json, or one readable line each (default: json with "
                             "--log-format json, else text)")
    parser.epilog = "shell completion: `source <(shoal completion bash)`; every command has --help"
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The command `argv` runs, when that is plain before parsing: the first word that is neither an
    option of `shoal` itself nor an option's value. None (so the whole tree is built) for help or the
    version asked before any command, an unknown word, or no command at all."""
    options = {o: action.nargs != 0 for action in root_parser()._actions for o in action.option_strings}
    words = iter(argv)
    for word in words:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
        if word not in options:        # --log-level=debug, or an abbreviation argparse will resolve
            if "=" not in word:
                return None
        elif options[word]:
            next(words, None)          # that option's value
        elif word in ("-h", "--help", "--version"):
            return None
    return None


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
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is a command to run (as in `shoal local exec POD -- CMD`),
    # so options may stand anywhere before it.
    trailing: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, trailing = argv[:cut], argv[cut + 1:]
    args = build_parser(chosen_command(argv)).parse_args(argv)
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
