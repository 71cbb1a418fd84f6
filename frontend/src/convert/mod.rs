//! Conversion of typed instructions into stages, image configs and the build graph.
