//! The HTTP side of the cache server: routing of `/v2/` paths (repository
//! names may contain slashes), token checks, and the blob, upload, manifest
//! and tag endpoints of the OCI distribution API, with its JSON errors.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher as _};
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http_body_util::BodyExt as _;
use tokio::io::AsyncReadExt as _;

use super::auth::{Access, Tokens};
use super::state::{ManifestRecord, State as Meta};
use crate::digest::Digest;
use crate::images::MEDIA_TYPE_OCI_MANIFEST;
use crate::store::{BlobWriter, StoreError};

/// Manifests larger than this are refused, as distribution does.
const MAX_MANIFEST: usize = 4 << 20;

/// Upload sessions untouched this long are dropped with their data.
const UPLOAD_IDLE: Duration = Duration::from_secs(3600);

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");

/// The shared state of all requests.
pub(crate) struct Server {
    meta: Meta,
    tokens: Option<Tokens>,
    verbose: bool,
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
    next_upload: AtomicU64,
}

/// A chunked upload in progress; its data is in the store's `tmp/`.
struct Upload {
    repo: String,
    writer: tokio::sync::Mutex<Option<BlobWriter>>,
    last_used: Mutex<Instant>,
}

impl Server {
    pub(crate) fn new(meta: Meta, tokens: Option<Tokens>, verbose: bool) -> Server {
        Server {
            meta,
            tokens,
            verbose,
            uploads: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(0),
        }
    }

    /// Evicts once now (the cap may have shrunk since the last run) and
    /// drops idle upload sessions every minute.
    pub(crate) fn evict_in_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            me.evict().await;
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                me.uploads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|_, u| {
                        u.last_used
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .elapsed()
                            < UPLOAD_IDLE
                    });
                me.evict().await;
            }
        });
    }

    /// Saves what must outlive the process (access times for the LRU).
    pub(crate) fn shutdown(&self) {
        self.meta.persist_access();
    }

    /// Runs an eviction pass if the store is over its cap.
    async fn evict(&self) {
        let Some(max) = self.meta.max_size() else {
            return;
        };
        if self.meta.total() <= max {
            return;
        }
        match tokio::task::block_in_place(|| self.meta.evict()) {
            Ok(e) if self.verbose && (e.manifests > 0 || e.blobs > 0) => eprintln!(
                "evicted {} manifests and {} blobs ({} bytes); store holds {} bytes",
                e.manifests,
                e.blobs,
                e.bytes,
                self.meta.total()
            ),
            Ok(_) => {}
            Err(e) => eprintln!("error: eviction failed: {}", chain(&e)),
        }
    }

    fn new_upload_id(&self) -> String {
        let n = self.next_upload.fetch_add(1, Ordering::Relaxed);
        let state = std::collections::hash_map::RandomState::new();
        let mut id = String::new();
        for salt in 0..2u8 {
            let mut h = state.build_hasher();
            h.write_u64(n);
            h.write_u8(salt);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            id.push_str(&format!("{:016x}", h.finish()));
        }
        id
    }
}

/// The routes of the cache server.
pub(crate) fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/{*rest}", any(dispatch))
        .layer(middleware::from_fn_with_state(server.clone(), authorize))
        .with_state(server)
}

/// An error in the distribution API's JSON form.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> ApiError {
        self.detail = Some(detail.into());
        self
    }

    fn internal(err: &dyn std::error::Error) -> ApiError {
        eprintln!("error: {}", chain(err));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "internal server error",
        )
    }

    fn blob_unknown(digest: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        )
        .detail(digest)
    }

    fn upload_unknown() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry",
        )
    }

    fn digest_invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut entry = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(detail) = self.detail {
            entry["detail"] = serde_json::Value::String(detail);
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = self.status;
        set(&mut resp, header::CONTENT_TYPE, "application/json");
        resp
    }
}

/// An error with its causes, for the log.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn set(resp: &mut Response, name: HeaderName, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        resp.headers_mut().insert(name, v);
    }
}

fn response(status: StatusCode, headers: &[(HeaderName, String)], body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (name, value) in headers {
        set(&mut resp, name.clone(), value);
    }
    resp
}

/// Checks the token (reads need one, writes a read-write one) and logs the
/// request when verbose.
async fn authorize(State(server): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let write = !matches!(method, Method::GET | Method::HEAD);
    let denied = server.tokens.as_ref().and_then(|tokens| {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match tokens.check(presented) {
            None => {
                let mut resp = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication required",
                )
                .into_response();
                set(
                    &mut resp,
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"builder-cache\"",
                );
                Some(resp)
            }
            Some(Access::ReadOnly) if write => Some(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    "requested access to the resource is denied: the token is read-only",
                )
                .into_response(),
            ),
            Some(_) => None,
        }
    });
    let mut resp = match denied {
        Some(resp) => resp,
        None => next.run(req).await,
    };
    set(&mut resp, API_VERSION, "registry/2.0");
    if server.verbose {
        eprintln!(
            "{method} {uri} {} {:.1}ms",
            resp.status().as_u16(),
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
    resp
}

async fn base() -> Response {
    response(
        StatusCode::OK,
        &[(header::CONTENT_TYPE, "application/json".into())],
        Body::from("{}"),
    )
}

/// What a path under `/v2/` names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Tags(&'a str),
    /// Repository and upload id (empty for a new upload).
    Upload(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Manifest(&'a str, &'a str),
}

fn parse_route(rest: &str) -> Option<Route<'_>> {
    let split_tail = |suffix: &str| {
        rest.strip_suffix(suffix)
            .and_then(|name| name.strip_suffix('/'))
            .filter(|name| !name.is_empty())
    };
    if let Some(name) = split_tail("tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = split_tail("blobs/uploads/").or_else(|| split_tail("blobs/uploads")) {
        return Some(Route::Upload(name, ""));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    if name.is_empty() || last.is_empty() {
        return None;
    }
    match kind {
        "blobs" => Some(Route::Blob(name, last)),
        "manifests" => Some(Route::Manifest(name, last)),
        "uploads" => {
            let name = name.strip_suffix("/blobs").filter(|n| !n.is_empty())?;
            Some(Route::Upload(name, last))
        }
        _ => None,
    }
}

/// A repository name as the distribution spec allows: slash-separated
/// components of lowercase letters and digits joined by `.`, `_`, `__` or
/// dashes.
fn valid_name(name: &str) -> bool {
    name.len() <= 255
        && name.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&ch| {
                    ch.is_ascii_digit() || ch.is_ascii_lowercase() || b"._-".contains(&ch)
                })
                && !c.contains("..")
        })
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&ch| ch.is_ascii_alphanumeric() || b"._-".contains(&ch))
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::digest_invalid(e.to_string()).detail(s))
}

async fn dispatch(
    State(server): State<Arc<Server>>,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match parse_route(&rest) {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint /v2/{rest}"),
        )),
        Some(route) => {
            let name = match &route {
                Route::Tags(n)
                | Route::Upload(n, _)
                | Route::Blob(n, _)
                | Route::Manifest(n, _) => *n,
            };
            if !valid_name(name) {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "NAME_INVALID",
                    "invalid repository name",
                )
                .detail(name))
            } else {
                handle(&server, route, &method, &query, &headers, body).await
            }
        }
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(
    server: &Server,
    route: Route<'_>,
    method: &Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let unsupported = || {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not supported here"),
        ))
    };
    let uses_body = matches!(
        (&route, method),
        (
            Route::Upload(..),
            &Method::POST | &Method::PATCH | &Method::PUT
        ) | (Route::Manifest(..), &Method::PUT)
    );
    // Handlers take the body when they read it; what they leave (an early
    // error, a request that should have none) is drained below so that the
    // connection can be reused.
    let mut body = Some(body);
    if !uses_body {
        drain(body.take().unwrap_or_default()).await;
    }
    let body = &mut body;
    let result = match (route, method.clone()) {
        (Route::Tags(name), Method::GET) => tags_list(server, name, query),
        (Route::Blob(_, digest), Method::GET | Method::HEAD) => {
            get_blob(server, digest, *method == Method::HEAD, headers).await
        }
        (Route::Upload(name, ""), Method::POST) => start_upload(server, name, query, body).await,
        (Route::Upload(name, id), Method::PATCH) => {
            patch_upload(server, name, id, headers, body).await
        }
        (Route::Upload(name, id), Method::PUT) => put_upload(server, name, id, query, body).await,
        (Route::Upload(name, id), Method::GET) => upload_status(server, name, id).await,
        (Route::Upload(name, id), Method::DELETE) => cancel_upload(server, name, id),
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            get_manifest(server, name, reference, *method == Method::HEAD)
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            put_manifest(server, name, reference, headers, body).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            delete_manifest(server, name, reference)
        }
        _ => unsupported(),
    };
    if let Some(rest) = body.take() {
        drain(rest).await;
    }
    result
}

fn tags_list(
    server: &Server,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let Some(mut tags) = server.meta.tags(name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        )
        .detail(name));
    };
    if let Some(last) = query.get("last") {
        tags.retain(|t| t.as_str() > last.as_str());
    }
    if let Some(n) = query.get("n").and_then(|n| n.parse::<usize>().ok()) {
        tags.truncate(n);
    }
    let body = serde_json::json!({ "name": name, "tags": tags }).to_string();
    Ok(response(
        StatusCode::OK,
        &[(header::CONTENT_TYPE, "application/json".into())],
        Body::from(body),
    ))
}

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

async fn get_blob(
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

/// Reads and drops a body that a request should not have had (or that is
/// not needed): hyper reuses a connection only once the request body was
/// read, and closes it otherwise.
async fn drain(mut body: Body) {
    let mut left: usize = 1 << 20;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            left = left.saturating_sub(data.len());
            if left == 0 {
                return;
            }
        }
    }
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

async fn start_upload(
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

async fn patch_upload(
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

async fn put_upload(
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

async fn upload_status(server: &Server, name: &str, id: &str) -> Result<Response, ApiError> {
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

fn cancel_upload(server: &Server, name: &str, id: &str) -> Result<Response, ApiError> {
    find_upload(server, name, id)?;
    remove_upload(server, id);
    Ok(response(StatusCode::NO_CONTENT, &[], Body::empty()))
}

fn manifest_unknown(reference: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        "manifest unknown",
    )
    .detail(reference)
}

fn get_manifest(
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

async fn put_manifest(
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

fn delete_manifest(server: &Server, name: &str, reference: &str) -> Result<Response, ApiError> {
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
    fn routes_names_with_slashes() {
        assert_eq!(parse_route("a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            parse_route("a/b/blobs/uploads/"),
            Some(Route::Upload("a/b", ""))
        );
        assert_eq!(parse_route("a/blobs/uploads"), Some(Route::Upload("a", "")));
        assert_eq!(
            parse_route("a/b/blobs/uploads/x1"),
            Some(Route::Upload("a/b", "x1"))
        );
        assert_eq!(
            parse_route("a/b/c/blobs/sha256:00"),
            Some(Route::Blob("a/b/c", "sha256:00"))
        );
        assert_eq!(
            parse_route("blobs/manifests/latest"),
            Some(Route::Manifest("blobs", "latest"))
        );
        assert_eq!(parse_route("manifests/latest"), None);
        assert_eq!(parse_route("a/other/x"), None);
    }

    #[test]
    fn names_and_tags_follow_the_spec() {
        assert!(valid_name("team/app-cache"));
        assert!(valid_name("a.b_c/d__e"));
        assert!(!valid_name("Team/app"));
        assert!(!valid_name("a//b"));
        assert!(!valid_name("a/../b"));
        assert!(!valid_name("-a"));
        assert!(valid_tag("v1.2_3-x"));
        assert!(!valid_tag(".hidden"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

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
