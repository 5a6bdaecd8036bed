"""Packet capture in a network namespace: what crossed a wire while a test's body ran."""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SETTLE = 0.7  # tcpdump needs a moment to attach before, and to write out after


@dataclass
class Capture:
    path: Path

    @property
    def text(self) -> str:
        """tcpdump's output: a header line per packet and its payload as ASCII (-A)."""
        return self.path.read_text(errors="replace")

    @property
    def headers(self) -> list[str]:
        return [line for line in self.text.splitlines() if (" IP " in line or " IP6 " in line) and " > " in line]


@contextmanager
def tcpdump(netns: str, interface: str, bpf_filter: str, path: Path) -> Iterator[Capture]:
    with open(path, "w") as out:
        dump = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-i", interface, "-l", "-nn", "-A",
                                 bpf_filter], stdout=out, stderr=subprocess.DEVNULL)
    time.sleep(SETTLE)
    try:
        yield Capture(path)
        time.sleep(SETTLE)
    finally:
        dump.terminate()
        dump.wait()
