#!/usr/bin/env bash
# `make image`: builds shoal's image with no container registry and no Docker, into
# build/shoal-<version>.oci.tar (image shoal:<version>), the same image the Dockerfile makes:
#   1. the build stage: a Debian bookworm root filesystem from mmdebstrap, in which
#      image/build-venv.sh makes /opt/shoal with the pinned dependencies;
#   2. the runtime stage: another one with image/packages.txt, the user shoal (10001), and
#      that /opt/shoal: the base layer;
#   3. shoal's wheel, built and installed in the build stage under a root of its own:
#      the second layer, the only one a change of shoal's source makes again;
#   4. scripts/image/oci.py writes the two layers and the Dockerfile's settings as an OCI archive.
# Stages 1 and 2 are kept under build/image/ and made again only when their inputs change.
# It installs what it needs (mmdebstrap; containerd and runc, which run the image in
# tests/image/) through scripts/setup.sh, which starts no service.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

IMAGE_SCRIPT="shoal image"
. scripts/image/common.sh

[ "$(id -u)" = 0 ] || die "building the image needs root (mmdebstrap's root mode, chroot); run make image as root"
scripts/setup.sh --packages mmdebstrap containerd runc

version=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
work=$repo/build/image
archive=$repo/build/shoal-$version.oci.tar
one_build_at_a_time "$work"
# A stage is made again when the digest of its inputs (its files under image/ and the
# Debian release it is made from) differs from the one recorded with it (common.sh).

debian_rootfs() {  # debian_rootfs FORMAT TARGET HOOK...: a minbase bookworm, then the hooks in its chroot
  local format=$1 target=$2
  shift 2
  local hooks=()
  for hook in "$@"; do hooks+=(--customize-hook="$hook"); done
  SHOAL_IMAGE_DIR=$repo/image mmdebstrap --quiet --mode=root --variant=minbase --format="$format" \
    --customize-hook='cp -r "$SHOAL_IMAGE_DIR" "$1/tmp/shoal-image"' \
    "${hooks[@]}" \
    --customize-hook='rm -rf "$1/tmp/shoal-image"' \
    "$SUITE" "$target" "${MIRRORS[@]}"
}

# Runs a command in the build stage's chroot, in a mount namespace of its own (its /proc
# and /dev mounts end with it), with a clean environment. pip there trusts what this host
# trusts (its CA bundle), and resolves names as this host does.
builder=$work/builder
in_builder() {
  cp /etc/resolv.conf "$builder/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$builder/tmp/host-ca.crt"
  unshare --mount --propagation private -- /bin/sh -c '
    root=$1; shift
    mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" &&
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      PIP_CERT=/tmp/host-ca.crt "$@"' in_builder "$builder" "$@"
}

# A build killed half-way may have left a mount inside a root filesystem here (mmdebstrap
# mounts /proc, /sys and /dev while it works). Nothing is removed across one: say so.
if mounted=$(awk -v work="$work/" 'index($5, work) == 1 {print $5}' /proc/self/mountinfo) && [ -n "$mounted" ]; then
  die "mounts left under $work by an interrupted build: $(echo $mounted); unmount them (umount -R) and run again"
fi

# -- 1. the build stage --------------------------------------------------------------
stage1=$(digest image/build-packages.txt image/install-packages.sh image/build-venv.sh image/requirements.txt)
if ! fresh "$work/builder.stamp" "$stage1"; then
  say "build stage: Debian $SUITE with image/build-packages.txt, then /opt/shoal from image/requirements.txt"
  rm -rf --one-file-system "$builder" "$work/builder.stamp" "$work/base.stamp"
  debian_rootfs directory "$builder" \
    'chroot "$1" /tmp/shoal-image/install-packages.sh /tmp/shoal-image/build-packages.txt'
  mkdir -p "$builder/tmp/shoal-image"
  cp image/* "$builder/tmp/shoal-image/"
  in_builder /tmp/shoal-image/build-venv.sh /tmp/shoal-image/requirements.txt
  rm -rf "$builder/tmp/shoal-image"
  echo "$stage1" > "$work/builder.stamp"
fi

# -- 2. the runtime stage: the base layer ------------------------------------------------
stage2=$(digest "$work/builder.stamp" image/packages.txt image/install-packages.sh image/finish-runtime.sh)
if ! fresh "$work/base.stamp" "$stage2"; then
  say "runtime stage: Debian $SUITE with image/packages.txt, the user shoal (10001), /opt/shoal"
  rm -f "$work/base.tar" "$work/base.tar.tmp" "$work/base.stamp"
  SHOAL_VENV=$builder/opt/shoal debian_rootfs tar "$work/base.tar.tmp" \
    'chroot "$1" /tmp/shoal-image/install-packages.sh /tmp/shoal-image/packages.txt' \
    'chroot "$1" /tmp/shoal-image/finish-runtime.sh' \
    'cp -a "$SHOAL_VENV" "$1/opt/shoal"'
  mv "$work/base.tar.tmp" "$work/base.tar"
  echo "$stage2" > "$work/base.stamp"
fi

# -- 3. shoal's layer ------------------------------------------------------------------
say "shoal $version: wheel, installed into its own layer"
rm -rf --one-file-system "$builder/tmp/shoal-src" "$builder/tmp/shoal-layer"
mkdir -p "$builder/tmp/shoal-src"
# The build context is what .dockerignore allows (its `!` lines), less caches.
mapfile -t context < <(sed -n 's|^!\(.*[^/]\)/*$|\1|p' .dockerignore)
tar -c --exclude=__pycache__ --exclude='*.pyc' --exclude=bench/results "${context[@]}" | tar -x -C "$builder/tmp/shoal-src"
in_builder /tmp/shoal-src/image/install-shoal.sh /tmp/shoal-src /tmp/shoal-layer
# Only opt/: an entry for the layer root itself would set the image root's mode and owner.
tar -c -C "$builder/tmp/shoal-layer" --numeric-owner --owner=0 --group=0 -f "$work/shoal-layer.tar" opt
rm -rf --one-file-system "$builder/tmp/shoal-src" "$builder/tmp/shoal-layer"

# -- 4. the archive ------------------------------------------------------------------
say "writing $archive"
/usr/bin/python3 scripts/image/oci.py --dockerfile Dockerfile --name shoal --tag "$version" \
  --layer "$work/base.tar" --layer "$work/shoal-layer.tar" --output "$archive"
say "image shoal:$version in $archive ($(du -h "$archive" | cut -f1))"
