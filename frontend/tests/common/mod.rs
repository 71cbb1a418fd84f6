//! The golden-file runner shared by the instruction and graph golden tests.

use std::fs;
use std::path::{Path, PathBuf};

/// Runs every case folder under `cases` (one with a `Dockerfile`): `render`
/// gives the output and whether it succeeded; success is compared with
/// `ok_file`, failure with `error.txt`. With `UPDATE_GOLDEN=1` the expected
/// file is rewritten (and the other one removed) instead. Reports every
/// failing case, not just the first.
pub(crate) fn run_golden(cases: &Path, ok_file: &str, render: impl Fn(&Path) -> (String, bool)) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = fs::read_dir(cases)
        .unwrap_or_else(|e| panic!("{} exists: {e}", cases.display()))
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
        let (got, ok) = render(dir);
        let (file, stale) = if ok {
            (ok_file, "error.txt")
        } else {
            ("error.txt", ok_file)
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
