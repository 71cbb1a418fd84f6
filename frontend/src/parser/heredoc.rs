//! Heredoc detection on RUN, COPY and ADD lines (`<<EOF`, `<<-'EOF'`,
//! `3<<X`), using the shell lexer the way BuildKit does.

use std::collections::BTreeMap;

use super::args::LineError;
use super::ast::Heredoc;
use crate::shell::Lexer;

/// A heredoc announced on a line, with the byte offset of its `<<` in the
/// logical line (for the "unterminated heredoc" error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Announced {
    pub(crate) heredoc: Heredoc,
    pub(crate) offset: usize,
}

/// BuildKit's `heredocsFromLine`: split the whole line into shell words
/// (quotes and escapes kept, unset variables left as written, always `\` as
/// the escape character) and keep the words that are heredoc markers. A line
/// the lexer cannot split has no heredocs.
pub(crate) fn heredocs_from_line(line: &str) -> Result<Vec<Announced>, LineError> {
    let mut lexer = Lexer::new('\\');
    lexer.raw_quotes = true;
    lexer.raw_escapes = true;
    lexer.skip_unset_env = true;
    let env = BTreeMap::new();
    let Ok(words) = lexer.process_words(line, &env) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    let mut cursor = 0;
    for word in &words {
        let Some(marker) = match_marker(word) else {
            continue;
        };
        let offset = locate(line, word, &mut cursor);
        if let Some(heredoc) =
            heredoc_from_marker(&marker).map_err(|message| LineError { offset, message })?
        {
            found.push(Announced { heredoc, offset });
        }
    }
    Ok(found)
}

/// The parts of a word matching `^(\d*)<<(-?)\s*([^<]*)$`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker<'a> {
    fd: &'a str,
    chomp: bool,
    name: &'a str,
}

fn match_marker(word: &str) -> Option<Marker<'_>> {
    let b = word.as_bytes();
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !word[digits..].starts_with("<<") {
        return None;
    }
    let mut i = digits + 2;
    let chomp = b.get(i) == Some(&b'-');
    if chomp {
        i += 1;
    }
    // Go's `\s`: no vertical tab.
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\x0c' | b'\r')) {
        i += 1;
    }
    let name = &word[i..];
    if name.contains('<') {
        return None;
    }
    Some(Marker {
        fd: &word[..digits],
        chomp,
        name,
    })
}

/// BuildKit's `ParseHeredoc` after the match: the delimiter must lex to
/// exactly one word; quoting any part of it turns expansion off.
fn heredoc_from_marker(marker: &Marker<'_>) -> Result<Option<Heredoc>, String> {
    if marker.name.is_empty() {
        return Ok(None);
    }
    let mut lexer = Lexer::new('\\');
    lexer.skip_unset_env = true;
    let env = BTreeMap::new();
    let words = lexer
        .process_words(marker.name, &env)
        .map_err(|e| e.message)?;
    let [word] = words.as_slice() else {
        return Ok(None);
    };
    lexer.raw_quotes = true;
    let raw = lexer
        .process_words(marker.name, &env)
        .map_err(|e| e.message)?;
    let [raw_word] = raw.as_slice() else {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {}",
            marker.name
        ));
    };
    let quotes = |s: &str| s.bytes().filter(|&b| b == b'\'' || b == b'"').count();
    // Upstream parses the fd as a 64-bit unsigned and ignores overflow (it
    // then holds the maximum); saturate the same way at our width.
    let fd = if marker.fd.is_empty() {
        0
    } else {
        marker
            .fd
            .parse::<u64>()
            .unwrap_or(u64::MAX)
            .try_into()
            .unwrap_or(u32::MAX)
    };
    Ok(Some(Heredoc {
        name: word.clone(),
        content: String::new(),
        expand: quotes(word) == quotes(raw_word),
        chomp: marker.chomp,
        fd,
    }))
}

/// Where a lexed word's `<<` sits in the line. Lexed words normally appear
/// verbatim (quotes and escapes are kept); when they don't, take the next
/// `<<` after the previous heredoc.
fn locate(line: &str, word: &str, cursor: &mut usize) -> usize {
    let from = (*cursor).min(line.len());
    let in_word = word.find("<<").unwrap_or(0);
    let at = match line[from..].find(word) {
        Some(i) => from + i + in_word,
        None => line[from..].find("<<").map_or(from, |i| from + i),
    };
    *cursor = at + 2;
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_regex() {
        let m = |w| match_marker(w).map(|m| (m.fd, m.chomp, m.name));
        assert_eq!(m("<<EOF"), Some(("", false, "EOF")));
        assert_eq!(m("3<<-EOF"), Some(("3", true, "EOF")));
        assert_eq!(m("<<  EOF"), Some(("", false, "EOF")));
        assert_eq!(m("<<-"), Some(("", true, "")));
        assert_eq!(m("<<\u{b}EOF"), Some(("", false, "\u{b}EOF")));
        assert_eq!(m("a<<EOF"), None);
        assert_eq!(m("<<A<<B"), None);
        assert_eq!(m("\"<<EOF\""), None);
    }

    #[test]
    fn locate_finds_successive_markers() {
        let line = "COPY <<A <<B /dst";
        let mut cursor = 0;
        assert_eq!(locate(line, "<<A", &mut cursor), 5);
        assert_eq!(locate(line, "<<B", &mut cursor), 9);
    }
}
