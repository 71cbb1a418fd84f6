//! Dockerfile frontend: parse → typed instructions → build graph. Pure: no I/O
//! beyond what callers hand in, no processes, no network.

pub mod checks;
pub mod convert;
pub mod dockerignore;
pub mod error;
pub mod graph;
pub mod instructions;
pub mod parser;
pub mod shell;

pub use error::{Position, SourceError};
