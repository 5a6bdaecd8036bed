#!/bin/sh
# The runtime stage, after its packages: the user the non-root parts run as (the control
# plane and the waypoints: uid and gid 10001, no login, no password), and `shoal` on PATH.
# The node agent and the ztunnel run as root; their manifests say so (runAsUser: 0).
set -eu
groupadd --gid 10001 shoal
useradd --uid 10001 --gid 10001 --no-create-home --no-log-init --home-dir /var/lib/shoal \
  --shell /usr/sbin/nologin --comment "shoal service mesh" shoal
install -d -o 10001 -g 10001 -m 0750 /var/lib/shoal
ln -sf /opt/shoal/bin/shoal /usr/local/bin/shoal
