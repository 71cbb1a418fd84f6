//! .dockerignore with Docker semantics (moby patternmatcher), not gitignore.
//!
//! Reading follows BuildKit's reader: a UTF-8 BOM is dropped, a line whose
//! first character is `#` is a comment, other lines are trimmed and skipped
//! when empty, `!` marks an exception (re-include), and each pattern is
//! cleaned like Go's `filepath.Clean` with a leading `/` removed, so `/a`,
//! `./a` and `a/b/..` all mean `a`.
//!
//! Matching follows moby's `patternmatcher`: a pattern is translated to a
//! regex (`*` and `?` never cross `/`, `**` spans any number of directories,
//! `[...]` classes, `\` escapes), a path is excluded when the *last* pattern
//! that matches the path or one of its parent directories is not an exception,
//! and the context root itself is never excluded. Docker's fast paths for
//! patterns that are literal apart from a leading or trailing `**` are kept,
//! because they answer differently from the regex in corner cases (`**foo`
//! matches `xfoo`, `foo**` matches `foobar/baz`).
//!
//! Deliberate differences from moby, all in corners a real file should never
//! reach: `\x` outside a class always means a literal `x` (moby hands `\d`,
//! `\n`, ... to Go's regex engine); `*` and `?` inside `[...]` are literal
//! (moby produces a broken regex); `^` is always literal (moby makes it an
//! anchor once the pattern has a wildcard). And where BuildKit's context
//! walker reuses results of parent directories in a way that can disagree
//! with `MatchesOrParentMatches` (an include pattern repeated after an
//! exception), [`PatternMatcher::matches_under`] gives the same answer as
//! [`PatternMatcher::matches`].

use regex::Regex;

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPattern {
    #[error("an exception needs a pattern after '!'")]
    LoneExclamation,
    #[error("unterminated character class")]
    UnterminatedClass,
    #[error("character class is empty or starts with '-' or ']'")]
    BadClassElement,
    #[error("escape character at the end of the pattern")]
    TrailingEscape,
    #[error("invalid regex translation: {0}")]
    Regex(String),
}

/// A .dockerignore pattern that cannot be used; Docker refuses the build too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .dockerignore pattern {pattern:?}{}", on_line(.line))]
pub struct DockerIgnoreError {
    pub pattern: String,
    /// 1-based line in the .dockerignore file, when the pattern came from one.
    pub line: Option<usize>,
    #[source]
    pub kind: BadPattern,
}

fn on_line(line: &Option<usize>) -> String {
    line.map(|l| format!(" on line {l}")).unwrap_or_default()
}

/// The patterns of a .dockerignore file, in order, as BuildKit's reader
/// returns them: cleaned, relative, exceptions prefixed with `!`.
pub fn read_patterns(contents: &str) -> Vec<String> {
    read_numbered(contents)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// [`read_patterns`] with the 1-based line number of each pattern.
fn read_numbered(contents: &str) -> Vec<(usize, String)> {
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
    let mut out = Vec::new();
    for (index, line) in contents.split('\n').enumerate() {
        // Comments are recognised before trimming: "  # x" is a pattern.
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let exception = pattern.starts_with('!');
        if exception {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if exception {
            cleaned.insert(0, '!');
        }
        out.push((index + 1, cleaned));
    }
    out
}

/// Go's `filepath.Clean` for slash-separated paths.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // `..` above the root of a rooted path is the root itself.
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// The Dockerfile-specific ignore file for a Dockerfile at `dockerfile`
/// (relative to wherever the Dockerfile was read from): `<path>.dockerignore`.
pub fn dockerfile_ignore_path(dockerfile: &str) -> String {
    format!("{dockerfile}.dockerignore")
}

/// Picks the ignore file that applies: `<Dockerfile>.dockerignore` beside
/// the Dockerfile wins over the context's `.dockerignore`. Each argument is
/// the file's contents if the file exists.
pub fn select_ignore_file<'a>(
    dockerfile_specific: Option<&'a str>,
    context_root: Option<&'a str>,
) -> Option<&'a str> {
    dockerfile_specific.or(context_root)
}

/// How a pattern is tested. Docker answers literal patterns with a leading
/// or trailing `**` by string tests rather than its regex, and the two differ
/// in corner cases, so the distinction is kept.
#[derive(Debug, Clone)]
enum Test {
    /// The whole path equals the pattern.
    Exact,
    /// `lit**`: the path starts with `lit`.
    Prefix(String),
    /// `**lit`: the path ends with `lit`, or `lit` is `/x` and the path is `x`.
    Suffix(String),
    Regex(Regex),
}

/// One parsed pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The cleaned pattern, without its `!`.
    text: String,
    exception: bool,
    test: Test,
    /// Leading path components free of wildcards; everything this pattern
    /// matches lies under them. `None` when the pattern is entirely literal.
    literal_dirs: Option<Vec<String>>,
}

impl Pattern {
    /// Parses one pattern as it comes from [`read_patterns`] (or as given to
    /// `docker build`'s API): trimmed, cleaned, `!` for an exception.
    pub fn new(raw: &str) -> Result<Self, DockerIgnoreError> {
        let error = |kind| DockerIgnoreError {
            pattern: raw.to_owned(),
            line: None,
            kind,
        };
        let trimmed = raw.trim();
        let cleaned = clean(trimmed);
        let (exception, text) = match cleaned.strip_prefix('!') {
            Some("") => return Err(error(BadPattern::LoneExclamation)),
            Some(rest) => (true, rest.to_owned()),
            None => (false, cleaned),
        };
        validate_glob(&text).map_err(error)?;
        let test = compile(&text).map_err(error)?;
        let literal_dirs = literal_dirs(&text);
        Ok(Self {
            text,
            exception,
            test,
            literal_dirs,
        })
    }

    /// The cleaned pattern without its `!`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is a `!` exception that re-includes what it matches.
    pub fn is_exception(&self) -> bool {
        self.exception
    }

    /// Whether the pattern matches `path` itself (no parent rule).
    pub fn matches_path(&self, path: &str) -> bool {
        match &self.test {
            Test::Exact => path == self.text,
            Test::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Test::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Test::Regex(re) => re.is_match(path),
        }
    }

    /// Whether the pattern could match some path strictly inside `dir`.
    fn may_match_inside(&self, dir: &[&str]) -> bool {
        match &self.literal_dirs {
            // Fully literal: it names exactly one path.
            None => {
                let parts: Vec<&str> = self.text.split('/').collect();
                parts.len() > dir.len() && parts[..dir.len()] == *dir
            }
            // The wildcard part may sit at any depth below the literal part.
            Some(lits) => lits.iter().zip(dir).all(|(l, d)| l == d),
        }
    }
}

/// Rejects what Go's `filepath.Match` rejects: unterminated or malformed
/// `[...]` and a trailing `\`.
fn validate_glob(pattern: &str) -> Result<(), BadPattern> {
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next().ok_or(BadPattern::TrailingEscape)?;
            }
            '[' => {
                if chars.peek() == Some(&'^') {
                    chars.next();
                }
                let mut ranges = 0;
                loop {
                    match chars.peek() {
                        None => return Err(BadPattern::UnterminatedClass),
                        Some(']') if ranges > 0 => {
                            chars.next();
                            break;
                        }
                        _ => {}
                    }
                    class_char(&mut chars)?;
                    if chars.peek() == Some(&'-') {
                        chars.next();
                        class_char(&mut chars)?;
                    }
                    ranges += 1;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One (possibly escaped) character of a class element.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, BadPattern> {
    match chars.next() {
        None => Err(BadPattern::UnterminatedClass),
        Some('-' | ']') => Err(BadPattern::BadClassElement),
        Some('\\') => chars.next().ok_or(BadPattern::UnterminatedClass),
        Some(c) => Ok(c),
    }
}

fn push_literal(out: &mut String, c: char) {
    out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
}

/// Translates a validated pattern the way moby does, deciding between its
/// string fast paths and a regex.
fn compile(pattern: &str) -> Result<Test, BadPattern> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut kind = Kind::Exact;
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/` is `**`: the slash is part of the "any directories".
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Kind::Regex;
            }
            '\\' => {
                let escaped = chars.next().ok_or(BadPattern::TrailingEscape)?;
                push_literal(&mut re, escaped);
                kind = Kind::Regex;
            }
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'^') {
                    chars.next();
                    re.push('^');
                }
                let mut ranges = 0;
                loop {
                    if chars.peek() == Some(&']') && ranges > 0 {
                        chars.next();
                        break;
                    }
                    let lo = class_char(&mut chars)?;
                    push_literal(&mut re, lo);
                    if chars.peek() == Some(&'-') {
                        chars.next();
                        let hi = class_char(&mut chars)?;
                        re.push('-');
                        push_literal(&mut re, hi);
                    }
                    ranges += 1;
                }
                re.push(']');
                kind = Kind::Regex;
            }
            // A stray `]` is literal, but moby still switches to its regex.
            ']' => {
                push_literal(&mut re, c);
                kind = Kind::Regex;
            }
            _ => push_literal(&mut re, c),
        }
        first = false;
    }
    Ok(match kind {
        Kind::Exact => Test::Exact,
        Kind::Prefix => Test::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Kind::Suffix => Test::Suffix(pattern[2..].to_owned()),
        Kind::Regex => {
            re.push('$');
            Test::Regex(Regex::new(&re).map_err(|e| BadPattern::Regex(e.to_string()))?)
        }
    })
}

/// The leading components of `pattern` free of wildcard characters, or
/// `None` when the whole pattern is literal.
fn literal_dirs(pattern: &str) -> Option<Vec<String>> {
    let parts: Vec<&str> = pattern.split('/').collect();
    let wild = parts
        .iter()
        .position(|p| p.contains(['*', '?', '[', ']', '\\']))?;
    Some(parts[..wild].iter().map(|p| (*p).to_owned()).collect())
}

/// Per-pattern results for one directory, handed down to its entries so that
/// a walker does not re-test every ancestor of every path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchState {
    /// For each pattern: it matched this directory or one of its ancestors.
    hits: Vec<bool>,
}

/// A parsed .dockerignore: decides which context paths are excluded.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exceptions: bool,
}

impl PatternMatcher {
    /// Parses patterns as [`read_patterns`] returns them. Blank entries are
    /// skipped.
    pub fn new<I, S>(patterns: I) -> Result<Self, DockerIgnoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for raw in patterns {
            let raw = raw.as_ref();
            if raw.trim().is_empty() {
                continue;
            }
            parsed.push(Pattern::new(raw)?);
        }
        Ok(Self::from_parsed(parsed))
    }

    /// Reads a .dockerignore file and parses its patterns; errors name the
    /// line.
    pub fn from_dockerignore(contents: &str) -> Result<Self, DockerIgnoreError> {
        let mut parsed = Vec::new();
        for (line, raw) in read_numbered(contents) {
            parsed.push(Pattern::new(&raw).map_err(|e| DockerIgnoreError {
                line: Some(line),
                ..e
            })?);
        }
        Ok(Self::from_parsed(parsed))
    }

    fn from_parsed(patterns: Vec<Pattern>) -> Self {
        let exceptions = patterns.iter().any(Pattern::is_exception);
        Self {
            patterns,
            exceptions,
        }
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception (moby's `Exclusions()`). Without
    /// exceptions an excluded directory can always be skipped whole.
    pub fn exclusions(&self) -> bool {
        self.exceptions
    }

    /// Whether `path` (relative to the context, `/`-separated) is excluded:
    /// the last pattern that matches it or one of its parent directories
    /// decides, and an exception re-includes. The context root (`.` or empty)
    /// is never excluded.
    pub fn matches(&self, path: &str) -> bool {
        let Some(path) = normalize(path) else {
            return false;
        };
        let parents: Vec<usize> = path.match_indices('/').map(|(i, _)| i).collect();
        let hit = |p: &Pattern| {
            p.matches_path(&path) || parents.iter().any(|&i| p.matches_path(&path[..i]))
        };
        self.patterns
            .iter()
            .rev()
            .find(|p| hit(p))
            .is_some_and(|p| !p.exception)
    }

    /// The state for entries at the top of the context.
    pub fn root_state(&self) -> MatchState {
        MatchState {
            hits: vec![false; self.patterns.len()],
        }
    }

    /// [`PatternMatcher::matches`] for a walker: `parent` is the state of the
    /// directory that holds `path` ([`PatternMatcher::root_state`] at the top).
    /// Returns whether `path` is excluded and, for a directory, the state to
    /// hand to its entries.
    pub fn matches_under(&self, path: &str, parent: &MatchState) -> (bool, MatchState) {
        let Some(path) = normalize(path) else {
            return (false, self.root_state());
        };
        let hits: Vec<bool> = self
            .patterns
            .iter()
            .enumerate()
            .map(|(i, p)| parent.hits.get(i).copied().unwrap_or(false) || p.matches_path(&path))
            .collect();
        let excluded = hits
            .iter()
            .rposition(|&h| h)
            .is_some_and(|i| !self.patterns[i].exception);
        (excluded, MatchState { hits })
    }

    /// For an excluded directory: whether a later `!` exception could still
    /// re-include something inside it, so that the walker must descend. When
    /// this is false the whole directory can be skipped. A directory that is
    /// not excluded always needs walking, so the answer is true.
    ///
    /// As in BuildKit, a directory entered only for the sake of re-included
    /// entries is itself sent (so those entries have a parent), but nothing
    /// else inside it is.
    pub fn dir_may_contain_included(&self, dir: &str) -> bool {
        let Some(dir) = normalize(dir) else {
            return true;
        };
        if !self.matches(&dir) {
            return true;
        }
        if !self.exceptions {
            return false;
        }
        // The excluding pattern is the last plain one that matches the
        // directory or a parent; only exceptions after it can win below it.
        let parents: Vec<usize> = dir.match_indices('/').map(|(i, _)| i).collect();
        let Some(winner) = self.patterns.iter().rposition(|p| {
            !p.exception
                && (p.matches_path(&dir) || parents.iter().any(|&i| p.matches_path(&dir[..i])))
        }) else {
            return true;
        };
        let components: Vec<&str> = dir.split('/').collect();
        self.patterns[winner + 1..]
            .iter()
            .any(|p| p.exception && p.may_match_inside(&components))
    }
}

/// Cleans a path given to the matcher; `None` for the context root.
fn normalize(path: &str) -> Option<String> {
    let cleaned = clean(path);
    let cleaned = cleaned.trim_start_matches('/');
    (!cleaned.is_empty() && cleaned != ".").then(|| cleaned.to_owned())
}
