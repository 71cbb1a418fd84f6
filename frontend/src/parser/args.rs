//! Per-keyword argument splitting (BuildKit's dispatch table of line
//! parsers): JSON form, whitespace lists, ENV/LABEL pairs, ARG words,
//! HEALTHCHECK, ONBUILD.

use super::ast::Node;
use super::dump::go_lower_char;
use super::json::{JsonArray, parse_json_array};
use super::line::{is_byte_space, rest_from, split_command, split_token_space};

/// A parse error inside one logical line; `offset` is a byte offset into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

impl LineError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
        }
    }
}

/// How a keyword's arguments are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    Expose,
    From,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    Stopsignal,
    User,
    Volume,
    Workdir,
    Unknown,
}

impl Kind {
    /// Looks the keyword up the way upstream does, after Go's
    /// `strings.ToLower` (so `WOR\u{212a}DIR`, with a Kelvin sign, is WORKDIR).
    pub(crate) fn of(keyword: &str) -> Kind {
        // Keywords are short ASCII words; lower-case into a stack buffer to
        // look them up without allocating.
        let mut buf = [0u8; 11];
        let lower: &[u8] = if keyword.is_ascii() {
            if keyword.len() > buf.len() {
                return Kind::Unknown;
            }
            for (d, s) in buf.iter_mut().zip(keyword.bytes()) {
                *d = s.to_ascii_lowercase();
            }
            &buf[..keyword.len()]
        } else {
            // Go's lower-casing maps a few non-ASCII letters to ASCII ones
            // (KELVIN SIGN to `k`, U+0130 to `i`).
            let mut n = 0;
            for c in keyword.chars().map(go_lower_char) {
                if !c.is_ascii() || n == buf.len() {
                    return Kind::Unknown;
                }
                buf[n] = c as u8;
                n += 1;
            }
            &buf[..n]
        };
        match lower {
            b"add" => Kind::Add,
            b"arg" => Kind::Arg,
            b"cmd" => Kind::Cmd,
            b"copy" => Kind::Copy,
            b"entrypoint" => Kind::Entrypoint,
            b"env" => Kind::Env,
            b"expose" => Kind::Expose,
            b"from" => Kind::From,
            b"healthcheck" => Kind::Healthcheck,
            b"label" => Kind::Label,
            b"maintainer" => Kind::Maintainer,
            b"onbuild" => Kind::Onbuild,
            b"run" => Kind::Run,
            b"shell" => Kind::Shell,
            b"stopsignal" => Kind::Stopsignal,
            b"user" => Kind::User,
            b"volume" => Kind::Volume,
            b"workdir" => Kind::Workdir,
            _ => Kind::Unknown,
        }
    }

    /// RUN, COPY and ADD may carry heredocs.
    pub(crate) fn takes_heredocs(self) -> bool {
        matches!(self, Kind::Run | Kind::Copy | Kind::Add)
    }
}

/// BuildKit's `newNodeFromLine`: one instruction from the text of a logical
/// line. `base` is the offset of `line` in the logical line, for errors.
pub(crate) fn node_from_line(line: &str, base: usize, escape: char) -> Result<Node, LineError> {
    let split = split_command(line, escape);
    let kind = Kind::of(split.keyword);
    let rest_base = base + split.rest_offset;
    let mut node = Node {
        value: split.keyword.to_owned(),
        flags: split.flags,
        original: line.to_owned(),
        ..Node::default()
    };
    let rest: &str = &split.rest;
    match kind {
        Kind::From | Kind::Expose => node.next = whitespace_list(rest),
        Kind::Add | Kind::Copy | Kind::Volume => match json_form(rest, rest_base)? {
            Some(args) => {
                node.next = args;
                node.json = true;
            }
            None => node.next = whitespace_list(rest),
        },
        Kind::Run | Kind::Cmd | Kind::Entrypoint | Kind::Shell => {
            if let Some((args, json)) = maybe_json(rest, rest_base)? {
                node.next = args;
                node.json = json;
            }
        }
        Kind::Maintainer | Kind::User | Kind::Workdir | Kind::Stopsignal => {
            if !rest.is_empty() {
                node.next.push(arg(rest));
            }
        }
        Kind::Arg => {
            node.next = parse_words(rest, escape)
                .into_iter()
                .map(|(_, w)| arg(w))
                .collect()
        }
        Kind::Env => node.next = name_values(rest, rest_base, "ENV", escape)?,
        Kind::Label => node.next = name_values(rest, rest_base, "LABEL", escape)?,
        Kind::Healthcheck => {
            let (args, json) = health_config(rest, rest_base)?;
            node.next = args;
            node.json = json;
        }
        Kind::Onbuild => {
            if !rest.is_empty() {
                let inner = node_from_line(rest, rest_base, escape)?;
                node.next.push(Node {
                    children: vec![inner],
                    ..Node::default()
                });
            }
        }
        Kind::Unknown => node.next.push(Node::default()),
    }
    Ok(node)
}

fn arg(value: &str) -> Node {
    Node {
        value: value.to_owned(),
        ..Node::default()
    }
}

fn arg_owned(value: String) -> Node {
    Node {
        value,
        ..Node::default()
    }
}

/// `parseStringsWhitespaceDelimited`: one node per `[\t\v\f\r ]`-separated
/// piece; nothing for an empty text.
fn whitespace_list(rest: &str) -> Vec<Node> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_token_space(rest)
        .map(|(_, piece)| arg(piece))
        .collect()
}

/// `parseJSON`: `Some(args)` for exec form, `None` when the text is not a
/// JSON array (shell form), an error for an array with non-string members.
fn json_form(rest: &str, base: usize) -> Result<Option<Vec<Node>>, LineError> {
    let trimmed = rest.trim_start();
    let at = base + (rest.len() - trimmed.len());
    if !trimmed.starts_with('[') {
        return Ok(None);
    }
    match parse_json_array(trimmed) {
        JsonArray::Strings(items) => Ok(Some(items.into_iter().map(arg_owned).collect())),
        JsonArray::NotStrings(offset) => Err(LineError::new(
            at + offset,
            "when using JSON array syntax, arrays must be comprised of strings only",
        )),
        JsonArray::Invalid => Ok(None),
    }
}

/// `parseMaybeJSON`: exec form, or the whole text as one node. `None` for an
/// empty text; the flag says whether the arguments are exec form.
fn maybe_json(rest: &str, base: usize) -> Result<Option<(Vec<Node>, bool)>, LineError> {
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(match json_form(rest, base)? {
        Some(args) => (args, true),
        None => (vec![arg(rest)], false),
    }))
}

/// `parseHealthConfig`: the type word, then the command like CMD. Upstream
/// scans bytes here too (see [`is_byte_space`]).
fn health_config(rest: &str, base: usize) -> Result<(Vec<Node>, bool), LineError> {
    let b = rest.as_bytes();
    let sep = b.iter().position(|&c| is_byte_space(c)).unwrap_or(b.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let next = sep + b[sep..].iter().take_while(|&&c| is_byte_space(c)).count();
    let typ = if rest.is_char_boundary(sep) {
        rest[..sep].to_owned()
    } else {
        let mut end = sep;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        // The orphan lead bytes upstream keeps cannot live in a String.
        let mut t = rest[..end].to_owned();
        t.push_str(&"\u{fffd}".repeat(sep - end));
        t
    };
    let (cmd, cmd_offset) = rest_from(rest, next);
    let mut args = vec![arg_owned(typ)];
    let mut json = false;
    if let Some((cmd_args, is_json)) = maybe_json(&cmd, base + cmd_offset)? {
        args.extend(cmd_args);
        json = is_json;
    }
    Ok((args, json))
}

/// `parseNameVal` for ENV and LABEL: `KEY value...` (old form, three nodes
/// key, value, "") or `k=v k2=v2` (triples key, value, "=").
fn name_values(
    rest: &str,
    base: usize,
    keyword: &str,
    escape: char,
) -> Result<Vec<Node>, LineError> {
    let words = parse_words(rest, escape);
    let Some((_, first)) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let mut parts = split_token_space(rest);
        let (_, key) = parts.next().unwrap_or((0, rest));
        let Some((value_at, _)) = parts.next() else {
            return Err(LineError::new(
                base + rest.len(),
                format!("{keyword} must have two arguments"),
            ));
        };
        return Ok(vec![arg(key), arg(&rest[value_at..]), arg("")]);
    }
    let mut nodes = Vec::with_capacity(words.len() * 3);
    for (at, word) in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(LineError::new(
                base + at,
                format!(
                    "can't find = in {}; must be of the form: name=value",
                    super::dump::go_quote(word)
                ),
            ));
        };
        nodes.push(arg(key));
        nodes.push(arg(value));
        nodes.push(arg("="));
    }
    Ok(nodes)
}

/// BuildKit's `parseWords`: whitespace-separated words that keep their
/// quotes and escapes; returns each word with its byte offset in `rest`.
///
/// Since quotes and escapes are kept, a word is always a contiguous piece of
/// `rest`, except that an escape character ending the text is dropped.
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<(usize, &str)> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut start = 0;
    let mut quote = '\0';
    let mut blank_ok = false;
    // Where the current word ends (exclusive); lags behind when a trailing
    // escape character is dropped.
    let mut end = 0;
    let mut chars = rest.char_indices();
    while let Some((pos, ch)) = chars.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
            start = pos;
            end = pos;
        }
        let after = pos + ch.len_utf8();
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || end > start {
                    words.push((start, &rest[start..end]));
                }
                blank_ok = false;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                // The escaped character joins the word whatever it is; an
                // escape at the very end is dropped.
                if let Some((p, c)) = chars.next() {
                    end = p + c.len_utf8();
                }
                continue;
            }
            end = after;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            match chars.next() {
                Some((p, c)) => end = p + c.len_utf8(),
                // Upstream ends the quote here; the word is kept below.
                None => break,
            }
            continue;
        }
        end = after;
    }
    if phase != Phase::Spaces && (blank_ok || end > start) {
        words.push((start, &rest[start..end]));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<&str> {
        parse_words(s, '\\').into_iter().map(|(_, w)| w).collect()
    }

    #[test]
    fn word_splitter_keeps_quotes_and_escapes() {
        assert_eq!(words(r#"abc="123 456" def"#), [r#"abc="123 456""#, "def"]);
        assert_eq!(words(r"a\ b c"), [r"a\ b", "c"]);
        assert_eq!(words(r#"a\"b c"#), [r#"a\"b"#, "c"]);
        assert_eq!(words(r#"'a\' b"#), [r#"'a\'"#, "b"]);
        assert_eq!(words(r#""a\" b" c"#), [r#""a\" b""#, "c"]);
        assert_eq!(words(r"abc\"), ["abc"]);
        assert_eq!(words(r#""abc\"#), [r#""abc"#]);
        assert_eq!(words(r#""" x ''"#), [r#""""#, "x", "''"]);
        assert_eq!(words("\"unterminated x"), ["\"unterminated x"]);
        assert_eq!(words("a\u{a0}b\u{3000}c"), ["a", "b", "c"]);
        assert!(words("  ").is_empty());
        assert_eq!(parse_words(" ab  cd", '\\'), [(1, "ab"), (5, "cd")]);
        assert_eq!(words("a`\"b c\" d"), ["a`\"b c\"", "d"]);
        let backtick: Vec<_> = parse_words("a`\"b c `", '`')
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(backtick, ["a`\"b", "c"]);
    }

    #[test]
    fn keyword_lookup_follows_go_lowercase() {
        assert_eq!(Kind::of("FROM"), Kind::From);
        assert_eq!(Kind::of("hEaLtHcHeCk"), Kind::Healthcheck);
        assert_eq!(Kind::of("WOR\u{212a}DIR"), Kind::Workdir);
        assert_eq!(Kind::of("ONBU\u{130}LD"), Kind::Onbuild);
        assert_eq!(Kind::of("FROMX"), Kind::Unknown);
    }
}
