//! HTTP to registries: endpoints, retries with backoff, and authentication.
//!
//! Every request goes through [`Client::send`]: it adds the endpoint's current
//! `Authorization`, answers a 401 once by following its `WWW-Authenticate`
//! challenge (a bearer token from the realm, anonymous or with the stored
//! credentials, or basic auth), and retries 408/429/5xx answers and transport
//! failures (refused or dropped connections, timeouts) with exponential
//! backoff. Bodies are described, not consumed ([`ReqBody`]), so that a retry
//! sends them again from the start (files are reopened at their offset).
//!
//! Schemes follow docker: loopback registries (`localhost`, 127.0.0.0/8,
//! `[::1]`) speak plain HTTP; registries named `--insecure-registry` are
//! tried with HTTPS without certificate verification, then plain HTTP;
//! all others use verified HTTPS.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ureq::http::{self, Response};
use ureq::tls::TlsConfig;
use ureq::{Agent, Body, SendBody};

use super::credentials::{self, Credentials};
use super::{Platform, RegistryError, is_retry_status};

/// What a client does beyond the defaults.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Hosts (`host` or `host:port`) reached over HTTP or unverified HTTPS.
    pub insecure: Vec<String>,
    /// The platform picked from multi-platform images.
    pub platform: Platform,
    /// How often a failed request is tried again.
    pub retries: u32,
    /// The first wait before a retry; it doubles with each one.
    pub backoff: Duration,
    /// Blobs transferred at once.
    pub jobs: usize,
    /// Upload blobs larger than this in chunks of this size (PATCH with
    /// `Content-Range`); `None` uploads each blob in one PUT.
    pub chunk_size: Option<u64>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            platform: Platform::default(),
            retries: 4,
            backoff: Duration::from_millis(250),
            jobs: 4,
            chunk_size: None,
        }
    }
}

/// The body of a request, re-created for every attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReqBody<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
}

/// One request to a registry.
#[derive(Debug, Clone)]
pub(crate) struct Req<'a> {
    pub(crate) method: &'static str,
    pub(crate) url: String,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: ReqBody<'a>,
    /// Token scopes the request needs (`repository:NAME:pull,push`).
    pub(crate) scopes: Vec<String>,
}

impl<'a> Req<'a> {
    pub(crate) fn new(method: &'static str, url: String, scopes: &[String]) -> Req<'a> {
        Req {
            method,
            url,
            headers: Vec::new(),
            body: ReqBody::Empty,
            scopes: scopes.to_vec(),
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn body(mut self, body: ReqBody<'a>) -> Self {
        self.body = body;
        self
    }
}

#[derive(Default)]
struct AuthState {
    /// The `Authorization` header value in use.
    header: Option<String>,
    /// Every scope asked for so far: a new token covers them all, so that
    /// requests for different repositories do not take turns re-authenticating.
    scopes: BTreeSet<String>,
}

/// One registry as this process talks to it.
pub struct Endpoint {
    /// The registry as references name it (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// `scheme://host[:port]`, without a trailing slash.
    base: Mutex<String>,
    /// Whether plain HTTP may replace HTTPS after a transport failure.
    insecure: bool,
    auth: Mutex<AuthState>,
    credentials: OnceLock<Option<Credentials>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.registry)
    }
}

impl Endpoint {
    /// An absolute URL for `path` (`/v2/...`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.lock().unwrap())
    }

    /// An upload `Location`, which may be relative, made absolute.
    pub(crate) fn location(&self, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else if loc.starts_with('/') {
            self.url(loc)
        } else {
            self.url(&format!("/{loc}"))
        }
    }

    fn stored_credentials(&self) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = self.credentials.get() {
            return Ok(c.clone());
        }
        let c = credentials::lookup(&self.registry)?;
        Ok(self.credentials.get_or_init(|| c).clone())
    }
}

/// A registry client shared by the transfers of one command.
pub struct Client {
    pub(crate) opts: RegistryOptions,
    agent: Agent,
    insecure_agent: Agent,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("opts", &self.opts).finish()
    }
}

/// Whether a registry host is on the loopback interface.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn agent(insecure: bool) -> Agent {
    let mut tls = TlsConfig::builder();
    if insecure {
        tls = tls.disable_verification(true);
    }
    Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls.build())
        .user_agent(concat!("builder/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(300)))
        .max_idle_connections_per_host(16)
        .build()
        .new_agent()
}

impl Client {
    pub fn new(opts: RegistryOptions) -> Client {
        Client {
            opts,
            agent: agent(false),
            insecure_agent: agent(true),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The endpoint of a registry, created on first use.
    pub fn endpoint(&self, registry: &str) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock().unwrap();
        endpoints
            .entry(registry.to_string())
            .or_insert_with(|| {
                let insecure = self.is_insecure(registry);
                let host = if registry == "docker.io" {
                    "registry-1.docker.io"
                } else {
                    registry
                };
                let scheme = if is_loopback(registry) {
                    "http"
                } else {
                    "https"
                };
                Arc::new(Endpoint {
                    registry: registry.to_string(),
                    base: Mutex::new(format!("{scheme}://{host}")),
                    insecure,
                    auth: Mutex::new(AuthState::default()),
                    credentials: OnceLock::new(),
                })
            })
            .clone()
    }

    /// Uses `creds` for `registry` instead of the stored ones (for `login`).
    pub fn set_credentials(&self, registry: &str, creds: Credentials) {
        let ep = self.endpoint(registry);
        let _ = ep.credentials.set(Some(creds));
    }

    fn is_insecure(&self, registry: &str) -> bool {
        let host = registry.split(':').next().unwrap_or(registry);
        self.opts
            .insecure
            .iter()
            .any(|h| h == registry || h == host)
    }

    fn agent_for(&self, ep: &Endpoint) -> &Agent {
        if ep.insecure {
            &self.insecure_agent
        } else {
            &self.agent
        }
    }

    /// Sends a request: authenticates on a 401 and retries transient failures.
    /// Returns the final response whatever its status (see [`check`]).
    pub(crate) fn send(
        &self,
        ep: &Endpoint,
        req: &Req<'_>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            match self.send_once(ep, req) {
                Ok(resp) if resp.status() == 401 && !authenticated => {
                    authenticated = true;
                    let challenge = header(&resp, "www-authenticate");
                    self.authenticate(ep, challenge.as_deref(), &req.scopes)?;
                }
                Ok(resp)
                    if is_retry_status(resp.status().as_u16()) && attempt < self.opts.retries =>
                {
                    self.pause(attempt);
                    attempt += 1;
                }
                Ok(resp) => return Ok(resp),
                Err(e) if attempt < self.opts.retries && retryable(&e) => {
                    if ep.insecure {
                        let mut base = ep.base.lock().unwrap();
                        if let Some(rest) = base.strip_prefix("https://") {
                            *base = format!("http://{rest}");
                            drop(base);
                            attempt += 1;
                            continue;
                        }
                    }
                    self.pause(attempt);
                    attempt += 1;
                }
                Err(e) => {
                    return Err(RegistryError::Unreachable {
                        registry: ep.registry.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
    }

    pub(crate) fn pause(&self, attempt: u32) {
        std::thread::sleep(self.opts.backoff * 2u32.saturating_pow(attempt.min(6)));
    }

    fn send_once(&self, ep: &Endpoint, req: &Req<'_>) -> Result<Response<Body>, ureq::Error> {
        // The URL may have been built before a switch to plain HTTP.
        let url = {
            let base = ep.base.lock().unwrap();
            if base.starts_with("http://") && req.url.starts_with("https://") {
                let rest = &req.url["https://".len()..];
                if base.ends_with(rest.split('/').next().unwrap_or("")) {
                    format!("http://{rest}")
                } else {
                    req.url.clone()
                }
            } else {
                req.url.clone()
            }
        };
        let mut builder = http::Request::builder().method(req.method).uri(&url);
        for (k, v) in &req.headers {
            builder = builder.header(*k, v);
        }
        if let Some(auth) = ep.auth.lock().unwrap().header.clone() {
            // Only to the registry itself: a redirect to storage must not
            // carry it (ureq drops it on redirects by default).
            if url.starts_with(ep.base.lock().unwrap().as_str()) {
                builder = builder.header("authorization", auth);
            }
        }
        let agent = self.agent_for(ep);
        match req.body {
            ReqBody::Empty => {
                if matches!(req.method, "PUT" | "POST" | "PATCH") {
                    builder = builder.header("content-length", "0");
                }
                agent.run(builder.body(SendBody::none())?)
            }
            ReqBody::Bytes(bytes) => {
                builder = builder.header("content-length", bytes.len().to_string());
                let mut reader: &[u8] = bytes;
                agent.run(builder.body(SendBody::from_reader(&mut reader))?)
            }
            ReqBody::File { path, offset, len } => {
                let mut file = File::open(path)?;
                file.seek(SeekFrom::Start(offset))?;
                builder = builder.header("content-length", len.to_string());
                let reader = file.take(len);
                agent.run(builder.body(SendBody::from_owned_reader(reader))?)
            }
        }
    }

    /// Follows a `WWW-Authenticate` challenge; afterwards requests carry the
    /// resulting `Authorization`.
    fn authenticate(
        &self,
        ep: &Endpoint,
        challenge: Option<&str>,
        scopes: &[String],
    ) -> Result<(), RegistryError> {
        let creds = ep.stored_credentials()?;
        let unauthorized = |creds: &Option<Credentials>| RegistryError::Unauthorized {
            registry: ep.registry.clone(),
            hint: if creds.is_some() {
                " and refused the stored credentials".to_string()
            } else {
                String::new()
            },
        };
        let Some((scheme, params)) = challenge.map(parse_challenge) else {
            return Err(unauthorized(&creds));
        };
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(c) = &creds else {
                return Err(unauthorized(&creds));
            };
            ep.auth.lock().unwrap().header = Some(basic(c));
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthorized(&creds));
        }
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let Some(realm) = param("realm") else {
            return Err(unauthorized(&creds));
        };
        let all_scopes: Vec<String> = {
            let mut state = ep.auth.lock().unwrap();
            state.scopes.extend(scopes.iter().cloned());
            if let Some(s) = param("scope") {
                state.scopes.extend(s.split(' ').map(str::to_string));
            }
            state.scopes.iter().cloned().collect()
        };
        let mut url = realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(service) = param("service") {
            url.push_str(&format!("{sep}service={}", query_escape(&service)));
            sep = '&';
        }
        for s in &all_scopes {
            url.push_str(&format!("{sep}scope={}", query_escape(s)));
            sep = '&';
        }
        let token = self.fetch_token(ep, &realm, &url, creds.as_ref())?;
        let Some(token) = token else {
            return Err(unauthorized(&creds));
        };
        ep.auth.lock().unwrap().header = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// Gets a token from the realm; `None` when the realm refuses.
    fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        url: &str,
        creds: Option<&Credentials>,
    ) -> Result<Option<String>, RegistryError> {
        let mut attempt = 0;
        let mut resp = loop {
            let mut builder = http::Request::builder().method("GET").uri(url);
            if let Some(c) = creds {
                builder = builder.header("authorization", basic(c));
            }
            let request = builder
                .body(SendBody::none())
                .map_err(|e| RegistryError::Token {
                    realm: realm.to_string(),
                    source: Box::new(e),
                })?;
            match self.agent_for(ep).run(request) {
                Ok(r) if is_retry_status(r.status().as_u16()) && attempt < self.opts.retries => {}
                Ok(r) => break r,
                Err(e) if attempt < self.opts.retries && retryable(&e) => {}
                Err(e) => {
                    return Err(RegistryError::Unreachable {
                        registry: realm.to_string(),
                        source: Box::new(e),
                    });
                }
            }
            self.pause(attempt);
            attempt += 1;
        };
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Ok(None);
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| RegistryError::Token {
                realm: realm.to_string(),
                source: Box::new(e),
            })?;
        if !(200..300).contains(&status) {
            return Err(RegistryError::Status {
                registry: ep.registry.clone(),
                method: "GET".into(),
                url: realm.to_string(),
                status,
                body: snippet(&body),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer =
            serde_json::from_str(&body).map_err(|e| RegistryError::Token {
                realm: realm.to_string(),
                source: Box::new(e),
            })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .map(Some)
            .ok_or_else(|| RegistryError::Token {
                realm: realm.to_string(),
                source: "the answer has no token".into(),
            })
    }

    /// Checks that the registry answers and accepts our credentials: `GET /v2/`.
    pub fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let ep = self.endpoint(registry);
        let req = Req::new("GET", ep.url("/v2/"), &[]);
        let resp = self.send(&ep, &req)?;
        check(resp, &ep, &req, || "the registry API (/v2/)".into(), "pull")?;
        Ok(())
    }
}

fn basic(c: &Credentials) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{}:{}", c.username, c.secret))
    )
}

/// Whether a transport error may go away when the request is tried again
/// (not an unknown host: no network or a typo, and retrying only delays
/// the error).
fn retryable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
            | ureq::Error::Tls(_)
            | ureq::Error::Rustls(_)
    )
}

pub(crate) fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Splits `Bearer realm="x",service="y",scope="a:b:pull,push"` into the
/// scheme and its parameters (quoted values may hold commas).
pub(crate) fn parse_challenge(s: &str) -> (String, Vec<(String, String)>) {
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((name.trim().to_string(), value));
    }
    (scheme.to_string(), params)
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Maps a final response to an error unless it is a success. `what` names
/// the missing thing for a 404; `action` is `pull` or `push` for a 403.
pub(crate) fn check(
    mut resp: Response<Body>,
    ep: &Endpoint,
    req: &Req<'_>,
    what: impl FnOnce() -> String,
    action: &'static str,
) -> Result<Response<Body>, RegistryError> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let repository = what();
    match status {
        401 => Err(RegistryError::Unauthorized {
            registry: ep.registry.clone(),
            hint: if ep.credentials.get().is_some_and(Option::is_some) {
                " and refused the stored credentials".into()
            } else {
                String::new()
            },
        }),
        403 => Err(RegistryError::Forbidden {
            registry: ep.registry.clone(),
            repository,
            action,
        }),
        404 => Err(RegistryError::NotFound {
            registry: ep.registry.clone(),
            what: repository,
        }),
        _ => {
            let body = resp
                .body_mut()
                .with_config()
                .limit(64 << 10)
                .read_to_string()
                .unwrap_or_default();
            Err(RegistryError::Status {
                registry: ep.registry.clone(),
                method: req.method.to_string(),
                url: req.url.clone(),
                status,
                body: snippet(&body),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_keep_commas_inside_quotes() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params[0].1, "Registry Realm");
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for r in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.4.5",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["docker.io", "10.0.0.1:5000", "localhost.example:5000"] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn locations_are_made_absolute() {
        let c = Client::new(RegistryOptions::default());
        let ep = c.endpoint("127.0.0.1:5000");
        assert_eq!(
            ep.location("/v2/x/blobs/uploads/u?_state=s"),
            "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=s"
        );
        assert_eq!(ep.location("https://s3/x"), "https://s3/x");
        assert_eq!(
            c.endpoint("docker.io").url("/v2/"),
            "https://registry-1.docker.io/v2/"
        );
    }
}
