#!/usr/bin/env bash
# Pushes and pulls a ~600 MB image to and from a local registry (Debian's
# docker-registry on 127.0.0.1, plain HTTP) with `builder push`/`builder pull`,
# and does the same with `skopeo copy`, in one run on this machine; prints
# times and throughput side by side (issue 6's acceptance).
#
# The image is one layer of SIZE_MB MB of incompressible data in FILES files
# (built FROM scratch by `builder build`, gzip-compressed). Each tool gets a
# registry of its own with empty storage, so neither finds the other's blobs.
# Pulls go into empty stores (builder: a fresh --root; skopeo: a fresh OCI
# layout directory), so both fetch, verify and write every byte. Not run in CI.
#
# Environment:
#   BUILDER=PATH    the builder binary (default: `cargo build --release`, then
#                   target/release/builder)
#   SIZE_MB=N       image size (default 600)
#   FILES=N         files in the layer (default 6)
#   BENCH_DIR=DIR   where the temporary directory goes (default /var/tmp)
#   KEEP=1          keep the temporary directory
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${SIZE_MB:-600}
FILES=${FILES:-6}
BENCH_DIR=${BENCH_DIR:-/var/tmp}

for tool in docker-registry skopeo; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
if [[ -z "${BUILDER:-}" ]]; then
  cargo build --release --quiet --bin builder
  BUILDER=$PWD/target/release/builder
fi

work=$(mktemp -d "$BENCH_DIR/registry-bench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [[ "${KEEP:-}" != 1 ]]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_registry NAME -> sets PORT_<NAME>
start_registry() {
  local name=$1 port
  port=$(free_port)
  mkdir -p "$work/$name/storage"
  cat >"$work/$name/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/$name/storage
http:
  addr: 127.0.0.1:$port
EOF
  docker-registry serve "$work/$name/config.yml" >"$work/$name/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  printf -v "PORT_$name" '%s' "$port"
}

now() { date +%s.%N; }
# Bytes of the files under a directory (directories themselves not counted).
file_bytes() { find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
mbps() { echo "$1 / $2" | bc -l | xargs printf '%.0f'; }

echo "== making a $SIZE_MB MB image ($FILES files of random data)"
ctx=$work/ctx
mkdir -p "$ctx"
per=$((SIZE_MB / FILES))
for i in $(seq "$FILES"); do
  head -c "$((per * 1000 * 1000))" /dev/urandom >"$ctx/data$i.bin"
done
printf 'FROM scratch\nCOPY . /data/\n' >"$ctx/Dockerfile"
root=$work/root
"$BUILDER" --root "$root" build -q -t big:1 "$ctx" >/dev/null
size=$(du -sb "$root/blobs" | cut -f1)
size_mb=$(echo "$size / 1000000" | bc -l | xargs printf '%.0f')
echo "   store blobs: $size_mb MB"

start_registry b
start_registry s
reg_b=127.0.0.1:$PORT_b
reg_s=127.0.0.1:$PORT_s
sync

echo "== builder push"
t0=$(now)
"$BUILDER" --root "$root" push -q big:1 "$reg_b/bench/big:1" >/dev/null
t1=$(now)
b_push=$(secs "$t0" "$t1")

echo "== builder pull (empty root)"
t0=$(now)
"$BUILDER" --root "$work/root-pull" pull -q "$reg_b/bench/big:1" >/dev/null
t1=$(now)
b_pull=$(secs "$t0" "$t1")

echo "== builder push again (nothing to upload)"
before=$(file_bytes "$work/b/storage")
t0=$(now)
"$BUILDER" --root "$root" push -q big:1 "$reg_b/bench/big:2" >/dev/null
t1=$(now)
b_repush=$(secs "$t0" "$t1")
growth=$(( $(file_bytes "$work/b/storage") - before ))

echo "== skopeo copy oci -> registry"
t0=$(now)
skopeo copy -q --dest-tls-verify=false "oci:$root:big:1" "docker://$reg_s/bench/big:1"
t1=$(now)
s_push=$(secs "$t0" "$t1")

echo "== skopeo copy registry -> oci (empty layout)"
t0=$(now)
skopeo copy -q --src-tls-verify=false "docker://$reg_s/bench/big:1" "oci:$work/skopeo-pull:big"
t1=$(now)
s_pull=$(secs "$t0" "$t1")

echo
printf '%-28s %10s %10s %10s %10s\n' "" "builder s" "MB/s" "skopeo s" "MB/s"
printf '%-28s %10s %10s %10s %10s\n' "push $size_mb MB" "$b_push" "$(mbps "$size_mb" "$b_push")" "$s_push" "$(mbps "$size_mb" "$s_push")"
printf '%-28s %10s %10s %10s %10s\n' "pull $size_mb MB" "$b_pull" "$(mbps "$size_mb" "$b_pull")" "$s_pull" "$(mbps "$size_mb" "$s_pull")"
printf '%-28s %10s\n' "second push (new tag)" "$b_repush"
echo "registry storage growth on the second push: $growth bytes of files (tag links only)"
