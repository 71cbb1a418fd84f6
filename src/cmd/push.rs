//! `builder push NAME [REF]`: upload an image of the local store to a
//! registry, as `REF` (default: `NAME` itself, which must then name a registry
//! repository), and print the pushed digest.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use cache::registry::{self, BlobOutcome};
use clap::Args;

use super::pull::RegistryArgs;

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// Print only the pushed digest.
    #[arg(short, long)]
    quiet: bool,
    /// Upload blobs larger than this many MiB in chunks of that size.
    #[arg(long, value_name = "MIB")]
    chunk_size: Option<u64>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The local image: a name, an image id (or unique prefix) or a digest.
    name: String,
    /// Where to push: `host[:port]/repo[:tag]` (default: NAME).
    reference: Option<String>,
}

pub(crate) fn run(root: &Path, args: PushArgs) -> anyhow::Result<ExitCode> {
    let target = args.reference.as_deref().unwrap_or(&args.name);
    let reference = registry::parse_reference(target)?;
    let images = super::images::open(root)?;
    let image = images
        .resolve(&args.name)
        .with_context(|| format!("unable to find image {:?} in the local store", args.name))?;
    let mut client_opts = args.registry.client(None)?;
    if let Some(mib) = args.chunk_size {
        client_opts = cache::registry::Client::new(cache::registry::RegistryOptions {
            chunk_size: Some(mib.max(1) << 20),
            ..client_opts.options().clone()
        });
    }
    let client = client_opts;
    if !args.quiet {
        println!(
            "The push refers to repository [{}/{}]",
            reference.registry(),
            reference.repository()
        );
    }
    let pushed = registry::push(&client, &images, &image, &reference)
        .with_context(|| format!("cannot push {target}"))?;
    if args.quiet {
        println!("{}", pushed.digest);
        return Ok(ExitCode::SUCCESS);
    }
    for (blob, outcome) in pushed.blobs.iter().rev() {
        let short = &blob.digest.hex()[..12];
        match outcome {
            BlobOutcome::Exists => println!("{short}: Layer already exists"),
            BlobOutcome::Mounted(from) => println!("{short}: Mounted from {from}"),
            BlobOutcome::Uploaded => println!("{short}: Pushed"),
        }
    }
    let tag = registry::tag_of(&reference).unwrap_or("latest");
    println!("{tag}: digest: {} size: {}", pushed.digest, pushed.size);
    Ok(ExitCode::SUCCESS)
}
