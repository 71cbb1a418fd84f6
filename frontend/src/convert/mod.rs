//! Conversion of typed instructions into stages, image configs and the build graph.
//!
//! The steps follow BuildKit's `dockerfile2llb`: global ARGs are evaluated,
//! every FROM is expanded and classified (scratch, earlier stage, image,
//! named context), `COPY --from` and `RUN --mount from=` are resolved to
//! stages or images, cycles are rejected, the stages the target needs are
//! found (resolving base images, whose ONBUILD triggers may add needs), and
//! those stages are dispatched in Dockerfile order into graph vertices and
//! image configs.

mod args;
mod copy;
mod dispatch;
mod env;
pub mod image;
mod metadata;
pub mod platform;
mod run;
mod stages;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub(crate) use self::args::platform_args;
pub use self::image::{ContainerConfig, Empty, HealthConfig, History, ImageConfig, RootFs};
pub use self::platform::{Platform, PlatformError};
use crate::error::{Position, SourceError};
use crate::graph::{BuildGraph, SourcePos, VertexId};
use crate::instructions::{self, Locator};
use crate::parser::Ast;
use crate::shell::Lexer;

/// Looks up base images. The frontend stays pure: the solver implements
/// this with the image store and the registry client.
pub trait ImageResolver {
    /// The manifest digest and raw config JSON of `reference` (normalized,
    /// e.g. `docker.io/library/alpine:3.20`) for `platform`. `Ok(None)` means
    /// "not known yet": the base stays an unresolved source in the graph.
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String>;
}

/// What a resolver knows about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Manifest digest (`sha256:…`).
    pub digest: String,
    /// The image config as stored (JSON).
    pub config: Vec<u8>,
}

/// A resolver that knows no image: every base is an unresolved source.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoResolver;

impl ImageResolver for NoResolver {
    fn resolve(
        &self,
        _reference: &str,
        _platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        Ok(None)
    }
}

/// A context given by name (`--build-context NAME=…`). A FROM or `--from`
/// naming it uses it instead of an image or a stage of that name, and a
/// stage of that name is replaced by it, as BuildKit does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, read through a context vertex of that name.
    Local,
    /// Another image reference to use instead.
    Image(String),
}

/// Settings of one compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// The stage to build (case-insensitive); the last one when none.
    pub target: Option<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// The platform to build for; the build platform when none.
    pub platform: Option<Platform>,
    /// The platform the build runs on.
    pub build_platform: Platform,
    /// Shown in messages about the Dockerfile.
    pub dockerfile_name: String,
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// `--label` values added to the target's config.
    pub labels: BTreeMap<String, String>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            target: None,
            build_args: BTreeMap::new(),
            platform: None,
            build_platform: Platform::linux_amd64(),
            dockerfile_name: "Dockerfile".into(),
            named_contexts: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// A non-fatal observation about the Dockerfile or the options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<SourcePos>,
    pub message: String,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageBase {
    Scratch,
    /// An earlier stage, by index in the Dockerfile.
    Stage {
        index: usize,
    },
    /// An image reference (after ARG expansion).
    Image {
        reference: String,
    },
    /// A named local context.
    Context {
        name: String,
    },
}

/// A stage that is part of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompiledStage {
    /// Position of the stage among all stages of the Dockerfile.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub base: StageBase,
    pub platform: Platform,
    /// The vertex whose result is the stage's filesystem.
    pub vertex: VertexId,
    pub image: ImageConfig,
    pub position: SourcePos,
}

/// The result of compiling a Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Compiled {
    pub graph: BuildGraph,
    /// The stages the target needs, in Dockerfile order.
    pub stages: Vec<CompiledStage>,
    /// Index into `stages` of the target.
    pub target_stage: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// The `# syntax=` directive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syntax: Option<String>,
    /// The `# check=` directive, kept for the linter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl Compiled {
    /// The target stage.
    pub fn target(&self) -> &CompiledStage {
        &self.stages[self.target_stage]
    }
}

/// Parses and compiles a Dockerfile.
pub fn compile(
    src: &[u8],
    opts: &CompileOptions,
    resolver: &dyn ImageResolver,
) -> Result<Compiled, SourceError> {
    let ast = crate::parser::parse(src)?;
    compile_ast(ast, src, opts, resolver)
}

/// Compiles an already parsed Dockerfile; `src` is its text, for positions.
pub fn compile_ast(
    ast: Ast,
    src: &[u8],
    opts: &CompileOptions,
    resolver: &dyn ImageResolver,
) -> Result<Compiled, SourceError> {
    let loc = Locator::new(src);
    let escape = ast.escape;
    let directives = ast.directives.clone();
    let parser_warnings = ast.warnings.clone();
    let df = instructions::parse_dockerfile(ast, &loc)?;
    let mut warnings: Vec<Warning> = parser_warnings
        .iter()
        .map(|w| Warning {
            position: Some(SourcePos {
                line: w.line,
                column: 1,
            }),
            message: w.message.clone(),
        })
        .collect();
    let directive = |name: &str| directives.iter().find(|d| d.name == name);
    let syntax = directive("syntax").map(|d| d.value.clone());
    if let Some(d) = directive("syntax") {
        if !is_dockerfile_frontend(&d.value) {
            warnings.push(Warning {
                position: Some(SourcePos { line: d.line, column: 1 }),
                message: format!(
                    "syntax {:?} is not supported: the Dockerfile is built with the built-in docker/dockerfile frontend",
                    d.value
                ),
            });
        }
    }
    let check = directive("check").map(|d| d.value.clone());

    if df.stages.is_empty() {
        let pos = df
            .meta_args
            .first()
            .map_or(Position::new(1, 1), |c| c.position);
        return Err(SourceError::new(
            pos,
            "dockerfile contains no stages to build",
        ));
    }
    let escape = if escape == '\0' { '\\' } else { escape };
    let lexer = Lexer::new(escape);
    let target_platform = opts
        .platform
        .clone()
        .unwrap_or_else(|| opts.build_platform.clone());

    let target_name = match &opts.target {
        Some(t) => t.to_ascii_lowercase(),
        None => df
            .stages
            .last()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| "default".into()),
    };
    let mut global = args::GlobalArgs::predefined(
        &opts.build_args,
        &target_platform,
        &opts.build_platform,
        &target_name,
    );
    global.declare(&df.meta_args, &opts.build_args, &lexer, &loc)?;

    let mut plan = stages::plan(
        &df,
        &global,
        &lexer,
        &loc,
        opts,
        &target_platform,
        &mut warnings,
    )?;
    let target = plan.target_index(opts.target.as_deref())?;
    stages::check_cycles(&plan)?;
    let reachable = plan.reachable(target, resolver, &lexer)?;

    let mut conv = dispatch::Converter::new(
        opts,
        lexer,
        &loc,
        global,
        df.stages.len() == 1 && !plan.uses_images(),
        // At most one vertex per FROM, RUN, COPY, ADD and WORKDIR, plus shared ones.
        reachable
            .iter()
            .map(|&i| plan.stages[i].vertex_estimate())
            .sum::<usize>()
            + 4,
    );
    for &i in &reachable {
        conv.dispatch_stage(&plan, i)?;
    }
    conv.finish_contexts();

    let mut consumed: BTreeSet<String> = conv.global.declared.clone();
    consumed.extend(conv.consumed.iter().cloned());
    let unused: Vec<&str> = opts
        .build_args
        .keys()
        .filter(|k| !consumed.contains(*k) && !args::is_builtin(k))
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        conv.warnings.push(Warning {
            position: None,
            message: format!(
                "one or more build-args [{}] were not consumed",
                unused.join(" ")
            ),
        });
    }
    warnings.append(&mut conv.warnings);

    let mut compiled_stages = Vec::new();
    let mut target_stage = 0;
    for &i in &reachable {
        let mut st = conv.states[i]
            .take()
            .expect("reachable stages are dispatched");
        if i == target {
            target_stage = compiled_stages.len();
            st.image
                .config
                .labels
                .extend(opts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let p = &plan.stages[i];
        compiled_stages.push(CompiledStage {
            index: i,
            name: p.def.name.clone(),
            base: p.base.to_public(),
            platform: st.platform.clone(),
            vertex: st.tip,
            image: st.image,
            position: p.def.position.into(),
        });
    }
    Ok(Compiled {
        graph: conv.graph,
        stages: compiled_stages,
        target_stage,
        warnings,
        syntax,
        check,
    })
}

/// `docker/dockerfile`, `docker.io/docker/dockerfile`, with any tag or digest
/// (and the `-upstream` flavour) names the language built in here.
fn is_dockerfile_frontend(value: &str) -> bool {
    let v = value.trim();
    let v = v.strip_prefix("docker.io/").unwrap_or(v);
    let repo = v.split(['@']).next().unwrap_or(v);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    matches!(repo, "docker/dockerfile" | "docker/dockerfile-upstream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_directive_names() {
        for ok in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7-labs",
            "docker.io/docker/dockerfile:1",
            "docker/dockerfile",
            "docker/dockerfile@sha256:abc",
            "docker/dockerfile-upstream:master",
        ] {
            assert!(is_dockerfile_frontend(ok), "{ok}");
        }
        for bad in [
            "tonistiigi/dockerfile:1",
            "example.com/docker/dockerfile:1",
            "docker/dockerfilex:1",
        ] {
            assert!(!is_dockerfile_frontend(bad), "{bad}");
        }
    }
}
