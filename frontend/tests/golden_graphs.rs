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

mod common;

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
    common::run_golden(&cases_dir(), "graph.json", render);
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that exercise expansion, flags, heredocs and stage references.
const FRAGMENTS: &[&str] = &[
    "$",
    "${",
    "}",
    "${A:-x}",
    "${A:?boom}",
    "${A#*}",
    "'",
    "\"",
    "\\",
    "\n",
    " ",
    "=",
    ",",
    "--mount=",
    "type=cache,target=/x",
    "from=",
    "--from=",
    "0",
    "99",
    "-1",
    "<<EOF\nx\nEOF\n",
    "<<-'E'\n\tE\n",
    "FROM ",
    "FROM scratch AS s\n",
    "COPY ",
    "RUN ",
    "ARG ",
    "ENV ",
    "ONBUILD ",
    "AS ",
    "--platform=",
    "linux/arm64",
    "/",
    "..",
    "*",
    "[\"a\"]",
    "HEALTHCHECK --interval=",
    "1ms",
    "EXPOSE ",
    "80-90/udp",
    "--chmod=",
    "u+x",
    "WORKDIR ",
    "USER ",
    "SHELL [\"sh\"]\n",
    "--link",
    "--parents",
    "ADD --checksum=sha256:",
    "https://x/y",
];

fn mutate(rng: &mut Rng, src: &str) -> String {
    let mut s: Vec<char> = src.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len() + 1);
        match rng.below(4) {
            0 if !s.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(s.len());
                s.drain(at.min(s.len())..end);
            }
            1 => {
                let frag = FRAGMENTS[rng.below(FRAGMENTS.len())];
                s.splice(at..at, frag.chars());
            }
            2 if !s.is_empty() => {
                let from = rng.below(s.len());
                let len = rng.below(20).min(s.len() - from);
                let piece: Vec<char> = s[from..from + len].to_vec();
                s.splice(at..at, piece);
            }
            _ => {
                let c = char::from_u32(rng.below(0x80) as u32).unwrap_or('x');
                s.insert(at, c);
            }
        }
    }
    s.into_iter().collect()
}

/// Compilation never panics, and every failure points somewhere in the file.
#[test]
fn compile_survives_mutated_dockerfiles() {
    let mut seeds: Vec<String> = Vec::new();
    for dir in [cases_dir(), cases_dir().join("../instructions")] {
        for e in fs::read_dir(&dir).expect("testdata exists") {
            let p = e.expect("readable").path().join("Dockerfile");
            if let Ok(s) = fs::read_to_string(&p) {
                seeds.push(s);
            }
        }
    }
    assert!(seeds.len() > 40);
    let iterations: usize = std::env::var("MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let targets = [
        None,
        Some("build".to_string()),
        Some("s".to_string()),
        Some("0".to_string()),
    ];
    let (mut ok, mut failed) = (0usize, 0usize);
    for i in 0..iterations {
        let seed = &seeds[rng.below(seeds.len())];
        let src = mutate(&mut rng, seed);
        let mut build_args = BTreeMap::new();
        if rng.below(2) == 0 {
            build_args.insert("A".to_string(), "v".to_string());
            build_args.insert("http_proxy".to_string(), "p".to_string());
        }
        let opts = CompileOptions {
            // Mostly the default target: a named one rarely exists.
            target: if rng.below(8) == 0 {
                targets[rng.below(targets.len())].clone()
            } else {
                None
            },
            build_args,
            ..CompileOptions::default()
        };
        let lines = src.split('\n').count();
        let result = std::panic::catch_unwind(|| {
            compile(src.as_bytes(), &opts, &FakeResolver(BTreeMap::new()))
        });
        match result {
            Ok(Ok(c)) => {
                ok += 1;
                assert!(c.target_stage < c.stages.len());
                for (_, v) in c.graph.vertices() {
                    if let Some(p) = v.position {
                        assert!(
                            p.line >= 1 && p.line <= lines && p.column >= 1,
                            "iteration {i}: {p:?}\n{src}"
                        );
                    }
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                let p = e.position;
                assert!(
                    p.line >= 1 && p.column >= 1,
                    "iteration {i}: error without position: {e}\n{src}"
                );
                assert!(
                    p.line <= lines.max(1),
                    "iteration {i}: line {} past the end: {e}\n{src}",
                    p.line
                );
                assert!(!e.message.is_empty(), "iteration {i}: empty message\n{src}");
            }
            Err(_) => panic!("iteration {i}: compile panicked on:\n{src}"),
        }
    }
    // Both outcomes must be exercised, or the mutations are not doing their job.
    assert!(
        ok > iterations / 20 && failed > iterations / 20,
        "ok {ok}, failed {failed}"
    );
}
