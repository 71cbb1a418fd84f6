//! Import and export of images: OCI layout tarballs, docker archives, directories.
