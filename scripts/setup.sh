#!/usr/bin/env bash
# Installs everything shoal needs on a fresh Debian bookworm machine, idempotently:
# OS packages, kernel headers where bcc looks for them, and the project venv.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

PACKAGES=(
  iproute2 iptables python3-bpfcc python3-venv python3-dev libbpf1 bpftool
  linux-headers-amd64 curl iputils-ping iperf3 haproxy redis-server redis-tools tcpdump openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "shoal setup: missing OS packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  say "installing OS packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts these services on install; shoal runs its own instances inside pods.
  for svc in redis-server haproxy; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
    pkill -x "${svc%-server}-server" >/dev/null 2>&1 || true
  done
fi

# bcc looks for headers under /lib/modules/$(uname -r)/{build,source}. The running
# kernel ships none; Debian's split header packages serve for UAPI-only programs.
kver=$(uname -r)
hdr_arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
hdr_common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$hdr_arch" ] && [ -n "$hdr_common" ]; then
  mkdir -p "/lib/modules/$kver"
  [ -e "/lib/modules/$kver/build" ] || ln -sfn "$hdr_arch" "/lib/modules/$kver/build"
  [ -e "/lib/modules/$kver/source" ] || ln -sfn "$hdr_common" "/lib/modules/$kver/source"
fi

# The venv comes from Debian's python3, which is the one bcc is installed for.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv (with system site packages, for bcc)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  say "installing shoal into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
