//! `builder rmi NAME...`: remove names from the image store (blobs stay until GC).

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct RmiArgs {
    /// Remove every name of an image given by ID.
    #[arg(short, long)]
    force: bool,
    /// Images: names, IDs or digests.
    #[arg(required = true)]
    images: Vec<String>,
}

pub(crate) fn run(root: &Path, args: RmiArgs) -> anyhow::Result<ExitCode> {
    let images = super::images::open(root)?;
    let mut code = ExitCode::SUCCESS;
    for reference in &args.images {
        match images.remove(reference, args.force) {
            Ok(removal) => {
                for name in &removal.untagged {
                    println!("Untagged: {}", name.familiar());
                }
                for id in &removal.deleted {
                    println!("Deleted: {id}");
                }
            }
            // Like docker: report and go on with the other images.
            Err(err) => {
                eprintln!("error: {err}");
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}
