//! `builder pull REF`: fetch an image from a registry into the local store;
//! also the registry flags every command that talks to registries shares.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use cache::registry::{self, Client, Platform, PullPolicy, Pulled, RegistryOptions};
use clap::Args;

/// Flags of commands that talk to registries.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct RegistryArgs {
    /// Reach this registry (`host[:port]`) over plain HTTP or HTTPS without
    /// certificate checks; loopback registries always use HTTP.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST",
        env = "BUILDER_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub(crate) insecure_registry: Vec<String>,
}

impl RegistryArgs {
    /// A client for these flags and `platform` (this machine's when `None`).
    pub(crate) fn client(&self, platform: Option<&str>) -> anyhow::Result<Client> {
        let platform: Platform = match platform {
            Some(p) => p.parse()?,
            None => Platform::default(),
        };
        Ok(Client::new(RegistryOptions {
            insecure: self.insecure_registry.clone(),
            platform,
            ..RegistryOptions::default()
        }))
    }
}

#[derive(Args, Debug)]
pub(crate) struct PullArgs {
    /// Pick this platform from multi-platform images (`os/arch[/variant]`).
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Print only the pulled reference.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The image: `name[:tag]`, `name@sha256:…` or `host[:port]/name[:tag]`.
    reference: String,
}

pub(crate) fn run(root: &Path, args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = registry::parse_reference(&args.reference)?;
    let client = args.registry.client(args.platform.as_deref())?;
    let images = super::images::open(root)?;
    let started = Instant::now();
    // Held until the image is named: a prune meanwhile must not remove a
    // blob the pull found present and skipped.
    let gc = images.store().lock_shared(cache::gc::GC_LOCK)?;
    let pulled = registry::pull(&client, &images, &reference)
        .with_context(|| format!("cannot pull {}", args.reference))?;
    drop(gc);
    let full = registry::full_name(&reference);
    if args.quiet {
        println!("{full}");
    } else {
        report(&pulled, &full, started, false);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a pull did, as docker does (`Digest:`, `Status:`); to stderr
/// when stdout belongs to something else (a container's output).
pub(crate) fn report(pulled: &Pulled, full: &str, started: Instant, stderr: bool) {
    let secs = started.elapsed().as_secs_f64();
    let status = if pulled.fetched_blobs > 0 {
        format!(
            "Status: Downloaded newer image for {full} ({} blobs, {} in {secs:.2}s)",
            pulled.fetched_blobs,
            human(pulled.fetched_bytes)
        )
    } else {
        format!("Status: Image is up to date for {full}")
    };
    let text = format!("Digest: {}\n{status}\n", pulled.digest);
    if stderr {
        eprint!("{text}");
    } else {
        println!("{text}{full}");
    }
}

/// A policy from run's and build's `--pull` values.
pub(crate) fn policy(value: &str) -> anyhow::Result<PullPolicy> {
    match value {
        "always" | "true" => Ok(PullPolicy::Always),
        "missing" | "false" => Ok(PullPolicy::Missing),
        "never" => Ok(PullPolicy::Never),
        other => anyhow::bail!("invalid pull policy {other:?} (use always, missing or never)"),
    }
}

pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}
