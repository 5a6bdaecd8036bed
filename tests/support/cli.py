"""The `shoal` command, run the way a user runs it from a shell."""

from __future__ import annotations

import os
import subprocess
import sys

SHOAL = (sys.executable, "-m", "shoal")


def shoal(*args: str, check: bool = True, input: str | None = None, timeout: float = 180,
          env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """Runs `shoal ARGS...` and returns what it did; with `check`, a non-zero exit fails the test
    with the command's output. `env` changes this process's environment for it: a value of None
    removes that variable."""
    environment = {k: v for k, v in {**os.environ, **env}.items() if v is not None} if env else None
    result = subprocess.run([*SHOAL, *args], capture_output=True, text=True, input=input, timeout=timeout,
                            env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
