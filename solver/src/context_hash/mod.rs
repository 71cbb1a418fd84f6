//! Content checksums of exactly what COPY/ADD (or a bind mount) read from
//! the build context, for cache keys; a persistent stat cache means that
//! unchanged files are not read again.
//!
//! A [`Selection`] is the list of a COPY's source paths as the build graph
//! has them. They are expanded with `ops::copy`'s own rules: links on the
//! way are resolved inside the context, wildcards are Go's `filepath.Match`
//! per component, a directory means its whole subtree, `.dockerignore`d
//! files do not exist and `--exclude` patterns apply relative to each
//! source directory. Only those files are stat'ed and, when the stat
//! cache does not know them, read. Selecting more than COPY reads only costs
//! a cache miss (`**` always spans directories here); selecting less would
//! reuse a wrong layer, so the rules are shared with COPY rather than
//! copied.
//!
//! Each entry's digest covers its context-relative name, file type,
//! permission bits (set-id and sticky included), owner, and its size and
//! content, link target or device number, plus hard links between selected
//! files; never times. The sum covers the sorted entries and a format
//! version. A source COPY cannot read (missing, escaping the context, a
//! bad pattern) becomes a marker entry such as `<missing> /x`: the sum is
//! defined and the COPY step fails with its own message.
//!
//! The stat cache lives in `ROOT/context-cache/<sha256 of the canonical
//! context path>` (format in [`statcache`]). Walking, stat'ing and hashing
//! run on the rayon pool (a file of 64 MiB or more in 16 MiB chunks, its
//! content digest then being the hash of the chunks' digests); concurrent
//! checksums share the cache, whose lock is never held while a file is
//! read.

mod select;
mod statcache;
mod walk;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use cache::Digest;
use cache::store::Store;
use frontend::dockerignore::PatternMatcher;
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::ops::copy::resolve::{Escape, Tree, is_missing};
use statcache::{CacheEntry, Stat};
use walk::{Node, Walker};

/// The version of the checksum scheme, hashed into every sum: changing
/// what an entry covers must change every key.
const FORMAT: &[u8] = b"builder context checksum v1\0";

/// Read buffer per rayon thread: large reads keep a core on SHA-NI.
const READ_BUFFER: usize = 1 << 20;

/// Files from this size on are hashed in chunks of `CHUNK` in parallel.
const CHUNKED_FROM: u64 = 64 << 20;
const CHUNK: u64 = 16 << 20;

/// What one COPY/ADD (or bind mount) reads from the context.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// Source paths as `CopySource::Path::path` has them: cleaned and
    /// absolute within the context (`/`, `/src`, `/*.go`, `/a/**/b`).
    pub paths: Vec<&'a str>,
    /// `--exclude` patterns (`.dockerignore` syntax, relative to each
    /// source directory).
    pub exclude: &'a [String],
    /// Whether file owners count: a bind mount shows them, while COPY from
    /// the context makes every file 0:0 (or the `--chown` owner), so for
    /// COPY they are left out and checkouts by different users (a laptop
    /// and CI) share cache results.
    pub owners: bool,
}

/// The checksum of a selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextSum {
    /// Covers every entry and the format version.
    pub digest: Digest,
    /// One digest per selected path, sorted by context-relative path (`.`
    /// is the context root; markers such as `<missing> /x` sort among
    /// them), for explaining cache misses.
    pub entries: Vec<(String, Digest)>,
}

/// Counters of one hasher, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files whose content was read (the stat cache did not know them).
    pub files_read: u64,
    pub bytes_read: u64,
    /// Files whose digest came from the stat cache.
    pub cache_hits: u64,
    /// Files read but not recorded in the stat cache because they changed
    /// too recently to trust their timestamps.
    pub racy: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextHashError {
    #[error("build context {}", .path.display())]
    Context {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("build context {} is not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    #[error("{what} /{} in the build context", .path.display())]
    Io {
        what: &'static str,
        /// Relative to the context.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("save the context stat cache {}", .path.display())]
    Save {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checksums selections of one build context. One per build and context
/// directory; `checksum` may be called from several threads at once.
pub struct ContextHasher {
    dir: PathBuf,
    ignore: Option<PatternMatcher>,
    cache_path: PathBuf,
    tmp_dir: PathBuf,
    cache: RwLock<statcache::Map>,
    dirty: AtomicBool,
    /// Sums already computed, by (paths, exclude): a build sees one state
    /// of its context, and two steps with the same sources cost one walk.
    sums: Mutex<HashMap<SelectionKey, ContextSum>>,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    cache_hits: AtomicU64,
    racy: AtomicU64,
}

impl std::fmt::Debug for ContextHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextHasher")
            .field("dir", &self.dir)
            .field("cache_path", &self.cache_path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A selection's paths and excludes, owned.
type SelectionKey = (Vec<String>, Vec<String>, bool);

/// What hashing one node found.
enum Content {
    None,
    File { digest: [u8; 32], size: u64 },
    Link(Vec<u8>),
}

/// A change to the stat cache found while hashing.
enum Update {
    None,
    Insert(Box<[u8]>, CacheEntry),
    Remove(Box<[u8]>),
}

fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

fn put_bytes(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);
}

/// Reads `file` from `offset` until `end` or its end, into `h`; the
/// number of bytes read. No rayon call may happen while the buffer is
/// borrowed: a stolen job on this thread would borrow it again.
fn hash_range(file: &File, h: &mut Sha256, offset: u64, end: Option<u64>) -> io::Result<u64> {
    BUF.with_borrow_mut(|buf| {
        let mut at = offset;
        loop {
            let want = match end {
                Some(end) if at >= end => return Ok(at - offset),
                Some(end) => buf.len().min((end - at) as usize),
                None => buf.len(),
            };
            match file.read_at(&mut buf[..want], at) {
                Ok(0) => return Ok(at - offset),
                Ok(n) => {
                    h.update(&buf[..n]);
                    at += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })
}

/// The content digest of a regular file and how many bytes were read (not
/// its stat size if it changed meanwhile). Large files are hashed in
/// chunks on the whole rayon pool, and their digest is the hash of the
/// chunks' digests: one sha256 stream runs on one core only.
fn hash_file(host: &Path) -> io::Result<([u8; 32], u64)> {
    // O_NONBLOCK: a file replaced by a FIFO since it was stat'ed must not
    // block the build (it changes nothing for a regular file).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(host)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("no longer a regular file"));
    }
    let len = meta.len();
    if len < CHUNKED_FROM {
        let mut h = Sha256::new();
        let total = hash_range(&file, &mut h, 0, None)?;
        return Ok((h.finalize().into(), total));
    }
    let chunks: Vec<([u8; 32], u64)> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map(|i| {
            let mut h = Sha256::new();
            let start = i * CHUNK;
            let n = hash_range(&file, &mut h, start, Some((start + CHUNK).min(len)))?;
            Ok((h.finalize().into(), n))
        })
        .collect::<io::Result<_>>()?;
    let mut h = Sha256::new();
    h.update(b"chunked\0");
    h.update(CHUNK.to_le_bytes());
    let mut total = 0;
    for (digest, n) in &chunks {
        h.update(digest);
        total += n;
    }
    // Grown since the fstat: say so with a count beyond the stat size.
    let mut probe = [0u8; 1];
    total += file.read_at(&mut probe, len)? as u64;
    Ok((h.finalize().into(), total))
}

fn marker_digest(text: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(FORMAT);
    h.update(b"marker\0");
    put_bytes(&mut h, text.as_bytes());
    h.finalize().into()
}

fn entry_digest(
    node: &Node,
    content: &Content,
    hard_link: Option<&[u8]>,
    owners: bool,
) -> [u8; 32] {
    let meta = &node.meta;
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_file() {
        b'f'
    } else if ft.is_dir() {
        b'd'
    } else if ft.is_symlink() {
        b'l'
    } else if ft.is_char_device() {
        b'c'
    } else if ft.is_block_device() {
        b'b'
    } else if ft.is_fifo() {
        b'p'
    } else {
        b's'
    };
    let mut h = Sha256::new();
    put_bytes(&mut h, &node.name);
    h.update([kind]);
    h.update((meta.mode() & 0o7777).to_le_bytes());
    if owners {
        h.update(meta.uid().to_le_bytes());
        h.update(meta.gid().to_le_bytes());
    }
    match content {
        Content::None => {}
        Content::File { digest, size } => {
            h.update(size.to_le_bytes());
            h.update(digest);
        }
        Content::Link(target) => put_bytes(&mut h, target),
    }
    if kind == b'c' || kind == b'b' {
        h.update(meta.rdev().to_le_bytes());
    }
    if let Some(first) = hard_link {
        h.update([1]);
        put_bytes(&mut h, first);
    }
    h.finalize().into()
}

impl ContextHasher {
    /// Opens the context `dir` and loads its stat cache from `store` (a
    /// missing or corrupt cache is an empty one). `ignore` is the context's
    /// `.dockerignore`.
    pub fn new(
        store: &Store,
        dir: &Path,
        ignore: Option<&PatternMatcher>,
    ) -> Result<Self, ContextHashError> {
        let canonical = fs::canonicalize(dir).map_err(|source| ContextHashError::Context {
            path: dir.to_path_buf(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(ContextHashError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        let key = hex::encode(Sha256::digest(canonical.as_os_str().as_bytes()));
        let cache_path = store.root().join("context-cache").join(key);
        let map = fs::read(&cache_path)
            .ok()
            .and_then(|bytes| statcache::decode(&bytes))
            .unwrap_or_default();
        Ok(Self {
            dir: canonical,
            ignore: ignore.cloned(),
            cache_path,
            tmp_dir: store.root().join("tmp"),
            cache: RwLock::new(map),
            dirty: AtomicBool::new(false),
            sums: Mutex::new(HashMap::new()),
            files_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            racy: AtomicU64::new(0),
        })
    }

    /// The canonical context directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            files_read: self.files_read.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            racy: self.racy.load(Ordering::Relaxed),
        }
    }

    fn read_cache(&self) -> RwLockReadGuard<'_, statcache::Map> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_cache(&self) -> RwLockWriteGuard<'_, statcache::Map> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The checksum of exactly what COPY/ADD with these sources reads. The
    /// same selection twice gives the first answer again.
    pub fn checksum(&self, sel: &Selection<'_>) -> Result<ContextSum, ContextHashError> {
        let memo_key = (
            sel.paths
                .iter()
                .map(|p| (*p).to_owned())
                .collect::<Vec<_>>(),
            sel.exclude.to_vec(),
            sel.owners,
        );
        if let Some(sum) = self.lock_sums().get(&memo_key) {
            return Ok(sum.clone());
        }
        let sum = self.compute(sel)?;
        self.lock_sums()
            .entry(memo_key)
            .or_insert_with(|| sum.clone());
        Ok(sum)
    }

    fn lock_sums(&self) -> MutexGuard<'_, HashMap<SelectionKey, ContextSum>> {
        self.sums.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compute(&self, sel: &Selection<'_>) -> Result<ContextSum, ContextHashError> {
        // Taken before anything is stat'ed or read: see Stat::trusted_at.
        let start = now_ns();
        let mut found = select::Found::default();
        let exclude = if sel.exclude.is_empty() {
            None
        } else {
            match PatternMatcher::new(sel.exclude.iter()) {
                Ok(m) => Some(m),
                Err(e) => {
                    // COPY fails on it before reading anything.
                    found.markers.push(format!("<bad exclude> {e}"));
                    return Ok(self.finish(Vec::new(), Vec::new(), found.markers, sel.owners));
                }
            }
        };
        let selector = select::Selector {
            tree: Tree::new(&self.dir, self.ignore.as_ref(), Escape::Reject),
            walker: Walker {
                host: &self.dir,
                ignore: self.ignore.as_ref(),
                exclude: exclude.as_ref(),
            },
        };
        for path in &sel.paths {
            selector.expand(path, &mut found)?;
        }
        let mut nodes = found.nodes;
        // Overlapping sources name the same entries more than once.
        nodes.par_sort_unstable_by(|a, b| a.name.cmp(&b.name).then_with(|| a.real.cmp(&b.real)));
        nodes.dedup_by(|a, b| a.name == b.name && a.real == b.real);

        let hashed: Vec<(Content, Update)> = nodes
            .par_iter()
            .map(|node| self.content(node, start))
            .collect::<Result<_, _>>()?;
        let mut contents = Vec::with_capacity(hashed.len());
        let mut updates = Vec::new();
        for (content, update) in hashed {
            contents.push(content);
            if !matches!(update, Update::None) {
                updates.push(update);
            }
        }
        if !updates.is_empty() {
            let mut cache = self.write_cache();
            for update in updates {
                match update {
                    Update::Insert(path, entry) => {
                        cache.insert(path, entry);
                    }
                    Update::Remove(path) => {
                        cache.remove(&path);
                    }
                    Update::None => {}
                }
            }
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok(self.finish(nodes, contents, found.markers, sel.owners))
    }

    /// Digests of the entries and the sum.
    fn finish(
        &self,
        nodes: Vec<Node>,
        contents: Vec<Content>,
        markers: Vec<String>,
        owners: bool,
    ) -> ContextSum {
        // COPY keeps hard links between the files it copies: a file with
        // other selected names for its inode is hashed with the first of
        // them (nodes are sorted by name).
        let mut first_names: HashMap<(u64, u64), (Vec<u8>, usize)> = HashMap::new();
        for node in &nodes {
            if node.meta.is_file() && node.meta.nlink() > 1 {
                let key = (node.meta.dev(), node.meta.ino());
                first_names
                    .entry(key)
                    .or_insert_with(|| (node.name.clone(), 0))
                    .1 += 1;
            }
        }
        let mut entries: Vec<(Vec<u8>, [u8; 32])> = nodes
            .into_par_iter()
            .zip(contents.into_par_iter())
            .map(|(node, content)| {
                let hard_link = if node.meta.is_file() && node.meta.nlink() > 1 {
                    first_names
                        .get(&(node.meta.dev(), node.meta.ino()))
                        .filter(|(_, count)| *count > 1)
                        .map(|(name, _)| name.as_slice())
                } else {
                    None
                };
                let digest = entry_digest(&node, &content, hard_link, owners);
                (node.name, digest)
            })
            .collect();
        for marker in markers {
            let digest = marker_digest(&marker);
            entries.push((marker.into_bytes(), digest));
        }
        // Linear when there are no markers: the nodes came sorted.
        entries.sort_unstable();
        entries.dedup();
        let mut h = Sha256::new();
        h.update(FORMAT);
        h.update((entries.len() as u64).to_le_bytes());
        for (name, digest) in &entries {
            put_bytes(&mut h, name);
            h.update(digest);
        }
        ContextSum {
            digest: Digest::from_bytes(h.finalize().into()),
            entries: entries
                .into_iter()
                .map(|(name, digest)| {
                    let name = String::from_utf8(name)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    (name, Digest::from_bytes(digest))
                })
                .collect(),
        }
    }

    /// Reads what a node's digest needs: a file's content digest (from the
    /// stat cache when its stat is unchanged) or a link's target.
    fn content(&self, node: &Node, start: i64) -> Result<(Content, Update), ContextHashError> {
        let ft = node.meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(self.dir.join(&node.real)).map_err(|source| {
                ContextHashError::Io {
                    what: "read link",
                    path: node.real.clone(),
                    source,
                }
            })?;
            return Ok((
                Content::Link(target.into_os_string().into_vec()),
                Update::None,
            ));
        }
        if !ft.is_file() {
            return Ok((Content::None, Update::None));
        }
        let key = node.real.as_os_str().as_bytes();
        let stat = Stat::of(&node.meta);
        let stale = match self.read_cache().get(key) {
            Some(entry) if entry.stat == stat => {
                entry.used.store(true, Ordering::Relaxed);
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((
                    Content::File {
                        digest: entry.digest,
                        size: stat.size,
                    },
                    Update::None,
                ));
            }
            Some(_) => true,
            None => false,
        };
        let (digest, size) =
            hash_file(&self.dir.join(&node.real)).map_err(|source| ContextHashError::Io {
                what: if is_missing(&source) {
                    "file vanished while hashing"
                } else {
                    "read"
                },
                path: node.real.clone(),
                source,
            })?;
        self.files_read.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(size, Ordering::Relaxed);
        // A file that changed while it was read, or too recently for its
        // timestamps to tell a later change apart, is not recorded.
        let update = if size == stat.size && stat.trusted_at(start) {
            Update::Insert(
                key.into(),
                CacheEntry {
                    stat,
                    digest,
                    used: AtomicBool::new(true),
                },
            )
        } else {
            self.racy.fetch_add(1, Ordering::Relaxed);
            if stale {
                Update::Remove(key.into())
            } else {
                Update::None
            }
        };
        Ok((
            Content::File {
                digest,
                size: stat.size,
            },
            update,
        ))
    }

    /// Persists the stat cache if it changed: written whole to a temporary
    /// file in `ROOT/tmp` and renamed into place, so that a reader sees the
    /// old or the new file. Entries this hasher did not use are kept while
    /// their path still exists.
    pub fn save(&self) -> Result<(), ContextHashError> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let result = self.write_file();
        if result.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }

    fn write_file(&self) -> Result<(), ContextHashError> {
        let cache = self.read_cache();
        let mut keep: Vec<(&[u8], &CacheEntry)> = cache
            .par_iter()
            .filter(|(path, entry)| {
                entry.used.load(Ordering::Relaxed)
                    || self
                        .dir
                        .join(std::ffi::OsStr::from_bytes(path))
                        .symlink_metadata()
                        .is_ok()
            })
            .map(|(path, entry)| (&path[..], entry))
            .collect();
        keep.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let bytes = statcache::encode(&keep);
        drop(keep);
        drop(cache);
        let save_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContextHashError::Save { path, source }
        };
        let parent = self.cache_path.parent().expect("ROOT/context-cache/<hex>");
        fs::create_dir_all(parent).map_err(save_err(parent))?;
        fs::create_dir_all(&self.tmp_dir).map_err(save_err(&self.tmp_dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix("context-cache-")
            .tempfile_in(&self.tmp_dir)
            .map_err(save_err(&self.tmp_dir))?;
        tmp.write_all(&bytes).map_err(save_err(tmp.path()))?;
        tmp.persist(&self.cache_path)
            .map_err(|e| save_err(&self.cache_path)(e.error))?;
        Ok(())
    }
}
