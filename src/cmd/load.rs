//! `builder load [-i FILE]`: import an OCI layout tarball or a docker archive.

use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cache::archive::{ImportOptions, import_archive};
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct LoadArgs {
    /// Read from a tar archive file (`-` for stdin) instead of stdin.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Suppress the load output.
    #[arg(short, long)]
    quiet: bool,
}

pub(crate) fn run(root: &Path, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let images = super::images::open(root)?;
    // Prune waits for this: the blobs have no name until the import ends.
    let _gc = images.store().lock_shared(cache::gc::GC_LOCK)?;
    let opts = ImportOptions::default();
    let loaded = match args.input.as_deref() {
        Some(path) if path != Path::new("-") => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            import_archive(&images, file, &opts)
                .with_context(|| format!("cannot load {}", path.display()))?
        }
        _ => {
            let stdin = io::stdin();
            if args.input.is_none() && stdin.is_terminal() {
                anyhow::bail!("requested load from stdin, but stdin is empty");
            }
            import_archive(&images, stdin, &opts).context("cannot load from stdin")?
        }
    };
    if !args.quiet {
        for image in &loaded {
            if image.names.is_empty() {
                println!("Loaded image ID: {}", image.id);
            }
            for name in &image.names {
                println!("Loaded image: {}", name.familiar());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
