//! Stage resolution: what each FROM and `--from` refers to, the target,
//! dependency cycles, and the stages the target needs (base images resolved,
//! ONBUILD triggers turned into commands).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::args::GlobalArgs;
use super::image::ImageConfig;
use super::platform::Platform;
use super::{CompileOptions, ImageResolver, NamedContext, StageBase, Warning};
use crate::error::{Position, SourceError};
use crate::instructions::{self, Command, Dockerfile, Instruction, Locator, Stage, mount, suggest};
use crate::shell::{Lexer, NoEnv};

/// What a FROM line starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Base {
    Scratch,
    Stage(usize),
    Image(String),
    Context(String),
}

impl Base {
    pub(crate) fn to_public(&self) -> StageBase {
        match self {
            Base::Scratch => StageBase::Scratch,
            Base::Stage(index) => StageBase::Stage { index: *index },
            Base::Image(reference) => StageBase::Image {
                reference: reference.clone(),
            },
            Base::Context(name) => StageBase::Context { name: name.clone() },
        }
    }
}

/// What a `COPY --from` or `RUN --mount from=` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceRef {
    Stage(usize),
    Image(String),
    Context(String),
}

/// A command with the stages/images it reads.
#[derive(Debug, Clone)]
pub(crate) struct Planned<'a> {
    pub(crate) cmd: Cow<'a, Command>,
    /// Came from an ONBUILD trigger of the base.
    pub(crate) onbuild: bool,
    /// COPY: the `--from`, if any. RUN: one entry per `--mount`.
    pub(crate) sources: Vec<Option<SourceRef>>,
}

/// What the resolver said about a base image.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedBase {
    pub(crate) digest: Option<String>,
    pub(crate) image: Option<ImageConfig>,
}

/// One stage being planned.
#[derive(Debug)]
pub(crate) struct StagePlan<'a> {
    pub(crate) def: &'a Stage,
    /// `name` or `stage-N`.
    pub(crate) display: String,
    pub(crate) base: Base,
    /// Global ARGs the FROM line read.
    pub(crate) base_args: BTreeSet<String>,
    pub(crate) platform: Platform,
    pub(crate) commands: Vec<Planned<'a>>,
    pub(crate) resolved: Option<ResolvedBase>,
    triggers_done: bool,
}

/// All stages of a Dockerfile.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) stages: Vec<StagePlan<'a>>,
    /// Lower-cased stage name → index (a later duplicate wins, as in BuildKit).
    names: HashMap<String, usize>,
    loc: &'a Locator,
    opts: &'a CompileOptions,
}

/// Classifies every stage and resolves the references its commands make.
pub(crate) fn plan<'a>(
    df: &'a Dockerfile,
    global: &GlobalArgs,
    lexer: &Lexer,
    loc: &'a Locator,
    opts: &'a CompileOptions,
    target_platform: &Platform,
    warnings: &mut Vec<Warning>,
) -> Result<Plan<'a>, SourceError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, s) in df.stages.iter().enumerate() {
        if let Some(n) = &s.name {
            if names.insert(n.clone(), i).is_some() {
                warnings.push(Warning {
                    position: Some(s.position.into()),
                    message: format!("duplicate stage name {n:?}, stage names should be unique"),
                });
            }
        }
    }
    let mut stages = Vec::with_capacity(df.stages.len());
    for (i, s) in df.stages.iter().enumerate() {
        let expanded = lexer
            .process_word(&s.base, &global.env)
            .map_err(|e| SourceError::new(loc.find(s.span, &s.base), e.message))?;
        if expanded.value.is_empty() {
            return Err(SourceError::new(
                loc.find(s.span, &s.base),
                format!("base name ({}) should not be blank", s.base),
            ));
        }
        let mut base_args: BTreeSet<String> = expanded.matched.clone();
        let platform = match &s.platform {
            None => target_platform.clone(),
            Some(raw) => {
                let at = loc.find(s.span, "--platform");
                let p = lexer.process_word(raw, &global.env).map_err(|e| {
                    SourceError::new(
                        at,
                        format!(
                            "failed to process arguments for platform {raw}: {}",
                            e.message
                        ),
                    )
                })?;
                if p.value.is_empty() {
                    return Err(SourceError::new(
                        at,
                        format!("empty platform value from expression {raw}"),
                    ));
                }
                base_args.extend(p.matched);
                p.value
                    .parse()
                    .map_err(|e: super::PlatformError| SourceError::new(at, e.to_string()))?
            }
        };
        let base_name = expanded.value;
        let lower = base_name.to_ascii_lowercase();
        // A context given by name wins over a stage or image of that name
        // (as BuildKit's `--build-context`).
        // A stage named as a context is that context (its own FROM and
        // commands are not used).
        let replaced = s
            .name
            .as_ref()
            .and_then(|n| Some((n, opts.named_contexts.get(n)?)));
        let named = opts.named_contexts.get(&base_name).map(|c| (&base_name, c));
        let base = if let Some((name, named)) = replaced.or(named) {
            match named {
                NamedContext::Local => Base::Context(name.clone()),
                NamedContext::Image(r) => Base::Image(r.clone()),
            }
        } else if let Some(&j) = names.get(&lower).filter(|&&j| j < i) {
            Base::Stage(j)
        } else if let Some(j) = df.stages[..i]
            .iter()
            .rposition(|st| st.name.as_deref() == Some(lower.as_str()))
        {
            // A duplicate name defined again later: FROM sees the earlier one.
            Base::Stage(j)
        } else if let Some(j) = df.stages[i + 1..]
            .iter()
            .position(|st| st.name.as_deref() == Some(lower.as_str()))
        {
            let later = &df.stages[i + 1 + j];
            return Err(SourceError::new(
                loc.find(s.span, &s.base),
                format!(
                    "base {:?} is stage {:?}, which needs to be defined before current stage {:?}",
                    base_name,
                    later.name.as_deref().unwrap_or_default(),
                    display_name(s, i)
                ),
            ));
        } else if lower == "scratch" {
            Base::Scratch
        } else {
            Base::Image(base_name.clone())
        };
        stages.push(StagePlan {
            def: s,
            display: display_name(s, i),
            base,
            base_args,
            platform,
            commands: Vec::new(),
            resolved: None,
            triggers_done: false,
        });
    }
    let mut plan = Plan {
        stages,
        names,
        loc,
        opts,
    };
    for i in 0..plan.stages.len() {
        let def = plan.stages[i].def;
        let mut commands = Vec::with_capacity(def.commands.len());
        if def
            .name
            .as_ref()
            .is_some_and(|n| plan.opts.named_contexts.contains_key(n))
        {
            continue;
        }
        for c in &def.commands {
            let sources = plan.sources(c, lexer)?;
            commands.push(Planned {
                cmd: Cow::Borrowed(c),
                onbuild: false,
                sources,
            });
        }
        plan.stages[i].commands = commands;
    }
    Ok(plan)
}

fn display_name(s: &Stage, i: usize) -> String {
    s.name.clone().unwrap_or_else(|| format!("stage-{i}"))
}

impl StagePlan<'_> {
    /// The most vertices dispatching this stage can create.
    pub(crate) fn vertex_estimate(&self) -> usize {
        1 + self
            .commands
            .iter()
            .filter(|c| {
                matches!(
                    c.cmd.instruction,
                    Instruction::Run(_)
                        | Instruction::Copy(_)
                        | Instruction::Add(_)
                        | Instruction::Workdir { .. }
                )
            })
            .count()
    }
}

impl<'a> Plan<'a> {
    fn lookup(&self, name: &str) -> Option<SourceRef> {
        // A context given by name wins over a stage of that name.
        match self.opts.named_contexts.get(name) {
            Some(NamedContext::Local) => return Some(SourceRef::Context(name.to_string())),
            Some(NamedContext::Image(r)) => return Some(SourceRef::Image(r.clone())),
            None => {}
        }
        self.names
            .get(&name.to_ascii_lowercase())
            .map(|&i| SourceRef::Stage(i))
    }

    /// The stages or images a command reads.
    fn sources(&self, c: &Command, lexer: &Lexer) -> Result<Vec<Option<SourceRef>>, SourceError> {
        match &c.instruction {
            Instruction::Copy(copy) => {
                let Some(from) = &copy.from else {
                    return Ok(Vec::new());
                };
                let at = || self.loc.find(c.span, "--from");
                let literal = lexer
                    .process_word(from, &NoEnv)
                    .map(|p| p.value)
                    .unwrap_or_default();
                if literal != *from {
                    return Err(SourceError::new(
                        at(),
                        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                    ));
                }
                if let Ok(index) = from.parse::<i64>() {
                    if index < 0 || index as usize >= self.stages.len() {
                        return Err(SourceError::new(
                            at(),
                            format!("invalid stage index {index}"),
                        ));
                    }
                    return Ok(vec![Some(SourceRef::Stage(index as usize))]);
                }
                Ok(vec![Some(
                    self.lookup(from)
                        .unwrap_or_else(|| SourceRef::Image(from.clone())),
                )])
            }
            Instruction::Run(run) => {
                let mut out = Vec::with_capacity(run.mounts.len());
                for m in &run.mounts {
                    let (kind, from) = match &m.parsed {
                        Some(p) => (Some(p.kind), p.from.clone()),
                        None => (None, mount::raw_from(&m.raw)),
                    };
                    let src = match from {
                        Some(f) if kind != Some(mount::MountType::Tmpfs) => {
                            Some(self.lookup(&f).unwrap_or(SourceRef::Image(f)))
                        }
                        _ => None,
                    };
                    out.push(src);
                }
                Ok(out)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Whether a `--from`/`from=` names an image (BuildKit then numbers the
    /// stages even when there is only one).
    pub(crate) fn uses_images(&self) -> bool {
        self.stages
            .iter()
            .flat_map(|s| s.commands.iter())
            .flat_map(|c| c.sources.iter())
            .any(|s| matches!(s, Some(SourceRef::Image(_))))
    }

    /// The target stage's index.
    pub(crate) fn target_index(&self, target: Option<&str>) -> Result<usize, SourceError> {
        let Some(t) = target else {
            return Ok(self.stages.len() - 1);
        };
        if let Some(&i) = self.names.get(&t.to_ascii_lowercase()) {
            return Ok(i);
        }
        let names: Vec<&str> = self
            .stages
            .iter()
            .filter_map(|s| s.def.name.as_deref())
            .collect();
        let mut msg = suggest::with_hint(
            format!("target stage {t:?} could not be found"),
            &t.to_ascii_lowercase(),
            names.iter().copied(),
            true,
        );
        if names.is_empty() {
            msg.push_str("; the Dockerfile has no named stages");
        } else {
            msg.push_str(&format!("; stages: {}", names.join(", ")));
        }
        let pos = self
            .stages
            .last()
            .map_or(Position::new(1, 1), |s| s.def.position);
        Err(SourceError::new(pos, msg))
    }

    /// Stages a stage reads from through its commands (not its base).
    fn command_deps(&self, i: usize) -> impl Iterator<Item = (usize, &Command)> + '_ {
        self.stages[i].commands.iter().flat_map(|c| {
            c.sources.iter().filter_map(move |s| match s {
                Some(SourceRef::Stage(j)) => Some((*j, c.cmd.as_ref())),
                _ => None,
            })
        })
    }

    /// The stages `target` needs, in Dockerfile order. Base images of those
    /// stages are resolved, and their ONBUILD triggers (or the ONBUILD lines
    /// of a base stage) become the first commands of the stage; as triggers
    /// can read other stages, this repeats until nothing new is needed.
    pub(crate) fn reachable(
        &mut self,
        target: usize,
        resolver: &dyn ImageResolver,
        lexer: &Lexer,
    ) -> Result<Vec<usize>, SourceError> {
        let mut cache: BTreeMap<(String, String), ResolvedBase> = BTreeMap::new();
        loop {
            let reach = self.closure(target);
            let mut new_deps = false;
            for &i in &reach {
                if self.stages[i].triggers_done {
                    continue;
                }
                self.stages[i].triggers_done = true;
                let triggers: Vec<String> = match self.stages[i].base.clone() {
                    Base::Image(r) => {
                        let resolved = self.resolve(i, &r, resolver, &mut cache)?;
                        resolved
                            .image
                            .as_ref()
                            .map(|img| img.config.on_build.clone())
                            .unwrap_or_default()
                    }
                    Base::Stage(p) => self.stages[p]
                        .commands
                        .iter()
                        .filter(|c| !c.onbuild)
                        .filter_map(|c| match &c.cmd.instruction {
                            Instruction::Onbuild(o) => Some(o.expression.clone()),
                            _ => None,
                        })
                        .collect(),
                    Base::Scratch | Base::Context(_) => Vec::new(),
                };
                if triggers.is_empty() {
                    continue;
                }
                let def = self.stages[i].def;
                let mut planned = Vec::with_capacity(triggers.len());
                for t in &triggers {
                    let cmd = parse_trigger(t, def)?;
                    let sources = self.sources(&cmd, lexer)?;
                    if sources.iter().any(Option::is_some) {
                        new_deps = true;
                    }
                    planned.push(Planned {
                        cmd: Cow::Owned(cmd),
                        onbuild: true,
                        sources,
                    });
                }
                planned.append(&mut self.stages[i].commands);
                self.stages[i].commands = planned;
            }
            if !new_deps {
                let mut v: Vec<usize> = reach.into_iter().collect();
                v.sort_unstable();
                return Ok(v);
            }
            check_cycles(self)?;
        }
    }

    fn resolve(
        &mut self,
        i: usize,
        reference: &str,
        resolver: &dyn ImageResolver,
        cache: &mut BTreeMap<(String, String), ResolvedBase>,
    ) -> Result<ResolvedBase, SourceError> {
        let stage = &self.stages[i];
        let key = (
            normalize_reference(reference).unwrap_or_else(|| reference.to_string()),
            stage.platform.to_string(),
        );
        if let Some(r) = cache.get(&key) {
            self.stages[i].resolved = Some(r.clone());
            return Ok(r.clone());
        }
        let at = || self.loc.find(stage.def.span, &stage.def.base);
        let resolved = match resolver.resolve(&key.0, &stage.platform) {
            Ok(None) => ResolvedBase {
                digest: None,
                image: None,
            },
            Ok(Some(img)) => {
                let config: ImageConfig = serde_json::from_slice(&img.config).map_err(|e| {
                    SourceError::new(
                        at(),
                        format!("failed to parse image config of {}: {e}", key.0),
                    )
                })?;
                ResolvedBase {
                    digest: Some(img.digest),
                    image: Some(config),
                }
            }
            Err(e) => {
                return Err(SourceError::new(
                    at(),
                    format!("failed to resolve {reference}: {e}"),
                ));
            }
        };
        cache.insert(key, resolved.clone());
        self.stages[i].resolved = Some(resolved.clone());
        Ok(resolved)
    }

    /// `target` and everything it needs through bases and commands.
    fn closure(&self, target: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![target];
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            if let Base::Stage(p) = self.stages[i].base {
                stack.push(p);
            }
            stack.extend(self.command_deps(i).map(|(j, _)| j));
        }
        seen
    }
}

/// Rejects stages that read from themselves through `--from` chains.
pub(crate) fn check_cycles(plan: &Plan<'_>) -> Result<(), SourceError> {
    let n = plan.stages.len();
    let mut visited = vec![false; n];
    for start in 0..n {
        let mut on_path = vec![false; n];
        if let Some(pos) = visit(plan, start, &mut visited, &mut on_path, None) {
            return Err(SourceError::new(
                pos,
                format!(
                    "circular dependency detected on stage: {}",
                    plan.stages[start].display
                ),
            ));
        }
    }
    Ok(())
}

/// Depth-first search; on a cycle returns where its first command is.
fn visit(
    plan: &Plan<'_>,
    i: usize,
    visited: &mut [bool],
    on_path: &mut [bool],
    first: Option<Position>,
) -> Option<Position> {
    if visited[i] {
        return None;
    }
    visited[i] = true;
    on_path[i] = true;
    for (dep, cmd) in plan.command_deps(i) {
        let first = first.or(Some(cmd.position));
        if on_path[dep] {
            return first;
        }
        if let Some(p) = visit(plan, dep, visited, on_path, first) {
            return Some(p);
        }
    }
    on_path[i] = false;
    None
}

/// Parses an ONBUILD trigger; it runs, and its errors point, at `stage`'s FROM.
fn parse_trigger(text: &str, stage: &Stage) -> Result<Command, SourceError> {
    let at = |e: SourceError| {
        SourceError::new(
            stage.position,
            format!("ONBUILD trigger {text:?}: {}", e.message),
        )
    };
    let ast = crate::parser::parse(text.as_bytes()).map_err(at)?;
    if ast.children.len() != 1 {
        return Err(SourceError::new(
            stage.position,
            "onbuild trigger should be a single expression",
        ));
    }
    let mut cmd = instructions::parse_trigger_node(
        ast.children.into_iter().next().expect("one child"),
        &Locator::new(text.as_bytes()),
    )
    .map_err(at)?;
    cmd.span = stage.span;
    cmd.position = stage.position;
    Ok(cmd)
}

/// `alpine` → `docker.io/library/alpine:latest`; none when it does not parse.
pub(crate) fn normalize_reference(reference: &str) -> Option<String> {
    Some(reference::parse(reference).ok()?.whole())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize() {
        assert_eq!(
            normalize_reference("alpine").as_deref(),
            Some("docker.io/library/alpine:latest")
        );
        assert_eq!(
            normalize_reference("alpine:3.20").as_deref(),
            Some("docker.io/library/alpine:3.20")
        );
        assert_eq!(
            normalize_reference("ghcr.io/o/r:1").as_deref(),
            Some("ghcr.io/o/r:1")
        );
        assert_eq!(
            normalize_reference("localhost:5000/x").as_deref(),
            Some("localhost:5000/x:latest")
        );
        assert_eq!(normalize_reference("Not Valid"), None);
        assert_eq!(normalize_reference("Alpine"), None);
        assert_eq!(
            normalize_reference("[::1]:5000/x:1").as_deref(),
            Some("[::1]:5000/x:1")
        );
    }
}
