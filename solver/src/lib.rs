//! The solver: runs a compiled build graph into an image (ops over layer
//! chains, the RUN sandbox, the base-image resolver, image assembly). See
//! ARCHITECTURE.md.

// A failed build's error carries the step's description, position and last
// output lines for the user; it is made at most once per build, so its size
// costs nothing, and boxing it would only make matching on it clumsier.
#![allow(clippy::result_large_err)]

pub mod cachekey;
pub mod context_hash;
pub mod image;
pub mod ops;
pub mod resolver;
pub mod rootfs;
pub mod sandbox;
mod scheduler;
pub mod solve;

pub use resolver::{LocalResolver, RegistryAccess, enable_registry};
pub use solve::{
    BuildError, BuildRequest, BuildResult, BuildStats, LogStream, NamedContextDir, NoProgress,
    Progress, ProgressEvent, SecretSource, SecretSpec, SshSpec, StepError, build, build_with,
};
