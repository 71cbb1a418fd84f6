//! `builder tag SRC DST`: give an image another name.

use std::path::Path;
use std::process::ExitCode;

use cache::images::parse_name;
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct TagArgs {
    /// The image: a name, an image ID (or unique prefix) or a digest.
    source: String,
    /// The new name.
    target: String,
}

pub(crate) fn run(root: &Path, args: TagArgs) -> anyhow::Result<ExitCode> {
    let target = parse_name(&args.target)?;
    let images = super::images::open(root)?;
    images.tag(&args.source, &target)?;
    Ok(ExitCode::SUCCESS)
}
