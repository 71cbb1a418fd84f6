//! The Dockerfile parser against BuildKit's own parser fixtures (shared
//! conformance folder), plus behaviour and error-position checks that need
//! no fixtures.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use frontend::parser::{Ast, Heredoc, Node, dump, go_quote, parse};
use frontend::{Position, SourceError};

/// The `moby-parser` fixture folder, or `None` (after saying so) when it is
/// absent outside CI. In CI a missing folder fails the test.
fn fixtures() -> Option<PathBuf> {
    let root = match std::env::var_os("BUILDER_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("..")
            .join("shared")
            .join("conformance"),
    };
    let dir = root.join("moby-parser");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "conformance fixtures not found at {} (CI is set, so this is a failure)",
            dir.display()
        );
    }
    eprintln!(
        "skipped: conformance fixtures not found at {}",
        dir.display()
    );
    None
}

fn case_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// A short line-by-line difference for a failure message.
fn diff(expected: &str, got: &str) -> String {
    let mut out = String::new();
    let (e, g): (Vec<_>, Vec<_>) = (expected.split('\n').collect(), got.split('\n').collect());
    for i in 0..e.len().max(g.len()) {
        let (el, gl) = (e.get(i), g.get(i));
        if el != gl {
            let _ = writeln!(
                out,
                "    line {}:\n      expected: {:?}\n      got:      {:?}",
                i + 1,
                el,
                gl
            );
        }
    }
    out
}

fn parse_str(src: &str) -> Ast {
    parse(src.as_bytes()).unwrap_or_else(|e| panic!("parse failed: {e}\n{src}"))
}

fn parse_err(src: &str) -> SourceError {
    match parse(src.as_bytes()) {
        Ok(ast) => panic!("expected an error, got:\n{}", dump(&ast)),
        Err(e) => e,
    }
}

fn values(nodes: &[Node]) -> Vec<&str> {
    nodes.iter().map(|n| n.value.as_str()).collect()
}

#[test]
fn testfiles_dump_byte_identically() {
    let Some(dir) = fixtures() else { return };
    let cases = case_dirs(&dir.join("testfiles"));
    assert_eq!(
        cases.len(),
        33,
        "expected the 33 upstream cases in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let src = fs::read(case.join("Dockerfile")).expect("Dockerfile");
        let expected = fs::read(case.join("result")).expect("result");
        let expected = String::from_utf8(expected).expect("result is UTF-8");
        match parse(&src) {
            Err(e) => failures.push(format!("{name}: parse error {e}")),
            Ok(ast) => {
                let got = dump(&ast);
                if got != expected {
                    failures.push(format!("{name}: dump differs\n{}", diff(&expected, &got)));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn negative_testfiles_fail() {
    let Some(dir) = fixtures() else { return };
    let cases = case_dirs(&dir.join("testfiles-negative"));
    assert_eq!(cases.len(), 4, "expected the 4 upstream negative cases");
    let mut unexpected = Vec::new();
    for case in &cases {
        let src = fs::read(case.join("Dockerfile")).expect("Dockerfile");
        match parse(&src) {
            Ok(ast) => unexpected.push(format!("{}: parsed as\n{}", case.display(), dump(&ast))),
            Err(e) => {
                let lines = src.split(|&b| b == b'\n').count();
                assert!(
                    e.position.line >= 1 && e.position.line <= lines + 1,
                    "{}: {e:?}",
                    case.display()
                );
                assert!(e.position.column >= 1, "{}: {e:?}", case.display());
            }
        }
    }
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
}

fn json_heredoc(v: &serde_json::Value) -> Heredoc {
    Heredoc {
        name: v["name"].as_str().expect("name").to_owned(),
        content: v["content"].as_str().expect("content").to_owned(),
        expand: v["expand"].as_bool().expect("expand"),
        chomp: v["chomp"].as_bool().expect("chomp"),
        fd: u32::try_from(v["fd"].as_u64().expect("fd")).expect("fd fits"),
    }
}

#[test]
fn heredoc_extraction_vectors() {
    let Some(dir) = fixtures() else { return };
    let text = fs::read_to_string(dir.join("extra/heredoc-extraction.json"))
        .expect("heredoc-extraction.json");
    let data: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let ast = parse_str(data["dockerfile"].as_str().expect("dockerfile"));
    let mut failures = Vec::new();
    let expected = data["expected"].as_array().expect("expected");
    assert!(!expected.is_empty());
    for entry in expected {
        let index = entry["instruction_index"].as_u64().expect("index") as usize;
        let want: Vec<Heredoc> = entry["heredocs"]
            .as_array()
            .expect("heredocs")
            .iter()
            .map(json_heredoc)
            .collect();
        match ast.children.get(index) {
            None => failures.push(format!("instruction {index} missing")),
            Some(node) if node.heredocs != want => failures.push(format!(
                "instruction {index} ({:?}): heredocs\n  expected {want:?}\n  got      {:?}",
                node.original, node.heredocs
            )),
            Some(_) => {}
        }
    }
    let want_dump = data["expected_dump"].as_str().expect("expected_dump");
    let got = dump(&ast);
    if got != want_dump {
        failures.push(format!("dump differs\n{}", diff(want_dump, &got)));
    }

    let json_case = parse_str(
        data["json_form_case"]["dockerfile"]
            .as_str()
            .expect("json_form_case"),
    );
    for i in 1..=3 {
        let node = &json_case.children[i];
        if !node.json || !node.heredocs.is_empty() {
            failures.push(format!(
                "json_form_case child {i}: json={} heredocs={:?}",
                node.json, node.heredocs
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_array_vectors() {
    let Some(dir) = fixtures() else { return };
    let text = fs::read_to_string(dir.join("extra/json-arrays.json")).expect("json-arrays.json");
    let data: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut failures = Vec::new();
    let valid = data["valid"].as_array().expect("valid");
    assert_eq!(valid.len(), 8);
    for v in valid {
        let input = v["input"].as_str().expect("input");
        let elements: Vec<&str> = v["elements"]
            .as_array()
            .expect("elements")
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        for keyword in ["CMD", "RUN", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"] {
            let src = format!("{keyword} {input}");
            match parse(src.as_bytes()) {
                Err(e) => failures.push(format!("{src:?}: error {e}")),
                Ok(ast) => {
                    let node = &ast.children[0];
                    if !node.json || values(&node.next) != elements {
                        failures.push(format!(
                            "{src:?}: json={} args={:?}",
                            node.json,
                            values(&node.next)
                        ));
                    }
                }
            }
        }
    }
    let bad = data["not_string_array"]
        .as_array()
        .expect("not_string_array");
    assert_eq!(bad.len(), 8);
    for v in bad {
        let input = v.as_str().expect("input");
        for keyword in ["CMD", "COPY", "HEALTHCHECK CMD"] {
            let src = format!("{keyword} {input}");
            match parse(src.as_bytes()) {
                Ok(ast) => failures.push(format!("{src:?}: accepted as {}", dump(&ast))),
                Err(e) => {
                    // The caret goes under the first member that is not a string.
                    let want = src
                        .find(",")
                        .map(|c| src[..c + 1].chars().count() + 1)
                        .unwrap();
                    if e.position != Position::new(1, want) {
                        failures.push(format!(
                            "{src:?}: error at {:?}, want column {want}",
                            e.position
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn line_numbers_fixture() {
    let Some(dir) = fixtures() else { return };
    let src = fs::read(dir.join("testfile-line/Dockerfile")).expect("Dockerfile");
    let ast = parse(&src).expect("parses");
    let ranges: Vec<(usize, usize)> = ast
        .children
        .iter()
        .map(|n| (n.start_line, n.end_line))
        .collect();
    assert_eq!(ranges, [(5, 5), (11, 12), (17, 31)]);
    assert_eq!((ast.start_line(), ast.end_line()), (5, 31));
}

// ---- behaviour that needs no fixtures ----

#[test]
fn dump_of_the_documented_examples() {
    let src = "FROM scratch\nCOPY --user=me --doit=true foo /tmp/\nCMD []\nHEALTHCHECK\n\
               ONBUILD RUN [\"echo\", \"test\"]\nONBUILD COPY --from=x a b\nFOO --x bar\nfoo\n\
               ARG abc=\"123 456\" def\nENV name value\nENV SCUBA 1 DUBA 3\nENV a=1 b=2\n\
               COPY -- foo /tmp/\nCMD --doit -- [ ]\nCMD ['a']\nFROM a AS b\nRUN \"<<NOHEREDOC\"\n";
    let want = "(from \"scratch\")\n(copy [\"--user=me\" \"--doit=true\"] \"foo\" \"/tmp/\")\n(cmd)\n\
                (healthcheck)\n(onbuild (run \"echo\" \"test\"))\n(onbuild (copy [\"--from=x\"] \"a\" \"b\"))\n\
                (foo [\"--x\"] \"\")\n(foo \"\")\n(arg \"abc=\\\"123 456\\\"\" \"def\")\n\
                (env \"name\" \"value\" \"\")\n(env \"SCUBA\" \"1 DUBA 3\" \"\")\n(env \"a\" \"1\" \"=\" \"b\" \"2\" \"=\")\n\
                (copy \"foo\" \"/tmp/\")\n(cmd [\"--doit\"])\n(cmd \"['a']\")\n(from \"a\" \"AS\" \"b\")\n\
                (run \"\\\"<<NOHEREDOC\\\"\")\n";
    let got = dump(&parse_str(src));
    assert_eq!(got, want, "\n{}", diff(want, &got));
}

#[test]
fn node_fields_are_filled() {
    let ast =
        parse_str("# syntax=docker/dockerfile:1\n# a comment\nRUN echo \\\n  hi\nCMD [\"a\"]\n");
    assert_eq!(ast.directives.len(), 1);
    assert_eq!(ast.directives[0].name, "syntax");
    assert_eq!(ast.directives[0].value, "docker/dockerfile:1");
    assert_eq!(ast.directives[0].line, 1);
    assert_eq!(ast.escape, '\\');
    let run = &ast.children[0];
    assert_eq!(run.original, "RUN echo   hi");
    assert_eq!((run.start_line, run.end_line), (3, 4));
    assert_eq!(
        run.prev_comment,
        ["syntax=docker/dockerfile:1", "a comment"]
    );
    assert!(!run.json);
    let cmd = &ast.children[1];
    assert!(cmd.json);
    assert!(cmd.prev_comment.is_empty());
    assert_eq!((cmd.start_line, cmd.end_line), (5, 5));
}

#[test]
fn escape_directive_changes_continuation_and_words() {
    let ast = parse_str("# escape=`\nRUN a \\\nENV x=\"a`\" b\" y=1\nRUN b `\n c\n");
    assert_eq!(ast.escape, '`');
    assert_eq!(
        dump(&ast),
        "(run \"a \\\\\")\n(env \"x\" \"\\\"a`\\\" b\\\"\" \"=\" \"y\" \"1\" \"=\")\n(run \"b  c\")\n"
    );
}

#[test]
fn crlf_bom_and_comments_inside_continuations() {
    let lf = parse_str("FROM x\nRUN a \\\n  # note\n  b\n");
    let crlf = parse_str("\u{feff}FROM x\r\nRUN a \\\r\n  # note\r\n  b\r\n");
    assert_eq!(dump(&lf), "(from \"x\")\n(run \"a   b\")\n");
    assert_eq!(dump(&crlf), dump(&lf));
    assert_eq!(
        (crlf.children[1].start_line, crlf.children[1].end_line),
        (2, 4)
    );
}

#[test]
fn empty_continuation_lines_warn() {
    let ast = parse_str("FROM x\nRUN a \\\n\n   \n  b\nRUN c\n");
    assert_eq!(dump(&ast), "(from \"x\")\n(run \"a   b\")\n(run \"c\")\n");
    assert_eq!(ast.warnings.len(), 1);
    assert_eq!(ast.warnings[0].line, 3);
    assert_eq!(
        (ast.children[1].start_line, ast.children[1].end_line),
        (2, 5)
    );
}

#[test]
fn directives_phase_and_errors() {
    // An ordinary comment closes the phase: the escape line is a comment.
    let ast = parse_str("# hello\n# escape=`\nRUN a `\n");
    assert_eq!(ast.escape, '\\');
    assert!(ast.directives.is_empty());
    // Unknown directive names close it too.
    let ast = parse_str("# foo=bar\n# escape=`\nFROM x\n");
    assert_eq!(ast.escape, '\\');
    // Names ignore case; check and syntax are recorded.
    let ast = parse_str("#CHECK = skip=all\n# Syntax=x \n#escape=`\nFROM x\n");
    let names: Vec<_> = ast
        .directives
        .iter()
        .map(|d| (d.name.as_str(), d.value.as_str(), d.line))
        .collect();
    assert_eq!(
        names,
        [
            ("check", "skip=all", 1),
            ("syntax", "x", 2),
            ("escape", "`", 3)
        ]
    );
    assert_eq!(ast.escape, '`');
}

#[test]
fn heredocs_on_onbuild_and_chomp_terminators() {
    let ast = parse_str("ONBUILD RUN <<EOF\nbody\nEOF\nRUN <<-END\n\tx\r\n\t\tEND\r\nFROM y\n");
    let onbuild = &ast.children[0];
    assert_eq!(onbuild.heredocs.len(), 1);
    assert_eq!(onbuild.heredocs[0].content, "body\n");
    assert_eq!((onbuild.start_line, onbuild.end_line), (1, 3));
    let run = &ast.children[1];
    assert_eq!(run.heredocs[0].content, "\tx\r\n");
    assert!(run.heredocs[0].chomp);
    assert_eq!((run.start_line, run.end_line), (4, 6));
    assert_eq!(
        dump(&ast),
        "(onbuild (run \"<<EOF\"))\n(run \"<<-END\")\n(from \"y\")\n"
    );
}

#[test]
fn heredoc_detection_edge_cases() {
    // `<<-` followed by a space is two words: no heredoc, the body is read
    // as instructions.
    let ast = parse_str("RUN <<- EOF\nEOF\n");
    assert!(ast.children[0].heredocs.is_empty());
    assert_eq!(dump(&ast), "(run \"<<- EOF\")\n(eof \"\")\n");
    // JSON form never has heredocs; other keywords neither.
    let ast = parse_str("RUN [\"<<EOF\"]\nLABEL a=<<EOF\nEOF\n");
    assert!(ast.children.iter().all(|n| n.heredocs.is_empty()));
    assert_eq!(ast.children.len(), 3);
    // An unterminated quote makes the lexer fail: no heredocs.
    let ast = parse_str("RUN <<EOF \"x\nFROM y\n");
    assert_eq!(ast.children.len(), 2);
    // Upstream lexer quirk: a `${VAR` with a modifier loses the text before
    // it in words mode, so this is no heredoc; a plain `${X}` is kept.
    let ast = parse_str("RUN cat <<EOF${X:-}\nEOF\n");
    assert_eq!(dump(&ast), "(run \"cat <<EOF${X:-}\")\n(eof \"\")\n");
    let ast = parse_str("RUN cat <<EOF${X}\nbody\nEOF${X}\n");
    assert_eq!(ast.children[0].heredocs[0].name, "EOF${X}");
    assert_eq!(ast.children.len(), 1);
    // Only digits may precede `<<`.
    assert_eq!(parse_str("RUN a<<EOF\nEOF\n").children.len(), 2);
    // Two heredocs read their bodies in order.
    let ast = parse_str("COPY <<A 5<<\"B\" /d\na\nA\nb\nB\n");
    let got: Vec<_> = ast.children[0]
        .heredocs
        .iter()
        .map(|h| (h.name.as_str(), h.content.as_str(), h.expand, h.fd))
        .collect();
    assert_eq!(got, [("A", "a\n", true, 0), ("B", "b\n", false, 5)]);
}

#[test]
fn json_quirks_of_go() {
    // Lone surrogates decode to U+FFFD instead of falling back.
    assert_eq!(
        dump(&parse_str("CMD [\"\\ud800\"]")),
        "(cmd \"\u{fffd}\")\n"
    );
    // A number out of float64 range is a decode error: shell form.
    assert_eq!(
        dump(&parse_str("CMD [\"a\", 1e999]")),
        "(cmd \"[\\\"a\\\", 1e999]\")\n"
    );
    // Text after the array: shell form; for COPY a whitespace list.
    assert_eq!(
        dump(&parse_str("COPY [\"a\", \"b\"] c")),
        "(copy \"[\\\"a\\\",\" \"\\\"b\\\"]\" \"c\")\n"
    );
    // HEALTHCHECK's command is exec form after the type word.
    let ast = parse_str("HEALTHCHECK --retries=3 CMD [\"a\"]");
    assert!(ast.children[0].json);
    assert_eq!(
        dump(&ast),
        "(healthcheck [\"--retries=3\"] \"CMD\" \"a\")\n"
    );
}

#[test]
fn non_utf8_and_control_characters() {
    let ast = parse(b"RUN a\xffb\x01\x7f\nLABEL k=\"\xe2\x80\xa8\"\n").expect("parses");
    assert_eq!(
        dump(&ast),
        "(run \"a\u{fffd}b\\x01\\x7f\")\n(label \"k\" \"\\\"\\u2028\\\"\" \"=\")\n"
    );
    assert_eq!(go_quote("tab\there"), "\"tab\\there\"");
}

#[test]
fn overlong_lines_are_rejected() {
    let ok = format!("FROM x\nRUN {}\n", "a".repeat(65535 - 4));
    assert!(parse(ok.as_bytes()).is_ok());
    let long = format!("FROM x\nRUN {}\n", "a".repeat(65536 - 4));
    let err = parse(long.as_bytes()).unwrap_err();
    assert_eq!(err.position, Position::new(2, 1));
    assert_eq!(
        err.message,
        "dockerfile line greater than max allowed size of 65535"
    );
}

// ---- error positions ----

fn error_at(src: &str) -> (usize, usize, String) {
    let e = parse_err(src);
    (e.position.line, e.position.column, e.message)
}

#[test]
fn error_positions_point_at_the_offending_place() {
    let json = "when using JSON array syntax, arrays must be comprised of strings only";
    assert_eq!(error_at("FROM x\nCMD [\"a\", 1]\n"), (2, 11, json.into()));
    assert_eq!(
        error_at("RUN \\\n  [\"a\", \\\n  true]\n"),
        (3, 3, json.into())
    );
    assert_eq!(error_at("ONBUILD CMD [1]"), (1, 14, json.into()));
    assert_eq!(
        error_at("HEALTHCHECK CMD [\"a\", {}]"),
        (1, 23, json.into())
    );
    assert_eq!(
        error_at("FROM x\nRUN cat <<EOF\nabc\n"),
        (2, 9, "unterminated heredoc".into())
    );
    assert_eq!(
        error_at("COPY <<A <<B /d\nA\n"),
        (1, 10, "unterminated heredoc".into())
    );
    assert_eq!(
        error_at("ONBUILD RUN <<EOF\n"),
        (1, 13, "unterminated heredoc".into())
    );
    assert_eq!(
        error_at("# escape=\\\n# ESCAPE=`\nFROM x"),
        (2, 3, "only one escape parser directive can be used".into())
    );
    assert_eq!(
        error_at("  # escape=x\nFROM x"),
        (
            1,
            12,
            "invalid escape token 'x' does not match ` or \\".into()
        )
    );
    assert_eq!(error_at("\u{feff}# escape=x\nFROM x").0, 1);
    assert_eq!(error_at("\u{feff}# escape=x\nFROM x").1, 11);
    assert_eq!(
        error_at("FROM x\nENV PATH\n"),
        (2, 9, "ENV must have two arguments".into())
    );
    assert_eq!(
        error_at("LABEL k"),
        (1, 8, "LABEL must have two arguments".into())
    );
    assert_eq!(error_at("ENV é=1 ü").1, 9);
    assert_eq!(error_at("ENV a=1 \\\n  b c=2").0, 2);
    assert_eq!(error_at("ENV a=1 \\\n  b c=2").1, 3);
    assert_eq!(error_at(""), (1, 1, "file with no instructions".into()));
    assert_eq!(
        error_at("# only\n\n  \n"),
        (1, 1, "file with no instructions".into())
    );
}

#[test]
fn rendered_errors_show_line_and_caret() {
    let src = "FROM x\n\tRUN cat <<EOF\nabc\n";
    let err = parse(src.as_bytes()).unwrap_err();
    assert_eq!(
        err.render("Dockerfile", src.as_bytes()),
        "Dockerfile:2:10: unterminated heredoc\n    2 |  RUN cat <<EOF\n      |          ^\n"
    );
}
