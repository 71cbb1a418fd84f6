//! Shared helpers for the COPY/ADD tests: Dockerfiles compiled to real
//! [`CopyOp`]s by the frontend, file trees on temp directories, and a tiny
//! HTTP(S) server on loopback.
//!
//! The copy chowns everything it writes (context files to 0:0), so these
//! tests need root; [`require_root`] says so and skips elsewhere.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use frontend::convert::{CompileOptions, NoResolver, compile};
use frontend::dockerignore::PatternMatcher;
use frontend::graph::{CopyOp, Op};
use solver::ops::copy::{CopyContext, CopyError, CopyStats, apply_copy};
use solver::sandbox::CancelHandle;

/// Whether the test can run; prints why not otherwise.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: COPY tests chown files and need root");
    false
}

/// The COPY/ADD ops of a Dockerfile (a `FROM scratch` is added when the
/// text has no FROM), in Dockerfile order.
pub fn copy_ops(dockerfile: &str) -> Vec<CopyOp> {
    let text = if dockerfile.to_ascii_uppercase().contains("FROM ") {
        dockerfile.to_owned()
    } else {
        format!("FROM scratch\n{dockerfile}")
    };
    let compiled = compile(text.as_bytes(), &CompileOptions::default(), &NoResolver)
        .unwrap_or_else(|e| panic!("compile {text:?}: {e:?}"));
    compiled
        .graph
        .vertices()
        .filter_map(|(_, v)| match &v.op {
            Op::Copy(op) => Some((**op).clone()),
            _ => None,
        })
        .collect()
}

/// The only COPY/ADD op of a Dockerfile.
pub fn copy_op(dockerfile: &str) -> CopyOp {
    let mut ops = copy_ops(dockerfile);
    assert_eq!(ops.len(), 1, "{dockerfile}");
    ops.pop().unwrap()
}

/// Where a copy reads and writes.
pub struct Env<'a> {
    pub src: Option<&'a Path>,
    pub context: bool,
    pub ignore: Option<&'a PatternMatcher>,
    pub dest: &'a Path,
    pub lookup: Option<&'a Path>,
    pub epoch: Option<i64>,
    pub cancel: CancelHandle,
}

impl<'a> Env<'a> {
    /// Copying from a build context.
    pub fn context(src: &'a Path, dest: &'a Path) -> Self {
        Env {
            src: Some(src),
            context: true,
            ignore: None,
            dest,
            lookup: None,
            epoch: None,
            cancel: CancelHandle::new(),
        }
    }

    /// Copying from a stage or an image.
    pub fn stage(src: &'a Path, dest: &'a Path) -> Self {
        Env {
            context: false,
            ..Env::context(src, dest)
        }
    }

    pub fn apply(&self, op: &CopyOp) -> Result<CopyStats, CopyError> {
        let cx = CopyContext {
            dest_root: self.dest,
            lookup_root: self.lookup.unwrap_or(self.dest),
            src_root: self.src,
            src_is_context: self.context,
            src_ignore: self.ignore,
            cwd: "/",
            source_date_epoch: self.epoch,
            cancel: &self.cancel,
            downloads: &[],
        };
        apply_copy(op, &cx)
    }

    /// Runs every COPY/ADD of `dockerfile` in order.
    pub fn run(&self, dockerfile: &str) -> Result<(), CopyError> {
        for op in copy_ops(dockerfile) {
            self.apply(&op)?;
        }
        Ok(())
    }
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Writes `content` at `root/rel` with `mode`, creating parents.
pub fn file(root: &Path, rel: &str, content: &str, mode: u32) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

pub fn dir(root: &Path, rel: &str, mode: u32) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

pub fn link(root: &Path, rel: &str, target: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

pub fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

pub fn exists(root: &Path, rel: &str) -> bool {
    root.join(rel).symlink_metadata().is_ok()
}

pub fn mode(root: &Path, rel: &str) -> u32 {
    root.join(rel).symlink_metadata().unwrap().mode() & 0o7777
}

pub fn owner(root: &Path, rel: &str) -> (u32, u32) {
    let m = root.join(rel).symlink_metadata().unwrap();
    (m.uid(), m.gid())
}

pub fn chown(root: &Path, rel: &str, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(root.join(rel), Some(uid), Some(gid)).unwrap();
}

/// Sorted relative paths of everything under `root`, directories with a
/// trailing `/`.
pub fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// One canned answer of [`serve`].
#[derive(Clone)]
pub struct Route {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Route {
    pub fn ok(body: impl Into<Vec<u8>>) -> Route {
        Route {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn answer(stream: &mut dyn ReadWrite, routes: &HashMap<String, Route>) {
    let mut reader = BufReader::new(&mut *stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    drop(reader);
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let route = routes.get(&path).cloned().unwrap_or(Route {
        status: 404,
        headers: Vec::new(),
        body: b"not found".to_vec(),
    });
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        route.status,
        route.body.len()
    );
    for (k, v) in &route.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&route.body);
    let _ = stream.flush();
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Serves `routes` (path → answer) over plain HTTP on 127.0.0.1; returns
/// the base URL. The server thread answers only this test's requests and
/// ends with the test process.
pub fn serve(routes: Vec<(&str, Route)>) -> String {
    let routes: HashMap<String, Route> =
        routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            answer(&mut stream, &routes);
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A test CA and a server certificate for `localhost` and 127.0.0.1
/// signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

pub fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "builder test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(server_config),
    }
}

/// Serves `routes` over HTTPS with `config` on 127.0.0.1; returns the base
/// URL (`https://localhost:PORT`).
pub fn serve_tls(routes: Vec<(&str, Route)>, config: Arc<rustls::ServerConfig>) -> String {
    let routes: HashMap<String, Route> =
        routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls: rustls::StreamOwned<rustls::ServerConnection, TcpStream> =
                rustls::StreamOwned::new(conn, stream);
            answer(&mut tls, &routes);
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    format!("https://localhost:{port}")
}
