"""The basics of a CLI: help everywhere with defaults, one error prefix, shell completion that works."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from shoal.cli import build_parser, parsers

from support.cli import shoal


def options():
    for parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            yield parser, action


def test_every_argument_has_help_and_every_option_its_default():
    missing = [f"{parser.prog} {action.dest}" for parser, action in options() if not action.help]
    assert missing == []
    silent = []
    for parser, action in options():
        if action.option_strings and action.default not in (None, False, []):
            text = parser.formatter_class(parser.prog)._get_help_string(action)
            if "default" not in text:
                silent.append(f"{parser.prog} {action.option_strings[0]}")
    assert silent == []


def test_the_default_is_shown_in_the_rendered_help():
    text = shoal("check", "--help").stdout
    assert "(default: text)" in " ".join(text.split())
    assert "(default: 2, or the existing cluster's)" in " ".join(shoal("local", "up", "--help").stdout.split())


def test_errors_have_one_prefix():
    for argv in (("check", "--cluster", "nosuch"), ("describe", "pod", "x", "--cluster", "nosuch"),
                 ("local", "get", "pods", "--cluster", "nosuch"), ("proxy-config", "routes", "node9", "--cluster", "nosuch"),
                 ("waypoint", "list", "--cluster", "nosuch"), ("config", "all", "--cluster", "nosuch"),
                 ("stat", "--cluster", "nosuch")):
        result = shoal(*argv, check=False)
        assert result.returncode != 0 and result.stderr.startswith("shoal: error: "), (argv, result.stderr)


def test_version():
    result = shoal("--version")
    assert result.stdout.startswith("shoal ") and result.stdout.split()[1][0].isdigit()


def complete(script: str, shell: str, words: list[str]) -> list[str]:
    """What the completion script offers for the last of `words` (the word being typed)."""
    array = " ".join(f"'{w}'" for w in words)
    program = (f"{script}\nCOMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; _shoal; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
    result = subprocess.run([shell, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def bash_script():
    return shoal("completion", "bash").stdout


@pytest.mark.parametrize("words, expected", [
    (["shoal", "lo"], ["local"]),
    (["shoal", "local", "ge"], ["get"]),
    (["shoal", "local", "get", "--o"], ["--output"]),
    (["shoal", "local", "get", "--output", ""], ["json", "table", "wide", "yaml"]),
    (["shoal", "proxy-config", "r"], ["routes"]),
    (["shoal", "--log-level", "debug", "check", "--on"], ["--only"]),
    (["shoal", "completion", ""], ["--help", "bash", "zsh"]),
])
def test_bash_completion_offers_what_may_follow(bash_script, words, expected):
    assert complete(bash_script, "bash", words) == expected


def test_the_zsh_script_loads_bashcompinit_and_completes_the_same():
    script = shoal("completion", "zsh").stdout
    assert script.splitlines()[1] == "autoload -U +X bashcompinit && bashcompinit"
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed here; the script's completion function is bash's, tested above")
    assert complete(script, "zsh", ["shoal", "local", "ge"]) == ["get"]
