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
