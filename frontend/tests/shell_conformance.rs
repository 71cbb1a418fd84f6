//! The shell lexer against BuildKit's fixtures (`moby-shell/`: `envVarTest`,
//! `wordsTest`, `process-with-matches.jsonl`), read exactly as their README
//! says, plus unit tests of the lexer's options.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use frontend::shell::{Env, Lexer, NoEnv};

/// The shared fixture folder, or `None` (after saying so) when it is absent
/// outside CI. In CI a missing folder fails the test.
fn fixture_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("BUILDER_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("..")
            .join("shared")
            .join("conformance"),
    };
    let dir = dir.join("moby-shell");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "conformance fixtures missing at {} (CI is set)",
            dir.display()
        );
    }
    println!(
        "skipped: conformance fixtures not found at {}",
        dir.display()
    );
    None
}

fn read(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn env_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn report(name: &str, checked: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{name}: {} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn env_var_test_fixture() {
    let Some(dir) = fixture_dir() else { return };
    let text = read(&dir, "envVarTest");
    let env = env_of(&[
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]);
    let lexer = Lexer::new('\\');
    let mut failures = Vec::new();
    let (mut all, mut unix) = (0, 0);
    for (number, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            failures.push(format!("line {}: not 3 fields: {line:?}", number + 1));
            continue;
        };
        match platform {
            "A" => all += 1,
            "U" => unix += 1,
            "W" => continue,
            other => {
                failures.push(format!("line {}: unknown platform {other:?}", number + 1));
                continue;
            }
        }
        let got = lexer.process_word(input, &env);
        match (expected, got) {
            ("error", Err(_)) => {}
            ("error", Ok(p)) => failures.push(format!(
                "line {}: {input:?}: expected an error, got {:?}",
                number + 1,
                p.value
            )),
            (want, Ok(p)) if p.value == want => {}
            (want, Ok(p)) => failures.push(format!(
                "line {}: {input:?}: want {want:?}, got {:?}",
                number + 1,
                p.value
            )),
            (want, Err(e)) => failures.push(format!(
                "line {}: {input:?}: want {want:?}, got error {e}",
                number + 1
            )),
        }
    }
    // The README counts the lines; a parsing slip would silently check fewer.
    assert_eq!((all, unix), (226, 2), "fixture line counts (A, U)");
    report("envVarTest", all + unix, &failures);
}

#[test]
fn words_test_fixture() {
    let Some(dir) = fixture_dir() else { return };
    let text = read(&dir, "wordsTest");
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (number, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            let rest = rest.trim_start_matches(' ');
            let (key, value) = rest.split_once('=').expect("ENV line with '='");
            env.push((key.to_owned(), value.to_owned()));
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        let [input, expected] = parts[..] else {
            failures.push(format!(
                "line {}: not exactly one '|': {line:?}",
                number + 1
            ));
            continue;
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        let got = match lexer.process_words(input, &env) {
            Ok(words) => words,
            Err(_) => vec!["error".to_owned()],
        };
        checked += 1;
        if got != expected {
            failures.push(format!(
                "line {}: {input:?}: want {expected:?}, got {got:?}",
                number + 1
            ));
        }
    }
    assert_eq!(checked, 24, "number of cases in wordsTest");
    report("wordsTest", checked, &failures);
}

#[test]
fn process_with_matches_fixture() {
    let Some(dir) = fixture_dir() else { return };
    let text = read(&dir, "process-with-matches.jsonl");
    let lexer = Lexer::new('\\');
    let mut failures = Vec::new();
    let mut checked = 0;
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        checked += 1;
        let case: serde_json::Value = serde_json::from_str(line).expect("valid JSON line");
        let input = case["input"].as_str().expect("input");
        let env: BTreeMap<String, String> = case["env"]
            .as_object()
            .expect("env")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_owned()))
            .collect();
        let names = |key: &str| -> Option<BTreeSet<String>> {
            case.get(key).map(|v| {
                v.as_array()
                    .expect("array")
                    .iter()
                    .map(|s| s.as_str().expect("name").to_owned())
                    .collect()
            })
        };
        let at = format!("line {} ({}): {input:?}", number + 1, case["test"]);
        match lexer.process_word(input, &env) {
            Err(e) => {
                if case["error"] != true {
                    failures.push(format!("{at}: unexpected error {e}"));
                } else if let Some(part) = case.get("error_contains").and_then(|v| v.as_str()) {
                    if !e.message.contains(part) {
                        failures.push(format!("{at}: error {:?} lacks {part:?}", e.message));
                    }
                }
            }
            Ok(p) => {
                if case["error"] == true {
                    failures.push(format!("{at}: expected an error, got {:?}", p.value));
                    continue;
                }
                let want = case["expected"].as_str().expect("expected");
                if p.value != want {
                    failures.push(format!("{at}: want {want:?}, got {:?}", p.value));
                }
                if let Some(matched) = names("matched") {
                    if p.matched != matched {
                        failures.push(format!(
                            "{at}: matched want {matched:?}, got {:?}",
                            p.matched
                        ));
                    }
                }
                if let Some(unmatched) = names("unmatched") {
                    if p.unmatched != unmatched {
                        failures.push(format!(
                            "{at}: unmatched want {unmatched:?}, got {:?}",
                            p.unmatched
                        ));
                    }
                }
            }
        }
    }
    assert_eq!(checked, 56, "number of cases in process-with-matches.jsonl");
    report("process-with-matches.jsonl", checked, &failures);
}

// ---- options and behaviour the fixtures do not cover ----

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    env_of(pairs)
}

fn word(lexer: &Lexer, input: &str, env: &dyn Env) -> String {
    lexer
        .process_word(input, env)
        .unwrap_or_else(|e| panic!("{input:?}: {e}"))
        .value
}

fn words(lexer: &Lexer, input: &str, env: &dyn Env) -> Vec<String> {
    lexer
        .process_words(input, env)
        .unwrap_or_else(|e| panic!("{input:?}: {e}"))
}

#[test]
fn raw_quotes_keep_quote_characters() {
    let lexer = Lexer {
        raw_quotes: true,
        ..Lexer::new('\\')
    };
    let env = vars(&[("A", "x y")]);
    assert_eq!(word(&lexer, r#"'a b'"c $A"d"#, &env), r#"'a b'"c x y"d"#);
    assert_eq!(
        words(&lexer, r#"one 'two three' "$A""#, &env),
        ["one", "'two three'", "\"x y\""]
    );
    // Escapes are still applied.
    assert_eq!(word(&lexer, r#"a\"b"#, &env), r#"a"b"#);
}

#[test]
fn raw_escapes_keep_escape_characters() {
    let lexer = Lexer {
        raw_escapes: true,
        ..Lexer::new('\\')
    };
    let env = vars(&[("A", "v")]);
    assert_eq!(word(&lexer, r"a\ b\$A", &env), r"a\ b\$A");
    assert_eq!(word(&lexer, r#""x\"y\$A\\z\tw""#, &env), r#"x\"y\$A\\z\tw"#);
    assert_eq!(word(&lexer, r"trailing\", &env), r"trailing\");
    assert_eq!(words(&lexer, r"a\ b c", &env), [r"a\ b", "c"]);
}

#[test]
fn skip_unset_env_leaves_references_as_written() {
    let lexer = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let env = vars(&[("SET", "s")]);
    assert_eq!(
        word(&lexer, "$SET-$UNSET-${UNSET}", &env),
        "s-$UNSET-${UNSET}"
    );
    assert_eq!(word(&lexer, "${UNSET:-d}${SET:-d}", &env), "${UNSET:-d}s");
    assert_eq!(
        word(&lexer, "${UNSET+x}${UNSET?m}", &env),
        "${UNSET+x}${UNSET?m}"
    );
    assert_eq!(
        word(&lexer, "${UNSET#a*}${UNSET%%b}", &env),
        "${UNSET#a*}${UNSET%%b}"
    );
    assert_eq!(
        word(&lexer, "${UNSET/a/b}${UNSET//a/b}", &env),
        "${UNSET/a/b}${UNSET//a/b}"
    );
    // Still looked up, so still reported.
    let p = lexer.process_word("$UNSET $SET", &env).unwrap();
    assert_eq!(p.unmatched, BTreeSet::from(["UNSET".to_owned()]));
    assert_eq!(p.matched, BTreeSet::from(["SET".to_owned()]));
    // Without the option the same words expand to nothing.
    assert_eq!(word(&Lexer::new('\\'), "$SET-$UNSET-${UNSET}", &env), "s--");
}

#[test]
fn backtick_escape() {
    let lexer = Lexer::new('`');
    let env = vars(&[("A", "v")]);
    // The backslash is an ordinary character, the backtick escapes.
    assert_eq!(word(&lexer, r"C:\path\$A", &env), r"C:\path\v");
    assert_eq!(word(&lexer, "a`$A`'b", &env), "a$A'b");
    assert_eq!(word(&lexer, "\"q`\"q``q`x\"", &env), "q\"q`q`x");
    assert_eq!(words(&lexer, "a` b c", &env), ["a b", "c"]);
    assert_eq!(word(&lexer, "end`", &env), "end");
}

#[test]
fn skip_process_quotes_treats_quotes_as_text() {
    let lexer = Lexer {
        skip_process_quotes: true,
        ..Lexer::new('\\')
    };
    let env = vars(&[("NAME", "me")]);
    assert_eq!(
        word(&lexer, r#"echo "hi $NAME" 'and $NAME'"#, &env),
        r#"echo "hi me" 'and me'"#
    );
    assert_eq!(word(&lexer, "it's", &env), "it's");
}

#[test]
fn heredoc_words() {
    let lexer = Lexer::for_heredoc_search();
    let cases: &[(&str, &[&str])] = &[
        ("RUN <<EOF", &["RUN", "<<EOF"]),
        ("RUN <<'EOF'", &["RUN", "<<'EOF'"]),
        (r#"RUN <<-"EOF" cat"#, &["RUN", r#"<<-"EOF""#, "cat"]),
        ("RUN 2<<EOF", &["RUN", "2<<EOF"]),
        ("RUN <<  EOF  > foo", &["RUN", "<<  EOF", ">", "foo"]),
        ("RUN <<- EOF", &["RUN", "<<-", "EOF"]),
        (r#"RUN "<<NOHEREDOC""#, &["RUN", r#""<<NOHEREDOC""#]),
        (r"RUN <<eo\'f", &["RUN", r"<<eo\'f"]),
        ("RUN <<$EOF <<${EOF}", &["RUN", "<<$EOF", "<<${EOF}"]),
        (
            "COPY <<FILE1 <<FILE2 /dest",
            &["COPY", "<<FILE1", "<<FILE2", "/dest"],
        ),
        ("RUN a<b", &["RUN", "a<b"]),
    ];
    for (line, want) in cases {
        assert_eq!(words(&lexer, line, &NoEnv), *want, "{line:?}");
    }
    assert!(lexer.process_words("RUN <<'EOF", &NoEnv).is_err());
}

#[test]
fn words_mode_modifier_quirk_is_reproduced() {
    let lexer = Lexer::new('\\');
    let env = vars(&[("X", "")]);
    assert_eq!(words(&lexer, "abc${X:-y}def", &env), ["ydef"]);
    assert_eq!(words(&lexer, r#"a"b c"${X:-q}d"#, &env), ["qd"]);
    assert_eq!(words(&lexer, "x abc${Y#z}def", &env), ["x", "def"]);
    // Plain references and single-word mode are not affected.
    assert_eq!(words(&lexer, "abc${X}def", &env), ["abcdef"]);
    assert_eq!(word(&lexer, "abc${X:-y}def", &env), "abcydef");
    let heredoc = Lexer::for_heredoc_search();
    assert_eq!(
        words(&heredoc, "cat <<EOF${X:-}", &NoEnv),
        ["cat", "${X:-}"]
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let lexer = Lexer::new('\\');
    let env = vars(&[("E", "")]);
    let err = |input: &str| lexer.process_word(input, &env).expect_err(input).message;
    assert!(err("${V:?must be set}").contains("V: must be set"));
    assert!(err("${V?}").contains("V: is not allowed to be unset"));
    assert!(err("${E:?}").contains("E: is not allowed to be empty"));
    assert!(err("'abc").contains("unterminated quote"));
    assert!(err("\"abc").contains("unterminated quote"));
    assert!(err("a${}b").contains("bad substitution: ${}"));
    assert!(err("${X:YYY}").contains("unsupported modifier ':Y'"));
    assert!(err("${X=1}").contains("unsupported modifier '='"));
    assert!(err("${X:#a}").contains("unsupported modifier ':#'"));
    assert!(err("${abc").contains("missing '}' in ${abc"));
    assert!(err("${X//ww}").contains("missing '/'"));
    assert!(err(r"${X#\#}").contains("invalid escape"));
    assert!(err("${X:-$Y").contains("missing '}'"));
    // The whole input is named, so a caller can point at it.
    assert!(err("${X=1}").starts_with("failed to process \"${X=1}\": "));
}

#[test]
fn patterns_and_replacements() {
    let lexer = Lexer::new('\\');
    let env = vars(&[("P", "/usr/local/lib/x.tar.gz"), ("B", "[ab]c")]);
    assert_eq!(word(&lexer, "${P##*/}", &env), "x.tar.gz");
    assert_eq!(word(&lexer, "${P#*/}", &env), "usr/local/lib/x.tar.gz");
    assert_eq!(word(&lexer, "${P%.*}", &env), "/usr/local/lib/x.tar");
    assert_eq!(word(&lexer, "${P%%.*}", &env), "/usr/local/lib/x");
    assert_eq!(word(&lexer, "${P%/???/*}", &env), "/usr/local");
    assert_eq!(word(&lexer, "${P/l?/L}", &env), "/usr/Lcal/lib/x.tar.gz");
    assert_eq!(word(&lexer, "${P//l?/L}", &env), "/usr/LcaLLb/x.tar.gz");
    // Brackets are literal, as in BuildKit.
    assert_eq!(word(&lexer, "${B#[ab]}", &env), "c");
    assert_eq!(word(&lexer, "${B#[a]}", &env), "[ab]c");
}

#[test]
fn env_implementations() {
    let lexer = Lexer::new('\\');
    let pairs: Vec<(String, String)> = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
    assert_eq!(word(&lexer, "$A", &pairs), "2");
    let slice: &[(String, String)] = &pairs;
    assert_eq!(word(&lexer, "$A", &slice), "2");
    let map: std::collections::HashMap<String, String> = [("A".to_owned(), "h".to_owned())].into();
    assert_eq!(word(&lexer, "$A", &map), "h");
    assert_eq!(word(&lexer, "[$A]", &NoEnv), "[]");
    assert_eq!(lexer.expand("${A:-d}", &NoEnv).unwrap(), "d");
}
