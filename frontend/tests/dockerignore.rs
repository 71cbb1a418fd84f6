//! .dockerignore reading and matching against Docker's documented behaviour
//! (docs.docker.com, "dockerignore") and moby patternmatcher's test tables,
//! transcribed here as data.

use frontend::dockerignore::{
    BadPattern, PatternMatcher, clean, dockerfile_ignore_path, read_patterns, select_ignore_file,
};

/// Whether `path` is excluded by a .dockerignore with these lines.
fn excluded(lines: &[&str], path: &str) -> bool {
    PatternMatcher::from_dockerignore(&lines.join("\n"))
        .unwrap_or_else(|e| panic!("{lines:?}: {e}"))
        .matches(path)
}

/// Runs a table of (patterns, path, excluded) and reports every wrong row.
fn check_table(table: &[(&[&str], &str, bool)]) {
    let mut failures = Vec::new();
    for (patterns, path, want) in table {
        let matcher = PatternMatcher::new(patterns.iter().copied())
            .unwrap_or_else(|e| panic!("patterns {patterns:?} rejected: {e}"));
        let got = matcher.matches(path);
        if got != *want {
            failures.push(format!(
                "patterns {patterns:?}, path {path:?}: want {want}, got {got}"
            ));
        }
        // The walker's incremental form must agree with the direct one.
        let mut state = matcher.root_state();
        let mut walked = false;
        let clean_path = clean(path);
        let parts: Vec<&str> = clean_path.split('/').collect();
        for i in 0..parts.len() {
            let (m, next) = matcher.matches_under(&parts[..=i].join("/"), &state);
            walked = m;
            state = next;
        }
        if walked != *want {
            failures.push(format!(
                "patterns {patterns:?}, path {path:?}: walker says {walked}, want {want}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[test]
fn documented_examples() {
    // docs.docker.com: "# comment", "*/temp*", "*/*/temp*", "temp?".
    let doc = ["# comment", "*/temp*", "*/*/temp*", "temp?"];
    assert!(excluded(&doc, "somedir/temporary.txt"));
    assert!(excluded(&doc, "somedir/temp"));
    assert!(
        excluded(&doc, "somedir/temp/inside.txt"),
        "a file inside an excluded directory"
    );
    assert!(excluded(&doc, "somedir/subdir/temporary.txt"));
    assert!(excluded(&doc, "tempa"));
    assert!(excluded(&doc, "tempb"));
    assert!(!excluded(&doc, "temp"), "`?` needs exactly one character");
    assert!(!excluded(&doc, "tempab"));
    assert!(
        !excluded(&doc, "temporary.txt"),
        "`*/temp*` needs one directory level"
    );
    assert!(
        !excluded(&doc, "a/b/c/temporary.txt"),
        "`*/*/temp*` is exactly two levels"
    );
    assert!(!excluded(&doc, "# comment"), "a comment is no pattern");

    // `**/*.go` excludes .go files in all directories, the root included.
    let go = ["**/*.go"];
    assert!(excluded(&go, "main.go"));
    assert!(excluded(&go, "cmd/tool/main.go"));
    assert!(!excluded(&go, "main.go.txt"));
    assert!(!excluded(&go, "cmd/README"));

    // `*.md` then `!README.md`: every markdown file but README.md.
    let md = ["*.md", "!README.md"];
    assert!(excluded(&md, "CHANGELOG.md"));
    assert!(!excluded(&md, "README.md"));
    assert!(
        !excluded(&md, "docs/guide.md"),
        "`*.md` only matches at the root"
    );

    // The last matching line decides.
    let secret_last = ["*.md", "!README*.md", "README-secret.md"];
    assert!(excluded(&secret_last, "README-secret.md"));
    assert!(!excluded(&secret_last, "README-public.md"));
    assert!(excluded(&secret_last, "other.md"));
    let exception_last = ["*.md", "README-secret.md", "!README*.md"];
    assert!(!excluded(&exception_last, "README-secret.md"));
    assert!(!excluded(&exception_last, "README.md"));
    assert!(excluded(&exception_last, "other.md"));

    // "Include only" style: `*` first, then exceptions.
    let only = ["*", "!src", "!Cargo.toml"];
    assert!(!excluded(&only, "src/main.rs"));
    assert!(!excluded(&only, "Cargo.toml"));
    assert!(excluded(&only, "target/debug/app"));
    assert!(excluded(&only, ".git/HEAD"));

    // `/foo/bar` and `foo/bar` both exclude bar in foo, and nothing else.
    for lines in [["/foo/bar"], ["foo/bar"]] {
        assert!(excluded(&lines, "foo/bar"));
        assert!(excluded(&lines, "foo/bar/baz"));
        assert!(!excluded(&lines, "bar"));
        assert!(!excluded(&lines, "foo"));
        assert!(!excluded(&lines, "x/foo/bar"));
    }

    // "For historical reasons, the pattern `.` is ignored."
    assert!(!excluded(&["."], "anything"));
    assert!(!excluded(&["*"], "."), "the context root is never excluded");
}

#[test]
fn reading_cleans_and_trims() {
    let file = "\u{feff}# comment\n  \n\t*.log  \r\n/abs/path\n./rel\ndir/\na/./b/../c\n../up\n/\n!  /keep\n ! spaced\n  # not a comment\n!\n";
    assert_eq!(
        read_patterns(file),
        [
            "*.log",
            "abs/path",
            "rel",
            "dir",
            "a/c",
            "../up",
            "/",
            "!keep",
            "!spaced",
            "# not a comment",
            "!"
        ]
    );
    assert_eq!(
        read_patterns("# only comments\n\n   \n"),
        Vec::<String>::new()
    );
    // A BOM only counts at the very start.
    assert_eq!(read_patterns("a\n\u{feff}b"), ["a", "\u{feff}b"]);
}

#[test]
fn cleaning_follows_go() {
    for (input, want) in [
        ("", "."),
        (".", "."),
        ("./", "."),
        ("a//b", "a/b"),
        ("a/b/", "a/b"),
        ("a/./b", "a/b"),
        ("a/../b", "b"),
        ("a/b/../../..", ".."),
        ("../a/..", ".."),
        ("/..", "/"),
        ("/../a", "/a"),
        ("//a", "/a"),
    ] {
        assert_eq!(clean(input), want, "clean({input:?})");
    }
}

#[test]
fn leading_slash_trailing_slash_and_dots() {
    assert!(excluded(&["/build"], "build/out.o"));
    assert!(excluded(&["build/"], "build"));
    assert!(excluded(&["build/"], "build/out.o"));
    assert!(excluded(&["./build"], "build"));
    assert!(excluded(&["a/./b/../c"], "a/c/file"));
    assert!(!excluded(&["a/./b/../c"], "a/b/c"));
    assert!(excluded(&["/a/../b"], "b"));
    // A path handed in uncleaned is cleaned too.
    assert!(excluded(&["a/c"], "./a//c/"));
}

#[test]
fn escapes() {
    assert!(excluded(&[r"a\*b"], "a*b"));
    assert!(!excluded(&[r"a\*b"], "axb"));
    assert!(!excluded(&[r"a\*b"], "ab"));
    assert!(excluded(&[r"file\?"], "file?"));
    assert!(!excluded(&[r"file\?"], "filex"));
    assert!(excluded(&[r"\[abc\]"], "[abc]"));
    assert!(!excluded(&[r"\[abc\]"], "a"));
    assert!(excluded(&[r"a\\"], r"a\"));
    assert!(
        excluded(&[r"\!important"], "!important"),
        "an escaped ! is a plain pattern"
    );
    assert!(
        excluded(&[r"\#notes"], "#notes"),
        "an escaped # is a plain pattern"
    );
}

#[test]
fn last_match_wins_in_both_directions() {
    check_table(&[
        (&["!fileutils.go", "*.go"], "fileutils.go", true),
        (&["*.go", "!fileutils.go"], "fileutils.go", false),
        (&["docs", "!docs/README.md"], "docs/README.md", false),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/README.md", false),
        (&["docs", "!docs/README.md"], "docs/other.md", true),
        (&["docs", "!docs/README.md", "docs"], "docs/README.md", true),
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        (
            &["**", "!dist/*.whl"],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            false,
        ),
        (&["a", "!a/b", "a/b/c"], "a/b/c/d", true),
        (&["a", "!a/b", "a/b/c"], "a/b/x", false),
        // An exception before the include it should undo has no effect.
        (&["!important.md", "*.md"], "important.md", true),
        (&["*.md", "!important.md"], "important.md", false),
        (&[], "anything", false),
    ]);
}

/// moby patternmatcher's single-pattern table (`TestMatches`), read with
/// MatchesOrParentMatches: "exact" and "inexact" rows are excluded, "fail"
/// rows are not. Rows whose path is `/` are left out: the context root is
/// never excluded here.
#[test]
fn moby_pattern_table() {
    let rows: &[(&str, &str, bool)] = &[
        ("**", "file", true),
        ("**", "file/", true),
        ("**/", "file", true),
        ("**/", "file/", true),
        ("**", "dir/file", true),
        ("**/", "dir/file", true),
        ("**", "dir/file/", true),
        ("**/", "dir/file/", true),
        ("**/**", "dir/file", true),
        ("**/**", "dir/file/", true),
        ("dir/**", "dir/file", true),
        ("dir/**", "dir/file/", true),
        ("dir/**", "dir/dir2/file", true),
        ("dir/**", "dir/dir2/file/", true),
        ("**/dir", "dir", true),
        ("**/dir", "dir/file", true),
        ("**/dir2/*", "dir/dir2/file", true),
        ("**/dir2/*", "dir/dir2/file/", true),
        ("**/dir2/**", "dir/dir2/dir3/file", true),
        ("**/dir2/**", "dir/dir2/dir3/file/", true),
        ("**file", "file", true),
        ("**file", "dir/file", true),
        ("**/file", "dir/file", true),
        ("**file", "dir/dir/file", true),
        ("**/file", "dir/dir/file", true),
        ("**/file*", "dir/dir/file", true),
        ("**/file*", "dir/dir/file.txt", true),
        ("**/file*txt", "dir/dir/file.txt", true),
        ("**/file*.txt", "dir/dir/file.txt", true),
        ("**/file*.txt*", "dir/dir/file.txt", true),
        ("**/**/*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/*.txt", "file.txt", true),
        ("**/**/*.txt", "file.txt", true),
        ("a**/*.txt", "a/file.txt", true),
        ("a**/*.txt", "a/dir/file.txt", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt", "a/dir/file.txt", false),
        ("a/*.txt", "a/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("a[b-d]e", "ae", false),
        ("a[b-d]e", "ace", true),
        ("a[b-d]e", "aae", false),
        ("a[^b-d]e", "aze", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        ("abc.def", "abcZdef", false),
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("abc/**", "abc", false),
        ("abc/**", "abc/def", true),
        ("abc/**", "abc/def/ghi", true),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        (r"a\\", r"a\", true),
        (r"a\*b", "a*b", true),
    ];
    let table: Vec<(&[&str], &str, bool)> = rows
        .iter()
        .map(|(pattern, path, want)| (std::slice::from_ref(pattern), *path, *want))
        .collect();
    check_table(&table);
}

/// Go's `filepath.Match` table as moby runs it through its matcher
/// (`TestMatch`): the expected match, or a rejected pattern.
#[test]
fn go_filepath_match_table() {
    let matching: &[(&str, &str, bool)] = &[
        ("abc", "abc", true),
        ("*", "abc", true),
        ("*c", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ab/c", true),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("ab[c]", "abc", true),
        ("ab[b-d]", "abc", true),
        ("ab[e-g]", "abc", false),
        ("ab[^c]", "abc", false),
        ("ab[^b-d]", "abc", false),
        ("ab[^e-g]", "abc", true),
        (r"a\*b", "a*b", true),
        (r"a\*b", "ab", false),
        ("a?b", "a☺b", true),
        ("a[^a]b", "a☺b", true),
        ("a???b", "a☺b", false),
        ("a[^a][^a][^a]b", "a☺b", false),
        ("[a-ζ]*", "α", true),
        ("*[a-ζ]", "A", false),
        ("a?b", "a/b", false),
        ("a*b", "a/b", false),
        (r"[\]a]", "]", true),
        (r"[\-]", "-", true),
        (r"[x\-]", "x", true),
        (r"[x\-]", "-", true),
        (r"[x\-]", "z", false),
        (r"[\-x]", "x", true),
        (r"[\-x]", "-", true),
        (r"[\-x]", "a", false),
        ("*x", "xxx", true),
    ];
    let table: Vec<(&[&str], &str, bool)> = matching
        .iter()
        .map(|(pattern, path, want)| (std::slice::from_ref(pattern), *path, *want))
        .collect();
    check_table(&table);

    let rejected: &[(&str, BadPattern)] = &[
        ("[]a]", BadPattern::BadClassElement),
        ("[-]", BadPattern::BadClassElement),
        ("[x-]", BadPattern::BadClassElement),
        ("[-x]", BadPattern::BadClassElement),
        ("\\", BadPattern::TrailingEscape),
        ("[a-b-c]", BadPattern::BadClassElement),
        ("[", BadPattern::UnterminatedClass),
        ("[^", BadPattern::UnterminatedClass),
        ("[^bc", BadPattern::UnterminatedClass),
        ("a[", BadPattern::UnterminatedClass),
        ("!", BadPattern::LoneExclamation),
    ];
    for (pattern, kind) in rejected {
        let err = PatternMatcher::new([*pattern]).expect_err(pattern);
        assert_eq!(err.kind, *kind, "{pattern:?}");
    }
    // moby accepts `[Local-Only]` and then fails every match (the class has
    // a backwards range); refusing it up front fails the build the same way.
    assert!(PatternMatcher::new(["[Local-Only]/"]).is_err());
}

#[test]
fn star_question_and_double_star_edges() {
    // `*` and `?` stop at `/`; a match of a parent directory still counts.
    assert!(excluded(&["*"], "a/b/c"));
    assert!(!excluded(&["*/c"], "a/b/c"));
    assert!(excluded(&["?/b"], "a/b"));
    assert!(!excluded(&["?/b"], "ab/b"));
    // `**/` spans zero or more directories.
    assert!(excluded(&["a/**/b"], "a/b"));
    assert!(excluded(&["a/**/b"], "a/x/y/b"));
    assert!(!excluded(&["a/**/b"], "a/xb"));
    // moby's fast paths: `**lit` is a suffix test, `lit**` a prefix test.
    assert!(excluded(&["**foo"], "xfoo"));
    assert!(excluded(&["foo**"], "foobar/baz"));
    assert!(!excluded(&["foo/**"], "foo"));
    // Temp-file style patterns.
    assert!(excluded(&["*/temp*"], "dir/temp_file"));
    assert!(excluded(&["*/temp*"], "dir/temporary/inner"));
    assert!(!excluded(&["*/temp*"], "temp_at_root"));
    // Classes never match across `/` when not negated, and are case-sensitive.
    assert!(excluded(&["[A-Z]*"], "Makefile"));
    assert!(!excluded(&["[A-Z]*"], "makefile"));
}

#[test]
fn errors_name_the_line() {
    let err = PatternMatcher::from_dockerignore("ok\n# c\n\nbad[\n").unwrap_err();
    assert_eq!(err.line, Some(4));
    assert_eq!(err.pattern, "bad[");
    assert_eq!(
        err.to_string(),
        "invalid .dockerignore pattern \"bad[\" on line 4"
    );
    let err = PatternMatcher::from_dockerignore("a\n!\n").unwrap_err();
    assert_eq!((err.line, err.kind), (Some(2), BadPattern::LoneExclamation));
}

#[test]
fn exclusions_flag() {
    assert!(
        !PatternMatcher::new(["docs", "config"])
            .unwrap()
            .exclusions()
    );
    assert!(
        PatternMatcher::new(["docs", "!docs/README.md"])
            .unwrap()
            .exclusions()
    );
    assert!(
        PatternMatcher::new(["docs", "  !docs/README.md  "])
            .unwrap()
            .exclusions()
    );
    assert_eq!(
        PatternMatcher::new(["docs", "config", ""])
            .unwrap()
            .patterns()
            .len(),
        2
    );
}

#[test]
fn excluded_directories_and_the_walker() {
    let m = PatternMatcher::from_dockerignore("node_modules\nbuild\n!build/keep/me.txt\n*.log\n")
        .unwrap();
    // Excluded without any exception below: skip the whole directory.
    assert!(m.matches("node_modules"));
    assert!(!m.dir_may_contain_included("node_modules"));
    assert!(!m.dir_may_contain_included("node_modules/pkg"));
    // An exception reaches inside `build/keep`: walk down that path only.
    assert!(m.matches("build"));
    assert!(m.dir_may_contain_included("build"));
    assert!(m.dir_may_contain_included("build/keep"));
    assert!(!m.dir_may_contain_included("build/other"));
    assert!(!m.matches("build/keep/me.txt"));
    assert!(m.matches("build/keep/other.txt"));
    // Not excluded at all: of course it is walked.
    assert!(m.dir_may_contain_included("src"));

    // Without exceptions nothing excluded is ever walked.
    let plain = PatternMatcher::new(["target", "**/*.tmp"]).unwrap();
    assert!(!plain.dir_may_contain_included("target"));

    // An exception with a wildcard after a literal directory only keeps that
    // directory's subtree alive.
    let wild = PatternMatcher::new(["*", "!src/**/*.rs"]).unwrap();
    assert!(wild.dir_may_contain_included("src"));
    assert!(wild.dir_may_contain_included("src/deep/er"));
    assert!(!wild.dir_may_contain_included("docs"));
    assert!(!wild.matches("src/deep/er/lib.rs"));
    assert!(wild.matches("docs/index.md"));

    // An exception that can match anywhere keeps every excluded directory
    // alive.
    let anywhere = PatternMatcher::new(["vendor", "!**/LICENSE"]).unwrap();
    assert!(anywhere.dir_may_contain_included("vendor"));
    assert!(!anywhere.matches("vendor/lib/LICENSE"));

    // Exceptions before the excluding pattern cannot re-include anything.
    let before = PatternMatcher::new(["!cache/keep", "cache"]).unwrap();
    assert!(!before.dir_may_contain_included("cache"));
    assert!(before.matches("cache/keep"));
}

/// Exhaustive check of `dir_may_contain_included` against brute force: for
/// every excluded directory of a small tree, if it says "skip", no path
/// below it may be included.
#[test]
fn dir_pruning_never_loses_files() {
    let names = ["a", "b", "keep", "x.txt", "keep.txt"];
    let mut paths = Vec::new();
    for n1 in names {
        paths.push(n1.to_owned());
        for n2 in names {
            paths.push(format!("{n1}/{n2}"));
            for n3 in names {
                paths.push(format!("{n1}/{n2}/{n3}"));
            }
        }
    }
    let files: &[&[&str]] = &[
        &["a", "!a/b/keep"],
        &["*", "!keep"],
        &["*", "!*/keep.txt"],
        &["a", "!a/*/keep.txt", "a/b"],
        &["**/b", "!a/b/keep*"],
        &["a/b", "!a/b/keep/x.txt", "a"],
        &["*", "!b/**", "b/a"],
        &["a", "!a/b", "a/b/keep"],
    ];
    for patterns in files {
        let m = PatternMatcher::new(patterns.iter().copied()).unwrap();
        for dir in &paths {
            if m.matches(dir) && !m.dir_may_contain_included(dir) {
                let prefix = format!("{dir}/");
                for p in paths.iter().filter(|p| p.starts_with(&prefix)) {
                    assert!(
                        m.matches(p),
                        "{patterns:?}: {dir} pruned but {p} is included"
                    );
                }
            }
        }
    }
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    assert_eq!(
        dockerfile_ignore_path("Dockerfile"),
        "Dockerfile.dockerignore"
    );
    assert_eq!(
        dockerfile_ignore_path("docker/build.Dockerfile"),
        "docker/build.Dockerfile.dockerignore"
    );
    assert_eq!(
        select_ignore_file(Some("specific"), Some("root")),
        Some("specific")
    );
    assert_eq!(select_ignore_file(None, Some("root")), Some("root"));
    assert_eq!(
        select_ignore_file(Some(""), Some("root")),
        Some(""),
        "an empty specific file still wins"
    );
    assert_eq!(select_ignore_file(None, None), None);
}
