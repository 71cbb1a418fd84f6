//! Local image store: tags as index.json entries with org.opencontainers.image.ref.name.
