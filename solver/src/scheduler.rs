//! The scheduler: decides which vertices a build must run (walking from the
//! target, a cache hit cuts off everything below it), runs every ready
//! vertex at once on its own thread (RUN steps mostly wait, so the number
//! of cores is no limit; `--jobs` is), runs identical vertices once, stores
//! each result in the key index, and explains root-cause cache misses.
//!
//! Threads are scoped to the build; results travel back over a channel to
//! the scheduling thread, which alone owns the bookkeeping. The first real
//! failure cancels the shared [`CancelHandle`] (killing every running
//! sandbox), the rest are waited for, and that first error is returned.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cache::Digest;
use cache::images::ImageStore;
use cache::keys::{CacheRecord, KeyIndex, RecordLayer};
use cache::layer::create::LayerDescriptor;
use cache::snapshot::{LayerRef, Snapshots};
use cache::store::{Store, StoreLock};
use frontend::graph::{BuildGraph, Op, VertexId};
use serde::{Deserialize, Serialize};

use crate::cachekey::{KEY_VERSION, VertexKey};
use crate::ops::{OpContext, State, operation};
use crate::resolver::error_chain;
use crate::rootfs::{ChainLayer, LayerChain};
use crate::sandbox::{CancelHandle, Executor};
use crate::solve::{BuildError, BuildRequest, BuildStats, Progress, ProgressEvent, StepError};

/// Everything the scheduler and its jobs share.
pub(crate) struct Env<'a> {
    pub store: &'a Store,
    pub snapshots: &'a Snapshots,
    pub images: &'a ImageStore,
    pub index: &'a KeyIndex,
    pub executor: &'a dyn Executor,
    pub request: &'a BuildRequest,
    pub progress: &'a dyn Progress,
    pub cancel: &'a CancelHandle,
    pub graph: &'a BuildGraph,
    pub sources: &'a [Option<Digest>],
    pub keys: &'a [Option<VertexKey>],
    /// Per vertex, the remote sources its key was computed from with what
    /// they were then: a URL's sha256, a git reference's commit (see
    /// [`crate::cachekey::KeyComputer::take_downloads`]).
    pub downloads: &'a [Vec<(String, crate::ops::copy::Pinned)>],
    /// The note name of each step (its identity across builds).
    pub notes: &'a [Option<String>],
    /// Per vertex, whether it runs whatever the cache holds (`--no-cache`,
    /// `--no-cache-filter`).
    pub uncached: &'a [bool],
    pub holds: &'a Mutex<Vec<StoreLock>>,
}

/// What the build does with a vertex.
#[derive(Debug, Clone)]
enum Plan {
    /// Not needed: a hit below it, or not reachable from the target.
    Skip,
    /// Its result comes from the key index.
    Hit(CacheRecord),
    /// Its op runs.
    Run,
    /// Same key as the vertex named, which produces the result for both.
    Alias(VertexId),
}

/// Ops whose results are stored in the key index (sources are the images
/// themselves; scratch and the context are no work).
fn is_cached_op(op: &Op) -> bool {
    matches!(op, Op::Exec(_) | Op::Copy(_) | Op::Mkdir(_))
}

/// Runs what `target` needs; returns its result.
pub(crate) fn run(
    env: &Env<'_>,
    target: VertexId,
    stats: &mut BuildStats,
) -> Result<Arc<State>, BuildError> {
    let mut origins: Vec<Option<String>> = vec![None; env.graph.len()];
    let plan = make_plan(env, target, stats, &mut origins)?;
    import_mounts(env, &plan, stats);
    let graph = env.graph;
    let n = graph.len();
    report_cached_below_hits(env, &plan, target);

    // Who waits for whom: a running vertex for its inputs, an alias for
    // the vertex that produces its result.
    let mut waiting = vec![0usize; n];
    let mut dependents: Vec<Vec<VertexId>> = vec![Vec::new(); n];
    let mut ready = VecDeque::new();
    for (id, p) in plan.iter().enumerate() {
        match p {
            Plan::Skip => continue,
            Plan::Hit(_) => {}
            Plan::Run => {
                for &input in &graph.vertex(id).inputs {
                    waiting[id] += 1;
                    dependents[input].push(id);
                }
            }
            Plan::Alias(leader) => {
                waiting[id] += 1;
                dependents[*leader].push(id);
            }
        }
        if waiting[id] == 0 {
            ready.push_back(id);
        }
    }
    // Results are released once their last consumer has finished.
    let mut uses: Vec<usize> = dependents.iter().map(Vec::len).collect();
    let mut results: Vec<Option<Arc<State>>> = vec![None; n];
    let cap = env.request.jobs.unwrap_or(usize::MAX).max(1);
    let mut first_error: Option<BuildError> = None;
    let mut panic = None;
    let plan = &plan;
    let origins = &origins;

    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(VertexId, JobOutcome)>();
        let mut running = 0usize;
        loop {
            while first_error.is_none() && !env.cancel.is_cancelled() {
                let Some(&id) = ready.front() else { break };
                if let Plan::Alias(leader) = plan[id] {
                    ready.pop_front();
                    let state = results[leader].clone();
                    if visible(graph, id) {
                        env.progress.event(&ProgressEvent::StepCached {
                            vertex: id,
                            description: graph.vertex(id).description.clone(),
                        });
                    }
                    stats.cached.push(id);
                    finish(
                        id,
                        state,
                        &[leader],
                        &mut results,
                        &mut uses,
                        &mut waiting,
                        &dependents,
                        &mut ready,
                        target,
                    );
                    continue;
                }
                if running >= cap {
                    break;
                }
                ready.pop_front();
                let job = match &plan[id] {
                    Plan::Hit(record) => Job::Hit(record.clone()),
                    _ => Job::Run(
                        graph
                            .vertex(id)
                            .inputs
                            .iter()
                            .map(|&i| results[i].clone().expect("inputs finish first"))
                            .collect(),
                    ),
                };
                let tx = tx.clone();
                running += 1;
                s.spawn(move || {
                    let outcome = match catch_unwind(AssertUnwindSafe(|| match job {
                        Job::Hit(record) => materialize(env, id, &record).inspect(|_| {
                            if let Some(line) = &origins[id] {
                                env.progress.event(&ProgressEvent::Log {
                                    vertex: id,
                                    stream: crate::solve::LogStream::Stdout,
                                    line: line.clone(),
                                });
                            }
                        }),
                        Job::Run(inputs) => run_vertex(env, plan, id, inputs),
                    })) {
                        Ok(result) => JobOutcome::Done(result),
                        Err(payload) => JobOutcome::Panicked(payload),
                    };
                    // The receiver outlives every job thread.
                    let _ = tx.send((id, outcome));
                });
            }
            if running == 0 {
                break;
            }
            let (id, outcome) = rx.recv().expect("job threads report before they end");
            running -= 1;
            match outcome {
                JobOutcome::Done(Ok(state)) => {
                    match &plan[id] {
                        Plan::Hit(_) => {
                            stats.hits += 1;
                            stats.cached.push(id);
                        }
                        _ => {
                            if !matches!(graph.vertex(id).op, Op::Scratch | Op::Context(_)) {
                                stats.executed.push(id);
                            }
                        }
                    }
                    let inputs: &[VertexId] = match &plan[id] {
                        Plan::Run => &graph.vertex(id).inputs,
                        _ => &[],
                    };
                    finish(
                        id,
                        Some(Arc::new(state)),
                        inputs,
                        &mut results,
                        &mut uses,
                        &mut waiting,
                        &dependents,
                        &mut ready,
                        target,
                    );
                }
                JobOutcome::Done(Err(err)) => {
                    if first_error.is_none() && !matches!(err, BuildError::Cancelled) {
                        first_error = Some(err);
                        env.cancel.cancel();
                    }
                }
                JobOutcome::Panicked(payload) => {
                    panic.get_or_insert(payload);
                    env.cancel.cancel();
                }
            }
        }
    });
    if let Some(payload) = panic {
        resume_unwind(payload);
    }
    stats.executed.sort_unstable();
    stats.cached.sort_unstable();
    stats.executed_steps = stats
        .executed
        .iter()
        .map(|&id| graph.vertex(id).description.clone())
        .collect();
    if let Some(err) = first_error {
        return Err(err);
    }
    match results[target].take() {
        Some(state) if !env.cancel.is_cancelled() => Ok(state),
        _ => Err(BuildError::Cancelled),
    }
}

enum Job {
    Hit(CacheRecord),
    Run(Vec<Arc<State>>),
}

enum JobOutcome {
    Done(Result<State, BuildError>),
    Panicked(Box<dyn std::any::Any + Send>),
}

/// Records `id`'s result, releases inputs nobody needs any more, and
/// queues the vertices that were only waiting for it.
#[allow(clippy::too_many_arguments)]
fn finish(
    id: VertexId,
    state: Option<Arc<State>>,
    inputs: &[VertexId],
    results: &mut [Option<Arc<State>>],
    uses: &mut [usize],
    waiting: &mut [usize],
    dependents: &[Vec<VertexId>],
    ready: &mut VecDeque<VertexId>,
    target: VertexId,
) {
    results[id] = state;
    for &input in inputs {
        uses[input] -= 1;
        if uses[input] == 0 && input != target {
            results[input] = None;
        }
    }
    for &d in &dependents[id] {
        waiting[d] -= 1;
        if waiting[d] == 0 {
            ready.push_back(d);
        }
    }
}

fn visible(graph: &BuildGraph, id: VertexId) -> bool {
    !matches!(graph.vertex(id).op, Op::Scratch)
}

/// Walks from the target: a vertex whose key has a usable record is a hit
/// and its inputs are not needed; a vertex with the key of one already
/// planned becomes its alias; anything else runs and its inputs are needed.
fn make_plan(
    env: &Env<'_>,
    target: VertexId,
    stats: &mut BuildStats,
    origins: &mut [Option<String>],
) -> Result<Vec<Plan>, BuildError> {
    let mut dead = vec![false; env.request.cache_from.len()];
    let graph = env.graph;
    let mut plan = vec![Plan::Skip; graph.len()];
    let mut seen = vec![false; graph.len()];
    // Identical vertices (same key) run once, unless one must run whatever
    // the cache holds and the other may come from it (`--no-cache-filter`).
    let mut by_key: HashMap<(Digest, bool), VertexId> = HashMap::new();
    // Inputs are visited in id order (lowest first), so that of identical
    // vertices the earlier one leads.
    let mut stack = vec![target];
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut seen[id], true) {
            continue;
        }
        let vertex = graph.vertex(id);
        if let Some(key) = &env.keys[id] {
            if let Some(&leader) = by_key.get(&(key.digest, env.uncached[id])) {
                plan[id] = Plan::Alias(leader);
                continue;
            }
            by_key.insert((key.digest, env.uncached[id]), id);
            if is_cached_op(&vertex.op) && !env.uncached[id] {
                stats.lookups += 1;
                if let Some(record) = env.index.get(&key.digest)?
                    && record.layers.iter().all(|l| env.store.has_blob(&l.digest))
                {
                    plan[id] = Plan::Hit(record);
                    continue;
                }
                if let Some((record, origin)) = remote_lookup(env, &key.digest, &mut dead, stats) {
                    origins[id] = Some(origin);
                    plan[id] = Plan::Hit(record);
                    continue;
                }
            }
        }
        plan[id] = Plan::Run;
        let mut inputs = vertex.inputs.clone();
        inputs.sort_unstable_by(|a, b| b.cmp(a));
        stack.extend(inputs);
    }
    // Identical keys mean identical inputs, so a leader never depends on
    // its alias: the aliases cannot deadlock.
    Ok(plan)
}

/// On a local miss, the `--cache-from` caches in order: a hit has its
/// blobs fetched into the store and becomes a local record (the next build
/// finds it locally). A cache that fails is a warning and is not asked
/// again in this build.
fn remote_lookup(
    env: &Env<'_>,
    key: &Digest,
    dead: &mut [bool],
    stats: &mut BuildStats,
) -> Option<(CacheRecord, String)> {
    for (i, remote) in env.request.cache_from.iter().enumerate() {
        if dead[i] || env.cancel.is_cancelled() {
            continue;
        }
        match remote.lookup(env.store, key) {
            Ok(Some(fetched)) => {
                // Without the local record the hit still serves this build.
                let _ = env.index.put(key, &fetched.record);
                stats.remote_hits += 1;
                stats.remote_bytes += fetched.fetched_bytes;
                let origin = format!(
                    "from cache {} ({})",
                    remote.name(),
                    cache::remote_cache::human_bytes(fetched.fetched_bytes)
                );
                return Some((fetched.record, origin));
            }
            Ok(None) => {}
            Err(err) => {
                dead[i] = true;
                stats.remote_warnings.push(format!(
                    "--cache-from {}: not used for the rest of this build: {}",
                    remote.name(),
                    error_chain(&err)
                ));
            }
        }
    }
    None
}

/// `type=inline`: the image's manifest again, annotated with the keys of
/// the needed results that are a leading part of its layers.
pub(crate) fn inline_cache(
    env: &Env<'_>,
    needed: &[VertexId],
    chain: &LayerChain,
    stored: crate::image::StoredImage,
) -> Result<crate::image::StoredImage, BuildError> {
    let image: Vec<Digest> = chain.layers().iter().map(|l| l.descriptor.digest).collect();
    let mut entries: BTreeMap<Digest, usize> = BTreeMap::new();
    for &id in needed {
        if !is_cached_op(&env.graph.vertex(id).op) {
            continue;
        }
        let Some(key) = &env.keys[id] else { continue };
        if let Ok(Some(record)) = env.index.get(&key.digest)
            && !record.layers.is_empty()
            && record.layers.len() <= image.len()
            && record
                .layers
                .iter()
                .zip(&image)
                .all(|(l, d)| l.digest == *d)
        {
            entries.insert(key.digest, record.layers.len());
        }
    }
    let entries: Vec<(Digest, usize)> = entries.into_iter().collect();
    let Some(manifest) = cache::remote_cache::inline_manifest(&stored.manifest, &entries) else {
        return Ok(stored);
    };
    let manifest_digest = env.store.put_blob(&manifest)?;
    Ok(crate::image::StoredImage {
        manifest_digest,
        manifest,
        ..stored
    })
}

/// The `RUN --mount=type=cache` directories of the needed steps: their
/// names in `ROOT/mounts/` (as the exec op names them) and ids.
fn cache_mounts(env: &Env<'_>, ids: &[VertexId]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for &id in ids {
        if let Op::Exec(op) = &env.graph.vertex(id).op {
            for mount in &op.mounts {
                if let frontend::graph::ExecMountKind::Cache { id, .. } = &mount.kind {
                    out.insert(Digest::of(id.as_bytes()).hex(), id.clone());
                }
            }
        }
    }
    out
}

/// Before the steps run: each cache mount directory a running step uses
/// and this root lacks is fetched from the `--cache-from` caches, if one of
/// them has it (`mounts=true` exports). Failures are warnings.
fn import_mounts(env: &Env<'_>, plan: &[Plan], stats: &mut BuildStats) {
    if env.request.cache_from.is_empty() {
        return;
    }
    let running: Vec<VertexId> = (0..plan.len())
        .filter(|&id| matches!(plan[id], Plan::Run))
        .collect();
    for (hex, name) in cache_mounts(env, &running) {
        let dir = env.store.root().join("mounts").join(&hex);
        if dir.exists() {
            continue;
        }
        let Ok(Some(_lock)) = env.store.try_lock_exclusive(&format!("mount-{hex}")) else {
            continue;
        };
        if dir.exists() {
            continue;
        }
        let key = cache::remote_cache::mount_key(&hex);
        for remote in &env.request.cache_from {
            let fetched = match remote.lookup(env.store, &key) {
                Ok(Some(fetched)) => fetched,
                Ok(None) => continue,
                Err(err) => {
                    stats.remote_warnings.push(format!(
                        "--cache-from {}: cache mount {name} not imported: {}",
                        remote.name(),
                        error_chain(&err)
                    ));
                    continue;
                }
            };
            let unpacked = env.store.temp_dir("cache-import-").ok().and_then(|temp| {
                let fresh = temp.path().join("dir");
                std::fs::create_dir(&fresh).ok()?;
                let result = cache::remote_cache::unpack_mount(env.store, &fetched.record, &fresh)
                    .map_err(|err| error_chain(&err))
                    .and_then(|()| {
                        std::fs::create_dir_all(dir.parent().expect("mounts/ has a parent"))
                            .and_then(|()| std::fs::rename(&fresh, &dir))
                            .map_err(|e| e.to_string())
                    });
                Some(result)
            });
            match unpacked {
                Some(Ok(())) => {
                    stats.remote_mounts += 1;
                    stats.remote_bytes += fetched.fetched_bytes;
                }
                Some(Err(err)) => stats.remote_warnings.push(format!(
                    "--cache-from {}: cache mount {name} not imported: {err}",
                    remote.name()
                )),
                None => {}
            }
            break;
        }
    }
}

/// Exports the build's results to the `--cache-to` caches: with
/// `mode=max` every cached result the target needed, with `mode=min` those
/// of the target's stage. Failures are warnings: the image is built.
pub(crate) fn export_remote(
    env: &Env<'_>,
    target: VertexId,
    needed: &[VertexId],
    stats: &mut BuildStats,
) {
    if env.request.cache_to.is_empty() {
        return;
    }
    let graph = env.graph;
    let stage = graph.vertex(target).stage;
    let mounts = cache_mounts(env, needed);
    for (remote, opts) in &env.request.cache_to {
        let mut entries: BTreeMap<Digest, CacheRecord> = BTreeMap::new();
        for &id in needed {
            let vertex = graph.vertex(id);
            if !is_cached_op(&vertex.op) {
                continue;
            }
            if opts.mode == cache::remote_cache::CacheMode::Min
                && (stage.is_none() || vertex.stage != stage)
            {
                continue;
            }
            let Some(key) = &env.keys[id] else { continue };
            if entries.contains_key(&key.digest) {
                continue;
            }
            if let Ok(Some(record)) = env.index.get(&key.digest)
                && record.layers.iter().all(|l| env.store.has_blob(&l.digest))
            {
                entries.insert(key.digest, record);
            }
        }
        if opts.mounts {
            for (hex, id) in &mounts {
                let dir = env.store.root().join("mounts").join(hex);
                // A step holding it exclusively is still writing it.
                let Ok(Some(_lock)) = env.store.try_lock_shared(&format!("mount-{hex}")) else {
                    continue;
                };
                if !dir.is_dir() {
                    continue;
                }
                match cache::remote_cache::mount_record(env.store, &dir, id) {
                    Ok(record) => {
                        entries.insert(cache::remote_cache::mount_key(hex), record);
                    }
                    Err(err) => stats.remote_warnings.push(format!(
                        "--cache-to {}: cache mount {id} not exported: {}",
                        remote.name(),
                        error_chain(&err)
                    )),
                }
            }
        }
        let entries: Vec<(Digest, CacheRecord)> = entries.into_iter().collect();
        match remote.export(env.store, &entries) {
            Ok(exported) => stats.exports.push((remote.name(), exported)),
            Err(err) => stats.remote_warnings.push(format!(
                "--cache-to {}: export failed: {}",
                remote.name(),
                error_chain(&err)
            )),
        }
    }
}

/// Steps the target needs that nothing has to do because a hit above them
/// covers them are cached too, as far as a person is concerned (BuildKit
/// shows them so): each gets a `StepCached`. The context is not one: it
/// was not even read.
fn report_cached_below_hits(env: &Env<'_>, plan: &[Plan], target: VertexId) {
    let graph = env.graph;
    let mut seen = vec![false; graph.len()];
    let mut stack = vec![target];
    while let Some(id) = stack.pop() {
        if !std::mem::replace(&mut seen[id], true) {
            stack.extend(graph.vertex(id).inputs.iter().copied());
        }
    }
    for (id, p) in plan.iter().enumerate() {
        let vertex = graph.vertex(id);
        if seen[id] && matches!(p, Plan::Skip) && !matches!(vertex.op, Op::Scratch | Op::Context(_))
        {
            if let Some(key) = env.keys[id].as_ref().filter(|_| is_cached_op(&vertex.op)) {
                remember(env, id, key);
            }
            env.progress.event(&ProgressEvent::StepCached {
                vertex: id,
                description: vertex.description.clone(),
            });
        }
    }
}

/// A hit: the recorded layers with their snapshots (unpacked again from
/// the blobs if they were removed), held for the build.
fn materialize(env: &Env<'_>, id: VertexId, record: &CacheRecord) -> Result<State, BuildError> {
    let vertex = env.graph.vertex(id);
    let step_error = |source| BuildError::Step {
        vertex: id,
        description: vertex.description.clone(),
        position: vertex.position,
        source: StepError::Snapshot {
            reference: "a cached result".into(),
            source,
        },
    };
    let mut layers = Vec::with_capacity(record.layers.len());
    for l in &record.layers {
        if env.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let layer_ref = LayerRef {
            digest: l.digest,
            diff_id: l.diff_id,
        };
        let snapshot = match env.snapshots.ensure(&layer_ref) {
            Ok(snapshot) => snapshot,
            Err(err) => {
                // A record whose blob cannot be unpacked (damaged) must
                // not fail every later build too: the next one runs the
                // step again.
                if let Some(key) = &env.keys[id] {
                    let _ = env.index.remove(&key.digest);
                }
                return Err(step_error(err));
            }
        };
        let hold = env.snapshots.hold(&l.diff_id).map_err(step_error)?;
        env.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hold);
        layers.push(ChainLayer {
            descriptor: LayerDescriptor {
                media_type: l.media_type.clone(),
                digest: l.digest,
                size: l.size,
                diff_id: l.diff_id,
            },
            snapshot,
        });
    }
    if let Some(key) = &env.keys[id] {
        remember(env, id, key);
    }
    env.progress.event(&ProgressEvent::StepCached {
        vertex: id,
        description: vertex.description.clone(),
    });
    Ok(State::Layers(LayerChain::from_layers(layers)))
}

/// Runs one vertex's op with progress, then stores its result and what
/// its key was made of.
fn run_vertex(
    env: &Env<'_>,
    plan: &[Plan],
    id: VertexId,
    inputs: Vec<Arc<State>>,
) -> Result<State, BuildError> {
    let vertex = env.graph.vertex(id);
    let key = env.keys[id].as_ref().filter(|_| is_cached_op(&vertex.op));
    if let (Some(key), Some(note)) = (key, &env.notes[id])
        && !env.uncached[id]
        && let Some(reason) = explain_miss(env, plan, id, key, note)
    {
        env.progress
            .event(&ProgressEvent::CacheMiss { vertex: id, reason });
    }
    let cx = OpContext {
        store: env.store,
        snapshots: env.snapshots,
        images: env.images,
        executor: env.executor,
        request: env.request,
        progress: env.progress,
        cancel: env.cancel,
        vertex_id: id,
        vertex,
        source_digest: env.sources[id],
        downloads: env.downloads.get(id).map_or(&[], Vec::as_slice),
        holds: env.holds,
    };
    let visible = visible(env.graph, id);
    if visible {
        env.progress.event(&ProgressEvent::StepStarted {
            vertex: id,
            description: vertex.description.clone(),
        });
    }
    let started = Instant::now();
    let refs: Vec<&State> = inputs.iter().map(|s| s.as_ref()).collect();
    let outcome = operation(&vertex.op).run(&cx, &refs);
    drop(refs);
    drop(inputs);
    let state = match outcome {
        Ok(state) => state,
        Err(err) => {
            // A step killed by a cancellation reports the cancellation, not
            // its own death.
            let err = if env.cancel.is_cancelled() {
                BuildError::Cancelled
            } else {
                err
            };
            if visible {
                env.progress.event(&ProgressEvent::StepFailed {
                    vertex: id,
                    message: error_chain(&err),
                });
            }
            return Err(err);
        }
    };
    if let (Some(key), State::Layers(chain)) = (key, &state) {
        let layers = chain
            .layers()
            .iter()
            .map(|l| RecordLayer {
                media_type: l.descriptor.media_type.clone(),
                digest: l.descriptor.digest,
                size: l.descriptor.size,
                diff_id: l.descriptor.diff_id,
            })
            .collect();
        env.index.put(
            &key.digest,
            &CacheRecord::new(layers, vertex.description.clone()),
        )?;
        remember(env, id, key);
    }
    if visible {
        env.progress.event(&ProgressEvent::StepDone {
            vertex: id,
            duration: started.elapsed(),
        });
    }
    Ok(state)
}

/// Records what `id`'s key was made of under its step's note, whether the
/// step ran or came from the cache (from another Dockerfile's step, or
/// another machine's), so that its next miss can be explained. A note
/// that already describes this key is left alone (one small read on the
/// cached path). Notes only explain: a lost one costs an explanation.
fn remember(env: &Env<'_>, id: VertexId, key: &VertexKey) {
    let Some(note) = &env.notes[id] else { return };
    if !env.index.note_starts_with(note, &Note::head(key)) {
        let _ = env.index.put_note(note, &Note::of(key).to_bytes());
    }
}

/// What a step's key was made of the last time it ran or was found in
/// the cache (component names with value digests, and per-file checksums
/// of its context sources). Holds digests only, never values.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    version: u32,
    /// The key's digest, first so that [`remember`] can compare it without
    /// reading the rest (the same key means the same components).
    #[serde(default)]
    key: String,
    /// The key scheme the components come from; another one compares
    /// nothing.
    #[serde(default)]
    key_version: String,
    components: Vec<(String, String)>,
    #[serde(default)]
    files: BTreeMap<String, Vec<(String, String)>>,
}

const NOTE_VERSION: u32 = 1;

impl Note {
    fn of(key: &VertexKey) -> Note {
        Note {
            version: NOTE_VERSION,
            key: key.digest.hex(),
            key_version: KEY_VERSION.to_owned(),
            components: key
                .components
                .iter()
                .map(|c| (c.name.clone(), c.value.hex()))
                .collect(),
            files: key
                .files
                .iter()
                .map(|(name, entries)| {
                    (
                        name.clone(),
                        entries.iter().map(|(p, d)| (p.clone(), d.hex())).collect(),
                    )
                })
                .collect(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a note serializes")
    }

    /// How the bytes of `key`'s note begin: the version and the key.
    fn head(key: &VertexKey) -> Vec<u8> {
        format!(
            r#"{{"version":{NOTE_VERSION},"key":"{}","#,
            key.digest.hex()
        )
        .into_bytes()
    }
}

/// Why `id` missed, compared with its step's note: the first component that
/// changed, was added or removed. None when there is no note, nothing
/// differs, or the difference is an input that missed itself (that input
/// is the root cause and explains it).
fn explain_miss(
    env: &Env<'_>,
    plan: &[Plan],
    id: VertexId,
    key: &VertexKey,
    note: &str,
) -> Option<String> {
    let bytes = env.index.note(note)?;
    let prev: Note = serde_json::from_slice(&bytes).ok()?;
    if prev.version != NOTE_VERSION {
        return None;
    }
    let vertex = env.graph.vertex(id);
    let step = vertex
        .description
        .split_once("] ")
        .map_or(vertex.description.as_str(), |(_, rest)| rest);
    let what = if prev.key_version == KEY_VERSION {
        changed_component(env, plan, key, &prev)?
    } else {
        "the cache key scheme changed (another builder version)".to_owned()
    };
    Some(format!("{step}: {what}"))
}

fn changed_component(env: &Env<'_>, plan: &[Plan], key: &VertexKey, prev: &Note) -> Option<String> {
    let old: HashMap<&str, &str> = prev
        .components
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    for c in &key.components {
        match old.get(c.name.as_str()) {
            None => return Some(format!("{} added", c.name)),
            Some(&v) if v == c.value.hex() => continue,
            Some(_) => {}
        }
        if let Some(input) = c.input {
            if matches!(env.graph.vertex(input).op, Op::Source(_)) {
                return Some(if c.name == "parent" {
                    "base image changed".into()
                } else {
                    format!("{} image changed", c.name)
                });
            }
            // A vertex that ran explains itself; one that came from the
            // cache, with another key than last time, does not.
            if !input_ran(plan, input) {
                return Some(format!("{} changed", c.name));
            }
            return None;
        }
        if let (Some(now), Some(before)) = (key.files.get(&c.name), prev.files.get(&c.name)) {
            if let Some(file) = changed_file(now, before) {
                return Some(file);
            }
        }
        return Some(format!("{} changed", c.name));
    }
    let now: std::collections::HashSet<&str> =
        key.components.iter().map(|c| c.name.as_str()).collect();
    prev.components
        .iter()
        .find(|(n, _)| !now.contains(n.as_str()))
        .map(|(n, _)| format!("{n} removed"))
}

/// Whether `input` runs in this build (itself or through the vertex it is
/// an alias of), rather than coming from the cache.
fn input_ran(plan: &[Plan], input: VertexId) -> bool {
    match plan[input] {
        Plan::Run => true,
        Plan::Alias(leader) => matches!(plan[leader], Plan::Run),
        Plan::Hit(_) | Plan::Skip => false,
    }
}

/// The first path (in order) whose checksum differs between two sorted
/// entry lists: `src/main.rs changed`, `… added` or `… removed`.
fn changed_file(now: &[(String, Digest)], before: &[(String, String)]) -> Option<String> {
    let (mut i, mut j) = (0, 0);
    while i < now.len() || j < before.len() {
        match (now.get(i), before.get(j)) {
            (Some((p, d)), Some((q, e))) if p == q => {
                if d.hex() != *e {
                    return Some(format!("{p} changed"));
                }
                i += 1;
                j += 1;
            }
            (Some((p, _)), Some((q, _))) if p < q => return Some(format!("{p} added")),
            (Some((p, _)), None) => return Some(format!("{p} added")),
            (_, Some((q, _))) => return Some(format!("{q} removed")),
            (None, None) => break,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(entries: &[(&str, &str)]) -> Vec<(String, Digest)> {
        entries
            .iter()
            .map(|(p, c)| ((*p).to_owned(), Digest::of(c.as_bytes())))
            .collect()
    }

    fn before(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|(p, c)| ((*p).to_owned(), Digest::of(c.as_bytes()).hex()))
            .collect()
    }

    #[test]
    fn a_note_begins_with_its_head() {
        let key = VertexKey {
            digest: Digest::of(b"key"),
            components: vec![],
            files: BTreeMap::from([("context".to_owned(), now(&[("a", "1")]))]),
        };
        let bytes = Note::of(&key).to_bytes();
        assert!(
            bytes.starts_with(&Note::head(&key)),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let other = VertexKey {
            digest: Digest::of(b"other"),
            ..key
        };
        assert!(!bytes.starts_with(&Note::head(&other)));
    }

    #[test]
    fn the_first_differing_file_is_named() {
        let old = before(&[("a", "1"), ("b", "2"), ("d", "4")]);
        assert_eq!(
            changed_file(&now(&[("a", "1"), ("b", "2"), ("d", "4")]), &old),
            None
        );
        assert_eq!(
            changed_file(&now(&[("a", "1"), ("b", "X"), ("d", "4")]), &old).as_deref(),
            Some("b changed")
        );
        assert_eq!(
            changed_file(
                &now(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]),
                &old
            )
            .as_deref(),
            Some("c added")
        );
        assert_eq!(
            changed_file(&now(&[("a", "1"), ("d", "4")]), &old).as_deref(),
            Some("b removed")
        );
        assert_eq!(
            changed_file(
                &now(&[("a", "1"), ("b", "2"), ("d", "4"), ("e", "5")]),
                &old
            )
            .as_deref(),
            Some("e added")
        );
        assert_eq!(
            changed_file(&now(&[("a", "1"), ("b", "2")]), &old).as_deref(),
            Some("d removed")
        );
    }
}
