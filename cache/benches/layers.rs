//! Layer benchmark: creates layers from a 600 MB / 20,000-file tree into a
//! real store (fsync included) and unpacks one, next to what `dd`, GNU tar,
//! zstd and pigz achieve on the same machine and data in the same run.
//!
//! `cargo bench -p cache --bench layers`. The tree is generated once under
//! `$BUILDER_BENCH_DIR` (default `target/bench-layers`) and reused while its
//! marker matches; `BUILDER_BENCH_REPEAT` (default 3) runs each measurement
//! that many times and keeps the best, since the machine may be shared.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cache::compression::{Compression, CompressionOptions};
use cache::layer::create::{CreateOptions, LayerDescriptor, create_layer};
use cache::store::Store;

const FILES: usize = 20_000;
const TARGET_BYTES: u64 = 600_000_000;
const MIN_SIZE: f64 = 200.0;
/// Change when the generator changes, so that an old tree is not reused.
const TREE_VERSION: &str = "layers-tree-v2";

/// xorshift64*: fast, deterministic, good enough to defeat compressors.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A few large files, 64 MiB down to 8 MiB, that hold about half the bytes.
const LARGE: [u64; 16] = [
    64 << 20,
    64 << 20,
    32 << 20,
    32 << 20,
    16 << 20,
    16 << 20,
    16 << 20,
    16 << 20,
    8 << 20,
    8 << 20,
    8 << 20,
    8 << 20,
    8 << 20,
    8 << 20,
    8 << 20,
    8 << 20,
];
/// The largest of the many other files.
const SMALL_MAX: f64 = (4 << 20) as f64;

/// File sizes from 200 B to 64 MiB, skewed: the 16 large files above and
/// many small ones, log-distributed between 200 B and 4 MiB with a skew
/// towards the small end, summing to about 600 MB.
fn sizes() -> Vec<u64> {
    let mut rng = Rng(0x5eed);
    let large: u64 = LARGE.iter().sum();
    let draws: Vec<f64> = (LARGE.len()..FILES).map(|_| rng.unit()).collect();
    let ratio = (SMALL_MAX / MIN_SIZE).ln();
    let sizes_for = |skew: f64| -> Vec<u64> {
        draws
            .iter()
            .map(|r| (MIN_SIZE * (ratio * r.powf(skew)).exp()) as u64)
            .collect()
    };
    // A larger skew makes files smaller; search for the one that gives the
    // target total.
    let (mut lo, mut hi) = (1.0f64, 256.0f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if large + sizes_for(mid).iter().sum::<u64>() > TARGET_BYTES {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut sizes = LARGE.to_vec();
    sizes.extend(sizes_for((lo + hi) / 2.0));
    // Spread the large files over the tree rather than all in one directory.
    let mut shuffled = Vec::with_capacity(sizes.len());
    let mut rest = sizes;
    while !rest.is_empty() {
        let i = (rng.next() % rest.len() as u64) as usize;
        shuffled.push(rest.swap_remove(i));
    }
    shuffled
}

fn text_words(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..4096)
        .map(|_| {
            let len = 2 + rng.next() % 9;
            (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect()
        })
        .collect()
}

/// Text-like content: lines of words from a fixed vocabulary, with some
/// numbers, so it compresses about as well as source code or logs.
fn write_text(
    w: &mut impl Write,
    size: u64,
    rng: &mut Rng,
    words: &[Vec<u8>],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut left = size as usize;
    while left > 0 {
        buf.clear();
        while buf.len() < (1 << 20).min(left) {
            let r = rng.next();
            // Zipf-ish: low-index words are much more frequent.
            let idx = ((r % 4096) * ((r >> 12) % 4096) / 4096) as usize;
            buf.extend_from_slice(&words[idx]);
            match r >> 60 {
                0 => buf.push(b'\n'),
                1 => buf.push(b'='),
                2 => buf.extend_from_slice(format!(" {}\n", (r >> 24) % 100_000).as_bytes()),
                _ => buf.push(b' '),
            }
        }
        buf.truncate((1 << 20).min(left));
        w.write_all(&buf)?;
        left -= buf.len();
    }
    Ok(())
}

fn write_random(w: &mut impl Write, size: u64, rng: &mut Rng) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size as usize;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Generates the tree unless a complete one with the same parameters exists.
/// Returns the total file bytes.
fn ensure_tree(bench: &Path) -> u64 {
    let tree = bench.join("tree");
    let marker = bench.join("tree.complete");
    let sizes = sizes();
    let total: u64 = sizes.iter().sum();
    let stamp = format!("{TREE_VERSION} files={FILES} bytes={total}\n");
    if fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str()) && tree.is_dir() {
        return total;
    }
    eprintln!(
        "generating {FILES} files, {:.0} MB, in {}",
        total as f64 / 1e6,
        tree.display()
    );
    let _ = fs::remove_file(&marker);
    let partial = bench.join("tree.partial");
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(&tree);
    // Half the bytes compressible, half random: alternate kinds by size rank.
    let mut order: Vec<usize> = (0..FILES).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let mut random = vec![false; FILES];
    for (rank, &i) in order.iter().enumerate() {
        random[i] = rank % 2 == 1;
    }
    let mut rng = Rng(0xC0FFEE);
    let words = text_words(&mut rng);
    for (i, &size) in sizes.iter().enumerate() {
        let dir = partial.join(format!("d{:02}/s{:02}", i % 20, (i / 20) % 10));
        if i < 200 {
            fs::create_dir_all(&dir).unwrap();
        }
        let ext = if random[i] { "bin" } else { "txt" };
        let mut w = BufWriter::with_capacity(
            1 << 20,
            File::create(dir.join(format!("f{i:05}.{ext}"))).unwrap(),
        );
        if random[i] {
            write_random(&mut w, size, &mut rng).unwrap();
        } else {
            write_text(&mut w, size, &mut rng, &words).unwrap();
        }
        w.flush().unwrap();
    }
    fs::rename(&partial, &tree).unwrap();
    fs::write(&marker, stamp).unwrap();
    total
}

fn shell(script: &str) {
    let status = Command::new("bash")
        .args(["-c", &format!("set -eo pipefail; {script}")])
        .status()
        .unwrap();
    assert!(status.success(), "failed: {script}");
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn timed<T>(run: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = run();
    (start.elapsed(), out)
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn fresh_store(bench: &Path) -> Store {
    let root = bench.join("store");
    let _ = fs::remove_dir_all(&root);
    Store::open(&root).unwrap()
}

/// User and system CPU time of this process so far (all its threads, the
/// compressor's workers included), from `/proc/self/stat` in clock ticks
/// (1/100 s on Linux).
fn cpu_times() -> (Duration, Duration) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold
    // spaces; utime and stime are the 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        let t: u64 = fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
        Duration::from_millis(t * 10)
    };
    (ticks(11), ticks(12))
}

fn make_layer(bench: &Path, tree: &Path, kind: Compression) -> (Duration, LayerDescriptor) {
    let opts = CreateOptions {
        compression: CompressionOptions::new(kind),
        source_date_epoch: None,
    };
    // A fresh store each time: a blob already present is not rewritten.
    let store = fresh_store(bench);
    let (user0, sys0) = cpu_times();
    let (took, desc) = timed(|| create_layer(&store, tree, &opts).unwrap());
    let (user1, sys1) = cpu_times();
    // Every run, not just the best: CPU time shows the work done, which a
    // shared machine's load does not change the way it changes wall time.
    println!(
        "  create_layer {kind}: {:.2} s wall, {:.2} s user, {:.2} s sys",
        took.as_secs_f64(),
        (user1 - user0).as_secs_f64(),
        (sys1 - sys0).as_secs_f64()
    );
    (took, desc)
}

struct Row {
    name: &'static str,
    ours: f64,
    limit_name: String,
    limit: f64,
    target: Option<(f64, &'static str)>,
    note: String,
}

/// Runs `ours` and `limit` alternately, `repeat` times each, and keeps the
/// best time of each: on a shared machine, alternating exposes both to the
/// same background load.
fn measure<T>(
    repeat: usize,
    mut ours: impl FnMut() -> (Duration, T),
    mut limit: impl FnMut() -> Duration,
) -> (Duration, Duration, T) {
    let mut best: Option<(Duration, T)> = None;
    let mut best_limit = Duration::MAX;
    for _ in 0..repeat {
        best_limit = best_limit.min(limit());
        let (took, out) = ours();
        if best.as_ref().is_none_or(|(b, _)| took < *b) {
            best = Some((took, out));
        }
    }
    let (took, out) = best.expect("repeat is at least 1");
    (took, best_limit, out)
}

fn main() {
    let bench: PathBuf = std::env::var_os("BUILDER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("bench-layers")
        });
    let repeat: usize = std::env::var("BUILDER_BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    // Comma-separated subset of plain,zstd,gzip,unpack, for profiling.
    let only = std::env::var("BUILDER_BENCH_ONLY").ok();
    let wanted = |row: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|r| r == row))
    };
    fs::create_dir_all(&bench).unwrap();
    let bench = bench.canonicalize().unwrap();
    let total = ensure_tree(&bench);
    let tree = bench.join("tree");
    let q = |p: &Path| format!("'{}'", p.display());
    println!(
        "tree: {} files, {:.1} MB in {}",
        FILES,
        total as f64 / 1e6,
        tree.display()
    );
    println!(
        "load average at start: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "best of {repeat} runs each, ours and limit alternating; MB/s = 10^6 bytes of tree data per second\n"
    );
    // Warm the page cache so that every run reads the tree from memory.
    shell(&format!("tar -cf - -C {} . > /dev/null", q(&tree)));

    let mut rows = Vec::new();
    let mut plain_diff_id = None;
    if wanted("plain") {
        let dd_bytes = 600u64 << 20;
        let dd_file = bench.join("dd.img");
        let dd = || {
            let (t, ()) = timed(|| {
                shell(&format!(
                    "dd if=/dev/zero of={} bs=1M count=600 conv=fsync status=none",
                    q(&dd_file)
                ))
            });
            fs::remove_file(&dd_file).unwrap();
            // Scaled to the tree's size, so both are times for the same bytes.
            t.mul_f64(total as f64 / dd_bytes as f64)
        };
        let (t, limit, plain) =
            measure(repeat, || make_layer(&bench, &tree, Compression::None), dd);
        let dd = mbps(total, limit);
        plain_diff_id = Some(plain.diff_id);
        rows.push(Row {
            name: "uncompressed (tar + digests + fsync)",
            ours: mbps(total, t),
            limit_name: "dd conv=fsync".into(),
            limit: dd,
            target: Some((0.8 * dd, "80% of dd")),
            note: format!("{:.1} MB blob", plain.size as f64 / 1e6),
        });
    }
    if wanted("zstd") {
        let limit = || {
            timed(|| {
                shell(&format!(
                    "tar -cf - -C {} . | zstd -3 -T2 -q -c > /dev/null",
                    q(&tree)
                ))
            })
            .0
        };
        let (t, limit, zstd) = measure(
            repeat,
            || make_layer(&bench, &tree, Compression::Zstd),
            limit,
        );
        assert!(
            plain_diff_id.is_none_or(|d| d == zstd.diff_id),
            "zstd layer has another diffID"
        );
        rows.push(Row {
            name: "zstd level 3",
            ours: mbps(total, t),
            limit_name: "tar | zstd -3 -T2".into(),
            limit: mbps(total, limit),
            target: Some((200.0, "200 MB/s")),
            note: format!("ratio {:.2}", total as f64 / zstd.size as f64),
        });
    }
    if wanted("gzip") {
        let tool = if have("pigz") { "pigz -6" } else { "gzip -6" };
        let limit = || {
            timed(|| {
                shell(&format!(
                    "tar -cf - -C {} . | {tool} -c > /dev/null",
                    q(&tree)
                ))
            })
            .0
        };
        let (t, limit, gzip) = measure(
            repeat,
            || make_layer(&bench, &tree, Compression::Gzip),
            limit,
        );
        assert!(
            plain_diff_id.is_none_or(|d| d == gzip.diff_id),
            "gzip layer has another diffID"
        );
        rows.push(Row {
            name: "gzip level 6",
            ours: mbps(total, t),
            limit_name: format!("tar | {tool}"),
            limit: mbps(total, limit),
            target: Some((60.0, "60 MB/s")),
            note: format!("ratio {:.2}", total as f64 / gzip.size as f64),
        });
    }
    if wanted("unpack") {
        let (_, zstd) = make_layer(&bench, &tree, Compression::Zstd);
        let store = Store::open(bench.join("store")).unwrap();
        let blob = store.blob_path(&zstd.digest);
        // A new directory for every run, all removed at the end: ext4 scans
        // past recently freed inodes when allocating, so deleting 20,000
        // files right before a run would slow that run down.
        let unpacked = bench.join("unpacked");
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir(&unpacked).unwrap();
        let runs = std::cell::Cell::new(0);
        let fresh_dest = || {
            runs.set(runs.get() + 1);
            let dest = unpacked.join(runs.get().to_string());
            fs::create_dir(&dest).unwrap();
            dest
        };
        let ours = || {
            let dest = fresh_dest();
            let opts = cache::layer::extract::UnpackOptions::default();
            timed(|| {
                cache::layer::extract::unpack_layer(File::open(&blob).unwrap(), &dest, &opts)
                    .unwrap()
            })
        };
        let limit = || {
            let dest = fresh_dest();
            timed(|| {
                shell(&format!(
                    "zstd -d -q -c {} | tar -xf - -C {}",
                    q(&blob),
                    q(&dest)
                ))
            })
            .0
        };
        let (t, limit, stats) = measure(repeat, ours, limit);
        assert_eq!(
            stats.diff_id, zstd.diff_id,
            "unpacking gives another diffID"
        );
        let _ = fs::remove_dir_all(&unpacked);
        rows.push(Row {
            name: "unpack zstd layer",
            ours: mbps(total, t),
            limit_name: "zstd -d | tar -x".into(),
            limit: mbps(total, limit),
            target: None,
            note: format!("{} entries", stats.entries),
        });
    }
    let _ = fs::remove_dir_all(bench.join("store"));

    println!(
        "{:<38} {:>7} {:<20} {:>7} {:>8} {:<10} {:>9}  note",
        "operation", "MB/s", "limit", "MB/s", "of limit", "target", "of target"
    );
    for r in &rows {
        let (target_name, of_target) = r.target.map_or(("-", "-".to_string()), |(t, n)| {
            (n, format!("{:.0}%", 100.0 * r.ours / t))
        });
        println!(
            "{:<38} {:>7.0} {:<20} {:>7.0} {:>7.0}% {:<10} {:>9}  {}",
            r.name,
            r.ours,
            r.limit_name,
            r.limit,
            100.0 * r.ours / r.limit,
            target_name,
            of_target,
            r.note
        );
    }
    println!(
        "\nload average at end: {}",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
