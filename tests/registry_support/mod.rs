//! Registries for the registry tests: Debian's `docker-registry` on a free
//! loopback port (plain, or with htpasswd basic auth), and a small HTTP
//! proxy in front of one that can play a bearer-token server (the
//! `WWW-Authenticate: Bearer` flow of Docker Hub), flip bytes of blobs
//! (a tampering mirror), or answer 503 to the first requests.
//!
//! Everything listens on 127.0.0.1 only and is stopped when dropped.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Whether the registry binary is here; panics under CI when it is not.
pub(crate) fn registry_available() -> bool {
    let ok = Path::new("/usr/bin/docker-registry").exists();
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but /usr/bin/docker-registry is missing");
        }
        eprintln!(
            "skipping: /usr/bin/docker-registry is missing (apt-get install docker-registry)"
        );
    }
    ok
}

/// Whether `htpasswd` (apache2-utils) is here; panics under CI when it is not.
pub(crate) fn htpasswd_available() -> bool {
    let ok = Command::new("htpasswd")
        .args(["-Bbn", "u", "p"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but htpasswd (apache2-utils) is missing");
        }
        eprintln!("skipping: htpasswd is missing (apt-get install apache2-utils)");
    }
    ok
}

/// Held from choosing a port for a registry until that registry listens on
/// it, and while a proxy takes its port: the tests of a binary run in
/// parallel, and between `free_port` closing its socket and the registry
/// binding the port, another registry or proxy of this binary could get the
/// same one.
static PORTS: Mutex<()> = Mutex::new(());

fn lock_ports() -> MutexGuard<'static, ()> {
    // A test that panicked while holding it left nothing half done.
    PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port that was free a moment ago; hold `lock_ports()` until it is bound.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The inodes of the TCP sockets listening on `port` (of any address).
fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 0A: TCP_LISTEN.
            if local_port == Some(port) && *state == "0A" {
                out.push((*inode).to_string());
            }
        }
    }
    out
}

/// Whether process `pid` holds a socket listening on `port`: a connection
/// that succeeds shows only that something listens there, which may be
/// another test's server that took the port first (ours then fails to bind
/// and exits).
fn listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        // Where /proc hides sockets (some sandboxes), the check cannot be
        // made: a running registry and a connection must do.
        return true;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|inode| inodes.iter().any(|i| i == inode))
        })
    })
}

/// A running `docker-registry`.
pub(crate) struct Registry {
    pub(crate) port: u16,
    pub(crate) storage: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// A registry without authentication.
    pub(crate) fn plain() -> Registry {
        Registry::start(None)
    }

    /// A registry with basic auth for `user` / `password` (`htpasswd -B`).
    pub(crate) fn with_basic_auth(user: &str, password: &str) -> Registry {
        Registry::start(Some((user, password)))
    }

    fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).unwrap();
        let mut auth_yaml = String::new();
        if let Some((user, password)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils) is needed for the basic-auth registry");
            assert!(out.status.success(), "htpasswd failed");
            fs::write(&htpasswd, &out.stdout).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htpasswd.display()
            );
        }
        // A few tries: the port may be taken between choosing and binding
        // (by a process outside this binary, which the lock cannot stop).
        let mut tries = Vec::new();
        for _ in 0..5 {
            let ports = lock_ports();
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                    storage.display()
                ),
            )
            .unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.path().join("registry.log")).unwrap())
                .spawn()
                .expect("cannot start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut outcome = format!("port {port}: not listening after 15 s");
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    outcome = format!("port {port}: exited ({status})");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    if !listens_on(child.id(), port) {
                        // Someone else answered: this port is taken.
                        outcome = format!("port {port}: another process listens there");
                        break;
                    }
                    drop(ports);
                    return Registry {
                        port,
                        storage,
                        child,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            tries.push(outcome);
        }
        let log = fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!(
            "docker-registry did not start ({}); the last one's log:\n{log}",
            tries.join("; ")
        );
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes of all files in the registry's storage.
    pub(crate) fn storage_bytes(&self) -> u64 {
        dir_bytes(&self.storage)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            total += dir_bytes(&e.path());
        } else {
            total += meta.len();
        }
    }
    total
}

/// What the proxy does besides forwarding.
#[derive(Clone)]
pub(crate) enum Mode {
    /// Forward only.
    Forward,
    /// Flip a byte in the body of every blob it serves.
    TamperBlobs,
    /// Answer the first `n` blob GETs with 503.
    FailBlobs(usize),
    /// Cut the connection halfway through the body of the first `n` blob GETs.
    DropBlobs(usize),
    /// Require `Authorization: Bearer <token>` for `/v2/…`, handing out
    /// tokens at `/token` (to anyone, or only to `user:password`).
    Bearer {
        token: String,
        user: Option<(String, String)>,
    },
}

/// A proxy on 127.0.0.1 in front of a registry.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    stop: Arc<AtomicBool>,
    /// Requests handled, token requests, and 503s served.
    pub(crate) requests: Arc<AtomicUsize>,
    pub(crate) tokens: Arc<AtomicUsize>,
    pub(crate) failures: Arc<AtomicUsize>,
}

impl Proxy {
    pub(crate) fn start(upstream: u16, mode: Mode) -> Proxy {
        // Not a port a registry of this binary has chosen and not bound yet.
        let listener = {
            let _ports = lock_ports();
            TcpListener::bind("127.0.0.1:0").unwrap()
        };
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let tokens = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            upstream,
            port,
            mode,
            requests: requests.clone(),
            tokens: tokens.clone(),
            failures: failures.clone(),
        });
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let state = state.clone();
                        std::thread::spawn(move || {
                            let _ = state.handle(conn);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            stop,
            requests,
            tokens,
            failures,
        }
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct State {
    upstream: u16,
    port: u16,
    mode: Mode,
    requests: Arc<AtomicUsize>,
    tokens: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request or status line and its headers.
type Head = (String, Vec<(String, String)>);

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    to_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

impl State {
    fn handle(&self, conn: TcpStream) -> std::io::Result<()> {
        conn.set_nonblocking(false)?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut conn = conn;
        let Some((first, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let body = read_body(&mut reader, &headers, false)?;
        let req = Request {
            method,
            path,
            headers,
            body,
        };
        self.requests.fetch_add(1, Ordering::SeqCst);
        let is_blob_get = req.method == "GET" && req.path.contains("/blobs/sha256:");

        if let Mode::Bearer { token, user } = &self.mode {
            if req.path.starts_with("/token") {
                self.tokens.fetch_add(1, Ordering::SeqCst);
                if let Some((u, p)) = user {
                    let expected = format!("Basic {}", base64(format!("{u}:{p}").as_bytes()));
                    if req.header("authorization") != Some(expected.as_str()) {
                        return respond(
                            &mut conn,
                            "401 Unauthorized",
                            &[],
                            b"{\"details\":\"bad credentials\"}",
                        );
                    }
                }
                let body = format!("{{\"token\":\"{token}\",\"expires_in\":300}}");
                return respond(
                    &mut conn,
                    "200 OK",
                    &[("Content-Type", "application/json".into())],
                    body.as_bytes(),
                );
            }
            if req.header("authorization") != Some(format!("Bearer {token}").as_str()) {
                let mut challenge = format!(
                    "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"test-registry\"",
                    self.port
                );
                if let Some(repo) = repository_of(&req.path) {
                    let action = if req.method == "GET" || req.method == "HEAD" {
                        "pull"
                    } else {
                        "pull,push"
                    };
                    challenge.push_str(&format!(",scope=\"repository:{repo}:{action}\""));
                }
                return respond(
                    &mut conn,
                    "401 Unauthorized",
                    &[
                        ("Www-Authenticate", challenge),
                        ("Content-Type", "application/json".into()),
                    ],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                );
            }
        }
        if let Mode::FailBlobs(n) = &self.mode {
            if is_blob_get && self.failures.fetch_add(1, Ordering::SeqCst) < *n {
                return respond(&mut conn, "503 Service Unavailable", &[], b"try again");
            } else if is_blob_get {
                self.failures.fetch_sub(1, Ordering::SeqCst);
            }
        }

        // Forward, with the registry's answer read whole.
        let mut up = TcpStream::connect(("127.0.0.1", self.upstream))?;
        let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
        for (k, v) in &req.headers {
            let k_l = k.to_ascii_lowercase();
            if matches!(
                k_l.as_str(),
                "connection" | "content-length" | "transfer-encoding" | "authorization"
            ) {
                continue;
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            req.body.len()
        ));
        up.write_all(head.as_bytes())?;
        up.write_all(&req.body)?;
        up.flush()?;
        let mut up_reader = BufReader::new(up);
        let Some((status_line, up_headers)) = read_head(&mut up_reader)? else {
            return Ok(());
        };
        let status = status_line
            .split_once(' ')
            .map_or("502 Bad Gateway", |(_, s)| s)
            .to_string();
        let is_head = req.method == "HEAD";
        let mut body = if is_head {
            Vec::new()
        } else {
            read_body(&mut up_reader, &up_headers, true)?
        };
        if let Mode::DropBlobs(n) = &self.mode {
            if is_blob_get && body.len() > 1 && self.failures.fetch_add(1, Ordering::SeqCst) < *n {
                let out = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                conn.write_all(out.as_bytes())?;
                conn.write_all(&body[..body.len() / 2])?;
                conn.flush()?;
                return conn.shutdown(std::net::Shutdown::Both);
            } else if is_blob_get && body.len() > 1 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if matches!(self.mode, Mode::TamperBlobs)
            && is_blob_get
            && status.starts_with("200")
            && !body.is_empty()
        {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let mut out = format!("HTTP/1.1 {status}\r\n");
        for (k, v) in &up_headers {
            let k_l = k.to_ascii_lowercase();
            if matches!(k_l.as_str(), "connection" | "transfer-encoding")
                || (k_l == "content-length" && !is_head)
            {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !is_head {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        conn.write_all(out.as_bytes())?;
        conn.write_all(&body)?;
        conn.flush()
    }
}

/// `/v2/a/b/manifests/x` → `a/b`.
fn repository_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    for marker in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(i) = rest.find(marker) {
            return Some(rest[..i].to_string());
        }
    }
    None
}

/// Standard base64 with padding (for basic auth).
pub(crate) fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
