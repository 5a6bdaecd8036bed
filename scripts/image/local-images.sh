#!/usr/bin/env bash
# The images `shoal local up --runtime containerd` imports into each node's containerd, built
# here with no registry, into build/local-images/:
#   toolbox.oci.tar  shoal-toolbox:<digest>: Debian bookworm minbase with toolbox-packages.txt
#                    (python3, curl, iperf3, redis), made by mmdebstrap; the image of every
#                    pod that names none (or names one of the demo's), so the same manifests
#                    run on both runtimes;
#   pause.oci.tar    shoal-pause:<digest>: pause/pause.c, compiled static: the sandboxes' image.
# Each is made again only when its inputs change (their digest is its tag and is kept in
# <name>.stamp); `images.json` names both references for the local cluster to read.
# Installs what it needs (mmdebstrap, gcc, libc6-dev) through scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

IMAGE_SCRIPT="shoal local images"
. scripts/image/common.sh

[ "$(id -u)" = 0 ] || die "building the local images needs root (mmdebstrap's root mode); run it as root"
scripts/setup.sh --packages mmdebstrap gcc libc6-dev

work=$repo/build/local-images
one_build_at_a_time "$work"

if mounted=$(awk -v work="$work/" 'index($5, work) == 1 {print $5}' /proc/self/mountinfo) && [ -n "$mounted" ]; then
  die "mounts left under $work by an interrupted build: $(echo $mounted); unmount them (umount -R) and run again"
fi

toolbox=$(digest scripts/image/toolbox-packages.txt image/install-packages.sh scripts/image/toolbox.Dockerfile)
if ! fresh "$work/toolbox.stamp" "$toolbox" "$work/toolbox.oci.tar"; then
  say "toolbox image: Debian $SUITE minbase with scripts/image/toolbox-packages.txt"
  rm -f "$work/toolbox.stamp" "$work/toolbox.tar.tmp"
  cp scripts/image/toolbox-packages.txt image/install-packages.sh "$work/"
  SHOAL_TOOLBOX_DIR=$work mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --customize-hook='cp "$SHOAL_TOOLBOX_DIR/install-packages.sh" "$SHOAL_TOOLBOX_DIR/toolbox-packages.txt" "$1/tmp/"' \
    --customize-hook='chroot "$1" /tmp/install-packages.sh /tmp/toolbox-packages.txt' \
    --customize-hook='rm -f "$1/tmp/install-packages.sh" "$1/tmp/toolbox-packages.txt"' \
    "$SUITE" "$work/toolbox.tar.tmp" "${MIRRORS[@]}"
  /usr/bin/python3 scripts/image/oci.py --dockerfile scripts/image/toolbox.Dockerfile --name shoal-toolbox \
    --tag "$toolbox" --layer "$work/toolbox.tar.tmp" --output "$work/toolbox.oci.tar" --cache "$work/layers"
  rm -f "$work/toolbox.tar.tmp" "$work/install-packages.sh" "$work/toolbox-packages.txt"
  echo "$toolbox" > "$work/toolbox.stamp"
fi

pause=$(digest scripts/image/pause/pause.c scripts/image/pause.Dockerfile)
if ! fresh "$work/pause.stamp" "$pause" "$work/pause.oci.tar"; then
  say "pause image: scripts/image/pause/pause.c, static"
  rm -rf "$work/pause-root" "$work/pause.stamp"
  mkdir -p "$work/pause-root"
  gcc -Os -static -s -o "$work/pause-root/pause" scripts/image/pause/pause.c
  tar -c -C "$work/pause-root" --numeric-owner --owner=0 --group=0 -f "$work/pause-layer.tar" pause
  /usr/bin/python3 scripts/image/oci.py --dockerfile scripts/image/pause.Dockerfile --name shoal-pause \
    --tag "$pause" --layer "$work/pause-layer.tar" --output "$work/pause.oci.tar" --cache "$work/layers"
  rm -rf "$work/pause-root" "$work/pause-layer.tar"
  echo "$pause" > "$work/pause.stamp"
fi

printf '{"toolbox": "docker.io/library/shoal-toolbox:%s", "pause": "docker.io/library/shoal-pause:%s"}\n' \
  "$toolbox" "$pause" > "$work/images.json.tmp"
mv "$work/images.json.tmp" "$work/images.json"
say "local images in $work: toolbox $(du -h "$work/toolbox.oci.tar" | cut -f1)," \
  "pause $(du -h "$work/pause.oci.tar" | cut -f1)"
