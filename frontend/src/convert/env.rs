//! A stage's environment and the expansion of instruction words with it.

use std::collections::{BTreeSet, HashMap};

use crate::error::SourceError;
use crate::graph::Shared;
use crate::instructions::{Locator, Span};
use crate::shell::Lexer;

/// The environment of a stage (image ENV plus ARG values): ordered, with an
/// index for lookups, and the `KEY=VALUE` list shared by RUN steps until it
/// changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvState {
    /// `(length of the key, "key=value")`.
    entries: Vec<(usize, Shared<str>)>,
    index: HashMap<String, usize>,
    list: Option<Shared<Vec<Shared<str>>>>,
    /// Reused to build `key=value` before it is copied into its `Arc`.
    scratch: String,
}

impl EnvState {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|&i| {
            let (k, kv) = &self.entries[i];
            &kv[k + 1..]
        })
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Sets a variable, replacing an earlier value in place.
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.list = None;
        self.scratch.clear();
        self.scratch.push_str(key);
        self.scratch.push('=');
        self.scratch.push_str(value);
        let kv = Shared::from(self.scratch.as_str());
        match self.index.get(key) {
            Some(&i) => self.entries[i].1 = kv,
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push((key.len(), kv));
            }
        }
    }

    /// The env as `KEY=VALUE` strings.
    pub(crate) fn list(&mut self) -> Shared<Vec<Shared<str>>> {
        if let Some(l) = &self.list {
            return l.clone();
        }
        let l: Shared<Vec<Shared<str>>> =
            Shared::new(self.entries.iter().map(|(_, kv)| kv.clone()).collect());
        self.list = Some(l.clone());
        l
    }
}

impl crate::shell::Env for EnvState {
    fn get(&self, name: &str) -> Option<&str> {
        EnvState::get(self, name)
    }
}

/// Expands words with a stage's environment, remembering the names read.
pub(crate) struct Expander<'s> {
    lexer: Lexer,
    env: &'s EnvState,
    loc: &'s Locator,
    span: Span,
    pub(crate) matched: BTreeSet<String>,
}

impl<'s> Expander<'s> {
    pub(crate) fn new(lexer: Lexer, env: &'s EnvState, loc: &'s Locator, span: Span) -> Self {
        Self {
            lexer,
            env,
            loc,
            span,
            matched: BTreeSet::new(),
        }
    }

    /// Whether the lexer would return `w` unchanged: no variables, no
    /// escapes and (when quotes are removed) no quotes. Most words are
    /// like that, and the lexer is the costly part of conversion.
    fn is_literal(&self, w: &str, quotes_matter: bool) -> bool {
        let mut buf = [0u8; 4];
        let escape = self.lexer.escape.encode_utf8(&mut buf).as_bytes();
        if escape.len() != 1 {
            return false;
        }
        let escape = escape[0];
        !w.bytes()
            .any(|b| b == b'$' || b == escape || (quotes_matter && (b == b'\'' || b == b'"')))
    }

    /// One word, quotes removed; an error points at the word.
    pub(crate) fn word(&mut self, w: &str) -> Result<String, SourceError> {
        if self.is_literal(w, true) {
            return Ok(w.to_string());
        }
        let p = self
            .lexer
            .process_word(w, self.env)
            .map_err(|e| SourceError::new(self.loc.find(self.span, w), e.message))?;
        self.matched.extend(p.matched);
        Ok(p.value)
    }

    /// A word split into several after expansion (EXPOSE).
    pub(crate) fn words(&mut self, w: &str) -> Result<Vec<String>, SourceError> {
        if self.is_literal(w, true) && !w.chars().any(char::is_whitespace) {
            return Ok(if w.is_empty() {
                Vec::new()
            } else {
                vec![w.to_string()]
            });
        }
        let err =
            |e: crate::shell::ShellError| SourceError::new(self.loc.find(self.span, w), e.message);
        let words = self.lexer.process_words(w, self.env).map_err(err)?;
        if let Ok(p) = self.lexer.process_word(w, self.env) {
            self.matched.extend(p.matched);
        }
        Ok(words)
    }

    /// Expansion that only replaces variables (heredoc bodies): quotes kept.
    pub(crate) fn raw(&mut self, w: &str) -> Result<String, SourceError> {
        let mut lex = Lexer::new('\\');
        lex.skip_process_quotes = true;
        let p = lex
            .process_word(w, self.env)
            .map_err(|e| SourceError::new(self.loc.start(self.span), e.message))?;
        self.matched.extend(p.matched);
        Ok(p.value)
    }

    /// Human-readable form of an instruction line: variables that are set
    /// replaced, quotes and unknown variables kept; the keyword upper-cased.
    pub(crate) fn display(&self, original: &str) -> String {
        let mut text = if self.is_literal(original, false) {
            original.to_string()
        } else {
            let mut lex = self.lexer;
            lex.raw_quotes = true;
            lex.skip_unset_env = true;
            lex.process_word(original, self.env)
                .map(|p| p.value)
                .unwrap_or_else(|_| original.to_string())
        };
        let kw_len = text.find(' ').unwrap_or(text.len());
        text[..kw_len].make_ascii_uppercase();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut for words without `$`, quotes or escapes must give what
    /// the lexer gives.
    #[test]
    fn literal_shortcut_agrees_with_the_lexer() {
        let mut env = EnvState::default();
        env.set("A", "x");
        let loc = Locator::empty();
        let span = Span {
            start_line: 1,
            end_line: 1,
        };
        let samples = [
            "plain",
            "/usr/local/bin",
            "a=b",
            "{x}",
            "~/.cache",
            "100%",
            "a,b;c|d&e",
            "é ünïcode",
            "*.go",
            "[x]",
            "#hash",
            "",
        ];
        for lexer in [Lexer::new('\\'), Lexer::new('`')] {
            let mut exp = Expander::new(lexer, &env, &loc, span);
            for w in samples {
                assert!(exp.is_literal(w, true), "{w}");
                assert_eq!(
                    exp.word(w).unwrap(),
                    lexer.process_word(w, &env).unwrap().value,
                    "{w}"
                );
                assert_eq!(
                    exp.words(w).unwrap(),
                    lexer.process_words(w, &env).unwrap(),
                    "{w}"
                );
            }
            assert!(!exp.is_literal("$A", true));
            assert!(!exp.is_literal("'q'", true));
            assert!(exp.is_literal("'q'", false));
            assert_eq!(exp.word("$A").unwrap(), "x");
            assert_eq!(exp.matched.iter().collect::<Vec<_>>(), ["A"]);
        }
        let exp = Expander::new(Lexer::new('\\'), &env, &loc, span);
        assert!(!exp.is_literal("a\\b", true));
        let exp = Expander::new(Lexer::new('`'), &env, &loc, span);
        assert!(!exp.is_literal("a`b", true));
        assert!(exp.is_literal("a\\b", true));
        assert_eq!(exp.display("run echo $A 'q'"), "RUN echo x 'q'");
    }
}
