//! Dockerfile text → syntax tree, following BuildKit's parser byte for byte.

pub mod ast;

pub use ast::{Ast, Directive, Heredoc, Node, Warning};
