//! Flattening a chain of layers into one plain tree, applying whiteouts as deletions.
