//! .dockerignore with Docker semantics (moby patternmatcher), not gitignore.
