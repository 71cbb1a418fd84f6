#!/usr/bin/env bash
# Remote build cache, in one run on this machine (issue 7's acceptance):
# machine A (one --root) builds a multi-stage Dockerfile cold with
# `--cache-to` a local `builder cache-server`; machine B (another, empty
# --root with the same base image) builds it with `--cache-from`; then B
# builds it again from its own local cache. Prints the three times, the
# bytes B downloaded, and checks that B ran no step and built A's digest.
#
# The work: a stage that writes DATA_MB MB of random data and "compiles"
# for COMPILE_S seconds, a stage that checksums it, and a final stage that
# copies the results. The base image is busybox-static made into an image
# by `builder build` (FROM scratch, the same bytes in both roots, so the
# same digest). Needs root (the sandbox). Not run in CI.
#
# Environment:
#   BUILDER=PATH    the builder binary (default: `cargo build --release`, then
#                   target/release/builder)
#   DATA_MB=N       data the first stage writes (default 200)
#   COMPILE_S=N     seconds the "compile" step sleeps (default 5)
#   BENCH_DIR=DIR   where the temporary directory goes (default /var/tmp)
#   KEEP=1          keep the temporary directory
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_MB=${DATA_MB:-200}
COMPILE_S=${COMPILE_S:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
export SOURCE_DATE_EPOCH=1700000000

[[ -x /bin/busybox ]] || { echo "error: /bin/busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
if [[ -z "${BUILDER:-}" ]]; then
  cargo build --release --quiet --bin builder
  BUILDER=$PWD/target/release/builder
fi

work=$(mktemp -d "$BENCH_DIR/remote-cache-bench.XXXXXX")
server=
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  if [[ "${KEEP:-}" != 1 ]]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }

# The base image: busybox and its applets, FROM scratch.
base=$work/base
mkdir -p "$base/bin" "$base/tmp"
cp /bin/busybox "$base/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ "$applet" == busybox ]] || ln -sf busybox "$base/bin/$applet"
done
touch -h -d @$SOURCE_DATE_EPOCH "$base/bin"/* "$base/bin" "$base/tmp"
printf 'FROM scratch\nCOPY . /\nENV PATH=/bin\n' >"$base/Dockerfile"
for m in a b; do
  "$BUILDER" --root "$work/root-$m" build -q -t busybox "$base" >/dev/null
done

ctx=$work/ctx
mkdir -p "$ctx"
echo "source v1" >"$ctx/main.c"
cat >"$ctx/Dockerfile" <<EOF
FROM busybox AS build
RUN head -c $((DATA_MB * 1000 * 1000)) /dev/urandom > /data.bin
COPY main.c /src/main.c
RUN sleep $COMPILE_S && cat /src/main.c > /app

FROM busybox AS check
COPY --from=build /data.bin /data.bin
RUN sha256sum /data.bin > /data.sum

FROM busybox
COPY --from=build /app /app
COPY --from=check /data.sum /data.sum
COPY --from=build /data.bin /data.bin
EOF

mkdir -p "$work/cache-store"
"$BUILDER" cache-server --listen 127.0.0.1:0 --store "$work/cache-store" 2>"$work/server.log" &
server=$!
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's/^listening on //p' "$work/server.log" | head -1)
  [[ -n "$addr" ]] && break
  sleep 0.1
done
[[ -n "$addr" ]] || { echo "error: cache-server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
cache=$addr/bench/cache

# build MACHINE LABEL ARGS... -> prints seconds; events in $work/LABEL.json
build() {
  local m=$1 label=$2
  shift 2
  local t0 t1
  sync
  t0=$(now)
  "$BUILDER" --root "$work/root-$m" build --progress=json -t app --iidfile "$work/$label.iid" "$@" "$ctx" 2>"$work/$label.json"
  t1=$(now)
  secs "$t0" "$t1"
}

echo "== A: cold build, --cache-to $cache (mode=max)"
a_cold=$(build a a-cold --cache-to "type=registry,ref=$cache,mode=max")
echo "== B: empty cache, --cache-from $cache"
b_remote=$(build b b-remote --cache-from "type=registry,ref=$cache")
echo "== B: again, from its local cache"
b_local=$(build b b-local)

ran() { grep -c '"type":"started".*"name":"\[[^]]*\] RUN' "$work/$1.json" || true; }
from_remote=$(grep -o '"line":"[0-9]* result(s) from the remote cache, [^"]*"' "$work/b-remote.json" | sed 's/"line":"//; s/"$//')

echo
printf '%-40s %8s %10s\n' "" "seconds" "RUN steps"
printf '%-40s %8s %10s\n' "A cold (exports to the cache server)" "$a_cold" "$(ran a-cold)"
printf '%-40s %8s %10s\n' "B, empty root, --cache-from" "$b_remote" "$(ran b-remote)"
printf '%-40s %8s %10s\n' "B, local cache" "$b_local" "$(ran b-local)"
echo "B from the remote cache: ${from_remote:-nothing}"
echo "cache server store: $(du -sh "$work/cache-store" | cut -f1)"
if [[ "$(cat "$work/a-cold.iid")" == "$(cat "$work/b-remote.iid")" ]]; then
  echo "same image id on A and B: $(cat "$work/a-cold.iid")"
else
  echo "error: A and B built different images" >&2
  exit 1
fi
