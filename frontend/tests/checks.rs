//! Golden tests for build checks: every folder under
//! `testdata/frontend/checks/` has a `Dockerfile` (optionally a
//! `.dockerignore` and a `build-args` file of `KEY=VALUE` lines) and either
//! `expected.txt` (the rendered findings, then `error: …` when the checks
//! fail the build) or `error.txt` (why the checks could not run).
//! A folder named after a rule must report that rule; `<Rule>-ok` must not.
//! `UPDATE_GOLDEN=1` rewrites the expected files instead of comparing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use frontend::checks::{self, CheckOptions, RULES};
use frontend::dockerignore::PatternMatcher;

mod common;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frontend/checks")
}

fn render(dir: &Path) -> (String, bool) {
    let src = fs::read(dir.join("Dockerfile")).expect("readable Dockerfile");
    let ignore = fs::read_to_string(dir.join(".dockerignore"))
        .ok()
        .map(|t| PatternMatcher::from_dockerignore(&t).expect("valid .dockerignore"));
    let build_args: BTreeMap<String, String> = fs::read_to_string(dir.join("build-args"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let opts = CheckOptions {
        build_args,
        ignore: ignore.as_ref(),
        ..CheckOptions::default()
    };
    match checks::run(&src, &opts) {
        Ok(report) => {
            let mut out = report.render("Dockerfile", &src);
            if let Some(e) = report.error() {
                out.push_str(&format!("error: {e}\n"));
            }
            (out, true)
        }
        Err(e) => (format!("{e}\n"), false),
    }
}

#[test]
fn golden_checks() {
    common::run_golden(&cases_dir(), "expected.txt", render);
}

/// Each documented rule has a folder that triggers it and one that does
/// not, and the outputs say so (independently of the golden text).
#[test]
fn every_rule_has_a_triggering_and_a_clean_case() {
    let mut missing = Vec::new();
    for rule in RULES {
        let tag = format!(": {}: ", rule.name);
        let bad = cases_dir().join(rule.name);
        let good = cases_dir().join(format!("{}-ok", rule.name));
        if !bad.join("Dockerfile").is_file() || !good.join("Dockerfile").is_file() {
            missing.push(format!("{}: no case folders", rule.name));
            continue;
        }
        let (out, ok) = render(&bad);
        if !ok || !out.contains(&tag) {
            missing.push(format!("{}: not reported by its case:\n{out}", rule.name));
        }
        let (out, ok) = render(&good);
        if !ok || out.contains(&tag) {
            missing.push(format!("{}: reported by the clean case:\n{out}", rule.name));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn findings_are_in_line_order_with_urls() {
    let src = b"FROM busybox AS Build\nMAINTAINER x\nWORKDIR app\nCMD run\n";
    let report = checks::run(src, &CheckOptions::default()).expect("checks run");
    let rules: Vec<&str> = report.findings.iter().map(|f| f.rule).collect();
    assert_eq!(
        rules,
        [
            "StageNameCasing",
            "MaintainerDeprecated",
            "WorkdirRelativePath",
            "JSONArgsRecommended"
        ]
    );
    assert_eq!(
        report.findings[0].url,
        "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/"
    );
    assert!(report.error().is_none(), "error=true was not set");
}

#[test]
fn build_arg_overrides_the_directive() {
    let src = b"# check=skip=all\nFROM busybox AS Build\n";
    let report = checks::run(src, &CheckOptions::default()).expect("checks run");
    assert!(report.findings.is_empty());
    let opts = CheckOptions {
        build_args: [(
            checks::CHECK_BUILD_ARG.to_string(),
            "error=true".to_string(),
        )]
        .into(),
        ..CheckOptions::default()
    };
    let report = checks::run(src, &opts).expect("checks run");
    assert_eq!(report.findings.len(), 1);
    assert_eq!(
        report.error().as_deref(),
        Some("lint violation found for rules: StageNameCasing")
    );
}

#[test]
fn known_image_env_defines_variables() {
    let src = b"FROM example/app\nENV LD_LIBRARY_PATH=$APP_HOME/lib\n";
    let report = checks::run(src, &CheckOptions::default()).expect("checks run");
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert_eq!(
        report.findings[0].message,
        "Usage of undefined variable '$APP_HOME'"
    );
    let opts = CheckOptions {
        image_env: [(
            "example/app".to_string(),
            vec![("APP_HOME".to_string(), "/opt/app".to_string())],
        )]
        .into(),
        ..CheckOptions::default()
    };
    let report = checks::run(src, &opts).expect("checks run");
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// Timing, not a pass/fail check: run with
/// `cargo test --release -p frontend --test checks -- --ignored --nocapture`.
/// A 5,000-instruction multi-stage Dockerfile in the shape of the compile
/// benchmark's.
#[test]
#[ignore = "timing; run by hand"]
fn timing_5000_instructions() {
    use std::fmt::Write as _;
    let mut src = String::from("ARG BASE=alpine:3.20\nARG VERSION=1.0\n");
    for s in 0..50 {
        if s % 3 == 0 {
            writeln!(src, "FROM ${{BASE}} AS stage{s}\nARG VERSION").unwrap();
        } else {
            writeln!(src, "FROM stage{} AS stage{s}\nARG VERSION", s - 1).unwrap();
        }
        for i in 0..98 {
            let line = match i % 10 {
                0 => format!("ENV VAR_{i}=value-{i} PATH=/opt/{i}/bin:$PATH"),
                1 => format!("COPY --chown=app:app src/file-{i}.txt /app/data/"),
                2 => format!("ARG ARG_{i}=default-{i}"),
                3 => format!("LABEL com.example.label-{i}=\"value ${{ARG_{}}}\"", i - 1),
                4 => format!("RUN echo {i} $VAR_{}", i - 4),
                5 => format!("WORKDIR /work/dir-{i}"),
                6 => format!("EXPOSE {} {}/udp", 1000 + i, 2000 + i),
                7 => format!("USER user{i}:group{i}"),
                8 => format!("CMD [\"/app/server\", \"--port\", \"{i}\"]"),
                _ => format!("VOLUME /data/{i}"),
            };
            writeln!(src, "{line}").unwrap();
        }
    }
    let ignore = PatternMatcher::new(["*.md", "target"]).unwrap();
    let opts = CheckOptions {
        ignore: Some(&ignore),
        ..CheckOptions::default()
    };
    let mut times = Vec::new();
    let mut findings = 0;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        findings = checks::run(src.as_bytes(), &opts).unwrap().findings.len();
        times.push(t.elapsed());
    }
    times.sort();
    let mut parse_times = Vec::new();
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let ast = frontend::parser::parse(src.as_bytes()).unwrap();
        let loc = frontend::instructions::Locator::new(src.as_bytes());
        drop(frontend::instructions::parse_dockerfile(ast, &loc).unwrap());
        parse_times.push(t.elapsed());
    }
    parse_times.sort();
    println!("parse alone: min {:?}", parse_times[0]);
    println!(
        "checks on {} lines: min {:?}, median {:?}, {findings} findings",
        src.lines().count(),
        times[0],
        times[times.len() / 2]
    );
}

#[test]
fn configuration_errors_name_their_source() {
    let src = b"# check=error=maybe\nFROM busybox\n";
    let err = checks::run(src, &CheckOptions::default()).unwrap_err();
    assert_eq!(
        err.render("Dockerfile", src),
        "Dockerfile:1:1: invalid check directive: failed to parse check option \"error=maybe\": invalid boolean \"maybe\"\n    1 | # check=error=maybe\n      | ^\n"
    );
    let opts = CheckOptions {
        build_args: [(checks::CHECK_BUILD_ARG.to_string(), "skip".to_string())].into(),
        ..CheckOptions::default()
    };
    let err = checks::run(b"FROM busybox\n", &opts).unwrap_err();
    assert_eq!(
        err.render("Dockerfile", b"FROM busybox\n"),
        "invalid BUILDKIT_DOCKERFILE_CHECK build arg: invalid check option \"skip\"\n"
    );
}
