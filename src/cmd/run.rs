//! `builder run IMAGE [ARG...]`: run an image of the local store in the RUN
//! sandbox, as `docker run` would, to check what a build produced.
//!
//! The container is the image's layers (their snapshots) under a throwaway
//! upperdir, with the host's network unless `--network none`. Exit codes
//! follow docker: the container's own status, 128+N when it was killed by
//! signal N, 126 when the command cannot be invoked, 127 when it does not
//! exist, and 125 when builder itself fails.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use cache::images::{ConfigSummary, Image, ImageError, ImageStore};
use cache::registry::{self, PullPolicy};
use cache::snapshot::{LayerRef, Snapshots};
use cache::store::StoreLock;
use clap::Args;
use frontend::convert::ImageConfig;
use nix::sys::signal::{SigSet, Signal};
use solver::sandbox::{
    CancelHandle, Executor, LinuxExecutor, NetworkMode, RootFs, RunSpec, SandboxError, StepIo,
    Termination, UserSpec, ensure_default_path,
};

/// docker's exit code when the failure is builder's own, not the command's.
const EXIT_BUILDER_FAILED: u8 = 125;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Accepted for docker compatibility: nothing of a container is kept anyway.
    #[arg(long)]
    rm: bool,
    /// Keep STDIN open and pass it to the container (otherwise /dev/null).
    #[arg(short, long)]
    interactive: bool,
    /// Set an environment variable, `KEY=VALUE`, or `KEY` to pass the caller's value.
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Overwrite the image's ENTRYPOINT (this also drops the image's CMD).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Working directory inside the container (absolute).
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// User name or uid, with an optional group: `name|uid[:group|gid]`.
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Network: `host` or `default` (the host's network), or `none` (loopback only).
    #[arg(long, value_name = "MODE", default_value = "default")]
    network: String,
    /// Pull the image before running: `missing` (when it is not in the
    /// local store), `always` or `never`.
    #[arg(long, value_name = "POLICY", default_value = "missing")]
    pull: String,
    /// Pick this platform when pulling a multi-platform image.
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    #[command(flatten)]
    registry: super::pull::RegistryArgs,
    /// The image: a name, an image id (or a unique prefix) or a digest.
    image: String,
    /// Arguments: replace the image's CMD.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub(crate) fn run(root: &Path, args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before any thread exists, so that every thread inherits the mask and
    // only the forwarding thread ever receives these signals.
    let forward = Forwarder::install().context("cannot set up signal forwarding")?;
    match start(root, &args, &forward.cancel) {
        Ok(Termination::NotFound { command }) => {
            eprintln!("error: exec: {command:?}: executable file not found in $PATH");
            Ok(ExitCode::from(127))
        }
        Ok(Termination::NotExecutable { command, errno }) => {
            eprintln!("error: exec: {command:?}: {}", errno.desc().to_lowercase());
            Ok(ExitCode::from(126))
        }
        Ok(t) => Ok(ExitCode::from(exit_status(&t))),
        Err(err) => {
            if let Some(SandboxError::Cancelled) = err.downcast_ref::<SandboxError>() {
                // Killed on our request: the signal's conventional status.
                let signal = forward.last_signal().unwrap_or(Signal::SIGKILL);
                return Ok(ExitCode::from(128 + signal as u8));
            }
            eprintln!("error: {err:#}");
            Ok(ExitCode::from(EXIT_BUILDER_FAILED))
        }
    }
}

/// An exit status in the 0-255 range a shell sees.
fn exit_status(t: &Termination) -> u8 {
    (t.exit_code() & 0xff) as u8
}

fn start(root: &Path, args: &RunArgs, cancel: &CancelHandle) -> anyhow::Result<Termination> {
    let network = match args.network.as_str() {
        "default" | "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        other => {
            anyhow::bail!("network mode {other:?} is not supported (use default, host or none)")
        }
    };
    let env_flags = parse_env_flags(&args.env)?;
    let images = super::images::open(root)?;
    let image = find_or_pull(&images, args)?;
    let config: ImageConfig = serde_json::from_slice(&image.config)
        .with_context(|| format!("cannot read the config of image {}", image.id()))?;
    let argv = command_line(&config, args.entrypoint.as_deref(), &args.args)?;
    let cwd = match args.workdir.as_deref() {
        Some(dir) if !dir.starts_with('/') => {
            anyhow::bail!(
                "the working directory {dir:?} is invalid, it needs to be an absolute path"
            )
        }
        Some(dir) => dir.to_owned(),
        None if config.config.working_dir.is_empty() => "/".to_owned(),
        None => config.config.working_dir.clone(),
    };
    let user_text = args
        .user
        .clone()
        .or_else(|| config.config.user.clone())
        .unwrap_or_default();
    let user: UserSpec = user_text.parse()?;
    let mut env = merge_env(&config.config.env, env_flags);
    ensure_default_path(&mut env);

    let store = images.store().clone();
    let (lowerdirs, _holds) = layer_snapshots(&store, &image)?;
    let scratch = store
        .temp_dir("run-")
        .context("cannot create the container's writable layer")?;
    let upperdir = scratch.path().join("upper");
    let workdir = scratch.path().join("work");
    for dir in [&upperdir, &workdir] {
        std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let executor = LinuxExecutor::new(root.join("sandbox"))?;
    let mut spec = RunSpec::new(
        RootFs {
            lowerdirs,
            upperdir,
            workdir,
        },
        argv,
    );
    spec.env = env;
    spec.user = user;
    spec.cwd = cwd;
    spec.network = network;
    spec.hostname = hostname(&image);
    let mut io = StepIo::inherit();
    if !args.interactive {
        io.stdin = solver::sandbox::Input::Null;
    }
    let outcome = executor.run(&spec, io, cancel)?;
    // The upperdir goes with `scratch`; an error removing it is not the
    // container's business.
    drop(scratch);
    Ok(outcome.termination)
}

/// The image from the local store, pulled first as `--pull` says (docker
/// run's behaviour: an image that is not present is pulled).
fn find_or_pull(images: &ImageStore, args: &RunArgs) -> anyhow::Result<Image> {
    let policy = super::pull::policy(&args.pull)?;
    if policy != PullPolicy::Always {
        match images.resolve(&args.image) {
            Ok(image) => return Ok(image),
            Err(ImageError::NotFound(_)) if policy == PullPolicy::Missing => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "unable to find image {:?} in the local store",
                    args.image
                )));
            }
        }
    }
    let reference = registry::parse_reference(&args.image)?;
    let full = registry::full_name(&reference);
    if policy == PullPolicy::Missing {
        eprintln!("Unable to find image '{}' locally", args.image);
    }
    let client = args.registry.client(args.platform.as_deref())?;
    let started = std::time::Instant::now();
    // As for `builder pull`: no prune between skipping a present blob and
    // naming the image.
    let gc = images.store().lock_shared(cache::gc::GC_LOCK)?;
    let pulled = registry::ensure_image(&client, images, &reference, policy)
        .with_context(|| format!("cannot pull {}", args.image))?;
    drop(gc);
    super::pull::report(&pulled, &full, started, true);
    Ok(pulled.image)
}

/// `-e` values: `K=V`, or `K` alone taking the caller's value (and nothing
/// when the caller has none, as docker does).
fn parse_env_flags(raw: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in raw {
        match entry.split_once('=') {
            Some(("", _)) => anyhow::bail!("invalid environment variable {entry:?}: empty name"),
            Some(_) => out.push(entry.clone()),
            None if entry.is_empty() => anyhow::bail!("invalid environment variable: empty name"),
            None => {
                if let Some(value) = std::env::var_os(entry) {
                    let value = value.into_string().map_err(|_| {
                        anyhow::anyhow!("environment variable {entry} is not UTF-8")
                    })?;
                    out.push(format!("{entry}={value}"));
                }
            }
        }
    }
    Ok(out)
}

/// The image's environment with `overrides` replacing entries of the same
/// name in place, as docker merges `-e` into the image's Env.
fn merge_env(image: &[String], overrides: Vec<String>) -> Vec<String> {
    let key = |entry: &str| entry.split_once('=').map_or(entry, |(k, _)| k).to_owned();
    let mut env = image.to_vec();
    for entry in overrides {
        let name = key(&entry);
        match env.iter_mut().find(|e| key(e) == name) {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    env
}

/// ENTRYPOINT and CMD combined as docker does: arguments replace CMD, and
/// `--entrypoint` replaces ENTRYPOINT and drops the image's CMD (an empty
/// `--entrypoint ""` leaves only the arguments).
fn command_line(
    config: &ImageConfig,
    entrypoint: Option<&str>,
    args: &[String],
) -> anyhow::Result<Vec<String>> {
    let (entry, cmd): (Vec<String>, Vec<String>) = match entrypoint {
        Some("") => (Vec::new(), args.to_vec()),
        Some(e) => (vec![e.to_owned()], args.to_vec()),
        None => {
            let entry = config.config.entrypoint.clone().unwrap_or_default();
            let cmd = if args.is_empty() {
                config.config.cmd.clone().unwrap_or_default()
            } else {
                args.to_vec()
            };
            (entry, cmd)
        }
    };
    let argv: Vec<String> = entry.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        anyhow::bail!(
            "no command specified: the image has no ENTRYPOINT or CMD and none was given"
        );
    }
    Ok(argv)
}

/// The snapshot of every layer, base first, each held against removal while
/// the container runs.
fn layer_snapshots(
    store: &cache::store::Store,
    image: &Image,
) -> anyhow::Result<(Vec<std::path::PathBuf>, Vec<StoreLock>)> {
    let summary = ConfigSummary::parse(&image.config)
        .with_context(|| format!("cannot read the config of image {}", image.id()))?;
    let diff_ids = summary
        .diff_ids()
        .with_context(|| format!("invalid diff_ids in the config of image {}", image.id()))?;
    let layers = image.layers();
    if diff_ids.len() != layers.len() {
        anyhow::bail!(
            "image {} is inconsistent: {} layers in its manifest, {} diff_ids in its config",
            image.id(),
            layers.len(),
            diff_ids.len()
        );
    }
    let snapshots = Snapshots::new(store);
    let mut dirs = Vec::with_capacity(layers.len());
    let mut holds = Vec::with_capacity(layers.len());
    for (blob, diff_id) in layers.iter().zip(diff_ids) {
        let layer = LayerRef {
            digest: blob.digest,
            diff_id,
        };
        // `ensure` takes the snapshot's lock exclusively, so the hold can
        // only come after it; a removal in between is caught by looking again.
        loop {
            let dir = snapshots.ensure(&layer)?;
            let hold = snapshots.hold(&diff_id)?;
            if snapshots.exists(&diff_id) {
                dirs.push(dir);
                holds.push(hold);
                break;
            }
        }
    }
    Ok((dirs, holds))
}

/// docker names a container's host after the first 12 hex digits of its id;
/// builder has no container ids, so the image id stands in.
fn hostname(image: &Image) -> String {
    image.id().hex()[..12].to_owned()
}

/// Receives SIGINT, SIGTERM, SIGHUP and SIGQUIT on a thread of its own and
/// forwards them to the running container; before the container has
/// started (or after it ended) such a signal ends builder itself.
pub(crate) struct Forwarder {
    pub(crate) cancel: CancelHandle,
    last: Arc<std::sync::Mutex<Option<Signal>>>,
}

/// The signals `run` forwards and `build` turns into a cancellation.
pub(crate) fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set
}

impl Forwarder {
    fn install() -> anyhow::Result<Forwarder> {
        let set = handled_signals();
        set.thread_block()?;
        let cancel = CancelHandle::new();
        let last = Arc::new(std::sync::Mutex::new(None));
        let (thread_cancel, thread_last) = (cancel.clone(), Arc::clone(&last));
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                loop {
                    let Ok(signal) = set.wait() else { continue };
                    *thread_last.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal);
                    if !thread_cancel.signal(signal) {
                        // No container to hand it to: stop whatever is being
                        // prepared and leave with the signal's status.
                        thread_cancel.cancel();
                        std::process::exit(128 + signal as i32);
                    }
                }
            })?;
        Ok(Forwarder { cancel, last })
    }

    fn last_signal(&self) -> Option<Signal> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use solver::sandbox::env_get;

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let mut c = ImageConfig::default();
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        c.config.entrypoint = entrypoint.map(own);
        c.config.cmd = cmd.map(own);
        c
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_replace_cmd_and_keep_the_entrypoint() {
        let c = config(Some(&["/bin/echo"]), Some(&["Hello, World!"]));
        assert_eq!(
            command_line(&c, None, &[]).unwrap(),
            strings(&["/bin/echo", "Hello, World!"])
        );
        assert_eq!(
            command_line(&c, None, &strings(&["Pavlos"])).unwrap(),
            strings(&["/bin/echo", "Pavlos"])
        );
    }

    #[test]
    fn entrypoint_flag_drops_the_image_cmd() {
        let c = config(Some(&["/bin/echo"]), Some(&["hi"]));
        assert_eq!(
            command_line(&c, Some("/bin/ls"), &[]).unwrap(),
            strings(&["/bin/ls"])
        );
        assert_eq!(
            command_line(&c, Some("/bin/ls"), &strings(&["-l"])).unwrap(),
            strings(&["/bin/ls", "-l"])
        );
        assert_eq!(
            command_line(&c, Some(""), &strings(&["/bin/true"])).unwrap(),
            strings(&["/bin/true"])
        );
        assert!(command_line(&c, Some(""), &[]).is_err());
    }

    #[test]
    fn cmd_alone_and_nothing_at_all() {
        let c = config(None, Some(&["sh", "-c", "exit 3"]));
        assert_eq!(
            command_line(&c, None, &[]).unwrap(),
            strings(&["sh", "-c", "exit 3"])
        );
        let err = command_line(&config(None, None), None, &[]).unwrap_err();
        assert!(err.to_string().contains("no command specified"), "{err}");
    }

    #[test]
    fn env_flags_take_values_from_the_caller() {
        // PATH is set in any test environment.
        let path = std::env::var("PATH").unwrap();
        let out = parse_env_flags(&strings(&[
            "A=1",
            "B=",
            "PATH",
            "BUILDER_SURELY_UNSET_VARIABLE",
        ]))
        .unwrap();
        assert_eq!(
            out,
            vec!["A=1".to_string(), "B=".into(), format!("PATH={path}")]
        );
        assert!(parse_env_flags(&strings(&["=x"])).is_err());
        assert_eq!(env_get(&out, "A"), Some("1"));
    }

    #[test]
    fn env_flags_replace_image_entries_in_place() {
        let merged = merge_env(
            &strings(&["PATH=/bin", "A=image", "B=image"]),
            strings(&["B=flag", "C=new", "PATH=/usr/bin"]),
        );
        assert_eq!(
            merged,
            strings(&["PATH=/usr/bin", "A=image", "B=flag", "C=new"])
        );
    }
}
