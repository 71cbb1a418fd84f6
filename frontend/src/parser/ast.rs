//! The Dockerfile syntax tree: BuildKit's node shape, with source positions.

/// A heredoc body attached to a RUN, COPY or ADD instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter with quotes removed (`EOF` for `<<'EOF'`).
    pub name: String,
    /// The body, every line with its line ending; leading tabs are kept here
    /// even for `<<-` (they are stripped when the body is used).
    pub content: String,
    /// False when any part of the delimiter was quoted: no expansion in the body.
    pub expand: bool,
    /// `<<-`: leading tabs are removed from body lines when used.
    pub chomp: bool,
    /// The file descriptor before `<<` (0 when none was written).
    pub fd: u32,
}

/// One node of the tree. An instruction node has `value` = the keyword as
/// written, its `flags`, its arguments in `next`; an argument node has a
/// `value` and, only for ONBUILD, one child (the inner instruction).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    pub value: String,
    pub flags: Vec<String>,
    /// The argument chain (BuildKit's `Next` list, flattened).
    pub next: Vec<Node>,
    /// Only the ONBUILD argument node has a child: the parsed inner instruction.
    pub children: Vec<Node>,
    /// The arguments came from a JSON array (exec form).
    pub json: bool,
    /// The logical line as read (continuations joined), keyword included.
    pub original: String,
    /// 1-based first and last physical line this instruction consumed
    /// (heredoc bodies and skipped lines inside continuations included).
    pub start_line: usize,
    pub end_line: usize,
    pub heredocs: Vec<Heredoc>,
    /// Comments directly above the instruction (without the `#`).
    pub prev_comment: Vec<String>,
}

/// A parser directive (`# syntax=`, `# escape=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name.
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// A non-fatal observation made while parsing (e.g. an empty continuation line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// The result of parsing a whole Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ast {
    /// The instructions in file order.
    pub children: Vec<Node>,
    pub directives: Vec<Directive>,
    /// The escape character in force (`\` or `` ` ``).
    pub escape: char,
    pub warnings: Vec<Warning>,
}

impl Ast {
    /// The first line of the first instruction (BuildKit's root `StartLine`),
    /// 0 when there are none.
    pub fn start_line(&self) -> usize {
        self.children.first().map_or(0, |n| n.start_line)
    }

    /// The last line of the last instruction (BuildKit's root `EndLine`);
    /// trailing blank lines are not included.
    pub fn end_line(&self) -> usize {
        self.children.last().map_or(0, |n| n.end_line)
    }
}
