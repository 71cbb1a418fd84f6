//! Storage upkeep: what the store's space is used by (`builder du`) and
//! removal of build cache (`builder prune`, and the automatic size cap).
//!
//! The roots are the images of `index.json` (named or not): their manifests,
//! configs and layer blobs are never removed. Everything else is *build
//! cache*: cache records (`keys/`), the blobs and snapshots only they need,
//! unreferenced blobs, snapshots (even of image layers: they are re-created
//! from the blob), cache mounts (`mounts/`), context stat caches
//! (`context-cache/`), miss notes (`keys/notes/`) and stale leftovers in
//! `tmp/`. A size limit (`--keep-storage`, the automatic cap) counts build
//! cache only, as BuildKit does, so large images never make every build wipe
//! the cache.
//!
//! Running builds hold the store's shared [`GC_LOCK`]; pruning takes it
//! exclusively, so nothing a build uses disappears under it. Snapshots are
//! also held one by one (by `builder run`, say); a held snapshot is skipped.
//! A record is removed (and its removal synced) before the blobs it names,
//! so a crash never leaves a record pointing at a missing blob.
//!
//! Sizes are disk usage (`st_blocks * 512`, as `du` counts), with a file of
//! several hard links counted once. Snapshots never change once in place,
//! so their sizes are remembered in `gc/sizes.json` and not walked again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::images::{ConfigSummary, ParsedManifest};
use crate::keys::{CacheRecord, KeyIndex};
use crate::snapshot::{SnapshotError, Snapshots, delete_moved};
use crate::store::{Store, StoreError, StoreLock};

/// The store lock that running builds hold shared and GC exclusively.
pub const GC_LOCK: &str = "gc";

/// The environment variable that sets the automatic cap (a size, or `0` /
/// `off` to disable it).
pub const ENV_KEEP_STORAGE: &str = "BUILDER_GC_KEEP_STORAGE";

/// The automatic cap is the smaller of this and [`DEFAULT_CAP_PERCENT`] of
/// the store's filesystem.
pub const DEFAULT_CAP: u64 = 20_000_000_000;
pub const DEFAULT_CAP_PERCENT: u64 = 10;

/// `tmp/` entries younger than this may belong to a running process.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// The prefix of the `tmp/` directories that removed trees are moved into
/// before they are deleted (see [`Trash`]).
const REMOVING_PREFIX: &str = "removing-";

const SIZES_VERSION: u32 = 1;

/// An error of storage upkeep.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid image index {}", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image manifest {digest} named by index.json cannot be read; refusing to prune")]
    Manifest {
        digest: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid gc settings in {}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid {ENV_KEEP_STORAGE}")]
    Env(#[source] ParseSizeError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> GcError {
    let path = path.to_path_buf();
    move |source| GcError::Io { op, path, source }
}

// ---------------------------------------------------------------------------
// Sizes and durations as people write them.

/// A size or duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {why}")]
pub struct ParseSizeError {
    what: &'static str,
    input: String,
    why: &'static str,
}

/// Parses `512MB`, `1.5GB`, `2GiB`, `100k`, `4096`: decimal units (kB, MB,
/// GB, TB = powers of 1000) and binary ones (KiB, MiB, GiB, TiB); case does
/// not matter and a plain number is bytes.
pub fn parse_size(s: &str) -> Result<u64, ParseSizeError> {
    let err = |why| ParseSizeError {
        what: "size",
        input: s.to_string(),
        why,
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err("expected a number, like 512MB, 1.5GB or 2GiB"));
    }
    let value: f64 = num.parse().map_err(|_| err("not a number"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(err(
                "unknown unit (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)",
            ));
        }
    };
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration as Go and docker write it: `30m`, `24h`, `7d`,
/// `1h30m`, `90s`, `1.5h` (units: ms, s, m, h, d, w).
pub fn parse_duration(s: &str) -> Result<Duration, ParseSizeError> {
    let err = |why| ParseSizeError {
        what: "duration",
        input: s.to_string(),
        why,
    };
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err("expected a duration, like 30m, 24h, 7d or 1h30m"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("a number needs a unit (ms, s, m, h, d or w)"))?;
        if n == 0 {
            return Err(err("expected a number before the unit"));
        }
        let value: f64 = rest[..n].parse().map_err(|_| err("not a number"))?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..u] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            _ => return Err(err("unknown unit (use ms, s, m, h, d or w)")),
        };
        rest = &rest[u..];
        total += value * secs;
    }
    if !total.is_finite() || total > 1e15 {
        return Err(err("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// A size as docker shows it: `0B`, `512B`, `4.1kB`, `1.2GB` (decimal
/// units, three significant digits).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 999.5 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let digits = if unit == 0 || v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    let mut text = format!("{v:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

// ---------------------------------------------------------------------------
// The automatic cap.

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    gc: Option<GcConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GcConfig {
    #[serde(default)]
    keep_storage: Option<serde_json::Value>,
}

/// Where the automatic cap came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapSource {
    Env,
    ConfigFile,
    Default,
}

/// The automatic cap on build cache, in bytes; `None` when disabled. From
/// `BUILDER_GC_KEEP_STORAGE`, else `ROOT/config.json`'s
/// `{"gc":{"keepStorage":"20GB"}}`, else the smaller of 20 GB and 10% of the
/// store's filesystem.
pub fn configured_cap(store: &Store) -> Result<(Option<u64>, CapSource), GcError> {
    if let Some(v) = std::env::var_os(ENV_KEEP_STORAGE) {
        let v = v.to_string_lossy();
        return Ok((parse_cap(&v).map_err(GcError::Env)?, CapSource::Env));
    }
    let path = store.root().join("config.json");
    match fs::read(&path) {
        Ok(bytes) => {
            let config_err = |source: Box<dyn std::error::Error + Send + Sync>| GcError::Config {
                path: path.clone(),
                source,
            };
            let file: ConfigFile =
                serde_json::from_slice(&bytes).map_err(|e| config_err(Box::new(e)))?;
            if let Some(value) = file.gc.and_then(|g| g.keep_storage) {
                let cap = match &value {
                    serde_json::Value::String(s) => parse_cap(s),
                    serde_json::Value::Number(n) => parse_cap(&n.to_string()),
                    _ => parse_cap(&value.to_string()),
                }
                .map_err(|e| config_err(Box::new(e)))?;
                return Ok((cap, CapSource::ConfigFile));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(GcError::Io {
                op: "read",
                path,
                source,
            });
        }
    }
    Ok((Some(default_cap(store.root())), CapSource::Default))
}

fn parse_cap(s: &str) -> Result<Option<u64>, ParseSizeError> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match parse_size(s)? {
        0 => Ok(None),
        n => Ok(Some(n)),
    }
}

/// The smaller of [`DEFAULT_CAP`] and [`DEFAULT_CAP_PERCENT`] of the
/// filesystem holding `root`.
pub fn default_cap(root: &Path) -> u64 {
    match nix::sys::statvfs::statvfs(root) {
        Ok(st) => {
            // The field types differ between platforms.
            #[allow(clippy::unnecessary_cast)]
            let fs_size = (st.blocks() as u64).saturating_mul(st.fragment_size() as u64);
            DEFAULT_CAP.min(fs_size / 100 * DEFAULT_CAP_PERCENT)
        }
        Err(_) => DEFAULT_CAP,
    }
}

// ---------------------------------------------------------------------------
// Scanning the store.

/// Disk usage of one file or directory entry.
fn disk_usage(m: &Metadata) -> u64 {
    m.blocks() * 512
}

/// Size of everything under `path` (itself included) and its newest mtime;
/// hard-linked files count once in `seen`. Entries that vanish meanwhile
/// are skipped.
fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> (u64, SystemTime) {
    let mut size = 0;
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if let Ok(t) = m.modified() {
            newest = newest.max(t);
        }
        if m.is_dir() {
            size += disk_usage(&m);
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if m.nlink() <= 1 || seen.insert((m.dev(), m.ino())) {
            size += disk_usage(&m);
        }
    }
    (size, newest)
}

/// A thing on disk with its size and last use.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What `du --verbose` and `prune` show: a key, a mount or file name.
    pub id: String,
    pub path: PathBuf,
    pub size: u64,
    pub last_used: SystemTime,
}

#[derive(Debug, Clone)]
struct RecordEntry {
    key: Digest,
    record: CacheRecord,
    last_used: SystemTime,
    size: u64,
}

/// Everything GC needs to know about a store, read in one pass.
struct Scan {
    image_count: usize,
    /// Blobs that images need: manifests (and indexes), configs, layers.
    image_blobs: HashSet<Digest>,
    /// DiffIDs of image layers (their snapshots are kept unless `--all`).
    image_diff_ids: HashSet<Digest>,
    blobs: BTreeMap<Digest, u64>,
    /// Blobs written within the last hour: when nothing names them they
    /// may belong to a `load` or `pull` that has not named them yet, so
    /// only `--all` removes them as unreferenced.
    young_blobs: HashSet<Digest>,
    snapshots: BTreeMap<Digest, u64>,
    records: Vec<RecordEntry>,
    notes: Vec<Entry>,
    mounts: Vec<Entry>,
    context_caches: Vec<Entry>,
    /// `tmp/` entries, and whether each is old enough to be garbage.
    tmp: Vec<(Entry, bool)>,
}

fn scan(store: &Store, now: SystemTime) -> Result<Scan, GcError> {
    let (image_count, image_blobs, image_diff_ids) = image_roots(store)?;
    let mut seen = HashSet::new();
    let (blobs, young_blobs) = blob_sizes(store, &mut seen, now)?;
    let snapshots = snapshot_sizes(store)?;
    let index = KeyIndex::new(store);
    let records = index
        .list()?
        .into_iter()
        .map(|r| {
            let size =
                fs::symlink_metadata(index.path(&r.key)).map_or(r.file_size, |m| disk_usage(&m));
            RecordEntry {
                key: r.key,
                record: r.record,
                last_used: r.last_used,
                size,
            }
        })
        .collect();
    let notes = entries_of(&index.notes_dir(), &mut seen);
    let mounts = entries_of(&store.root().join("mounts"), &mut seen);
    let context_caches = entries_of(&store.root().join("context-cache"), &mut seen);
    let tmp = tmp_entries(store, now, &mut seen);
    Ok(Scan {
        image_count,
        image_blobs,
        image_diff_ids,
        blobs,
        young_blobs,
        snapshots,
        records,
        notes,
        mounts,
        context_caches,
        tmp,
    })
}

/// The entries of `tmp/` and whether each is stale, judged by the entry's
/// own mtime as the store does at open. Young `removing-*` directories are
/// left out: they hold what a prune removed and some process is deleting
/// (see [`Trash`]), which is no longer cache, and walking a tree while it
/// is being deleted would be slow for nothing.
fn tmp_entries(
    store: &Store,
    now: SystemTime,
    seen: &mut HashSet<(u64, u64)>,
) -> Vec<(Entry, bool)> {
    let Ok(read) = fs::read_dir(store.root().join("tmp")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in read.flatten() {
        let path = e.path();
        let Ok(own) = fs::symlink_metadata(&path) else {
            continue;
        };
        let own = own.modified().unwrap_or(now);
        let stale = now.duration_since(own).is_ok_and(|age| age > STALE_TMP_AGE);
        let id = e.file_name().to_string_lossy().into_owned();
        if !stale && id.starts_with(REMOVING_PREFIX) {
            continue;
        }
        let (size, last_used) = walk(&path, seen);
        out.push((
            Entry {
                id,
                path,
                size,
                last_used,
            },
            stale,
        ));
    }
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    out
}

/// Each direct child of `dir` as an entry, sized by walking it; last use
/// is the newest mtime inside.
fn entries_of(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> Vec<Entry> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = read
        .flatten()
        .map(|e| {
            let path = e.path();
            let (size, last_used) = walk(&path, seen);
            Entry {
                id: e.file_name().to_string_lossy().into_owned(),
                path,
                size,
                last_used,
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn blob_sizes(
    store: &Store,
    seen: &mut HashSet<(u64, u64)>,
    now: SystemTime,
) -> Result<(BTreeMap<Digest, u64>, HashSet<Digest>), GcError> {
    let dir = store.root().join("blobs").join("sha256");
    let read = fs::read_dir(&dir).map_err(io_err("list", &dir))?;
    let mut out = BTreeMap::new();
    let mut young = HashSet::new();
    for e in read.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
            continue;
        };
        let Ok(m) = e.metadata() else { continue };
        let size = if m.nlink() <= 1 || seen.insert((m.dev(), m.ino())) {
            disk_usage(&m)
        } else {
            0
        };
        let age = m.modified().ok().and_then(|t| now.duration_since(t).ok());
        if age.is_none_or(|a| a <= STALE_TMP_AGE) {
            young.insert(digest);
        }
        out.insert(digest, size);
    }
    Ok((out, young))
}

#[derive(Serialize, Deserialize, Default)]
struct SizesFile {
    version: u32,
    snapshots: BTreeMap<String, u64>,
}

fn sizes_path(store: &Store) -> PathBuf {
    store.root().join("gc").join("sizes.json")
}

/// Sizes of all snapshots, from `gc/sizes.json` where known (a snapshot
/// never changes once in place), walked and remembered otherwise.
fn snapshot_sizes(store: &Store) -> Result<BTreeMap<Digest, u64>, GcError> {
    let snapshots = Snapshots::new(store);
    let present = snapshots.list()?;
    let path = sizes_path(store);
    let mut file: SizesFile = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|f: &SizesFile| f.version == SIZES_VERSION)
        .unwrap_or_default();
    let mut changed = false;
    let mut out = BTreeMap::new();
    for d in &present {
        let hex = d.hex().to_string();
        let size = match file.snapshots.get(&hex) {
            Some(&s) => s,
            None => {
                let (s, _) = walk(&snapshots.path(d), &mut HashSet::new());
                file.snapshots.insert(hex, s);
                changed = true;
                s
            }
        };
        out.insert(*d, size);
    }
    let before = file.snapshots.len();
    let live: HashSet<String> = out.keys().map(|d| d.hex().to_string()).collect();
    file.snapshots.retain(|hex, _| live.contains(hex));
    changed |= file.snapshots.len() != before;
    if changed {
        file.version = SIZES_VERSION;
        // Only a cache: a failed write costs a walk next time.
        let bytes = serde_json::to_vec(&file).expect("sizes serialize");
        let _ = store.replace_file(&path, &bytes, 0o600, false);
    }
    Ok(out)
}

/// The images of `index.json` and everything they need.
fn image_roots(store: &Store) -> Result<(usize, HashSet<Digest>, HashSet<Digest>), GcError> {
    let path = store.root().join("index.json");
    let bytes = {
        let _lock = store.lock_shared("index")?;
        fs::read(&path).map_err(io_err("read", &path))?
    };
    let index: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| GcError::Index {
            path: path.clone(),
            source,
        })?;
    let mut blobs = HashSet::new();
    let mut diff_ids = HashSet::new();
    let mut pending: Vec<Digest> = descriptors(&index);
    let mut manifests = pending.clone();
    manifests.sort();
    manifests.dedup();
    while let Some(d) = pending.pop() {
        if !blobs.insert(d) {
            continue;
        }
        // A named manifest that is gone leaves nothing to protect.
        if !store.has_blob(&d) {
            continue;
        }
        let bad = |source: Box<dyn std::error::Error + Send + Sync>| GcError::Manifest {
            digest: d,
            source,
        };
        let bytes = store.read_blob(&d).map_err(|e| bad(Box::new(e)))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(Box::new(e)))?;
        if doc.get("manifests").is_some() {
            // An image index or manifest list: its children are images too.
            pending.extend(descriptors(&doc));
            continue;
        }
        let parsed = ParsedManifest::parse(&bytes).map_err(|e| bad(Box::new(e)))?;
        blobs.insert(parsed.config.digest);
        blobs.extend(parsed.layers.iter().map(|l| l.digest));
        if let Ok(config) = store.read_blob(&parsed.config.digest) {
            if let Ok(ids) = ConfigSummary::parse(&config).map(|c| c.diff_ids()) {
                diff_ids.extend(ids.into_iter().flatten());
            }
        }
    }
    Ok((manifests.len(), blobs, diff_ids))
}

/// The digests of a `manifests` array.
fn descriptors(doc: &serde_json::Value) -> Vec<Digest> {
    doc.get("manifests")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("digest")?.as_str()?.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------
// du

/// Count, size and reclaimable part of one kind of thing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Category {
    pub count: u64,
    pub size: u64,
    /// What `prune --all` would remove.
    pub reclaimable: u64,
}

impl Category {
    fn add(&mut self, size: u64, reclaimable: bool) {
        self.count += 1;
        self.size += size;
        if reclaimable {
            self.reclaimable += size;
        }
    }
}

/// One cache record as `du --verbose` shows it.
#[derive(Debug, Clone)]
pub struct RecordUsage {
    pub key: Digest,
    pub description: String,
    pub last_used: SystemTime,
    /// The record file plus the blobs and snapshots no image and no other
    /// record needs: what removing it alone frees.
    pub private_size: u64,
    /// Blobs and snapshots it shares with other records (not images).
    pub shared_size: u64,
}

/// Space used in a store, by kind.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Tagged (or kept unnamed) images: their manifests, configs and layers.
    pub images: Category,
    /// Blobs that only cache records need.
    pub cache_layers: Category,
    /// Blobs nothing needs.
    pub unreferenced_blobs: Category,
    pub snapshots: Category,
    /// Cache record files and miss notes.
    pub records: Category,
    pub mounts: Category,
    pub context_cache: Category,
    /// `tmp/`; only entries older than an hour are reclaimable. What a
    /// prune removed and is still being deleted is not counted.
    pub tmp: Category,
    pub record_details: Vec<RecordUsage>,
    pub mount_details: Vec<Entry>,
}

impl Usage {
    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.images.size + self.build_cache()
    }

    /// Everything but what images need: what `--keep-storage` and the
    /// automatic cap limit.
    pub fn build_cache(&self) -> u64 {
        self.cache_layers.size
            + self.unreferenced_blobs.size
            + self.snapshots.size
            + self.records.size
            + self.mounts.size
            + self.context_cache.size
            + self.tmp.size
    }

    pub fn reclaimable(&self) -> u64 {
        [
            self.images,
            self.cache_layers,
            self.unreferenced_blobs,
            self.snapshots,
            self.records,
            self.mounts,
            self.context_cache,
            self.tmp,
        ]
        .iter()
        .map(|c| c.reclaimable)
        .sum()
    }
}

/// The space used in `store`, by kind.
pub fn usage(store: &Store) -> Result<Usage, GcError> {
    let s = scan(store, SystemTime::now())?;
    Ok(usage_of(&s))
}

fn usage_of(s: &Scan) -> Usage {
    let mut u = Usage::default();
    let mut blob_refs: HashMap<Digest, u32> = HashMap::new();
    let mut diff_refs: HashMap<Digest, u32> = HashMap::new();
    for r in &s.records {
        for (b, d) in record_refs(&r.record) {
            *blob_refs.entry(b).or_default() += 1;
            *diff_refs.entry(d).or_default() += 1;
        }
    }
    u.images.count = s.image_count as u64;
    for (d, &size) in &s.blobs {
        if s.image_blobs.contains(d) {
            u.images.size += size;
        } else if blob_refs.contains_key(d) {
            u.cache_layers.add(size, true);
        } else {
            u.unreferenced_blobs.add(size, true);
        }
    }
    for &size in s.snapshots.values() {
        u.snapshots.add(size, true);
    }
    for r in &s.records {
        u.records.add(r.size, true);
        let (mut private, mut shared) = (r.size, 0);
        for (b, d) in record_refs(&r.record) {
            if !s.image_blobs.contains(&b) {
                if let Some(&size) = s.blobs.get(&b) {
                    if blob_refs[&b] == 1 {
                        private += size;
                    } else {
                        shared += size;
                    }
                }
            }
            if let Some(&size) = s.snapshots.get(&d) {
                if diff_refs[&d] == 1 && !s.image_diff_ids.contains(&d) {
                    private += size;
                } else {
                    shared += size;
                }
            }
        }
        u.record_details.push(RecordUsage {
            key: r.key,
            description: r.record.description.clone(),
            last_used: r.last_used,
            private_size: private,
            shared_size: shared,
        });
    }
    u.record_details
        .sort_by_key(|r| std::cmp::Reverse(r.last_used));
    for n in &s.notes {
        u.records.size += n.size;
        u.records.reclaimable += n.size;
    }
    for m in &s.mounts {
        u.mounts.add(m.size, true);
    }
    u.mount_details = s.mounts.clone();
    for c in &s.context_caches {
        u.context_cache.add(c.size, true);
    }
    for (t, stale) in &s.tmp {
        u.tmp.add(t.size, *stale);
    }
    u
}

/// (blob, diffID) of each distinct layer of a record.
fn record_refs(r: &CacheRecord) -> Vec<(Digest, Digest)> {
    let mut v: Vec<(Digest, Digest)> = r.layers.iter().map(|l| (l.digest, l.diff_id)).collect();
    v.sort();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------
// prune

/// What to remove; see `builder prune --help`.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Remove all build cache, cache mounts, context caches, notes, image
    /// snapshots and unreferenced blobs of the last hour included; without
    /// it mounts, context caches and notes are only removed when older than
    /// `until` or while over `keep_storage`, and young unreferenced blobs
    /// (maybe of a `load` in progress) stay.
    pub all: bool,
    /// Remove least recently used cache only until the build cache is at
    /// most this big.
    pub keep_storage: Option<u64>,
    /// Keep what was used within this long.
    pub until: Option<Duration>,
}

/// A kind of thing prune removes one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ItemKind {
    Record,
    Mount,
    ContextCache,
    Note,
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ItemKind::Record => "cache record",
            ItemKind::Mount => "cache mount",
            ItemKind::ContextCache => "context cache",
            ItemKind::Note => "note",
        })
    }
}

/// One removed item, with what its removal freed.
#[derive(Debug, Clone)]
pub struct Removed {
    pub kind: ItemKind,
    pub id: String,
    pub description: String,
    pub last_used: SystemTime,
    /// Its own size plus the blobs and snapshots that went with it.
    pub size: u64,
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Records, mounts, context caches and notes, least recently used first.
    pub removed: Vec<Removed>,
    /// Blobs nothing needed any more (besides those counted in `removed`).
    pub blobs: Category,
    /// Snapshots nothing needed (besides those counted in `removed`), and
    /// image snapshots removed by `--all` or to meet `keep_storage`.
    pub snapshots: Category,
    /// Stale `tmp/` leftovers.
    pub tmp: Category,
    /// Snapshots left in place because a build or `run` holds them.
    pub held: Vec<Digest>,
    /// Total bytes freed.
    pub reclaimed: u64,
    /// Build cache left afterwards.
    pub build_cache_after: u64,
}

/// The held exclusive GC lock: no build runs while it is held.
pub struct GcLock {
    _lock: StoreLock,
}

impl fmt::Debug for GcLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GcLock")
    }
}

/// Waits until no build runs and takes the GC lock.
pub fn lock(store: &Store) -> Result<GcLock, GcError> {
    Ok(GcLock {
        _lock: store.lock_exclusive(GC_LOCK)?,
    })
}

/// Takes the GC lock if no build runs; `None` otherwise.
pub fn try_lock(store: &Store) -> Result<Option<GcLock>, GcError> {
    Ok(store
        .try_lock_exclusive(GC_LOCK)?
        .map(|l| GcLock { _lock: l }))
}

/// Waits for running builds, then prunes.
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport, GcError> {
    let lock = lock(store)?;
    prune_locked(store, &lock, opts)
}

/// Prunes with the GC lock held.
pub fn prune_locked(
    store: &Store,
    _lock: &GcLock,
    opts: &PruneOptions,
) -> Result<PruneReport, GcError> {
    let now = SystemTime::now();
    let s = scan(store, now)?;
    let (report, trash) = run_prune(store, &s, opts, now)?;
    // The user expects the space back when prune returns.
    trash.delete()?;
    Ok(report)
}

/// Trees that a prune moved out of the store into `tmp/removing-*`
/// directories but has not deleted yet. Moving is what removes them from
/// the store (it is quick and crash-safe); deleting a big tree is the slow
/// part, which [`auto_prune`]'s caller may leave to a background process
/// (see [`remove_trash`]). Dropped, it deletes them; left alone after a
/// crash, they are removed as stale `tmp/` leftovers by the first command
/// that opens the store once they are an hour old.
#[derive(Debug, Default)]
pub struct Trash {
    dirs: Vec<PathBuf>,
}

impl Trash {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// The `tmp/removing-*` directories to delete.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Hands the directories over: the caller (or the process it starts)
    /// deletes them now.
    pub fn into_dirs(mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.dirs)
    }

    /// Deletes the directories now; the first failure is returned after
    /// all were tried.
    pub fn delete(mut self) -> Result<(), GcError> {
        let mut first = None;
        for dir in std::mem::take(&mut self.dirs) {
            if let Err(source) = delete_moved(&dir) {
                first.get_or_insert(GcError::Io {
                    op: "delete",
                    path: dir,
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Trash {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = delete_moved(dir);
        }
    }
}

/// Deletes trash that a prune of the store at `root` moved away (the
/// background half of [`auto_prune`]). Each of `dirs` must be a
/// `tmp/removing-*` directory of that root, so that a wrong argument cannot
/// delete anything else; what is already gone counts as deleted, since the
/// store's cleanup of stale `tmp/` entries or another process may get there
/// first. Does not open the store: it may have been deleted meanwhile, and
/// must not be created again.
pub fn remove_trash(root: &Path, dirs: &[PathBuf]) -> Result<(), GcError> {
    // Compared in canonical form: a `--root` given on the command line may
    // be relative (`./cache`) or reached through a link.
    let tmp = match fs::canonicalize(root.join("tmp")) {
        Ok(tmp) => tmp,
        // No store any more: nothing of it to delete.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(GcError::Io {
                op: "delete",
                path: root.join("tmp"),
                source,
            });
        }
    };
    for dir in dirs {
        let parent = dir.parent().and_then(|p| fs::canonicalize(p).ok());
        let is_trash = parent.as_deref() == Some(tmp.as_path())
            && dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(REMOVING_PREFIX));
        if !is_trash {
            return Err(GcError::Io {
                op: "delete",
                path: dir.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a {REMOVING_PREFIX}* directory of {}", tmp.display()),
                ),
            });
        }
    }
    Trash {
        dirs: dirs.to_vec(),
    }
    .delete()
}

/// What the automatic cap did.
#[derive(Debug)]
pub enum AutoPrune {
    /// The cap is off.
    Disabled,
    /// A build runs; try again after the next one.
    Busy,
    /// The build cache is within the cap.
    UnderCap { cap: u64, build_cache: u64 },
    Pruned {
        cap: u64,
        report: PruneReport,
        /// The removed trees, moved out of the store but not deleted yet:
        /// `report.reclaimed` is free once they are.
        trash: Trash,
    },
}

/// After a build: if the build cache is over the configured cap, removes
/// least recently used cache until it fits (as `--keep-storage CAP`). Skips
/// at once when a build runs. The removed trees are only moved out of the
/// store, into the returned [`Trash`], so that the caller can delete them
/// without making the user wait.
pub fn auto_prune(store: &Store) -> Result<AutoPrune, GcError> {
    let (Some(cap), _) = configured_cap(store)? else {
        return Ok(AutoPrune::Disabled);
    };
    let Some(lock) = try_lock(store)? else {
        return Ok(AutoPrune::Busy);
    };
    let now = SystemTime::now();
    let s = scan(store, now)?;
    let build_cache = usage_of(&s).build_cache();
    if build_cache <= cap {
        return Ok(AutoPrune::UnderCap { cap, build_cache });
    }
    let opts = PruneOptions {
        keep_storage: Some(cap),
        ..PruneOptions::default()
    };
    let (report, trash) = run_prune(store, &s, &opts, now)?;
    drop(lock);
    Ok(AutoPrune::Pruned { cap, report, trash })
}

/// A removable item during planning.
struct Item<'a> {
    kind: ItemKind,
    id: String,
    description: String,
    last_used: SystemTime,
    size: u64,
    path: PathBuf,
    record: Option<&'a RecordEntry>,
}

/// Removes what `opts` asks for. Directories are only moved into `tmp/`
/// and returned as [`Trash`], for the caller to delete now or later.
fn run_prune(
    store: &Store,
    s: &Scan,
    opts: &PruneOptions,
    now: SystemTime,
) -> Result<(PruneReport, Trash), GcError> {
    let build_cache_before = usage_of(s).build_cache();
    let index = KeyIndex::new(store);

    // Reference counts from all records; planned removals decrement them.
    let mut blob_refs: HashMap<Digest, u32> = HashMap::new();
    let mut diff_refs: HashMap<Digest, u32> = HashMap::new();
    for r in &s.records {
        for (b, d) in record_refs(&r.record) {
            *blob_refs.entry(b).or_default() += 1;
            *diff_refs.entry(d).or_default() += 1;
        }
    }

    // What goes whatever the options: blobs and snapshots nothing needs,
    // stale leftovers. The limit applies to what stays after that.
    let orphans: u64 = s
        .blobs
        .iter()
        .filter(|(d, _)| {
            !s.image_blobs.contains(d)
                && !blob_refs.contains_key(d)
                && (opts.all || !s.young_blobs.contains(d))
        })
        .map(|(_, size)| size)
        .chain(
            s.snapshots
                .iter()
                .filter(|(d, _)| !s.image_diff_ids.contains(d) && !diff_refs.contains_key(d))
                .map(|(_, size)| size),
        )
        .chain(
            s.tmp
                .iter()
                .filter(|(_, stale)| *stale)
                .map(|(t, _)| &t.size),
        )
        .sum();
    let mut cache_size = build_cache_before.saturating_sub(orphans);

    let others_removable = opts.all || opts.until.is_some() || opts.keep_storage.is_some();
    let mut items: Vec<Item<'_>> = Vec::new();
    for r in &s.records {
        items.push(Item {
            kind: ItemKind::Record,
            id: r.key.to_string(),
            description: r.record.description.clone(),
            last_used: r.last_used,
            size: r.size,
            path: index.path(&r.key),
            record: Some(r),
        });
    }
    if others_removable {
        for (kind, list) in [
            (ItemKind::Mount, &s.mounts),
            (ItemKind::ContextCache, &s.context_caches),
            (ItemKind::Note, &s.notes),
        ] {
            for e in list {
                items.push(Item {
                    kind,
                    id: e.id.clone(),
                    description: String::new(),
                    last_used: e.last_used,
                    size: e.size,
                    path: e.path.clone(),
                    record: None,
                });
            }
        }
    }
    if let Some(until) = opts.until {
        let cutoff = now.checked_sub(until).unwrap_or(SystemTime::UNIX_EPOCH);
        items.retain(|i| i.last_used < cutoff);
    }
    items.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then(a.kind.cmp(&b.kind))
            .then_with(|| a.id.cmp(&b.id))
    });

    // Plan: least recently used first, until under keep_storage.
    let mut chosen: Vec<(Item<'_>, u64)> = Vec::new();
    let mut freed_blobs: HashSet<Digest> = HashSet::new();
    let mut freed_snapshots: HashSet<Digest> = HashSet::new();
    for item in items {
        if opts.keep_storage.is_some_and(|k| cache_size <= k) {
            break;
        }
        let mut freed = item.size;
        if let Some(r) = item.record {
            for (b, d) in record_refs(&r.record) {
                let n = blob_refs.get_mut(&b).expect("counted above");
                *n -= 1;
                if *n == 0 && !s.image_blobs.contains(&b) {
                    if let Some(&size) = s.blobs.get(&b) {
                        freed += size;
                        freed_blobs.insert(b);
                    }
                }
                let n = diff_refs.get_mut(&d).expect("counted above");
                *n -= 1;
                if *n == 0 && !s.image_diff_ids.contains(&d) {
                    if let Some(&size) = s.snapshots.get(&d) {
                        freed += size;
                        freed_snapshots.insert(d);
                    }
                }
            }
        }
        cache_size = cache_size.saturating_sub(freed);
        chosen.push((item, freed));
    }

    let mut report = PruneReport::default();
    // Deletes what was moved away if anything below fails.
    let mut trash = Trash::default();

    // Records first, durably, so no record outlives its blobs.
    let mut removed_records = false;
    for (item, _) in chosen.iter().filter(|(i, _)| i.kind == ItemKind::Record) {
        let key = item.record.expect("a record item").key;
        removed_records |= index.remove(&key)?;
    }
    if removed_records {
        let dir = store.root().join("keys");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", &dir))?;
    }

    // Blobs that no image and no remaining record needs.
    let mut reclaimed = 0;
    for (d, &size) in &s.blobs {
        if s.image_blobs.contains(d) || blob_refs.get(d).is_some_and(|&n| n > 0) {
            continue;
        }
        if !opts.all && s.young_blobs.contains(d) && !freed_blobs.contains(d) {
            continue;
        }
        let path = store.blob_path(d);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(GcError::Io {
                    op: "remove",
                    path,
                    source,
                });
            }
        }
        reclaimed += size;
        if !freed_blobs.contains(d) {
            report.blobs.add(size, true);
        }
    }

    // Hints about blobs that are gone now.
    crate::archive::conversions::sweep(store);
    crate::registry::sources::sweep(store);

    // Snapshots: those nothing needs; with --all or while over the limit
    // also those of images, which their blobs re-create; not with an age
    // filter, since when a snapshot was last used is not known.
    let over = |size: u64| opts.keep_storage.is_some_and(|k| size > k);
    let snapshots = Snapshots::new(store);
    let mut held = Vec::new();
    let mut image_snapshots = Vec::new();
    for (d, &size) in &s.snapshots {
        let needed = diff_refs.get(d).is_some_and(|&n| n > 0);
        if needed {
            continue;
        }
        if s.image_diff_ids.contains(d) {
            image_snapshots.push((*d, size));
            continue;
        }
        match snapshots.try_move_away(d)? {
            Some(moved) => {
                trash.dirs.extend(moved);
                reclaimed += size;
                if !freed_snapshots.contains(d) {
                    report.snapshots.add(size, true);
                }
            }
            None => held.push(*d),
        }
    }
    if opts.until.is_none() && (opts.all || over(cache_size)) {
        for (d, size) in image_snapshots {
            if opts.keep_storage.is_some() && !over(cache_size) {
                break;
            }
            match snapshots.try_move_away(&d)? {
                Some(moved) => {
                    trash.dirs.extend(moved);
                    reclaimed += size;
                    report.snapshots.add(size, true);
                    cache_size = cache_size.saturating_sub(size);
                }
                None => held.push(d),
            }
        }
    }
    report.held = held;

    // Mounts, context caches, notes.
    for (item, _) in chosen.iter().filter(|(i, _)| i.kind != ItemKind::Record) {
        remove_tree(store, &item.path, &mut trash)?;
    }
    reclaimed += chosen.iter().map(|(i, _)| i.size).sum::<u64>();

    // Stale leftovers of killed processes.
    for (t, stale) in &s.tmp {
        if *stale {
            remove_tree(store, &t.path, &mut trash)?;
            reclaimed += t.size;
            report.tmp.add(t.size, true);
        }
    }

    report.removed = chosen
        .into_iter()
        .map(|(i, freed)| Removed {
            kind: i.kind,
            id: i.id,
            description: i.description,
            last_used: i.last_used,
            size: freed,
        })
        .collect();
    report.reclaimed = reclaimed;
    report.build_cache_after = build_cache_before.saturating_sub(reclaimed);
    Ok((report, trash))
}

/// Removes a file, or moves a whole tree into a new `tmp/removing-*`
/// directory added to `trash`: a crash half-way through deleting it then
/// leaves garbage there, not a half-removed cache mount. Something already
/// gone (a stale `tmp/` entry that another process's cleanup took) is fine.
fn remove_tree(store: &Store, path: &Path, trash: &mut Trash) -> Result<(), GcError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_err("inspect", path)(source)),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
            _ => Ok(()),
        };
    }
    let doomed = store.temp_dir(REMOVING_PREFIX)?;
    match fs::rename(path, doomed.path().join("tree")) {
        Ok(()) => {
            trash.dirs.push(doomed.keep());
            Ok(())
        }
        // The empty directory goes with `doomed`.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_err("move away", path)(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        for (input, bytes) in [
            ("4096", 4096),
            ("512MB", 512_000_000),
            ("1.5GB", 1_500_000_000),
            ("2GiB", 2 << 30),
            ("100k", 100_000),
            ("10kb", 10_000),
            ("3 MiB", 3 << 20),
            ("20gb", 20_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("0", 0),
        ] {
            assert_eq!(parse_size(input), Ok(bytes), "{input}");
        }
        for bad in ["", "GB", "5XB", "1.2.3GB", "-1GB", "1e9"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_parse_like_go_and_docker() {
        for (input, secs) in [
            ("30m", 1800.0),
            ("24h", 86400.0),
            ("7d", 604800.0),
            ("1h30m", 5400.0),
            ("90s", 90.0),
            ("1.5h", 5400.0),
            ("2w", 1_209_600.0),
            ("500ms", 0.5),
        ] {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs_f64(secs)),
                "{input}"
            );
        }
        for bad in ["", "24", "h", "5y", "1h30", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes_look_like_docker() {
        for (bytes, text) in [
            (0, "0B"),
            (512, "512B"),
            (999, "999B"),
            (1000, "1kB"),
            (4096, "4.1kB"),
            (12_345_678, "12.3MB"),
            (1_200_000_000, "1.2GB"),
            (123_456_789_012, "123GB"),
            (999_999_999, "1GB"),
        ] {
            assert_eq!(human_size(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn cap_comes_from_the_config_file_or_defaults() {
        if std::env::var_os(ENV_KEEP_STORAGE).is_some() {
            eprintln!("skipped: {ENV_KEEP_STORAGE} is set in this environment");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (cap, source) = configured_cap(&store).unwrap();
        assert_eq!(source, CapSource::Default);
        let cap = cap.unwrap();
        assert!(cap > 0 && cap <= DEFAULT_CAP, "{cap}");
        let config = dir.path().join("config.json");
        for (text, want) in [
            (r#"{"gc":{"keepStorage":"5GB"}}"#, Some(5_000_000_000)),
            (r#"{"gc":{"keepStorage":1000}}"#, Some(1000)),
            (r#"{"gc":{"keepStorage":"off"}}"#, None),
            (r#"{"gc":{"keepStorage":"0"}}"#, None),
        ] {
            fs::write(&config, text).unwrap();
            assert_eq!(
                configured_cap(&store).unwrap(),
                (want, CapSource::ConfigFile),
                "{text}"
            );
        }
        fs::write(&config, r#"{"other":1}"#).unwrap();
        assert_eq!(configured_cap(&store).unwrap().1, CapSource::Default);
        fs::write(&config, r#"{"gc":{"keepStorage":"5XB"}}"#).unwrap();
        let err = configured_cap(&store).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        let chain = std::error::Error::source(&err).unwrap().to_string();
        assert!(chain.contains("5XB"), "{chain}");
    }
}
