"""Only the chosen command's module is imported, and a waypoint process loads none of the heavy modules it
does not use (issue 18: whatever the CLI imports stays resident in every proxy).

- The table of commands (`shoal.cli.COMMANDS`) names exactly what the modules register, in order.
- A command built alone parses and helps exactly as in the whole tree.
- `chosen_command` tells the command from the words before it, and gives up (the whole tree) when
  help or the version is asked first, or the word is no command.
- `shoal waypoint run` and `shoal ztunnel`, as processes: their `sys.modules` after the CLI has
  started them holds no module of the local cluster, Kubernetes, netlink, YAML, rich or another
  component, and none of grpcio, `cryptography` and prometheus_client (the proxies speak gRPC with
  shoal.grpc_channel, make keys with shoal.libcrypto and count with shoal.metrics; the three were
  23 MiB of a waypoint's 66).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from shoal.cli import COMMANDS, build_parser, chosen_command, parsers

from support.ca import TestCA
from support.polling import eventually
from support.root import needs_root

# What a waypoint must never load: each is megabytes resident, and none is on its path.
NOT_IN_A_PROXY = ("pyroute2", "yaml", "rich", "pygments", "kubernetes", "urllib3", "bcc", "grpc", "cryptography",
                  "prometheus_client", "opentelemetry", "control_plane", "node_agent", "bench", "shoal.local.cluster")
NOT_IN_A_WAYPOINT = (*NOT_IN_A_PROXY, "ztunnel",
                     *(f"shoal.cli.{module}" for module in set(COMMANDS.values()) - {"waypoint"}))
NOT_IN_A_ZTUNNEL = (*NOT_IN_A_PROXY, "waypoint",
                    *(f"shoal.cli.{module}" for module in set(COMMANDS.values()) - {"ztunnel"}))

# Runs the CLI as `python -m shoal` does, then prints the modules the process holds (stdout is ours: the
# waypoint logs to stderr).
DRIVER = """
import json, sys
from shoal.cli import main
code = main(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
sys.exit(code)
"""


def helps(parser):
    """Every parser of the tree below `parser`, by its prog, with its help text."""
    return {each.prog: each.format_help() for each in parsers(parser)}


def subcommands(parser):
    return parser._subparsers._group_actions[0].choices   # argparse keeps them there


def test_the_table_names_what_the_modules_register_in_order():
    assert list(subcommands(build_parser())) == list(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_built_alone_is_the_command_of_the_whole_tree(command):
    whole, alone = subcommands(build_parser())[command], subcommands(build_parser(command))[command]
    assert helps(alone) == helps(whole)


@pytest.mark.parametrize("argv, command", [
    (["waypoint", "run", "--namespace", "a"], "waypoint"),
    (["--log-format", "json", "waypoint", "run"], "waypoint"),
    (["--log-level=debug", "top", "--once"], "top"),
    (["--access-log-format", "text", "--log-level", "debug", "local", "up"], "local"),
    (["--help", "waypoint"], None),
    (["--version"], None),
    (["-h"], None),
    (["--log-f", "json", "waypoint"], None),      # an abbreviation: the whole tree's parser resolves it
    (["wayponit", "run"], None),                  # a misspelling: the whole tree's error lists the commands
    ([], None),
])
def test_the_chosen_command_is_told_from_the_words_before_it(argv, command):
    assert chosen_command(argv) == command


def test_help_of_the_whole_tree_and_an_unknown_command_still_list_every_command():
    listed = subprocess.run([sys.executable, "-m", "shoal", "--help"], capture_output=True, text=True, timeout=60)
    wrong = subprocess.run([sys.executable, "-m", "shoal", "wayponit", "run"], capture_output=True, text=True,
                           timeout=60)
    assert listed.returncode == 0 and wrong.returncode == 2
    for command in COMMANDS:
        assert f"\n    {command} " in listed.stdout or f"\n    {command}\n" in listed.stdout, command
        assert f"'{command}'" in wrong.stderr


def heavy(modules: list[str], banned=NOT_IN_A_WAYPOINT) -> list[str]:
    return sorted(m for m in modules for bad in banned if m == bad or m.startswith(bad + "."))


def test_starting_a_waypoint_imports_none_of_the_heavy_modules():
    """Up to where the waypoint's own modules are loaded: its flags are refused (exit 2) after cmd_run has
    imported waypoint.main, everything at module level included."""
    result = subprocess.run([sys.executable, "-c", DRIVER, "--log-format", "json", "waypoint", "run",
                             "--namespace", "Not-A-DNS-Name", "--name", "waypoint"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    modules = json.loads(result.stdout)
    assert "waypoint.main" in modules and "shoal.grpc_channel" in modules   # it did get that far
    assert heavy(modules) == []


def test_the_ingress_gateway_imports_neither_grpc_nor_cryptography():
    result = subprocess.run([sys.executable, "-c", "import json, sys, waypoint.ingress_main; "
                             "print(json.dumps(sorted(sys.modules)))"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert "shoal.grpc_channel" in modules
    assert heavy(modules, ("grpc", "cryptography")) == []


PROXIES = {
    # command line after the common flags; what its log says once it has called the control plane
    "waypoint": (["waypoint", "run", "--namespace", "ns1", "--name", "waypoint"], "refused by 127.0.0.1:1",
                 "waypoint.main", NOT_IN_A_WAYPOINT),
    "ztunnel": (["ztunnel", "--node", "node1", "--socket", "/nonexistent/shoal-handoff.sock"],
                "config stream lost", "ztunnel.main", NOT_IN_A_ZTUNNEL),
}


@needs_root("runs the proxy in a network namespace of its own (unshare --net), so its ports are its own")
@pytest.mark.parametrize("proxy", list(PROXIES))
def test_a_running_proxy_holds_none_of_the_heavy_modules(tmp_path, proxy):
    """The proxy runs (admin ports, config stream and certificate loops started; no control plane
    answers at 127.0.0.1:1) until SIGTERM; then its modules are read."""
    argv, called, main_module, banned = PROXIES[proxy]
    (tmp_path / "bundle.pem").write_bytes(TestCA().bundle_pem)
    (tmp_path / "token").write_text("not-checked-no-control-plane-answers")
    process = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "-", sys.executable, "-c", DRIVER,
         "--log-format", "json", *argv,
         "--control-plane", "127.0.0.1:1", "--ca-bundle", str(tmp_path / "bundle.pem"),
         "--token-file", str(tmp_path / "token"), "--drain-seconds", "0"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr", "w"), text=True)
    try:
        # started, and it has called the control plane over gRPC once
        eventually(lambda: called in (tmp_path / "stderr").read_text() or process.poll() is not None,
                   60, f"the {proxy} to start and call the control plane")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, (tmp_path / "stderr").read_text()
    modules = json.loads(out)
    assert main_module in modules and "uvloop" in modules and "shoal.grpc_channel" in modules
    assert heavy(modules, banned) == []
