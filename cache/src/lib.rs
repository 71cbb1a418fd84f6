//! Storage for builder: digests, the content store (an OCI image layout),
//! layer tar creation and safe extraction, snapshots, the image store, and
//! import/export of OCI and docker archives.

pub mod archive;
pub mod cacheserver;
pub mod compression;
pub mod digest;
pub mod gc;
pub mod images;
pub mod json;
pub mod keys;
pub mod layer;
pub mod registry;
pub mod remote_cache;
pub mod snapshot;
pub mod store;

pub use digest::{Digest, Hasher, InvalidDigest};
