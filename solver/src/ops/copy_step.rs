//! The solver's side of COPY and ADD: the views the copy reads and writes,
//! and the layer it leaves. What is copied, and how, is [`super::copy`]'s.
//!
//! The target is a writable overlay of the parent (its upperdir becomes the
//! layer), or with `--link` an empty directory that becomes the layer on
//! its own, with names for `--chown` still resolved in the parent. Sources
//! are the context directory in place, or a read-only view of another
//! stage or image.

use frontend::graph::CopyOp;

use super::copy::{CopyContext, CopyError, apply_copy};
use super::{OpContext, Operation, State};
use crate::rootfs::{View, Workspace};
use crate::solve::BuildError;

impl Operation for CopyOp {
    fn run(&self, cx: &OpContext<'_>, inputs: &[&State]) -> Result<State, BuildError> {
        let parent = cx.layers(inputs, 0)?;
        let workspace = Workspace::new(cx.store, parent).map_err(|e| cx.step_error(e))?;
        {
            // Views live in this block: the upperdir is only read for the
            // layer once every mount of it is gone.
            let (dest, lookup) = if self.link {
                let lookup = workspace
                    .read_only_view(parent)
                    .map_err(|e| cx.step_error(e))?;
                (View::Dir(workspace.upper().to_path_buf()), Some(lookup))
            } else {
                let dest = workspace
                    .writable_view(parent)
                    .map_err(|e| cx.step_error(e))?;
                (dest, None)
            };
            let source = match inputs.get(1) {
                None => None,
                Some(State::Context { dir, .. }) => Some((View::Dir(dir.clone()), true)),
                Some(State::Layers(chain)) => Some((
                    workspace
                        .read_only_view(chain)
                        .map_err(|e| cx.step_error(e))?,
                    false,
                )),
            };
            let dest_root = dest.path();
            let lookup_root = lookup
                .as_ref()
                .map_or_else(|| dest_root.clone(), View::path);
            let src_root = source.as_ref().map(|(view, _)| view.path());
            let src_is_context = matches!(source, Some((_, true)));
            let src_ignore = match inputs.get(1) {
                Some(State::Context { name, .. }) => cx
                    .request
                    .local_context(name)
                    .and_then(|(_, ignore)| ignore),
                _ => None,
            };
            let copy = CopyContext {
                dest_root: &dest_root,
                lookup_root: &lookup_root,
                src_root: src_root.as_deref(),
                src_is_context,
                src_ignore,
                cwd: "/",
                source_date_epoch: cx.request.source_date_epoch,
                cancel: cx.cancel,
                downloads: cx.downloads,
            };
            apply_copy(self, &copy).map_err(|source| copy_error(cx, source))?;
        }
        cx.commit(workspace, parent)
    }
}

fn copy_error(cx: &OpContext<'_>, source: CopyError) -> BuildError {
    if cx.cancel.is_cancelled() {
        return BuildError::Cancelled;
    }
    BuildError::Copy {
        vertex: cx.vertex_id,
        description: cx.vertex.description.clone(),
        position: cx.vertex.position,
        source,
    }
}
