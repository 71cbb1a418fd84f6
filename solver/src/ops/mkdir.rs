//! Mkdir op (WORKDIR): the directory and its missing parents, owned by the
//! stage's USER, in a layer of their own.
//!
//! Like BuildKit, WORKDIR always leaves a layer, an empty one when the
//! directory already exists.

use std::os::fd::AsFd;

use frontend::graph::MkdirOp;

use super::{OpContext, Operation, State};
use crate::rootfs::Workspace;
use crate::sandbox::{UserError, UserSpec, ensure_dir_in_root, read_file_in_root, resolve_user};
use crate::solve::{BuildError, StepError};

impl Operation for MkdirOp {
    fn run(&self, cx: &OpContext<'_>, inputs: &[&State]) -> Result<State, BuildError> {
        let parent = cx.layers(inputs, 0)?;
        if !self.path.starts_with('/') {
            return Err(cx.step_error(StepError::Invalid(format!(
                "working directory {:?} is not absolute",
                self.path
            ))));
        }
        if self.mode != 0o755 {
            // The compiler only ever asks for docker's 0755, which is all
            // the shared helper creates.
            return Err(cx.step_error(StepError::Unsupported(format!(
                "directory mode {:o} for WORKDIR",
                self.mode
            ))));
        }
        let workspace = Workspace::new(cx.store, parent).map_err(|e| cx.step_error(e))?;
        {
            let view = workspace
                .writable_view(parent)
                .map_err(|e| cx.step_error(e))?;
            let root = view.open_root().map_err(|source| {
                cx.step_error(StepError::Io {
                    action: "open",
                    what: "the stage's root directory".into(),
                    source,
                })
            })?;
            let (uid, gid) = match &self.user {
                None => (0, 0),
                Some(user) => {
                    let spec: UserSpec =
                        user.parse().map_err(|e: crate::sandbox::InvalidUserSpec| {
                            cx.step_error(StepError::Invalid(e.to_string()))
                        })?;
                    let read = |path: &'static str| {
                        read_file_in_root(root.as_fd(), path)
                            .map_err(|source| UserError::Read { path, source })
                    };
                    let resolved = read("/etc/passwd")
                        .and_then(|passwd| Ok((passwd, read("/etc/group")?)))
                        .and_then(|(passwd, group)| {
                            resolve_user(&spec, passwd.as_deref(), group.as_deref())
                        })
                        .map_err(|e| cx.step_error(StepError::Sandbox(e.into())))?;
                    (resolved.uid, resolved.gid)
                }
            };
            ensure_dir_in_root(root.as_fd(), &self.path, uid, gid).map_err(|source| {
                cx.step_error(StepError::Io {
                    action: "create",
                    what: format!("working directory {}", self.path),
                    source,
                })
            })?;
        }
        cx.commit(workspace, parent)
    }
}
