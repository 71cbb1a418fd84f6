//! Golden tests for typed instructions: every folder under
//! `testdata/frontend/instructions/` has a `Dockerfile` and either
//! `expected.json` (the typed form) or `error.txt` (`LINE:COL: message`).
//! `UPDATE_GOLDEN=1` rewrites the expected files instead of comparing.

use std::fs;
use std::path::{Path, PathBuf};

use frontend::instructions::{Locator, parse_dockerfile};

mod common;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frontend/instructions")
}

/// The typed form, or the error as `LINE:COL: message`.
fn render(src: &[u8]) -> (String, bool) {
    let ast = match frontend::parser::parse(src) {
        Ok(a) => a,
        Err(e) => return (format!("{e}\n"), false),
    };
    match parse_dockerfile(ast, &Locator::new(src)) {
        Ok(df) => {
            let value = serde_json::to_value(&df).expect("serializable");
            (
                serde_json::to_string_pretty(&value).expect("serializable") + "\n",
                true,
            )
        }
        Err(e) => (format!("{e}\n"), false),
    }
}

#[test]
fn golden_instructions() {
    common::run_golden(&cases_dir(), "expected.json", |dir| {
        render(&fs::read(dir.join("Dockerfile")).expect("readable Dockerfile"))
    });
}
