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
