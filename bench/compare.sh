#!/usr/bin/env bash
# Compares `builder` with buildah (and docker's classic builder when a docker
# daemon answers) on the four cases of issue 5's acceptance, in one run on
# this machine, and prints a table of times, ratios and whether builder met
# each target:
#
#   (a) a three-stage Dockerfile with two independent `RUN sleep 2` stages,
#       cold (no cache): target wall time <= critical path (2 s) + 0.3 s
#   (b) the same, fully cached: target <= 50 ms
#   (c) a 600 MB, 20,000-file context with `COPY . /app`, unchanged
#       rebuild: target <= 300 ms
#   (d) the same after changing one file, producing a zstd-compressed OCI
#       tarball: target <= 5 s
#
# Fast cases report the median of RUNS runs (default 5), slow ones of
# SLOW_RUNS (default 3). Not run in CI. Needs root (both builders use
# namespaces and overlayfs); installs buildah with apt-get when missing.
#
# Environment:
#   BUILDER=PATH     the builder binary (default: `cargo build --release`,
#                    then target/release/builder)
#   RUNS=N           runs of the fast cases (default 5)
#   SLOW_RUNS=N      runs of the slow cases (default 3)
#   ISOLATION=T      buildah's --isolation (default chroot; oci needs runc)
#   BENCH_DIR=DIR    where the temporary directory goes. By default the
#                    benchmark makes a fresh ext4 file system in a sparse
#                    loop file under /var/tmp (FS_SIZE, default 40G) and
#                    works there: both tools create and delete tens of
#                    thousands of files, and on a file system with a long
#                    history of that (a CI runner's or a developer's disk
#                    after hours of tests) ext4's inode allocator alone can
#                    make file creation 5x slower, which would measure the
#                    disk's past rather than the tools.
#   FS_SIZE=SIZE     size of that loop file system (sparse; default 40G)
#   KEEP=1           keep the temporary directory (stores, contexts, logs)
#   CASES="a b c d"  which cases to run
#
# The base image of every build is the project's own busybox image
# (examples/busybox), built by builder, saved with `builder save` and
# imported into buildah with `buildah pull oci-archive:`, so that both start
# from the same bytes.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
RUNS=${RUNS:-5}
SLOW_RUNS=${SLOW_RUNS:-3}
ISOLATION=${ISOLATION:-chroot}
CASES=${CASES:-a b c d}
CTX_FILES=20000
CTX_BYTES=$((600 * 1000 * 1000))
SLEEP=2

die() {
    echo "compare.sh: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root: builder and buildah need namespaces and overlayfs"
[ -x /bin/busybox ] || die "/bin/busybox is missing (apt-get install busybox-static)"
command -v python3 >/dev/null || die "python3 is missing (it writes the large context)"

if ! command -v buildah >/dev/null; then
    echo "installing buildah..." >&2
    apt-get install -y buildah >/dev/null || die "cannot install buildah"
fi

if [ -z "${BUILDER:-}" ]; then
    echo "building builder (cargo build --release)..." >&2
    (cd "$repo" && cargo build --release --locked --bin builder) >&2
    BUILDER=$repo/target/release/builder
fi
[ -x "$BUILDER" ] || die "BUILDER=$BUILDER is not an executable"
BUILDER=$(realpath "$BUILDER")

fs_img=
fs_mnt=
fs_dev=
work=
# Set before anything is made, so that a failure half-way leaves nothing.
cleanup() {
    if [ -n "$work" ]; then
        # buildah's overlay driver may leave mounts under its root.
        awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
            while read -r m; do umount -l "$m" || true; done
    fi
    if [ -n "${KEEP:-}" ]; then
        echo "kept $work${fs_img:+ (on $fs_img, mounted at $fs_mnt)}" >&2
        return
    fi
    # builder's background deletion of what its cache cap removed may still
    # run in there.
    local i
    for i in $(seq 600); do
        [ -n "$work" ] && compgen -G "$work/builder-root/tmp/removing-*" >/dev/null || break
        sleep 0.1
    done
    [ -n "$work" ] && rm -rf "$work"
    if [ -n "$fs_dev" ]; then
        umount "$fs_mnt" && losetup -d "$fs_dev" ||
            echo "compare.sh: cannot unmount $fs_mnt ($fs_dev, on $fs_img): remove them by hand" >&2
    fi
    if [ -n "$fs_img" ] && ! grep -q " $fs_mnt " /proc/mounts; then
        rm -f "$fs_img"
        rmdir "$fs_mnt" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [ -z "${BENCH_DIR:-}" ]; then
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing (apt-get install e2fsprogs), or set BENCH_DIR"
    fs_img=$(mktemp /var/tmp/builder-bench-fs.XXXXXX)
    fs_mnt=$(mktemp -d /var/tmp/builder-bench-mnt.XXXXXX)
    truncate -s "${FS_SIZE:-40G}" "$fs_img"
    mkfs.ext4 -q -F "$fs_img" || die "cannot make a file system in $fs_img"
    # Direct I/O to the backing file: without it the loop device caches
    # everything a second time in the host's page cache, and one tool's
    # fsync flushes whatever the other left dirty in the whole image.
    fs_dev=$(losetup --direct-io=on -f --show "$fs_img") || die "no loop device (or set BENCH_DIR)"
    mount "$fs_dev" "$fs_mnt" || die "cannot mount $fs_dev, or set BENCH_DIR"
    BENCH_DIR=$fs_mnt
fi
work=$(mktemp -d "$BENCH_DIR/builder-bench.XXXXXX")

logs=$work/logs
mkdir -p "$logs"
broot=$work/builder-root

builder_cmd() {
    "$BUILDER" --root "$broot" "$@"
}

buildah_cmd() {
    buildah --root "$work/buildah/root" --runroot "$work/buildah/run" \
        --storage-driver overlay "$@"
}

docker_ok=0
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    docker_ok=1
fi

# timed LOGNAME CMD...: runs CMD with its output in logs/LOGNAME.log and
# prints the wall time in seconds; stops the benchmark if CMD fails. Dirty
# data is flushed first (as hyperfine's `--prepare sync`), so that no run
# pays for the writeback of the one before, often the other tool's.
timed() {
    local log=$logs/$1.log
    shift
    local start end i
    # builder deletes what its automatic cache cap removed in a background
    # process; let it finish so that it does not run during the next
    # measurement (often buildah's).
    for i in $(seq 600); do
        compgen -G "$broot/tmp/removing-*" >/dev/null || break
        sleep 0.1
    done
    sync
    start=$EPOCHREALTIME
    if ! "$@" >"$log" 2>&1; then
        echo "failed: $*" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    end=$EPOCHREALTIME
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f\n", e - s }'
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'
}

# fmt SECONDS: "1.234 s" or "12.3 ms".
fmt() {
    [ "$1" = - ] && { echo -; return; }
    awk -v s="$1" 'BEGIN { if (s < 1) printf "%.1f ms", s * 1000; else printf "%.3f s", s }'
}

rows=()
# row CASE BUILDER BUILDAH DOCKER TARGET_SECONDS
row() {
    local ratio met
    ratio=$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.1fx", b / a }')
    met=$(awk -v a="$2" -v t="$5" 'BEGIN { print (a <= t) ? "yes" : "NO" }')
    rows+=("$1|$(fmt "$2")|$(fmt "$3")|$(fmt "$4")|$ratio|<= $(fmt "$5")|$met")
}

echo "== setup ($work${fs_img:+, a fresh ext4 file system in $fs_img})" >&2
echo "builder: $BUILDER ($("$BUILDER" --version 2>/dev/null || echo '?'))" >&2
echo "buildah: $(buildah --version)" >&2
echo "docker daemon: $([ $docker_ok = 1 ] && echo yes || echo 'not reachable, skipped')" >&2
echo "machine: $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

mkdir -p "$work/busybox-ctx"
cp /bin/busybox "$work/busybox-ctx/"
timed base-builder builder_cmd build --progress=plain -t busybox \
    -f "$repo/examples/busybox/Dockerfile" "$work/busybox-ctx" >/dev/null
builder_cmd save busybox -o "$work/busybox.tar"
timed base-buildah buildah_cmd pull -q "oci-archive:$work/busybox.tar" >/dev/null
buildah_cmd tag docker.io/library/busybox:latest localhost/busybox:latest
if [ $docker_ok = 1 ]; then
    # The saved OCI layout has a manifest.json too, which docker load reads.
    docker load -i "$work/busybox.tar" >/dev/null
fi

buildah_build() {
    buildah_cmd build --isolation "$ISOLATION" --layers --pull=never --jobs 8 "$@"
}

# buildah has no build-time exporter: build, then push to an OCI archive
# with zstd layers.
buildah_build_push() {
    buildah_build -t big "$1" &&
        buildah_cmd push --compression-format zstd big "oci-archive:$2:big"
}

docker_build() {
    DOCKER_BUILDKIT=0 docker build "$@"
}

# --- (a) and (b): parallel stages --------------------------------------------

stages=$work/stages
mkdir -p "$stages"
cat >"$stages/Dockerfile" <<EOF
FROM busybox AS one
RUN sleep $SLEEP && echo one > /one
FROM busybox AS two
RUN sleep $SLEEP && echo two > /two
FROM busybox
COPY --from=one /one /one
COPY --from=two /two /two
EOF

if [[ " $CASES " == *" a "* || " $CASES " == *" b "* ]]; then
    echo "== (a) three stages, two sleeping $SLEEP s in parallel, cold" >&2
    ba=() bb=() bd=()
    for i in $(seq "$SLOW_RUNS"); do
        ba+=("$(timed "a-builder-$i" builder_cmd build --progress=plain --no-cache -t stages "$stages")")
        bb+=("$(timed "a-buildah-$i" buildah_build --no-cache -t stages "$stages")")
        if [ $docker_ok = 1 ]; then
            bd+=("$(timed "a-docker-$i" docker_build --no-cache -t stages "$stages")")
        fi
        echo "  run $i: builder ${ba[-1]} s, buildah ${bb[-1]} s${bd:+, docker ${bd[-1]} s}" >&2
    done
    a_docker=-
    [ $docker_ok = 1 ] && a_docker=$(median "${bd[@]}")
    [[ " $CASES " == *" a "* ]] &&
        row "(a) 3 stages, 2x sleep $SLEEP, cold (critical path $SLEEP s)" \
            "$(median "${ba[@]}")" "$(median "${bb[@]}")" "$a_docker" "$(awk -v s=$SLEEP 'BEGIN{print s + 0.3}')"
fi

if [[ " $CASES " == *" b "* ]]; then
    echo "== (b) the same, fully cached" >&2
    builder_cmd build --progress=quiet -t stages "$stages" >/dev/null
    buildah_build -q -t stages "$stages" >/dev/null 2>&1
    [ $docker_ok = 1 ] && docker_build -q -t stages "$stages" >/dev/null
    ba=() bb=() bd=()
    for i in $(seq "$RUNS"); do
        ba+=("$(timed "b-builder-$i" builder_cmd build --progress=plain -t stages "$stages")")
        bb+=("$(timed "b-buildah-$i" buildah_build -t stages "$stages")")
        if [ $docker_ok = 1 ]; then
            bd+=("$(timed "b-docker-$i" docker_build -t stages "$stages")")
        fi
    done
    # A cached rebuild runs nothing: no RUN step may have produced output.
    if grep -q 'RUN sleep' "$logs/b-builder-1.log" && ! grep -q CACHED "$logs/b-builder-1.log"; then
        echo "  warning: builder's cached rebuild ran steps (see $logs/b-builder-1.log)" >&2
    fi
    b_docker=-
    [ $docker_ok = 1 ] && b_docker=$(median "${bd[@]}")
    row "(b) the same, fully cached" "$(median "${ba[@]}")" "$(median "${bb[@]}")" "$b_docker" 0.05
fi

# --- (c) and (d): a large context ---------------------------------------------

if [[ " $CASES " == *" c "* || " $CASES " == *" d "* ]]; then
    big=$work/big
    echo "== writing a $((CTX_BYTES / 1000000)) MB, $CTX_FILES-file context" >&2
    python3 - "$big" "$CTX_FILES" "$CTX_BYTES" <<'EOF'
import base64, os, random, sys
root, files, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(5)
per_dir = 100
mean = total // files
written = 0
for i in range(files):
    d = os.path.join(root, f"d{i // per_dir:03}")
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    # Sizes between 0.2x and 1.8x the mean; the last file takes the rest.
    size = total - written if i == files - 1 else int(mean * rng.uniform(0.2, 1.8))
    size = max(0, min(size, total - written))
    # Half incompressible bytes, half base64 text, like a mix of assets and
    # sources.
    if i % 2:
        data = base64.b64encode(os.urandom(size * 3 // 4 + 3))[:size]
    else:
        data = os.urandom(size)
    with open(os.path.join(d, f"f{i:05}"), "wb") as f:
        f.write(data)
    written += size
with open(os.path.join(root, "Dockerfile"), "w") as f:
    f.write("FROM busybox\nCOPY . /app\n")
EOF
    echo "  $(find "$big" -type f | wc -l) files, $(($(du -sb "$big" | cut -f1) / 1000000)) MB" >&2

    echo "== (c) cold builds (not a target, for reference)" >&2
    c0a=$(timed c-cold-builder builder_cmd build --progress=plain -t big "$big")
    c0b=$(timed c-cold-buildah buildah_build -t big "$big")
    echo "  builder $c0a s, buildah $c0b s" >&2
    rows+=("    cold build, for reference|$(fmt "$c0a")|$(fmt "$c0b")|-|-|-|-")

    if [[ " $CASES " == *" c "* ]]; then
        echo "== (c) unchanged rebuild" >&2
        ca=() cb=()
        for i in $(seq "$SLOW_RUNS"); do
            ca+=("$(timed "c-builder-$i" builder_cmd build --progress=plain -t big "$big")")
            cb+=("$(timed "c-buildah-$i" buildah_build -t big "$big")")
            echo "  run $i: builder ${ca[-1]} s, buildah ${cb[-1]} s" >&2
        done
        row "(c) 600 MB / 20k files COPY, unchanged" "$(median "${ca[@]}")" "$(median "${cb[@]}")" - 0.3
    fi

    if [[ " $CASES " == *" d "* ]]; then
        echo "== (d) one file changed, zstd OCI tarball" >&2
        da=() db=()
        for i in $(seq "$SLOW_RUNS"); do
            # The same file changes before each tool's build, so that each
            # sees exactly one changed file since its previous build.
            echo "change $i builder" >>"$big/d007/f00700"
            rm -f "$work/out-builder.tar" "$work/out-buildah.tar"
            da+=("$(timed "d-builder-$i" builder_cmd build --progress=plain -t big \
                -o "type=oci,dest=$work/out-builder.tar,compression=zstd" "$big")")
            echo "change $i buildah" >>"$big/d007/f00700"
            db+=("$(timed "d-buildah-$i" buildah_build_push "$big" "$work/out-buildah.tar")")
            echo "  run $i: builder ${da[-1]} s, buildah ${db[-1]} s" >&2
        done
        ls -l "$work/out-builder.tar" "$work/out-buildah.tar" >&2
        row "(d) one file changed, zstd OCI tarball" "$(median "${da[@]}")" "$(median "${db[@]}")" - 5
    fi
fi

echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
printf '%s\n' "case|builder|buildah|docker (classic)|buildah/builder|target (builder)|met" "${rows[@]}" |
    column -t -s '|'
