//! Content store: blobs by digest in an OCI image layout, written crash-safely.
