//! `RUN --mount` through `builder build`, end to end, as root: a secret
//! given with `--secret id=ID,src=FILE` or `env=VAR` is usable by the step
//! and found nowhere afterwards (not in any file under the root, layers
//! decompressed, nor in the build's output, whatever the progress mode);
//! cache mounts persist between builds; `--ssh` forwards an agent socket.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use common::{TestRoot, sandbox_available, stderr, stdout};
use serde_json::json;

const SECRET: &str = "tok-9f8e7d6c5b4a-do-not-leak";

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let ty = entry.file_type().unwrap();
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

/// `bytes`, and its decompressed form when it is gzip or zstd.
fn decoded(bytes: Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if cache::compression::detect(&bytes) != cache::compression::Compression::None {
        let mut plain = Vec::new();
        cache::compression::decompressor(&bytes[..])
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        out.push(plain);
    }
    out.push(bytes);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails naming the first file under `root` (or output) holding `needle`.
fn assert_nowhere(root: &Path, outputs: &[(&str, String)], needle: &str) {
    let files = files_under(root);
    // blobs, keys, snapshots, sandbox state...: there must be something to
    // search, or the test proves nothing.
    for dir in ["blobs", "keys", "snapshots", "context-cache"] {
        assert!(
            files.iter().any(|f| f.starts_with(root.join(dir))),
            "nothing in {dir}/ under {}",
            root.display()
        );
    }
    for file in &files {
        for data in decoded(fs::read(file).unwrap()) {
            assert!(
                !contains(&data, needle.as_bytes()),
                "the secret is in {}",
                file.display()
            );
        }
    }
    for (name, text) in outputs {
        assert!(!text.contains(needle), "the secret is in {name}:\n{text}");
    }
}

#[test]
fn secrets_are_usable_and_found_nowhere() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let secret_file = t.path("secret.txt");
    fs::write(&secret_file, SECRET).unwrap();
    let dockerfile = "FROM busybox\n\
        COPY Dockerfile /Dockerfile.copy\n\
        RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /len \
         && cat /run/secrets/tok > /dev/null && echo used-file\n\
        RUN --mount=type=secret,id=envtok,env=TOKEN echo ${#TOKEN} > /envlen \
         && test -n \"$TOKEN\" && echo used-env\n\
        RUN --mount=type=secret,id=tok,target=/root/tok,mode=0400 \
         test -s /root/tok && echo used-target\n";
    let ctx = t.context(&[("Dockerfile", dockerfile)]);
    let secret_arg = format!("id=tok,src={}", secret_file.display());
    let out_dir = t.path("out");
    let local = format!("type=local,dest={}", out_dir.display());
    let mut outputs = Vec::new();
    for progress in ["plain", "json"] {
        let out = t
            .builder()
            .args(["build", "--progress", progress, "-t", "app"])
            .args([
                "--secret",
                &secret_arg,
                "--secret",
                "id=envtok,env=MY_TOKEN",
            ])
            .args(["--no-cache", "-o", &local])
            .arg(&ctx)
            .env("MY_TOKEN", SECRET)
            .output()
            .unwrap();
        let (so, se) = (stdout(&out), stderr(&out));
        assert!(out.status.success(), "build failed:\n{so}\n{se}");
        for marker in ["used-file", "used-env", "used-target"] {
            assert!(
                se.contains(marker) || so.contains(marker),
                "{marker}:\n{se}"
            );
        }
        outputs.push((format!("{progress} stdout"), so));
        outputs.push((format!("{progress} stderr"), se));
    }
    // A cached rebuild reads the key index without running anything.
    let out = t
        .builder()
        .args(["build", "--progress=plain", "--secret", &secret_arg])
        .args(["--secret", "id=envtok,env=MY_TOKEN"])
        .arg(&ctx)
        .env("MY_TOKEN", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    outputs.push(("cached stdout".into(), stdout(&out)));
    outputs.push(("cached stderr".into(), stderr(&out)));

    let len = SECRET.len().to_string();
    assert_eq!(fs::read_to_string(out_dir.join("len")).unwrap().trim(), len);
    assert_eq!(
        fs::read_to_string(out_dir.join("envlen")).unwrap().trim(),
        len
    );
    for stub in ["run/secrets", "root/tok"] {
        assert!(!out_dir.join(stub).exists(), "{stub} is in the image");
    }
    // A step that fails after using the secret: its error and log lines.
    let failing = t.context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=secret,id=tok,env=T sh -c 'test ${#T} -gt 0; exit 3'\n",
    )]);
    let out = t
        .builder()
        .args(["build", "--progress=plain", "--secret", &secret_arg])
        .arg(&failing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exit code: 3"), "{}", stderr(&out));
    outputs.push(("failing stdout".into(), stdout(&out)));
    outputs.push(("failing stderr".into(), stderr(&out)));
    // A required secret that was not given.
    let missing = t.context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=secret,id=nope,required=true true\n",
    )]);
    let out = t.build(&missing, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("nope") && err.contains("--secret"), "{err}");

    let outputs: Vec<(&str, String)> = outputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    assert_nowhere(&t.root(), &outputs, SECRET);
    t.check_store();
}

#[test]
fn cache_mount_persists_between_builds_and_ssh_is_forwarded() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let sock = t.path("agent.sock");
    let _agent = UnixListener::bind(&sock).unwrap();
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=cache,target=/var/cache/app echo x >> /var/cache/app/runs \
         && wc -l < /var/cache/app/runs > /runs\n\
        RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /sock\n";
    let ctx = t.context(&[("Dockerfile", dockerfile)]);
    let ssh = format!("default={}", sock.display());
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = t.path(&format!("out-{}", common::unique()));
        let local = format!("type=local,dest={}", out.display());
        t.build_ok(&ctx, &["--no-cache", "--ssh", &ssh, "-o", &local]);
        runs.push(
            fs::read_to_string(out.join("runs"))
                .unwrap()
                .trim()
                .to_owned(),
        );
        assert_eq!(
            fs::read_to_string(out.join("sock")).unwrap().trim(),
            "/run/buildkit/ssh_agent.0"
        );
        assert!(!out.join("var/cache/app").exists());
        assert!(!out.join("run/buildkit").exists());
    }
    assert_eq!(runs, ["1", "2"]);
    t.check_store();
}

/// What a bind mount reads from the context is part of the step's cache
/// key; a cache mount's contents and a secret's value are not.
#[test]
fn bind_mounted_context_files_decide_whether_a_step_reruns() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let secret_file = t.path("secret.txt");
    fs::write(&secret_file, "first value").unwrap();
    let dockerfile = "FROM busybox\n\
        RUN --mount=type=bind,source=input,target=/i cat /i/a > /from-a\n\
        RUN --mount=type=cache,target=/c --mount=type=secret,id=s touch /c/x /other\n";
    let ctx = t.context(&[
        ("Dockerfile", dockerfile),
        ("input/a", "one\n"),
        ("unrelated", "u\n"),
    ]);
    let secret_arg = format!("id=s,src={}", secret_file.display());
    let bind = "RUN --mount=type=bind,source=input,target=/i cat /i/a > /from-a";
    let other = "RUN --mount=type=cache,target=/c --mount=type=secret,id=s touch /c/x /other";
    let events = t.build_json_ok(&ctx, &["--secret", &secret_arg]);
    assert_eq!(events.ran(), [bind, other]);
    // Nothing that the steps read changed.
    fs::write(ctx.join("unrelated"), "changed\n").unwrap();
    fs::write(&secret_file, "second value").unwrap();
    let events = t.build_json_ok(&ctx, &["--secret", &secret_arg]);
    assert!(events.ran().is_empty(), "{:?}", events.ran());
    // The bound file changed: the bind step and the one after it re-run.
    fs::write(ctx.join("input/a"), "two\n").unwrap();
    let out = t.path("out");
    let local = format!("type=local,dest={}", out.display());
    let events = t.build_json_ok(&ctx, &["--secret", &secret_arg, "-o", &local]);
    assert_eq!(events.ran(), [bind, other]);
    assert_eq!(fs::read_to_string(out.join("from-a")).unwrap(), "two\n");
    t.check_store();
}
