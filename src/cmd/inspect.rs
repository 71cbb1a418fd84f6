//! `builder inspect NAME...`: print an image's manifest, config, digest and id as JSON.

use std::path::Path;
use std::process::ExitCode;

use cache::images::Image;
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// Images: names, IDs or digests.
    #[arg(required = true)]
    images: Vec<String>,
}

pub(crate) fn run(root: &Path, args: InspectArgs) -> anyhow::Result<ExitCode> {
    let images = super::images::open(root)?;
    let mut out = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for reference in &args.images {
        match images
            .resolve(reference)
            .map_err(anyhow::Error::from)
            .and_then(|i| describe(&i))
        {
            Ok(v) => out.push(v),
            Err(err) => {
                eprintln!("error: {err:#}");
                code = ExitCode::from(1);
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

/// docker-style fields first, then the documents as stored.
fn describe(image: &Image) -> anyhow::Result<Value> {
    let manifest: Value = serde_json::from_slice(&image.manifest)?;
    let config: Value = serde_json::from_slice(&image.config)?;
    let summary = image.config_summary()?;
    let repo_digests: Vec<String> = {
        let mut repos: Vec<String> = image
            .names
            .iter()
            .map(|n| n.familiar_repository())
            .collect();
        repos.dedup();
        repos
            .iter()
            .map(|r| format!("{r}@{}", image.manifest_digest))
            .collect()
    };
    Ok(json!({
        "Id": image.id(),
        "RepoTags": image.names.iter().map(|n| n.familiar()).collect::<Vec<_>>(),
        "RepoDigests": repo_digests,
        "Created": summary.created,
        "Architecture": summary.architecture,
        "Os": summary.os,
        "Size": image.size(),
        "ManifestDigest": image.manifest_digest,
        "ManifestMediaType": image.parsed.media_type,
        "Manifest": manifest,
        "Config": config,
    }))
}
