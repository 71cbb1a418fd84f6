//! `builder build` end to end, as root: one Dockerfile with every
//! instruction, checked through the exported root filesystem, the image
//! config (`builder inspect`) and `builder run`; ONBUILD across stages; ARG
//! overrides; whiteouts in the layer; the README example.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{TestRoot, sandbox_available, stderr};
use serde_json::json;
use solver::sandbox::testsupport::TEST_USER_ID_OUTPUT;

const EVERY_INSTRUCTION: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS base
ONBUILD RUN echo triggered > /onbuild.txt
LABEL org.example.stage=base

FROM base AS final
MAINTAINER Jane Doe <jane@example.com>
LABEL org.example.one=1 "org.example.two"="two words"
ARG VERSION=1.0
ENV APP_HOME=/app GREETING="hello world"
EXPOSE 8080 9090/udp
WORKDIR $APP_HOME
COPY hello.txt ./
COPY --chown=test:test --chmod=0750 script.sh /usr/local/bin/
ADD archive.tar.gz /opt/
RUN echo "version=$VERSION" > version.txt && echo "$GREETING" > greeting.txt
RUN ["/bin/sh", "-c", "echo exec-form > exec.txt"]
RUN <<EOF
echo heredoc-line-1 > heredoc.txt
echo heredoc-line-2 >> heredoc.txt
EOF
RUN <<EOF sh
echo "script read by sh from stdin" > stdin-sh.txt
EOF
RUN <<EOF
#!/bin/awk -f
BEGIN { print "awk shebang" > "/app/awk.txt" }
EOF
SHELL ["/bin/sh", "-e", "-c"]
RUN echo "shell $0" > shell.txt
USER test
RUN id > /tmp/id.txt && touch /home/test/mine
USER root
VOLUME ["/data"]
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD ["/bin/true"]
ENTRYPOINT ["/bin/echo"]
CMD ["from", "cmd"]
USER test:test
"#;

fn every_instruction_context(t: &TestRoot) -> std::path::PathBuf {
    let ctx = t.context(&[
        ("Dockerfile", EVERY_INSTRUCTION),
        ("hello.txt", "hello from the context\n"),
        ("script.sh", "#!/bin/sh\necho script\n"),
        ("pkg/a.txt", "inside the archive\n"),
        ("pkg/bin/tool", "#!/bin/sh\n"),
    ]);
    fs::set_permissions(ctx.join("pkg/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new("tar")
        .args([
            "-czf",
            "archive.tar.gz",
            "--owner=123",
            "--group=456",
            "pkg",
        ])
        .current_dir(&ctx)
        .status()
        .unwrap();
    assert!(status.success());
    fs::remove_dir_all(ctx.join("pkg")).unwrap();
    ctx
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_instruction_builds_into_files_and_config() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = every_instruction_context(&t);
    let out = t.path("rootfs");
    let spec = format!("type=local,dest={}", out.display());
    let log = t.build(&ctx, &["-t", "every:1", "-o", &spec]);
    assert!(log.status.success(), "{}", stderr(&log));
    let progress = stderr(&log);
    // BuildKit's plain progress: numbered steps with stage names, output, DONE.
    assert!(
        progress.contains("[final  6/12] RUN echo \"version=1.0\" > version.txt"),
        "{progress}"
    );
    assert!(progress.contains(" DONE "), "{progress}");
    assert!(
        progress.contains("naming to docker.io/library/every:1 done"),
        "{progress}"
    );

    // Files.
    assert_eq!(read(&out, "/onbuild.txt"), "triggered\n");
    assert_eq!(read(&out, "/app/hello.txt"), "hello from the context\n");
    assert_eq!(read(&out, "/app/version.txt"), "version=1.0\n");
    assert_eq!(read(&out, "/app/greeting.txt"), "hello world\n");
    assert_eq!(read(&out, "/app/exec.txt"), "exec-form\n");
    assert_eq!(
        read(&out, "/app/heredoc.txt"),
        "heredoc-line-1\nheredoc-line-2\n"
    );
    assert_eq!(
        read(&out, "/app/stdin-sh.txt"),
        "script read by sh from stdin\n"
    );
    assert_eq!(read(&out, "/app/awk.txt"), "awk shebang\n");
    assert_eq!(read(&out, "/app/shell.txt"), "shell /bin/sh\n");
    assert_eq!(
        read(&out, "/tmp/id.txt"),
        format!("{TEST_USER_ID_OUTPUT}\n")
    );
    let mine = fs::metadata(out.join("home/test/mine")).unwrap();
    assert_eq!((mine.uid(), mine.gid()), (1000, 1000));
    let script = fs::metadata(out.join("usr/local/bin/script.sh")).unwrap();
    assert_eq!(script.mode() & 0o7777, 0o750);
    assert_eq!((script.uid(), script.gid()), (1000, 1000));
    // ADD unpacked the local archive, keeping its owners and modes.
    assert_eq!(read(&out, "/opt/pkg/a.txt"), "inside the archive\n");
    let tool = fs::metadata(out.join("opt/pkg/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o777, 0o755);
    assert_eq!((tool.uid(), tool.gid()), (123, 456));
    assert!(!out.join("opt/archive.tar.gz").exists());
    // resolv.conf, hosts and hostname are never captured.
    for f in ["etc/resolv.conf", "etc/hosts", "etc/hostname"] {
        assert!(!out.join(f).exists(), "{f} was captured");
    }

    // Config.
    let image = t.inspect("every:1");
    let cfg = &image["Config"]["config"];
    assert_eq!(image["Config"]["author"], "Jane Doe <jane@example.com>");
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"APP_HOME=/app"), "{env:?}");
    assert!(env.contains(&"GREETING=hello world"), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("VERSION=")), "{env:?}");
    assert_eq!(cfg["Entrypoint"], json!(["/bin/echo"]));
    assert_eq!(cfg["Cmd"], json!(["from", "cmd"]));
    assert_eq!(cfg["WorkingDir"], "/app");
    assert_eq!(cfg["User"], "test:test");
    assert_eq!(cfg["ExposedPorts"], json!({"8080/tcp": {}, "9090/udp": {}}));
    assert_eq!(cfg["Volumes"], json!({"/data": {}}));
    assert_eq!(cfg["StopSignal"], "SIGQUIT");
    assert_eq!(cfg["Shell"], json!(["/bin/sh", "-e", "-c"]));
    assert_eq!(cfg["Healthcheck"]["Test"], json!(["CMD", "/bin/true"]));
    assert_eq!(cfg["Healthcheck"]["Interval"], json!(30_000_000_000i64));
    assert_eq!(cfg["Healthcheck"]["Timeout"], json!(3_000_000_000i64));
    assert_eq!(cfg["Healthcheck"]["Retries"], json!(2));
    assert_eq!(cfg["Labels"]["org.example.one"], "1");
    assert_eq!(cfg["Labels"]["org.example.two"], "two words");
    assert_eq!(cfg["Labels"]["org.example.stage"], "base");
    // Triggers ran in the child and are not inherited further.
    assert!(
        cfg["OnBuild"].is_null() || cfg["OnBuild"] == json!([]),
        "{cfg}"
    );

    // One history entry per instruction (and per base layer), and as many
    // non-empty entries as layers.
    let history = image["Config"]["history"].as_array().unwrap();
    let layers = image["Manifest"]["layers"].as_array().unwrap().len();
    let diff_ids = image["Config"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(layers, diff_ids);
    let non_empty = history
        .iter()
        .filter(|h| h["empty_layer"] != json!(true))
        .count();
    assert_eq!(non_empty, layers, "{history:#?}");
    let created_by: Vec<&str> = history
        .iter()
        .map(|h| h["created_by"].as_str().unwrap_or(""))
        .collect();
    for want in [
        "EXPOSE",
        "WORKDIR /app",
        "USER test:test",
        "STOPSIGNAL SIGQUIT",
    ] {
        assert!(
            created_by.iter().any(|c| c.contains(want)),
            "no history for {want}: {created_by:#?}"
        );
    }
    assert!(
        created_by.iter().any(|c| c.contains("RUN |1 VERSION=1.0")),
        "{created_by:#?}"
    );

    // The image runs: ENTRYPOINT + CMD, as the configured user and workdir.
    assert_eq!(t.ok(&["run", "every:1"]), "from cmd\n");
    assert_eq!(
        t.ok(&["run", "--entrypoint", "sh", "every:1", "-c", "id -u; pwd"]),
        "1000\n/app\n"
    );
    t.check_store();
}

#[test]
fn onbuild_target_and_build_args() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = every_instruction_context(&t);
    // The base stage keeps its trigger in its config.
    t.build_ok(&ctx, &["--target", "base", "-t", "base"]);
    let base = t.inspect("base");
    assert_eq!(
        base["Config"]["config"]["OnBuild"],
        json!(["RUN echo triggered > /onbuild.txt"])
    );
    // A build arg overrides the ARG default; an unused one is warned about.
    let out = t.path("v2");
    let spec = format!("type=local,dest={}", out.display());
    let log = t.build(
        &ctx,
        &[
            "--build-arg",
            "VERSION=2.0",
            "--build-arg",
            "UNUSED=1",
            "-o",
            &spec,
        ],
    );
    assert!(log.status.success(), "{}", stderr(&log));
    assert_eq!(read(&out, "/app/version.txt"), "version=2.0\n");
    let text = stderr(&log);
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("UNUSED")).collect();
    assert_eq!(warnings.len(), 1, "{}", stderr(&log));
    assert!(warnings[0].contains("warning"), "{warnings:?}");
}

#[test]
fn deletions_become_whiteouts() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let dockerfile = "FROM busybox\n\
        RUN rm /etc/motd && rm -r /home/test && rm -r /mnt && mkdir /mnt && touch /mnt/new\n";
    let out = t.build_local(dockerfile, &[], &["-t", "deleted"]);
    assert!(!out.join("etc/motd").exists());
    assert!(!out.join("home/test").exists());
    assert!(out.join("home").is_dir());
    assert!(out.join("etc/passwd").exists());
    let mnt: Vec<_> = fs::read_dir(out.join("mnt"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(mnt, vec!["new"]);

    // In the layer itself: OCI whiteout entries and an opaque marker.
    let image = t.inspect("deleted");
    let top = image["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let blob = t.root().join("blobs/sha256").join(top);
    let list = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap();
    assert!(list.status.success());
    let entries = String::from_utf8(list.stdout).unwrap();
    let entries: Vec<&str> = entries.lines().collect();
    for want in [
        "etc/.wh.motd",
        "home/.wh.test",
        "mnt/.wh..wh..opq",
        "mnt/new",
    ] {
        assert!(entries.contains(&want), "{want} missing in {entries:?}");
    }
    assert_eq!(t.ok(&["run", "deleted", "ls", "/mnt"]), "new\n");
}

#[test]
fn readme_example_busybox_and_hello() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.example_busybox("busybox");
    // The base image is busybox alone, with every applet linked.
    assert_eq!(t.ok(&["run", "busybox", "echo", "base ok"]), "base ok\n");
    assert_eq!(
        t.ok(&["run", "busybox", "readlink", "/bin/ls"]),
        "/bin/busybox\n"
    );
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    t.build_ok(&hello, &["-t", "hello"]);
    assert_eq!(t.ok(&["run", "hello"]), "Hello, World!\n");
    assert_eq!(t.ok(&["run", "hello", "Pavlos"]), "Pavlos\n");
    t.check_store();
}
