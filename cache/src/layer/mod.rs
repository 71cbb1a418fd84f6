//! Layers: creation from directories and safe extraction into snapshots.

pub mod create;
pub mod extract;
pub mod flatten;

/// Prefix of an OCI whiteout entry: `.wh.<name>` deletes `<name>` from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// An OCI opaque-directory marker: hides everything below the directory in lower layers.
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// An error from reading, writing or applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A filesystem operation on the destination (or a snapshot) failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An entry that would write outside the destination or through a link.
    #[error("unsafe entry {entry:?} in layer: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    /// An entry whose header cannot be applied as it stands.
    #[error("invalid header for entry {entry:?}: {reason}")]
    InvalidHeader { entry: String, reason: String },
    /// A tar entry type that has no meaning in a layer.
    #[error("unsupported entry type {kind} for {entry:?}")]
    UnsupportedEntry { entry: String, kind: String },
    /// A device node in a layer unpacked without `allow_devices`.
    #[error("device node {entry:?} is not allowed here")]
    DeviceNotAllowed { entry: String },
    /// A compressed blob or an uncompressed tar that hashes to something else
    /// than the manifest or image config says.
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: crate::Digest,
        actual: crate::Digest,
    },
    /// The layer stream ended before the tar's end-of-archive marker.
    #[error("layer stream ends early, after {offset} bytes of tar")]
    Truncated { offset: u64 },
    /// The layer stream cannot be decompressed or parsed as tar.
    #[error("corrupt layer stream after {offset} bytes of tar")]
    Corrupt {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
