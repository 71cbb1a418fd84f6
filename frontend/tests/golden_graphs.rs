//! Golden tests for compiled graphs: every folder under
//! `testdata/frontend/graphs/` has a `Dockerfile`, optionally `options.json`
//! (`target`, `build_args`, `platform`) and `images.json` (a fake resolver:
//! reference → `{digest, config}`), and either `graph.json` (graph, stages,
//! image configs, warnings) or `error.txt` (`LINE:COL: message`).
//! `UPDATE_GOLDEN=1` rewrites the expected files instead of comparing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use frontend::convert::{CompileOptions, ImageResolver, Platform, ResolvedImage, compile};
use serde::Deserialize;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/frontend/graphs")
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    target: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    platform: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeImage {
    digest: String,
    config: serde_json::Value,
}

/// Knows the images of `images.json`, by normalized reference, for any platform.
struct FakeResolver(BTreeMap<String, FakeImage>);

impl ImageResolver for FakeResolver {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        Ok(self.0.get(reference).map(|i| ResolvedImage {
            digest: i.digest.clone(),
            config: serde_json::to_vec(&i.config).expect("serializable"),
        }))
    }
}

fn render(dir: &Path) -> (String, bool) {
    let src = fs::read(dir.join("Dockerfile")).expect("readable Dockerfile");
    let options: Options = match fs::read(dir.join("options.json")) {
        Ok(b) => serde_json::from_slice(&b).expect("valid options.json"),
        Err(_) => Options::default(),
    };
    let images = match fs::read(dir.join("images.json")) {
        Ok(b) => serde_json::from_slice(&b).expect("valid images.json"),
        Err(_) => BTreeMap::new(),
    };
    let opts = CompileOptions {
        target: options.target,
        build_args: options.build_args,
        platform: options.platform.map(|p| p.parse().expect("valid platform")),
        ..CompileOptions::default()
    };
    match compile(&src, &opts, &FakeResolver(images)) {
        Ok(c) => {
            let value = serde_json::to_value(&c).expect("serializable");
            (
                serde_json::to_string_pretty(&value).expect("serializable") + "\n",
                true,
            )
        }
        Err(e) => (format!("{e}\n"), false),
    }
}

#[test]
fn golden_graphs() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("testdata/frontend/graphs exists")
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
            ("graph.json", "error.txt")
        } else {
            ("error.txt", "graph.json")
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
