#!/usr/bin/env bash
# Writes image/requirements.txt again: the versions pip resolves today for pyproject.toml's
# dependencies, in a scratch virtual environment of Debian's python3 (the image's Python).
# Run it after changing a dependency in pyproject.toml; tests/image/test_build_inputs.py
# fails until the pins fit the ranges again.
set -euo pipefail
cd "$(dirname "$0")/../.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
/usr/bin/python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet --upgrade pip
# Only the dependencies, not shoal: a non-editable install would leave build/ behind.
/usr/bin/python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
  > "$scratch/wanted.txt"
"$scratch/venv/bin/pip" install --quiet -r "$scratch/wanted.txt"
{
  echo "# The Python packages of the image, pinned: what pip resolved for pyproject.toml's dependencies"
  echo "# (the versions CI tests with). scripts/image/lock.sh writes this file again;"
  echo "# tests/image/test_build_inputs.py holds it in step with pyproject.toml."
  "$scratch/venv/bin/pip" freeze --all --exclude pip --exclude setuptools --exclude wheel
} > image/requirements.txt
