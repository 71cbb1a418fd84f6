//! Content store: blobs by digest in an OCI image layout, written crash-safely.
//!
//! Every blob enters `blobs/sha256/` by atomic rename of a fully written,
//! fsynced temp file from `tmp/`, and only after its digest was checked, so a
//! reader never sees a partial or wrong blob and a crash leaves at most garbage
//! in `tmp/`. Several processes may share one root: two writers of the same
//! blob rename identical content over each other, which is harmless, so blobs
//! need no locks. Callers that do need mutual exclusion (the image store's
//! `index.json`, GC) take named `flock` locks from [`Store::lock_exclusive`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg, PosixFadviseAdvice, posix_fadvise};

use crate::digest::{Digest, Hasher};

/// Version of the builder-specific parts of the root (snapshots, keys, tmp).
/// Bump it when their format changes; older builders then refuse the root
/// instead of misreading it.
pub const LAYOUT_VERSION: u32 = 1;

/// The file recording [`LAYOUT_VERSION`] at the root.
pub const LAYOUT_FILE: &str = "builder-layout.json";

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const EMPTY_INDEX: &[u8] = br#"{"schemaVersion":2,"manifests":[]}"#;

/// Temp entries younger than this may belong to a running process.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// How much a blob writer lets the kernel hold dirty before it asks for
/// writeback.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Writes of this size or more bypass the writer's buffer.
const WRITE_BUFFER: usize = 256 * 1024;

/// An error from the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} not found")]
    NotFound(Digest),
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
    #[error(
        "store layout version {found} in {path} is not supported (this builder uses version {LAYOUT_VERSION})"
    )]
    UnsupportedVersion { path: PathBuf, found: String },
    #[error("invalid layout file {path}")]
    InvalidLayoutFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid lock name {0:?}")]
    InvalidLockName(String),
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { path, source }
}

/// A content store rooted at a directory that is also an OCI image layout.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LayoutFile {
    version: serde_json::Value,
}

impl Store {
    /// Opens the store at `root`, creating the layout if it is missing, and
    /// refuses a root written by a builder with another layout version.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let store = Store {
            root: root.as_ref().to_path_buf(),
        };
        for dir in [
            store.root.clone(),
            store.blobs_dir(),
            store.root.join("snapshots"),
            store.tmp_dir(),
            store.locks_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        store.create_if_missing("oci-layout", OCI_LAYOUT)?;
        store.create_if_missing("index.json", EMPTY_INDEX)?;
        let version = format!("{{\"version\":{LAYOUT_VERSION}}}");
        store.create_if_missing(LAYOUT_FILE, version.as_bytes())?;
        store.check_version()?;
        store.remove_stale_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/blobs/sha256/<hex>`.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file())
    }

    pub fn blob_size(&self, d: &Digest) -> Result<u64, StoreError> {
        let path = self.blob_path(d);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*d)),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Reads a whole blob and checks its digest; meant for manifests and
    /// configs, not layers (use [`Store::open_blob`] to stream those).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let mut data = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut data)
            .map_err(io_err(&path))?;
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(StoreError::Corrupt { digest: *d, actual });
        }
        Ok(data)
    }

    /// Opens a blob for streaming. Its content is not verified here.
    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(*d)),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Stores `data` and returns its digest; storing a blob twice is a no-op.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(data);
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut w = self.blob_writer()?;
        w.write_all(data).map_err(io_err(&w.path))?;
        w.commit(Some(&digest))?;
        Ok(digest)
    }

    /// A writer that hashes what it is given into a temp file in `tmp/`;
    /// [`BlobWriter::commit`] moves it into the store. Dropping it without
    /// committing removes the temp file.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let tmp = self.tmp_dir();
        let file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(io_err(&tmp))?;
        let path = file.path().to_path_buf();
        Ok(BlobWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            hasher: Hasher::new(),
            kicked: 0,
            path,
            store: self.clone(),
        })
    }

    /// Replaces the file `path` (on the store's filesystem) with `bytes`
    /// atomically: a reader sees the old file or the new one, never a
    /// part, and a crash leaves at most garbage in `tmp/`. The file gets
    /// `mode`; with `fsync`, its content is on disk before it is renamed
    /// into place. Creates missing parent directories.
    pub fn replace_file(
        &self,
        path: &Path,
        bytes: &[u8],
        mode: u32,
        fsync: bool,
    ) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("replace-")
            .tempfile_in(self.tmp_dir())?;
        // Whatever the umask.
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
        tmp.write_all(bytes)?;
        if fsync {
            tmp.as_file().sync_all()?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Removes the entries of the directory `dir` (under the root) that
    /// `keep` refuses; returns how many went. A missing directory has none.
    /// For the hint directories that name blobs, after a prune.
    pub(crate) fn remove_entries_unless(
        &self,
        dir: &str,
        mut keep: impl FnMut(&fs::DirEntry) -> bool,
    ) -> usize {
        let Ok(entries) = fs::read_dir(self.root.join(dir)) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|entry| !keep(entry) && fs::remove_file(entry.path()).is_ok())
            .count()
    }

    /// A fresh directory in `tmp/`, on the store's filesystem so that its
    /// content can be renamed into place; removed on drop unless kept.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir, StoreError> {
        let tmp = self.tmp_dir();
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp)
            .map_err(io_err(&tmp))
    }

    /// Blocks until the exclusive lock `root/locks/<name>` is held.
    pub fn lock_exclusive(&self, name: &str) -> Result<StoreLock, StoreError> {
        self.lock(name, FlockArg::LockExclusive)
            .map(|l| l.expect("blocking lock always returns a lock"))
    }

    /// Blocks until the shared lock `root/locks/<name>` is held.
    pub fn lock_shared(&self, name: &str) -> Result<StoreLock, StoreError> {
        self.lock(name, FlockArg::LockShared)
            .map(|l| l.expect("blocking lock always returns a lock"))
    }

    /// Takes the exclusive lock if nobody holds the lock; `None` otherwise.
    pub fn try_lock_exclusive(&self, name: &str) -> Result<Option<StoreLock>, StoreError> {
        self.lock(name, FlockArg::LockExclusiveNonblock)
    }

    /// Takes the shared lock unless someone holds it exclusively; `None` otherwise.
    pub fn try_lock_shared(&self, name: &str) -> Result<Option<StoreLock>, StoreError> {
        self.lock(name, FlockArg::LockSharedNonblock)
    }

    fn lock(&self, name: &str, arg: FlockArg) -> Result<Option<StoreLock>, StoreError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(StoreError::InvalidLockName(name.to_string()));
        }
        let path = self.locks_dir().join(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        loop {
            match Flock::lock(file, arg) {
                Ok(lock) => return Ok(Some(StoreLock { _lock: lock })),
                Err((f, nix::errno::Errno::EINTR)) => file = f,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => {
                    return Err(StoreError::Io {
                        path,
                        source: errno.into(),
                    });
                }
            }
        }
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Writes `name` at the root unless it exists. A hard link never replaces
    /// an existing file, so a concurrent `open` cannot clobber an
    /// `index.json` that already holds tags.
    fn create_if_missing(&self, name: &str, content: &[u8]) -> Result<(), StoreError> {
        let dest = self.root.join(name);
        if dest.exists() {
            return Ok(());
        }
        let tmp = self.tmp_dir();
        let mut file = tempfile::Builder::new()
            .prefix("layout-")
            .tempfile_in(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(content).map_err(io_err(file.path()))?;
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err(file.path()))?;
        file.as_file().sync_all().map_err(io_err(file.path()))?;
        match fs::hard_link(file.path(), &dest) {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(StoreError::Io { path: dest, source }),
        }
    }

    fn check_version(&self) -> Result<(), StoreError> {
        let path = self.root.join(LAYOUT_FILE);
        let data = fs::read(&path).map_err(io_err(&path))?;
        let file: LayoutFile =
            serde_json::from_slice(&data).map_err(|source| StoreError::InvalidLayoutFile {
                path: path.clone(),
                source,
            })?;
        if file.version.as_u64() != Some(u64::from(LAYOUT_VERSION)) {
            return Err(StoreError::UnsupportedVersion {
                path,
                found: file.version.to_string(),
            });
        }
        Ok(())
    }

    /// Removes what killed processes left in `tmp/`. Best effort: an entry
    /// that vanishes or resists removal is somebody else's business.
    fn remove_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok());
            if age.is_none_or(|age| age <= STALE_TMP_AGE) {
                continue;
            }
            let _ = if meta.is_dir() {
                fs::remove_dir_all(entry.path())
            } else {
                fs::remove_file(entry.path())
            };
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// A blob being written; see [`Store::blob_writer`].
pub struct BlobWriter {
    file: BufWriter<tempfile::NamedTempFile>,
    hasher: Hasher,
    /// Bytes handed to the kernel for writeback so far.
    kicked: u64,
    path: PathBuf,
    store: Store,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// Syncs the data, checks it against `expected` if given, and moves it to
    /// its place in the store. On a mismatch nothing is stored and the temp
    /// file is removed. A blob that is already present is not an error.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), StoreError> {
        let BlobWriter {
            file,
            hasher,
            path,
            store,
            ..
        } = self;
        let size = hasher.len();
        let digest = hasher.finish();
        let file = file.into_inner().map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into_error(),
        })?;
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: *expected,
                    actual: digest,
                });
            }
        }
        let dest = store.blob_path(&digest);
        if dest.exists() {
            return Ok((digest, size));
        }
        // Blobs are immutable; readable by all so that other tools
        // (skopeo, umoci) run as other users can read the layout.
        file.as_file()
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err(&path))?;
        file.as_file().sync_all().map_err(io_err(&path))?;
        file.persist(&dest).map_err(|e| StoreError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(&store.blobs_dir())?;
        Ok((digest, size))
    }
}

impl BlobWriter {
    /// Starts writeback of what was written since the last call, once that
    /// is a few MiB. Without it the kernel keeps a large blob dirty in memory
    /// until `commit`'s fsync and only then writes it all, so the disk idles
    /// while the blob is produced and the producer idles during the fsync.
    /// `POSIX_FADV_DONTNEED` starts asynchronous writeback of dirty pages
    /// (and drops only clean ones, which these are not yet).
    fn start_writeback(&mut self) {
        let in_file = self.hasher.len() - self.file.buffer().len() as u64;
        if in_file - self.kicked < WRITEBACK_STEP {
            return;
        }
        let (Ok(offset), Ok(len)) = (
            i64::try_from(self.kicked),
            i64::try_from(in_file - self.kicked),
        ) else {
            return;
        };
        // Only advice: a kernel that ignores it costs nothing but speed.
        let _ = posix_fadvise(
            self.file.get_ref().as_file(),
            offset,
            len,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        self.kicked = in_file;
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.start_writeback();
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.hasher.update(buf);
        self.start_writeback();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A held store lock; released when dropped (or when the process dies).
pub struct StoreLock {
    _lock: Flock<File>,
}

impl std::fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLock")
    }
}
