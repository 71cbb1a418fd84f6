//! Ops: what the solver does for each kind of build-graph vertex.
//!
//! Every op is an [`Operation`]: given the results of its inputs (in slot
//! order) it produces its own result, a [`State`]. Ops share nothing but
//! what [`OpContext`] hands them, so independent vertices can later run on
//! several threads at once.

pub mod copy;
mod copy_step;
mod exec;
mod mkdir;
mod mounts;
mod source;

use std::path::PathBuf;
use std::sync::Mutex;

use cache::Digest;
use cache::images::ImageStore;
use cache::layer::create::CreateOptions;
use cache::snapshot::Snapshots;
use cache::store::{Store, StoreLock};
use frontend::graph::{ContextOp, Op, Vertex, VertexId};

use crate::rootfs::{ChainLayer, LayerChain, Workspace};
use crate::sandbox::{CancelHandle, Executor};
use crate::solve::{BuildError, BuildRequest, Progress, StepError};

/// The result of a vertex.
#[derive(Debug, Clone)]
pub enum State {
    /// A filesystem: the image or stage built so far.
    Layers(LayerChain),
    /// A local directory given to the build (the context), read in place.
    Context { name: String, dir: PathBuf },
}

/// What an op may use while it runs.
pub struct OpContext<'a> {
    pub store: &'a Store,
    pub snapshots: &'a Snapshots,
    pub images: &'a ImageStore,
    pub executor: &'a dyn Executor,
    pub request: &'a BuildRequest,
    pub progress: &'a dyn Progress,
    pub cancel: &'a CancelHandle,
    pub vertex_id: VertexId,
    pub vertex: &'a Vertex,
    /// For a source op: the manifest digest it was resolved to.
    pub source_digest: Option<Digest>,
    /// For an ADD of remote sources whose key was computed from what they
    /// were then (see [`copy::CopyContext::downloads`]). The step must find
    /// the same.
    pub downloads: &'a [(String, copy::Pinned)],
    /// Snapshots this build uses, held against removal until it ends.
    pub holds: &'a Mutex<Vec<StoreLock>>,
}

impl OpContext<'_> {
    /// A failure of this vertex's step.
    pub fn step_error(&self, source: impl Into<StepError>) -> BuildError {
        BuildError::Step {
            vertex: self.vertex_id,
            description: self.vertex.description.clone(),
            position: self.vertex.position,
            source: source.into(),
        }
    }

    pub fn hold(&self, lock: StoreLock) {
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lock);
    }

    /// How this build writes layers.
    pub fn layer_options(&self) -> CreateOptions {
        CreateOptions {
            compression: self.request.layer_compression,
            source_date_epoch: self.request.source_date_epoch,
        }
    }

    /// The filesystem state of input `slot`.
    pub fn layers<'s>(
        &self,
        inputs: &[&'s State],
        slot: usize,
    ) -> Result<&'s LayerChain, BuildError> {
        match inputs.get(slot) {
            Some(State::Layers(chain)) => Ok(chain),
            Some(State::Context { name, .. }) => Err(self.step_error(StepError::Unsupported(
                format!("the local context {name:?} cannot be used as a filesystem here"),
            ))),
            None => Err(self.step_error(StepError::Invalid(format!("input {slot} is missing")))),
        }
    }

    /// Turns `workspace`'s upperdir into the layer on top of `parent`.
    pub fn commit(&self, workspace: Workspace, parent: &LayerChain) -> Result<State, BuildError> {
        if self.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let (layer, hold): (ChainLayer, StoreLock) = workspace
            .commit(self.store, self.snapshots, &self.layer_options())
            .map_err(|e| self.step_error(e))?;
        self.hold(hold);
        Ok(State::Layers(parent.with(layer)))
    }
}

/// One kind of vertex.
pub trait Operation: Sync {
    /// Produces the vertex's result from its inputs' results.
    fn run(&self, cx: &OpContext<'_>, inputs: &[&State]) -> Result<State, BuildError>;
}

/// `FROM scratch`: the empty filesystem.
struct Scratch;

impl Operation for Scratch {
    fn run(&self, _cx: &OpContext<'_>, _inputs: &[&State]) -> Result<State, BuildError> {
        Ok(State::Layers(LayerChain::empty()))
    }
}

/// A local context: the request's directory (`context`) or one given with
/// `--build-context NAME=DIR`, read where it is.
impl Operation for ContextOp {
    fn run(&self, cx: &OpContext<'_>, _inputs: &[&State]) -> Result<State, BuildError> {
        let Some((dir, _)) = cx.request.local_context(&self.name) else {
            return Err(cx.step_error(StepError::Invalid(format!(
                "no local build context named {:?} was given (--build-context {}=DIR)",
                self.name, self.name
            ))));
        };
        let what = if self.name == "context" {
            format!("build context {}", dir.display())
        } else {
            format!("build context {:?} ({})", self.name, dir.display())
        };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(State::Context {
                name: self.name.clone(),
                dir: dir.to_path_buf(),
            }),
            Ok(_) => Err(cx.step_error(StepError::Invalid(format!("{what} is not a directory")))),
            Err(source) => Err(cx.step_error(StepError::Io {
                action: "read",
                what,
                source,
            })),
        }
    }
}

/// The implementation of `op`.
pub fn operation(op: &Op) -> &dyn Operation {
    match op {
        Op::Scratch => &Scratch,
        Op::Source(op) => op,
        Op::Context(op) => op,
        Op::Exec(op) => op.as_ref(),
        Op::Copy(op) => op.as_ref(),
        Op::Mkdir(op) => op,
    }
}
