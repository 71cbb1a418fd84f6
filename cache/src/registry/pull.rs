//! Pull: resolve a reference to a manifest, pick the platform from an index,
//! and fetch config and layers in parallel into the content store.
//!
//! Every blob streams into a [`crate::store::BlobWriter`] and is committed
//! only when its size and digest are those the manifest names, so a tampered
//! or truncated blob never enters the store. Manifests are checked against
//! the digest asked for (or the registry's `Docker-Content-Digest`). Blobs
//! already in the store are not fetched again, and the image is named in
//! `index.json` only once all of it is present. Snapshots are not made here:
//! whoever runs the image unpacks layers on first use, as for loaded images.

use std::io::Read;

use oci_spec::distribution::Reference;
use serde::Deserialize;

use super::client::{Client, Endpoint, Req, check, header};
use super::{Platform, RegistryError, full_name, sources, tag_of};
use crate::digest::Digest;
use crate::images::{
    self, BlobRef, Image, ImageName, ImageStore, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, ParsedManifest,
};
use crate::store::{Store, StoreError};

/// Manifests and indexes larger than this are refused.
const MAX_MANIFEST: u64 = 8 << 20;
/// Marks the attestation manifests BuildKit puts in indexes.
const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// When to ask the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always resolve the reference (`--pull`, `builder pull`).
    Always,
    /// Use a locally present image; pull only when there is none.
    Missing,
    /// Never ask the registry.
    Never,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Image,
    /// The digest the reference resolved to (an index's, for multi-platform
    /// images); what `docker pull` prints as `Digest:`.
    pub digest: Digest,
    /// Blobs fetched and their bytes; zero when all were present.
    pub fetched_blobs: usize,
    pub fetched_bytes: u64,
    /// Whether the registry was asked at all.
    pub from_network: bool,
}

#[derive(Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<PlatformDoc>,
    #[serde(default)]
    annotations: Option<std::collections::HashMap<String, String>>,
}

#[derive(Deserialize)]
struct PlatformDoc {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaTypeDoc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// The media type of a manifest document: its own field, else the
/// `Content-Type`, else by shape.
fn media_type_of(bytes: &[u8], content_type: Option<&str>) -> String {
    let doc: Option<MediaTypeDoc> = serde_json::from_slice(bytes).ok();
    if let Some(m) = doc.as_ref().and_then(|d| d.media_type.clone()) {
        return m;
    }
    if let Some(ct) = content_type {
        let ct = ct.split(';').next().unwrap_or("").trim();
        if is_index(ct) || is_manifest(ct) {
            return ct.to_string();
        }
    }
    if doc.is_some_and(|d| d.manifests.is_some()) {
        MEDIA_TYPE_OCI_INDEX.to_string()
    } else {
        MEDIA_TYPE_OCI_MANIFEST.to_string()
    }
}

/// Picks the platform's manifest from an index.
fn pick(index: &[u8], platform: &Platform, reference: &str) -> Result<Digest, RegistryError> {
    let doc: IndexDoc =
        serde_json::from_slice(index).map_err(|e| RegistryError::InvalidManifest {
            reference: reference.to_string(),
            source: Box::new(e),
        })?;
    let mut available = Vec::new();
    let mut found = None;
    for e in &doc.manifests {
        let attestation = e
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_REFERENCE_TYPE));
        let Some(p) = &e.platform else { continue };
        if attestation || (!e.media_type.is_empty() && !is_manifest(&e.media_type)) {
            continue;
        }
        let variant = p.variant.as_deref().filter(|v| !v.is_empty());
        available.push(match variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        });
        let matches = p.os == platform.os
            && p.architecture == platform.architecture
            && (platform.variant.is_none() || platform.variant.as_deref() == variant);
        if matches && found.is_none() {
            found = Some(e.digest.clone());
        }
    }
    let Some(digest) = found else {
        return Err(RegistryError::NoPlatform {
            reference: reference.to_string(),
            platform: platform.clone(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        });
    };
    digest.parse().map_err(|e| RegistryError::InvalidManifest {
        reference: reference.to_string(),
        source: Box::new(e),
    })
}

/// The image a reference names in the local store, if it is complete there:
/// by name for a tag, by manifest (or index, picking the platform) for a digest.
pub fn find_local(
    images: &ImageStore,
    reference: &Reference,
    platform: &Platform,
) -> Result<Option<Image>, RegistryError> {
    let store = images.store();
    if let Some(d) = reference.digest() {
        let Ok(mut digest) = d.parse::<Digest>() else {
            return Ok(None);
        };
        if !store.has_blob(&digest) {
            return Ok(None);
        }
        let bytes = store.read_blob(&digest)?;
        if is_index(&media_type_of(&bytes, None)) {
            digest = match pick(&bytes, platform, &full_name(reference)) {
                Ok(d) => d,
                Err(_) => return Ok(None),
            };
        }
        if images
            .check_complete(&digest, &full_name(reference))
            .is_err()
        {
            return Ok(None);
        }
        // Keep the image listed, so that GC does not take it away.
        images.add(&digest, &[])?;
        return Ok(images.resolve(&digest.to_string()).ok());
    }
    let Some(name) = name_of(reference) else {
        return Ok(None);
    };
    match images.resolve(&name.full()) {
        Ok(image) => Ok(Some(image)),
        Err(images::ImageError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The image name a pull of `reference` gives: its tag, unless it names a digest.
fn name_of(reference: &Reference) -> Option<ImageName> {
    if reference.digest().is_some() {
        return None;
    }
    let tag = tag_of(reference)?;
    images::parse_name(&format!(
        "{}/{}:{tag}",
        reference.registry(),
        reference.repository()
    ))
    .ok()
}

/// The local image when present (per `policy`), else a pull.
pub fn ensure_image(
    client: &Client,
    images: &ImageStore,
    reference: &Reference,
    policy: PullPolicy,
) -> Result<Pulled, RegistryError> {
    ensure_image_for(client, images, reference, policy, &client.opts.platform)
}

/// [`ensure_image`] for a given platform (a build's `--platform`).
pub fn ensure_image_for(
    client: &Client,
    images: &ImageStore,
    reference: &Reference,
    policy: PullPolicy,
    platform: &Platform,
) -> Result<Pulled, RegistryError> {
    // A digest names content: present means current, whatever the policy.
    if policy != PullPolicy::Always || reference.digest().is_some() {
        if let Some(image) = find_local(images, reference, platform)? {
            let digest = match reference.digest().and_then(|d| d.parse().ok()) {
                Some(d) => d,
                None => image.manifest_digest,
            };
            return Ok(Pulled {
                image,
                digest,
                fetched_blobs: 0,
                fetched_bytes: 0,
                from_network: false,
            });
        }
    }
    if policy == PullPolicy::Never {
        return Err(RegistryError::Image(images::ImageError::NotFound(
            full_name(reference),
        )));
    }
    pull_for(client, images, reference, platform)
}

/// Fetches a manifest (or index) by tag or digest, checking its digest.
pub(crate) fn fetch_manifest(
    client: &Client,
    ep: &Endpoint,
    reference: &Reference,
    target: &str,
    expected: Option<Digest>,
    scopes: &[String],
) -> Result<(Vec<u8>, String, Digest), RegistryError> {
    let repo = reference.repository();
    let req = Req::new(
        "GET",
        ep.url(&format!("/v2/{repo}/manifests/{target}")),
        scopes,
    )
    .header("accept", ACCEPT);
    let mut attempt = 0;
    loop {
        let resp = client.send(ep, &req)?;
        let mut resp = check(
            resp,
            ep,
            &req,
            || format!("manifest {repo}:{target}"),
            "pull",
        )?;
        let content_type = header(&resp, "content-type");
        let registry_digest = header(&resp, "docker-content-digest");
        let bytes = match resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
        {
            Ok(b) => b,
            Err(e) if attempt < client.opts.retries => {
                let _ = e;
                client.pause(attempt);
                attempt += 1;
                continue;
            }
            Err(e) => {
                return Err(RegistryError::Read {
                    registry: ep.registry.clone(),
                    source: e.into_io(),
                });
            }
        };
        let actual = Digest::of(&bytes);
        let expected = expected.or_else(|| registry_digest.and_then(|d| d.parse().ok()));
        if let Some(expected) = expected {
            if expected != actual {
                return Err(RegistryError::DigestMismatch {
                    registry: ep.registry.clone(),
                    what: "manifest",
                    expected,
                    actual,
                });
            }
        }
        let media_type = media_type_of(&bytes, content_type.as_deref());
        return Ok((bytes, media_type, actual));
    }
}

/// Pulls `reference` into the store and names it (by its tag).
pub fn pull(
    client: &Client,
    images: &ImageStore,
    reference: &Reference,
) -> Result<Pulled, RegistryError> {
    pull_for(client, images, reference, &client.opts.platform)
}

/// [`pull`] for a given platform.
pub fn pull_for(
    client: &Client,
    images: &ImageStore,
    reference: &Reference,
    platform: &Platform,
) -> Result<Pulled, RegistryError> {
    let ep = client.endpoint(reference.registry());
    let repo = reference.repository();
    let shown = full_name(reference);
    let scopes = vec![format!("repository:{repo}:pull")];
    let pinned: Option<Digest> = match reference.digest() {
        Some(d) => Some(d.parse().map_err(|e| RegistryError::InvalidManifest {
            reference: shown.clone(),
            source: Box::new(e),
        })?),
        None => None,
    };
    let target = match pinned {
        Some(d) => d.to_string(),
        None => tag_of(reference).unwrap_or("latest").to_string(),
    };
    let (bytes, media_type, digest) =
        fetch_manifest(client, &ep, reference, &target, pinned, &scopes)?;
    let store = images.store();
    let (manifest, manifest_digest) = if is_index(&media_type) {
        let chosen = pick(&bytes, platform, &shown)?;
        // Kept so that a pull pinned to the index digest can be answered
        // offline next time.
        store.put_blob(&bytes)?;
        let (m, mt, d) = fetch_manifest(
            client,
            &ep,
            reference,
            &chosen.to_string(),
            Some(chosen),
            &scopes,
        )?;
        if !is_manifest(&mt) {
            return Err(RegistryError::UnsupportedManifest {
                reference: shown,
                media_type: mt,
            });
        }
        (m, d)
    } else if is_manifest(&media_type) {
        (bytes, digest)
    } else {
        return Err(RegistryError::UnsupportedManifest {
            reference: shown,
            media_type,
        });
    };
    let parsed = ParsedManifest::parse(&manifest).map_err(|e| RegistryError::InvalidManifest {
        reference: shown.clone(),
        source: Box::new(e),
    })?;
    let blobs: Vec<BlobRef> = std::iter::once(parsed.config.clone())
        .chain(parsed.layers.iter().cloned())
        .filter(|b| !store.has_blob(&b.digest))
        .collect();
    let fetched_bytes = fetch_blobs(client, &ep, repo, store, &blobs, &scopes)?;
    for b in std::iter::once(&parsed.config).chain(&parsed.layers) {
        sources::record(store, &b.digest, &ep.registry, repo);
    }
    let stored = store.put_blob(&manifest)?;
    debug_assert_eq!(stored, manifest_digest);
    let names: Vec<ImageName> = name_of(reference).into_iter().collect();
    images.add(&manifest_digest, &names)?;
    let image = images.resolve(&manifest_digest.to_string())?;
    Ok(Pulled {
        image,
        digest,
        fetched_blobs: blobs.len(),
        fetched_bytes,
        from_network: true,
    })
}

/// Fetches blobs with `jobs` transfers at once; the first error stops the rest.
pub(crate) fn fetch_blobs(
    client: &Client,
    ep: &Endpoint,
    repo: &str,
    store: &Store,
    blobs: &[BlobRef],
    scopes: &[String],
) -> Result<u64, RegistryError> {
    let sizes = super::for_each_parallel(client, blobs, |blob| {
        fetch_blob(client, ep, repo, store, blob, scopes)
    })?;
    Ok(sizes.into_iter().sum())
}

/// One blob into the store, verified; retried when the transfer breaks.
fn fetch_blob(
    client: &Client,
    ep: &Endpoint,
    repo: &str,
    store: &Store,
    blob: &BlobRef,
    scopes: &[String],
) -> Result<u64, RegistryError> {
    super::retry_transient(client, || {
        fetch_blob_once(client, ep, repo, store, blob, scopes)
    })
}

fn fetch_blob_once(
    client: &Client,
    ep: &Endpoint,
    repo: &str,
    store: &Store,
    blob: &BlobRef,
    scopes: &[String],
) -> Result<u64, RegistryError> {
    let req = Req::new(
        "GET",
        ep.url(&format!("/v2/{repo}/blobs/{}", blob.digest)),
        scopes,
    );
    let resp = client.send(ep, &req)?;
    let resp = check(
        resp,
        ep,
        &req,
        || format!("blob {} of {repo}", blob.digest),
        "pull",
    )?;
    let mut reader = resp.into_body().into_reader();
    let mut writer = store.blob_writer()?;
    let mut buf = vec![0u8; 256 << 10];
    let mut n: u64 = 0;
    loop {
        let got = reader
            .read(&mut buf)
            .map_err(|source| RegistryError::Read {
                registry: ep.registry.clone(),
                source,
            })?;
        if got == 0 {
            break;
        }
        n += got as u64;
        if n > blob.size {
            break;
        }
        std::io::Write::write_all(&mut writer, &buf[..got]).map_err(|source| StoreError::Io {
            path: store.root().join("tmp"),
            source,
        })?;
    }
    if n != blob.size {
        return Err(RegistryError::SizeMismatch {
            registry: ep.registry.clone(),
            digest: blob.digest,
            expected: blob.size,
            actual: n,
        });
    }
    match writer.commit(Some(&blob.digest)) {
        Ok(_) => Ok(n),
        Err(StoreError::DigestMismatch { expected, actual }) => {
            Err(RegistryError::DigestMismatch {
                registry: ep.registry.clone(),
                what: "blob",
                expected,
                actual,
            })
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Vec<u8> {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": d('a'), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": d('b'), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": d('c'), "size": 1,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            ]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_platform_is_picked_from_an_index() {
        let amd64: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(pick(&index(), &amd64, "x").unwrap().hex(), "b".repeat(64));
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(pick(&index(), &arm, "x").unwrap().hex(), "a".repeat(64));
        let err = pick(&index(), &"linux/s390x".parse().unwrap(), "x").unwrap_err();
        assert!(
            err.to_string().contains("linux/arm64/v8, linux/amd64"),
            "{err}"
        );
    }

    #[test]
    fn media_types_come_from_the_document_first() {
        assert_eq!(
            media_type_of(&index(), Some("text/plain")),
            MEDIA_TYPE_OCI_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2}"#, Some(MEDIA_TYPE_DOCKER_MANIFEST)),
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(br#"{"manifests":[]}"#, None),
            MEDIA_TYPE_OCI_INDEX
        );
    }
}
