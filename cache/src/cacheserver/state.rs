//! What the cache server knows besides blob bytes: each repository's tags and
//! manifests (kept crash-safely in `STORE/repositories/`), the size and last
//! access of every blob, and the LRU eviction that keeps the store under
//! `--max-size`.
//!
//! Invariants, held under one lock: a manifest is recorded only once every
//! blob and child manifest it names is in the store; a blob that a recorded
//! manifest names is never removed; a manifest is unrecorded (and its record
//! written) before the blobs only it named are removed. So a manifest is
//! served only while all its blobs are stored, and a client streaming a blob
//! that is evicted meanwhile keeps reading it through its open file.
//!
//! Read lease: serving a manifest (GET or HEAD, by tag or digest) leases it
//! for [`READ_LEASE`], and with it every entry that names it (an index of a
//! child manifest fetched by digest). Eviction takes the entries that are
//! not leased and the unreferenced blobs older than the upload grace, least
//! recently used first, and a leased entry (again least recently used first)
//! only while the store is still over `--max-size` once all of those are
//! gone. So a client that fetches a manifest finds all the blobs and child
//! manifests it names for `READ_LEASE` afterwards, unless the store could not
//! otherwise be kept under `--max-size` (everything else left being leased or
//! the young blobs of pushes in progress). Leases are kept in memory only (a
//! restart drops them), and a manifest deleted through the API goes at once.
//! The price, in a store too small for its traffic: when every other entry
//! has been read within the lease, a newly pushed entry (not read yet) is the
//! first to go, even by the eviction that follows its own PUT. Leasing pushes
//! too would instead evict a manifest from under a reader whenever a few
//! pushes land during its read, which is what the lease is for.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// Version of the repository records.
const RECORD_VERSION: u32 = 1;

/// A blob's access time is written to its mtime (which survives restarts)
/// at most this often.
const TOUCH_PERSIST_EVERY: Duration = Duration::from_secs(60);

/// How long serving a manifest protects it and its blobs from eviction
/// (while other entries can go instead): time for a client to fetch the
/// blobs it names, even a slow or starved one.
pub(crate) const READ_LEASE: Duration = Duration::from_secs(30);

/// The lease table is pruned of expired leases when it reaches this size
/// (and then when it doubles).
const LEASES_PRUNE_MIN: usize = 1024;

/// One repository: its tags and the manifests pushed to it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Repo {
    version: u32,
    pub(crate) tags: BTreeMap<String, Digest>,
    pub(crate) manifests: BTreeMap<Digest, ManifestRecord>,
}

/// A manifest of a repository: how to serve it and what it names.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ManifestRecord {
    pub(crate) media_type: String,
    /// Blobs (config, layers) and child manifests (of an index) it names.
    pub(crate) refs: Vec<Digest>,
}

#[derive(Debug, Clone, Copy)]
struct BlobInfo {
    size: u64,
    access: SystemTime,
    /// When `access` was last written to the file's mtime.
    persisted: SystemTime,
    /// When it was last uploaded or mounted (even if already present).
    pushed: SystemTime,
}

#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub(crate) repos: BTreeMap<String, Repo>,
    blobs: HashMap<Digest, BlobInfo>,
    total: u64,
    /// When each manifest (by digest, in whichever repository) was last
    /// served; see [`READ_LEASE`]. Expired entries linger until pruned.
    leases: HashMap<Digest, Instant>,
    /// `leases` is pruned when it reaches this many entries.
    leases_prune_at: usize,
}

/// The server's metadata and the store it describes.
#[derive(Debug)]
pub(crate) struct State {
    store: Store,
    repos_dir: PathBuf,
    meta: Mutex<Meta>,
    max_size: Option<u64>,
    /// Unreferenced blobs younger than this are kept: they are probably
    /// the layers of a push whose manifest has not arrived yet.
    upload_grace: Duration,
    /// A manifest served this recently is evicted only when nothing else
    /// can be: [`READ_LEASE`] (shorter in tests).
    read_lease: Duration,
}

/// An error of the server's metadata.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid repository record {path}")]
    BadRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "repository record {path} has version {found}, this builder reads version {RECORD_VERSION}"
    )]
    RecordVersion { path: PathBuf, found: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The outcome of an eviction pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub(crate) manifests: usize,
    pub(crate) blobs: usize,
    pub(crate) bytes: u64,
}

impl State {
    /// Loads the records and scans the blobs of `store`. Manifests whose
    /// blobs are missing (a store edited by hand) are dropped.
    pub(crate) fn load(
        store: Store,
        max_size: Option<u64>,
        upload_grace: Duration,
    ) -> Result<State, StateError> {
        let repos_dir = store.root().join("repositories");
        fs::create_dir_all(&repos_dir).map_err(io_err(&repos_dir))?;
        let mut meta = Meta::default();
        let blobs_dir = store.root().join("blobs").join("sha256");
        for entry in fs::read_dir(&blobs_dir).map_err(io_err(&blobs_dir))? {
            let entry = entry.map_err(io_err(&blobs_dir))?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                continue;
            };
            let Ok(m) = entry.metadata() else { continue };
            if !m.is_file() {
                continue;
            }
            let access = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            meta.total += m.len();
            meta.blobs.insert(
                digest,
                BlobInfo {
                    size: m.len(),
                    access,
                    persisted: access,
                    // A push in progress does not survive a restart.
                    pushed: SystemTime::UNIX_EPOCH,
                },
            );
        }
        for entry in fs::read_dir(&repos_dir).map_err(io_err(&repos_dir))? {
            let entry = entry.map_err(io_err(&repos_dir))?;
            let path = entry.path();
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = file.strip_suffix(".json") else {
                continue;
            };
            let name = stem.replace('+', "/");
            let data = fs::read(&path).map_err(io_err(&path))?;
            let mut repo: Repo =
                serde_json::from_slice(&data).map_err(|source| StateError::BadRecord {
                    path: path.clone(),
                    source,
                })?;
            if repo.version != RECORD_VERSION {
                return Err(StateError::RecordVersion {
                    path,
                    found: repo.version,
                });
            }
            repo.manifests.retain(|d, m| {
                meta.blobs.contains_key(d) && m.refs.iter().all(|r| meta.blobs.contains_key(r))
            });
            let manifests = &repo.manifests;
            repo.tags.retain(|_, d| manifests.contains_key(d));
            meta.repos.insert(name, repo);
        }
        Ok(State {
            store,
            repos_dir,
            meta: Mutex::new(meta),
            max_size,
            upload_grace,
            read_lease: READ_LEASE,
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Meta> {
        // A panic while holding the lock leaves consistent data: every
        // change is applied in memory only after its file was written.
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of blobs in the store.
    pub(crate) fn total(&self) -> u64 {
        self.lock().total
    }

    /// Size of a blob, recording an access; `None` if it is not stored.
    pub(crate) fn touch_blob(&self, d: &Digest) -> Option<u64> {
        let mut meta = self.lock();
        let now = SystemTime::now();
        let info = meta.blobs.get_mut(d)?;
        info.access = now;
        if now
            .duration_since(info.persisted)
            .is_ok_and(|age| age >= TOUCH_PERSIST_EVERY)
        {
            info.persisted = now;
            // Best effort: a lost access time only makes eviction a little
            // less accurate after a restart.
            if let Ok(f) = File::open(self.store.blob_path(d)) {
                let _ = f.set_modified(now);
            }
        }
        Some(info.size)
    }

    /// Writes access times not yet saved to the blobs' mtimes, so that
    /// the LRU order survives a restart; done at shutdown.
    pub(crate) fn persist_access(&self) {
        let mut meta = self.lock();
        for (d, info) in meta.blobs.iter_mut() {
            if info.access > info.persisted {
                if let Ok(f) = File::open(self.store.blob_path(d)) {
                    let _ = f.set_modified(info.access);
                }
                info.persisted = info.access;
            }
        }
    }

    /// Records that a pusher mounted a stored blob; false if it is not
    /// stored.
    pub(crate) fn mount_blob(&self, d: &Digest) -> bool {
        let mut meta = self.lock();
        let now = SystemTime::now();
        match meta.blobs.get_mut(d) {
            Some(info) => {
                info.access = now;
                info.pushed = now;
                true
            }
            None => false,
        }
    }

    /// Records a blob that was just committed to the store.
    pub(crate) fn add_blob(&self, d: Digest, size: u64) {
        let mut meta = self.lock();
        let now = SystemTime::now();
        let info = BlobInfo {
            size,
            access: now,
            persisted: now,
            pushed: now,
        };
        if let Some(old) = meta.blobs.insert(d, info) {
            meta.total -= old.size;
        }
        meta.total += size;
    }

    /// Stores a manifest's bytes and records it in `repo` (and under `tag`).
    /// Returns the digests it names that are not stored, and then records
    /// nothing.
    pub(crate) fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        bytes: &[u8],
        record: ManifestRecord,
    ) -> Result<Result<Digest, Vec<Digest>>, StateError> {
        let digest = Digest::of(bytes);
        let mut meta = self.lock();
        let missing: Vec<Digest> = record
            .refs
            .iter()
            .filter(|r| !meta.blobs.contains_key(r))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Ok(Err(missing));
        }
        // Under the lock, so that eviction cannot remove it between its
        // write and its record.
        if !meta.blobs.contains_key(&digest) || !self.store.has_blob(&digest) {
            self.store.put_blob(bytes)?;
        }
        let now = SystemTime::now();
        let size = bytes.len() as u64;
        if let Some(old) = meta.blobs.insert(
            digest,
            BlobInfo {
                size,
                access: now,
                persisted: now,
                pushed: now,
            },
        ) {
            meta.total -= old.size;
        }
        meta.total += size;
        let mut updated = meta.repos.get(repo).cloned().unwrap_or_default();
        updated.version = RECORD_VERSION;
        updated.manifests.insert(digest, record);
        if let Some(tag) = tag {
            updated.tags.insert(tag.to_string(), digest);
        }
        self.write_repo(repo, &updated)?;
        meta.repos.insert(repo.to_string(), updated);
        Ok(Ok(digest))
    }

    /// The manifest `reference` (a tag or a digest) of `repo`, recording an
    /// access: its digest, media type and bytes.
    pub(crate) fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(Digest, String, Vec<u8>)>, StateError> {
        let (digest, media_type) = {
            let mut meta = self.lock();
            let Some(r) = meta.repos.get(repo) else {
                return Ok(None);
            };
            let digest = match reference.parse::<Digest>() {
                Ok(d) => d,
                Err(_) => match r.tags.get(reference) {
                    Some(d) => *d,
                    None => return Ok(None),
                },
            };
            let Some(m) = r.manifests.get(&digest) else {
                return Ok(None);
            };
            let media_type = m.media_type.clone();
            // Under the same lock as the lookup: no eviction pass can see
            // the manifest as served yet unleased.
            let now = Instant::now();
            if meta.leases.len() >= meta.leases_prune_at {
                let lease = self.read_lease;
                meta.leases
                    .retain(|_, at| now.saturating_duration_since(*at) < lease);
                meta.leases_prune_at = LEASES_PRUNE_MIN.max(2 * meta.leases.len());
            }
            meta.leases.insert(digest, now);
            (digest, media_type)
        };
        self.touch_blob(&digest);
        // Read outside the lock. Eviction may remove the manifest in
        // between; then it is unknown, as it would have been a moment later.
        match self.store.read_blob(&digest) {
            Ok(bytes) => Ok(Some((digest, media_type, bytes))),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes manifest `digest` and the tags pointing to it from `repo`;
    /// false if it was not there. Its blobs go at the next eviction.
    pub(crate) fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool, StateError> {
        let mut meta = self.lock();
        let Some(r) = meta.repos.get(repo) else {
            return Ok(false);
        };
        if !r.manifests.contains_key(digest) {
            return Ok(false);
        }
        let mut updated = r.clone();
        updated.manifests.remove(digest);
        updated.tags.retain(|_, d| d != digest);
        self.write_repo(repo, &updated)?;
        meta.repos.insert(repo.to_string(), updated);
        Ok(true)
    }

    /// Tags of `repo`, sorted; `None` if the repository is unknown.
    pub(crate) fn tags(&self, repo: &str) -> Option<Vec<String>> {
        let meta = self.lock();
        meta.repos
            .get(repo)
            .map(|r| r.tags.keys().cloned().collect())
    }

    /// Evicts least recently used entries until the store is under
    /// `--max-size`: unreferenced blobs older than the upload grace, and
    /// whole manifests that no other manifest names (with their tags and the
    /// blobs nothing else names). Entries under a read lease go only once
    /// nothing else is left to evict, least recently used first too. Stops
    /// early when only young unreferenced blobs are left.
    pub(crate) fn evict(&self) -> Result<Evicted, StateError> {
        let mut out = Evicted::default();
        let Some(max) = self.max_size else {
            return Ok(out);
        };
        let mut guard = self.lock();
        let meta = &mut *guard;
        if meta.total <= max {
            return Ok(out);
        }
        let now = SystemTime::now();
        // How many manifest records are, and how many name, each digest.
        let mut records: HashMap<Digest, usize> = HashMap::new();
        let mut named: HashMap<Digest, usize> = HashMap::new();
        for r in meta.repos.values() {
            for (d, m) in &r.manifests {
                *records.entry(*d).or_default() += 1;
                for x in &m.refs {
                    *named.entry(*x).or_default() += 1;
                }
            }
        }
        let leased = self.leased(meta);
        // Entries: `roots` are not leased, `leased_roots` are.
        let mut roots: BTreeSet<(SystemTime, String, Digest)> = BTreeSet::new();
        let mut leased_roots: BTreeSet<(SystemTime, String, Digest)> = BTreeSet::new();
        for (name, r) in &meta.repos {
            for d in r.manifests.keys().filter(|d| !named.contains_key(d)) {
                let set = if leased.contains(d) {
                    &mut leased_roots
                } else {
                    &mut roots
                };
                set.insert((access_of(&meta.blobs, d), name.clone(), *d));
            }
        }
        let mut loose: BTreeSet<(SystemTime, Digest)> = meta
            .blobs
            .iter()
            .filter(|(d, info)| {
                !records.contains_key(d)
                    && !named.contains_key(d)
                    && now
                        .duration_since(info.access)
                        .is_ok_and(|age| age >= self.upload_grace)
            })
            .map(|(d, info)| (info.access, *d))
            .collect();

        // Choose in memory, write the records, then remove the blobs: a
        // failure or crash in between leaves blobs that nothing names, never
        // a record naming a removed blob.
        let mut projected = meta.total;
        let mut doomed: Vec<Digest> = Vec::new();
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        while projected > max {
            let take_loose = match (loose.first(), roots.first()) {
                (Some((blob_access, _)), Some((root_access, _, _))) => blob_access <= root_access,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_loose {
                let Some((_, d)) = loose.pop_first() else {
                    break;
                };
                projected -= meta.blobs.get(&d).map_or(0, |i| i.size);
                doomed.push(d);
                continue;
            }
            // Leased entries only once nothing else is left.
            let Some((root_access, repo, d)) =
                roots.pop_first().or_else(|| leased_roots.pop_first())
            else {
                break;
            };
            let Some(r) = meta.repos.get_mut(&repo) else {
                continue;
            };
            let Some(record) = r.manifests.remove(&d) else {
                continue;
            };
            r.tags.retain(|_, t| *t != d);
            dirty.insert(repo);
            out.manifests += 1;
            decrement(&mut records, &d);
            let mut candidates = vec![d];
            for x in &record.refs {
                if decrement(&mut named, x) > 0 {
                    continue;
                }
                if records.contains_key(x) {
                    // A child manifest nothing names any more is an entry
                    // of its own now.
                    let set = if leased.contains(x) {
                        &mut leased_roots
                    } else {
                        &mut roots
                    };
                    for (name, r) in &meta.repos {
                        if r.manifests.contains_key(x) {
                            set.insert((access_of(&meta.blobs, x), name.clone(), *x));
                        }
                    }
                }
                candidates.push(*x);
            }
            for c in candidates {
                if records.contains_key(&c) || named.contains_key(&c) {
                    continue;
                }
                let Some(info) = meta.blobs.get(&c) else {
                    continue;
                };
                // Pushed again since the entry was last used: it belongs
                // to a push in progress and stays, as a loose blob.
                if info.pushed > root_access {
                    continue;
                }
                projected -= info.size;
                doomed.push(c);
            }
        }
        for name in dirty {
            let empty = meta.repos.get(&name).is_none_or(|r| r.manifests.is_empty());
            let repo = meta.repos.get(&name).cloned().unwrap_or_default();
            self.write_repo(&name, &repo)?;
            if empty {
                meta.repos.remove(&name);
            }
        }
        for d in doomed {
            out.bytes += self.remove_blob(meta, &d)?;
            out.blobs += 1;
        }
        Ok(out)
    }

    /// The manifests under a read lease: those served within the lease,
    /// and those naming one of them (an index whose child was fetched by
    /// digest), in whichever repository. Drops expired leases.
    fn leased(&self, meta: &mut Meta) -> HashSet<Digest> {
        let now = Instant::now();
        let lease = self.read_lease;
        meta.leases
            .retain(|_, at| now.saturating_duration_since(*at) < lease);
        meta.leases_prune_at = LEASES_PRUNE_MIN.max(2 * meta.leases.len());
        let mut leased: HashSet<Digest> = meta.leases.keys().copied().collect();
        if leased.is_empty() {
            return leased;
        }
        // Up the chain of indexes: a pass per level, a few at most (the
        // references of recorded manifests form no cycle, as a manifest is
        // recorded only after what it names, by digest).
        loop {
            let before = leased.len();
            for r in meta.repos.values() {
                for (d, m) in &r.manifests {
                    if !leased.contains(d) && m.refs.iter().any(|x| leased.contains(x)) {
                        leased.insert(*d);
                    }
                }
            }
            if leased.len() == before {
                return leased;
            }
        }
    }

    fn remove_blob(&self, meta: &mut Meta, d: &Digest) -> Result<u64, StateError> {
        let path = self.store.blob_path(d);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Io { path, source }),
        }
        let size = meta.blobs.remove(d).map_or(0, |i| i.size);
        meta.total -= size;
        meta.leases.remove(d);
        Ok(size)
    }

    /// Writes a repository record by temp file, fsync and rename; an empty
    /// repository's record is removed.
    fn write_repo(&self, name: &str, repo: &Repo) -> Result<(), StateError> {
        let path = self
            .repos_dir
            .join(format!("{}.json", name.replace('/', "+")));
        if repo.manifests.is_empty() {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StateError::Io { path, source }),
            }
            return sync_dir(&self.repos_dir);
        }
        let data = serde_json::to_vec(repo).expect("a repository record serializes");
        let mut tmp = tempfile::Builder::new()
            .prefix("repo-")
            .tempfile_in(&self.repos_dir)
            .map_err(io_err(&self.repos_dir))?;
        tmp.write_all(&data).map_err(io_err(&path))?;
        tmp.as_file().sync_all().map_err(io_err(&path))?;
        tmp.persist(&path).map_err(|e| StateError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        sync_dir(&self.repos_dir)
    }
}

fn access_of(blobs: &HashMap<Digest, BlobInfo>, d: &Digest) -> SystemTime {
    blobs.get(d).map_or(SystemTime::UNIX_EPOCH, |i| i.access)
}

/// Counts one use of `d` less; returns what is left (absent means 0).
fn decrement(counts: &mut HashMap<Digest, usize>, d: &Digest) -> usize {
    match counts.get_mut(d) {
        Some(n) if *n > 1 => {
            *n -= 1;
            *n
        }
        _ => {
            counts.remove(d);
            0
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(refs: &[Digest]) -> (Vec<u8>, ManifestRecord) {
        let bytes = serde_json::to_vec(&serde_json::json!({ "refs": refs })).unwrap();
        (
            bytes,
            ManifestRecord {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                refs: refs.to_vec(),
            },
        )
    }

    fn blob(state: &State, data: &[u8]) -> Digest {
        let d = state.store().put_blob(data).unwrap();
        state.add_blob(d, data.len() as u64);
        d
    }

    #[test]
    fn evicts_least_recently_used_manifest_with_its_own_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = State::load(store.clone(), Some(10_000), Duration::ZERO).unwrap();
        let shared = blob(&state, &[1u8; 3000]);
        let a = blob(&state, &[2u8; 3000]);
        let (ma, ra) = manifest(&[shared, a]);
        let da = state
            .put_manifest("r/a", Some("a"), &ma, ra)
            .unwrap()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let b = blob(&state, &[3u8; 3000]);
        let (mb, rb) = manifest(&[shared, b]);
        let db = state
            .put_manifest("r/b", Some("b"), &mb, rb)
            .unwrap()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Reading a makes b the least recently used.
        assert!(state.get_manifest("r/a", "a").unwrap().is_some());
        let c = blob(&state, &[4u8; 3000]);
        assert!(state.total() > 10_000);
        let evicted = state.evict().unwrap();
        assert!(state.total() <= 10_000, "{evicted:?}");
        // b is the least recently used entry (c, a loose blob, came after
        // a's read): it goes with the blob only it named, not the shared one.
        assert_eq!((evicted.manifests, evicted.blobs), (1, 2), "{evicted:?}");
        assert!(state.get_manifest("r/b", "b").unwrap().is_none());
        assert!(!store.has_blob(&b) && !store.has_blob(&db));
        assert!(store.has_blob(&shared) && store.has_blob(&a) && store.has_blob(&da));
        assert!(store.has_blob(&c));
        // The records survive a reload.
        let again = State::load(store.clone(), None, Duration::ZERO).unwrap();
        assert!(again.get_manifest("r/a", "a").unwrap().is_some());
        assert!(again.tags("r/b").is_none());
    }

    /// Pushes an entry of `repo:tag`: a 3000-byte layer of its own (from
    /// `seed`) and its manifest, about 3090 bytes in all. Returns the
    /// manifest's and the layer's digests.
    fn entry(state: &State, repo: &str, tag: &str, seed: u8) -> (Digest, Digest) {
        let layer = blob(state, &[seed; 3000]);
        let (m, r) = manifest(&[layer]);
        let d = state.put_manifest(repo, Some(tag), &m, r).unwrap().unwrap();
        // Distinct access times, whatever the clock's resolution.
        std::thread::sleep(Duration::from_millis(20));
        (d, layer)
    }

    #[test]
    fn a_served_manifest_keeps_its_blobs_while_unleased_entries_can_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Three entries fit; the upload grace keeps loose blobs, as the
        // server does by default.
        let state = State::load(store.clone(), Some(10_000), Duration::from_secs(600)).unwrap();
        assert_eq!(state.read_lease, READ_LEASE);
        let has = |(m, l): (Digest, Digest)| store.has_blob(&m) && store.has_blob(&l);
        // A reader gets manifest a, then stalls before fetching its layer
        // while b, c, d and e are pushed: a is the least recently used
        // entry by far, and plain LRU would evict it from under the reader.
        let a = entry(&state, "r", "a", 1);
        assert!(state.get_manifest("r", "a").unwrap().is_some());
        std::thread::sleep(Duration::from_millis(20));
        let b = entry(&state, "r", "b", 2);
        let c = entry(&state, "r", "c", 3);
        let d = entry(&state, "r", "d", 4);
        let evicted = state.evict().unwrap();
        assert_eq!((evicted.manifests, evicted.blobs), (1, 2), "{evicted:?}");
        assert!(!has(b), "b, the oldest entry not being read, goes");
        assert!(has(a) && has(c) && has(d));
        let e = entry(&state, "r", "e", 5);
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 1, "{evicted:?}");
        assert!(!has(c) && has(a) && has(d) && has(e));
        assert!(state.total() <= 10_000);
        // The reader wakes up: its manifest's layer is still there.
        assert_eq!(state.touch_blob(&a.1), Some(3000));
        assert_eq!(state.tags("r").unwrap(), ["a", "d", "e"]);

        // Everything leased (read d, e, then a): the cap still holds, and
        // the least recently served entry goes first.
        for tag in ["d", "e", "a"] {
            assert!(state.get_manifest("r", tag).unwrap().is_some());
            std::thread::sleep(Duration::from_millis(20));
        }
        // A new push's layer, young and so kept, takes the store over.
        let loose = blob(&state, &[6u8; 3000]);
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 1, "{evicted:?}");
        assert!(!has(d) && has(e) && has(a) && store.has_blob(&loose));
        assert!(state.total() <= 10_000, "{evicted:?}");
        // And all of them if need be.
        let big = blob(&state, &[7u8; 6000]);
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 2, "{evicted:?}");
        assert!(!has(e) && !has(a));
        assert!(store.has_blob(&loose) && store.has_blob(&big));
        assert!(state.total() <= 10_000, "{evicted:?}");
        assert!(state.tags("r").is_none());
    }

    #[test]
    fn a_read_lease_ends_and_covers_the_index_of_a_child_read_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut state = State::load(store.clone(), Some(10_000), Duration::from_secs(600)).unwrap();
        state.read_lease = Duration::from_millis(100);
        let has = |(m, l): (Digest, Digest)| store.has_blob(&m) && store.has_blob(&l);
        let a = entry(&state, "r", "a", 1);
        assert!(state.get_manifest("r", "a").unwrap().is_some());
        let b = entry(&state, "r", "b", 2);
        let c = entry(&state, "r", "c", 3);
        // Once the lease is over, plain LRU: a, though served, goes.
        std::thread::sleep(Duration::from_millis(150));
        let d = entry(&state, "r", "d", 4);
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 1, "{evicted:?}");
        assert!(!has(a) && has(b) && has(c) && has(d));
        // Expired leases are dropped.
        assert!(state.lock().leases.is_empty());

        // A child manifest fetched by digest leases the index naming it
        // (the entry), in another repository too.
        state.read_lease = READ_LEASE;
        let layer = blob(&state, &[8u8; 2000]);
        let (m, r) = manifest(&[layer]);
        let child = state.put_manifest("i", None, &m, r).unwrap().unwrap();
        let (i, ri) = manifest(&[child]);
        let index = state
            .put_manifest("i", Some("multi"), &i, ri)
            .unwrap()
            .unwrap();
        // The index is the newest entry; c and d (b was evicted to make
        // room) are older, and d is served.
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 1, "{evicted:?}");
        assert!(!has(b) && has(c) && has(d));
        assert!(state.get_manifest("r", &d.0.to_string()).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            state
                .get_manifest("other", &child.to_string())
                .unwrap()
                .is_none()
        );
        assert!(
            state
                .get_manifest("i", &child.to_string())
                .unwrap()
                .is_some()
        );
        std::thread::sleep(Duration::from_millis(20));
        let e = entry(&state, "r", "e", 5);
        // c (unleased) goes, then e, the newest but unleased, rather than
        // the served index or d.
        let f_layer = blob(&state, &[9u8; 3000]);
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 2, "{evicted:?}");
        assert!(!has(c) && !has(e) && has(d));
        assert!(store.has_blob(&index) && store.has_blob(&child) && store.has_blob(&layer));
        assert!(store.has_blob(&f_layer));
        assert!(state.total() <= 10_000);
    }

    #[test]
    fn blobs_of_a_push_in_progress_survive_eviction_until_the_grace_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = State::load(store.clone(), Some(5_000), Duration::from_secs(600)).unwrap();
        let layer = blob(&state, &[1u8; 3000]);
        let (m, r) = manifest(&[layer]);
        let dm = state
            .put_manifest("r", Some("old"), &m, r)
            .unwrap()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // A new push uploads the same layer again and a new one; its
        // manifest has not arrived when eviction runs.
        let again = blob(&state, &[1u8; 3000]);
        assert_eq!(again, layer);
        let fresh = blob(&state, &[2u8; 3000]);
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 1, "{evicted:?}");
        assert!(!store.has_blob(&dm));
        assert!(store.has_blob(&layer) && store.has_blob(&fresh));
        // The push completes.
        let (m2, r2) = manifest(&[layer, fresh]);
        assert!(
            state
                .put_manifest("r", Some("new"), &m2, r2)
                .unwrap()
                .is_ok()
        );
        // With no grace and a tiny cap everything goes, loose blobs too.
        let state = State::load(store.clone(), Some(1), Duration::ZERO).unwrap();
        let loose = blob(&state, &[3u8; 10]);
        let evicted = state.evict().unwrap();
        assert!(!store.has_blob(&loose));
        assert_eq!(evicted.manifests, 1);
        assert_eq!(state.total(), 0, "{evicted:?}");
    }

    #[test]
    fn an_index_keeps_its_child_manifests_until_it_is_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = State::load(store.clone(), Some(3_600), Duration::ZERO).unwrap();
        let layer = blob(&state, &[1u8; 3000]);
        let (m, r) = manifest(&[layer]);
        let child = state.put_manifest("r", None, &m, r).unwrap().unwrap();
        let (i, ri) = manifest(&[child]);
        let index = state
            .put_manifest("r", Some("multi"), &i, ri)
            .unwrap()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // The child is older than the index, yet only the index is an entry.
        let other = blob(&state, &[2u8; 500]);
        let (o, ro) = manifest(&[other]);
        state
            .put_manifest("r", Some("other"), &o, ro)
            .unwrap()
            .unwrap();
        let evicted = state.evict().unwrap();
        assert_eq!(evicted.manifests, 2, "index, then its child: {evicted:?}");
        assert!(!store.has_blob(&index) && !store.has_blob(&child) && !store.has_blob(&layer));
        assert!(state.get_manifest("r", "other").unwrap().is_some());
    }

    #[test]
    fn evicting_many_entries_at_once_is_quick() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = State::load(store.clone(), None, Duration::ZERO).unwrap();
        for i in 0..600u32 {
            let layer = blob(&state, &i.to_le_bytes().repeat(100));
            let (m, r) = manifest(&[layer]);
            state
                .put_manifest(&format!("r{}", i % 30), Some(&format!("t{i}")), &m, r)
                .unwrap()
                .unwrap();
        }
        let total = state.total();
        let state = State::load(store.clone(), Some(total / 10), Duration::ZERO).unwrap();
        let start = std::time::Instant::now();
        let evicted = state.evict().unwrap();
        eprintln!("evicted {evicted:?} in {:?}", start.elapsed());
        assert!(evicted.manifests >= 500, "{evicted:?}");
        assert!(state.total() <= total / 10);
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn manifest_naming_missing_blobs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::load(Store::open(dir.path()).unwrap(), None, Duration::ZERO).unwrap();
        let gone = Digest::of(b"gone");
        let (m, r) = manifest(&[gone]);
        assert_eq!(
            state.put_manifest("x", Some("t"), &m, r).unwrap(),
            Err(vec![gone])
        );
        assert!(state.tags("x").is_none());
    }
}
