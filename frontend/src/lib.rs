//! Dockerfile frontend: parse → typed instructions → build graph. Pure: no I/O
//! beyond what callers hand in, no processes, no network.

pub mod error;
pub mod parser;
pub mod shell;

pub use error::{Position, SourceError};
