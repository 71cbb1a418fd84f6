//! The rules themselves: one walk over the typed instructions with the same
//! ARG/ENV scoping the converter uses, reporting at the instruction's start.

use std::collections::{BTreeMap, BTreeSet};

use super::reference::is_valid_reference;
use super::{CheckConfig, CheckOptions, Finding, rule};
use crate::convert::platform_args;
use crate::error::{Position, SourceError};
use crate::instructions::{
    self, Command, Instruction, KeyValues, Locator, SourceArg, Stage, suggest,
};
use crate::parser::{Ast, go_quote};
use crate::shell::Lexer;

/// Names the builder reads itself; using them undeclared is not a mistake.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Stage names BuildKit reserves.
const RESERVED_STAGE_NAMES: [&str; 2] = ["context", "scratch"];

/// Words in an ARG or ENV name that suggest a secret, and words that clear it
/// (BuildKit's lists): matched as the whole name or a `_`-separated part.
const SECRET_WORDS: [&str; 10] = [
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];
const ALLOWED_WORDS: [&str; 3] = ["public", "file", "version"];

struct Linter<'a> {
    config: &'a CheckConfig,
    findings: Vec<Finding>,
}

impl Linter<'_> {
    fn emit(&mut self, name: &str, position: Position, message: String) {
        let r = rule(name).expect("rules are listed");
        if self.config.enabled(r.name, r.experimental) {
            self.findings.push(Finding {
                rule: r.name,
                message,
                position,
                url: r.url,
            });
        }
    }
}

/// A stage's variables while walking it.
#[derive(Debug, Clone, Default)]
struct Scope {
    /// ENV and ARG values in order; the last assignment wins.
    env: Vec<(String, String)>,
    /// ARG names declared in the stage (with or without a value).
    declared: BTreeSet<String>,
    shell_set: bool,
    workdir_set: bool,
}

impl Scope {
    fn set(&mut self, key: &str, value: String) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.env.push((key.to_string(), value)),
        }
    }
}

pub(super) fn evaluate(
    ast: Ast,
    src: &[u8],
    opts: &CheckOptions<'_>,
    config: &CheckConfig,
) -> Result<Vec<Finding>, SourceError> {
    let mut lint = Linter {
        config,
        findings: Vec::new(),
    };
    for w in &ast.warnings {
        if w.message.starts_with("empty continuation line") {
            lint.emit(
                "NoEmptyContinuation",
                Position::new(w.line, 1),
                "Empty continuation line".into(),
            );
        }
    }
    let escape = if ast.escape == '\0' { '\\' } else { ast.escape };
    let lexer = Lexer::new(escape);
    let loc = Locator::new(src);
    // Comments above FROM and ARG, by line, for InvalidDefinitionDescription.
    let comments: BTreeMap<usize, Vec<String>> = ast
        .children
        .iter()
        .filter(|n| {
            !n.prev_comment.is_empty()
                && (n.value.eq_ignore_ascii_case("from") || n.value.eq_ignore_ascii_case("arg"))
        })
        .map(|n| (n.start_line, n.prev_comment.clone()))
        .collect();
    let df = instructions::parse_dockerfile(ast, &loc)?;
    for s in &df.stages {
        if let [_, _, name] = from_words(&s.original)[..] {
            definition_comment(&mut lint, &comments, "FROM", &[name], s);
        }
    }
    for cmd in df
        .meta_args
        .iter()
        .chain(df.stages.iter().flat_map(|s| s.commands.iter()))
    {
        if let Instruction::Arg { args } = &cmd.instruction {
            let keys: Vec<&str> = args.iter().map(|a| a.key.as_str()).collect();
            definition_comment(&mut lint, &comments, "ARG", &keys, cmd);
        }
    }

    instruction_casing(&mut lint, &df.stages);
    stage_names(&mut lint, &df.stages);

    // The global scope: predefined platform args, then global ARGs (with
    // build args, and with defaults only for InvalidDefaultArgInFrom).
    let target = opts
        .platform
        .clone()
        .unwrap_or_else(|| opts.build_platform.clone());
    let build = &opts.build_platform;
    let mut global = platform_args(&opts.build_args, &target, build);
    let mut defaults = global.clone();
    let mut global_declared: BTreeSet<String> = BTreeSet::new();
    for cmd in &df.meta_args {
        let Instruction::Arg { args } = &cmd.instruction else {
            continue;
        };
        for a in args {
            secret_key(&mut lint, "ARG", &a.key, cmd.position);
            global_declared.insert(a.key.clone());
            let default = a
                .value
                .as_deref()
                .and_then(|v| lexer.process_word(v, &global).ok())
                .map(|p| p.value);
            let default_only = a
                .value
                .as_deref()
                .and_then(|v| lexer.process_word(v, &defaults).ok())
                .map(|p| p.value);
            if let Some(v) = opts.build_args.get(&a.key).cloned().or(default) {
                set(&mut global, &a.key, v);
            }
            if let Some(v) = default_only {
                set(&mut defaults, &a.key, v);
            }
        }
    }

    let mut scopes: Vec<Scope> = Vec::with_capacity(df.stages.len());
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, stage) in df.stages.iter().enumerate() {
        from_line(
            &mut lint,
            stage,
            &lexer,
            &global,
            &defaults,
            &global_declared,
        );
        let base = lexer
            .process_word(&stage.base, &global)
            .map(|p| p.value)
            .unwrap_or_default();
        let mut scope = match names.get(&base.to_ascii_lowercase()) {
            Some(&parent) => scopes[parent].clone(),
            None => Scope {
                env: opts.image_env.get(&base).cloned().unwrap_or_else(|| {
                    vec![(
                        "PATH".to_string(),
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                    )]
                }),
                ..Scope::default()
            },
        };
        let mut walker = StageWalker {
            lint: &mut lint,
            lexer: &lexer,
            opts,
            global: &global,
            global_declared: &global_declared,
            scope: &mut scope,
            cmd: None,
            entrypoint: None,
            healthcheck: None,
        };
        for cmd in &stage.commands {
            walker.command(cmd);
        }
        scopes.push(scope);
        if let Some(n) = &stage.name {
            names.entry(n.clone()).or_insert(i);
        }
    }
    Ok(lint.findings)
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// The keyword as written (the first word of the logical line).
fn keyword(original: &str) -> &str {
    original.split_whitespace().next().unwrap_or("")
}

fn self_consistent(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// ConsistentInstructionCasing: every keyword (FROM lines and the stages'
/// instructions) against the casing of the majority.
fn instruction_casing(lint: &mut Linter<'_>, stages: &[Stage]) {
    let keywords = || {
        stages.iter().flat_map(|s| {
            std::iter::once((keyword(&s.original), s.position)).chain(
                s.commands
                    .iter()
                    .map(|c| (keyword(&c.original), c.position)),
            )
        })
    };
    let (mut lower, mut upper) = (0usize, 0usize);
    for (k, _) in keywords() {
        if self_consistent(k) {
            if k == k.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for (k, pos) in keywords() {
        let wrong = if majority_lower && k.to_lowercase() != k {
            Some("lowercase")
        } else if !majority_lower && k.to_uppercase() != k {
            Some("uppercase")
        } else {
            None
        };
        if let Some(casing) = wrong {
            lint.emit(
                "ConsistentInstructionCasing",
                pos,
                format!("Command '{k}' should match the case of the command majority ({casing})"),
            );
        }
    }
}

/// The words of a FROM line after its flags: base, `AS`, name.
fn from_words(original: &str) -> Vec<&str> {
    original
        .split_whitespace()
        .skip(1)
        .filter(|w| !w.starts_with("--"))
        .collect()
}

/// StageNameCasing, FromAsCasing, ReservedStageName, DuplicateStageName.
fn stage_names(lint: &mut Linter<'_>, stages: &[Stage]) {
    let mut seen = BTreeSet::new();
    for s in stages {
        let Some(name) = &s.name else { continue };
        let words = from_words(&s.original);
        let from = keyword(&s.original);
        if let [_, as_word, written] = words[..] {
            if written != written.to_lowercase() {
                lint.emit(
                    "StageNameCasing",
                    s.position,
                    format!("Stage name '{written}' should be lowercase"),
                );
            }
            let from_lower = from == from.to_lowercase();
            let from_upper = from == from.to_uppercase();
            let mismatch = if from_lower {
                as_word != as_word.to_lowercase()
            } else {
                from_upper && as_word != as_word.to_uppercase()
            };
            if mismatch {
                lint.emit(
                    "FromAsCasing",
                    s.position,
                    format!("'{as_word}' and '{from}' keywords' casing do not match"),
                );
            }
        }
        if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
            lint.emit(
                "ReservedStageName",
                s.position,
                format!(
                    "Stage name should not use the same name as reserved stage {}",
                    go_quote(name)
                ),
            );
        }
        if !seen.insert(name.clone()) {
            lint.emit(
                "DuplicateStageName",
                s.position,
                format!(
                    "Duplicate stage name {}, stage names should be unique",
                    go_quote(name)
                ),
            );
        }
    }
}

/// UndefinedArgInFrom, InvalidDefaultArgInFrom and the `--platform` rules.
fn from_line(
    lint: &mut Linter<'_>,
    s: &Stage,
    lexer: &Lexer,
    global: &[(String, String)],
    defaults: &[(String, String)],
    declared: &BTreeSet<String>,
) {
    let undeclared = |lint: &mut Linter<'_>, unmatched: &BTreeSet<String>| {
        for arg in unmatched {
            if declared.contains(arg) {
                continue;
            }
            let mut message = format!("FROM argument '{arg}' is not declared");
            if let Some(s) = suggest::closest(arg, declared.iter().map(String::as_str), true) {
                message.push_str(&format!(" (did you mean {s}?)"));
            }
            lint.emit("UndefinedArgInFrom", s.position, message);
        }
    };
    if let Ok(p) = lexer.process_word(&s.base, &global) {
        undeclared(lint, &p.unmatched);
    }
    let valid = lexer
        .process_word(&s.base, &defaults)
        .is_ok_and(|p| is_valid_reference(&p.value));
    if !valid {
        lint.emit(
            "InvalidDefaultArgInFrom",
            s.position,
            format!(
                "Default value for ARG {} results in empty or invalid base image name",
                s.base
            ),
        );
    }
    let Some(platform) = &s.platform else { return };
    let Ok(p) = lexer.process_word(platform, &global) else {
        return;
    };
    undeclared(lint, &p.unmatched);
    if p.matched.is_empty() && p.unmatched.is_empty() {
        // A constant platform, unless the stage is named after it.
        let mut parts = p.value.split('/');
        let os = parts.next().unwrap_or("").to_ascii_lowercase();
        let arch = parts.next().unwrap_or("").to_ascii_lowercase();
        let name = s.name.as_deref().unwrap_or("");
        if !os.is_empty()
            && !arch.is_empty()
            && !name.contains(os.as_str())
            && !name.contains(arch.as_str())
        {
            lint.emit(
                "FromPlatformFlagConstDisallowed",
                s.position,
                format!(
                    "FROM --platform flag should not use constant value {}",
                    go_quote(&p.value)
                ),
            );
        }
    } else if p.matched.len() == 1
        && p.unmatched.is_empty()
        && p.matched.contains("TARGETPLATFORM")
        && global
            .iter()
            .rev()
            .find(|(k, _)| k == "TARGETPLATFORM")
            .is_some_and(|(_, v)| *v == p.value)
    {
        lint.emit(
            "RedundantTargetPlatform",
            s.position,
            format!(
                "Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"
            ),
        );
    }
}

/// Something with a first line and a position.
trait Located {
    fn start_line(&self) -> usize;
    fn position(&self) -> Position;
}

impl Located for Stage {
    fn start_line(&self) -> usize {
        self.span.start_line
    }
    fn position(&self) -> Position {
        self.position
    }
}

impl Located for Command {
    fn start_line(&self) -> usize {
        self.span.start_line
    }
    fn position(&self) -> Position {
        self.position
    }
}

/// InvalidDefinitionDescription (experimental): the comment right above a
/// named FROM or an ARG should start with the name it describes.
fn definition_comment(
    lint: &mut Linter<'_>,
    comments: &BTreeMap<usize, Vec<String>>,
    instruction: &str,
    keys: &[&str],
    at: &impl Located,
) {
    let Some(last) = comments.get(&at.start_line()).and_then(|c| c.last()) else {
        return;
    };
    if keys.is_empty() || keys.contains(&last.split(' ').next().unwrap_or("")) {
        return;
    }
    let example = if keys.len() > 1 { "<arg_key>" } else { keys[0] };
    lint.emit(
        "InvalidDefinitionDescription",
        at.position(),
        format!("Comment for {instruction} should follow the format: `# {example} <description>`"),
    );
}

/// SecretsUsedInArgOrEnv.
fn secret_key(lint: &mut Linter<'_>, instruction: &str, key: &str, pos: Position) {
    let lower = key.to_lowercase();
    let parts: Vec<&str> = lower.split('_').collect();
    let edge = |words: &[&str]| {
        words.contains(&lower.as_str())
            || parts.first().is_some_and(|p| words.contains(p))
            || parts.last().is_some_and(|p| words.contains(p))
    };
    if edge(&SECRET_WORDS) && !edge(&ALLOWED_WORDS) {
        lint.emit(
            "SecretsUsedInArgOrEnv",
            pos,
            format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
                go_quote(key)
            ),
        );
    }
}

struct StageWalker<'a, 'l> {
    lint: &'a mut Linter<'l>,
    lexer: &'a Lexer,
    opts: &'a CheckOptions<'a>,
    global: &'a [(String, String)],
    global_declared: &'a BTreeSet<String>,
    scope: &'a mut Scope,
    /// Where the last CMD, ENTRYPOINT and HEALTHCHECK of the stage are.
    cmd: Option<Position>,
    entrypoint: Option<Position>,
    healthcheck: Option<Position>,
}

impl StageWalker<'_, '_> {
    /// Expands one word in the stage's scope, collecting the names used but
    /// not defined into `undefined` (in order of use, each once).
    fn expand(&self, word: &str, undefined: &mut Vec<String>) -> String {
        match self.lexer.process_word(word, &self.scope.env) {
            Ok(p) => {
                for v in p.unmatched {
                    if !self.scope.declared.contains(&v) && !undefined.contains(&v) {
                        undefined.push(v);
                    }
                }
                p.value
            }
            Err(_) => word.to_string(),
        }
    }

    /// UndefinedVar for what [`StageWalker::expand`] collected.
    fn report_undefined(&mut self, undefined: Vec<String>, pos: Position) {
        for var in undefined {
            if NON_ENV_ARGS.contains(&var.as_str()) {
                continue;
            }
            let mut message = format!("Usage of undefined variable '${var}'");
            if let Some(s) =
                suggest::closest(&var, self.scope.env.iter().map(|(k, _)| k.as_str()), true)
            {
                message.push_str(&format!(" (did you mean ${s}?)"));
            }
            self.lint.emit("UndefinedVar", pos, message);
        }
    }

    fn used_once(&mut self, which: Which, cmd: &Command) {
        let slot = match which {
            Which::Cmd => &mut self.cmd,
            Which::Entrypoint => &mut self.entrypoint,
            Which::Healthcheck => &mut self.healthcheck,
        };
        // The earlier one is reported: it is the one that has no effect.
        if let Some(prev) = slot.replace(cmd.position) {
            self.lint.emit(
                "MultipleInstructionsDisallowed",
                prev,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    keyword(&cmd.original)
                ),
            );
        }
    }

    fn key_values(&mut self, cmd: &Command, kv: &KeyValues, is_env: bool) {
        let mut undefined = Vec::new();
        let mut assigned = Vec::new();
        for pair in &kv.pairs {
            if pair.legacy {
                let name = keyword(&cmd.original);
                self.lint.emit(
                    "LegacyKeyValueFormat",
                    cmd.position,
                    format!(
                        "\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"
                    ),
                );
            }
            let key = self.expand(&pair.key, &mut undefined);
            let value = self.expand(&pair.value, &mut undefined);
            if is_env {
                secret_key(self.lint, "ENV", &key, cmd.position);
            }
            assigned.push((key, value));
        }
        self.report_undefined(undefined, cmd.position);
        if is_env {
            // All pairs of one ENV see the environment from before it.
            for (k, v) in assigned {
                self.scope.set(&k, v);
            }
        }
    }

    fn command(&mut self, cmd: &Command) {
        let pos = cmd.position;
        let mut undefined = Vec::new();
        match &cmd.instruction {
            Instruction::Env(kv) => self.key_values(cmd, kv, true),
            Instruction::Label(kv) => self.key_values(cmd, kv, false),
            Instruction::Arg { args } => {
                for a in args {
                    secret_key(self.lint, "ARG", &a.key, pos);
                    let default = a.value.as_deref().map(|v| self.expand(v, &mut undefined));
                    let value = self.opts.build_args.get(&a.key).cloned().or_else(|| {
                        if a.value.is_none() && self.global_declared.contains(&a.key) {
                            self.global
                                .iter()
                                .rev()
                                .find(|(k, _)| *k == a.key)
                                .map(|(_, v)| v.clone())
                        } else {
                            default
                        }
                    });
                    self.scope.declared.insert(a.key.clone());
                    if let Some(v) = value {
                        self.scope.set(&a.key, v);
                    }
                }
                self.report_undefined(undefined, pos);
            }
            Instruction::Workdir { path } => {
                let path = self.expand(path, &mut undefined);
                self.report_undefined(undefined, pos);
                if !self.scope.workdir_set && !path.starts_with('/') {
                    self.lint.emit(
                        "WorkdirRelativePath",
                        pos,
                        format!(
                            "Relative workdir {} can have unexpected results if the base image changes",
                            go_quote(&path)
                        ),
                    );
                }
                self.scope.workdir_set = true;
            }
            Instruction::User { user } => {
                self.expand(user, &mut undefined);
                self.report_undefined(undefined, pos);
            }
            Instruction::StopSignal { signal } => {
                self.expand(signal, &mut undefined);
                self.report_undefined(undefined, pos);
            }
            Instruction::Volume { volumes } => {
                for v in volumes {
                    self.expand(v, &mut undefined);
                }
                self.report_undefined(undefined, pos);
            }
            Instruction::Copy(c) => {
                self.copy(cmd, &c.args, c.from.is_some(), "Copy");
            }
            Instruction::Add(a) => {
                self.copy(cmd, &a.args, false, "Add");
            }
            Instruction::Expose { ports } => self.expose(pos, ports),
            Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                let which = if matches!(cmd.instruction, Instruction::Cmd(_)) {
                    Which::Cmd
                } else {
                    Which::Entrypoint
                };
                self.used_once(which, cmd);
                if c.prepend_shell && !self.scope.shell_set {
                    self.lint.emit(
                        "JSONArgsRecommended",
                        pos,
                        format!(
                            "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                            keyword(&cmd.original)
                        ),
                    );
                }
            }
            Instruction::Healthcheck(_) => self.used_once(Which::Healthcheck, cmd),
            Instruction::Shell { .. } => self.scope.shell_set = true,
            Instruction::Maintainer { .. } => self.lint.emit(
                "MaintainerDeprecated",
                pos,
                "Maintainer instruction is deprecated in favor of using label".into(),
            ),
            Instruction::Run(_) | Instruction::Onbuild(_) => {}
        }
    }

    fn copy(&mut self, cmd: &Command, args: &instructions::CopyArgs, from: bool, verb: &str) {
        let mut undefined = Vec::new();
        let mut sources = Vec::new();
        for s in &args.sources {
            if let SourceArg::Path(p) = s {
                sources.push(self.expand(p, &mut undefined));
            }
        }
        self.expand(&args.dest, &mut undefined);
        for flag in [&args.chown, &args.chmod].into_iter().flatten() {
            self.expand(flag, &mut undefined);
        }
        self.report_undefined(undefined, cmd.position);
        let Some(matcher) = self.opts.ignore else {
            return;
        };
        // With `!` exceptions a directory may be excluded while a file in it
        // is not: too hard to decide statically, as BuildKit says.
        if from || matcher.exclusions() {
            return;
        }
        for src in sources {
            if verb == "Add" && is_remote(&src) {
                continue;
            }
            let clean = crate::dockerignore::clean(&src);
            let clean = clean.trim_start_matches('/');
            let ignored = if clean.is_empty() || clean == "." {
                matcher
                    .patterns()
                    .iter()
                    .any(|p| !p.is_exception() && matches!(p.as_str(), "*" | "**" | "**/*"))
            } else {
                matcher.matches(clean)
            };
            if ignored {
                let shown = crate::dockerignore::clean(&src);
                self.lint.emit(
                    "CopyIgnoredFile",
                    cmd.position,
                    format!(
                        "Attempting to {verb} file {} that is excluded by .dockerignore",
                        go_quote(&shown)
                    ),
                );
            }
        }
    }

    fn expose(&mut self, pos: Position, ports: &[String]) {
        for word in ports {
            let expanded = self
                .lexer
                .process_words(word, &self.scope.env)
                .unwrap_or_else(|_| vec![word.clone()]);
            for raw in expanded {
                // `[ip:]host:container/proto`, split as BuildKit does.
                let parts: Vec<&str> = raw.split(':').collect();
                let n = parts.len();
                let container = parts[n - 1];
                let mapped =
                    n > 1 && (!parts[n - 2].is_empty() || !parts[..n - 2].join(":").is_empty());
                let (_, proto) = container.split_once('/').unwrap_or((container, ""));
                if proto != proto.to_lowercase() {
                    self.lint.emit(
                        "ExposeProtoCasing",
                        pos,
                        format!(
                            "Defined protocol '{raw}' in EXPOSE instruction should be lowercase"
                        ),
                    );
                }
                if mapped {
                    self.lint.emit(
                        "ExposeInvalidFormat",
                        pos,
                        format!(
                            "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"
                        ),
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Cmd,
    Entrypoint,
    Healthcheck,
}

/// ADD sources that are not in the context.
fn is_remote(src: &str) -> bool {
    src.starts_with("http://")
        || src.starts_with("https://")
        || src.starts_with("git@")
        || src.starts_with("git://")
}
