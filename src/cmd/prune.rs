//! `builder prune`: remove build cache, as `docker buildx prune` does; and
//! the automatic size cap that `builder build` applies after each build.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use cache::gc::{
    self, AutoPrune, Category, ItemKind, PruneOptions, PruneReport, Trash, human_size,
};
use cache::store::Store;
use clap::Args;

use super::du::{ago, print_table, short_id};
use super::progress::Renderer;

#[derive(Args, Debug)]
pub(crate) struct PruneArgs {
    /// Remove all build cache: also cache mounts, context caches and the
    /// snapshots of image layers (images themselves are kept).
    #[arg(short, long)]
    all: bool,
    /// Remove least recently used cache only until the build cache is at
    /// most this big (512MB, 1.5GB, 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    keep_storage: Option<u64>,
    /// Filter: `until=DURATION` keeps what was used within that long
    /// (30m, 24h, 7d, 1h30m).
    #[arg(long, value_name = "FILTER", value_parser = parse_filter)]
    filter: Vec<Duration>,
    /// Do not prompt for confirmation (builder never prompts; accepted for
    /// docker compatibility).
    #[arg(short, long)]
    force: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    gc::parse_size(s).map_err(|e| e.to_string())
}

/// `until=DUR` (BuildKit also calls it `unused-for`).
fn parse_filter(s: &str) -> Result<Duration, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid filter {s:?}: expected until=DURATION"))?;
    match key.trim() {
        "until" | "unused-for" | "unused_for" => {
            gc::parse_duration(value).map_err(|e| e.to_string())
        }
        other => Err(format!(
            "unsupported filter {other:?}: only until=DURATION is supported"
        )),
    }
}

pub(crate) fn run(root: &Path, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let _ = args.force;
    let images = super::images::open(root)?;
    let store = images.store();
    let opts = PruneOptions {
        all: args.all,
        keep_storage: args.keep_storage,
        // Several until filters: the longest protects most, as a user giving
        // them would expect nothing recent to go.
        until: args.filter.iter().max().copied(),
    };
    let lock = match gc::try_lock(store)? {
        Some(lock) => lock,
        None => {
            eprintln!("waiting for running builds to finish...");
            gc::lock(store)?
        }
    };
    let report = gc::prune_locked(store, &lock, &opts).context("cannot prune the store")?;
    drop(lock);
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &PruneReport) {
    let now = SystemTime::now();
    // Records and mounts one by one; notes and context caches, small and
    // many, as a count.
    let listed = |k: ItemKind| matches!(k, ItemKind::Record | ItemKind::Mount);
    if report.removed.iter().any(|r| listed(r.kind)) {
        let mut table = vec![["TYPE", "ID", "SIZE", "LAST USED", "DESCRIPTION"].map(String::from)];
        for r in report.removed.iter().filter(|r| listed(r.kind)) {
            table.push([
                r.kind.to_string(),
                short_id(&r.id),
                human_size(r.size),
                ago(now, r.last_used),
                r.description.clone(),
            ]);
        }
        print_table(&table);
    }
    let counted = |kind: ItemKind| {
        let mut c = Category::default();
        for r in report.removed.iter().filter(|r| r.kind == kind) {
            c.count += 1;
            c.size += r.size;
        }
        c
    };
    for (what, c) in [
        ("context caches", counted(ItemKind::ContextCache)),
        ("miss notes", counted(ItemKind::Note)),
        ("unreferenced blobs", report.blobs),
        ("snapshots", report.snapshots),
        ("temporary files", report.tmp),
    ] {
        if c.count > 0 {
            println!("{what}: {} ({})", c.count, human_size(c.size));
        }
    }
    if !report.held.is_empty() {
        println!(
            "kept {} snapshots that running containers hold",
            report.held.len()
        );
    }
    println!("Total: {}", human_size(report.reclaimed));
}

/// The automatic cap, after a build: prunes least recently used cache when
/// the build cache is over it, shown as a step of the build. Never fails
/// the build. The removed trees are deleted by a background process (see
/// [`spawn_reaper`]), so that the build ends without waiting for that.
pub(crate) fn auto(store: &Store, progress: &Renderer) {
    match gc::auto_prune(store) {
        Ok(AutoPrune::Pruned { cap, report, trash }) => {
            let step = progress.begin("pruning build cache");
            let mut freed = "reclaimed";
            if !trash.is_empty() {
                match spawn_reaper(store.root(), &trash) {
                    Ok(()) => {
                        // The reaper owns the directories now.
                        trash.into_dirs();
                        freed = "reclaiming";
                    }
                    Err(err) => {
                        progress.detail(
                            step,
                            &format!("cannot delete in the background ({err}); deleting now"),
                        );
                        if let Err(err) = trash.delete() {
                            progress.warning(&format!(
                                "automatic cache cleanup failed: {:#}",
                                anyhow::Error::new(err)
                            ));
                        }
                    }
                }
            }
            progress.detail(
                step,
                &format!(
                    "build cache over its {} limit: removed {} cache items, {freed} {}",
                    human_size(cap),
                    report.removed.len(),
                    human_size(report.reclaimed)
                ),
            );
            progress.done(step);
        }
        Ok(_) => {}
        Err(err) => progress.warning(&format!("automatic cache cleanup failed: {err:#}")),
    }
}

/// The hidden subcommand that [`spawn_reaper`] runs.
pub(crate) const REAPER_COMMAND: &str = "__remove-trash";

/// `builder __remove-trash DIR...`: internal, see [`spawn_reaper`].
#[derive(Args, Debug)]
pub(crate) struct RemoveTrashArgs {
    /// `ROOT/tmp/removing-*` directories.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
}

/// Starts `builder --root ROOT __remove-trash DIR...` to delete what the
/// automatic cap moved away, and does not wait for it: deleting a big
/// snapshot takes a while, which the user should not wait for at the end of
/// a build (BuildKit's daemon collects garbage in the background; builder
/// has no daemon). The process is in a process group of its own, so the
/// terminal's Ctrl-C (sent to the foreground group) meant for a later
/// command does not reach it; it has no stdio (a caller reading the build's
/// output sees its end at once), and inherits no other descriptor (std opens
/// every file close-on-exec; the store's locks are such files). Should it
/// die, the store removes the directories as stale `tmp/` leftovers an hour
/// later. No `unsafe` here (a `pre_exec` hook for `setsid`, or `nice`,
/// would need it, and the sandbox module is the only one allowed it).
fn spawn_reaper(root: &Path, trash: &Trash) -> io::Result<()> {
    let root = std::path::absolute(root)?;
    let mut c = Command::new("/proc/self/exe");
    c.arg0("builder")
        .arg("--root")
        .arg(&root)
        .arg(REAPER_COMMAND)
        .arg("--")
        .args(
            trash
                .dirs()
                .iter()
                .map(std::path::absolute)
                .collect::<io::Result<Vec<_>>>()?,
        )
        .env_remove("BUILDER_ROOT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Not the caller's directory, which it would keep busy (a mount
        // that could not be unmounted while it runs).
        .current_dir("/")
        .process_group(0);
    // Not waited for: it outlives this process, and init reaps it.
    c.spawn().map(drop)
}

/// `builder __remove-trash`: deletes the directories.
pub(crate) fn remove_trash(root: &Path, args: RemoveTrashArgs) -> anyhow::Result<ExitCode> {
    gc::remove_trash(root, &args.dirs)?;
    Ok(ExitCode::SUCCESS)
}
