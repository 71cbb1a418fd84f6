//! Typed instructions: syntax tree nodes → validated commands with their flags.
