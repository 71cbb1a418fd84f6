//! Differential test: `reference::parse` against oci-spec's regex-based
//! `Reference::try_from`, on distribution/reference's test cases, our own, and
//! generated strings. Where docker's grammar (which we follow) and oci-spec
//! differ, the case is listed in `DIVERGENCES` with both outcomes, so the list
//! cannot go stale.

use oci_spec::distribution::Reference;

const F64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// Cases from distribution/reference (reference_test.go, normalize_test.go)
/// and oci-spec's tests, plus ours. Both parsers must agree on each.
fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        // distribution/reference TestReferenceParse
        "test_com",
        "test.com:tag",
        "test.com:5000",
        "test.com/repo:tag",
        "test:5000/repo",
        "test:5000/repo:tag",
        "",
        ":justtag",
        "repo@sha256:ffffffffffffffffffffffffffffffffff",
        "Uppercase:tag",
        "test:5000/Uppercase/lowercase:tag",
        "lowercase:Uppercase",
        "aa/asdf$$^/aa",
        "sub-dom1.foo.com/bar/baz/quux",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        "foo_bar.com:8080",
        "foo/foo_bar.com:8080",
        "192.168.1.1",
        "192.168.1.1:tag",
        "192.168.1.1:5000",
        "192.168.1.1/repo",
        "192.168.1.1:5000/repo",
        "192.168.1.1:5000/repo:5050",
        "[2001:db8::1]",
        "[2001:db8::1]:5000",
        "[2001:db8::1]:tag",
        "[fe80::1%eth0]:5000/repo",
        "[fe80::1%@invalidzone]:5000/repo",
        // normalize_test.go TestValidateReferenceName / TestValidateRemoteName
        "docker/docker",
        "library/debian",
        "debian",
        "docker.io/docker/docker",
        "docker.io/library/debian",
        "docker.io/debian",
        "index.docker.io/docker/docker",
        "index.docker.io/library/debian",
        "index.docker.io/debian",
        "127.0.0.1:5000/docker/docker",
        "127.0.0.1:5000/library/debian",
        "127.0.0.1:5000/debian",
        "192.168.0.1",
        "192.168.0.1:80",
        "192.168.0.1:8/debian",
        "192.168.0.2:25000/debian",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "https://github.com/docker/docker",
        "docker/Docker",
        "-docker",
        "-docker/docker",
        "-docker.io/docker/docker",
        "docker///docker",
        "docker.io/docker/Docker",
        "docker.io/docker///docker",
        "[fc00::1]",
        "[fc00::1]:5000",
        "fc00::1:5000/debian",
        "[fe80::1%eth0]:5000/debian",
        "[2001:db8:3:4::192.0.2.33]:5000/debian",
        "docker-rules/docker",
        "docker---rules/docker",
        "doc/docker",
        "d/docker",
        "jess/t",
        "dock__er/docker",
        "docker-/docker",
        "-docker-/docker",
        "____/____",
        "_docker/_docker",
        "dock..er/docker",
        "dock_.er/docker",
        "dock-.er/docker",
        "docker/",
        "fooo/bar",
        "index.docker.io/fooo/bar",
        "library/ubuntu",
        "docker.io/library/ubuntu",
        "other/library",
        "127.0.0.1:8000/private/moonbase",
        "127.0.0.1:8000/privatebase",
        "example.com/private/moonbase",
        "example.com:8000/private/moonbase",
        "ubuntu-12.04-base",
        "index.docker.io/library/ubuntu-12.04-base",
        "docker.io/foo",
        "library/foo/bar",
        "docker.io/library/foo/bar",
        "store/foo/bar",
        "redis",
        "redis:latest",
        "docker.io/library/redis:latest",
        "dmcgowan/myapp",
        "dmcgowan/myapp:latest",
        "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9",
        "dbcc1",
        "test-com:8080/foo",
        "xn--n3h.com:18080/foo",
        "example.com:8000/named:tagged",
        "-foo",
        // ours
        "alpine",
        "alpine:3.20",
        "ghcr.io/o/r:1",
        "localhost/app",
        "localhost:5000/app:v1",
        "localhost",
        "localhost:5000",
        "app:_tag",
        "app:.tag",
        "app:-tag",
        "app:",
        "app:a:b",
        "app::b",
        "/app",
        "app/",
        "a//b",
        "a/b/c/d/e/f",
        "a___b",
        "A.com/x",
        "a.b.c.d.e:1/x/y",
        "a-.com/x",
        "a.com:/x",
        "a.com:x/y",
        ":5000/x",
        "a b",
        "a\tb",
        "app@",
        "@",
        "app@sha256",
        "app@sha256:",
        "app:tag@",
        "alpine:tag:tag",
        "busybox@sha256:x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in [
        "repo",
        "test:5000/repo",
        "docker.io/library/busybox",
        "busybox:1",
    ] {
        v.push(format!("{name}@sha256:{F64}"));
        v.push(format!("{name}@sha384:{}", "f".repeat(96)));
        v.push(format!("{name}@sha512:{}", "f".repeat(128)));
        v.push(format!("{name}@sha256:{}", "f".repeat(63)));
        v.push(format!("{name}@sha256:{}", "f".repeat(65)));
        v.push(format!("{name}@sha256:{}", "f".repeat(31)));
        v.push(format!("{name}@invaliddigest:{F64}"));
        v.push(format!("{name}@sha256+b64:{F64}"));
        v.push(format!("{name}@1sha:{F64}"));
        v.push(format!("{name}@sha256:{F64}g"));
        v.push(format!("{name}@sha256:{F64}@sha256:{F64}"));
    }
    v.push(format!("@sha256:{F64}"));
    v.push(
        "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
            .to_string(),
    );
    v.push(format!("{}a:tag", "a/".repeat(128)));
    v.push(format!("app:{}", "t".repeat(128)));
    v.push(format!("app:{}", "t".repeat(129)));
    v.push("a".repeat(248));
    v
}

/// Inputs where docker (and so we) and oci-spec disagree: (input, why, ours,
/// oci-spec's), each outcome `Some((registry, repository))` or `None` for an error.
type Outcome = Option<(&'static str, &'static str)>;
fn divergences() -> Vec<(String, &'static str, Outcome, Outcome)> {
    let aaa = "a/".repeat(127) + "a";
    let long_path: &'static str = Box::leak(aaa.clone().into_boxed_str());
    let long_repo: &'static str = Box::leak("b".repeat(250).into_boxed_str());
    let long_official: &'static str =
        Box::leak(format!("library/{}", "c".repeat(246)).into_boxed_str());
    vec![
        (
            "Docker/docker".into(),
            "an uppercase first segment is a domain in docker",
            Some(("Docker", "docker")),
            Some(("docker.io", "Docker/docker")),
        ),
        (
            "DOCKER/docker".into(),
            "an uppercase first segment is a domain in docker",
            Some(("DOCKER", "docker")),
            Some(("docker.io", "DOCKER/docker")),
        ),
        (
            "Foo/bar".into(),
            "an uppercase first segment is a domain in docker",
            Some(("Foo", "bar")),
            Some(("docker.io", "Foo/bar")),
        ),
        (
            "[2001:db8::1]/repo".into(),
            "oci-spec has no IPv6 hosts",
            Some(("[2001:db8::1]", "repo")),
            None,
        ),
        (
            "[::1]:5000/repo".into(),
            "oci-spec has no IPv6 hosts",
            Some(("[::1]:5000", "repo")),
            None,
        ),
        (
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian".into(),
            "oci-spec has no IPv6 hosts",
            Some(("[fc00:1:2:3:4:5:6:7]:5000", "library/debian")),
            None,
        ),
        (
            format!("[2001:db8::1]:5000/repo:tag@sha256:{F64}"),
            "oci-spec has no IPv6 hosts",
            Some(("[2001:db8::1]:5000", "repo")),
            None,
        ),
        (
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a".into(),
            "docker refuses a name that looks like an image id",
            None,
            Some((
                "docker.io",
                "library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            )),
        ),
        (
            format!("repo@sha256:{}", F64.to_uppercase()),
            "go-digest requires lowercase hex",
            None,
            Some(("docker.io", "library/repo")),
        ),
        (
            aaa,
            "docker counts the whole normalised name (docker.io/…) against 255",
            None,
            Some(("docker.io", long_path)),
        ),
        (
            format!("example.com/{long_repo}"),
            "docker counts the domain against 255",
            None,
            Some(("example.com", long_repo)),
        ),
        (
            "c".repeat(246),
            "docker counts docker.io/library/ against 255",
            None,
            Some(("docker.io", long_official)),
        ),
        (
            "a.b-c__d/e".into(),
            "a host cannot contain '_'",
            None,
            Some(("a.b-c__d", "e")),
        ),
        (
            "foo_bar.com/x".into(),
            "a host cannot contain '_' (docker would keep it as a path with no domain)",
            None,
            Some(("foo_bar.com", "x")),
        ),
        (
            "app:é".into(),
            "a tag is ASCII in docker; oci-spec's \\w is Unicode",
            None,
            Some(("docker.io", "library/app")),
        ),
    ]
}

fn fields(r: &Reference) -> (String, String, Option<String>, Option<String>) {
    (
        r.registry().to_string(),
        r.repository().to_string(),
        r.tag().map(str::to_string),
        r.digest().map(str::to_string),
    )
}

fn agree(s: &str) -> Result<(), String> {
    let ours = reference::parse(s);
    let theirs = Reference::try_from(s);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) if fields(a) == fields(b) && a.whole() == b.whole() => Ok(()),
        (Err(_), Err(_)) => Ok(()),
        _ => Err(format!("{s:?}: ours {ours:?}, oci-spec {theirs:?}")),
    }
}

#[test]
fn agrees_with_oci_spec_on_the_corpus() {
    let mismatches: Vec<String> = corpus().iter().filter_map(|s| agree(s).err()).collect();
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn divergences_are_as_documented() {
    let outcome = |r: Result<Reference, String>| {
        r.ok()
            .map(|r| (r.registry().to_string(), r.repository().to_string()))
    };
    for (input, why, ours, theirs) in divergences() {
        let got_ours = outcome(reference::parse(&input).map_err(|e| e.to_string()));
        let got_theirs = outcome(Reference::try_from(input.as_str()).map_err(|e| e.to_string()));
        let own = |o: Outcome| o.map(|(a, b)| (a.to_string(), b.to_string()));
        assert_eq!(got_ours, own(ours), "ours on {input:?} ({why})");
        assert_eq!(got_theirs, own(theirs), "oci-spec on {input:?} ({why})");
    }
}

/// Whether oci-spec's answer differs from docker's for a reason listed in
/// `divergences`, so generated inputs of that kind are skipped.
fn known_divergence(s: &str) -> bool {
    let name = s.split('@').next().unwrap_or(s);
    match name.split_once('/') {
        Some((first, _)) => {
            let is_domain = first.contains(['.', ':']) || first == "localhost";
            (!is_domain && first.bytes().any(|b| b.is_ascii_uppercase()))
                || (is_domain && first.contains('_'))
        }
        None => false,
    }
}

#[test]
fn agrees_with_oci_spec_on_generated_strings() {
    const ALPHABET: &[u8] = b"ab0.-_:/A";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut checked = 0;
    let mut valid = 0;
    let mut mismatches = Vec::new();
    for _ in 0..100_000 {
        let len = 1 + (next() % 14) as usize;
        let mut s: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        match next() % 8 {
            0 => s.push_str(&format!("@sha256:{F64}")),
            1 => s.push_str(&format!("@sha512:{}", "0".repeat(128))),
            _ => {}
        }
        if known_divergence(&s) {
            continue;
        }
        checked += 1;
        valid += usize::from(reference::parse(&s).is_ok());
        if let Err(m) = agree(&s) {
            mismatches.push(m);
        }
    }
    assert!(checked > 50_000, "only {checked} generated strings checked");
    assert!(
        valid > 5_000,
        "only {valid} of {checked} generated strings are valid"
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
}

#[test]
fn normalises_like_docker() {
    for (input, whole) in [
        ("alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/debian", "docker.io/library/debian:latest"),
        ("docker.io/foo/bar:1", "docker.io/foo/bar:1"),
        ("localhost/app", "localhost/app:latest"),
        ("Docker/docker", "Docker/docker:latest"),
        ("[::1]:5000/app:v", "[::1]:5000/app:v"),
        (
            "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
            "docker.io/library/busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        ),
    ] {
        assert_eq!(reference::parse(input).unwrap().whole(), whole, "{input}");
    }
    let digest_only = reference::parse(&format!("app@sha256:{F64}")).unwrap();
    assert_eq!(digest_only.tag(), None);
}
