//! COPY and ADD through `builder build`, end to end, as root: Docker's rules
//! for destinations, wildcards, directories, several sources, `--from` a
//! stage or an image, `--chown`, `--chmod`, `--link`, `--parents`,
//! `--exclude`, symlinks, heredocs, `.dockerignore`, local archives in every
//! compression, and downloads from a local HTTP server with `--checksum`.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::Command;

use common::{TestRoot, sandbox_available, stderr};
use serde_json::json;

const DOWNLOAD: &str = "downloaded over http\n";

/// A tiny HTTP/1.0 server on a loopback port answering every GET with
/// `DOWNLOAD` (or 404 for paths containing "missing"); runs until the test
/// process ends.
fn http_server() -> u16 {
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
            let response = if request.contains("missing") {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
            } else {
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{DOWNLOAD}",
                    DOWNLOAD.len()
                )
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    port
}

fn sha256_hex(data: &[u8]) -> String {
    cache::Digest::of(data).hex()
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Archives `pkg/` of `ctx` as `name` with tar's `flag` (`-z`, `-j`, ...).
fn archive(ctx: &Path, name: &str, flag: &str) {
    let status = Command::new("tar")
        .args([flag, "-cf", name, "--owner=0", "--group=0", "pkg"])
        .current_dir(ctx)
        .status()
        .unwrap();
    assert!(status.success(), "tar {flag} failed");
}

#[test]
fn copy_and_add_follow_dockers_rules() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let port = http_server();
    let url = format!("http://127.0.0.1:{port}/file.txt");
    let dockerfile = format!(
        r#"FROM busybox AS src
RUN mkdir -p /src/dir/sub && echo a > /src/dir/a && echo b > /src/dir/sub/b \
 && ln -s a /src/dir/link-to-a && chown -R 1000:1000 /src/dir

FROM busybox
ARG FOO=bar
COPY one.txt /dest-file
COPY one.txt /dest-dir/
COPY one.txt two.txt /multi/
COPY *.txt /wild/
COPY dir /dircontents/
COPY dir/ /dircontents2
COPY ctxlink /followed
COPY --from=src /src/dir /fromstage/
COPY --from=busybox /etc/passwd /from-image-passwd
COPY --chown=test one.txt /chowned
COPY --chown=1234:5678 dir /chowned-dir/
COPY --chmod=0600 one.txt /chmodded
COPY --link one.txt /linked/
COPY --parents dir/nested/deep.txt /parents/
COPY --exclude=*.log logs/ /excluded/
COPY . /all/
COPY <<EOF /heredoc.txt
heredoc body ${{FOO}}
EOF
ADD archive.tar.gz /gz/
ADD archive.tar.bz2 /bz2/
ADD archive.tar.xz /xz/
ADD archive.tar.zst /zst/
COPY archive.tar.gz /copied/
ADD --checksum=sha256:{sum} {url} /downloaded.txt
ADD {url} /dl/
WORKDIR /work
COPY one.txt relative/
"#,
        sum = sha256_hex(DOWNLOAD.as_bytes()),
    );
    let ctx = t.context(&[
        ("Dockerfile", &dockerfile),
        ("one.txt", "one\n"),
        ("two.txt", "two\n"),
        ("three.md", "three\n"),
        ("ignored.txt", "ignored\n"),
        ("dir/x", "x\n"),
        ("dir/secret-key", "secret\n"),
        ("dir/nested/deep.txt", "deep\n"),
        ("logs/a.log", "log\n"),
        ("logs/b.txt", "b\n"),
        ("pkg/file", "from the archive\n"),
        (".dockerignore", "ignored.txt\ndir/secret*\npkg\n"),
    ]);
    symlink("one.txt", ctx.join("ctxlink")).unwrap();
    for (name, flag) in [
        ("archive.tar.gz", "-z"),
        ("archive.tar.bz2", "-j"),
        ("archive.tar.xz", "-J"),
        ("archive.tar.zst", "--zstd"),
    ] {
        archive(&ctx, name, flag);
    }
    let out = t.path("rootfs");
    let log = t.build(&ctx, &["-o", &format!("type=local,dest={}", out.display())]);
    assert!(log.status.success(), "{}", stderr(&log));

    // Destination file vs directory, several sources, wildcards.
    assert_eq!(read(&out, "/dest-file"), "one\n");
    assert_eq!(read(&out, "/dest-dir/one.txt"), "one\n");
    assert_eq!(names(&out.join("multi")), ["one.txt", "two.txt"]);
    assert_eq!(names(&out.join("wild")), ["one.txt", "two.txt"]);
    // A directory's contents, never the directory itself.
    assert_eq!(names(&out.join("dircontents")), ["nested", "x"]);
    assert_eq!(read(&out, "/dircontents/nested/deep.txt"), "deep\n");
    assert_eq!(names(&out.join("dircontents2")), ["nested", "x"]);
    // A source symlink is followed.
    assert!(
        fs::symlink_metadata(out.join("followed"))
            .unwrap()
            .is_file()
    );
    assert_eq!(read(&out, "/followed"), "one\n");
    // --from a stage keeps owners, and symlinks inside stay symlinks.
    assert_eq!(names(&out.join("fromstage")), ["a", "link-to-a", "sub"]);
    assert_eq!(
        fs::read_link(out.join("fromstage/link-to-a")).unwrap(),
        Path::new("a")
    );
    let a = fs::metadata(out.join("fromstage/a")).unwrap();
    assert_eq!((a.uid(), a.gid()), (1000, 1000));
    // --from an image of the local store.
    assert!(read(&out, "/from-image-passwd").contains("test:x:1000:1000"));
    // --chown by name (resolved in the target image) and by ids; --chmod.
    let c = fs::metadata(out.join("chowned")).unwrap();
    assert_eq!((c.uid(), c.gid()), (1000, 1000));
    let c = fs::metadata(out.join("chowned-dir/x")).unwrap();
    assert_eq!((c.uid(), c.gid()), (1234, 5678));
    let c = fs::metadata(out.join("chowned-dir/nested/deep.txt")).unwrap();
    assert_eq!((c.uid(), c.gid()), (1234, 5678));
    let m = fs::metadata(out.join("chmodded")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    let plain = fs::metadata(out.join("dest-file")).unwrap();
    assert_eq!((plain.uid(), plain.gid()), (0, 0));
    // --link, --parents, --exclude.
    assert_eq!(read(&out, "/linked/one.txt"), "one\n");
    assert_eq!(read(&out, "/parents/dir/nested/deep.txt"), "deep\n");
    assert_eq!(names(&out.join("excluded")), ["b.txt"]);
    // .dockerignore applies to the whole context.
    let all = names(&out.join("all"));
    for excluded in ["ignored.txt", "pkg"] {
        assert!(!all.iter().any(|n| n == excluded), "{excluded} in {all:?}");
    }
    assert!(all.iter().any(|n| n == "one.txt"), "{all:?}");
    assert_eq!(names(&out.join("all/dir")), ["nested", "x"]);
    // Heredoc sources, expanded from ARG.
    assert_eq!(read(&out, "/heredoc.txt"), "heredoc body bar\n");
    // ADD unpacks local archives whatever their compression; COPY does not.
    for dir in ["gz", "bz2", "xz", "zst"] {
        assert_eq!(
            read(&out, &format!("/{dir}/pkg/file")),
            "from the archive\n"
        );
    }
    assert_eq!(names(&out.join("copied")), ["archive.tar.gz"]);
    // Downloads, with and without a checksum; a URL source keeps its name.
    assert_eq!(read(&out, "/downloaded.txt"), DOWNLOAD);
    assert_eq!(read(&out, "/dl/file.txt"), DOWNLOAD);
    // Relative destinations follow WORKDIR.
    assert_eq!(read(&out, "/work/relative/one.txt"), "one\n");
    t.check_store();
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = t.context(&[
        ("build.Dockerfile", "FROM busybox\nCOPY . /all/\n"),
        ("build.Dockerfile.dockerignore", "two.txt\n"),
        (".dockerignore", "one.txt\n"),
        ("one.txt", "one\n"),
        ("two.txt", "two\n"),
    ]);
    let out = t.path("out");
    let file = ctx.join("build.Dockerfile");
    t.build_ok(
        &ctx,
        &[
            "-f",
            file.to_str().unwrap(),
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    );
    let all = names(&out.join("all"));
    assert!(all.contains(&"one.txt".to_string()), "{all:?}");
    assert!(!all.contains(&"two.txt".to_string()), "{all:?}");
    // With the default Dockerfile, the context's .dockerignore applies.
    fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY . /all/\n").unwrap();
    let out = t.path("out2");
    t.build_ok(&ctx, &["-o", &format!("type=local,dest={}", out.display())]);
    let all = names(&out.join("all"));
    assert!(!all.contains(&"one.txt".to_string()), "{all:?}");
    assert!(all.contains(&"two.txt".to_string()), "{all:?}");
    // Reading the Dockerfile from stdin keeps the context's ignore file.
    let out = t.path("out3");
    let mut child = t
        .builder()
        .args(["build", "-q", "-f", "-", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM busybox\nCOPY . /all/\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let all = names(&out.join("all"));
    assert!(!all.contains(&"one.txt".to_string()), "{all:?}");
}

#[test]
fn checksum_mismatch_and_failed_downloads_are_errors() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let port = http_server();
    let wrong = sha256_hex(b"something else");
    let cases = [
        (
            format!("ADD --checksum=sha256:{wrong} http://127.0.0.1:{port}/file.txt /f\n"),
            "digest mismatch",
        ),
        (
            format!("ADD http://127.0.0.1:{port}/missing.txt /f\n"),
            "404",
        ),
        (
            "ADD --checksum=sha256:00 local.txt /f\n".to_string(),
            "checksum",
        ),
        (format!("COPY http://127.0.0.1:{port}/file.txt /f\n"), "URL"),
    ];
    for (line, want) in cases {
        let ctx = t.context(&[
            ("Dockerfile", &format!("FROM busybox\n{line}")),
            ("local.txt", "x"),
        ]);
        let out = t
            .builder()
            .args(["build", "--progress=quiet"])
            .arg(&ctx)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{line}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("Dockerfile:2:"),
            "{line}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(want), "{line}: {}", stderr(&out));
    }
    t.check_store();
}
