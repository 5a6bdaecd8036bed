#!/usr/bin/env bash
# Regenerates the Python code of every shoal/api/*.proto with grpc_tools.
#
# Choice: the generated *_pb2.py / *_pb2_grpc.py files are COMMITTED, not
# built at install time. Installing shoal then needs no protoc step, readers
# and IDEs see the code, and tests/control_plane/test_proto_generated.py
# regenerates into a temporary directory and fails when the committed files
# differ, so the .proto files (the documentation) and the code cannot drift.
# After editing a .proto, run this script and commit both.
#
# Usage: scripts/gen-proto.sh [OUTPUT_ROOT]   (default: the repository root)
# Imports come out as `from shoal.api import x_pb2`, because protoc runs from
# the repository root with `-I .`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python="${PYTHON:-.venv/bin/python}"
mkdir -p "$out/shoal/api"
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  shoal/api/*.proto
