#!/bin/sh
# Installs the Debian packages listed in a file (one a line, # comments), as the image's
# stages do: in the Dockerfile (RUN) and in `make image` (in the chroot of an mmdebstrap
# root filesystem). No recommends, no services started, no apt lists left behind.
# Usage: install-packages.sh LIST
set -eu
list=$1
packages=$(sed -e 's/#.*//' "$list" | tr -s ' \t\n' ' ')
if [ -z "${packages# }" ]; then
  echo "install-packages.sh: $list names no package" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Nothing installed in an image build may start as a service. A policy-rc.d that is there
# already belongs to the base image, and stays.
ours=false
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  ours=true
fi
apt-get update -qq
# shellcheck disable=SC2086  # one word per package
apt-get install -y -qq --no-install-recommends $packages >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/*
if $ours; then
  rm -f /usr/sbin/policy-rc.d
fi
