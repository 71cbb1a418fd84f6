//! Dockerfile text → syntax tree, following BuildKit's parser byte for byte:
//! logical lines, parser directives, per-keyword argument splitting and
//! heredoc bodies. The tree dumps exactly like BuildKit's (see [`dump`]).

mod args;
pub mod ast;
mod dump;
mod heredoc;
mod json;
mod line;

pub use ast::{Ast, Directive, Heredoc, Node, Warning};
pub use dump::{dump, dump_node, go_quote, is_go_print, push_go_quoted};

use crate::error::{Position, SourceError};
use args::{Kind, LineError, node_from_line};

/// Upstream reads lines with Go's `bufio.Scanner`, whose default token limit
/// makes longer lines an error.
const MAX_LINE: usize = 65535;

/// Parses a whole Dockerfile. Invalid UTF-8 is read lossily (each bad
/// sequence becomes U+FFFD). Errors point at the offending line and column.
pub fn parse(src: &[u8]) -> Result<Ast, SourceError> {
    let too_long = first_too_long_line(src);
    let text = String::from_utf8_lossy(src);
    Parser::new(&text, too_long).run()
}

/// A piece of a logical line and where it came from, to turn byte offsets
/// in the logical line back into file positions.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Byte offset in the logical line.
    offset: usize,
    /// 1-based physical line.
    line: usize,
    /// 0-based character column of the piece in that line.
    column: usize,
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// Physical lines read so far; the number of the last one read.
    line_no: usize,
    too_long: Option<usize>,
    escape: char,
    directives_open: bool,
    directives: Vec<Directive>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, too_long: Option<usize>) -> Self {
        Self {
            text,
            pos: 0,
            line_no: 0,
            too_long,
            escape: '\\',
            directives_open: true,
            directives: Vec::new(),
        }
    }

    /// The next physical line, with its line ending (BuildKit's `scanLines`).
    fn next_line(&mut self) -> Result<Option<&'a str>, SourceError> {
        if self.pos >= self.text.len() {
            return Ok(None);
        }
        let rest = &self.text[self.pos..];
        let len = rest.find('\n').map_or(rest.len(), |i| i + 1);
        self.pos += len;
        self.line_no += 1;
        if self.too_long == Some(self.line_no) {
            return Err(SourceError::new(
                Position::new(self.line_no, 1),
                format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
            ));
        }
        Ok(Some(&rest[..len]))
    }

    fn run(mut self) -> Result<Ast, SourceError> {
        let mut children = Vec::new();
        let mut warnings = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        let mut logical = String::new();
        let mut segments: Vec<Segment> = Vec::new();

        while let Some(raw) = self.next_line()? {
            let mut content = trim_newline(raw);
            let mut bom = 0;
            if self.line_no == 1 {
                if let Some(s) = content.strip_prefix('\u{feff}') {
                    content = s;
                    bom = 1;
                }
            }
            let stripped = content.trim_start();
            let indent = bom + content[..content.len() - stripped.len()].chars().count();
            let is_comment = stripped.starts_with('#');
            if is_comment {
                let comment = stripped[1..].trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_owned());
                }
            }
            if self.directives_open {
                self.directive(stripped, indent)?;
            }
            if is_comment {
                continue;
            }
            let (first, mut continues) = trim_continuation(stripped, self.escape);
            if !continues && first.is_empty() {
                continue;
            }

            let start_line = self.line_no;
            logical.clear();
            segments.clear();
            logical.push_str(first);
            segments.push(Segment {
                offset: 0,
                line: start_line,
                column: indent,
            });
            let mut empty_line = None;
            while continues {
                let Some(raw) = self.next_line()? else { break };
                let content = trim_newline(raw);
                let stripped = content.trim_start();
                if stripped.starts_with('#') {
                    continue;
                }
                if stripped.is_empty() {
                    // Upstream only warns: such lines will become errors.
                    empty_line.get_or_insert(self.line_no);
                    continue;
                }
                let (piece, more) = trim_continuation(content, self.escape);
                segments.push(Segment {
                    offset: logical.len(),
                    line: self.line_no,
                    column: 0,
                });
                logical.push_str(piece);
                continues = more;
            }
            if let Some(line) = empty_line {
                warnings.push(Warning {
                    line,
                    message: "empty continuation line (empty continuation lines will become errors in a future release)"
                        .to_owned(),
                });
            }

            let locate = |e: LineError| {
                SourceError::new(position_in(&logical, &segments, e.offset), e.message)
            };
            let mut node = node_from_line(&logical, 0, self.escape).map_err(locate)?;
            node.prev_comment = std::mem::take(&mut comments);

            if can_contain_heredoc(&node) && logical.contains("<<") {
                let announced = heredoc::heredocs_from_line(&logical).map_err(locate)?;
                for mut found in announced {
                    self.read_heredoc_body(&mut found.heredoc).map_err(|()| {
                        SourceError::new(
                            position_in(&logical, &segments, found.offset),
                            "unterminated heredoc",
                        )
                    })?;
                    node.heredocs.push(found.heredoc);
                }
            }
            set_lines(&mut node, start_line, self.line_no);
            children.push(node);
        }

        if children.is_empty() {
            return Err(SourceError::new(
                Position::new(1, 1),
                "file with no instructions",
            ));
        }
        Ok(Ast {
            children,
            directives: self.directives,
            escape: self.escape,
            warnings,
        })
    }

    /// Checks a line of the directive phase (leading whitespace removed; it
    /// starts at character column `indent`). The first line that is not a
    /// known directive ends the phase.
    fn directive(&mut self, line: &str, indent: usize) -> Result<(), SourceError> {
        let Some(m) = match_directive(line) else {
            self.directives_open = false;
            return Ok(());
        };
        let name = line[m.name.clone()].to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.directives_open = false;
            return Ok(());
        }
        let column = |byte: usize| indent + line[..byte].chars().count() + 1;
        if self.directives.iter().any(|d| d.name == name) {
            return Err(SourceError::new(
                Position::new(self.line_no, column(m.name.start)),
                format!("only one {name} parser directive can be used"),
            ));
        }
        let value = &line[m.value.clone()];
        if name == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(SourceError::new(
                        Position::new(self.line_no, column(m.value.start)),
                        format!("invalid escape token '{value}' does not match ` or \\"),
                    ));
                }
            };
        }
        self.directives.push(Directive {
            name,
            value: value.to_owned(),
            line: self.line_no,
        });
        Ok(())
    }

    /// Reads raw lines into the heredoc until its terminator: a line equal
    /// to the name once its line ending (and, for `<<-`, its leading tabs)
    /// is removed. `Err` at end of file.
    fn read_heredoc_body(&mut self, heredoc: &mut Heredoc) -> Result<(), ()> {
        loop {
            let raw = match self.next_line() {
                Ok(Some(raw)) => raw,
                // Upstream's scanner stops at an overlong line too, which
                // leaves the heredoc unterminated.
                Ok(None) | Err(_) => return Err(()),
            };
            let mut candidate = trim_newline(raw);
            if heredoc.chomp {
                candidate = candidate.trim_start_matches('\t');
            }
            if candidate == heredoc.name {
                return Ok(());
            }
            heredoc.content.push_str(raw);
        }
    }
}

/// Removes all trailing `\r` and `\n`.
fn trim_newline(raw: &str) -> &str {
    raw.trim_end_matches(['\r', '\n'])
}

/// BuildKit's line-continuation rule: the line ends with the escape
/// character plus optional spaces/tabs, and that escape character is either
/// the whole line or not itself escaped. Returns the line without the marker
/// and whether the logical line continues.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line, false);
    };
    if before.ends_with(escape) {
        return (line, false);
    }
    (before, true)
}

/// The spans of BuildKit's directive regex
/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirectiveMatch {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

fn match_directive(line: &str) -> Option<DirectiveMatch> {
    // Go's `\s` is `[\t\n\f\r ]`: a vertical tab is part of a value.
    let space = |c: u8| matches!(c, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ');
    let b = line.as_bytes();
    if b.first() != Some(&b'#') {
        return None;
    }
    let mut i = 1;
    while i < b.len() && space(b[i]) {
        i += 1;
    }
    let name_start = i;
    if !b.get(i).is_some_and(u8::is_ascii_alphabetic) {
        return None;
    }
    while i < b.len() && b[i].is_ascii_alphanumeric() {
        i += 1;
    }
    let name = name_start..i;
    while i < b.len() && space(b[i]) {
        i += 1;
    }
    if b.get(i) != Some(&b'=') {
        return None;
    }
    let tail = &b[i + 1..];
    if tail.is_empty() {
        return None;
    }
    let lead = tail.iter().take_while(|&&c| space(c)).count();
    let value = if lead == tail.len() {
        // All whitespace: the lazy `(.+?)` still needs one character, and the
        // greedy `\s*` before it gives up exactly one.
        let end = i + 1 + tail.len();
        end - 1..end
    } else {
        let trail = tail.iter().rev().take_while(|&&c| space(c)).count();
        i + 1 + lead..i + 1 + tail.len() - trail
    };
    Some(DirectiveMatch { name, value })
}

/// BuildKit's `canContainHeredoc`: RUN, COPY or ADD (directly or as the
/// instruction of an ONBUILD), not in exec form.
fn can_contain_heredoc(node: &Node) -> bool {
    let mut target = node;
    if Kind::of(&node.value) == Kind::Onbuild {
        if let Some(inner) = node.next.first().and_then(|a| a.children.first()) {
            target = inner;
        }
    }
    Kind::of(&target.value).takes_heredocs() && !target.json
}

fn set_lines(node: &mut Node, start: usize, end: usize) {
    node.start_line = start;
    node.end_line = end;
    for n in node.next.iter_mut().chain(node.children.iter_mut()) {
        set_lines(n, start, end);
    }
}

/// Maps a byte offset in the logical line to a file position.
fn position_in(logical: &str, segments: &[Segment], offset: usize) -> Position {
    let mut offset = offset.min(logical.len());
    while !logical.is_char_boundary(offset) {
        offset -= 1;
    }
    let i = segments
        .partition_point(|s| s.offset <= offset)
        .saturating_sub(1);
    let Some(seg) = segments.get(i) else {
        return Position::new(1, 1);
    };
    let from = seg.offset.min(offset);
    Position::new(
        seg.line,
        seg.column + logical[from..offset].chars().count() + 1,
    )
}

/// The 1-based number of the first physical line longer than upstream's
/// scanner accepts, counted in the original bytes.
fn first_too_long_line(src: &[u8]) -> Option<usize> {
    if src.len() <= MAX_LINE {
        return None;
    }
    src.split(|&b| b == b'\n')
        .position(|l| l.len() > MAX_LINE)
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_marker() {
        assert_eq!(trim_continuation("foo \\", '\\'), ("foo ", true));
        assert_eq!(trim_continuation("foo\\ \t ", '\\'), ("foo", true));
        assert_eq!(trim_continuation("\\", '\\'), ("", true));
        assert_eq!(trim_continuation("  \\", '\\'), ("  ", true));
        assert_eq!(trim_continuation("foo \\\\", '\\'), ("foo \\\\", false));
        assert_eq!(
            trim_continuation("foo \\\u{b}", '\\'),
            ("foo \\\u{b}", false)
        );
        assert_eq!(trim_continuation("foo `", '`'), ("foo ", true));
        assert_eq!(trim_continuation("foo \\", '`'), ("foo \\", false));
    }

    #[test]
    fn directive_regex() {
        let m = |s: &str| match_directive(s).map(|m| (s[m.name].to_owned(), s[m.value].to_owned()));
        assert_eq!(m("# escape=`"), Some(("escape".into(), "`".into())));
        assert_eq!(m("#ESCAPE = \\  "), Some(("ESCAPE".into(), "\\".into())));
        assert_eq!(m("# syntax=a b \t"), Some(("syntax".into(), "a b".into())));
        assert_eq!(m("# x= "), Some(("x".into(), " ".into())));
        assert_eq!(m("# x=\u{b}"), Some(("x".into(), "\u{b}".into())));
        assert_eq!(m("# x="), None);
        assert_eq!(m("# 1x=a"), None);
        assert_eq!(m("#!/bin/sh"), None);
        assert_eq!(m("# x y=a"), None);
    }

    #[test]
    fn positions_map_through_continuations() {
        let segments = [
            Segment {
                offset: 0,
                line: 3,
                column: 2,
            },
            Segment {
                offset: 4,
                line: 4,
                column: 0,
            },
            Segment {
                offset: 4,
                line: 6,
                column: 0,
            },
        ];
        let logical = "RUN é x";
        assert_eq!(position_in(logical, &segments, 0), Position::new(3, 3));
        assert_eq!(position_in(logical, &segments, 3), Position::new(3, 6));
        assert_eq!(position_in(logical, &segments, 4), Position::new(6, 1));
        assert_eq!(position_in(logical, &segments, 7), Position::new(6, 3));
        assert_eq!(position_in(logical, &segments, 99), Position::new(6, 4));
    }
}
