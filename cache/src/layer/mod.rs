//! Layers: creation from directories and safe extraction into snapshots.
