//! Sources of `RUN --mount`s: what each mount of an [`ExecOp`] shows the
//! step, prepared before it runs and released when it has ended.
//!
//! - `type=cache`: a directory `ROOT/mounts/<sha256 of id>/` that outlives
//!   the build, created on first use with the mount's mode and owner (and
//!   seeded from `from=`/`source=`). `sharing=shared` holds the shared lock
//!   `mount-<hex>` for the step, `locked` the exclusive one (steps using it
//!   run one after the other, also across builds), `private` the exclusive
//!   one if it is free and otherwise a fresh directory thrown away after
//!   the step. Its contents never enter a layer or a cache key.
//! - `type=bind`: a path of the build context or of a stage, resolved
//!   inside it (links cannot lead out). What `.dockerignore` excludes below
//!   a context path is hidden by an overlay layer of whiteouts on top of it,
//!   so nothing is copied. Read-only unless `rw`, whose writes go to a
//!   throwaway overlay upper.
//! - `type=tmpfs`: a fresh tmpfs.
//! - `type=secret`: the value of `--secret id=ID` read now, as a file on
//!   the step's private tmpfs and/or an environment variable. It is never
//!   written to disk, logged or put in an error message.
//! - `type=ssh`: a socket with the mount's mode and owner forwarding to the
//!   agent of `--ssh ID` (see `agent.rs`), `SSH_AUTH_SOCK` pointing at the
//!   first one.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache::Digest;
use cache::store::StoreLock;
use frontend::dockerignore::PatternMatcher;
use frontend::graph::{CacheSharing, ExecMount, ExecMountKind, ExecOp};
use nix::sys::stat::{Mode, SFlag, mknod};

mod agent;

use agent::AgentProxy;

use super::{OpContext, State};
use crate::rootfs::LayerChain;
use crate::sandbox::{MountSource, StepMount, overlay_view, resolve_in_root};
use crate::solve::{BuildError, SecretSource, StepError};

/// The mounts of one step and everything that must live while it runs.
#[derive(Default)]
pub(super) struct StepMounts {
    pub(super) mounts: Vec<StepMount>,
    /// Secret variables and `SSH_AUTH_SOCK`, appended to the step's env.
    pub(super) env: Vec<String>,
    _locks: Vec<StoreLock>,
    _agents: Vec<AgentProxy>,
    _temps: Vec<tempfile::TempDir>,
}

/// Prepares the mounts of `op`; `inputs` are the step's inputs in slot
/// order.
pub(super) fn prepare(
    op: &ExecOp,
    cx: &OpContext<'_>,
    inputs: &[&State],
) -> Result<StepMounts, BuildError> {
    let mut out = StepMounts::default();
    let busy = lock_caches(op, cx, &mut out)?;
    let mut ssh_sock = None;
    for mount in &op.mounts {
        prepare_one(mount, cx, inputs, &busy, &mut out, &mut ssh_sock)
            .map_err(|e| cx.step_error(e))?;
    }
    if let Some(sock) = ssh_sock {
        out.env.push(format!("SSH_AUTH_SOCK={sock}"));
    }
    Ok(out)
}

/// Takes the locks of every cache mount of `op` at once, in one order
/// (by directory name) so that steps using several caches cannot deadlock,
/// and once per directory even if the step mounts it twice. Waiting gives
/// up when the build is cancelled. Returns the directories that are busy
/// for `sharing=private` mounts, which get a fresh directory instead.
fn lock_caches(
    op: &ExecOp,
    cx: &OpContext<'_>,
    out: &mut StepMounts,
) -> Result<HashSet<String>, BuildError> {
    let strength = |s: CacheSharing| match s {
        CacheSharing::Private => 0,
        CacheSharing::Shared => 1,
        CacheSharing::Locked => 2,
    };
    let mut wanted: BTreeMap<String, CacheSharing> = BTreeMap::new();
    for mount in &op.mounts {
        if let ExecMountKind::Cache { id, sharing, .. } = &mount.kind {
            let entry = wanted.entry(cache_hex(id)).or_insert(*sharing);
            if strength(*sharing) > strength(*entry) {
                *entry = *sharing;
            }
        }
    }
    let mut busy = HashSet::new();
    for (hex, sharing) in wanted {
        let name = format!("mount-{hex}");
        let try_lock = |exclusive: bool| {
            if exclusive {
                cx.store.try_lock_exclusive(&name)
            } else {
                cx.store.try_lock_shared(&name)
            }
            .map_err(|e| cx.step_error(store(e)))
        };
        let lock = match sharing {
            CacheSharing::Private => try_lock(true)?,
            CacheSharing::Shared | CacheSharing::Locked => loop {
                if let Some(lock) = try_lock(sharing == CacheSharing::Locked)? {
                    break Some(lock);
                }
                if cx.cancel.is_cancelled() {
                    return Err(BuildError::Cancelled);
                }
                std::thread::sleep(LOCK_POLL);
            },
        };
        match lock {
            Some(lock) => out._locks.push(lock),
            None => {
                busy.insert(hex);
            }
        }
    }
    Ok(busy)
}

/// How often a step waiting for a cache mount's lock checks it again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The name of the directory (and lock) of cache mount `id`.
fn cache_hex(id: &str) -> String {
    Digest::of(id.as_bytes()).hex()
}

fn io_error(action: &'static str, what: impl Into<String>) -> impl FnOnce(io::Error) -> StepError {
    let what = what.into();
    move |source| StepError::Io {
        action,
        what,
        source,
    }
}

fn prepare_one(
    mount: &ExecMount,
    cx: &OpContext<'_>,
    inputs: &[&State],
    busy: &HashSet<String>,
    out: &mut StepMounts,
    ssh_sock: &mut Option<String>,
) -> Result<(), StepError> {
    let target = mount.target.clone();
    match &mount.kind {
        ExecMountKind::Bind => {
            let slot = mount.input.ok_or_else(|| {
                StepError::Invalid(format!("bind mount on {target} has no source"))
            })?;
            let state = inputs
                .get(slot)
                .ok_or_else(|| StepError::Invalid(format!("input {slot} is missing")))?;
            let source = mount.source.as_deref().unwrap_or("/");
            let (source, readonly) = bind_source(cx, state, source, !mount.readonly, out)?;
            out.mounts.push(StepMount {
                target,
                source,
                readonly,
            });
        }
        ExecMountKind::Cache {
            id, mode, uid, gid, ..
        } => {
            let seed = match mount.input {
                Some(slot) => Some((
                    *inputs
                        .get(slot)
                        .ok_or_else(|| StepError::Invalid(format!("input {slot} is missing")))?,
                    mount.source.as_deref().unwrap_or("/"),
                )),
                None => None,
            };
            let attrs = (mode.unwrap_or(0o755), uid.unwrap_or(0), gid.unwrap_or(0));
            let dir = cache_dir(cx, id, busy, attrs, seed, out)?;
            out.mounts.push(StepMount {
                target,
                source: MountSource::Host(dir),
                readonly: mount.readonly,
            });
        }
        ExecMountKind::Tmpfs { size } => out.mounts.push(StepMount {
            target,
            source: MountSource::Tmpfs { size: *size },
            readonly: mount.readonly,
        }),
        ExecMountKind::Secret {
            id,
            required,
            env,
            mode,
            uid,
            gid,
        } => {
            let Some(value) = read_secret(cx, id, *required)? else {
                return Ok(());
            };
            if let Some(name) = env {
                let text = String::from_utf8(value.clone())
                    .ok()
                    .filter(|t| !t.contains('\0'))
                    .ok_or_else(|| {
                        StepError::Invalid(format!(
                            "secret {id:?} cannot be the environment variable {name}: \
                             it is not text without NUL bytes"
                        ))
                    })?;
                out.env.push(format!("{name}={text}"));
            }
            if !target.is_empty() {
                out.mounts.push(StepMount {
                    target,
                    source: MountSource::File {
                        content: value,
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    },
                    readonly: true,
                });
            }
        }
        ExecMountKind::Ssh {
            id,
            required,
            mode,
            uid,
            gid,
        } => {
            let Some(spec) = cx.request.ssh.iter().find(|s| &s.id == id) else {
                if *required {
                    return Err(StepError::Invalid(format!(
                        "SSH agent {id:?} is required but was not given: pass it with --ssh {id}[=SOCKET]"
                    )));
                }
                return Ok(());
            };
            if ssh_sock.is_none() {
                *ssh_sock = Some(target.clone());
            }
            let dir = cx.store.temp_dir("ssh-").map_err(store)?;
            let proxy =
                AgentProxy::start(dir, &spec.socket, *mode, *uid, *gid).map_err(io_error(
                    "forward",
                    format!("SSH agent {id:?} ({})", spec.socket.display()),
                ))?;
            out.mounts.push(StepMount {
                target,
                source: MountSource::Host(proxy.socket().to_path_buf()),
                readonly: false,
            });
            out._agents.push(proxy);
        }
    }
    Ok(())
}

/// The value of secret `id`, read now; `None` when it is missing and not
/// required. Errors name the secret and where it should come from, never
/// its value.
fn read_secret(cx: &OpContext<'_>, id: &str, required: bool) -> Result<Option<Vec<u8>>, StepError> {
    let missing = |why: String| {
        if required {
            Err(StepError::Invalid(why))
        } else {
            Ok(None)
        }
    };
    let Some(spec) = cx.request.secrets.iter().find(|s| s.id == id) else {
        return missing(format!(
            "secret {id:?} is required but was not given: pass it with --secret id={id},src=PATH \
             (or env=VARIABLE)"
        ));
    };
    match &spec.source {
        SecretSource::File(path) => match fs::read(path) {
            Ok(value) => Ok(Some(value)),
            Err(source) => Err(StepError::Io {
                action: "read",
                what: format!("secret {id:?} from {}", path.display()),
                source,
            }),
        },
        SecretSource::Env(var) => match std::env::var_os(var) {
            Some(value) => Ok(Some(std::os::unix::ffi::OsStringExt::into_vec(value))),
            None => missing(format!(
                "secret {id:?} is required but the environment variable {var} is not set"
            )),
        },
    }
}

/// A bind mount's source `path` inside `state`, resolved there; `rw` makes
/// a writable view whose writes are thrown away. Returns the source and
/// whether the mount is read-only.
fn bind_source(
    cx: &OpContext<'_>,
    state: &State,
    path: &str,
    rw: bool,
    out: &mut StepMounts,
) -> Result<(MountSource, bool), StepError> {
    match state {
        State::Context { dir, name } => {
            let (host, rel, is_dir) = resolve_host(dir, path, &format!("build context {name:?}"))?;
            // Layers of the view, base first: the source, then a mask whose
            // whiteouts hide what .dockerignore excludes (no copy).
            let mut layers = vec![host.clone()];
            if let Some((_, Some(ignore))) = cx.request.local_context(name) {
                if ignore.matches(&rel) {
                    return Err(StepError::Invalid(format!(
                        "bind source {path} is excluded by .dockerignore"
                    )));
                }
                if is_dir {
                    let temp = cx.store.temp_dir("bind-mask-").map_err(store)?;
                    let mask = temp.path().join("mask");
                    let masked = fs::create_dir(&mask)
                        .and_then(|()| mask_excluded(ignore, &host, &rel, &mask))
                        .and_then(|any| copy_dir_attrs(&host, &mask).map(|()| any))
                        .map_err(io_error("filter", format!("{path} of the build context")))?;
                    if masked {
                        layers.push(mask);
                        out._temps.push(temp);
                    }
                }
            }
            if !rw {
                if layers.len() == 1 {
                    return Ok((MountSource::Host(host), true));
                }
                let view = overlay_view(&layers, None).map_err(StepError::Sandbox)?;
                let source = MountSource::Detached {
                    mount: Arc::new(view),
                    subpath: String::new(),
                };
                return Ok((source, true));
            }
            let temp = cx.store.temp_dir("bind-rw-").map_err(store)?;
            let source = if is_dir {
                let (upper, work) = (temp.path().join("upper"), temp.path().join("work"));
                for d in [&upper, &work] {
                    fs::create_dir(d).map_err(io_error("create", d.display().to_string()))?;
                }
                let view =
                    overlay_view(&layers, Some((&upper, &work))).map_err(StepError::Sandbox)?;
                MountSource::Detached {
                    mount: Arc::new(view),
                    subpath: String::new(),
                }
            } else {
                let copy = temp.path().join("file");
                fs::copy(&host, &copy).map_err(io_error("copy", path.to_owned()))?;
                MountSource::Host(copy)
            };
            out._temps.push(temp);
            Ok((source, false))
        }
        State::Layers(chain) => {
            if rw {
                let temp = cx.store.temp_dir("bind-rw-").map_err(store)?;
                let (upper, work) = (temp.path().join("upper"), temp.path().join("work"));
                for d in [&upper, &work] {
                    fs::create_dir(d).map_err(io_error("create", d.display().to_string()))?;
                }
                let source = if chain.is_empty() {
                    if !path.trim_matches('/').is_empty() {
                        return Err(not_found(path, "the stage"));
                    }
                    MountSource::Host(upper)
                } else {
                    let view = overlay_view(&chain.lowerdirs(), Some((&upper, &work)))
                        .map_err(StepError::Sandbox)?;
                    let subpath = resolve_view(view.path().as_path(), path)?;
                    MountSource::Detached {
                        mount: Arc::new(view),
                        subpath,
                    }
                };
                out._temps.push(temp);
                return Ok((source, false));
            }
            let source = stage_source(cx, chain, path, out)?;
            Ok((source, true))
        }
    }
}

/// A read-only source for `path` inside `chain`.
fn stage_source(
    cx: &OpContext<'_>,
    chain: &LayerChain,
    path: &str,
    out: &mut StepMounts,
) -> Result<MountSource, StepError> {
    if chain.is_empty() {
        if !path.trim_matches('/').is_empty() {
            return Err(not_found(path, "the stage"));
        }
        let temp = cx.store.temp_dir("bind-empty-").map_err(store)?;
        let empty = temp.path().join("empty");
        fs::create_dir(&empty)
            .and_then(|()| fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)))
            .map_err(io_error("create", empty.display().to_string()))?;
        out._temps.push(temp);
        return Ok(MountSource::Host(empty));
    }
    let mount = overlay_view(&chain.lowerdirs(), None).map_err(StepError::Sandbox)?;
    let subpath = resolve_view(&mount.path(), path)?;
    Ok(MountSource::Detached {
        mount: Arc::new(mount),
        subpath,
    })
}

fn store(err: cache::store::StoreError) -> StepError {
    StepError::Layer(crate::rootfs::LayerError::Store(err))
}

fn not_found(path: &str, what: &str) -> StepError {
    StepError::Invalid(format!("mount source {path} not found in {what}"))
}

/// `path` resolved inside the tree at `root`, as a relative path without
/// links; it must exist.
fn resolve_view(root: &Path, path: &str) -> Result<String, StepError> {
    let dir = fs::File::open(root).map_err(io_error("open", "mount source"))?;
    let resolved = resolve_in_root(std::os::fd::AsFd::as_fd(&dir), path)
        .map_err(|e| StepError::Invalid(format!("mount source {path}: {e}")))?;
    if !resolved.exists() {
        return Err(not_found(path, "the stage"));
    }
    Ok(resolved.components.join("/"))
}

/// `path` inside the host directory `dir`: its host path, its path
/// relative to `dir` and whether it is a directory.
fn resolve_host(dir: &Path, path: &str, what: &str) -> Result<(PathBuf, String, bool), StepError> {
    let root = fs::File::open(dir).map_err(io_error("open", what.to_owned()))?;
    let resolved = resolve_in_root(std::os::fd::AsFd::as_fd(&root), path)
        .map_err(|e| StepError::Invalid(format!("mount source {path}: {e}")))?;
    let Some(is_dir) = resolved.target else {
        return Err(not_found(path, what));
    };
    let rel = resolved.components.join("/");
    Ok((dir.join(&rel), rel, is_dir))
}

/// Fills `mask` (an existing directory) with a whiteout for every entry
/// below `src` (at `rel` in the context) that `.dockerignore` excludes, and
/// the directories leading to them; returns whether there was any. An
/// excluded directory that an exception may re-include from is walked
/// instead of hidden, as the context is sent by BuildKit.
fn mask_excluded(ignore: &PatternMatcher, src: &Path, rel: &str, mask: &Path) -> io::Result<bool> {
    let mut any = false;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        let child = join_rel(rel, &name.to_string_lossy());
        let is_dir = entry.file_type()?.is_dir();
        let excluded = ignore.matches(&child);
        if excluded && !(is_dir && ignore.dir_may_contain_included(&child)) {
            mknod(&mask.join(&name), SFlag::S_IFCHR, Mode::empty(), 0)?;
            any = true;
        } else if is_dir {
            let sub = mask.join(&name);
            fs::create_dir(&sub)?;
            if mask_excluded(ignore, &entry.path(), &child, &sub)? {
                copy_dir_attrs(&entry.path(), &sub)?;
                any = true;
            } else {
                fs::remove_dir(&sub)?;
            }
        }
    }
    Ok(any)
}

/// Gives `dst` the mode, owner and mtime of `src`: the top-most directory
/// of an overlay decides how a merged directory looks.
fn copy_dir_attrs(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::metadata(src)?;
    set_attrs(dst, meta.mode(), meta.uid(), meta.gid())?;
    fs::File::open(dst)?.set_modified(meta.modified()?)
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// Copies the tree `src` to `dst` (which must not exist) with modes and
/// owners; devices, fifos and sockets are left out.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    fs::create_dir(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = fs::symlink_metadata(&from)?;
        if meta.is_dir() {
            copy_tree(&from, &to)?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()))?;
        } else if meta.is_file() {
            fs::copy(&from, &to)?;
            set_attrs(&to, meta.mode(), meta.uid(), meta.gid())?;
        }
    }
    set_attrs(dst, meta.mode(), meta.uid(), meta.gid())
}

/// The cache mount directory for `id`, created (and seeded) on first use;
/// its lock is already held, unless it is `busy` (private and in use).
fn cache_dir(
    cx: &OpContext<'_>,
    id: &str,
    busy: &HashSet<String>,
    (mode, uid, gid): (u32, u32, u32),
    seed: Option<(&State, &str)>,
    out: &mut StepMounts,
) -> Result<PathBuf, StepError> {
    let hex = cache_hex(id);
    if busy.contains(&hex) {
        // This step gets a directory of its own, thrown away afterwards.
        let temp = cx.store.temp_dir("cache-private-").map_err(store)?;
        let fresh = temp.path().join("dir");
        new_cache_dir(cx, &fresh, (mode, uid, gid), seed, out)?;
        out._temps.push(temp);
        return Ok(fresh);
    }
    let mounts = cx.store.root().join("mounts");
    fs::create_dir_all(&mounts).map_err(io_error("create", mounts.display().to_string()))?;
    let dir = mounts.join(&hex);
    if !dir.is_dir() {
        let temp = cx.store.temp_dir("cache-new-").map_err(store)?;
        let fresh = temp.path().join("dir");
        new_cache_dir(cx, &fresh, (mode, uid, gid), seed, out)?;
        // Another step sharing it may have created it meanwhile; that one
        // wins.
        if let Err(err) = fs::rename(&fresh, &dir) {
            if !dir.is_dir() {
                return Err(io_error("create", format!("cache mount {}", dir.display()))(err));
            }
        }
    }
    // Marks it used for `builder prune`, which goes by the newest mtime.
    let _ = fs::File::open(&dir).and_then(|d| d.set_modified(std::time::SystemTime::now()));
    Ok(dir)
}

fn new_cache_dir(
    cx: &OpContext<'_>,
    dir: &Path,
    (mode, uid, gid): (u32, u32, u32),
    seed: Option<(&State, &str)>,
    out: &mut StepMounts,
) -> Result<(), StepError> {
    let error = || io_error("create", format!("cache mount {}", dir.display()));
    match seed {
        Some((state, path)) => {
            let source = match bind_source(cx, state, path, false, out)? {
                (MountSource::Host(host), _) => host,
                (MountSource::Detached { mount, subpath }, _) => {
                    let host = mount.path().join(&subpath);
                    copy_tree(&host, dir).map_err(error())?;
                    drop(mount);
                    set_attrs(dir, mode, uid, gid).map_err(error())?;
                    return Ok(());
                }
                _ => unreachable!("bind sources are host paths or views"),
            };
            if source.is_dir() {
                copy_tree(&source, dir).map_err(error())?;
            } else {
                return Err(StepError::Invalid(format!(
                    "cache mount source {path} is not a directory"
                )));
            }
        }
        None => fs::create_dir(dir).map_err(error())?,
    }
    set_attrs(dir, mode, uid, gid).map_err(error())
}

fn set_attrs(dir: &Path, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7777))
}
