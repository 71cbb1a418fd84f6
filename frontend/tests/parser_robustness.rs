//! Robustness of the Dockerfile parser: generated and mutated inputs must
//! never panic, and errors must point inside the file.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use frontend::parser::{dump, parse};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

const CORPUS: &[&str] = &[
    "FROM alpine:3.19 AS base\nRUN apk add --no-cache curl \\\n    && rm -rf /var/cache\nCMD [\"sh\", \"-c\", \"echo hi\"]\n",
    "# syntax=docker/dockerfile:1\n# escape=`\nFROM mcr.microsoft.com/windows\nRUN dir `\n  c:\\\nENV A=1 `\n B=\"2 3\"\n",
    "ARG BASE=debian\nFROM ${BASE}\nCOPY --from=build --chown=1:1 [\"a b\", \"/c\"]\nENV PATH /usr/bin:$PATH\nLABEL a=b \"c d\"=e\n",
    "FROM x\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<A <<-B /dst\nbody a\nA\n\tbody b\n\tB\n",
    "FROM x\nONBUILD RUN <<EOF cat\nx\nEOF\nONBUILD COPY --from=y a b\nHEALTHCHECK --interval=5s CMD [\"true\"]\n",
    "FROM x\nRUN --mount=type=cache,target=/root/.cache \\\n    # comment inside\n\n    pip install -r req.txt\nUSER 1000:1000\nWORKDIR /app\n",
    "\u{feff}FROM x\r\nRUN a \\\r\n  b\r\nEXPOSE 80/tcp 443\r\nVOLUME /data\r\nSTOPSIGNAL SIGTERM\r\n",
    "FROM x\nSHELL [\"powershell\", \"-Command\"]\nENTRYPOINT [\"\\u00e9\", \"\\ud800\", \"\\/\"]\nCMD [\"a\", 1]\n",
    "FROM x\nENV k\nMAINTAINER someone <a@b>\nUNKNOWN --flag thing\n",
    "FROM x\nRUN cat <<'EOF' | sh\n$HOME\nEOF\nRUN 3<<X <<\"Y\"\nx\nX\ny\nY\n",
];

const INSERTIONS: &[&[u8]] = &[
    b"\\",
    b"\\\n",
    b"`",
    b"\"",
    b"'",
    b"<<EOF",
    b"<<-EOF\n",
    b"\nEOF\n",
    b"[",
    b"]",
    b"[\"a\", 1]",
    b"\0",
    b"\r",
    b"\n",
    b"\t",
    b"#",
    b"\n# escape=`\n",
    b"--",
    b"--x=\"",
    b"=",
    b"${X:-y}",
    b"$",
    b"\xff",
    b"\xc3",
    b"\xe0\xa0\x80",
    b"\xc2\xa0",
    b"\xc2\x85",
    b"\xe2\x80\xa8",
    b"\xef\xbb\xbf",
    b"ONBUILD ",
    b"HEALTHCHECK ",
];

const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
    "FOO",
    "WOR\u{212a}DIR",
];

const WORDS: &[&str] = &[
    "a",
    "b=c",
    "\"x y\"",
    "'q r'",
    "$V",
    "${V}",
    "${V:-d}",
    "\\\"",
    "\\ ",
    "&&",
    "|",
    ">",
    "/path/to",
    "é",
    "한국어",
    "\u{a0}",
    "k=\"v w\"",
    "<<EOF",
    "<<-X",
    "2<<'Y'",
    "\"<<Z\"",
    "--flag",
    "[",
    "]",
    "#",
    "=",
    "\\",
    "`",
    "\t",
];

fn mixed_case(rng: &mut Rng, s: &str) -> String {
    s.chars()
        .map(|c| {
            if rng.chance(30) {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect()
}

fn json_array(rng: &mut Rng) -> String {
    let members = [
        "\"a\"",
        "\"b c\"",
        "\"\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\n\"",
        "1",
        "true",
        "null",
        "{}",
        "[\"x\"]",
        "1e999",
    ];
    let n = rng.below(4);
    let mut out = String::from("[");
    for i in 0..n {
        if i > 0 {
            out.push_str(if rng.chance(80) { ", " } else { "," });
        }
        out.push_str(
            members[if rng.chance(85) {
                rng.below(5)
            } else {
                rng.below(members.len())
            }],
        );
    }
    if rng.chance(90) {
        out.push(']');
    }
    out
}

/// A Dockerfile built from the grammar, with continuations, comments,
/// directives and heredoc bodies (sometimes unterminated).
fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    let escape = if rng.chance(15) { '`' } else { '\\' };
    if rng.chance(30) {
        out.push_str(rng.pick(&[
            "# syntax=docker/dockerfile:1\n",
            "#check=skip=all\n",
            "  # SYNTAX = x \n",
        ]));
    }
    if escape == '`' {
        out.push_str("# escape=`\n");
    } else if rng.chance(10) {
        out.push_str(rng.pick(&[
            "# escape=\\\n",
            "# escape=x\n",
            "# escape=\\\n# escape=\\\n",
        ]));
    }
    for _ in 0..1 + rng.below(12) {
        if rng.chance(15) {
            out.push_str(rng.pick(&["# a comment\n", "\n", "   \n", "#\n"]));
        }
        let keyword = rng.pick(KEYWORDS);
        let keyword = mixed_case(rng, keyword);
        out.push_str(&" ".repeat(rng.below(2)));
        out.push_str(&keyword);
        for _ in 0..rng.below(3) {
            out.push(' ');
            out.push_str(rng.pick(&[
                "--mount=type=cache,target=/x",
                "--from=a",
                "--chmod=755",
                "--x=\"a b\"",
                "--",
                "--'q'",
            ]));
        }
        let mut heredocs = Vec::new();
        if rng.chance(25) {
            out.push(' ');
            out.push_str(&json_array(rng));
        } else {
            for _ in 0..rng.below(6) {
                out.push(' ');
                let word = rng.pick(WORDS);
                if let Some(name) = word.strip_prefix("<<").or_else(|| word.strip_prefix("2<<")) {
                    heredocs.push(name.trim_start_matches('-').trim_matches('\'').to_owned());
                }
                out.push_str(word);
                if rng.chance(10) {
                    out.push(' ');
                    out.push(escape);
                    out.push('\n');
                    out.push_str(rng.pick(&["", "  ", "\t", "# inside\n  ", "\n  "]));
                }
            }
        }
        out.push('\n');
        for name in heredocs {
            for _ in 0..rng.below(3) {
                out.push_str(rng.pick(&[
                    "echo hi\n",
                    "\tindented\n",
                    "FROM not-an-instruction\n",
                    "\n",
                ]));
            }
            if rng.chance(90) {
                out.push_str(if rng.chance(20) { "\t" } else { "" });
                out.push_str(&name);
                out.push('\n');
            }
        }
    }
    out.into_bytes()
}

/// One to four random edits of `seed` (possibly spliced with `other`).
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(9) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 | 2 => {
                let ins = INSERTIONS[rng.below(INSERTIONS.len())];
                data.splice(at..at, ins.iter().copied());
            }
            3 => data.truncate(at),
            4 | 5 => {
                // Duplicate or delete a line.
                let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
                if lines.is_empty() {
                    continue;
                }
                let i = rng.below(lines.len());
                let mut next: Vec<u8> = Vec::with_capacity(data.len() + lines[i].len());
                for (j, line) in lines.iter().enumerate() {
                    if j != i || rng.chance(50) {
                        next.extend_from_slice(line);
                    }
                    if j == i {
                        next.extend_from_slice(line);
                    }
                }
                data = next;
            }
            6 if !data.is_empty() => {
                let i = rng.below(data.len());
                data.remove(i);
            }
            7 => {
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(200)).min(other.len());
                data.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                let b = rng.next() as u8;
                data.insert(at, b);
            }
        }
    }
    data
}

fn fixture_seeds() -> Vec<Vec<u8>> {
    let root = match std::env::var_os("BUILDER_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"),
    };
    let dir = root.join("moby-parser");
    let mut seeds = Vec::new();
    for group in ["testfiles", "testfiles-negative"] {
        let Ok(entries) = std::fs::read_dir(dir.join(group)) else {
            continue;
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("Dockerfile"))
            .collect();
        paths.sort();
        seeds.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    seeds.extend(std::fs::read(dir.join("testfile-line/Dockerfile")).ok());
    if seeds.is_empty() {
        eprintln!(
            "note: conformance fixtures not found at {}; mutating the built-in corpus only",
            dir.display()
        );
    }
    seeds
}

/// What an input did, for the coverage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Parsed { heredocs: bool },
    Rejected,
}

/// Parses and dumps one input; `Err` describes a broken invariant.
fn check(input: &[u8]) -> Result<Outcome, String> {
    let lines: Vec<String> = String::from_utf8_lossy(input)
        .split('\n')
        .map(str::to_owned)
        .collect();
    match parse(input) {
        Ok(ast) => {
            let text = dump(&ast);
            if ast.children.is_empty() {
                return Err("parsed with no instructions".into());
            }
            if text.matches('\n').count() != ast.children.len() || !text.starts_with('(') {
                return Err(format!("dump is not one line per instruction: {text:?}"));
            }
            let mut previous_end = 0;
            for node in &ast.children {
                if node.start_line <= previous_end
                    || node.end_line < node.start_line
                    || node.end_line > lines.len()
                {
                    return Err(format!(
                        "bad line range {}-{} after {previous_end} ({} lines)",
                        node.start_line,
                        node.end_line,
                        lines.len()
                    ));
                }
                previous_end = node.end_line;
            }
            Ok(Outcome::Parsed {
                heredocs: ast.children.iter().any(|n| !n.heredocs.is_empty()),
            })
        }
        Err(e) => {
            let (line, column) = (e.position.line, e.position.column);
            if line < 1 || column < 1 || line > lines.len() + 1 {
                return Err(format!(
                    "error position {line}:{column} out of range ({} lines): {e}",
                    lines.len()
                ));
            }
            if let Some(text) = lines.get(line - 1) {
                let width = text.trim_end_matches('\r').chars().count();
                if column > width + 1 {
                    return Err(format!(
                        "error column {column} beyond line {line} of width {width}: {e}"
                    ));
                }
            }
            let _ = e.render("Dockerfile", input);
            Ok(Outcome::Rejected)
        }
    }
}

#[test]
fn generated_and_mutated_dockerfiles_never_panic() {
    const GENERATED: usize = 40_000;
    const MUTATED: usize = 70_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seeds: Vec<Vec<u8>> = CORPUS.iter().map(|s| s.as_bytes().to_vec()).collect();
    seeds.extend(fixture_seeds());

    let mut failures: Vec<String> = Vec::new();
    let mut outcomes = [0usize; 3];
    let mut run = |input: &[u8], failures: &mut Vec<String>| {
        let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
        let problem = match outcome {
            Ok(Ok(outcome)) => {
                outcomes[match outcome {
                    Outcome::Parsed { heredocs: false } => 0,
                    Outcome::Parsed { heredocs: true } => 1,
                    Outcome::Rejected => 2,
                }] += 1;
                return;
            }
            Ok(Err(problem)) => problem,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("panic: {msg}")
            }
        };
        if failures.len() < 10 {
            failures.push(format!(
                "{problem}\n  input: {:?}",
                String::from_utf8_lossy(input)
            ));
        } else {
            failures.push(String::new());
        }
    };

    let mut count = 0;
    for _ in 0..GENERATED {
        let input = generate(&mut rng);
        run(&input, &mut failures);
        count += 1;
    }
    for _ in 0..MUTATED {
        let seed = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let input = if rng.chance(30) {
            let generated = generate(&mut rng);
            mutate(&mut rng, &generated, seed)
        } else {
            mutate(&mut rng, seed, other)
        };
        run(&input, &mut failures);
        count += 1;
    }
    assert!(count >= 100_000);
    // The inputs must exercise all paths, not degenerate into one kind.
    let [plain, with_heredocs, rejected] = outcomes;
    eprintln!(
        "{count} inputs: {plain} parsed, {with_heredocs} parsed with heredocs, {rejected} rejected"
    );
    assert!(
        plain > count / 10 && with_heredocs > count / 50 && rejected > count / 20,
        "{outcomes:?}"
    );
    let shown: Vec<&String> = failures.iter().filter(|f| !f.is_empty()).collect();
    assert!(
        failures.is_empty(),
        "{} of {count} inputs failed; first ones:\n{}",
        failures.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn pathological_inputs() {
    let deep_json = format!("CMD {}{}", "[".repeat(20_000), "]".repeat(20_000));
    let many_continuations = format!("RUN a{}", " \\\n".repeat(50_000));
    let many_heredocs = format!("RUN {}\n", "<<A ".repeat(2_000));
    let long_line = format!("RUN {}", "x".repeat(70_000));
    let nul_only = "\0".repeat(1000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("deep JSON nesting", deep_json.into_bytes()),
        ("many continuation lines", many_continuations.into_bytes()),
        ("many unterminated heredocs", many_heredocs.into_bytes()),
        ("overlong line", long_line.into_bytes()),
        ("NUL bytes", nul_only.into_bytes()),
        ("lone CRs", b"\r\r\rFROM x\r\r".to_vec()),
        ("only a BOM", b"\xef\xbb\xbf".to_vec()),
        ("only an escape", b"\\".to_vec()),
    ];
    for (name, input) in cases {
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)));
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(problem)) => panic!("{name}: {problem}"),
            Err(_) => panic!("{name}: parser panicked"),
        }
    }
    // Deep JSON is a valid array of arrays, hence not strings; past Go's
    // nesting limit it is not JSON at all and the text is kept verbatim.
    let deep = format!("CMD {}{}", "[".repeat(20_000), "]".repeat(20_000));
    assert!(parse(deep.as_bytes()).is_ok());
}
