"""The root of the `shoal` command: its version and the parts it lists."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import shoal
from shoal.cli import build_parser


def test_version_is_the_package_version():
    out = subprocess.run([sys.executable, "-m", "shoal", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"shoal {shoal.__version__}"
    assert shoal.__version__ == importlib.metadata.version("shoal")


def test_every_built_part_is_listed():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them there
    for name in ("local", "control-plane", "node-agent", "ztunnel", "waypoint", "config"):
        assert name in commands
