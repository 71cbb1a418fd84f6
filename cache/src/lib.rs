//! cache crate (see ARCHITECTURE.md).
