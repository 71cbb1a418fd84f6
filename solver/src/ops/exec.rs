//! Exec op: one RUN step in the sandbox on an overlay of its parent's
//! snapshots; the upperdir becomes the step's layer.

use std::cell::RefCell;
use std::io::Read;

use frontend::graph::{ExecOp, NetworkMode as GraphNetwork, SecurityMode};

use super::{OpContext, Operation, State};
use crate::rootfs::Workspace;
use crate::sandbox::{
    LineSink, NetworkMode, RootFs, RunSpec, SandboxError, StepFile, StepIo, Termination, UserSpec,
    ensure_default_path,
};
use crate::solve::{BuildError, LogStream, ProgressEvent, StepError, Tail};

impl Operation for ExecOp {
    fn run(&self, cx: &OpContext<'_>, inputs: &[&State]) -> Result<State, BuildError> {
        let parent = cx.layers(inputs, 0)?;
        let network = network(self, cx).map_err(|e| cx.step_error(e))?;
        let privileged = self.security == SecurityMode::Insecure;
        if privileged && !cx.request.allow_security_insecure {
            return Err(cx.step_error(StepError::NotAllowed(
                "security.insecure is not allowed: enable it with --allow security.insecure".into(),
            )));
        }
        let user: UserSpec = match &self.user {
            Some(user) => user.parse().map_err(|e: crate::sandbox::InvalidUserSpec| {
                cx.step_error(StepError::Invalid(e.to_string()))
            })?,
            None => UserSpec::root(),
        };
        let mut env: Vec<String> = self.env.iter().map(|e| e.to_string()).collect();
        env.extend(self.proxy_env.iter().cloned());
        ensure_default_path(&mut env);

        // Held until the step has ended: locks, views, throwaway directories.
        let mounts = super::mounts::prepare(self, cx, inputs)?;
        // Secret variables and SSH_AUTH_SOCK win over the image's ENV.
        for entry in &mounts.env {
            let name = entry
                .split_once('=')
                .map_or(entry.as_str(), |(name, _)| name);
            env.retain(|e| e.split_once('=').is_none_or(|(n, _)| n != name));
        }
        env.extend(mounts.env.iter().cloned());

        let workspace = Workspace::new(cx.store, parent).map_err(|e| cx.step_error(e))?;
        let mut spec = RunSpec::new(
            RootFs {
                lowerdirs: parent.lowerdirs(),
                upperdir: workspace.upper().to_path_buf(),
                workdir: workspace.work().to_path_buf(),
            },
            self.args.clone(),
        );
        spec.env = env;
        spec.user = user;
        spec.cwd = self.cwd.clone();
        spec.hostname = hostname();
        spec.network = network;
        spec.extra_hosts = cx.request.extra_hosts.clone();
        spec.privileged = privileged;
        spec.mounts = mounts.mounts.clone();
        if let Some(size) = cx.request.shm_size {
            spec.shm_size = size;
        }
        spec.rlimits = cx.request.ulimits.clone();
        spec.files = self
            .files
            .iter()
            .map(|f| StepFile {
                path: f.path.clone(),
                mode: f.mode,
                content: f.content.clone().into_bytes(),
            })
            .collect();

        let tail = RefCell::new(Tail::default());
        let log = |stream: LogStream, line: &[u8]| {
            let line = String::from_utf8_lossy(line);
            tail.borrow_mut().push(&line);
            cx.progress.event(&ProgressEvent::Log {
                vertex: cx.vertex_id,
                stream,
                line: line.into_owned(),
            });
        };
        let mut stdout = LineSink::new(|line: &[u8]| log(LogStream::Stdout, line));
        let mut stderr = LineSink::new(|line: &[u8]| log(LogStream::Stderr, line));
        let outcome = cx
            .executor
            .run(&spec, StepIo::capture(&mut stdout, &mut stderr), cx.cancel);
        drop((stdout, stderr));
        drop(spec);
        drop(mounts);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(SandboxError::Cancelled) => return Err(BuildError::Cancelled),
            Err(err) => return Err(cx.step_error(StepError::Sandbox(err))),
        };
        if let Termination::NotExecutable {
            errno: nix::errno::Errno::ENOEXEC,
            ..
        } = &outcome.termination
            && let Some(message) = foreign_platform(cx)
        {
            return Err(cx.step_error(StepError::Invalid(message)));
        }
        if !outcome.termination.success() {
            let reason = match &outcome.termination {
                Termination::Exited(_) => None,
                other => Some(other.to_string()),
            };
            return Err(BuildError::StepFailed {
                vertex: cx.vertex_id,
                description: cx.vertex.description.clone(),
                position: cx.vertex.position,
                command: self.args.join(" "),
                exit_code: outcome.termination.exit_code(),
                reason,
                last_lines: tail.into_inner().into_lines(),
            });
        }
        cx.commit(workspace, parent)
    }
}

/// Why a step of another architecture could not run (its command was not
/// an executable of this machine): the build's platform is foreign and no
/// emulator is registered with binfmt_misc.
fn foreign_platform(cx: &OpContext<'_>) -> Option<String> {
    let platform = cx.request.options.platform.as_ref()?;
    if crate::sandbox::binfmt::can_run(
        &platform.architecture,
        std::path::Path::new(crate::sandbox::binfmt::BINFMT_MISC),
    ) {
        return None;
    }
    Some(format!(
        "cannot run {platform} steps: no emulator registered with binfmt_misc (install qemu-user-static)"
    ))
}

/// The sandbox network of the step: its own `--network`, else the build's.
fn network(op: &ExecOp, cx: &OpContext<'_>) -> Result<NetworkMode, StepError> {
    let mode = match op.network {
        GraphNetwork::Default => cx.request.network,
        mode => mode,
    };
    match mode {
        // The host's network is the default, as for BuildKit without CNI;
        // asking for it by name is an entitlement.
        GraphNetwork::Default => Ok(NetworkMode::Host),
        GraphNetwork::None => Ok(NetworkMode::None),
        GraphNetwork::Host if cx.request.network_allowed_host => Ok(NetworkMode::Host),
        GraphNetwork::Host => Err(StepError::NotAllowed(
            "network.host is not allowed: enable it with --allow network.host".into(),
        )),
    }
}

/// A fresh 12-hex-digit hostname per step, like a docker container id.
fn hostname() -> String {
    let mut bytes = [0u8; 6];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Unique enough without randomness: this process and the time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mixed = nanos ^ (u64::from(std::process::id()) << 40);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
