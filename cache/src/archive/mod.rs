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

use crate::compression::CompressionError;
use crate::digest::Digest;
use crate::images::ImageError;
use crate::json::JsonError;
use crate::store::StoreError;

pub mod conversions;
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

/// A file that appears at its destination complete or not at all.
///
/// The data goes to an unnamed `O_TMPFILE` inode in the destination's
/// directory, which the kernel frees if the process dies; only
/// [`AtomicFile::commit`] gives it a name. Filesystems without `O_TMPFILE`
/// get a dot-named temp file in the same directory instead, renamed over the
/// destination on commit (a kill then leaves that temp file, never a partial
/// destination).
///
/// Nothing is fsynced, and writeback is left to the kernel. It is used for
/// a build's outputs (exports, `--iidfile`, `--metadata-file`), which the
/// user can make again, like the files of `docker save`, `podman save` and
/// buildx's `-o type=oci|docker|tar,dest=` and `--iidfile`, none of which
/// sync theirs (the store's own files are written otherwise, with fsync); waiting for a 500 MB file to reach the disk would add
/// about a second to every export. So a process killed at any point leaves
/// the destination as it was, but an OS crash or power loss shortly after an
/// export may leave it missing, or present but incomplete. Writeback is not
/// started early either: on ext4 (`data=ordered`) the next journal commit,
/// such as the store's own fsync of a cache record right after the export,
/// would then wait for all of the export's data blocks whose writeback had
/// begun (measured: 0.6 s after a 525 MB export on a loop device).
pub struct AtomicFile {
    file: File,
    dest: PathBuf,
    named: Option<tempfile::TempPath>,
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
        })
    }

    /// Puts the file at its destination, replacing whatever was there (see
    /// the type's documentation for what that means after a crash). The
    /// directory is not fsynced either: on ext4 (`data=ordered`) that commits
    /// the journal, which may wait for the file's data blocks.
    pub fn commit(self) -> Result<(), ArchiveError> {
        let AtomicFile { file, dest, named } = self;
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

    pub fn path(&self) -> &Path {
        &self.dest
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
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
