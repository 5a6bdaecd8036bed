"""The committed generated code matches what scripts/gen-proto.sh makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_committed_generated_code_matches_regeneration(tmp_path):
    env_python = sys.executable
    subprocess.run([str(REPO / "scripts" / "gen-proto.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": env_python, "PATH": "/usr/bin:/bin"}, capture_output=True)
    protos = sorted((REPO / "shoal" / "api").glob("*.proto"))
    assert protos, "no .proto files found under shoal/api"
    stale = []
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            name = proto.stem + suffix
            fresh = tmp_path / "shoal" / "api" / name
            committed = REPO / "shoal" / "api" / name
            if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
                stale.append(name)
    assert not stale, f"generated code is stale: {stale}; run scripts/gen-proto.sh and commit the result"


def test_generated_imports_are_package_qualified():
    text = (REPO / "shoal" / "api" / "config_pb2.py").read_text()
    assert "from shoal.api import resources_pb2" in text
