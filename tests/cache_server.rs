//! End-to-end tests of `builder cache-server`: the OCI distribution API as
//! skopeo and builder's own registry client speak it, tokens, digest checks,
//! concurrent clients, restarts and the `--max-size` LRU.
//!
//! The server runs as a child process on a free loopback port. skopeo is
//! needed for the interoperability test (installed by CI; elsewhere that test
//! skips with a reason).

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cache::Digest;
use common::cache_server::Server;
use common::{BIN, TestRoot, stderr, stdout, tool_available, unique};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A response reduced to what the tests look at.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not a JSON error body: {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A minimal client: method, URL, headers, body.
fn request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let result = match body {
        Some(b) => agent.run(builder.body(b.to_vec()).unwrap()),
        None => agent.run(builder.body(()).unwrap()),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

/// A tiny registry client over [`request`], as a cache client would use it.
struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

impl Client {
    fn new(server: &Server, token: Option<&str>) -> Client {
        Client {
            agent: agent(),
            base: server.url(""),
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &self.auth {
            h.push(("Authorization", a));
        }
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        request(&self.agent, method, &url, &h, body)
    }

    /// Monolithic upload (`POST ?digest=`).
    fn push_blob_monolithic(&self, repo: &str, data: &[u8]) -> Resp {
        let d = Digest::of(data);
        self.call(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[],
            Some(data),
        )
    }

    /// POST, PATCH in chunks with Content-Range, then PUT `?digest=`.
    fn push_blob_chunked(&self, repo: &str, data: &[u8], chunk: usize, digest: &Digest) -> Resp {
        let r = self.call("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], None);
        assert_eq!(r.status, 202, "POST upload");
        let mut location = r.header("location").unwrap().to_string();
        let mut offset = 0;
        for piece in data.chunks(chunk.max(1)) {
            let range = format!("{}-{}", offset, offset + piece.len() - 1);
            let r = self.call(
                "PATCH",
                &location,
                &[
                    ("Content-Range", &range),
                    ("Content-Type", "application/octet-stream"),
                ],
                Some(piece),
            );
            assert_eq!(r.status, 202, "PATCH {range}");
            offset += piece.len();
            assert_eq!(
                r.header("range"),
                Some(format!("0-{}", offset - 1).as_str())
            );
            location = r.header("location").unwrap().to_string();
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        self.call("PUT", &format!("{location}{sep}digest={digest}"), &[], None)
    }

    fn put_manifest(&self, repo: &str, reference: &str, bytes: &[u8]) -> Resp {
        self.call(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            Some(bytes),
        )
    }

    /// Pulls `repo:tag` and checks every blob against its digest; `None` if
    /// the tag is unknown. Panics if a served manifest names a missing blob.
    fn pull_verified(&self, repo: &str, tag: &str) -> Option<Digest> {
        let r = self.call("GET", &format!("/v2/{repo}/manifests/{tag}"), &[], None);
        if r.status == 404 {
            assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
            return None;
        }
        assert_eq!(r.status, 200, "GET manifest {repo}:{tag}");
        let digest = Digest::of(&r.body);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
        let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for desc in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
            let d = desc["digest"].as_str().unwrap();
            let b = self.call("GET", &format!("/v2/{repo}/blobs/{d}"), &[], None);
            assert_eq!(
                b.status, 200,
                "blob {d} of served manifest {repo}:{tag} is gone"
            );
            assert_eq!(Digest::of(&b.body).to_string(), d, "blob content");
            assert_eq!(desc["size"].as_u64(), Some(b.body.len() as u64));
        }
        Some(digest)
    }
}

/// Random-looking bytes, different for every seed.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// An OCI manifest naming `config` and `layers` (which must be pushed).
fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |mt: &str, b: &[u8]| serde_json::json!({ "mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len() });
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Pushes `repo:k{i}` as the `--max-size` tests do: the shared 300 kB
/// `base_layer`, a 600 kB layer of its own (chunked), a config, a manifest.
fn push_entry(c: &Client, repo: &str, i: u64, base_layer: &[u8]) {
    let layer = data(i, 600_000);
    let config = format!("{{\"image\":{i}}}").into_bytes();
    assert_eq!(c.push_blob_monolithic(repo, base_layer).status, 201);
    assert_eq!(
        c.push_blob_chunked(repo, &layer, 200_000, &Digest::of(&layer))
            .status,
        201
    );
    assert_eq!(c.push_blob_monolithic(repo, &config).status, 201);
    let m = manifest(&config, &[base_layer, &layer]);
    assert_eq!(c.put_manifest(repo, &format!("k{i}"), &m).status, 201);
}

/// Sizes of the blobs in the store, checking that each matches its name.
fn store_blobs(store: &Path) -> Vec<(String, u64)> {
    let dir = store.join("blobs/sha256");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let content = fs::read(e.path()).unwrap();
        assert_eq!(
            Digest::of(&content).hex(),
            name,
            "corrupt blob in the store"
        );
        out.push((name, content.len() as u64));
    }
    out
}

fn store_size(store: &Path) -> u64 {
    fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo").args(args).output().unwrap()
}

fn skopeo_ok(args: &[&str]) -> String {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn write_tokens(t: &TestRoot) -> PathBuf {
    let path = t.path("tokens");
    fs::write(&path, "# team tokens\nro reader-token\nrw writer-token\n").unwrap();
    path
}

/// A two-layer image of random files in `t`'s store, tagged `name`.
fn local_image(t: &TestRoot, name: &str, seed: u64) -> Digest {
    let mut trees = Vec::new();
    for layer in 0..2u64 {
        let tree = t.path(&format!("tree-{}", unique()));
        fs::create_dir_all(tree.join("data")).unwrap();
        for f in 0..3u64 {
            fs::write(
                tree.join(format!("data/f{layer}-{f}")),
                data(
                    seed * 100 + layer * 10 + f,
                    if layer == 0 { 500_000 } else { 20_000 },
                ),
            )
            .unwrap();
        }
        trees.push(tree);
    }
    let refs: Vec<&Path> = trees.iter().map(|p| p.as_path()).collect();
    t.image_from_trees(name, &refs, serde_json::json!({}))
}

fn manifest_digest_of_layout(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn cache_server_skopeo_and_builder_push_pull_with_tokens_and_restart() {
    if !tool_available("skopeo") {
        return;
    }
    let t = TestRoot::new();
    let store = t.path("cache");
    let tokens = write_tokens(&t);
    let tokens_arg = tokens.to_str().unwrap();
    let server = Server::start(&store, &["--token-file", tokens_arg, "-v"]);
    let host = server.addr.clone();
    let digest = local_image(&t, "app:v1", 1);
    let src = format!("oci:{}:app:v1", t.root().display());
    let dest = format!("docker://{host}/team/app-cache:v1");

    // skopeo pushes with basic auth (any user, the token as password).
    let out = skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
    assert!(
        !out.status.success(),
        "a push without credentials must fail"
    );
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "ci:reader-token",
        &src,
        &dest,
    ]);
    assert!(
        !out.status.success(),
        "a push with a read-only token must fail"
    );
    assert!(
        Client::new(&server, Some("reader-token"))
            .pull_verified("team/app-cache", "v1")
            .is_none(),
        "a read-only token pushed nothing"
    );
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "ci:writer-token",
        &src,
        &dest,
    ]);
    let inspected: serde_json::Value = serde_json::from_str(&skopeo_ok(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "x:reader-token",
        &dest,
    ]))
    .unwrap();
    assert_eq!(
        inspected["Digest"].as_str(),
        Some(digest.to_string().as_str())
    );
    // Docker schema 2 media types are kept as pushed.
    let docker_dest = format!("docker://{host}/team/docker-format:v1");
    skopeo_ok(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        "--dest-creds",
        "ci:writer-token",
        &src,
        &docker_dest,
    ]);
    let raw = skopeo_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "x:reader-token",
        &docker_dest,
    ]);
    let raw_json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        raw_json["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let r = Client::new(&server, Some("reader-token")).call(
        "HEAD",
        "/v2/team/docker-format/manifests/v1",
        &[],
        None,
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(Digest::of(raw.as_bytes()).to_string().as_str())
    );
    let tags = skopeo_ok(&[
        "list-tags",
        "--tls-verify=false",
        "--creds",
        "x:reader-token",
        &format!("docker://{host}/team/app-cache"),
    ]);
    assert!(tags.contains("\"v1\""), "{tags}");

    // builder's own client pushes in chunks (PATCH) and pulls back.
    let digest2 = local_image(&t, "app:v2", 2);
    let cfg = t.path("docker-config");
    let mut login = t.builder();
    login
        .env("DOCKER_CONFIG", &cfg)
        .args(["login", "-u", "ci", "--password-stdin", &host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"writer-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "builder login: {}", stderr(&out));
    let out = t
        .builder()
        .env("DOCKER_CONFIG", &cfg)
        .args([
            "push",
            "--chunk-size",
            "1",
            "app:v2",
            &format!("{host}/team/builder:v2"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "builder push: {}", stderr(&out));

    // Restart: the data is kept.
    let log = server.stop();
    assert!(
        log.contains("GET /v2/ 401"),
        "one log line per request with -v:\n{log}"
    );
    assert!(
        log.contains("PATCH /v2/team/builder/blobs/uploads/"),
        "{log}"
    );
    let server = Server::start(&store, &["--token-file", tokens_arg]);
    let host = server.addr.clone();
    let pulled = t.path("pulled");
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "ci:reader-token",
        &format!("docker://{host}/team/app-cache:v1"),
        &format!("oci:{}:v1", pulled.display()),
    ]);
    assert_eq!(manifest_digest_of_layout(&pulled), digest.to_string());
    let other = TestRoot::new();
    let cfg2 = other.path("docker-config");
    fs::create_dir_all(&cfg2).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:reader-token");
    fs::write(
        cfg2.join("config.json"),
        serde_json::json!({ "auths": { host.clone(): { "auth": auth } } }).to_string(),
    )
    .unwrap();
    let out = other
        .builder()
        .env("DOCKER_CONFIG", &cfg2)
        .args(["pull", &format!("{host}/team/builder:v2")])
        .output()
        .unwrap();
    assert!(out.status.success(), "builder pull: {}", stderr(&out));
    let inspect = stdout(
        &other
            .builder()
            .args(["inspect", &format!("{host}/team/builder:v2")])
            .output()
            .unwrap(),
    );
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        inspect[0]["ManifestDigest"].as_str(),
        Some(digest2.to_string().as_str()),
        "{inspect}"
    );
    drop(server.stop());
}

#[test]
fn cache_server_tokens_401_403_and_loopback_only_without_tokens() {
    let t = TestRoot::new();
    let store = t.path("cache");
    let out = Command::new(BIN)
        .args(["cache-server", "--listen", "0.0.0.0:0", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0") && err.contains("--token-file"),
        "{err}"
    );
    let bad = t.path("bad-tokens");
    fs::write(&bad, "ro ok\nadmin x\n").unwrap();
    let out = Command::new(BIN)
        .args(["cache-server", "--listen", "127.0.0.1:0", "--store"])
        .arg(&store)
        .arg("--token-file")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}:2:", bad.display())),
        "{}",
        stderr(&out)
    );

    let tokens = write_tokens(&t);
    let server = Server::start(&store, &["--token-file", tokens.to_str().unwrap()]);
    let out = Command::new(BIN)
        .args(["cache-server", "--listen", "127.0.0.1:0", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another cache server is using the store"),
        "{}",
        stderr(&out)
    );
    let anon = Client::new(&server, None);
    let r = anon.call("GET", "/v2/", &[], None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"builder-cache\"")
    );
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    let r = Client::new(&server, Some("nope")).call("GET", "/v2/x/tags/list", &[], None);
    assert_eq!(r.status, 401);
    let ro = Client::new(&server, Some("reader-token"));
    let r = ro.call("GET", "/v2/", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let blob = data(7, 1000);
    let r = ro.push_blob_monolithic("x", &blob);
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "DENIED");
    let r = ro.put_manifest("x", "t", b"{}");
    assert_eq!(r.status, 403);
    let rw = Client::new(&server, Some("writer-token"));
    assert_eq!(rw.push_blob_monolithic("x", &blob).status, 201);
    // Basic auth: any user name, the token as password.
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("whoever:reader-token")
    );
    let r = anon.call(
        "HEAD",
        &format!("/v2/x/blobs/{}", Digest::of(&blob)),
        &[("Authorization", &basic)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    server.stop();
}

#[test]
fn cache_server_protocol_and_digest_mismatch_stores_nothing() {
    let t = TestRoot::new();
    let store = t.path("cache");
    let server = Server::start(&store, &[]);
    let c = Client::new(&server, None);
    let before = store_blobs(&store);

    // Monolithic and chunked uploads whose content does not match.
    let blob = data(1, 300_000);
    let wrong = Digest::of(b"something else");
    let r = c.call(
        "POST",
        &format!("/v2/a/b/blobs/uploads/?digest={wrong}"),
        &[],
        Some(&blob),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    let r = c.push_blob_chunked("a/b", &blob, 100_000, &wrong);
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    for d in [wrong, Digest::of(&blob)] {
        let r = c.call("HEAD", &format!("/v2/a/b/blobs/{d}"), &[], None);
        assert_eq!(r.status, 404, "{d} must not be stored");
    }
    assert_eq!(store_blobs(&store), before, "nothing stored");
    let tmp: Vec<_> = fs::read_dir(store.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "upload data discarded: {tmp:?}");

    // A chunk that does not continue the upload is refused with 416.
    let r = c.call("POST", "/v2/a/b/blobs/uploads/", &[], None);
    let loc = r.header("location").unwrap().to_string();
    let r = c.call(
        "PATCH",
        &loc,
        &[("Content-Range", "10-19")],
        Some(&blob[..10]),
    );
    assert_eq!(r.status, 416);
    assert_eq!(r.header("range"), Some("0-0"));
    let r = c.call("GET", &loc, &[], None);
    assert_eq!(r.status, 204);
    assert_eq!(c.call("DELETE", &loc, &[], None).status, 204);
    assert_eq!(c.call("GET", &loc, &[], None).status, 404);

    // A good chunked upload, Range reads, mount.
    let d = Digest::of(&blob);
    let r = c.push_blob_chunked("a/b", &blob, 70_000, &d);
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    let r = c.call(
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        &[("Range", "bytes=1000-1999")],
        None,
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &blob[1000..2000]);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/300000"));
    let r = c.call(
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        &[("Range", "bytes=-5")],
        None,
    );
    assert_eq!(r.body, &blob[blob.len() - 5..]);
    let r = c.call(
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        &[("Range", "bytes=400000-")],
        None,
    );
    assert_eq!(r.status, 416);
    let r = c.call(
        "POST",
        &format!("/v2/other/blobs/uploads/?mount={d}&from=a/b"),
        &[],
        None,
    );
    assert_eq!(r.status, 201);
    let missing = Digest::of(b"missing");
    let r = c.call(
        "POST",
        &format!("/v2/other/blobs/uploads/?mount={missing}&from=a/b"),
        &[],
        None,
    );
    assert_eq!(r.status, 202, "an unknown mount starts an upload");

    // Manifests: blobs must exist; a digest reference must match.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let m = manifest(&config, &[&blob]);
    let r = c.put_manifest("a/b", "v1", &m);
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(c.push_blob_monolithic("a/b", &config).status, 201);
    let r = c.put_manifest("a/b", &wrong.to_string(), &m);
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    let r = c.put_manifest("a/b", "v1", b"not json");
    assert_eq!(r.error_code(), "MANIFEST_INVALID");
    let r = c.put_manifest("a/b", "v1", &m);
    assert_eq!(r.status, 201);
    let md = Digest::of(&m);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(md.to_string().as_str())
    );
    for reference in ["v1".to_string(), md.to_string()] {
        let r = c.call("HEAD", &format!("/v2/a/b/manifests/{reference}"), &[], None);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(
            r.header("content-length"),
            Some(m.len().to_string().as_str())
        );
    }
    assert_eq!(c.pull_verified("a/b", "v1"), Some(md));
    assert_eq!(c.call("GET", "/v2/a/c/manifests/v1", &[], None).status, 404);
    let r = c.call("GET", "/v2/a/b/tags/list", &[], None);
    let tags: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(tags, serde_json::json!({ "name": "a/b", "tags": ["v1"] }));
    assert_eq!(
        c.call("GET", "/v2/nope/tags/list", &[], None).error_code(),
        "NAME_UNKNOWN"
    );
    assert_eq!(
        c.call("GET", "/v2/Upper/tags/list", &[], None).error_code(),
        "NAME_INVALID"
    );
    assert_eq!(
        c.call("DELETE", &format!("/v2/a/b/manifests/{md}"), &[], None)
            .status,
        202
    );
    assert_eq!(c.pull_verified("a/b", "v1"), None);
    server.stop();
}

#[test]
fn cache_server_twenty_concurrent_clients_lose_nothing() {
    let t = TestRoot::new();
    let store = t.path("cache");
    let server = Server::start(&store, &[]);
    const CLIENTS: u64 = 20;
    let shared: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..6)
            .map(|i| data(1000 + i, 400_000 + i as usize * 1000))
            .collect(),
    );
    let barrier = Arc::new(Barrier::new(CLIENTS as usize));
    let base = server.url("");
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let shared = shared.clone();
            let barrier = barrier.clone();
            let base = base.clone();
            std::thread::spawn(move || {
                let c = Client {
                    agent: agent(),
                    base,
                    auth: None,
                };
                let repo = format!("team/c{}", i % 4);
                let own = data(i, 200_000);
                let config = format!("{{\"client\":{i}}}").into_bytes();
                let picks: Vec<&[u8]> = (0..3)
                    .map(|k| shared[((i + k) % 6) as usize].as_slice())
                    .collect();
                barrier.wait();
                // Everyone uploads overlapping layers at once, half of
                // them chunked, without checking first.
                for (k, layer) in picks.iter().chain([&own.as_slice()]).enumerate() {
                    let r = if (i + k as u64) % 2 == 0 {
                        c.push_blob_monolithic(&repo, layer)
                    } else {
                        c.push_blob_chunked(&repo, layer, 64 * 1024, &Digest::of(layer))
                    };
                    assert_eq!(r.status, 201, "client {i} layer {k}");
                }
                assert_eq!(c.push_blob_monolithic(&repo, &config).status, 201);
                let mut layers = picks.clone();
                layers.push(&own);
                let m = manifest(&config, &layers);
                assert_eq!(c.put_manifest(&repo, &format!("t{i}"), &m).status, 201);
                barrier.wait();
                // Then everyone pulls everyone's image.
                for j in 0..CLIENTS {
                    let got = c.pull_verified(&format!("team/c{}", j % 4), &format!("t{j}"));
                    assert!(got.is_some(), "client {i} cannot pull t{j}");
                }
                Digest::of(&m)
            })
        })
        .collect();
    let digests: Vec<Digest> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = start.elapsed();
    eprintln!("20 clients pushed 80 layers and pulled 400 images in {elapsed:?}");
    // 6 shared + 20 own layers + 20 configs + 20 manifests, all intact.
    let blobs = store_blobs(&store);
    assert_eq!(blobs.len(), 66, "{blobs:?}");
    for d in &digests {
        assert!(blobs.iter().any(|(n, _)| *n == d.hex()));
    }
    let tmp: Vec<_> = fs::read_dir(store.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    // And all of it survives a restart.
    server.stop();
    let server = Server::start(&store, &[]);
    let c = Client::new(&server, None);
    for j in 0..CLIENTS {
        assert_eq!(
            c.pull_verified(&format!("team/c{}", j % 4), &format!("t{j}")),
            Some(digests[j as usize])
        );
    }
    server.stop();
}

#[test]
fn cache_server_max_size_evicts_least_recently_used_whole_entries() {
    let t = TestRoot::new();
    let store = t.path("cache");
    // Each image: a 600 kB layer of its own, a shared 300 kB base layer, a
    // config and a manifest; the cap holds the base and four images.
    let cap: u64 = 3_000_000;
    let server = Server::start(&store, &["--max-size", "3MB"]);
    let c = Client::new(&server, None);
    let base_layer = data(99, 300_000);
    let push = |i: u64| push_entry(&c, "cache/app", i, &base_layer);

    for i in 0..12u64 {
        push(i);
        // k0 is used all along, so it must stay.
        assert!(
            c.pull_verified("cache/app", "k0").is_some(),
            "k0 evicted after push {i}"
        );
        let size = store_size(&store);
        assert!(
            size <= cap,
            "store holds {size} bytes after push {i}, over the 3MB cap"
        );
    }
    let r = c.call("GET", "/v2/cache/app/tags/list", &[], None);
    let tags: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tags.contains(&"k0") && tags.contains(&"k11"), "{tags:?}");
    assert!(
        !tags.contains(&"k1") && !tags.contains(&"k5"),
        "oldest unused entries are evicted: {tags:?}"
    );
    assert_eq!(
        tags,
        ["k0", "k10", "k11", "k9"],
        "the cap holds four entries"
    );
    for tag in &tags {
        assert!(c.pull_verified("cache/app", tag).is_some());
    }
    assert_eq!(c.pull_verified("cache/app", "k1"), None);
    // Evicted blobs are really gone: only what listed manifests name is left.
    let blobs = store_blobs(&store);
    assert_eq!(blobs.len(), 1 + tags.len() * 3, "{blobs:?} for {tags:?}");

    // A reader keeps pulling whatever is listed while pushes evict: every
    // manifest it gets must come with all its blobs. It may be starved
    // between a manifest and its blobs (a busy CI machine) while several
    // pushes go by; the manifest's read lease keeps them (the other listed
    // entries, or the new one, go instead), as it is far longer than such
    // a stall.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pulls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let stop = stop.clone();
        let pulls = pulls.clone();
        let base = server.url("");
        std::thread::spawn(move || {
            let c = Client {
                agent: agent(),
                base,
                auth: None,
            };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c.call("GET", "/v2/cache/app/tags/list", &[], None);
                if r.status != 200 {
                    continue;
                }
                let tags: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                for tag in tags["tags"].as_array().unwrap() {
                    if c.pull_verified("cache/app", tag.as_str().unwrap())
                        .is_some()
                    {
                        pulls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // The pushes start once the reader is under way, however late its
    // thread is scheduled, so that they do race with its pulls.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pulls.load(std::sync::atomic::Ordering::Relaxed) == 0 && !reader.is_finished() {
        assert!(Instant::now() < deadline, "the reader pulls nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 12..20u64 {
        push(i);
        let size = store_size(&store);
        assert!(
            size <= cap,
            "store holds {size} bytes after push {i}, over the 3MB cap"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    assert!(pulls.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert_eq!(store_blobs(&store).len(), 13);
    let r = c.call("GET", "/v2/cache/app/tags/list", &[], None);
    let tags: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let last_pulled = tags["tags"][0].as_str().unwrap().to_string();
    assert_ne!(last_pulled, "k19");
    assert!(c.pull_verified("cache/app", &last_pulled).is_some());

    // A restart with a smaller cap evicts at once, keeping the most recent.
    server.stop();
    let server = Server::start(&store, &["--max-size", "1.2MB"]);
    let c = Client::new(&server, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store_size(&store) > 1_200_000 {
        assert!(Instant::now() < deadline, "not evicted to the new cap");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Access times were saved at shutdown: the last pulled entry stays.
    let r = c.call("GET", "/v2/cache/app/tags/list", &[], None);
    let tags: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(tags["tags"], serde_json::json!([last_pulled]));
    assert!(c.pull_verified("cache/app", &last_pulled).is_some());
    server.stop();
}

#[test]
fn cache_server_max_size_spares_the_blobs_of_a_manifest_being_read() {
    // The starved reader, made deterministic: it gets a manifest, then
    // newer entries are pushed, enough for plain LRU to evict the one it
    // read, before it fetches the blobs. The read lease (30 s) keeps them
    // while unread entries can go instead.
    let t = TestRoot::new();
    let store = t.path("cache");
    let cap: u64 = 3_000_000;
    let server = Server::start(&store, &["--max-size", "3MB"]);
    let c = Client::new(&server, None);
    let base_layer = data(99, 300_000);
    let started = Instant::now();
    push_entry(&c, "cache/app", 0, &base_layer);
    let r = c.call("GET", "/v2/cache/app/manifests/k0", &[], None);
    assert_eq!(r.status, 200);
    let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let blobs: Vec<String> = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    // A HEAD of a manifest leases it too.
    push_entry(&c, "cache/app", 1, &base_layer);
    let r = c.call("HEAD", "/v2/cache/app/manifests/k1", &[], None);
    assert_eq!(r.status, 200);
    // Six more entries: the cap holds four, so four go, k0 and k1 being
    // the least recently used of all.
    for i in 2..8u64 {
        push_entry(&c, "cache/app", i, &base_layer);
        let size = store_size(&store);
        assert!(size <= cap, "store holds {size} bytes after push {i}");
    }
    let tags = |c: &Client| {
        let r = c.call("GET", "/v2/cache/app/tags/list", &[], None);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["tags"].clone()
    };
    let leased = format!(
        "(if the test took over 30 s, {:?} here, the leases ran out)",
        started.elapsed()
    );
    assert_eq!(
        tags(&c),
        serde_json::json!(["k0", "k1", "k6", "k7"]),
        "the newer entries nobody read go first {leased}"
    );
    for d in &blobs {
        let b = c.call("GET", &format!("/v2/cache/app/blobs/{d}"), &[], None);
        assert_eq!(
            b.status, 200,
            "blob {d} of the manifest read is gone {leased}"
        );
        assert_eq!(Digest::of(&b.body).to_string(), *d);
    }
    assert!(c.pull_verified("cache/app", "k1").is_some());
    // Everything leased: the cap still holds, and the entry served longest
    // ago (k0) goes.
    assert!(c.pull_verified("cache/app", "k6").is_some());
    assert!(c.pull_verified("cache/app", "k7").is_some());
    push_entry(&c, "cache/app", 8, &base_layer);
    let size = store_size(&store);
    assert!(
        size <= cap,
        "store holds {size} bytes with every entry leased"
    );
    assert_eq!(
        tags(&c),
        serde_json::json!(["k1", "k6", "k7", "k8"]),
        "{leased}"
    );
    assert_eq!(store_blobs(&store).len(), 13);
    server.stop();
}

#[test]
fn cache_server_sigterm_finishes_the_request_in_flight() {
    use std::io::Read;
    let t = TestRoot::new();
    let server = Server::start(&t.path("cache"), &["-v"]);
    let c = Client::new(&server, None);
    let loc = c
        .call("POST", "/v2/a/blobs/uploads/", &[], None)
        .header("location")
        .unwrap()
        .to_string();
    // The first part of the body is larger than the store's write buffer
    // (256 KiB), so the server writes some of it to the upload's temp file:
    // the file growing shows that the server is inside the PATCH before the
    // signal. A fixed pause would not, on a slow machine.
    let chunk = data(5, 1_000_000);
    let first = 600_000;
    let mut conn = std::net::TcpStream::connect(&server.addr).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nContent-Range: 0-{}\r\n\r\n",
        server.addr,
        chunk.len(),
        chunk.len() - 1
    )
    .unwrap();
    conn.write_all(&chunk[..first]).unwrap();
    let tmp = t.path("cache").join("tmp");
    let upload_bytes = || -> u64 {
        fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("blob-"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while upload_bytes() == 0 {
        assert!(
            Instant::now() < deadline,
            "the server wrote none of the PATCH body within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.terminate();
    // The rest of the body goes only once the server has taken the signal,
    // so that it finishes a request that was still arriving.
    assert!(
        server.wait_for_log("shutting down", Duration::from_secs(30)),
        "the server did not start shutting down within 30 s of SIGTERM"
    );
    conn.write_all(&chunk[first..]).unwrap();
    let mut response = Vec::new();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = conn.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("range: 0-999999"),
        "{response}"
    );
    let log = server.wait();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("PATCH /v2/a/blobs/uploads/"), "{log}");
}
