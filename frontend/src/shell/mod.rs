//! BuildKit's shell lexer: quote removal, escapes, `$VAR`/`${VAR...}` expansion
//! and word splitting, as used for the arguments of ENV, ARG, COPY, FROM, ...

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Variables visible to expansion.
pub trait Env {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

/// `KEY=VALUE` pairs in order; the last assignment of a key wins.
impl Env for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// An expansion error (unterminated quote, bad substitution, `${V:?msg}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShellError {
    pub message: String,
}

/// The result of single-word processing, with the variable names looked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Processed {
    pub value: String,
    /// Names looked up that were set.
    pub matched: BTreeSet<String>,
    /// Names looked up that were not set.
    pub unmatched: BTreeSet<String>,
}

/// The lexer and its options (BuildKit's `shell.Lex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    pub escape: char,
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
    /// Do not treat quotes specially at all.
    pub skip_process_quotes: bool,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Self { escape, raw_quotes: false, raw_escapes: false, skip_unset_env: false, skip_process_quotes: false }
    }

    /// Single-word mode: quotes removed, escapes applied, variables expanded,
    /// spaces kept.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Processed, ShellError> {
        let _ = (word, env);
        todo!("shell lexer")
    }

    /// Words mode: expansion, then splitting of the expanded text on
    /// whitespace outside quotes.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let _ = (word, env);
        todo!("shell lexer")
    }
}
