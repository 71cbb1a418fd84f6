//! Import and export of images: OCI layout tarballs, docker archives, directories.
//!
//! [`import`] reads OCI layout tarballs and docker archives (`docker save`,
//! `skopeo copy … docker-archive:`) into the store; [`export`] writes images
//! out through one [`export::Exporter`] per output type (`oci`, `docker`,
//! `local`, `tar`), recompressing layers on request.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

use crate::compression::CompressionError;
use crate::digest::Digest;
use crate::images::ImageError;
use crate::json::JsonError;
use crate::store::StoreError;

pub mod export;
pub mod import;

pub use export::{
    DockerExporter, ExportImage, ExportKind, ExportOptions, ExportReport, ExportSpec, Exporter,
    LocalExporter, OciExporter, TarExporter,
};
pub use import::{ImportOptions, LoadedImage, import_archive, import_oci_layout};

/// An error while importing or exporting an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Compression(#[from] CompressionError),
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("invalid descriptor in the archive's index")]
    Descriptor(#[source] crate::images::ManifestError),
    #[error("cannot read the archive")]
    Read(#[source] io::Error),
    #[error("cannot read {path} from the archive")]
    Entry {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the archive is truncated: {path} has {got} of {expected} bytes")]
    Truncated {
        path: String,
        got: u64,
        expected: u64,
    },
    #[error("blob {path} in the archive is corrupt: expected {expected}, got {actual}")]
    BlobMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "layer {path} in the archive does not match the image config: diffID {actual}, expected {expected}"
    )]
    DiffIdMismatch {
        path: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {path} in the archive cannot be decompressed: {reason}")]
    CorruptLayer { path: String, reason: String },
    #[error("image config {config} lists {diff_ids} layers but its manifest lists {layers}")]
    LayerCount {
        config: String,
        diff_ids: usize,
        layers: usize,
    },
    #[error(
        "the archive holds neither an OCI layout (index.json) nor a docker archive (manifest.json)"
    )]
    NotAnArchive,
    #[error("invalid {path} in the archive")]
    InvalidDocument {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} in the archive is too large ({size} bytes)")]
    TooLarge { path: String, size: u64 },
    #[error("{referrer} refers to {path}, which the archive does not contain")]
    MissingFile { path: String, referrer: String },
    #[error("image index {digest} has no manifest for {platform}")]
    NoPlatform { digest: Digest, platform: String },
    #[error("{digest} has unsupported media type {media_type}")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    #[error("blob {digest} in the store is corrupt: it hashes to {actual}")]
    CorruptBlob { digest: Digest, actual: Digest },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the export stream")]
    Stream(#[source] io::Error),
    #[error("cannot flatten the image's layers")]
    Flatten(#[source] crate::layer::LayerError),
    #[error("invalid export option {0:?}")]
    InvalidOption(String),
    #[error("exporter {kind} {reason}")]
    Unsupported {
        kind: &'static str,
        reason: &'static str,
    },
    #[error("nothing to export: no image given")]
    NoImages,
}

/// How much of an [`AtomicFile`] may be written before its writeback is started.
const WRITEBACK_STEP: u64 = 16 << 20;

/// A file that appears at its destination complete or not at all.
///
/// The data goes to an unnamed `O_TMPFILE` inode in the destination's
/// directory, which the kernel frees if the process dies; only
/// [`AtomicFile::commit`] gives it a name. Filesystems without `O_TMPFILE`
/// get a dot-named temp file in the same directory instead, renamed over the
/// destination on commit (a kill then leaves that temp file, never a partial
/// destination).
///
/// Nothing is fsynced. An export is an output artifact that the user can make
/// again, like the files of `docker save`, `podman save` and buildx's
/// `-o type=oci|docker|tar,dest=`, none of which sync theirs; waiting for a
/// 500 MB file to reach the disk would add about a second to every export.
/// So a process killed at any point leaves the destination as it was, but an
/// OS crash or power loss shortly after an export may leave it missing, or
/// present but incomplete. To keep that window short and dirty pages from
/// piling up, writeback of every [`WRITEBACK_STEP`] written is started at
/// once, on a helper thread so that the writer never waits for the disk.
pub struct AtomicFile {
    file: File,
    dest: PathBuf,
    named: Option<tempfile::TempPath>,
    /// Bytes written so far.
    written: u64,
    /// Bytes whose writeback has been asked for.
    kicked: u64,
    /// Sends `start..end` ranges to the writeback thread, spawned on the
    /// first; `None` before that, or if it could not be spawned.
    writeback: Option<mpsc::Sender<(u64, u64)>>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<AtomicFile, ArchiveError> {
        let werr = |source| ArchiveError::Write {
            path: dest.to_path_buf(),
            source,
        };
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (file, named) = match OpenOptions::new()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(&dir)
        {
            Ok(file) => (file, None),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                let name = dest
                    .file_name()
                    .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".tmp")
                    .tempfile_in(&dir)
                    .map_err(werr)?;
                let (file, path) = tmp.into_parts();
                (file, Some(path))
            }
            Err(e) => return Err(werr(e)),
        };
        Ok(AtomicFile {
            file,
            dest: dest.to_path_buf(),
            named,
            written: 0,
            kicked: 0,
            writeback: None,
        })
    }

    /// Puts the file at its destination, replacing whatever was there, and
    /// starts writeback of the rest of its data without waiting for it (see
    /// the type's documentation for what that means after a crash).
    ///
    /// The directory is not fsynced either: on ext4 (`data=ordered`) that
    /// commits the journal, which waits for the data blocks whose writeback
    /// was started, and so costs as much as the fsync of the file.
    pub fn commit(mut self) -> Result<(), ArchiveError> {
        self.start_writeback(true);
        let AtomicFile {
            file, dest, named, ..
        } = self;
        let werr = |source| ArchiveError::Write {
            path: dest.clone(),
            source,
        };
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match named {
            Some(path) => {
                path.persist(&dest).map_err(|e| werr(e.error))?;
            }
            None => {
                let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
                let link = |to: &Path| {
                    nix::unistd::linkat(
                        nix::fcntl::AT_FDCWD,
                        proc_path.as_str(),
                        nix::fcntl::AT_FDCWD,
                        to,
                        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                    )
                };
                match link(&dest) {
                    Ok(()) => {}
                    // linkat never replaces: link under a temp name and
                    // rename that over the old file.
                    Err(nix::errno::Errno::EEXIST) => {
                        let name = dest
                            .file_name()
                            .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
                        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
                        let _ = fs::remove_file(&tmp);
                        link(&tmp).map_err(|e| werr(e.into()))?;
                        if let Err(e) = fs::rename(&tmp, &dest) {
                            let _ = fs::remove_file(&tmp);
                            return Err(werr(e));
                        }
                    }
                    Err(e) => return Err(werr(e.into())),
                }
            }
        }
        Ok(())
    }

    /// Hands what was written since the last call to the writeback thread,
    /// once that is [`WRITEBACK_STEP`] or more (or anything, with `all`).
    fn start_writeback(&mut self, all: bool) {
        let pending = self.written - self.kicked;
        if pending == 0 || (!all && pending < WRITEBACK_STEP) {
            return;
        }
        if self.writeback.is_none() {
            self.writeback = spawn_writeback(&self.file);
        }
        if let Some(tx) = &self.writeback {
            let _ = tx.send((self.kicked, self.written));
        }
        self.kicked = self.written;
    }

    pub fn path(&self) -> &Path {
        &self.dest
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.start_writeback(false);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Starts a thread that asks the kernel to start writeback of the ranges of
/// `file` it is sent, and returns their sender; the thread ends when the
/// sender is dropped and the ranges sent are done. `None` if the file or the
/// thread cannot be had: writeback is then left to the kernel, which only
/// costs memory.
///
/// On a thread because starting writeback blocks whenever the device's queue
/// is full (and ext4 allocates the blocks then), which would stall the writer.
/// `POSIX_FADV_DONTNEED` starts asynchronous writeback of the dirty pages of
/// the range, as `sync_file_range(SYNC_FILE_RANGE_WRITE)` does, without
/// `unsafe`; it drops only pages that are clean by then, which an export does
/// not read again.
fn spawn_writeback(file: &File) -> Option<mpsc::Sender<(u64, u64)>> {
    let file = file.try_clone().ok()?;
    let (tx, rx) = mpsc::channel::<(u64, u64)>();
    std::thread::Builder::new()
        .name("export-writeback".into())
        .spawn(move || {
            while let Ok((start, mut end)) = rx.recv() {
                // Ranges are sent in order and adjoin: one call covers those
                // that queued up while the last one ran.
                while let Ok((_, next)) = rx.try_recv() {
                    end = next;
                }
                let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start))
                else {
                    continue;
                };
                // Only advice: a kernel that ignores it costs nothing but memory.
                let _ = posix_fadvise(&file, offset, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
            }
        })
        .ok()?;
    Some(tx)
}

/// `blobs/sha256/<hex>` → the digest; anything else → `None`.
pub(crate) fn blob_path_digest(path: &str) -> Option<Digest> {
    path.strip_prefix("blobs/")
        .and_then(|rest| rest.replacen('/', ":", 1).parse().ok())
}

/// The path of a blob inside an OCI layout.
pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}
