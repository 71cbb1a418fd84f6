//! Context hashing benchmark (placeholder while the module lands).
fn main() {}
