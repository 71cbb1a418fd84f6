//! `builder build --check` and the check results of a normal build, end to
//! end. `--check` builds nothing, so those tests need no sandbox; the ones
//! that build as well need root, namespaces and overlayfs.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{TestRoot, sandbox_available, stderr, stdout};
use serde_json::json;

fn context(t: &TestRoot, dockerfile: &str, files: &[(&str, &str)]) -> PathBuf {
    let ctx = t.context(files);
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

#[test]
fn check_prints_findings_with_the_line_and_builds_nothing() {
    let t = TestRoot::new();
    let ctx = context(
        &t,
        "FROM busybox AS Build\nMAINTAINER jane\nCMD echo hi\n",
        &[],
    );
    let out = t.build(&ctx, &["--check", "-t", "should-not-exist"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Dockerfile:1:1: StageNameCasing: Stage name 'Build' should be lowercase\n    1 | FROM busybox AS Build\n      | ^\n\
         Dockerfile:2:1: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label\n    2 | MAINTAINER jane\n      | ^\n\
         Dockerfile:3:1: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals\n    3 | CMD echo hi\n      | ^\n\
         Check complete, 3 warnings have been found!\n"
    );
    // Nothing was built or named.
    let images = t.output(&["images"]);
    assert!(
        !stdout(&images).contains("should-not-exist"),
        "{}",
        stdout(&images)
    );
}

#[test]
fn check_with_error_true_exits_1() {
    let t = TestRoot::new();
    let ctx = context(&t, "# check=error=true\nFROM busybox AS Build\n", &[]);
    let out = t.build(&ctx, &["--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("Dockerfile:2:1: StageNameCasing: Stage name 'Build' should be lowercase"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("lint violation found for rules: StageNameCasing"),
        "{}",
        stderr(&out)
    );

    let clean = context(&t, "# check=error=true\nFROM busybox AS build\n", &[]);
    let out = t.build(&clean, &["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Check complete, no warnings found.\n");
}

#[test]
fn check_build_arg_overrides_the_directive() {
    let t = TestRoot::new();
    let ctx = context(&t, "# check=error=true\nFROM busybox AS Build\n", &[]);
    let out = t.build(
        &ctx,
        &[
            "--check",
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=all",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Check complete, no warnings found.\n");
}

#[test]
fn check_reads_the_contexts_dockerignore() {
    let t = TestRoot::new();
    let ctx = context(
        &t,
        "# check=experimental=CopyIgnoredFile\nFROM busybox\nCOPY secret.txt /\n",
        &[(".dockerignore", "secret.txt\n"), ("secret.txt", "s")],
    );
    let out = t.build(&ctx, &["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "Dockerfile:3:1: CopyIgnoredFile: Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore"
        ),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_reports_errors_the_build_would_hit() {
    let t = TestRoot::new();
    // A compile error, not a parse error: the checks alone would not see it.
    let ctx = context(&t, "ARG BASE\nFROM ${BASE}\n", &[]);
    let out = t.build(&ctx, &["--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Dockerfile:2:6: base name (${BASE}) should not be blank"),
        "{}",
        stderr(&out)
    );

    let bad = context(&t, "# check=error=maybe\nFROM busybox\n", &[]);
    let out = t.build(&bad, &["--check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "Dockerfile:1:1: invalid check directive: failed to parse check option \"error=maybe\""
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn build_root_prints_check_warnings_once_at_the_end() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = context(&t, "FROM busybox AS Build\nRUN true\nCMD echo hi\n", &[]);
    let out = t.build(&ctx, &["-t", "checked"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let line = "Dockerfile:1:1: warning: StageNameCasing: Stage name 'Build' should be lowercase";
    assert_eq!(err.matches(line).count(), 1, "{err}");
    assert_eq!(err.matches("JSONArgsRecommended").count(), 1, "{err}");
    // After the steps.
    assert!(
        err.find(line).unwrap() > err.find("RUN true").unwrap(),
        "{err}"
    );
}

#[test]
fn build_root_with_error_true_fails_before_building() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = context(
        &t,
        "# check=error=true\nFROM busybox AS Build\nRUN echo should-not-run\n",
        &[],
    );
    let out = t.build(&ctx, &["-t", "not-built"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("lint violation found for rules: StageNameCasing"),
        "{err}"
    );
    assert!(!err.contains("should-not-run"), "{err}");
}
