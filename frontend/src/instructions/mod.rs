//! Typed instructions: syntax tree nodes → validated commands with their flags.
//!
//! Nothing is expanded here: words keep their quotes and `$VAR`s, because
//! expansion needs the ARG/ENV state of the stage, which only conversion
//! knows. What can be checked without that state is checked here (argument
//! counts, flags, literal `--chmod` and `--mount` values).

pub(crate) mod bflag;
pub(crate) mod chmod;
pub(crate) mod duration;
pub mod locate;
pub mod mount;
mod parse;
pub(crate) mod suggest;

use serde::Serialize;

pub use self::locate::Locator;
pub use self::mount::{Mount, MountType};
pub use self::parse::{Parsed, parse_dockerfile, parse_node};
pub(crate) use self::parse::{heredoc_marker, parse_trigger_node};
use crate::error::Position;
use crate::graph::{NetworkMode, SecurityMode};

/// Lines an instruction spans (1-based, inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Span {
    pub start_line: usize,
    pub end_line: usize,
}

/// A Dockerfile split into global ARGs and stages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    /// ARG instructions before the first FROM.
    pub meta_args: Vec<Command>,
    pub stages: Vec<Stage>,
}

/// A FROM line and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// The stage name (`AS name`), lower-cased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The base as written (may contain `$VAR`s from global ARGs).
    pub base: String,
    /// `--platform` as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// From a comment directly above FROM that starts with the stage name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub span: Span,
    /// Where `FROM` starts.
    #[serde(skip)]
    pub position: Position,
    pub original: String,
    pub commands: Vec<Command>,
}

/// One instruction other than FROM, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    #[serde(flatten)]
    pub instruction: Instruction,
    pub span: Span,
    /// Where the keyword starts.
    #[serde(skip)]
    pub position: Position,
    /// The logical line as written, keyword included.
    pub original: String,
}

/// The instructions (FROM is a [`Stage`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "instruction", rename_all = "UPPERCASE")]
pub enum Instruction {
    Run(Run),
    Cmd(ShellCommand),
    Entrypoint(ShellCommand),
    Label(KeyValues),
    Maintainer { maintainer: String },
    Expose { ports: Vec<String> },
    Env(KeyValues),
    Add(Add),
    Copy(Copy),
    Volume { volumes: Vec<String> },
    User { user: String },
    Workdir { path: String },
    Arg { args: Vec<ArgDef> },
    Onbuild(Onbuild),
    StopSignal { signal: String },
    Healthcheck(Healthcheck),
    Shell { shell: Vec<String> },
}

impl Instruction {
    /// The keyword, upper-case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer { .. } => "MAINTAINER",
            Instruction::Expose { .. } => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Volume { .. } => "VOLUME",
            Instruction::User { .. } => "USER",
            Instruction::Workdir { .. } => "WORKDIR",
            Instruction::Arg { .. } => "ARG",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::StopSignal { .. } => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell { .. } => "SHELL",
        }
    }
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    #[serde(flatten)]
    pub command: ShellCommand,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<HeredocFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountFlag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityMode>,
    /// Flag names given, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags_used: Vec<&'static str>,
}

/// A `--mount` as written, and parsed when it needs no expansion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MountFlag {
    pub raw: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parsed: Option<Mount>,
}

/// A heredoc attached to RUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeredocFile {
    pub name: String,
    /// The body as read (leading tabs still there for `<<-`).
    pub content: String,
    pub chomp: bool,
    pub expand: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub fd: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl HeredocFile {
    /// The body with leading tabs removed for `<<-`.
    pub fn data(&self) -> String {
        if self.chomp {
            chomp(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Removes leading tabs from every line (`<<-`).
pub fn chomp(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// RUN, CMD and ENTRYPOINT arguments: exec form, or one shell string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShellCommand {
    pub command: Vec<String>,
    /// Shell form: run through SHELL.
    pub prepend_shell: bool,
}

/// ENV and LABEL pairs, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValues {
    pub pairs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Written as `KEY value` without `=`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub legacy: bool,
}

/// One `ARG name[=default]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDef {
    pub key: String,
    /// The default as written; none for a bare `ARG NAME`.
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A COPY/ADD source as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceArg {
    Path(String),
    Heredoc {
        name: String,
        /// The body, already chomped for `<<-`.
        content: String,
        expand: bool,
    },
}

/// Flags and arguments COPY and ADD share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyArgs {
    pub sources: Vec<SourceArg>,
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// COPY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    #[serde(flatten)]
    pub args: CopyArgs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
}

/// ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Add {
    #[serde(flatten)]
    pub args: CopyArgs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_git_dir: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
}

/// ONBUILD with its parsed trigger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Onbuild {
    /// The trigger text stored in the image config (heredoc bodies appended).
    pub expression: String,
    pub trigger: Box<Command>,
}

/// HEALTHCHECK; `NONE` is `test: ["NONE"]` with everything else zero.
/// Durations are nanoseconds, zero meaning "not set".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}
