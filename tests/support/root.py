"""Tests that build network namespaces, veths, cgroups, iptables rules or eBPF programs need root."""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0


def needs_root(what: str = "creates network namespaces") -> pytest.MarkDecorator:
    """`pytestmark = needs_root("...")`: skipped, saying why, when not run as root."""
    return pytest.mark.skipif(not IS_ROOT, reason=f"needs root: {what}")
