//! BuildKit's shell lexer: quote removal, escapes, `$VAR`/`${VAR...}` expansion
//! and word splitting, as used for the arguments of ENV, ARG, COPY, FROM, ...
//!
//! The behaviour follows BuildKit's `shell.Lex` and is pinned by the shared
//! fixtures in `../shared/conformance/moby-shell` (see
//! `frontend/tests/shell_conformance.rs`).
//!
//! # Calling it from the instruction layer
//!
//! - ENV, ARG, LABEL, WORKDIR, USER, COPY/ADD sources and destination, FROM,
//!   `--mount` options, ...: one word at a time with
//!   `Lexer::new(escape).process_word(word, &env)`, where `escape` is the
//!   Dockerfile's escape character (`\` unless `# escape=` says otherwise) and
//!   `env` the stage's variables (ENV, then the ARGs in scope). The result's
//!   `matched` set names the variables used, which is what reports unused
//!   build args; `unmatched` names the ones referenced but unset.
//!   [`Lexer::expand`] is the shortcut when only the text is wanted.
//! - EXPOSE: [`Lexer::process_words`], since one argument may expand to
//!   several ports.
//! - Heredoc bodies that are expanded (`<<EOF`, not `<<'EOF'`): a lexer with
//!   `skip_process_quotes` set, so that the quotes of the script survive and
//!   only `$VAR` is replaced.
//! - Finding heredoc words on a line: [`Lexer::for_heredoc_search`] with
//!   [`Lexer::process_words`] and an empty environment ([`NoEnv`]).
//!
//! # Deliberate choices where BuildKit's behaviour is odd
//!
//! - Reproduced: in words mode, expanding `${VAR` followed by a modifier
//!   (`-`, `+`, `?`, `:`, `#`, `%`, `/`) drops the text of the current word
//!   that came before the `${` (`abc${X:-y}def` gives `["ydef"]`). BuildKit's
//!   parser finds heredoc words this way, so matching it keeps our heredoc
//!   detection identical (`cat <<EOF${X:-}` is no heredoc there either).
//!   Single-word mode is not affected.
//! - Reproduced: shell patterns in `${V#p}`, `${V%p}` and `${V/p/r}` know
//!   `*`, `?` and `\` escapes but no bracket expressions: `[` is literal, as
//!   in BuildKit.
//! - Not reproduced: with `skip_unset_env`, BuildKit writes an unset
//!   `${V//p/r}` back as `${V/p/r}`; we keep the `//` as written.
//! - Not reproduced: with `raw_escapes`, BuildKit doubles an escape character
//!   that escapes nothing inside double quotes (`"a\tb"` gives `"a\\tb"`); we
//!   keep the source text. Heredoc names come out the same either way.
//! - Error messages are our own wording but carry the same facts
//!   (`${V:?msg}` gives `V: msg`).

mod pattern;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use unicode_general_category::{GeneralCategory, get_general_category};

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
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `KEY=VALUE` pairs in order; the last assignment of a key wins.
impl Env for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

/// Lets a reference (for instance `&&[(String, String)]`, whose target is
/// unsized) be passed where `&dyn Env` is expected.
impl<T: Env + ?Sized> Env for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// An environment in which no variable is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _name: &str) -> Option<&str> {
        None
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
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// The lexer BuildKit's parser uses to find heredoc words on a line:
    /// escape `\` whatever the escape directive says, quotes and escapes kept,
    /// unset variables left as written. Use it with [`Lexer::process_words`]
    /// and [`NoEnv`]; each word is then matched against the heredoc pattern,
    /// and `<<` followed by whitespace stays joined to the next word.
    pub fn for_heredoc_search() -> Self {
        Self {
            escape: '\\',
            raw_quotes: true,
            raw_escapes: true,
            skip_unset_env: true,
            skip_process_quotes: false,
        }
    }

    /// Single-word mode: quotes removed, escapes applied, variables expanded,
    /// spaces kept.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Processed, ShellError> {
        let mut walker = Walker::new(self, env, word);
        let out = walker.run(word)?;
        Ok(Processed {
            value: out.text,
            matched: walker.matched,
            unmatched: walker.unmatched,
        })
    }

    /// Words mode: expansion, then splitting of the expanded text on
    /// whitespace outside quotes.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let mut walker = Walker::new(self, env, word);
        Ok(walker.run(word)?.words)
    }

    /// [`Lexer::process_word`] for callers that only want the text.
    pub fn expand(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        self.process_word(word, env).map(|p| p.value)
    }
}

/// What one pass over (part of) the input produced, in both modes at once.
struct Output {
    text: String,
    words: Vec<String>,
}

/// One run of the lexer over one input.
struct Walker<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    chars: Vec<char>,
    pos: usize,
    /// Whether escape characters are kept right now: nested words (modifier
    /// arguments, patterns) switch it for their own duration.
    raw_escapes: bool,
    /// The word being built in words mode. It is shared with nested passes on
    /// purpose: BuildKit's nested passes reset it, which is the words-mode
    /// quirk described in the module documentation.
    word: String,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a> Walker<'a> {
    fn new(lexer: &'a Lexer, env: &'a dyn Env, input: &str) -> Self {
        Self {
            lexer,
            env,
            chars: input.chars().collect(),
            pos: 0,
            raw_escapes: lexer.raw_escapes,
            word: String::new(),
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn run(&mut self, source: &str) -> Result<Output, ShellError> {
        let raw = self.lexer.raw_escapes;
        self.process(None, raw).map_err(|detail| ShellError {
            message: format!("failed to process {source:?}: {detail}"),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    /// The source text of a substitution starting at `start`, up to and
    /// including its closing brace if there is one, for error messages.
    fn substitution_text(&self, start: usize) -> String {
        let rest = &self.chars[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == '}')
            .map_or(self.chars.len(), |i| self.pos + i + 1);
        self.chars[start..end].iter().collect()
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(value) => {
                self.matched.insert(name.to_owned());
                Some(value.to_owned())
            }
            None => {
                self.unmatched.insert(name.to_owned());
                None
            }
        }
    }

    /// Adds one character to the current word, ending the word at whitespace.
    fn push_split(&mut self, ch: char, words: &mut Vec<String>) {
        if ch.is_whitespace() {
            if !self.word.is_empty() {
                words.push(std::mem::take(&mut self.word));
            }
        } else {
            self.word.push(ch);
        }
    }

    fn finish_word(&mut self, words: &mut Vec<String>) {
        if !self.word.is_empty() {
            words.push(std::mem::take(&mut self.word));
        }
    }

    /// Processes input up to `stop` (consumed) or, without `stop`, to the end.
    fn process(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<Output, String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.process_inner(stop);
        self.raw_escapes = saved;
        result
    }

    fn process_inner(&mut self, stop: Option<char>) -> Result<Output, String> {
        self.word.clear();
        let mut text = String::new();
        let mut words = Vec::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                self.finish_word(&mut words);
                return Ok(Output { text, words });
            }
            match ch {
                '$' => {
                    let value = self.dollar()?;
                    text.push_str(&value);
                    // Expanded text is split on its whitespace, like sh does.
                    for c in value.chars() {
                        self.push_split(c, &mut words);
                    }
                }
                '\'' | '"' if !self.lexer.skip_process_quotes => {
                    let value = if ch == '\'' {
                        self.single_quoted()?
                    } else {
                        self.double_quoted()?
                    };
                    text.push_str(&value);
                    self.word.push_str(&value);
                }
                '<' => {
                    let value = self.angle();
                    text.push_str(&value);
                    self.word.push_str(&value);
                }
                _ => {
                    self.pos += 1;
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            text.push(ch);
                            self.word.push(ch);
                        }
                        // A trailing escape character escapes nothing and vanishes.
                        let Some(escaped) = self.next() else { break };
                        text.push(escaped);
                        self.word.push(escaped);
                    } else {
                        text.push(ch);
                        self.push_split(ch, &mut words);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of input while looking for '{stop}'"
            ));
        }
        self.finish_word(&mut words);
        Ok(Output { text, words })
    }

    /// `<`, or `<<` with the whitespace after it, which stays in the same word
    /// so that `<<  EOF` is found as one heredoc word.
    fn angle(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".to_owned();
        }
        self.pos += 1;
        let mut out = "<<".to_owned();
        while let Some(c @ (' ' | '\t' | '\n' | '\r' | '\u{c}')) = self.peek() {
            out.push(c);
            self.pos += 1;
        }
        out
    }

    /// `'...'`: everything literal, no escapes.
    fn single_quoted(&mut self) -> Result<String, String> {
        let raw = self.lexer.raw_quotes;
        let mut out = String::new();
        self.pos += 1;
        if raw {
            out.push('\'');
        }
        loop {
            match self.next() {
                None => return Err("unterminated quote: missing closing '".to_owned()),
                Some('\'') => {
                    if raw {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"..."`: variables expand; the escape character escapes only `"`, `$`
    /// and itself and is kept literally before anything else.
    fn double_quoted(&mut self) -> Result<String, String> {
        let raw = self.lexer.raw_quotes;
        let escape = self.lexer.escape;
        let mut out = String::new();
        self.pos += 1;
        if raw {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => return Err("unterminated quote: missing closing \"".to_owned()),
                Some('"') => {
                    self.pos += 1;
                    if raw {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    out.push_str(&value);
                }
                Some(c) => {
                    self.pos += 1;
                    if c != escape {
                        out.push(c);
                        continue;
                    }
                    match self.peek() {
                        // The closing quote is missing; the next round says so.
                        None => {
                            if self.raw_escapes {
                                out.push(c);
                            }
                        }
                        Some(next) if next == '"' || next == '$' || next == escape => {
                            self.pos += 1;
                            if self.raw_escapes {
                                out.push(c);
                            }
                            out.push(next);
                        }
                        Some(_) => out.push(c),
                    }
                }
            }
        }
    }

    /// A variable name: letters, digits and `_`, or all digits (positional
    /// parameters), or one special parameter character.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if is_digit(c) => {
                while let Some(c) = self.peek().filter(|&c| is_digit(c)) {
                    name.push(c);
                    self.pos += 1;
                }
                return name;
            }
            Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
                self.pos += 1;
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(c) = self
            .peek()
            .filter(|&c| is_letter(c) || is_digit(c) || c == '_')
        {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    /// `$NAME` or `${...}`, with the scanner on the `$`.
    fn dollar(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(format!("missing '}}' in {}", self.substitution_text(start))),
            Some('{' | '}' | ':') => {
                return Err(format!(
                    "bad substitution: {}",
                    self.substitution_text(start)
                ));
            }
            Some(_) => {}
        }
        let name = self.name();
        let Some(op) = self.next() else {
            return Err(format!("missing '}}' in {}", self.substitution_text(start)));
        };
        match op {
            '}' => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '-' | '+' | '?' | '#' | '%' => self.modifier(start, name, op),
            '/' => self.replace(start, name),
            _ => Err(format!(
                "bad substitution: {}: unsupported modifier '{op}'",
                self.substitution_text(start)
            )),
        }
    }

    /// `${NAME<op>word}` for the `-`, `+`, `?`, `#`, `%` families, with the
    /// scanner after `op`.
    fn modifier(&mut self, start: usize, name: String, op: char) -> Result<String, String> {
        let (colon, op) = if op == ':' {
            (true, self.next())
        } else {
            (false, Some(op))
        };
        let mut written = String::from(if colon { ":" } else { "" });
        written.extend(op);
        if colon && matches!(op, Some('#' | '%')) {
            return Err(format!(
                "bad substitution: {}: unsupported modifier '{written}'",
                self.substitution_text(start)
            ));
        }
        // Patterns keep their escapes: the pattern syntax gives them meaning.
        let is_pattern = matches!(op, Some('#' | '%'));
        let word = match self.process(Some('}'), is_pattern) {
            Ok(out) => out.text,
            Err(_) if self.at_end() => {
                return Err(format!("missing '}}' in {}", self.substitution_text(start)));
            }
            Err(e) => return Err(e),
        };
        let value = self.lookup(&name);
        if value.is_none() && self.lexer.skip_unset_env {
            return Ok(format!("${{{name}{written}{word}}}"));
        }
        // The `:` forms treat an empty value like an unset one.
        let present = value.as_deref().is_some_and(|v| !(colon && v.is_empty()));
        match op {
            Some('-') => Ok(if present {
                value.unwrap_or_default()
            } else {
                word
            }),
            Some('+') => Ok(if present { word } else { String::new() }),
            Some('?') => match value {
                Some(v) if present => Ok(v),
                _ => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_owned()
                    } else {
                        "is not allowed to be empty".to_owned()
                    };
                    Err(format!("{name}: {message}"))
                }
            },
            Some(op @ ('#' | '%')) => {
                // A doubled operator asks for the longest match.
                let (pattern, greedy) = match word.strip_prefix(op) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let value = value.unwrap_or_default();
                let trimmed = if op == '#' {
                    pattern::trim_prefix(pattern, &value, greedy)
                } else {
                    pattern::trim_suffix(pattern, &value, greedy)
                };
                trimmed.map_err(|e| {
                    format!("invalid pattern {pattern:?} in {}: {e}", self.text(start))
                })
            }
            _ => Err(format!(
                "bad substitution: {}: unsupported modifier '{written}'",
                self.text(start)
            )),
        }
    }

    /// `${NAME/pattern/replacement}` and `${NAME//pattern/replacement}`, with
    /// the scanner after the first `/`.
    fn replace(&mut self, start: usize, name: String) -> Result<String, String> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let pattern = match self.process(Some('/'), true) {
            Ok(out) => out.text,
            Err(_) if self.at_end() => {
                return Err(format!("missing '/' in {}", self.text(start)));
            }
            Err(e) => return Err(e),
        };
        let replacement = match self.process(Some('}'), true) {
            Ok(out) => out.text,
            Err(_) if self.at_end() => {
                return Err(format!("missing '}}' in {}", self.text(start)));
            }
            Err(e) => return Err(e),
        };
        let value = self.lookup(&name);
        if value.is_none() && self.lexer.skip_unset_env {
            let slashes = if all { "//" } else { "/" };
            return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
        }
        let value = value.unwrap_or_default();
        pattern::replace(&pattern, &value, &replacement, all)
            .map_err(|e| format!("invalid pattern {pattern:?} in {}: {e}", self.text(start)))
    }

    /// The source text from `start` to the scanner, for error messages.
    fn text(&self, start: usize) -> String {
        self.chars[start..self.pos].iter().collect()
    }
}

/// Go's `unicode.IsDigit`: decimal digits of any script.
fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
        || (!c.is_ascii() && get_general_category(c) == GeneralCategory::DecimalNumber)
}

/// Go's `unicode.IsLetter`: the general categories L*.
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::UppercaseLetter
            | GeneralCategory::LowercaseLetter
            | GeneralCategory::TitlecaseLetter
            | GeneralCategory::ModifierLetter
            | GeneralCategory::OtherLetter
    )
}
