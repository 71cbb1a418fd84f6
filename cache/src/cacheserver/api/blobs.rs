//! Blob endpoints: reads with `Range`, and uploads (monolithic, chunked,
//! mounted) that enter the store only when their digest matches.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::io::AsyncReadExt as _;

use super::{
    ApiError, CONTENT_DIGEST, Server, UPLOAD_UUID, Upload, chain, drain, parse_digest, response,
    set,
};
use crate::digest::Digest;
use crate::store::{BlobWriter, StoreError};

/// A single byte range of a `Range: bytes=...` header, resolved against
/// `size`: `Ok(None)` for no header, `Err` for one that cannot be served.
fn parse_range(value: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = value else { return Ok(None) };
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (start, "") => (
            start.parse().map_err(|_| ())?,
            size.checked_sub(1).ok_or(())?,
        ),
        (start, end) => {
            let end: u64 = end.parse().map_err(|_| ())?;
            (
                start.parse().map_err(|_| ())?,
                end.min(size.saturating_sub(1)),
            )
        }
    };
    if start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

pub(super) async fn get_blob(
    server: &Server,
    digest: &str,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let d = parse_digest(digest)?;
    // Open before anything else: the open file stays readable even if the
    // blob is evicted while it is being sent.
    let file = match server.meta.store().open_blob(&d) {
        Ok(f) => f,
        Err(StoreError::NotFound(_)) => return Err(ApiError::blob_unknown(digest)),
        Err(e) => return Err(ApiError::internal(&e)),
    };
    let size = server
        .meta
        .touch_blob(&d)
        .ok_or_else(|| ApiError::blob_unknown(digest))?;
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    )
    .map_err(|()| {
        let mut e = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UNKNOWN",
            "requested range not satisfiable",
        );
        e.detail = Some(format!("blob size {size}"));
        e
    })?;
    let (status, start, len) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut hdrs = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, len.to_string()),
        (CONTENT_DIGEST, d.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::ETAG, format!("\"{d}\"")),
    ];
    if range.is_some() {
        hdrs.push((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    if head {
        return Ok(response(status, &hdrs, Body::empty()));
    }
    let mut file = file;
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .map_err(|e| ApiError::internal(&e))?;
    }
    let reader = tokio::fs::File::from_std(file).take(len);
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
    Ok(response(status, &hdrs, Body::from_stream(stream)))
}

/// Streams a request body into an upload.
async fn write_body(writer: &mut BlobWriter, mut body: Body) -> Result<(), ApiError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                "cannot read the request body",
            )
            .detail(chain(&e))
        })?;
        if let Ok(data) = frame.into_data() {
            tokio::task::block_in_place(|| writer.write_all(&data))
                .map_err(|e| ApiError::internal(&e))?;
        }
    }
    Ok(())
}

/// Commits an upload as the blob `expected`; a mismatch discards it.
async fn commit(server: &Server, writer: BlobWriter, expected: &Digest) -> Result<(), ApiError> {
    match tokio::task::block_in_place(|| writer.commit(Some(expected))) {
        Ok((digest, size)) => {
            server.meta.add_blob(digest, size);
            server.evict().await;
            Ok(())
        }
        Err(StoreError::DigestMismatch { expected, actual }) => {
            Err(ApiError::digest_invalid(format!(
                "provided digest did not match uploaded content: expected {expected}, got {actual}"
            ))
            .detail(expected.to_string()))
        }
        Err(e) => Err(ApiError::internal(&e)),
    }
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    response(
        StatusCode::CREATED,
        &[
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (CONTENT_DIGEST, digest.to_string()),
            (header::CONTENT_LENGTH, "0".into()),
        ],
        Body::empty(),
    )
}

fn upload_accepted(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let range = format!("0-{}", offset.saturating_sub(1));
    response(
        status,
        &[
            (header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}")),
            (header::RANGE, range),
            (UPLOAD_UUID, id.to_string()),
            (header::CONTENT_LENGTH, "0".into()),
        ],
        Body::empty(),
    )
}

pub(super) async fn start_upload(
    server: &Server,
    name: &str,
    query: &HashMap<String, String>,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    if let Some(mount) = query.get("mount") {
        // One store serves every repository, so a blob pushed anywhere can
        // be mounted from anywhere.
        let d = parse_digest(mount)?;
        if server.meta.mount_blob(&d) {
            drain(body.take().unwrap_or_default()).await;
            return Ok(blob_created(name, &d));
        }
    }
    let mut writer = server
        .meta
        .store()
        .blob_writer()
        .map_err(|e| ApiError::internal(&e))?;
    if let Some(digest) = query.get("digest") {
        let d = parse_digest(digest)?;
        write_body(&mut writer, body.take().unwrap_or_default()).await?;
        commit(server, writer, &d).await?;
        return Ok(blob_created(name, &d));
    }
    drain(body.take().unwrap_or_default()).await;
    let id = server.new_upload_id();
    let upload = Arc::new(Upload {
        repo: name.to_string(),
        writer: tokio::sync::Mutex::new(Some(writer)),
        last_used: Mutex::new(Instant::now()),
    });
    server
        .uploads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), upload);
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

fn find_upload(server: &Server, name: &str, id: &str) -> Result<Arc<Upload>, ApiError> {
    let uploads = server.uploads.lock().unwrap_or_else(|e| e.into_inner());
    let upload = uploads
        .get(id)
        .filter(|u| u.repo == name)
        .cloned()
        .ok_or_else(ApiError::upload_unknown)?;
    *upload.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    Ok(upload)
}

fn remove_upload(server: &Server, id: &str) {
    server
        .uploads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
}

/// `Content-Range: START-END` of a chunk (inclusive, as the distribution
/// spec writes it; a `bytes ` prefix is accepted).
fn chunk_start(headers: &HeaderMap) -> Option<Result<u64, ()>> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let value = value.trim();
    let value = value.strip_prefix("bytes ").unwrap_or(value);
    let value = value.split('/').next().unwrap_or(value);
    Some(
        value
            .split_once('-')
            .and_then(|(s, _)| s.trim().parse().ok())
            .ok_or(()),
    )
}

pub(super) async fn patch_upload(
    server: &Server,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let upload = match find_upload(server, name, id) {
        Ok(u) => u,
        Err(e) => {
            drain(body.take().unwrap_or_default()).await;
            return Err(e);
        }
    };
    let mut guard = upload.writer.lock().await;
    let Some(writer) = guard.as_mut() else {
        drain(body.take().unwrap_or_default()).await;
        return Err(ApiError::upload_unknown());
    };
    if let Some(start) = chunk_start(headers) {
        if start != Ok(writer.len()) {
            drain(body.take().unwrap_or_default()).await;
            let mut resp =
                upload_accepted(StatusCode::RANGE_NOT_SATISFIABLE, name, id, writer.len());
            *resp.body_mut() = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UPLOAD_INVALID",
                format!(
                    "chunk does not start at the upload's offset {}",
                    writer.len()
                ),
            )
            .into_response()
            .into_body();
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            set(&mut resp, header::CONTENT_TYPE, "application/json");
            return Ok(resp);
        }
    }
    write_body(writer, body.take().unwrap_or_default()).await?;
    Ok(upload_accepted(
        StatusCode::ACCEPTED,
        name,
        id,
        writer.len(),
    ))
}

pub(super) async fn put_upload(
    server: &Server,
    name: &str,
    id: &str,
    query: &HashMap<String, String>,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let checked = find_upload(server, name, id).and_then(|upload| {
        let digest = query
            .get("digest")
            .ok_or_else(|| ApiError::digest_invalid("the digest parameter is missing"))?;
        Ok((upload, parse_digest(digest)?))
    });
    let (upload, d) = match checked {
        Ok(v) => v,
        Err(e) => {
            drain(body.take().unwrap_or_default()).await;
            return Err(e);
        }
    };
    let mut guard = upload.writer.lock().await;
    let Some(mut writer) = guard.take() else {
        drain(body.take().unwrap_or_default()).await;
        return Err(ApiError::upload_unknown());
    };
    // The session ends here whatever the outcome: a failed upload is
    // discarded, as the spec asks.
    remove_upload(server, id);
    write_body(&mut writer, body.take().unwrap_or_default()).await?;
    commit(server, writer, &d).await?;
    Ok(blob_created(name, &d))
}

pub(super) async fn upload_status(
    server: &Server,
    name: &str,
    id: &str,
) -> Result<Response, ApiError> {
    let upload = find_upload(server, name, id)?;
    let guard = upload.writer.lock().await;
    let writer = guard.as_ref().ok_or_else(ApiError::upload_unknown)?;
    Ok(upload_accepted(
        StatusCode::NO_CONTENT,
        name,
        id,
        writer.len(),
    ))
}

pub(super) fn cancel_upload(server: &Server, name: &str, id: &str) -> Result<Response, ApiError> {
    find_upload(server, name, id)?;
    remove_upload(server, id);
    Ok(response(StatusCode::NO_CONTENT, &[], Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=2-5"), 10), Ok(Some((2, 5))));
        assert_eq!(parse_range(Some("bytes=2-"), 10), Ok(Some((2, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=1-2,4-5"), 10), Err(()));
        assert_eq!(parse_range(Some("items=1-2"), 10), Err(()));
    }
}
