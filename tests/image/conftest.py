"""The image's tests run under a containerd of their own (support/containerd.py), with shoal's image imported."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from support.containerd import ARCHIVE, Containerd
from support.root import IS_ROOT


@pytest.fixture(scope="module")
def containerd():
    if not IS_ROOT:
        pytest.skip("needs root: starts containerd and runs containers")
    if not ARCHIVE.exists():
        pytest.skip(f"no image archive at {ARCHIVE}: run `make image` (`make test` builds it first)")
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: run `make image`, which installs containerd and runc")
    runtime = Containerd(Path(tempfile.mkdtemp(prefix="shoal-image-test-")))
    try:
        runtime.start()
        runtime.ctr("images", "import", str(ARCHIVE), timeout=600)
        yield runtime
    finally:
        runtime.stop()
        shutil.rmtree(runtime.base)  # fails loudly if anything in it is still held
