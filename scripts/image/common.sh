# What scripts/image/build.sh (`make image`) and scripts/image/local-images.sh share; each sources
# it after setting IMAGE_SCRIPT, the name its messages start with.

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '%s: %s\n' "$IMAGE_SCRIPT" "$*" >&2; exit 1; }

# The Debian release every image is made from.
SUITE=bookworm
MIRRORS=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

# digest FILE...: the digest of a stage's or image's inputs (those files and the Debian release),
# 16 hex digits; what a stage was made from is recorded with it, and an image is tagged with it.
digest() { { printf '%s\n' "$SUITE" "${MIRRORS[@]}"; cat "$@"; } | sha256sum | cut -c1-16; }

# fresh STAMP DIGEST [FILE...]: what STAMP records was made from DIGEST, and each FILE it made is there.
fresh() {
  local stamp=$1 wanted=$2
  shift 2
  for made in "$@"; do [ -f "$made" ] || return 1; done
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]
}

# one_build_at_a_time DIR: makes DIR and holds its lock (fd 9) until the script ends: a second
# build in this checkout waits until the first has finished.
one_build_at_a_time() {
  mkdir -p "$1"
  exec 9>"$1/lock"
  flock 9
}
