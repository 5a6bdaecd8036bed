#!/bin/sh
# The build stage, second step: builds shoal's wheel from the source tree SRC and installs
# it, without dependencies (build-venv.sh put those in), into /opt/shoal; with ROOT, into
# ROOT/opt/shoal instead, so that `make image` can make a layer of shoal's files alone.
# Usage: install-shoal.sh SRC [ROOT]
set -eu
src=$1
root=${2:-}
wheels=$(mktemp -d)
/opt/shoal/bin/pip wheel --no-cache-dir --quiet --disable-pip-version-check --no-deps -w "$wheels" "$src"
set -- "$wheels"/shoal-*.whl
if [ $# -ne 1 ] || [ ! -f "$1" ]; then
  echo "install-shoal.sh: expected one shoal wheel from $src, got: $*" >&2
  exit 1
fi
/opt/shoal/bin/pip install --no-cache-dir --quiet --disable-pip-version-check --no-warn-script-location \
  --no-deps ${root:+--root "$root"} "$1"
rm -rf "$wheels"
