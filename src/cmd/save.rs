//! `builder save [-o FILE] NAME...`: write images to a tarball that is both an OCI layout and a docker archive.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cache::archive::export::Destination;
use cache::archive::{DockerExporter, ExportImage, Exporter};
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct SaveArgs {
    /// Write to a file instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Images: names, IDs or digests.
    #[arg(required = true)]
    images: Vec<String>,
}

pub(crate) fn run(root: &Path, args: SaveArgs) -> anyhow::Result<ExitCode> {
    let images = super::images::open(root)?;
    let items = args
        .images
        .iter()
        .map(|r| ExportImage::lookup(&images, r))
        .collect::<Result<Vec<_>, _>>()?;
    let dest = match args.output {
        Some(path) if path != Path::new("-") => Destination::Path(path),
        _ => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                anyhow::bail!(
                    "cowardly refusing to save to a terminal. Use the -o flag or redirect"
                );
            }
            Destination::Writer(Box::new(stdout))
        }
    };
    let what = match &dest {
        Destination::Path(p) => p.display().to_string(),
        Destination::Writer(_) => "stdout".to_string(),
    };
    DockerExporter::default()
        .export(&images, &items, dest)
        .with_context(|| format!("cannot save to {what}"))?;
    Ok(ExitCode::SUCCESS)
}
