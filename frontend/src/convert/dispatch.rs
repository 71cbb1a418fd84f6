//! Dispatching a stage: its starting state, then one instruction at a time
//! (ENV, ARG, LABEL and the other metadata instructions here; RUN and
//! COPY/ADD in their own modules).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::args::{GlobalArgs, proxy_env};
use super::image::{Empty, HealthConfig, ImageConfig, go_list, go_quote_list};
use super::platform::Platform;
use super::stages::{Base, Plan, Planned, SourceRef, normalize_reference};
use super::{CompileOptions, Warning};
use crate::error::{Position, SourceError};
use crate::graph::{BuildGraph, ContextOp, Op, Shared, SourceOp, Vertex, VertexId};
use crate::instructions::{self, Command, Instruction, KeyValues, Locator, Span};
use crate::shell::Lexer;

/// The environment of a stage (image ENV plus ARG values): ordered, with an
/// index for lookups, and the `KEY=VALUE` list shared by RUN steps until it
/// changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvState {
    /// `(key, "key=value")`.
    entries: Vec<(String, Shared<str>)>,
    index: HashMap<String, usize>,
    list: Option<Shared<Vec<Shared<str>>>>,
}

impl EnvState {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|&i| {
            let (k, kv) = &self.entries[i];
            &kv[k.len() + 1..]
        })
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Sets a variable, replacing an earlier value in place.
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.list = None;
        let mut kv = String::with_capacity(key.len() + value.len() + 1);
        kv.push_str(key);
        kv.push('=');
        kv.push_str(value);
        let kv = Shared::from(kv);
        match self.index.get(key) {
            Some(&i) => self.entries[i].1 = kv,
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push((key.to_string(), kv));
            }
        }
    }

    /// The env as `KEY=VALUE` strings.
    pub(crate) fn list(&mut self) -> Shared<Vec<Shared<str>>> {
        if let Some(l) = &self.list {
            return l.clone();
        }
        let l: Shared<Vec<Shared<str>>> =
            Shared::new(self.entries.iter().map(|(_, kv)| kv.clone()).collect());
        self.list = Some(l.clone());
        l
    }
}

impl crate::shell::Env for EnvState {
    fn get(&self, name: &str) -> Option<&str> {
        EnvState::get(self, name)
    }
}

/// The build state of a stage while it is dispatched.
#[derive(Debug, Clone)]
pub(crate) struct StageState {
    pub(crate) index: usize,
    /// The name in progress descriptions ("" when the file has one stage).
    pub(crate) display: String,
    /// The vertex holding the stage's filesystem so far.
    pub(crate) tip: VertexId,
    pub(crate) image: ImageConfig,
    /// Environment for expansion and RUN: image ENV plus ARG values.
    pub(crate) env: EnvState,
    /// ARGs declared so far (inherited from a base stage too), with values.
    pub(crate) args: Vec<(String, Option<String>)>,
    /// The declared ARGs that have a value, shared by RUN vertices.
    args_in_env: Option<Shared<BTreeSet<String>>>,
    /// The `|N k=v …` part of RUN history entries while ARGs and env stay
    /// the same.
    pub(crate) run_prefix: Option<String>,
    pub(crate) workdir: String,
    pub(crate) user: Option<String>,
    pub(crate) platform: Platform,
    /// CMD was set in this stage (so ENTRYPOINT keeps it).
    cmd_set: bool,
    cmd_index: usize,
    cmd_total: usize,
    in_onbuild: bool,
}

impl StageState {
    /// `[name i/N] text`, numbering the steps that make vertices.
    pub(crate) fn describe(&mut self, text: &str) -> String {
        if self.cmd_total == 0 {
            return text.to_string();
        }
        self.cmd_index += 1;
        let width = decimal_digits(self.cmd_total);
        let mut out = String::from("[");
        if !self.display.is_empty() {
            out.push_str(&self.display);
            out.push(' ');
        }
        out.push_str(&format!("{:>width$}/{}] ", self.cmd_index, self.cmd_total));
        if self.in_onbuild {
            out.push_str("ONBUILD ");
        }
        out.push_str(text);
        out
    }

    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        self.run_prefix = None;
        self.env.set(key, value);
    }

    /// Declares an ARG (its value, if any, is already in the env).
    pub(crate) fn push_arg(&mut self, key: &str, value: Option<String>) {
        self.args_in_env = None;
        self.run_prefix = None;
        self.args.push((key.to_string(), value));
    }

    /// Declared ARG names among `names`.
    pub(crate) fn arg_deps<'n>(
        &self,
        names: impl IntoIterator<Item = &'n String>,
    ) -> BTreeSet<String> {
        names
            .into_iter()
            .filter(|n| self.args.iter().any(|(k, _)| k == *n))
            .cloned()
            .collect()
    }

    /// Declared ARGs that have a value (they are in the environment).
    pub(crate) fn args_in_env(&mut self) -> Shared<BTreeSet<String>> {
        if let Some(s) = &self.args_in_env {
            return s.clone();
        }
        let set: BTreeSet<String> = self
            .args
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let s = Shared::new(set);
        self.args_in_env = Some(s.clone());
        s
    }
}

/// Expands words with a stage's environment, remembering the names read.
pub(crate) struct Expander<'s> {
    lexer: Lexer,
    env: &'s EnvState,
    loc: &'s Locator,
    span: Span,
    pub(crate) matched: BTreeSet<String>,
}

impl<'s> Expander<'s> {
    pub(crate) fn new(lexer: Lexer, env: &'s EnvState, loc: &'s Locator, span: Span) -> Self {
        Self {
            lexer,
            env,
            loc,
            span,
            matched: BTreeSet::new(),
        }
    }

    /// Whether the lexer would return `w` unchanged: no variables, no
    /// escapes and (when quotes are removed) no quotes. Most words are
    /// like that, and the lexer is the costly part of conversion.
    fn is_literal(&self, w: &str, quotes_matter: bool) -> bool {
        !w.chars().any(|c| {
            c == '$' || c == self.lexer.escape || (quotes_matter && (c == '\'' || c == '"'))
        })
    }

    /// One word, quotes removed; an error points at the word.
    pub(crate) fn word(&mut self, w: &str) -> Result<String, SourceError> {
        if self.is_literal(w, true) {
            return Ok(w.to_string());
        }
        let p = self
            .lexer
            .process_word(w, self.env)
            .map_err(|e| SourceError::new(self.loc.find(self.span, w), e.message))?;
        self.matched.extend(p.matched);
        Ok(p.value)
    }

    /// A word split into several after expansion (EXPOSE).
    pub(crate) fn words(&mut self, w: &str) -> Result<Vec<String>, SourceError> {
        let err =
            |e: crate::shell::ShellError| SourceError::new(self.loc.find(self.span, w), e.message);
        let words = self.lexer.process_words(w, self.env).map_err(err)?;
        if let Ok(p) = self.lexer.process_word(w, self.env) {
            self.matched.extend(p.matched);
        }
        Ok(words)
    }

    /// Expansion that only replaces variables (heredoc bodies): quotes kept.
    pub(crate) fn raw(&mut self, w: &str) -> Result<String, SourceError> {
        let mut lex = Lexer::new('\\');
        lex.skip_process_quotes = true;
        let p = lex
            .process_word(w, self.env)
            .map_err(|e| SourceError::new(self.loc.start(self.span), e.message))?;
        self.matched.extend(p.matched);
        Ok(p.value)
    }

    /// Human-readable form of an instruction line: variables that are set
    /// replaced, quotes and unknown variables kept; the keyword upper-cased.
    pub(crate) fn display(&self, original: &str) -> String {
        let mut text = if self.is_literal(original, false) {
            original.to_string()
        } else {
            let mut lex = self.lexer;
            lex.raw_quotes = true;
            lex.skip_unset_env = true;
            lex.process_word(original, self.env)
                .map(|p| p.value)
                .unwrap_or_else(|_| original.to_string())
        };
        let kw_len = text.find(' ').unwrap_or(text.len());
        text[..kw_len].make_ascii_uppercase();
        text
    }
}

/// Per-name use of a local context.
#[derive(Debug)]
struct ContextUse {
    vertex: VertexId,
    all: bool,
    paths: BTreeSet<String>,
}

/// The conversion of all needed stages into one graph.
pub(crate) struct Converter<'a> {
    pub(crate) opts: &'a CompileOptions,
    pub(crate) lexer: Lexer,
    pub(crate) loc: &'a Locator,
    pub(crate) graph: BuildGraph,
    pub(crate) global: GlobalArgs,
    /// Proxy variables from the build args.
    pub(crate) proxy: Vec<String>,
    pub(crate) states: Vec<Option<StageState>>,
    /// ARG names declared in dispatched stages.
    pub(crate) consumed: BTreeSet<String>,
    pub(crate) warnings: Vec<Warning>,
    scratch: Option<VertexId>,
    contexts: BTreeMap<String, ContextUse>,
    images: HashMap<(String, String), VertexId>,
    single_stage: bool,
}

impl<'a> Converter<'a> {
    pub(crate) fn new(
        opts: &'a CompileOptions,
        lexer: Lexer,
        loc: &'a Locator,
        global: GlobalArgs,
        single_stage: bool,
    ) -> Self {
        let proxy = proxy_env(&opts.build_args)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Self {
            opts,
            lexer,
            loc,
            graph: BuildGraph::new(),
            global,
            proxy,
            states: Vec::new(),
            consumed: BTreeSet::new(),
            warnings: Vec::new(),
            scratch: None,
            contexts: BTreeMap::new(),
            images: HashMap::new(),
            single_stage,
        }
    }

    pub(crate) fn add_vertex(
        &mut self,
        op: Op,
        inputs: Vec<VertexId>,
        description: String,
        stage: Option<usize>,
        position: Option<Position>,
        build_args: Shared<BTreeSet<String>>,
    ) -> VertexId {
        self.graph.add(Vertex {
            op,
            inputs,
            description,
            stage,
            position: position.map(Into::into),
            build_args,
        })
    }

    pub(crate) fn scratch(&mut self) -> VertexId {
        if let Some(v) = self.scratch {
            return v;
        }
        let v = self.add_vertex(
            Op::Scratch,
            vec![],
            "scratch".into(),
            None,
            None,
            Shared::default(),
        );
        self.scratch = Some(v);
        v
    }

    /// The context vertex `name`; `path` (absolute, cleaned) is recorded as
    /// used, `/` meaning the whole context.
    pub(crate) fn context(&mut self, name: &str, path: &str) -> VertexId {
        let vertex = match self.contexts.get(name) {
            Some(c) => c.vertex,
            None => {
                let description = if name == "context" {
                    "[internal] load build context".to_string()
                } else {
                    format!("[context {name}] load local context")
                };
                let op = Op::Context(ContextOp {
                    name: name.to_string(),
                    all: false,
                    include: Vec::new(),
                });
                let v = self.add_vertex(op, vec![], description, None, None, Shared::default());
                self.contexts.insert(
                    name.to_string(),
                    ContextUse {
                        vertex: v,
                        all: false,
                        paths: BTreeSet::new(),
                    },
                );
                v
            }
        };
        let c = self.contexts.get_mut(name).expect("inserted above");
        if path == "/" || path.is_empty() {
            c.all = true;
        } else {
            c.paths.insert(path.trim_start_matches('/').to_string());
        }
        vertex
    }

    /// Writes the recorded paths into the context vertices.
    pub(crate) fn finish_contexts(&mut self) {
        let uses: Vec<(VertexId, bool, Vec<String>)> = self
            .contexts
            .values()
            .map(|c| (c.vertex, c.all, c.paths.iter().cloned().collect()))
            .collect();
        for (v, all, paths) in uses {
            if let Op::Context(op) = &mut self.graph.vertex_mut(v).op {
                op.all = all;
                op.include = if all { Vec::new() } else { paths };
            }
        }
    }

    /// A source vertex for an image read by `--from`/`from=` (shared).
    pub(crate) fn image_source(&mut self, reference: &str, platform: &Platform) -> VertexId {
        let normalized = normalize_reference(reference);
        let key = (
            normalized.clone().unwrap_or_else(|| reference.to_string()),
            platform.to_string(),
        );
        if let Some(v) = self.images.get(&key) {
            return *v;
        }
        let description = format!("FROM {}", key.0);
        let op = Op::Source(SourceOp {
            reference: reference.to_string(),
            normalized,
            platform: platform.to_string(),
            digest: None,
        });
        let v = self.add_vertex(op, vec![], description, None, None, Shared::default());
        self.images.insert(key, v);
        v
    }

    /// The vertex a `--from`/`from=` reads, or why it cannot be read yet.
    pub(crate) fn source_vertex(
        &mut self,
        src: &SourceRef,
        current: &StageState,
        plan: &Plan<'_>,
        what: &str,
        span: Span,
        needle: &str,
    ) -> Result<VertexId, SourceError> {
        match src {
            SourceRef::Stage(j) => match self.states.get(*j).and_then(Option::as_ref) {
                Some(st) if *j != current.index => Ok(st.tip),
                _ => Err(SourceError::new(
                    self.loc.find(span, needle),
                    format!(
                        "cannot {what} from stage {:?}, it needs to be defined before current stage {:?}",
                        plan.stages[*j].display, plan.stages[current.index].display
                    ),
                )),
            },
            SourceRef::Image(r) => Ok(self.image_source(r, &current.platform)),
            SourceRef::Context(name) => Ok(self.context(name, "/")),
        }
    }

    /// Sets up stage `i` from its base and dispatches its commands.
    pub(crate) fn dispatch_stage(&mut self, plan: &Plan<'_>, i: usize) -> Result<(), SourceError> {
        if self.states.len() <= i {
            self.states.resize_with(i + 1, || None);
        }
        let sp = &plan.stages[i];
        let def = sp.def;
        let display = if self.single_stage {
            String::new()
        } else {
            sp.display.clone()
        };
        let mut total = sp
            .commands
            .iter()
            .filter(|c| {
                c.onbuild
                    || matches!(
                        c.cmd.instruction,
                        Instruction::Run(_)
                            | Instruction::Copy(_)
                            | Instruction::Add(_)
                            | Instruction::Workdir { .. }
                    )
            })
            .count();
        if matches!(sp.base, Base::Image(_)) {
            total += 1;
        }
        let mut st = match &sp.base {
            Base::Stage(p) => {
                let parent = self.states[*p]
                    .as_ref()
                    .expect("a base stage is dispatched before its children");
                let mut st = parent.clone();
                st.image.config.on_build.clear();
                st.index = i;
                st.display = display;
                st.cmd_set = false;
                st.cmd_index = 0;
                st.cmd_total = total;
                st.in_onbuild = false;
                st
            }
            base => {
                let platform = sp.platform.clone();
                let mut st = StageState {
                    index: i,
                    display,
                    tip: 0,
                    image: ImageConfig::empty(&platform),
                    env: EnvState::default(),
                    args: Vec::new(),
                    args_in_env: None,
                    run_prefix: None,
                    workdir: "/".into(),
                    user: None,
                    platform,
                    cmd_set: false,
                    cmd_index: 0,
                    cmd_total: total,
                    in_onbuild: false,
                };
                st.tip = match base {
                    Base::Scratch => self.scratch(),
                    Base::Context(name) => self.context(name, "/"),
                    Base::Image(reference) => {
                        let resolved = sp.resolved.clone();
                        let digest = resolved.as_ref().and_then(|r| r.digest.clone());
                        if let Some(img) = resolved.and_then(|r| r.image) {
                            st.image = img;
                            if st.image.os.is_empty() {
                                st.image.os = st.platform.os.clone();
                                st.image.architecture = st.platform.architecture.clone();
                                st.image.variant = st.platform.variant.clone();
                            }
                        }
                        let normalized = normalize_reference(reference);
                        let mut shown = normalized.clone().unwrap_or_else(|| reference.clone());
                        if let Some(d) = &digest {
                            if !shown.contains('@') {
                                shown = format!("{shown}@{d}");
                            }
                        }
                        let description = st.describe(&format!("FROM {shown}"));
                        let op = Op::Source(SourceOp {
                            reference: reference.clone(),
                            normalized,
                            platform: st.platform.to_string(),
                            digest,
                        });
                        self.add_vertex(
                            op,
                            vec![],
                            description,
                            Some(i),
                            Some(def.position),
                            sp.base_args.clone().into(),
                        )
                    }
                    Base::Stage(_) => unreachable!(),
                };
                st
            }
        };
        // Triggers from the base image run once, here; they are not inherited.
        if !matches!(sp.base, Base::Stage(_)) {
            st.image.config.on_build.clear();
        }
        if st.image.env_value("PATH").is_none() && st.platform.os != "windows" {
            st.image
                .config
                .env
                .push(format!("PATH={}", super::platform::DEFAULT_PATH));
        }
        for e in st.image.config.env.clone() {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            st.set_env(k, v);
        }
        if !matches!(sp.base, Base::Stage(_)) {
            if !st.image.config.working_dir.is_empty() {
                st.workdir = normalize_workdir("/", &st.image.config.working_dir);
            }
            st.user = st.image.config.user.clone().filter(|u| !u.is_empty());
        }

        for planned in &sp.commands {
            st.in_onbuild = planned.onbuild;
            self.dispatch(plan, &mut st, planned)?;
        }
        st.in_onbuild = false;
        self.states[i] = Some(st);
        Ok(())
    }

    fn dispatch(
        &mut self,
        plan: &Plan<'_>,
        st: &mut StageState,
        planned: &Planned<'_>,
    ) -> Result<(), SourceError> {
        let cmd: &Command = &planned.cmd;
        match &cmd.instruction {
            Instruction::Run(run) => self.dispatch_run(plan, st, cmd, run, &planned.sources),
            Instruction::Copy(c) => self.dispatch_copy(
                plan,
                st,
                cmd,
                super::copy::CopyKind::Copy(c),
                &planned.sources,
            ),
            Instruction::Add(a) => {
                self.dispatch_copy(plan, st, cmd, super::copy::CopyKind::Add(a), &[])
            }
            Instruction::Workdir { path } => self.dispatch_workdir(st, cmd, path),
            Instruction::Env(kv) => self.dispatch_env(st, cmd, kv),
            Instruction::Label(kv) => self.dispatch_label(st, cmd, kv),
            Instruction::Arg { args } => self.dispatch_arg(st, cmd, args),
            Instruction::Maintainer { maintainer } => {
                st.image.author = Some(maintainer.clone());
                st.image
                    .commit(format!("MAINTAINER {maintainer}"), false, false);
                Ok(())
            }
            Instruction::User { user } => {
                let user = Expander::new(self.lexer, &st.env, self.loc, cmd.span).word(user)?;
                st.user = Some(user.clone()).filter(|u| !u.is_empty());
                st.image.config.user = Some(user.clone());
                st.image.commit(format!("USER {user}"), false, false);
                Ok(())
            }
            Instruction::Volume { volumes } => {
                let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
                let mut out = Vec::with_capacity(volumes.len());
                for v in volumes {
                    let e = exp.word(v)?;
                    if e.is_empty() {
                        return Err(SourceError::new(
                            self.loc.find(cmd.span, v),
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    out.push(e);
                }
                for v in &out {
                    st.image.config.volumes.insert(v.clone(), Empty {});
                }
                st.image
                    .commit(format!("VOLUME {}", go_list(&out)), false, false);
                Ok(())
            }
            Instruction::StopSignal { signal } => {
                let sig = Expander::new(self.lexer, &st.env, self.loc, cmd.span).word(signal)?;
                if !valid_signal(&sig) {
                    return Err(SourceError::new(
                        self.loc.find(cmd.span, signal),
                        format!("invalid signal: {sig}"),
                    ));
                }
                st.image.config.stop_signal = Some(sig.clone());
                st.image.commit(format!("STOPSIGNAL {sig}"), false, false);
                Ok(())
            }
            Instruction::Expose { ports } => self.dispatch_expose(st, cmd, ports),
            Instruction::Shell { shell } => {
                st.image.config.shell = shell.clone();
                st.image
                    .commit(format!("SHELL {}", go_list(shell)), false, false);
                Ok(())
            }
            Instruction::Cmd(c) => {
                let args = if c.prepend_shell {
                    with_shell(&st.image, &c.command)
                } else {
                    c.command.clone()
                };
                st.image
                    .commit(format!("CMD {}", go_quote_list(&args)), false, false);
                st.image.config.cmd = Some(args);
                st.cmd_set = true;
                Ok(())
            }
            Instruction::Entrypoint(c) => {
                let args = if c.prepend_shell {
                    Some(with_shell(&st.image, &c.command))
                } else if c.command.is_empty() {
                    None
                } else {
                    Some(c.command.clone())
                };
                st.image.commit(
                    format!(
                        "ENTRYPOINT {}",
                        go_quote_list(args.as_deref().unwrap_or_default())
                    ),
                    false,
                    false,
                );
                st.image.config.entrypoint = args;
                if !st.cmd_set {
                    st.image.config.cmd = None;
                }
                Ok(())
            }
            Instruction::Healthcheck(h) => {
                let hc = HealthConfig {
                    test: h.test.clone(),
                    interval: h.interval,
                    timeout: h.timeout,
                    start_period: h.start_period,
                    start_interval: h.start_interval,
                    retries: h.retries,
                };
                let d = instructions::duration::format;
                st.image.commit(
                    format!(
                        "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                        go_list(&hc.test),
                        d(hc.interval),
                        d(hc.timeout),
                        d(hc.start_period),
                        d(hc.start_interval),
                        hc.retries
                    ),
                    false,
                    false,
                );
                st.image.config.healthcheck = Some(hc);
                Ok(())
            }
            Instruction::Onbuild(o) => {
                st.image.config.on_build.push(o.expression.clone());
                Ok(())
            }
        }
    }

    fn dispatch_env(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        kv: &KeyValues,
    ) -> Result<(), SourceError> {
        // The whole instruction is expanded with the environment before it.
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let mut pairs = Vec::with_capacity(kv.pairs.len());
        for p in &kv.pairs {
            pairs.push((exp.word(&p.key)?, exp.word(&p.value)?));
        }
        let mut msg = String::from("ENV");
        for (k, v) in &pairs {
            msg.push_str(&format!(" {k}={v}"));
            st.set_env(k, v);
            st.image.set_env(k, v);
        }
        st.image.commit(msg, false, false);
        Ok(())
    }

    fn dispatch_label(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        kv: &KeyValues,
    ) -> Result<(), SourceError> {
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let mut msg = String::from("LABEL");
        let mut pairs = Vec::with_capacity(kv.pairs.len());
        for p in &kv.pairs {
            pairs.push((exp.word(&p.key)?, exp.word(&p.value)?));
        }
        for (k, v) in pairs {
            msg.push_str(&format!(" {k}={v}"));
            st.image.config.labels.insert(k, v);
        }
        st.image.commit(msg, false, false);
        Ok(())
    }

    fn dispatch_arg(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        args: &[instructions::ArgDef],
    ) -> Result<(), SourceError> {
        let mut commit = Vec::with_capacity(args.len());
        for def in args {
            self.consumed.insert(def.key.clone());
            let explicit = self.opts.build_args.get(&def.key);
            let value = match (explicit, &def.value) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => {
                    let p = self.lexer.process_word(default, &st.env).map_err(|e| {
                        SourceError::new(self.loc.find(cmd.span, default), e.message)
                    })?;
                    Some(p.value)
                }
                // A bare `ARG NAME` takes the global value (or stays unset).
                (None, None) => self.global.get(&def.key).map(String::from),
            };
            if let Some(v) = &value {
                st.set_env(&def.key, v);
            }
            commit.push(match &value {
                Some(v) => format!("{}={v}", def.key),
                None => def.key.clone(),
            });
            st.push_arg(&def.key, value);
        }
        st.image
            .commit(format!("ARG {}", commit.join(" ")), false, false);
        Ok(())
    }

    fn dispatch_workdir(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        path: &str,
    ) -> Result<(), SourceError> {
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let raw = exp.word(path)?;
        let deps = st.arg_deps(&exp.matched);
        let display = exp.display(&cmd.original);
        let wd = normalize_workdir(&st.workdir, &raw);
        st.workdir = wd.clone();
        st.image.config.working_dir = wd.clone();
        let with_layer = wd != "/";
        if with_layer {
            let description = st.describe(&display);
            let op = Op::Mkdir(crate::graph::MkdirOp {
                path: wd.clone(),
                mode: 0o755,
                user: st.user.clone(),
            });
            st.tip = self.add_vertex(
                op,
                vec![st.tip],
                description,
                Some(st.index),
                Some(cmd.position),
                deps.into(),
            );
        }
        st.image.commit(format!("WORKDIR {wd}"), with_layer, false);
        Ok(())
    }

    fn dispatch_expose(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        ports: &[String],
    ) -> Result<(), SourceError> {
        let mut sorted: Vec<&String> = ports.iter().collect();
        sorted.sort();
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let mut specs = Vec::new();
        for p in sorted {
            for w in exp.words(p)? {
                let parsed = parse_port_spec(&w)
                    .map_err(|m| SourceError::new(self.loc.find(cmd.span, p), m))?;
                specs.extend(parsed);
            }
        }
        for s in &specs {
            st.image.config.exposed_ports.insert(s.clone(), Empty {});
        }
        st.image
            .commit(format!("EXPOSE {}", go_list(&specs)), false, false);
        Ok(())
    }
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// SHELL (or `/bin/sh -c`) followed by the command line joined with spaces.
pub(crate) fn with_shell(image: &ImageConfig, args: &[String]) -> Vec<String> {
    let mut out = if image.config.shell.is_empty() {
        vec!["/bin/sh".to_string(), "-c".to_string()]
    } else {
        image.config.shell.clone()
    };
    out.push(args.join(" "));
    out
}

/// WORKDIR semantics: relative paths continue from the current directory;
/// the result is absolute and clean.
pub(crate) fn normalize_workdir(current: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_path(path)
    } else {
        clean_path(&format!("{current}/{path}"))
    }
}

/// Go's `path.Clean` for absolute paths (and relative ones, kept relative).
pub(crate) fn clean_path(p: &str) -> String {
    if is_clean_absolute(p) {
        return p.to_string();
    }
    let abs = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !abs {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (abs, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// An absolute path that `clean_path` would return unchanged.
fn is_clean_absolute(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    p.starts_with('/')
        && !p.ends_with('/')
        && p[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// `[ip:][hostPort:]containerPort[/proto]` → `port/proto` for every port of
/// a range, as docker's port spec parser does for EXPOSE.
fn parse_port_spec(raw: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let container = parts.last().copied().unwrap_or("");
    let host_port = if parts.len() >= 2 {
        parts[parts.len() - 2]
    } else {
        ""
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!("no port specified: {raw}<empty>"));
    }
    let proto = proto.to_ascii_lowercase();
    let proto = match proto.as_str() {
        "" => "tcp",
        "tcp" | "udp" | "sctp" => proto.as_str(),
        _ => return Err(format!("invalid proto: {proto}")),
    };
    let (start, end) = port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) =
            port_range(host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn port_range(s: &str) -> Option<(u32, u32)> {
    let num = |t: &str| {
        t.parse::<u16>()
            .ok()
            .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
            .map(u32::from)
    };
    match s.split_once('-') {
        None => num(s).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some((a, b))
        }
    }
}

/// moby's `signal.ParseSignal`: a non-zero number, or a name with or without `SIG`.
fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<i64>() {
        return n != 0;
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX", "UNUSED",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    let rt = |prefix: &str, max: u32| {
        name.strip_prefix(prefix)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=max).contains(&n))
    };
    rt("RTMIN+", 15) || rt("RTMAX-", 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(clean_path("/a/b/../c/./d/"), "/a/c/d");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path("a/../../b"), "../b");
        assert_eq!(clean_path(""), ".");
        assert_eq!(normalize_workdir("/test1", "test2"), "/test1/test2");
        assert_eq!(normalize_workdir("/test1/test2", ".."), "/test1");
        assert_eq!(normalize_workdir("/x", "/abs//p/"), "/abs/p");
    }

    #[test]
    fn port_specs() {
        assert_eq!(parse_port_spec("80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_port_spec("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            parse_port_spec("8000-8002/sctp").unwrap(),
            ["8000/sctp", "8001/sctp", "8002/sctp"]
        );
        assert_eq!(parse_port_spec("127.0.0.1:8080:80").unwrap(), ["80/tcp"]);
        assert_eq!(
            parse_port_spec("abc").unwrap_err(),
            "invalid containerPort: abc"
        );
        assert_eq!(parse_port_spec("80/xyz").unwrap_err(), "invalid proto: xyz");
        assert!(parse_port_spec("90-80").is_err());
        assert!(parse_port_spec("70000").is_err());
    }

    #[test]
    fn signals() {
        for ok in ["SIGKILL", "kill", "9", "SIGRTMIN+3", "RTMAX-2", "sigterm"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in ["0", "SIGFOO", "RTMIN+16", ""] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }
}
