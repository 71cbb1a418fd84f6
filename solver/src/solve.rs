//! `build()`: a Dockerfile and its context in, an image in the content store
//! out.
//!
//! The Dockerfile is compiled with a resolver over the local image store,
//! every base image the target needs is checked before anything runs, the
//! cache key of every needed vertex is computed ([`crate::cachekey`]), and
//! the [scheduler](crate::scheduler) runs what the key index does not
//! already hold, independent vertices at once. Each op is an
//! [`Operation`](crate::ops::Operation) over the results of its inputs. The
//! result's config and manifest are stored as blobs but not tagged: naming
//! and exporting are the caller's.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache::Digest;
use cache::compression::CompressionOptions;
use cache::images::{ImageError, ImageStore};
use cache::keys::KeyIndex;
use cache::remote_cache::{ExportOptions, Exported, RemoteCache};
use cache::snapshot::{SnapshotError, Snapshots};
use cache::store::{Store, StoreError, StoreLock};
use frontend::SourceError;
use frontend::convert::{CompileOptions, Warning, compile};
use frontend::dockerignore::PatternMatcher;
use frontend::graph::{NetworkMode, Op, SourcePos, VertexId};

use crate::cachekey::{KeyComputer, KeyError, VertexKey};
use crate::image::{ImageWriteError, StoredImage, Timestamp, write_image};
use crate::ops::State;
use crate::ops::copy::CopyError;
use crate::resolver::{LocalResolver, error_chain, parse_digest};
use crate::rootfs::LayerError;
use crate::sandbox::{CancelHandle, Executor, LinuxExecutor, SandboxError};
use crate::scheduler;

/// Everything a build needs besides the store.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub dockerfile: Vec<u8>,
    /// The Dockerfile's path as the user gave it, for messages.
    pub dockerfile_path: String,
    pub context_dir: PathBuf,
    /// The context's `.dockerignore` (already chosen: `Dockerfile.dockerignore`
    /// beside the Dockerfile wins over the context's).
    pub ignore: Option<PatternMatcher>,
    pub options: CompileOptions,
    /// `--allow network.host`: RUN `--network=host` is permitted.
    pub network_allowed_host: bool,
    /// `--allow security.insecure`: RUN `--security=insecure` is permitted.
    pub allow_security_insecure: bool,
    /// `--network`: the network of RUN steps that do not choose one
    /// (`default` is the host's, as BuildKit without CNI).
    pub network: NetworkMode,
    /// `--add-host`: extra `/etc/hosts` entries of every RUN step.
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// Clamps layer mtimes and dates the image, for reproducible digests.
    pub source_date_epoch: Option<i64>,
    pub layer_compression: CompressionOptions,
    /// `--no-cache`: every step runs; results are still stored for later
    /// builds.
    pub no_cache: bool,
    /// `--no-cache-filter`: the stages (by name, as in BuildKit) whose steps
    /// run whatever the cache holds, and so every step after them.
    pub no_cache_stages: Vec<String>,
    /// `--jobs N`: at most this many steps run at once (none: no limit;
    /// RUN steps are waiting work, not bound to the number of cores).
    pub jobs: Option<usize>,
    /// `--secret`: what `RUN --mount=type=secret,id=ID` can read. Secret
    /// values never enter a layer, a cache key or the progress output.
    pub secrets: Vec<SecretSpec>,
    /// `--ssh`: agent sockets `RUN --mount=type=ssh,id=ID` forwards.
    pub ssh: Vec<SshSpec>,
    /// `--cache-from`: remote caches asked, in order, on a local miss; a
    /// hit becomes a local record.
    pub cache_from: Vec<Arc<dyn RemoteCache>>,
    /// `--cache-to`: remote caches the results are exported to once the
    /// build has succeeded.
    pub cache_to: Vec<(Arc<dyn RemoteCache>, ExportOptions)>,
    /// `--cache-to type=inline`: the image manifest names the cache keys
    /// its leading layers are the results of (see
    /// [`cache::remote_cache::INLINE_ANNOTATION`]).
    pub cache_inline: bool,
    /// `--build-context NAME=DIR`: the local directories given by name (the
    /// compile options' `named_contexts` say `Local` for them).
    pub named_contexts: BTreeMap<String, NamedContextDir>,
    /// `--shm-size` in bytes; `None` is docker's 64 MiB.
    pub shm_size: Option<u64>,
    /// `--ulimit`s of every RUN step.
    pub ulimits: Vec<crate::sandbox::Ulimit>,
}

/// A named local context: its directory and that directory's
/// `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct NamedContextDir {
    pub dir: PathBuf,
    pub ignore: Option<PatternMatcher>,
}

/// One `--secret id=ID,src=PATH|env=VAR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub id: String,
    pub source: SecretSource,
}

/// Where a secret's value comes from; read when a step mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// One `--ssh ID[=SOCKET]`: `default` with no socket means `$SSH_AUTH_SOCK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    pub id: String,
    /// The agent socket (already resolved from `SSH_AUTH_SOCK` when none
    /// was given).
    pub socket: PathBuf,
}

impl BuildRequest {
    /// The directory and ignore file of the local context `name` (`context`
    /// is the main one).
    pub fn local_context(&self, name: &str) -> Option<(&Path, Option<&PatternMatcher>)> {
        if name == "context" {
            return Some((&self.context_dir, self.ignore.as_ref()));
        }
        self.named_contexts
            .get(name)
            .map(|c| (c.dir.as_path(), c.ignore.as_ref()))
    }

    /// A request with default options (last stage, gzip layers, no
    /// `.dockerignore`).
    pub fn new(
        dockerfile: impl Into<Vec<u8>>,
        dockerfile_path: impl Into<String>,
        context_dir: impl Into<PathBuf>,
    ) -> Self {
        let dockerfile_path = dockerfile_path.into();
        Self {
            dockerfile: dockerfile.into(),
            options: CompileOptions {
                dockerfile_name: dockerfile_path.clone(),
                ..CompileOptions::default()
            },
            dockerfile_path,
            context_dir: context_dir.into(),
            ..Self::default()
        }
    }
}

/// The built image, stored in the content store but not tagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    pub manifest_digest: Digest,
    /// The image id.
    pub config_digest: Digest,
    /// The manifest and config exactly as stored.
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub warnings: Vec<Warning>,
    pub stats: BuildStats,
}

/// What the build cache did in a build, for tests and tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Key index lookups.
    pub lookups: usize,
    /// Lookups that gave a usable result.
    pub hits: usize,
    /// Vertices whose op ran (sources, RUN, COPY/ADD, WORKDIR; not scratch
    /// or the context), in id order.
    pub executed: Vec<VertexId>,
    /// Their descriptions, in the same order.
    pub executed_steps: Vec<String>,
    /// Vertices whose result came from the cache or from an identical
    /// vertex of this build, in id order.
    pub cached: Vec<VertexId>,
    /// Lookups answered by a `--cache-from` cache, and the blob bytes
    /// fetched for them.
    pub remote_hits: usize,
    pub remote_bytes: u64,
    /// `RUN --mount=type=cache` directories that came from a
    /// `--cache-from` cache (exported there with `mounts=true`).
    pub remote_mounts: usize,
    /// Per `--cache-to` cache: its name and what was exported.
    pub exports: Vec<(String, Exported)>,
    /// Remote caches that failed (a warning each; the build went on).
    pub remote_warnings: Vec<String>,
}

/// Receives progress while a build runs; called from the building thread.
pub trait Progress: Send + Sync {
    fn event(&self, event: &ProgressEvent);
}

/// A progress sink that drops everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _event: &ProgressEvent) {}
}

/// Which stream of a step a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Something that happened to a vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    StepStarted {
        vertex: VertexId,
        description: String,
    },
    /// The step's result came from the build cache: nothing ran. Sent
    /// instead of `StepStarted`/`StepDone`.
    StepCached {
        vertex: VertexId,
        description: String,
    },
    /// Why a step that an earlier build had run missed the cache: the first
    /// of its inputs that changed, e.g. `COPY src/ /app: src/main.rs
    /// changed` or `RUN make: build arg VERSION changed`. Sent before its
    /// `StepStarted`, only for steps whose own inputs were all cached (the
    /// root causes, not the steps that missed because a parent did).
    CacheMiss {
        vertex: VertexId,
        reason: String,
    },
    /// One line of a RUN step's output, without its newline.
    Log {
        vertex: VertexId,
        stream: LogStream,
        line: String,
    },
    StepDone {
        vertex: VertexId,
        duration: Duration,
    },
    StepFailed {
        vertex: VertexId,
        message: String,
    },
}

/// Why a step (other than a failing command) could not be done.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Sandbox(SandboxError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read image {reference}")]
    Image {
        reference: String,
        #[source]
        source: ImageError,
    },
    #[error("cannot unpack a layer of {reference}")]
    Snapshot {
        reference: String,
        #[source]
        source: SnapshotError,
    },
    #[error(transparent)]
    Context(KeyError),
    #[error("cannot {action} {what}")]
    Io {
        action: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What can make a build fail.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse or compile; render it with
    /// [`SourceError::render`] and the Dockerfile's bytes.
    #[error("{0}")]
    Dockerfile(SourceError),
    #[error("image {reference:?} not found in the local store{}", match pull_error {
        Some(why) => format!(", and pulling it failed: {why}"),
        None => " (builder load or builder pull it first)".to_owned(),
    })]
    ImageNotFound {
        reference: String,
        position: Option<SourcePos>,
        /// Why pulling it from its registry failed, when that was tried.
        pull_error: Option<String>,
    },
    /// A RUN command ended with a non-zero status or a signal.
    #[error("process {command:?} did not complete successfully: exit code: {exit_code}{}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    StepFailed {
        vertex: VertexId,
        description: String,
        position: Option<SourcePos>,
        /// The argv, joined with spaces.
        command: String,
        exit_code: i32,
        /// Why, when it is not a plain exit status (a signal, a command that
        /// was not found).
        reason: Option<String>,
        /// The step's last output lines, oldest first.
        last_lines: Vec<String>,
    },
    #[error("{description}")]
    Copy {
        vertex: VertexId,
        description: String,
        position: Option<SourcePos>,
        #[source]
        source: CopyError,
    },
    #[error("{description}")]
    Step {
        vertex: VertexId,
        description: String,
        position: Option<SourcePos>,
        #[source]
        source: StepError,
    },
    #[error("build cancelled")]
    Cancelled,
    #[error("cannot prepare the build")]
    Setup(#[source] SandboxError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the image")]
    Image(#[from] ImageWriteError),
}

/// How many output lines a failed step's error keeps.
pub const LAST_LINES: usize = 10;

impl BuildError {
    /// Where in the Dockerfile the failing instruction is, if anywhere.
    pub fn position(&self) -> Option<SourcePos> {
        match self {
            BuildError::Dockerfile(e) => Some(e.position.into()),
            BuildError::ImageNotFound { position, .. }
            | BuildError::StepFailed { position, .. }
            | BuildError::Copy { position, .. }
            | BuildError::Step { position, .. } => *position,
            _ => None,
        }
    }

    /// The error for a person, in the Dockerfile convention: a failed step's
    /// last output lines (as BuildKit shows them), then `PATH:LINE:COL:
    /// message` with the causes, the line and a caret; without a position,
    /// just the message and its causes.
    pub fn render(&self, dockerfile_path: &str, dockerfile: &[u8]) -> String {
        if let BuildError::Dockerfile(e) = self {
            return e.render(dockerfile_path, dockerfile);
        }
        let mut out = String::new();
        if let BuildError::StepFailed {
            description,
            last_lines,
            ..
        } = self
        {
            out.push_str("------\n");
            out.push_str(&format!(" > {description}:\n"));
            for line in last_lines {
                out.push_str(line);
                out.push('\n');
            }
            out.push_str("------\n");
        }
        let message = match self {
            BuildError::StepFailed { description, .. } => format!("{description}: {self}"),
            _ => error_chain(self),
        };
        match self.position() {
            Some(pos) => out.push_str(
                &SourceError::new(pos.into(), message).render(dockerfile_path, dockerfile),
            ),
            None => {
                out.push_str(&message);
                out.push('\n');
            }
        }
        out
    }
}

/// Builds with the built-in sandbox, whose state lives in `ROOT/sandbox`.
pub fn build(
    store: &Store,
    req: &BuildRequest,
    progress: &dyn Progress,
    cancel: &CancelHandle,
) -> Result<BuildResult, BuildError> {
    let executor = LinuxExecutor::new(store.root().join("sandbox")).map_err(BuildError::Setup)?;
    build_with(store, req, &executor, progress, cancel)
}

/// Builds with `executor` running the RUN steps.
pub fn build_with(
    store: &Store,
    req: &BuildRequest,
    executor: &dyn Executor,
    progress: &dyn Progress,
    cancel: &CancelHandle,
) -> Result<BuildResult, BuildError> {
    let images = ImageStore::new(store.clone());
    let resolver = LocalResolver::new(&images);
    let compiled =
        compile(&req.dockerfile, &req.options, &resolver).map_err(BuildError::Dockerfile)?;
    let mut warnings = compiled.warnings.clone();
    let graph = &compiled.graph;
    let target = compiled.target();

    let needed = needed_vertices(graph, target.vertex);
    let sources = resolve_sources(graph, &needed, &resolver)?;
    warnings.extend(resolver.take_notes().into_iter().map(|message| Warning {
        position: None,
        message,
    }));
    // `builder prune` takes this exclusively: nothing this build uses is
    // removed while it runs.
    let _gc = store.lock_shared("gc")?;
    if cancel.is_cancelled() {
        return Err(BuildError::Cancelled);
    }

    let mut keys: Vec<Option<VertexKey>> = vec![None; graph.len()];
    let mut computer = KeyComputer::new(graph, req, store, cancel);
    for &id in &needed {
        // Checksumming a large context takes a while; Ctrl-C should not wait.
        if cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        keys[id] = computer.key(id, &keys, sources[id]).map_err(|e| {
            let vertex = graph.vertex(e.vertex);
            BuildError::Step {
                vertex: e.vertex,
                description: vertex.description.clone(),
                position: vertex.position,
                source: StepError::Context(e),
            }
        })?;
    }
    let downloads = computer.take_downloads(graph.len());
    let notes = step_notes(graph, req);

    let snapshots = Snapshots::new(store);
    let holds: Mutex<Vec<StoreLock>> = Mutex::new(Vec::new());
    let index = KeyIndex::new(store);
    let env = scheduler::Env {
        store,
        snapshots: &snapshots,
        images: &images,
        index: &index,
        executor,
        request: req,
        progress,
        cancel,
        graph,
        sources: &sources,
        keys: &keys,
        downloads: &downloads,
        notes: &notes,
        uncached: &uncached_vertices(graph, &compiled.stages, req),
        holds: &holds,
    };
    let mut stats = BuildStats::default();
    let outcome = scheduler::run(&env, target.vertex, &mut stats);
    computer.save();
    if let Some(message) = forget_results_of_a_changed_context(&env, &stats.executed) {
        warnings.push(Warning {
            position: None,
            message,
        });
    }
    let state = outcome?;

    let chain = match state.as_ref() {
        State::Layers(chain) => chain.clone(),
        // `FROM` a named local context is not built here yet.
        _ => {
            let vertex = graph.vertex(target.vertex);
            return Err(BuildError::Step {
                vertex: target.vertex,
                description: vertex.description.clone(),
                position: vertex.position,
                source: StepError::Unsupported(
                    "a stage based on a local context cannot be the build's result".into(),
                ),
            });
        }
    };
    let ran_nothing = stats
        .executed
        .iter()
        .all(|&id| matches!(graph.vertex(id).op, Op::Source(_)));
    let stored = match req.source_date_epoch {
        Some(epoch) => write_image(store, &target.image, &chain, Timestamp::from_unix(epoch))?,
        None => write_dated_image(store, &target.image, &chain, ran_nothing)?,
    };
    let stored = if req.cache_inline {
        crate::scheduler::inline_cache(&env, &needed, &chain, stored)?
    } else {
        stored
    };
    crate::scheduler::export_remote(&env, target.vertex, &needed, &mut stats);
    warnings.extend(stats.remote_warnings.iter().map(|message| Warning {
        position: None,
        message: message.clone(),
    }));
    Ok(BuildResult {
        manifest_digest: stored.manifest_digest,
        config_digest: stored.config_digest,
        manifest: stored.manifest,
        config: stored.config,
        warnings,
        stats,
    })
}

/// The note name of every step: a digest of the canonical context
/// directory, the Dockerfile path, the stage and the step's ordinal in it,
/// so that the next build of the same Dockerfile finds what this step's key
/// was made of. Vertices of no stage (the context, scratch) have none.
fn step_notes(graph: &frontend::graph::BuildGraph, req: &BuildRequest) -> Vec<Option<String>> {
    let context =
        std::fs::canonicalize(&req.context_dir).unwrap_or_else(|_| req.context_dir.clone());
    let mut ordinal: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    (0..graph.len())
        .map(|id| {
            let stage = graph.vertex(id).stage?;
            let n = ordinal.entry(stage).or_insert(0);
            *n += 1;
            let identity = format!(
                "{}\0{}\0{stage}\0{n}",
                context.display(),
                req.dockerfile_path
            );
            Some(format!("step-{}", Digest::of(identity.as_bytes()).hex()))
        })
        .collect()
}

/// The keys were computed from the context as it was before any step ran,
/// but a step reads the context when it runs: a file edited meanwhile (a
/// branch switch during a long build) is copied as it is then. The steps
/// that ran and read the context are keyed again from the context as it is
/// now; where a key changed, the records of that step and of every step
/// that ran after it on its result are removed, so that no later build is
/// served content its key does not describe. Returns a warning when that
/// happened.
fn forget_results_of_a_changed_context(
    env: &scheduler::Env<'_>,
    executed: &[VertexId],
) -> Option<String> {
    let readers: Vec<VertexId> = executed
        .iter()
        .copied()
        .filter(|&id| env.keys[id].as_ref().is_some_and(|k| !k.files.is_empty()))
        .collect();
    if readers.is_empty() {
        return None;
    }
    let mut again = KeyComputer::new(env.graph, env.request, env.store, env.cancel);
    let mut changed = vec![false; env.graph.len()];
    for &id in &readers {
        let old = env.keys[id].as_ref().map(|k| k.digest);
        let now = again
            .key(id, env.keys, env.sources[id])
            .ok()
            .flatten()
            .map(|k| k.digest);
        changed[id] = now != old;
    }
    // Executed vertices are in id order, a topological order.
    let mut forgotten = Vec::new();
    for &id in executed {
        changed[id] |= env.graph.vertex(id).inputs.iter().any(|&i| changed[i]);
        if changed[id] {
            if let Some(key) = &env.keys[id] {
                let _ = env.index.remove(&key.digest);
            }
            forgotten.push(env.graph.vertex(id).description.clone());
        }
    }
    (!forgotten.is_empty()).then(|| {
        format!(
            "the build context changed while the build ran; these results were not kept in the cache: {}",
            forgotten.join("; ")
        )
    })
}

/// Writes the image dated now, except that a build which ran nothing gives
/// the image the previous identical build made (same config, same layers),
/// dated as then: like docker's classic builder, a fully cached rebuild
/// yields the same image id and writes no new blobs.
fn write_dated_image(
    store: &Store,
    image: &frontend::convert::ImageConfig,
    chain: &crate::rootfs::LayerChain,
    ran_nothing: bool,
) -> Result<StoredImage, BuildError> {
    // The image without its dates names the note that keeps them.
    let undated = crate::image::config_json(image, chain, Timestamp::from_unix(0))
        .map(|bytes| format!("image-created-{}", Digest::of(&bytes).hex()))
        .ok();
    let index = KeyIndex::new(store);
    if ran_nothing {
        let previous = undated
            .as_deref()
            .and_then(|name| index.note(name))
            .and_then(|bytes| parse_timestamp(&bytes));
        if let Some(created) = previous {
            return Ok(write_image(store, image, chain, created)?);
        }
    }
    let created = Timestamp::now();
    let stored = write_image(store, image, chain, created)?;
    if let Some(name) = undated {
        // Advisory: without the note the next cached build is dated anew.
        let _ = index.put_note(
            &name,
            format!("{} {}", created.seconds, created.nanos).as_bytes(),
        );
    }
    Ok(stored)
}

fn parse_timestamp(bytes: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (seconds, nanos) = text.trim().split_once(' ')?;
    Some(Timestamp {
        seconds: seconds.parse().ok()?,
        nanos: nanos.parse().ok().filter(|n| *n < 1_000_000_000)?,
    })
}

/// Per vertex, whether it runs whatever the cache holds: with `--no-cache`
/// every one; with `--no-cache-filter` those of the named stages and every
/// vertex that uses one's result (the step runs again and may make other
/// content than before, which the keys after it, made from its key, would
/// not tell).
fn uncached_vertices(
    graph: &frontend::graph::BuildGraph,
    stages: &[frontend::convert::CompiledStage],
    req: &BuildRequest,
) -> Vec<bool> {
    if req.no_cache {
        return vec![true; graph.len()];
    }
    let filtered: Vec<usize> = stages
        .iter()
        .filter(|s| {
            s.name.as_deref().is_some_and(|name| {
                req.no_cache_stages
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(name))
            })
        })
        .map(|s| s.index)
        .collect();
    let mut uncached = vec![false; graph.len()];
    if filtered.is_empty() {
        return uncached;
    }
    // Inputs are made before the vertices that use them: their ids are lower.
    for id in 0..graph.len() {
        let vertex = graph.vertex(id);
        uncached[id] = vertex.stage.is_some_and(|s| filtered.contains(&s))
            || vertex.inputs.iter().any(|&i| uncached[i]);
    }
    uncached
}

/// The vertices `target` depends on (itself included), in id order, which
/// is a topological order.
fn needed_vertices(graph: &frontend::graph::BuildGraph, target: VertexId) -> Vec<VertexId> {
    let mut needed = vec![false; graph.len()];
    let mut stack = vec![target];
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut needed[id], true) {
            continue;
        }
        stack.extend(graph.vertex(id).inputs.iter().copied());
    }
    (0..graph.len()).filter(|&id| needed[id]).collect()
}

/// The manifest digest of every needed source vertex (indexed by vertex id;
/// `None` for other ops). Sources the compiler left unresolved (`--from`
/// images) are looked up now; a missing image fails the build before any
/// step runs, naming the first instruction that uses it.
fn resolve_sources(
    graph: &frontend::graph::BuildGraph,
    needed: &[VertexId],
    resolver: &LocalResolver<'_>,
) -> Result<Vec<Option<Digest>>, BuildError> {
    let mut digests = vec![None; graph.len()];
    for &id in needed {
        let vertex = graph.vertex(id);
        let Op::Source(op) = &vertex.op else {
            continue;
        };
        let not_found = || BuildError::ImageNotFound {
            reference: op.reference.clone(),
            position: vertex.position.or_else(|| first_use(graph, needed, id)),
            pull_error: resolver
                .pull_failure(op.normalized.as_deref().unwrap_or(&op.reference))
                .or_else(|| resolver.pull_failure(&op.reference)),
        };
        let digest = match op.digest.as_deref().and_then(parse_digest) {
            Some(digest) => digest,
            None => {
                let name = op.normalized.as_deref().unwrap_or(&op.reference);
                let found = resolver.lookup(name).map_err(|source| BuildError::Step {
                    vertex: id,
                    description: vertex.description.clone(),
                    position: vertex.position.or_else(|| first_use(graph, needed, id)),
                    source: StepError::Image {
                        reference: op.reference.clone(),
                        source,
                    },
                })?;
                found.ok_or_else(not_found)?.manifest_digest
            }
        };
        digests[id] = Some(digest);
    }
    Ok(digests)
}

/// The position of the first needed vertex that reads `id`.
fn first_use(
    graph: &frontend::graph::BuildGraph,
    needed: &[VertexId],
    id: VertexId,
) -> Option<SourcePos> {
    needed
        .iter()
        .map(|&v| graph.vertex(v))
        .filter(|v| v.inputs.contains(&id))
        .find_map(|v| v.position)
}

/// The last lines of a step's output.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    pub(crate) fn push(&mut self, line: &str) {
        if self.lines.len() == LAST_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_owned());
    }

    pub(crate) fn into_lines(self) -> Vec<String> {
        self.lines.into()
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        })
    }
}
