//! COPY source wildcards: Go's `filepath.Match` per path component (what
//! BuildKit uses), plus `**` across directories for `COPY --parents`.
//!
//! `*` matches any run of characters within one name (dotfiles included),
//! `?` one character, `[...]` a class (`^` negates, `a-z` ranges, `\`
//! escapes) and `\x` a literal `x`. A malformed pattern is an error even when
//! no name is ever tested against it, as in Go.

use std::fmt;

/// A pattern that Go's `filepath.Match` would reject with `ErrBadPattern`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error in pattern {pattern:?}: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyChar,
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// One path component of a source pattern, compiled.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ComponentPattern {
    source: String,
    tokens: Vec<Token>,
}

impl fmt::Debug for ComponentPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ComponentPattern({:?})", self.source)
    }
}

/// Whether `component` has an unescaped `*`, `?` or `[` (BuildKit's
/// `containsWildcards`): only then is it matched rather than looked up.
pub(super) fn has_wildcard(component: &str) -> bool {
    let mut chars = component.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

impl ComponentPattern {
    /// Compiles one component (no `/`).
    pub(super) fn new(pattern: &str) -> Result<Self, BadPattern> {
        let bad = |reason| BadPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    // Consecutive stars mean the same as one.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::AnyChar),
                '\\' => match chars.next() {
                    Some(escaped) => tokens.push(Token::Literal(escaped)),
                    None => return Err(bad("trailing backslash")),
                },
                '[' => {
                    let negated = chars.next_if_eq(&'^').is_some();
                    let mut ranges = Vec::new();
                    loop {
                        match chars.peek() {
                            None => return Err(bad("unterminated character class")),
                            Some(']') if !ranges.is_empty() => {
                                chars.next();
                                break;
                            }
                            _ => {}
                        }
                        let lo =
                            class_char(&mut chars).ok_or_else(|| bad("bad character class"))?;
                        let hi = if chars.next_if_eq(&'-').is_some() {
                            class_char(&mut chars).ok_or_else(|| bad("bad character range"))?
                        } else {
                            lo
                        };
                        if hi < lo {
                            return Err(bad("bad character range"));
                        }
                        ranges.push((lo, hi));
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Self {
            source: pattern.to_owned(),
            tokens,
        })
    }

    /// Whether this component is exactly `**`.
    pub(crate) fn is_double_star(&self) -> bool {
        self.source == "**"
    }

    #[cfg(test)]
    pub(super) fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `name` (one path component) matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        match_tokens(&self.tokens, &name)
    }
}

/// One element of a class: a character, possibly escaped. `-` and `]` must
/// be escaped to stand for themselves, as in Go.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    match chars.next()? {
        '-' | ']' => None,
        '\\' => chars.next(),
        c => Some(c),
    }
}

fn match_tokens(tokens: &[Token], name: &[char]) -> bool {
    // Iterative matching with one backtrack point per star: linear in
    // practice and never exponential, whatever the pattern.
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            Some(tok) if single_matches(tok, name[n]) => {
                t += 1;
                n += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((st, sn)) => {
                t = st + 1;
                n = sn + 1;
                star = Some((st, sn + 1));
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

fn single_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::AnyChar => true,
        Token::Star => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
    }
}

/// Splits a cleaned absolute source path; components after the first one
/// with a wildcard are all compiled (a literal one then matches only
/// itself), the ones before it are looked up directly.
pub(crate) fn split(path: &str) -> Result<(Vec<String>, Vec<ComponentPattern>), BadPattern> {
    let mut prefix = Vec::new();
    let mut rest = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if rest.is_empty() && !has_wildcard(part) {
            prefix.push(part.to_owned());
        } else {
            rest.push(ComponentPattern::new(part)?);
        }
    }
    Ok((prefix, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        ComponentPattern::new(pattern).unwrap().matches(name)
    }

    #[test]
    fn go_match_semantics() {
        assert!(m("*", "abc"));
        assert!(m("*", ".hidden"));
        assert!(m("*", ""));
        assert!(m("a*", "a"));
        assert!(m("a*c", "abbbc"));
        assert!(!m("a*c", "abbbd"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(m("?", "x"));
        assert!(!m("?", "xy"));
        assert!(m("[abc]", "b"));
        assert!(!m("[^abc]", "b"));
        assert!(m("[^abc]", "d"));
        assert!(m("[a-c]x", "bx"));
        assert!(m("[\\]]", "]"));
        assert!(m("[\\-]", "-"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("f*.go", "foo.go"));
        assert!(m("**", "anything"));
        assert!(m("test-äöü.txt", "test-äöü.txt"));
        assert!(m("test-?öü.txt", "test-äöü.txt"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in ["[", "[]", "[a", "a\\", "[-]", "[z-a]", "[a-]"] {
            assert!(ComponentPattern::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcard_detection_and_split() {
        assert!(has_wildcard("a*"));
        assert!(has_wildcard("[ab]"));
        assert!(!has_wildcard("a\\*"));
        assert!(!has_wildcard("plain"));
        let (prefix, rest) = split("/sub/*/dir2/foo").unwrap();
        assert_eq!(prefix, vec!["sub"]);
        let rest: Vec<_> = rest.iter().map(|p| p.as_str().to_owned()).collect();
        assert_eq!(rest, vec!["*", "dir2", "foo"]);
        let (prefix, rest) = split("/a/b").unwrap();
        assert_eq!((prefix.len(), rest.len()), (2, 0));
    }
}
