//! Canonical JSON: keys sorted, no insignificant whitespace, so digests are reproducible.
