//! The HTTP side of the cache server: routing of `/v2/` paths (repository
//! names may contain slashes), token checks, the distribution API's JSON
//! errors and the tag list; blobs and uploads are in [`blobs`], manifests in
//! [`manifests`].

mod blobs;
mod manifests;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher as _};
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

use super::auth::{Access, Tokens};
use super::state::State as Meta;
use crate::digest::Digest;
use crate::store::BlobWriter;

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
            blobs::get_blob(server, digest, *method == Method::HEAD, headers).await
        }
        (Route::Upload(name, ""), Method::POST) => {
            blobs::start_upload(server, name, query, body).await
        }
        (Route::Upload(name, id), Method::PATCH) => {
            blobs::patch_upload(server, name, id, headers, body).await
        }
        (Route::Upload(name, id), Method::PUT) => {
            blobs::put_upload(server, name, id, query, body).await
        }
        (Route::Upload(name, id), Method::GET) => blobs::upload_status(server, name, id).await,
        (Route::Upload(name, id), Method::DELETE) => blobs::cancel_upload(server, name, id),
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            manifests::get_manifest(server, name, reference, *method == Method::HEAD)
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            manifests::put_manifest(server, name, reference, headers, body).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            manifests::delete_manifest(server, name, reference)
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
}
