//! solver crate (see ARCHITECTURE.md).

pub mod sandbox;
