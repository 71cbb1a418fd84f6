//! Manifest endpoints: by tag or digest, raw bytes kept, refused while
//! they name blobs the store does not have.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt as _;

use super::{ApiError, CONTENT_DIGEST, MAX_MANIFEST, Server, parse_digest, response, valid_tag};
use crate::cacheserver::state::ManifestRecord;
use crate::digest::Digest;
use crate::images::MEDIA_TYPE_OCI_MANIFEST;

fn manifest_unknown(reference: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        "manifest unknown",
    )
    .detail(reference)
}

pub(super) fn get_manifest(
    server: &Server,
    name: &str,
    reference: &str,
    head: bool,
) -> Result<Response, ApiError> {
    if reference.starts_with("sha256:") {
        parse_digest(reference)?;
    }
    let (digest, media_type, bytes) = server
        .meta
        .get_manifest(name, reference)
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| manifest_unknown(reference))?;
    let hdrs = [
        (header::CONTENT_TYPE, media_type),
        (header::CONTENT_LENGTH, bytes.len().to_string()),
        (CONTENT_DIGEST, digest.to_string()),
        (header::ETAG, format!("\"{digest}\"")),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    Ok(response(StatusCode::OK, &hdrs, body))
}

/// The media type and the digests a manifest or index names (config,
/// layers without foreign URLs, child manifests).
fn manifest_record(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestRecord, ApiError> {
    let invalid = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "manifest invalid",
        )
        .detail(why)
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("not a JSON object".into()))?;
    let mut refs = Vec::new();
    let mut add = |desc: &serde_json::Value, what: &str| -> Result<(), ApiError> {
        let has_urls = desc
            .get("urls")
            .and_then(|u| u.as_array())
            .is_some_and(|u| !u.is_empty());
        if has_urls {
            return Ok(());
        }
        let d = desc
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| invalid(format!("{what} has no digest")))?;
        refs.push(
            d.parse::<Digest>()
                .map_err(|e| invalid(format!("{what}: {e}")))?,
        );
        Ok(())
    };
    if let Some(config) = obj.get("config") {
        add(config, "config")?;
    }
    for key in ["layers", "manifests"] {
        if let Some(list) = obj.get(key) {
            let list = list
                .as_array()
                .ok_or_else(|| invalid(format!("{key} is not a list")))?;
            for desc in list {
                add(desc, key)?;
            }
        }
    }
    refs.sort();
    refs.dedup();
    let media_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/octet-stream")
        .or_else(|| obj.get("mediaType").and_then(|m| m.as_str()))
        .unwrap_or(MEDIA_TYPE_OCI_MANIFEST)
        .to_string();
    Ok(ManifestRecord { media_type, refs })
}

pub(super) async fn put_manifest(
    server: &Server,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let (tag, expected) = if reference.starts_with("sha256:") || reference.contains(':') {
        (None, Some(parse_digest(reference)?))
    } else if valid_tag(reference) {
        (Some(reference), None)
    } else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            "manifest tag did not match URI",
        )
        .detail(reference));
    };
    let bytes = http_body_util::Limited::new(body.take().unwrap_or_default(), MAX_MANIFEST)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                "manifest invalid",
            )
            .detail(format!(
                "cannot read it (at most {MAX_MANIFEST} bytes): {e}"
            ))
        })?
        .to_bytes();
    if let Some(expected) = expected {
        let actual = Digest::of(&bytes);
        if actual != expected {
            return Err(ApiError::digest_invalid(format!(
                "manifest digest {actual} does not match {expected}"
            )));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let record = manifest_record(&bytes, content_type)?;
    let stored =
        tokio::task::block_in_place(|| server.meta.put_manifest(name, tag, &bytes, record))
            .map_err(|e| ApiError::internal(&e))?;
    let digest = match stored {
        Ok(d) => d,
        Err(missing) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                "blob unknown to registry",
            )
            .detail(missing[0].to_string()));
        }
    };
    server.evict().await;
    Ok(response(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{name}/manifests/{digest}")),
            (CONTENT_DIGEST, digest.to_string()),
            (header::CONTENT_LENGTH, "0".into()),
        ],
        Body::empty(),
    ))
}

pub(super) fn delete_manifest(
    server: &Server,
    name: &str,
    reference: &str,
) -> Result<Response, ApiError> {
    let d = parse_digest(reference).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "manifests are deleted by digest",
        )
    })?;
    let removed = tokio::task::block_in_place(|| server.meta.delete_manifest(name, &d))
        .map_err(|e| ApiError::internal(&e))?;
    if !removed {
        return Err(manifest_unknown(reference));
    }
    Ok(response(
        StatusCode::ACCEPTED,
        &[(header::CONTENT_LENGTH, "0".into())],
        Body::empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_refs_and_media_type() {
        let cfg = Digest::of(b"c");
        let layer = Digest::of(b"l");
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": cfg.to_string()},
            "layers": [{"digest": layer.to_string()}, {"digest": Digest::of(b"f").to_string(), "urls": ["http://x"]}],
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        let r = manifest_record(&bytes, None).unwrap();
        assert_eq!(
            r.media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let mut want = vec![cfg, layer];
        want.sort();
        assert_eq!(r.refs, want);
        let r = manifest_record(
            &bytes,
            Some("application/vnd.oci.image.manifest.v1+json; x=y"),
        )
        .unwrap();
        assert_eq!(r.media_type, MEDIA_TYPE_OCI_MANIFEST);
        assert!(manifest_record(b"[]", None).is_err());
        assert!(manifest_record(br#"{"layers":[{"digest":"md5:x"}]}"#, None).is_err());
    }
}
