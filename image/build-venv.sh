#!/bin/sh
# The build stage: makes the virtual environment /opt/shoal with shoal's Python
# dependencies, at the versions pinned in image/requirements.txt. It is made from Debian's
# python3 with the system site packages, as on a node: bcc's module (python3-bpfcc) is a
# Debian package, not a PyPI one. Run in the Dockerfile and in `make image` alike.
# Usage: build-venv.sh REQUIREMENTS
set -eu
requirements=$1
python3 -m venv --system-site-packages /opt/shoal
/opt/shoal/bin/pip install --no-cache-dir --quiet --disable-pip-version-check --require-virtualenv --use-pep517 \
  -r "$requirements"
