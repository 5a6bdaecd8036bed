#!/usr/bin/env bash
# Installs everything shoal needs on a fresh Debian bookworm machine, idempotently:
# OS packages, kernel headers where bcc looks for them, and the project venv.
#
# It changes nothing on the host that it did not make: it starts no service (so it
# never has to stop one), and it leaves a kernel-headers link that exists as it is.
# SHOAL_SETUP_ROOT (tests only) stands in for / in the host paths it writes.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
warn() { printf 'shoal setup: %s\n' "$*" >&2; }

root=${SHOAL_SETUP_ROOT:-}

PACKAGES=(
  iproute2 iptables python3-bpfcc python3-venv python3-dev gcc libssl-dev libbpf1 bpftool  # gcc, python3-dev, libssl-dev: shoal/_relay.c, shoal/_native_*.c
  linux-headers-amd64 curl iputils-ping iperf3 haproxy redis-server redis-tools tcpdump openssl
  containernetworking-plugins  # bridge, ptp, host-local: the CNI chain shoal-cni is tested in
  prometheus chromium  # observability: the local cluster's Prometheus addon, and the service graph's browser test
)
# `setup.sh --packages PKG...` installs only those OS packages, under the same rules (for
# scripts that need tools of their own, such as scripts/image/build.sh), and nothing else.
packages_only=false
if [ "${1:-}" = --packages ]; then
  shift
  packages_only=true
  PACKAGES=("$@")
fi

# Debian starts a package's services as it installs it (haproxy, redis-server). shoal needs
# only their programs, as it runs its own instances inside pods; and stopping a service
# afterwards could stop the host's own. So nothing starts: for the length of the install,
# policy-rc.d (which invoke-rc.d and deb-systemd-invoke ask) answers 101, "action forbidden".
# An existing policy-rc.d is the administrator's: it is left alone, and it decides.
POLICY="$root/usr/sbin/policy-rc.d"
POLICY_MARK="# shoal setup: no service starts while it installs packages"

remove_our_policy() {
  if [ -f "$POLICY" ] && grep -qxF "$POLICY_MARK" "$POLICY"; then
    rm -f "$POLICY"
  fi
}

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
    warn "$POLICY exists and is not shoal's: it decides whether the packages' services start"
  else
    trap remove_our_policy EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$(dirname "$POLICY")"
    printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_MARK" > "$POLICY"
    chmod 755 "$POLICY"
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  remove_our_policy
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "shoal setup: missing OS packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  say "installing OS packages: ${missing[*]} (their services are not started)"
  install_packages "${missing[@]}"
fi
if $packages_only; then
  exit 0
fi

# bcc looks for headers under /lib/modules/$(uname -r)/{build,source}. The running
# kernel ships none; Debian's split header packages serve for UAPI-only programs.
# A link that is there already (even a broken one) is someone's choice: it stays.
link_headers() {  # link target
  local link=$1 target=$2
  if [ -e "$link" ] || [ -L "$link" ]; then
    if [ "$(readlink "$link" || true)" != "$target" ]; then
      warn "$link exists (-> $(readlink "$link" || echo 'not a link')); left as it is. bcc compiles shoal's" \
           "eBPF programs against the headers there; if they do not serve, point it at $target yourself"
    fi
    return 0
  fi
  ln -s "$target" "$link"
}

kver=$(uname -r)
hdr_arch=$(ls -d "$root"/usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
hdr_common=$(ls -d "$root"/usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$hdr_arch" ] && [ -n "$hdr_common" ]; then
  mkdir -p "$root/lib/modules/$kver"
  link_headers "$root/lib/modules/$kver/build" "${hdr_arch#"$root"}"
  link_headers "$root/lib/modules/$kver/source" "${hdr_common#"$root"}"
fi

# The venv comes from Debian's python3, which is the one bcc is installed for.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv (with system site packages, for bcc)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# The compiled relay (shoal/_relay.c) and the native transports (shoal/_native*.[ch]) are built by this
# install: a change to them installs again.
stamp=.venv/.installed-$({ cat pyproject.toml; cat shoal/_relay.c shoal/_native*.h shoal/_native_*.c 2>/dev/null || true; } | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  say "installing shoal into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
