//! Errors that point into a Dockerfile: `PATH:LINE:COL: message`, the line, a caret.

use std::fmt;

/// A 1-based position in a Dockerfile. `column` counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    pub fn new(line: usize, column: usize) -> Self {
        Self { line, column }
    }
}

/// An error located in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}", pos = DisplayPos(self.position))]
pub struct SourceError {
    pub position: Position,
    pub message: String,
}

struct DisplayPos(Position);

impl fmt::Display for DisplayPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0.line, self.0.column)
    }
}

impl SourceError {
    pub fn new(position: Position, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }

    /// Renders the error for a person: `PATH:LINE:COL: message`, then the
    /// offending line and a caret under the column. `source` is the whole
    /// Dockerfile as read (bytes; invalid UTF-8 is shown lossily).
    pub fn render(&self, path: &str, source: &[u8]) -> String {
        let Position { line, column } = self.position;
        let mut out = format!("{path}:{line}:{column}: {}\n", self.message);
        let text = String::from_utf8_lossy(source);
        if let Some(src_line) = text.split('\n').nth(line.saturating_sub(1)) {
            let src_line = src_line.trim_end_matches(['\r', '\n']);
            let shown: String = src_line
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            out.push_str(&format!("{line:>5} | {shown}\n"));
            let pad = column.saturating_sub(1).min(shown.chars().count());
            out.push_str(&format!("      | {}^\n", " ".repeat(pad)));
        }
        out
    }
}
