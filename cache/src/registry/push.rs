//! Push: blobs the registry lacks, then the manifest under its tag.
//!
//! For each blob (config and layers, several at once): `HEAD` first, and a
//! blob the registry has is skipped; else, when the store knows another
//! repository of the same registry holding it (it was pulled or pushed
//! there), a cross-repository mount is asked for (`POST ?mount=&from=`),
//! which copies nothing; else the blob is uploaded from the store's file,
//! in one `PUT` or, with [`super::RegistryOptions::chunk_size`], in `PATCH`
//! chunks (at least the registry's `OCI-Chunk-Min-Length`). The manifest is
//! pushed last, as its exact stored bytes, so the pushed digest is the local
//! one. Several images pushed together share blobs through the same checks:
//! a blob uploaded for the first is found (or mounted) for the next.

use oci_spec::distribution::Reference;

use super::client::{Client, Endpoint, Req, ReqBody, check, header};
use super::{RegistryError, full_name, sources, tag_of};
use crate::digest::Digest;
use crate::images::{BlobRef, Image, ImageStore};
use crate::store::Store;

/// What happened to one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The registry had it already.
    Exists,
    /// Mounted from this repository of the same registry.
    Mounted(String),
    /// Uploaded.
    Uploaded,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Where it went, in full (`127.0.0.1:5000/app:1`).
    pub reference: String,
    /// The manifest's digest, as the registry now serves it.
    pub digest: Digest,
    /// The manifest's size.
    pub size: u64,
    /// Every blob (config first, then layers) and its fate.
    pub blobs: Vec<(BlobRef, BlobOutcome)>,
}

impl Pushed {
    /// Bytes sent as blob uploads.
    pub fn uploaded_bytes(&self) -> u64 {
        self.blobs
            .iter()
            .filter(|(_, o)| *o == BlobOutcome::Uploaded)
            .map(|(b, _)| b.size)
            .sum()
    }
}

/// Pushes one image to `reference` (a tag; `latest` when none is given).
pub fn push(
    client: &Client,
    images: &ImageStore,
    image: &Image,
    reference: &Reference,
) -> Result<Pushed, RegistryError> {
    let ep = client.endpoint(reference.registry());
    let repo = reference.repository();
    let store = images.store();
    let blobs: Vec<BlobRef> = std::iter::once(image.parsed.config.clone())
        .chain(image.parsed.layers.iter().cloned())
        .collect();
    for b in &blobs {
        if !store.has_blob(&b.digest) {
            return Err(RegistryError::Image(
                crate::images::ImageError::MissingBlob {
                    image: full_name(reference),
                    digest: b.digest,
                },
            ));
        }
    }
    let outcomes = push_blobs(client, &ep, repo, store, &blobs)?;

    let target = match tag_of(reference) {
        Some(t) => t.to_string(),
        None => image.manifest_digest.to_string(),
    };
    let scopes = vec![format!("repository:{repo}:pull,push")];
    let req = Req::new(
        "PUT",
        ep.url(&format!("/v2/{repo}/manifests/{target}")),
        &scopes,
    )
    .header("content-type", image.parsed.media_type.clone())
    .body(ReqBody::Bytes(&image.manifest));
    let resp = client.send(&ep, &req)?;
    let resp = check(resp, &ep, &req, || format!("repository {repo}"), "push")?;
    if let Some(d) = header(&resp, "docker-content-digest").and_then(|d| d.parse::<Digest>().ok()) {
        if d != image.manifest_digest {
            return Err(RegistryError::DigestMismatch {
                registry: ep.registry.clone(),
                what: "pushed manifest",
                expected: image.manifest_digest,
                actual: d,
            });
        }
    }
    Ok(Pushed {
        reference: full_name(reference),
        digest: image.manifest_digest,
        size: image.manifest.len() as u64,
        blobs: blobs.into_iter().zip(outcomes).collect(),
    })
}

/// Pushes several images in one go; blobs they share go up once.
pub fn push_many(
    client: &Client,
    images: &ImageStore,
    targets: &[(Image, Reference)],
) -> Result<Vec<Pushed>, RegistryError> {
    targets
        .iter()
        .map(|(image, reference)| push(client, images, image, reference))
        .collect()
}

pub(crate) fn push_blobs(
    client: &Client,
    ep: &Endpoint,
    repo: &str,
    store: &Store,
    blobs: &[BlobRef],
) -> Result<Vec<BlobOutcome>, RegistryError> {
    super::for_each_parallel(client, blobs, |blob| {
        push_blob(client, ep, repo, store, blob)
    })
}

fn push_blob(
    client: &Client,
    ep: &Endpoint,
    repo: &str,
    store: &Store,
    blob: &BlobRef,
) -> Result<BlobOutcome, RegistryError> {
    let outcome = super::retry_transient(client, || push_blob_once(client, ep, repo, store, blob))?;
    sources::record(store, &blob.digest, &ep.registry, repo);
    Ok(outcome)
}

fn push_blob_once(
    client: &Client,
    ep: &Endpoint,
    repo: &str,
    store: &Store,
    blob: &BlobRef,
) -> Result<BlobOutcome, RegistryError> {
    let digest = blob.digest;
    let mut scopes = vec![format!("repository:{repo}:pull,push")];
    let head = Req::new(
        "HEAD",
        ep.url(&format!("/v2/{repo}/blobs/{digest}")),
        &scopes,
    );
    let resp = client.send(ep, &head)?;
    match resp.status().as_u16() {
        200 => return Ok(BlobOutcome::Exists),
        404 => {}
        _ => {
            check(resp, ep, &head, || format!("repository {repo}"), "push")?;
        }
    }

    let mount_from = sources::sources(store, &digest)
        .into_iter()
        .find(|(r, p)| *r == ep.registry && p != repo)
        .map(|(_, p)| p);
    let start = match &mount_from {
        Some(from) => {
            scopes.push(format!("repository:{from}:pull"));
            ep.url(&format!(
                "/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"
            ))
        }
        None => ep.url(&format!("/v2/{repo}/blobs/uploads/")),
    };
    let post = Req::new("POST", start, &scopes);
    let resp = client.send(ep, &post)?;
    let resp = check(resp, ep, &post, || format!("repository {repo}"), "push")?;
    if resp.status().as_u16() == 201 {
        if let Some(from) = mount_from {
            return Ok(BlobOutcome::Mounted(from));
        }
        // Some registries answer 201 when the blob appeared meanwhile.
        return Ok(BlobOutcome::Exists);
    }
    let mut location = upload_location(ep, &resp, &post)?;
    let path = store.blob_path(&digest);
    let chunk = client.opts.chunk_size.map(|c| {
        let min = header(&resp, "oci-chunk-min-length")
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or(0);
        c.max(min).max(1)
    });
    if let Some(chunk) = chunk.filter(|c| blob.size > *c) {
        let mut offset = 0;
        while offset < blob.size {
            let len = chunk.min(blob.size - offset);
            let patch = Req::new("PATCH", location.clone(), &scopes)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{}-{}", offset, offset + len - 1))
                .body(ReqBody::File {
                    path: &path,
                    offset,
                    len,
                });
            let resp = client.send(ep, &patch)?;
            let resp = check(resp, ep, &patch, || format!("repository {repo}"), "push")?;
            location = upload_location(ep, &resp, &patch)?;
            offset += len;
        }
        let put = Req::new("PUT", with_digest(&location, &digest), &scopes);
        let resp = client.send(ep, &put)?;
        check(resp, ep, &put, || format!("repository {repo}"), "push")?;
    } else {
        let put = Req::new("PUT", with_digest(&location, &digest), &scopes)
            .header("content-type", "application/octet-stream")
            .body(ReqBody::File {
                path: &path,
                offset: 0,
                len: blob.size,
            });
        let resp = client.send(ep, &put)?;
        check(resp, ep, &put, || format!("repository {repo}"), "push")?;
    }
    Ok(BlobOutcome::Uploaded)
}

fn upload_location(
    ep: &Endpoint,
    resp: &ureq::http::Response<ureq::Body>,
    req: &Req<'_>,
) -> Result<String, RegistryError> {
    match header(resp, "location") {
        Some(loc) => Ok(ep.location(&loc)),
        None => Err(RegistryError::Status {
            registry: ep.registry.clone(),
            method: req.method.to_string(),
            url: req.url.clone(),
            status: resp.status().as_u16(),
            body: "no Location header in the answer".into(),
        }),
    }
}

fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}
