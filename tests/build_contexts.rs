//! Build inputs other than a local directory, end to end, as root: a
//! context tar on stdin (plain and every compression) or a plain
//! Dockerfile there, a context tarball served over
//! HTTP by a server in the test, git contexts from a local repository
//! (`file://…/repo.git#branch:subdir`, `.git` dropped unless
//! `BUILDKIT_CONTEXT_KEEP_GIT_DIR=1`), and `ADD <git url>` with and without
//! `--keep-git-dir`. Remote contexts leave nothing in `ROOT/tmp`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{TestRoot, sandbox_available, stderr, tool_available, unique};
use serde_json::json;

const DOCKERFILE: &str = "FROM base\nCOPY . /ctx/\n";

/// A context directory with a Dockerfile copying everything to `/ctx`.
fn context(t: &TestRoot) -> PathBuf {
    t.context(&[
        ("Dockerfile", DOCKERFILE),
        ("hello.txt", "hello from the context\n"),
        ("sub/nested.txt", "nested\n"),
        (
            "sub/Dockerfile.alt",
            "FROM base\nCOPY sub/nested.txt /alt.txt\n",
        ),
    ])
}

/// `tar FLAG -cf OUT -C DIR .`
fn tar(dir: &Path, out: &Path, flag: &str) {
    let mut c = Command::new("tar");
    if !flag.is_empty() {
        c.arg(flag);
    }
    let status = c
        .arg("-cf")
        .arg(out)
        .args(["--owner=0", "--group=0", "-C"])
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar {flag} failed");
}

/// `builder build -o type=local,dest=OUT ARGS CONTEXT` with `stdin` as its
/// standard input; returns OUT.
fn build_to(t: &TestRoot, context: &str, args: &[&str], stdin: Option<&Path>) -> PathBuf {
    let out = t.path(&format!("out-{}", unique()));
    let mut c = t.builder();
    c.args(["build", "--progress=plain", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .args(args)
        .arg(context);
    if let Some(f) = stdin {
        c.stdin(Stdio::from(fs::File::open(f).unwrap()));
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "build {context} {args:?} failed with {}\nstderr: {}",
        o.status,
        stderr(&o)
    );
    out
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Nothing of a prepared context is left under `ROOT/tmp`.
fn no_context_left(t: &TestRoot) {
    let tmp = t.root().join("tmp");
    let left: Vec<String> = fs::read_dir(&tmp)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("context-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
}

fn setup() -> Option<TestRoot> {
    if !sandbox_available() {
        return None;
    }
    let t = TestRoot::new();
    t.busybox_image("base", json!({}));
    Some(t)
}

#[test]
fn context_tar_on_stdin() {
    let Some(t) = setup() else { return };
    let ctx = context(&t);
    let mut kinds = vec![("", "ctx.tar"), ("-z", "ctx.tar.gz")];
    for (flag, name, tool) in [
        ("-j", "ctx.tar.bz2", "bzip2"),
        ("-J", "ctx.tar.xz", "xz"),
        ("--zstd", "ctx.tar.zst", "zstd"),
    ] {
        if tool_available(tool) {
            kinds.push((flag, name));
        }
    }
    for (flag, name) in kinds {
        let archive = t.path(name);
        tar(&ctx, &archive, flag);
        let out = build_to(&t, "-", &[], Some(&archive));
        assert_eq!(read(&out, "ctx/hello.txt"), "hello from the context\n");
        assert_eq!(read(&out, "ctx/sub/nested.txt"), "nested\n");
        // -f names a file inside the tar.
        let out = build_to(&t, "-", &["-f", "sub/Dockerfile.alt"], Some(&archive));
        assert_eq!(read(&out, "alt.txt"), "nested\n");
    }
    no_context_left(&t);

    // Both from stdin cannot be.
    let archive = t.path("ctx.tar");
    let mut c = t.builder();
    c.args(["build", "-f", "-", "-"])
        .stdin(Stdio::from(fs::File::open(&archive).unwrap()));
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("stdin"), "{}", stderr(&o));

    // Not a tar: a Dockerfile, with an empty context (as docker).
    let dockerfile = t.path("Dockerfile.stdin");
    fs::write(&dockerfile, "FROM base\nRUN echo built > /from-stdin\n").unwrap();
    let out = build_to(&t, "-", &[], Some(&dockerfile));
    assert_eq!(read(&out, "from-stdin"), "built\n");

    // A broken compressed tar: a clear error.
    let junk = t.path("junk.gz");
    fs::write(&junk, b"\x1f\x8b\x08\x00 this is not gzip data at all").unwrap();
    let mut c = t.builder();
    c.args(["build", "-"])
        .stdin(Stdio::from(fs::File::open(&junk).unwrap()));
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unable to prepare the context from stdin"),
        "{}",
        stderr(&o)
    );
    no_context_left(&t);
}

/// Serves `body` for every GET on a loopback port (404 for paths with
/// "missing"), until the test process ends.
fn http_server(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut header = String::new();
                match reader.read_line(&mut header) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if header == "\r\n" || header == "\n" => break,
                    Ok(_) => {}
                }
            }
            if request.contains("missing") {
                let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

#[test]
fn context_tarball_url() {
    let Some(t) = setup() else { return };
    let ctx = context(&t);
    let archive = t.path("ctx.tar.gz");
    tar(&ctx, &archive, "-z");
    let port = http_server(fs::read(&archive).unwrap());
    let url = format!("http://127.0.0.1:{port}/ctx.tar.gz");
    let out = build_to(&t, &url, &[], None);
    assert_eq!(read(&out, "ctx/hello.txt"), "hello from the context\n");
    assert_eq!(read(&out, "ctx/sub/nested.txt"), "nested\n");
    no_context_left(&t);

    let missing = format!("http://127.0.0.1:{port}/missing.tar.gz");
    let o = t.output(&["build", &missing]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&missing) && stderr(&o).contains("404"),
        "{}",
        stderr(&o)
    );
    no_context_left(&t);
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?} failed");
}

/// A repository `repo.git` (with a work tree) whose `main` has `main.txt`
/// and whose `feature` branch adds a Dockerfile at the top and `app/` with
/// a Dockerfile and `app.txt`. Returns its `file://` URL.
fn repo(t: &TestRoot) -> String {
    let dir = t.path(&format!("repo-{}.git", unique()));
    fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    fs::write(dir.join("main.txt"), "on main\n").unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "main"]);
    git(&dir, &["checkout", "-q", "-b", "feature"]);
    fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::write(dir.join("app/Dockerfile"), "FROM base\nCOPY . /app/\n").unwrap();
    fs::write(dir.join("app/app.txt"), "the app\n").unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "feature"]);
    git(&dir, &["checkout", "-q", "main"]);
    format!("file://{}", dir.display())
}

/// The commit `rev` names in the repository at the `file://` URL.
fn rev_parse(url: &str, rev: &str) -> String {
    let out = Command::new("git")
        .args(["-C", url.trim_start_matches("file://"), "rev-parse", rev])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn git_contexts() {
    if !tool_available("git") {
        return;
    }
    let Some(t) = setup() else { return };
    let url = repo(&t);

    // A branch and a subdirectory: the subdirectory is the context.
    let out = build_to(&t, &format!("{url}#feature:app"), &[], None);
    assert_eq!(read(&out, "app/app.txt"), "the app\n");
    assert_eq!(read(&out, "app/Dockerfile"), "FROM base\nCOPY . /app/\n");
    assert!(!out.join("app/main.txt").exists());

    // The whole branch: .git is gone, unless kept.
    let out = build_to(&t, &format!("{url}#feature"), &[], None);
    assert_eq!(read(&out, "ctx/main.txt"), "on main\n");
    assert_eq!(read(&out, "ctx/app/app.txt"), "the app\n");
    assert!(!out.join("ctx/.git").exists(), ".git was kept");
    let out = build_to(
        &t,
        &format!("{url}#feature"),
        &["--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1"],
        None,
    );
    assert!(out.join("ctx/.git/HEAD").is_file(), ".git is missing");
    no_context_left(&t);

    // A local `*.git` path works as well.
    let path = url.trim_start_matches("file://");
    let out = build_to(&t, &format!("{path}#feature:app"), &[], None);
    assert_eq!(read(&out, "app/app.txt"), "the app\n");

    // A subdirectory reached through a link out of the checkout is refused.
    let dir = url.trim_start_matches("file://");
    std::os::unix::fs::symlink("/etc", Path::new(dir).join("escape")).unwrap();
    git(Path::new(dir), &["add", "escape"]);
    git(Path::new(dir), &["commit", "-q", "-m", "link"]);
    let o = t.output(&["build", &format!("{url}#main:escape")]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("leaves the repository through a link"),
        "{}",
        stderr(&o)
    );

    // A ref that does not exist: the error names the URL.
    let bad = format!("{url}#no-such-branch");
    let o = t.output(&["build", &bad]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));
    no_context_left(&t);
}

#[test]
fn add_git_repository() {
    if !tool_available("git") {
        return;
    }
    let Some(t) = setup() else { return };
    let url = repo(&t);
    let dockerfile = format!(
        "FROM base\nADD {url}#feature /dst\nADD --keep-git-dir {url}#feature /kept\nADD {url}#feature:app /app\n"
    );
    let out = t.build_local(&dockerfile, &[], &[]);
    assert_eq!(read(&out, "dst/main.txt"), "on main\n");
    assert_eq!(read(&out, "dst/app/app.txt"), "the app\n");
    assert!(
        !out.join("dst/.git").exists(),
        ".git was kept without --keep-git-dir"
    );
    assert_eq!(read(&out, "kept/main.txt"), "on main\n");
    assert!(
        out.join("kept/.git/HEAD").is_file(),
        ".git is missing with --keep-git-dir"
    );
    assert_eq!(read(&out, "app/app.txt"), "the app\n");
    assert!(!out.join("app/main.txt").exists());

    // A commit (a full clone and a checkout) checked with --checksum.
    let sha = rev_parse(&url, "feature");
    let dockerfile = format!("FROM base\nADD --checksum={sha} {url}#{sha} /bysha\n");
    let out = t.build_local(&dockerfile, &[], &[]);
    assert_eq!(read(&out, "bysha/app/app.txt"), "the app\n");
    let main = rev_parse(&url, "main");
    let ctx = t.context(&[(
        "Dockerfile",
        &format!("FROM base\nADD --checksum={main} {url}#feature /x\n"),
    )]);
    let o = t.build(&ctx, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("digest mismatch"), "{}", stderr(&o));

    // Cached by the commit the reference names: a rebuild (or the same
    // ADD in another Dockerfile) clones nothing, a new commit on the
    // branch runs the step again, and says why.
    let ctx = t.context(&[(
        "Dockerfile",
        &format!("FROM base\nADD {url}#feature /dst\nADD {url}#main /m\n"),
    )]);
    let events = t.build_json_ok(&ctx, &[]);
    assert_eq!(
        (events.cached(), events.ran()),
        (
            vec![format!("ADD {url}#feature /dst")],
            vec![format!("ADD {url}#main /m")]
        ),
        "the first ADD is the first build's\n{events:#?}"
    );
    let events = t.build_json_ok(&ctx, &[]);
    assert!(events.ran().is_empty(), "{events:#?}");
    assert_eq!(events.cached().len(), 2, "{events:#?}");
    let dir = Path::new(url.trim_start_matches("file://"));
    git(dir, &["checkout", "-q", "feature"]);
    fs::write(dir.join("main.txt"), "changed on feature\n").unwrap();
    git(dir, &["commit", "-q", "-am", "change"]);
    git(dir, &["checkout", "-q", "main"]);
    let events = t.build_json_ok(&ctx, &[]);
    assert_eq!(
        events.ran(),
        vec![
            format!("ADD {url}#feature /dst"),
            format!("ADD {url}#main /m")
        ],
        "the second ADD runs as its parent changed\n{events:#?}"
    );
    let reasons: Vec<&str> = events
        .of("cache-miss")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        vec![format!(
            "ADD {url}#feature /dst: commit of {url}#feature changed"
        )],
        "{events:#?}"
    );
    let out = build_to(&t, ctx.to_str().unwrap(), &[], None);
    assert_eq!(read(&out, "dst/main.txt"), "changed on feature\n");

    // A repository that cannot be cloned fails the step, naming it.
    let bad = "file:///nonexistent/nowhere.git";
    let ctx = t.context(&[("Dockerfile", &format!("FROM base\nADD {bad} /x\n"))]);
    let o = t.build(&ctx, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(bad), "{}", stderr(&o));
}
