//! Golden tests for typed instructions: every folder under
//! `testdata/frontend/instructions/` has a `Dockerfile` and either
//! `expected.json` (the typed form) or `error.txt` (`LINE:COL: message`).
//! `UPDATE_GOLDEN=1` rewrites the expected files instead of comparing.

use std::fs;
use std::path::{Path, PathBuf};

use frontend::instructions::{Locator, parse_dockerfile};

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
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("testdata/frontend/instructions exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 10,
        "expected the golden cases, found {}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let src = fs::read(dir.join("Dockerfile")).expect("readable Dockerfile");
        let (got, ok) = render(&src);
        let (file, stale) = if ok {
            ("expected.json", "error.txt")
        } else {
            ("error.txt", "expected.json")
        };
        let path = dir.join(file);
        if update {
            fs::write(&path, &got).expect("writable");
            let _ = fs::remove_file(dir.join(stale));
            continue;
        }
        match fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}: {file} differs\n--- want\n{want}--- got\n{got}",
                dir.display()
            )),
            Err(_) => failures.push(format!("{}: no {file}; got\n{got}", dir.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}
