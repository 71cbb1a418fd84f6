//! solver crate (see ARCHITECTURE.md).
