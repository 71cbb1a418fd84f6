//! Maps instructions and the words in them back to 1-based line/column positions.
//!
//! The syntax tree keeps line ranges but not columns, so positions of flags
//! and words are found by searching the physical lines an instruction spans.

use super::Span;
use crate::error::Position;

/// The Dockerfile's physical lines, for locating words.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    text: String,
    /// Byte offset of the start of every line.
    starts: Vec<usize>,
}

impl Locator {
    /// `src` is the whole Dockerfile as read; a BOM is skipped so that
    /// columns count from the first visible character.
    pub fn new(src: &[u8]) -> Self {
        let src = src.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(src);
        let text = String::from_utf8_lossy(src).into_owned();
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    /// A locator that knows no text: positions fall back to the span's first line.
    pub fn empty() -> Self {
        Self::default()
    }

    fn line(&self, n: usize) -> Option<&str> {
        let start = *self.starts.get(n.checked_sub(1)?)?;
        let end = self.starts.get(n).map_or(self.text.len(), |e| e - 1);
        Some(self.text[start..end].trim_end_matches('\r'))
    }

    /// Where the instruction's keyword starts.
    pub fn start(&self, span: Span) -> Position {
        let line = span.start_line.max(1);
        let col = self.line(line).map_or(1, |l| {
            l.chars().take_while(|c| c.is_whitespace()).count() + 1
        });
        Position::new(line, col)
    }

    /// The first occurrence of `needle` in the lines the span covers, or the
    /// instruction start when it cannot be found.
    pub fn find(&self, span: Span, needle: &str) -> Position {
        self.find_after(span, "", needle)
    }

    /// Like [`Locator::find`], but only after the first occurrence of
    /// `anchor` (e.g. a key inside one particular `--mount` flag).
    pub fn find_after(&self, span: Span, anchor: &str, needle: &str) -> Position {
        if needle.is_empty() {
            return self.start(span);
        }
        let first = span.start_line.max(1);
        let last = span.end_line.max(first);
        let mut anchored = anchor.is_empty();
        for n in first..=last {
            let Some(line) = self.line(n) else { break };
            let mut from = 0;
            if !anchored {
                match line.find(anchor) {
                    Some(i) => {
                        anchored = true;
                        from = i;
                    }
                    None => continue,
                }
            }
            if let Some(i) = line[from..].find(needle) {
                let col = line[..from + i].chars().count() + 1;
                return Position::new(n, col);
            }
        }
        if !anchor.is_empty() {
            return self.find(span, needle);
        }
        self.start(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(start_line: usize, end_line: usize) -> Span {
        Span {
            start_line,
            end_line,
        }
    }

    #[test]
    fn finds_words_across_continuations() {
        let loc = Locator::new(
            b"\xEF\xBB\xBFFROM a\n  RUN --mount=type=cache \\\n   --network=nne echo\r\n",
        );
        assert_eq!(loc.start(node(1, 1)), Position::new(1, 1));
        assert_eq!(loc.start(node(2, 3)), Position::new(2, 3));
        assert_eq!(loc.find(node(2, 3), "--network"), Position::new(3, 4));
        assert_eq!(
            loc.find_after(node(2, 3), "--mount", "cache"),
            Position::new(2, 20)
        );
        assert_eq!(loc.find(node(2, 3), "missing"), Position::new(2, 3));
        assert_eq!(Locator::empty().find(node(7, 7), "x"), Position::new(7, 1));
    }
}
