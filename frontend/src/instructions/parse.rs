//! Syntax tree nodes → typed instructions: argument counts, flags and the
//! values that can be checked before expansion.

use super::bflag::{FlagError, Flags, Kind};
use super::{
    Add, ArgDef, Command, Copy, CopyArgs, Dockerfile, Healthcheck, HeredocFile, Instruction,
    KeyValue, KeyValues, Locator, MountFlag, Onbuild, Run, ShellCommand, SourceArg, Span, Stage,
    chmod, chomp, duration, mount, suggest,
};
use crate::error::SourceError;
use crate::graph::{NetworkMode, SecurityMode};
use crate::parser::{Ast, Heredoc, Node};

/// All instruction keywords, for suggestions.
const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// What one node parses to.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Stage(Stage),
    Command(Command),
}

/// Splits a syntax tree into global ARGs and stages, typing every instruction.
///
/// The tree is consumed: its strings move into the typed commands.
pub fn parse_dockerfile(ast: Ast, loc: &Locator) -> Result<Dockerfile, SourceError> {
    // Stage sizes are known up front: reserving them avoids growing large
    // vectors instruction by instruction.
    let is_from = |n: &Node| n.value.eq_ignore_ascii_case("from");
    let mut sizes = Vec::new();
    for n in &ast.children {
        match sizes.last_mut() {
            _ if is_from(n) => sizes.push(0usize),
            Some(count) => *count += 1,
            None => {}
        }
    }
    let mut sizes = sizes.into_iter();
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::with_capacity(sizes.len());
    for mut node in ast.children {
        match (Parser {
            node: &mut node,
            loc,
        })
        .parse(false)?
        {
            Parsed::Stage(mut s) => {
                s.commands.reserve(sizes.next().unwrap_or(0));
                stages.push(s);
            }
            Parsed::Command(c) => match stages.last_mut() {
                Some(stage) => stage.commands.push(c),
                None if matches!(c.instruction, Instruction::Arg { .. }) => meta_args.push(c),
                None => {
                    return Err(SourceError::new(
                        c.position,
                        format!(
                            "{} before the first FROM: no build stage in current context",
                            c.instruction.keyword()
                        ),
                    ));
                }
            },
        }
    }
    Ok(Dockerfile { meta_args, stages })
}

/// Types one instruction node.
pub fn parse_node(node: &Node, loc: &Locator) -> Result<Parsed, SourceError> {
    let mut node = node.clone();
    Parser {
        node: &mut node,
        loc,
    }
    .parse(false)
}

/// Types one instruction node of an ONBUILD trigger read from an image.
pub(crate) fn parse_trigger_node(mut node: Node, loc: &Locator) -> Result<Command, SourceError> {
    match (Parser {
        node: &mut node,
        loc,
    })
    .parse(true)?
    {
        Parsed::Command(c) => Ok(c),
        Parsed::Stage(s) => Err(SourceError::new(
            s.position,
            "FROM isn't allowed as an ONBUILD trigger",
        )),
    }
}

struct Parser<'a> {
    /// Strings are taken out of the node as they move into the command.
    node: &'a mut Node,
    loc: &'a Locator,
}

impl Parser<'_> {
    fn span(&self) -> Span {
        Span {
            start_line: self.node.start_line,
            end_line: self.node.end_line.max(self.node.start_line),
        }
    }

    fn at_start(&self, message: impl Into<String>) -> SourceError {
        SourceError::new(self.loc.start(self.span()), message)
    }

    fn at(&self, needle: &str, message: impl Into<String>) -> SourceError {
        SourceError::new(self.loc.find(self.span(), needle), message)
    }

    fn flag_err(&self, e: FlagError) -> SourceError {
        self.at(&e.flag, e.message)
    }

    fn flags(&self, spec: &[(&'static str, Kind)]) -> Result<Flags, SourceError> {
        Flags::parse(&self.node.flags, spec).map_err(|e| self.flag_err(e))
    }

    fn args(&mut self) -> Vec<String> {
        self.node
            .next
            .iter_mut()
            .map(|n| std::mem::take(&mut n.value))
            .collect()
    }

    fn command(&mut self, instruction: Instruction) -> Parsed {
        Parsed::Command(Command {
            instruction,
            span: self.span(),
            position: self.loc.start(self.span()),
            original: std::mem::take(&mut self.node.original),
        })
    }

    fn parse(&mut self, in_onbuild: bool) -> Result<Parsed, SourceError> {
        let keyword = keyword_upper(&self.node.value);
        let args = self.args();
        let cmd = match &*keyword {
            "FROM" => return self.parse_from(args),
            "RUN" => Instruction::Run(self.parse_run(args)?),
            "CMD" => {
                self.flags(&[])?;
                Instruction::Cmd(self.shell_command(args))
            }
            "ENTRYPOINT" => {
                self.flags(&[])?;
                Instruction::Entrypoint(self.shell_command(args))
            }
            "LABEL" | "ENV" => {
                self.flags(&[])?;
                let kv = self.key_values(&keyword, &args)?;
                if keyword == "ENV" {
                    Instruction::Env(kv)
                } else {
                    Instruction::Label(kv)
                }
            }
            "MAINTAINER" => {
                let maintainer = self.exactly_one(&keyword, args)?;
                self.flags(&[])?;
                Instruction::Maintainer { maintainer }
            }
            "USER" => {
                let user = self.exactly_one(&keyword, args)?;
                self.flags(&[])?;
                Instruction::User { user }
            }
            "WORKDIR" => {
                let path = self.exactly_one(&keyword, args)?;
                self.flags(&[])?;
                Instruction::Workdir { path }
            }
            "STOPSIGNAL" => {
                let signal = self.exactly_one(&keyword, args)?;
                self.flags(&[])?;
                Instruction::StopSignal { signal }
            }
            "EXPOSE" => {
                self.at_least_one(&keyword, &args)?;
                self.flags(&[])?;
                Instruction::Expose { ports: args }
            }
            "VOLUME" => {
                self.at_least_one(&keyword, &args)?;
                self.flags(&[])?;
                let mut volumes = Vec::with_capacity(args.len());
                for v in args {
                    let v = v.trim();
                    if v.is_empty() {
                        return Err(self.at_start("VOLUME specified can not be an empty string"));
                    }
                    volumes.push(v.to_string());
                }
                Instruction::Volume { volumes }
            }
            "ADD" => Instruction::Add(self.parse_add(args)?),
            "COPY" => Instruction::Copy(self.parse_copy(args)?),
            "ARG" => {
                self.at_least_one(&keyword, &args)?;
                self.flags(&[])?;
                Instruction::Arg {
                    args: self.parse_args(args)?,
                }
            }
            "ONBUILD" => {
                if in_onbuild {
                    return Err(
                        self.at_start("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
                    );
                }
                Instruction::Onbuild(self.parse_onbuild()?)
            }
            "HEALTHCHECK" => Instruction::Healthcheck(self.parse_healthcheck(args)?),
            "SHELL" => {
                self.flags(&[])?;
                if args.is_empty() {
                    return Err(self.at_start("SHELL requires at least one argument"));
                }
                if !self.node.json {
                    return Err(self.at_start(format!(
                        "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/sh\", \"-c\"], not {}",
                        args.join(" ")
                    )));
                }
                Instruction::Shell { shell: args }
            }
            _ => {
                let msg = suggest::with_hint(
                    format!("unknown instruction: {}", self.node.value),
                    &keyword,
                    KEYWORDS.iter().copied(),
                    true,
                );
                return Err(self.at_start(msg));
            }
        };
        Ok(self.command(cmd))
    }

    fn exactly_one(&self, keyword: &str, mut args: Vec<String>) -> Result<String, SourceError> {
        if args.len() != 1 {
            return Err(self.at_start(format!("{keyword} requires exactly one argument")));
        }
        Ok(args.remove(0))
    }

    fn at_least_one(&self, keyword: &str, args: &[String]) -> Result<(), SourceError> {
        if args.is_empty() {
            return Err(self.at_start(format!("{keyword} requires at least one argument")));
        }
        Ok(())
    }

    fn shell_command(&self, args: Vec<String>) -> ShellCommand {
        ShellCommand {
            command: args,
            prepend_shell: !self.node.json,
        }
    }

    fn parse_from(&self, args: Vec<String>) -> Result<Parsed, SourceError> {
        let name = match args.len() {
            1 => None,
            3 if args[1].eq_ignore_ascii_case("as") => {
                let name = args[2].to_ascii_lowercase();
                if !valid_stage_name(&name) {
                    return Err(self.at(
                        &args[2],
                        format!(
                            "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                            args[2]
                        ),
                    ));
                }
                Some(name)
            }
            _ => return Err(self.at_start("FROM requires either one or three arguments")),
        };
        let flags = self.flags(&[("platform", Kind::String)])?;
        let description = name
            .as_deref()
            .and_then(|n| doc_comment(&self.node.prev_comment, n));
        Ok(Parsed::Stage(Stage {
            name,
            base: args[0].clone(),
            platform: flags.string("platform"),
            description,
            span: self.span(),
            position: self.loc.start(self.span()),
            original: self.node.original.trim().to_string(),
            commands: Vec::new(),
        }))
    }

    fn parse_run(&self, args: Vec<String>) -> Result<Run, SourceError> {
        let flags = self.flags(&[
            ("mount", Kind::Strings),
            ("network", Kind::String),
            ("security", Kind::String),
        ])?;
        let network = match flags.string("network") {
            None => None,
            Some(v) => Some(match v.as_str() {
                "default" => NetworkMode::Default,
                "none" => NetworkMode::None,
                "host" => NetworkMode::Host,
                _ => {
                    let msg = suggest::with_hint(
                        format!("unsupported network mode {v:?}"),
                        &v,
                        ["default", "none", "host"],
                        true,
                    );
                    return Err(self.at("--network", msg));
                }
            }),
        };
        let security = match flags.string("security") {
            None => None,
            Some(v) => Some(match v.as_str() {
                "sandbox" => SecurityMode::Sandbox,
                "insecure" => SecurityMode::Insecure,
                _ => {
                    let msg = suggest::with_hint(
                        format!("unsupported security mode {v:?}"),
                        &v,
                        ["sandbox", "insecure"],
                        true,
                    );
                    return Err(self.at("--security", msg));
                }
            }),
        };
        let mut mounts = Vec::new();
        for raw in flags.strings("mount") {
            let parsed = mount::parse(&raw, mount::Values::Check).map_err(|e| {
                SourceError::new(self.loc.find_after(self.span(), &raw, &e.token), e.message)
            })?;
            mounts.push(MountFlag { raw, parsed });
        }
        let heredocs = self.heredocs().iter().map(heredoc_file).collect();
        Ok(Run {
            command: self.shell_command(args),
            heredocs,
            mounts,
            network,
            security,
            flags_used: flags.used(),
        })
    }

    fn heredocs(&self) -> &[Heredoc] {
        &self.node.heredocs
    }

    fn key_values(&self, keyword: &str, args: &[String]) -> Result<KeyValues, SourceError> {
        if args.is_empty() {
            return Err(self.at_start(format!("{keyword} requires at least one argument")));
        }
        if args.len() % 3 != 0 {
            return Err(self.at_start(format!("bad input to {keyword}, too many arguments")));
        }
        let mut pairs = Vec::with_capacity(args.len() / 3);
        for t in args.chunks(3) {
            if t[0].is_empty() {
                return Err(self.at_start(format!("{keyword} names can not be blank")));
            }
            pairs.push(KeyValue {
                key: t[0].clone(),
                value: t[1].clone(),
                legacy: t[2].is_empty(),
            });
        }
        Ok(KeyValues { pairs })
    }

    fn parse_args(&self, args: Vec<String>) -> Result<Vec<ArgDef>, SourceError> {
        let mut out = Vec::with_capacity(args.len());
        for arg in args {
            let (key, value) = match arg.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            if key.is_empty() {
                return Err(self.at(&arg, "ARG names can not be blank"));
            }
            let description = doc_comment(&self.node.prev_comment, &key);
            out.push(ArgDef {
                key,
                value,
                description,
            });
        }
        Ok(out)
    }

    fn copy_args(
        &self,
        keyword: &str,
        mut args: Vec<String>,
        flags: &Flags,
    ) -> Result<CopyArgs, SourceError> {
        if args.len() < 2 {
            return Err(self.at_start(format!(
                "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"
            )));
        }
        let dest = args.pop().expect("two or more arguments");
        if heredoc_marker(&dest).is_some() && !self.node.json {
            return Err(self.at(
                &dest,
                format!("{keyword} cannot accept a heredoc as a destination"),
            ));
        }
        let mut sources = Vec::with_capacity(args.len());
        for src in args {
            let doc = if self.node.json {
                None
            } else {
                heredoc_marker(&src)
            };
            match doc.and_then(|name| self.heredocs().iter().find(|h| h.name == name)) {
                Some(h) => sources.push(SourceArg::Heredoc {
                    name: h.name.clone(),
                    content: if h.chomp {
                        chomp(&h.content)
                    } else {
                        h.content.clone()
                    },
                    expand: h.expand,
                }),
                None => sources.push(SourceArg::Path(src)),
            }
        }
        let chmod = flags.string("chmod");
        if let Some(c) = &chmod {
            if !c.contains(['$', '\\', '"', '\'']) {
                chmod::parse(c).map_err(|m| self.at("--chmod", m))?;
            }
        }
        Ok(CopyArgs {
            sources,
            dest,
            chown: flags.string("chown"),
            chmod,
            link: flags.bool("link"),
            exclude: flags.strings("exclude"),
        })
    }

    fn parse_copy(&self, args: Vec<String>) -> Result<Copy, SourceError> {
        let flags = self.flags(&[
            ("from", Kind::String),
            ("chown", Kind::String),
            ("chmod", Kind::String),
            ("link", Kind::Bool),
            ("parents", Kind::Bool),
            ("exclude", Kind::Strings),
        ])?;
        let args = self.copy_args("COPY", args, &flags)?;
        let from = flags.string("from");
        if from.as_deref() == Some("") {
            return Err(self.at("--from", "--from requires a stage name, index or image"));
        }
        Ok(Copy {
            args,
            from,
            parents: flags.bool("parents"),
        })
    }

    fn parse_add(&self, args: Vec<String>) -> Result<Add, SourceError> {
        let flags = self.flags(&[
            ("chown", Kind::String),
            ("chmod", Kind::String),
            ("link", Kind::Bool),
            ("exclude", Kind::Strings),
            ("checksum", Kind::String),
            ("keep-git-dir", Kind::Bool),
            ("unpack", Kind::Bool),
        ])?;
        let args = self.copy_args("ADD", args, &flags)?;
        Ok(Add {
            args,
            checksum: flags.string("checksum"),
            keep_git_dir: flags.bool_opt("keep-git-dir"),
            unpack: flags.bool_opt("unpack"),
        })
    }

    fn parse_onbuild(&mut self) -> Result<Onbuild, SourceError> {
        let Some(inner) = self.node.next.first().and_then(|n| n.children.first()) else {
            return Err(self.at_start("ONBUILD requires at least one argument"));
        };
        self.flags(&[])?;
        let trigger_kw = inner.value.to_ascii_uppercase();
        match trigger_kw.as_str() {
            "ONBUILD" => {
                return Err(self.at_start("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"));
            }
            "FROM" | "MAINTAINER" => {
                return Err(self.at(
                    &inner.value,
                    format!("{trigger_kw} isn't allowed as an ONBUILD trigger"),
                ));
            }
            _ => {}
        }
        // The inner node may lack the outer line range and heredocs: give it ours.
        let mut inner = std::mem::take(&mut self.node.next[0].children[0]);
        inner.start_line = self.node.start_line;
        inner.end_line = self.node.end_line;
        if inner.heredocs.is_empty() {
            inner.heredocs = self.node.heredocs.clone();
        }
        let trigger = match (Parser {
            node: &mut inner,
            loc: self.loc,
        })
        .parse(true)?
        {
            Parsed::Command(c) => c,
            Parsed::Stage(_) => unreachable!("FROM rejected above"),
        };
        let mut expression = strip_keyword(&self.node.original, "ONBUILD").to_string();
        for h in &self.node.heredocs {
            expression.push('\n');
            expression.push_str(&h.content);
            expression.push_str(&h.name);
        }
        Ok(Onbuild {
            expression,
            trigger: Box::new(trigger),
        })
    }

    fn parse_healthcheck(&self, args: Vec<String>) -> Result<Healthcheck, SourceError> {
        if args.is_empty() {
            return Err(self.at_start("HEALTHCHECK requires at least one argument"));
        }
        let kind = args[0].to_ascii_uppercase();
        let rest = &args[1..];
        if kind == "NONE" {
            self.flags(&[])?;
            if !rest.is_empty() {
                return Err(self.at_start("HEALTHCHECK NONE takes no arguments"));
            }
            return Ok(Healthcheck {
                test: vec!["NONE".into()],
                interval: 0,
                timeout: 0,
                start_period: 0,
                start_interval: 0,
                retries: 0,
            });
        }
        let flags = self.flags(&[
            ("interval", Kind::String),
            ("timeout", Kind::String),
            ("start-period", Kind::String),
            ("start-interval", Kind::String),
            ("retries", Kind::String),
        ])?;
        if kind != "CMD" {
            return Err(self.at(
                &args[0],
                format!("unknown type {:?} in HEALTHCHECK (try CMD)", args[0]),
            ));
        }
        if rest.is_empty() {
            return Err(self.at_start("missing command after HEALTHCHECK CMD"));
        }
        let mut test = vec![if self.node.json {
            "CMD".to_string()
        } else {
            "CMD-SHELL".to_string()
        }];
        test.extend(rest.iter().cloned());
        let interval = |name: &str| -> Result<i64, SourceError> {
            let Some(v) = flags.string(name) else {
                return Ok(0);
            };
            if v.is_empty() {
                return Ok(0);
            }
            let flag = format!("--{name}");
            let d = duration::parse(&v).map_err(|m| self.at(&flag, m))?;
            if d < 0 {
                return Err(self.at(&flag, format!("{flag} cannot be negative")));
            }
            if d != 0 && d < 1_000_000 {
                return Err(self.at(&flag, format!("{flag} cannot be less than 1ms")));
            }
            Ok(d)
        };
        let retries = match flags.string("retries") {
            None => 0,
            Some(v) if v.is_empty() => 0,
            Some(v) => {
                let r: i64 = v
                    .parse()
                    .ok()
                    .filter(|r: &i64| i32::try_from(*r).is_ok())
                    .ok_or_else(|| {
                        self.at("--retries", format!("invalid value for --retries: {v}"))
                    })?;
                if r < 0 {
                    return Err(self.at("--retries", format!("--retries cannot be negative ({r})")));
                }
                r
            }
        };
        Ok(Healthcheck {
            test,
            interval: interval("interval")?,
            timeout: interval("timeout")?,
            start_period: interval("start-period")?,
            start_interval: interval("start-interval")?,
            retries,
        })
    }
}

fn heredoc_file(h: &Heredoc) -> HeredocFile {
    HeredocFile {
        name: h.name.clone(),
        content: h.content.clone(),
        chomp: h.chomp,
        expand: h.expand,
        fd: h.fd,
    }
}

/// The keyword upper-cased; known keywords without allocating.
fn keyword_upper(value: &str) -> std::borrow::Cow<'static, str> {
    match KEYWORDS.iter().find(|k| k.eq_ignore_ascii_case(value)) {
        Some(k) => std::borrow::Cow::Borrowed(k),
        None => std::borrow::Cow::Owned(value.to_ascii_uppercase()),
    }
}

/// `^\d*<<-?NAME$` → the name with quotes removed.
pub(crate) fn heredoc_marker(word: &str) -> Option<String> {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0c']);
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    Some(rest.chars().filter(|c| *c != '"' && *c != '\'').collect())
}

/// The text after a leading keyword (case-insensitive) and the blanks around it.
pub(crate) fn strip_keyword<'a>(original: &'a str, keyword: &str) -> &'a str {
    let t = original.trim_start();
    match t.get(..keyword.len()) {
        Some(k) if k.eq_ignore_ascii_case(keyword) => t[keyword.len()..].trim_start(),
        _ => t,
    }
}

/// `^[a-z][a-z0-9-_.]*$`
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// A comment line `NAME text` above the instruction gives `text`.
fn doc_comment(comments: &[String], name: &str) -> Option<String> {
    if comments.is_empty() {
        return None;
    }
    let prefix = format!("{name} ");
    comments.iter().find_map(|c| {
        c.trim_start()
            .strip_prefix(&prefix)
            .map(|d| d.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredoc_markers() {
        assert_eq!(heredoc_marker("<<EOF").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker("<<-'EOF'").as_deref(), Some("EOF"));
        assert_eq!(heredoc_marker("3<<\"IN\"").as_deref(), Some("IN"));
        assert_eq!(heredoc_marker("<<"), None);
        assert_eq!(heredoc_marker("file"), None);
        assert_eq!(heredoc_marker("<<<x"), None);
    }

    #[test]
    fn chomp_strips_leading_tabs_per_line() {
        assert_eq!(chomp("\t\tfoo\n\tbar\n baz\n"), "foo\nbar\n baz\n");
    }

    #[test]
    fn stage_names_and_doc_comments() {
        assert!(valid_stage_name("build-1.x_y"));
        assert!(!valid_stage_name("1build"));
        assert!(!valid_stage_name("b@d"));
        let c = vec![" base defines first stage".to_string(), "other".to_string()];
        assert_eq!(
            doc_comment(&c, "base").as_deref(),
            Some("defines first stage")
        );
        assert_eq!(doc_comment(&c, "foo"), None);
        assert_eq!(strip_keyword("  onbuild  RUN x", "ONBUILD"), "RUN x");
    }
}
