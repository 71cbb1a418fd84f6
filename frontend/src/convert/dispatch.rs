//! Dispatching a stage: the state it starts from (scratch, image, earlier
//! stage, context), shared vertices (scratch, contexts, images read by
//! `--from`), and the path rules instructions share.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::args::{GlobalArgs, proxy_env};
use super::env::EnvState;
use super::image::ImageConfig;
use super::platform::Platform;
use super::stages::{Base, Plan, SourceRef, normalize_reference};
use super::{CompileOptions, Warning};
use crate::error::{Position, SourceError};
use crate::graph::{
    BuildGraph, ContextOp, CopyOp, CopySource, Op, Shared, SourceOp, Vertex, VertexId,
};
use crate::instructions::{Instruction, Locator, Span};
use crate::shell::Lexer;

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
    /// Names are shared so that the dependency sets of vertices can hold
    /// them without copying.
    pub(crate) args: Vec<(Shared<str>, Option<String>)>,
    /// The declared ARGs that have a value, kept up to date as ARGs are
    /// declared (sorting them again for every RUN is costly).
    with_value: BTreeSet<Shared<str>>,
    /// A copy of `with_value` shared by RUN vertices until it changes.
    args_in_env: Option<Shared<BTreeSet<Shared<str>>>>,
    /// The `|N k=v …` part of RUN history entries while ARGs and env stay
    /// the same.
    pub(crate) run_prefix: Option<String>,
    pub(crate) workdir: String,
    pub(crate) user: Option<String>,
    pub(crate) platform: Platform,
    /// CMD was set in this stage (so ENTRYPOINT keeps it).
    pub(crate) cmd_set: bool,
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
        // One allocation: `[` display ` ` index `/` total `] ` ONBUILD text.
        let mut out = String::with_capacity(self.display.len() + 2 * width + text.len() + 5 + 8);
        out.push('[');
        if !self.display.is_empty() {
            out.push_str(&self.display);
            out.push(' ');
        }
        let index = self.cmd_index;
        for _ in decimal_digits(index)..width {
            out.push(' ');
        }
        push_decimal(&mut out, index);
        out.push('/');
        push_decimal(&mut out, self.cmd_total);
        out.push_str("] ");
        if self.in_onbuild {
            out.push_str("ONBUILD ");
        }
        out.push_str(text);
        out
    }

    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        // The RUN history prefix shows ARG values only.
        if self.run_prefix.is_some() && self.args.iter().any(|(k, _)| &**k == key) {
            self.run_prefix = None;
        }
        self.env.set(key, value);
    }

    /// Declares an ARG (its value, if any, is already in the env).
    pub(crate) fn push_arg(&mut self, key: &str, value: Option<String>) {
        self.run_prefix = None;
        let name = Shared::from(key);
        if value.is_some() && !self.with_value.contains(&name) {
            self.args_in_env = None;
            self.with_value.insert(name.clone());
        }
        self.args.push((name, value));
    }

    /// Declared ARG names among `names`.
    pub(crate) fn arg_deps<'n>(
        &self,
        names: impl IntoIterator<Item = &'n String>,
    ) -> BTreeSet<Shared<str>> {
        names
            .into_iter()
            .filter_map(|n| {
                self.args
                    .iter()
                    .find(|(k, _)| **k == **n)
                    .map(|(k, _)| k.clone())
            })
            .collect()
    }

    /// Declared ARGs that have a value (they are in the environment).
    pub(crate) fn args_in_env(&mut self) -> Shared<BTreeSet<Shared<str>>> {
        if let Some(s) = &self.args_in_env {
            return s.clone();
        }
        let s = Shared::new(self.with_value.clone());
        self.args_in_env = Some(s.clone());
        s
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
    empty_deps: Shared<BTreeSet<Shared<str>>>,
}

impl<'a> Converter<'a> {
    pub(crate) fn new(
        opts: &'a CompileOptions,
        lexer: Lexer,
        loc: &'a Locator,
        global: GlobalArgs,
        single_stage: bool,
        expected_vertices: usize,
    ) -> Self {
        let proxy = proxy_env(&opts.build_args)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Self {
            opts,
            lexer,
            loc,
            graph: BuildGraph::with_capacity(expected_vertices),
            global,
            proxy,
            states: Vec::new(),
            consumed: BTreeSet::new(),
            warnings: Vec::new(),
            scratch: None,
            contexts: BTreeMap::new(),
            images: HashMap::new(),
            single_stage,
            empty_deps: Shared::default(),
        }
    }

    pub(crate) fn add_vertex(
        &mut self,
        op: Op,
        inputs: Vec<VertexId>,
        description: String,
        stage: Option<usize>,
        position: Option<Position>,
        build_args: BTreeSet<Shared<str>>,
    ) -> VertexId {
        // Most vertices depend on no build arg: share one empty set.
        let build_args = if build_args.is_empty() {
            self.empty_deps.clone()
        } else {
            Shared::new(build_args)
        };
        self.add_vertex_shared(op, inputs, description, stage, position, build_args)
    }

    pub(crate) fn add_vertex_shared(
        &mut self,
        op: Op,
        inputs: Vec<VertexId>,
        description: String,
        stage: Option<usize>,
        position: Option<Position>,
        build_args: Shared<BTreeSet<Shared<str>>>,
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
            BTreeSet::new(),
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
                let v = self.add_vertex(op, vec![], description, None, None, BTreeSet::new());
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
        let v = self.add_vertex(op, vec![], description, None, None, BTreeSet::new());
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
                    with_value: BTreeSet::new(),
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
                    Base::Context(name) => {
                        // FROM a local context (`--build-context NAME=DIR`):
                        // the directory becomes the filesystem, copied onto
                        // scratch as `COPY --from=NAME / /` would.
                        let scratch = self.scratch();
                        let context = self.context(name, "/");
                        let description = st.describe(&format!("FROM {name}"));
                        let op = CopyOp {
                            add: false,
                            sources: vec![CopySource::Path {
                                path: "/".into(),
                                pivot: None,
                            }],
                            dest: "/".into(),
                            chown: None,
                            chmod: None,
                            link: false,
                            parents: false,
                            exclude: Vec::new(),
                            checksum: None,
                            unpack: Some(false),
                            keep_git_dir: false,
                        };
                        self.add_vertex(
                            Op::Copy(Box::new(op)),
                            vec![scratch, context],
                            description,
                            Some(st.index),
                            None,
                            BTreeSet::new(),
                        )
                    }
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
                            sp.base_args
                                .iter()
                                .map(|a| Shared::from(a.as_str()))
                                .collect(),
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

        st.image.history.reserve(sp.commands.len());
        for planned in &sp.commands {
            st.in_onbuild = planned.onbuild;
            self.dispatch(plan, &mut st, planned)?;
        }
        st.in_onbuild = false;
        self.states[i] = Some(st);
        Ok(())
    }
}

/// `write!(out, "{n}")` without the formatting machinery.
fn push_decimal(out: &mut String, n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
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
    let shell = &image.config.shell;
    let mut out = Vec::with_capacity(shell.len().max(2) + 1);
    if shell.is_empty() {
        out.push("/bin/sh".to_string());
        out.push("-c".to_string());
    } else {
        out.extend(shell.iter().cloned());
    }
    out.push(match args {
        [one] => one.clone(),
        _ => args.join(" "),
    });
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
}
