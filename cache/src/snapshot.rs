//! Snapshots: one unpacked tree per layer under snapshots/<diffid>, entered by atomic rename.
//!
//! A snapshot is a layer unpacked in overlay format (see
//! [`crate::layer::extract`]), ready to be an overlayfs lowerdir. It is
//! unpacked into a fresh directory under `tmp/`, checked against the blob
//! digest and the diffID that the manifest and image config name, flushed,
//! and only then renamed to `snapshots/<diffid hex>`; so a directory there is
//! always complete and verified. Concurrent callers for the same layer
//! serialise on a per-snapshot lock; the rename also refuses to replace an
//! existing snapshot, so even a writer that bypasses the lock cannot swap a
//! snapshot under a running build.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use crate::digest::Digest;
use crate::layer::LayerError;
use crate::layer::create::LayerDescriptor;
use crate::layer::extract::{HashingReader, UnpackOptions, WhiteoutMode, unpack_layer};
use crate::store::{Store, StoreError, StoreLock};

const SNAPSHOTS_DIR: &str = "snapshots";

/// The two digests that identify a layer: its blob in the content store and
/// its uncompressed tar (the image config's diffID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerRef {
    /// Digest of the (usually compressed) blob, as the manifest lists it.
    pub digest: Digest,
    /// Digest of the uncompressed tar, as the image config lists it.
    pub diff_id: Digest,
}

impl From<&LayerDescriptor> for LayerRef {
    fn from(d: &LayerDescriptor) -> Self {
        LayerRef {
            digest: d.digest,
            diff_id: d.diff_id,
        }
    }
}

/// An error from the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot unpack layer {digest}")]
    Unpack {
        digest: Digest,
        #[source]
        source: LayerError,
    },
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The snapshots of a store.
#[derive(Debug, Clone)]
pub struct Snapshots {
    store: Store,
    opts: UnpackOptions,
    durable: bool,
}

impl Snapshots {
    /// Snapshots with the default unpack options (devices and owners kept
    /// when running as root) and durable writes.
    pub fn new(store: &Store) -> Snapshots {
        Snapshots::with_options(store, UnpackOptions::default())
    }

    /// Snapshots unpacked with `opts`; the whiteout mode is always overlay.
    pub fn with_options(store: &Store, opts: UnpackOptions) -> Snapshots {
        Snapshots {
            store: store.clone(),
            opts: UnpackOptions {
                whiteouts: WhiteoutMode::Overlay,
                ..opts
            },
            durable: true,
        }
    }

    /// Whether a new snapshot is flushed to disk (`syncfs`) before it is
    /// renamed into place. Without it a crash may leave a complete-looking
    /// snapshot with lost file contents; only tests should turn it off.
    pub fn durable(mut self, durable: bool) -> Snapshots {
        self.durable = durable;
        self
    }

    /// `root/snapshots`.
    pub fn dir(&self) -> PathBuf {
        self.store.root().join(SNAPSHOTS_DIR)
    }

    /// `root/snapshots/<diffid hex>`, whether or not it exists.
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir().join(diff_id.hex())
    }

    pub fn exists(&self, diff_id: &Digest) -> bool {
        fs::symlink_metadata(self.path(diff_id)).is_ok_and(|m| m.is_dir())
    }

    /// The diffIDs of all snapshots, sorted.
    pub fn list(&self) -> Result<Vec<Digest>, SnapshotError> {
        let dir = self.dir();
        let entries = fs::read_dir(&dir).map_err(|source| SnapshotError::Io {
            op: "list",
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SnapshotError::Io {
                op: "list",
                path: dir.clone(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if let (true, Ok(d)) = (is_dir, format!("sha256:{name}").parse::<Digest>()) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Returns the snapshot of `layer`, unpacking its blob from the store
    /// first if needed. Nothing is stored unless both digests match.
    pub fn ensure(&self, layer: &LayerRef) -> Result<PathBuf, SnapshotError> {
        let dest = self.path(&layer.diff_id);
        if self.exists(&layer.diff_id) {
            return Ok(dest);
        }
        // Another process (or thread) may make it while we wait.
        let Some(_lock) = self.lock_to_create(&layer.diff_id)? else {
            return Ok(dest);
        };
        // The tree goes one level down in the temp dir: a layer may give its
        // root an old mtime, and the store's cleanup judges tmp/ entries by
        // their mtime.
        let tmp = self.store.temp_dir("snapshot-")?;
        let staging = tmp.path().join("rootfs");
        fs::create_dir(&staging).map_err(|source| SnapshotError::Io {
            op: "create",
            path: staging.clone(),
            source,
        })?;
        let unpack_err = |source| SnapshotError::Unpack {
            digest: layer.digest,
            source,
        };
        let blob = self.store.open_blob(&layer.digest)?;
        let mut compressed = HashingReader::new(blob);
        let unpacked = unpack_layer(&mut compressed, &staging, &self.opts);
        let drained = compressed.drain();
        let actual = compressed.finish();
        // A damaged blob is best reported as such, not as the tar error it causes.
        if drained.is_ok() && actual != layer.digest {
            return Err(unpack_err(LayerError::DigestMismatch {
                what: "layer blob",
                expected: layer.digest,
                actual,
            }));
        }
        let stats = unpacked.map_err(unpack_err)?;
        drained.map_err(|source| SnapshotError::Io {
            op: "read",
            path: self.store.blob_path(&layer.digest),
            source,
        })?;
        if stats.diff_id != layer.diff_id {
            return Err(unpack_err(LayerError::DigestMismatch {
                what: "diffID",
                expected: layer.diff_id,
                actual: stats.diff_id,
            }));
        }
        if self.durable {
            let dir = File::open(&staging).map_err(|source| SnapshotError::Io {
                op: "open",
                path: staging.clone(),
                source,
            })?;
            nix::unistd::syncfs(&dir).map_err(|e| SnapshotError::Io {
                op: "sync",
                path: staging.clone(),
                source: e.into(),
            })?;
        }
        self.rename_into_place(&staging, &dest)?;
        Ok(dest)
    }

    /// Moves a finished tree (an overlay upperdir, say; it must be on the
    /// store's filesystem) into place as the snapshot of `diff_id`, which the
    /// caller computed from that same tree. Returns false, leaving `dir`
    /// alone, when the snapshot already exists.
    pub fn adopt(&self, dir: &Path, diff_id: &Digest) -> Result<bool, SnapshotError> {
        let dest = self.path(diff_id);
        let Some(_lock) = self.lock_to_create(diff_id)? else {
            return Ok(false);
        };
        self.rename_into_place(dir, &dest)
    }

    /// The exclusive lock for creating the snapshot of `diff_id`, or `None`
    /// as soon as that snapshot exists. Blocking on the lock instead could
    /// wait forever: a parallel build holds (shared) the snapshot one of its
    /// steps made while another of its steps, which made the same layer, comes
    /// to adopt it.
    fn lock_to_create(&self, diff_id: &Digest) -> Result<Option<StoreLock>, SnapshotError> {
        loop {
            if self.exists(diff_id) {
                return Ok(None);
            }
            if let Some(lock) = self.store.try_lock_exclusive(&lock_name(diff_id))? {
                if self.exists(diff_id) {
                    return Ok(None);
                }
                return Ok(Some(lock));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Holds the snapshot against removal until the guard is dropped.
    pub fn hold(&self, diff_id: &Digest) -> Result<StoreLock, SnapshotError> {
        Ok(self.store.lock_shared(&lock_name(diff_id))?)
    }

    /// Removes a snapshot; waits for holders first. It is renamed into
    /// `tmp/` before being deleted, so a crash half-way leaves garbage there
    /// rather than a partial snapshot. Returns false if there was none.
    pub fn remove(&self, diff_id: &Digest) -> Result<bool, SnapshotError> {
        let lock = self.store.lock_exclusive(&lock_name(diff_id))?;
        self.remove_locked(diff_id, lock)
    }

    /// Like [`Snapshots::remove`], but returns `None` at once, removing
    /// nothing, while somebody holds the snapshot (GC must not wait for a
    /// running build).
    pub fn try_remove(&self, diff_id: &Digest) -> Result<Option<bool>, SnapshotError> {
        match self.store.try_lock_exclusive(&lock_name(diff_id))? {
            Some(lock) => self.remove_locked(diff_id, lock).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`Snapshots::try_remove`], but leaves the deletion, the slow
    /// part of a big snapshot, to the caller: the snapshot is only moved out
    /// of `snapshots/` (durably) into a fresh `tmp/removing-*` directory,
    /// whose path is returned for [`delete_moved`]. `None` while somebody
    /// holds the snapshot; `Some(None)` if there was none. Left alone, the
    /// directory is removed as a stale leftover by the first command that
    /// opens the store once it is an hour old.
    pub fn try_move_away(
        &self,
        diff_id: &Digest,
    ) -> Result<Option<Option<PathBuf>>, SnapshotError> {
        match self.store.try_lock_exclusive(&lock_name(diff_id))? {
            Some(lock) => self.move_away_locked(diff_id, lock).map(Some),
            None => Ok(None),
        }
    }

    fn remove_locked(&self, diff_id: &Digest, lock: StoreLock) -> Result<bool, SnapshotError> {
        match self.move_away_locked(diff_id, lock)? {
            Some(moved) => {
                delete_moved(&moved).map_err(|source| SnapshotError::Io {
                    op: "delete",
                    path: moved,
                    source,
                })?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Renames the snapshot into a new `tmp/removing-*` directory and
    /// returns that directory; `None` if there was no snapshot. Once the
    /// rename is synced the snapshot is gone as far as the store is
    /// concerned, so the lock is not needed for the deletion.
    fn move_away_locked(
        &self,
        diff_id: &Digest,
        _lock: StoreLock,
    ) -> Result<Option<PathBuf>, SnapshotError> {
        let path = self.path(diff_id);
        if !self.exists(diff_id) {
            return Ok(None);
        }
        let tmp = self.store.temp_dir("removing-")?;
        let doomed = tmp.path().join("rootfs");
        fs::rename(&path, &doomed).map_err(|source| SnapshotError::Io {
            op: "move away",
            path: path.clone(),
            source,
        })?;
        sync_dir(&self.dir())?;
        Ok(Some(tmp.keep()))
    }

    /// Renames `from` to `dest` unless `dest` exists; true if it moved.
    fn rename_into_place(&self, from: &Path, dest: &Path) -> Result<bool, SnapshotError> {
        match renameat2(
            AT_FDCWD,
            from,
            AT_FDCWD,
            dest,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                sync_dir(&self.dir())?;
                Ok(true)
            }
            // Somebody else's snapshot of the same content won.
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(false),
            Err(e) => Err(SnapshotError::Io {
                op: "rename into place",
                path: dest.to_path_buf(),
                source: e.into(),
            }),
        }
    }
}

/// Deletes a tree that [`Snapshots::try_move_away`] (or GC) moved into
/// `tmp/`. Somebody else deleting it at the same time (the store's cleanup
/// of stale `tmp/` entries, a second reaper) does no harm: what is already
/// gone counts as deleted.
pub fn delete_moved(dir: &Path) -> io::Result<()> {
    // std's remove_dir_all skips entries that vanish under it, but not the
    // top one; and a racing deleter may make a step fail half-way, which a
    // new attempt (finding less, or nothing) gets past.
    let mut last = None;
    for _ in 0..3 {
        match fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three attempts failed"))
}

fn lock_name(diff_id: &Digest) -> String {
    format!("snapshot-{}", diff_id.hex())
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SnapshotError::Io {
            op: "sync",
            path: dir.to_path_buf(),
            source,
        })
}
