#!/usr/bin/env bash
# The README's first command: build builder, make the project's own base
# image from Debian's static busybox (no registry needed), build the hello
# example on it and run it.
#
# Needs root (the RUN sandbox uses namespaces and overlayfs), cargo, and
# Debian's busybox-static (/bin/busybox). Images go to the default store,
# /var/lib/builder, or to $BUILDER_ROOT when set.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" != 0 ]; then
  echo "run.sh: needs root (the RUN sandbox uses namespaces and overlayfs): sudo $0" >&2
  exit 1
fi
if [ ! -x /bin/busybox ]; then
  echo "run.sh: /bin/busybox is missing: apt-get install busybox-static" >&2
  exit 1
fi

cargo build --release
builder=target/release/builder

# The base image's build context holds only the busybox binary.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp /bin/busybox "$context/busybox"

# Shows each command before running it.
step() {
  printf '\n$ %s\n' "$*"
  "$@"
}
step "$builder" build -t busybox -f examples/busybox/Dockerfile "$context"
step "$builder" build -t hello examples/hello
step "$builder" run hello
step "$builder" run hello Pavlos
