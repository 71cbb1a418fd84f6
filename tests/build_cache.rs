//! The build cache end to end, as root: which steps of a real Dockerfile
//! run again, read from `--progress=json` events. A cached rebuild runs
//! nothing; a changed context file re-runs exactly the steps that depend on
//! it; a changed ARG only the steps that have it in scope; `--no-cache`
//! everything, `--no-cache-filter` a stage and what uses it; and a cached
//! build gives the cold build's image digest.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{Events, TestRoot, sandbox_available};
use serde_json::json;

/// Three stages on a shared base; the ARG is declared right before its only
/// user, so that "in scope" and "uses it" name the same step.
const DOCKERFILE: &str = "\
FROM busybox AS base
RUN echo base > /base

FROM base AS left
COPY left/ /left/
RUN cat /left/* > /left.txt

FROM base AS right
RUN echo right > /right.txt
ARG VERSION=1
RUN echo $VERSION > /version

FROM busybox
COPY --from=left /left.txt /left.txt
COPY --from=right /right.txt /version /
COPY top.txt /top.txt
";

/// The steps, as the events name them: like BuildKit, a step's name shows
/// the ARG values it expands (here VERSION=1, the default).
const ALL: [&str; 8] = [
    "RUN echo base > /base",
    "COPY left/ /left/",
    "RUN cat /left/* > /left.txt",
    "RUN echo right > /right.txt",
    "RUN echo 1 > /version",
    "COPY --from=left /left.txt /left.txt",
    "COPY --from=right /right.txt /version /",
    "COPY top.txt /top.txt",
];

fn setup() -> (TestRoot, PathBuf) {
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = t.context(&[
        ("Dockerfile", DOCKERFILE),
        ("left/a.txt", "a\n"),
        ("left/b.txt", "b\n"),
        ("top.txt", "top\n"),
    ]);
    (t, ctx)
}

fn sorted(steps: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = steps.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// Every step either ran or came from the cache, never both, and exactly
/// `ran` ran.
fn assert_ran(events: &Events, ran: &[&str], what: &str) {
    assert_ran_of(events, &ALL, ran, what);
}

/// [`assert_ran`] for a build whose steps are `all`.
fn assert_ran_of(events: &Events, all: &[&str], ran: &[&str], what: &str) {
    let expected_cached: Vec<&str> = all.iter().copied().filter(|s| !ran.contains(s)).collect();
    assert_eq!(
        events.ran(),
        sorted(ran),
        "{what}: the steps that ran\n{events:#?}"
    );
    assert_eq!(
        events.cached(),
        sorted(&expected_cached),
        "{what}: the steps that came from the cache\n{events:#?}"
    );
}

fn cache_miss_reasons(events: &Events) -> Vec<String> {
    events
        .of("cache-miss")
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn cached_rebuild_runs_nothing() {
    if !sandbox_available() {
        return;
    }
    let (t, ctx) = setup();
    let cold = t.build_json_ok(&ctx, &["-t", "app"]);
    assert_ran(&cold, &ALL, "cold build");
    let warm = t.build_json_ok(&ctx, &["-t", "app"]);
    assert_ran(&warm, &[], "unchanged rebuild");
    assert!(
        cache_miss_reasons(&warm).is_empty(),
        "a fully cached build reports no miss: {warm:#?}"
    );
    // The cached image is the one that was built.
    assert_eq!(t.ok(&["run", "app", "cat", "/left.txt"]), "a\nb\n");
    assert_eq!(t.ok(&["run", "app", "cat", "/version"]), "1\n");
    t.check_store();
}

#[test]
fn cache_survives_an_mtime_change() {
    if !sandbox_available() {
        return;
    }
    let (t, ctx) = setup();
    t.build_json_ok(&ctx, &[]);
    // Same contents, new mtime (and ctime): the content checksum is equal.
    let f = fs::File::options()
        .write(true)
        .open(ctx.join("left/a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    let again = t.build_json_ok(&ctx, &[]);
    assert_ran(&again, &[], "rebuild after touching a file");
}

#[test]
fn changed_context_file_reruns_exactly_its_dependents() {
    if !sandbox_available() {
        return;
    }
    let (t, ctx) = setup();
    t.build_json_ok(&ctx, &["-t", "app"]);

    fs::write(ctx.join("left/a.txt"), "A\n").unwrap();
    let events = t.build_json_ok(&ctx, &["-t", "app"]);
    assert_ran(
        &events,
        &[
            "COPY left/ /left/",
            "RUN cat /left/* > /left.txt",
            "COPY --from=left /left.txt /left.txt",
            // Their parent changed.
            "COPY --from=right /right.txt /version /",
            "COPY top.txt /top.txt",
        ],
        "after changing left/a.txt",
    );
    let reasons = cache_miss_reasons(&events);
    assert!(
        reasons.iter().any(|r| r.contains("left/a.txt")),
        "the miss names the changed file: {reasons:?}"
    );
    assert_eq!(t.ok(&["run", "app", "cat", "/left.txt"]), "A\nb\n");

    // A file that only the last step reads.
    fs::write(ctx.join("top.txt"), "TOP\n").unwrap();
    let events = t.build_json_ok(&ctx, &["-t", "app"]);
    assert_ran(
        &events,
        &["COPY top.txt /top.txt"],
        "after changing top.txt",
    );
    assert_eq!(t.ok(&["run", "app", "cat", "/top.txt"]), "TOP\n");

    // A new file in a copied directory counts as a change.
    fs::write(ctx.join("left/c.txt"), "c\n").unwrap();
    let events = t.build_json_ok(&ctx, &["-t", "app"]);
    assert!(
        events.ran().contains(&"COPY left/ /left/".to_owned()),
        "{events:#?}"
    );
    assert_eq!(t.ok(&["run", "app", "cat", "/left.txt"]), "A\nb\nc\n");

    // A file no step reads changes nothing.
    fs::write(ctx.join("unused.txt"), "not copied\n").unwrap();
    let events = t.build_json_ok(&ctx, &["-t", "app"]);
    assert_ran(&events, &[], "after adding a file no step reads");
    t.check_store();
}

#[test]
fn changed_arg_reruns_only_the_steps_in_its_scope() {
    if !sandbox_available() {
        return;
    }
    let (t, ctx) = setup();
    t.build_json_ok(&ctx, &["-t", "app"]);
    let events = t.build_json_ok(&ctx, &["-t", "app", "--build-arg", "VERSION=2"]);
    let all_2 = ALL.map(|s| {
        if s == "RUN echo 1 > /version" {
            "RUN echo 2 > /version"
        } else {
            s
        }
    });
    assert_ran_of(
        &events,
        &all_2,
        &[
            "RUN echo 2 > /version",
            "COPY --from=right /right.txt /version /",
            "COPY top.txt /top.txt",
        ],
        "after VERSION=2",
    );
    let reasons = cache_miss_reasons(&events);
    assert!(
        reasons.iter().any(|r| r.contains("VERSION")),
        "the miss names the build arg: {reasons:?}"
    );
    assert_eq!(t.ok(&["run", "app", "cat", "/version"]), "2\n");

    // Back to the default: every result is still in the cache.
    let events = t.build_json_ok(&ctx, &["-t", "app"]);
    assert_ran(&events, &[], "back to VERSION=1");
    assert_eq!(t.ok(&["run", "app", "cat", "/version"]), "1\n");

    // A proxy variable does not bust the cache (as in BuildKit), and an
    // ARG no stage declares changes nothing.
    let events = t.build_json_ok(
        &ctx,
        &[
            "--build-arg",
            "HTTP_PROXY=http://proxy.invalid:3128",
            "--build-arg",
            "UNDECLARED=x",
        ],
    );
    assert_ran(&events, &[], "with a proxy and an undeclared build arg");
}

#[test]
fn no_cache_reruns_everything() {
    if !sandbox_available() {
        return;
    }
    let (t, ctx) = setup();
    t.build_json_ok(&ctx, &[]);
    let events = t.build_json_ok(&ctx, &["--no-cache"]);
    assert_ran(&events, &ALL, "--no-cache");
    // And the results it stored serve the next build.
    let events = t.build_json_ok(&ctx, &[]);
    assert_ran(&events, &[], "after --no-cache");
}

#[test]
fn no_cache_filter_reruns_the_stage_and_the_steps_that_use_it() {
    if !sandbox_available() {
        return;
    }
    let (t, ctx) = setup();
    t.build_json_ok(&ctx, &[]);
    let events = t.build_json_ok(&ctx, &["--no-cache-filter", "right"]);
    assert_ran(
        &events,
        &[
            "RUN echo right > /right.txt",
            "RUN echo 1 > /version",
            "COPY --from=right /right.txt /version /",
            "COPY top.txt /top.txt",
        ],
        "--no-cache-filter right",
    );
    // Comma-separated, like BuildKit's list: `base` is under everything.
    let events = t.build_json_ok(&ctx, &["--no-cache-filter", "left,base"]);
    assert_ran(&events, &ALL, "--no-cache-filter left,base");
}

#[test]
fn cached_build_gives_the_cold_build_digest() {
    if !sandbox_available() {
        return;
    }
    let (t, ctx) = setup();
    let with_epoch = |t: &TestRoot, extra: &[&str]| {
        let iid = t.path(&format!("iid-{}", common::unique()));
        let mut c = t.builder();
        c.env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "--progress=json", "--iidfile"])
            .arg(&iid)
            .args(extra)
            .arg(&ctx);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        (
            fs::read_to_string(iid).unwrap(),
            Events::parse(&common::stderr(&out)),
        )
    };
    let (cold, events) = with_epoch(&t, &[]);
    assert_ran(&events, &ALL, "cold build");
    let (cached, events) = with_epoch(&t, &[]);
    assert_ran(&events, &[], "cached build");
    assert_eq!(cold, cached, "a cached build gives the same image");
    let (rebuilt, events) = with_epoch(&t, &["--no-cache"]);
    assert_ran(&events, &ALL, "--no-cache build");
    assert_eq!(
        cold, rebuilt,
        "a rebuild without cache gives the same image"
    );
    t.check_store();
}
