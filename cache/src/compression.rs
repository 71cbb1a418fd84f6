//! Compression of layer streams: gzip, zstd, or none.
