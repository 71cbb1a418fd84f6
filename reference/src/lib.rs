//! Image references (`alpine`, `ghcr.io/o/r:1`, `repo@sha256:…`) parsed by hand
//! with docker's grammar and normalisation (distribution/reference
//! `ParseNormalizedNamed`), into oci-spec's [`Reference`].
//!
//! oci-spec's own `Reference::try_from` compiles a large regex on first use,
//! which costs ~30 ms of CPU in every process that parses one name; a fully
//! cached build is supposed to take less than twice that. The grammar is
//! small enough to check byte by byte:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] component ( "/" component )*
//! domain     := host [ ":" port ]
//! host       := label ( "." label )* | "[" ipv6 "]"
//! label      := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex      (sha256: 64, sha384: 96, sha512: 128 lowercase hex)
//! ```
//!
//! The first path segment is a domain when it contains `.` or `:`, is
//! `localhost`, or has an uppercase letter; otherwise the name is on Docker
//! Hub (`docker.io`), under `library/` when it has a single component.
//! `index.docker.io` is spelled `docker.io`. The whole normalised name
//! (`docker.io/library/alpine`) is at most 255 characters.

use oci_spec::distribution::Reference;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// The longest normalised name (`domain/path`), as in distribution/reference.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// Why a string is not an image reference. Messages follow docker's
/// (`invalid reference format: …`) and name the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: repository name must have at least one component")]
    Empty,
    #[error(
        "invalid repository name ({0}), cannot specify 64-byte hexadecimal strings (that is an image id)"
    )]
    LooksLikeId(String),
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error(
        "invalid reference format: repository name ({name}) must not be more than {NAME_TOTAL_LENGTH_MAX} characters, it has {len}"
    )]
    NameTooLong { name: String, len: usize },
    #[error("invalid reference format: repository name ({0}) has an empty path component")]
    EmptyComponent(String),
    #[error(
        "invalid reference format: path component {0:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    Component(String),
    #[error("invalid reference format: {0:?} is not a valid registry host[:port]")]
    Domain(String),
    #[error(
        "invalid reference format: tag {0:?} must be 1 to {TAG_LENGTH_MAX} characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
    )]
    Tag(String),
    #[error(
        "invalid reference format: digest {0:?} must be algorithm:hex with at least 32 hex digits"
    )]
    Digest(String),
    #[error("unsupported digest algorithm {algorithm:?} in {digest:?}")]
    DigestUnsupported { algorithm: String, digest: String },
    #[error("invalid checksum digest length: {digest:?} needs {expected} hex digits")]
    DigestLength { digest: String, expected: usize },
    #[error("invalid checksum digest format: {0:?} must be lowercase hex")]
    DigestHex(String),
}

/// Parses and normalises `s` as docker does (`alpine` →
/// `docker.io/library/alpine:latest`). A reference without a tag or digest
/// gets the tag `latest`, as `oci_spec` does.
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    let parts = split(s)?;
    let registry = parts.registry.to_string();
    let repository = parts.repository();
    Ok(match (parts.tag, parts.digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or(DEFAULT_TAG).to_string())
        }
    })
}

/// Whether `tag` is a valid tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_LENGTH_MAX
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A reference split and checked, borrowing from the input.
struct Parts<'a> {
    registry: &'a str,
    /// `library/` goes in front (a Docker Hub name with one component).
    official: bool,
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl Parts<'_> {
    fn repository(&self) -> String {
        if self.official {
            format!("{OFFICIAL_PREFIX}{}", self.path)
        } else {
            self.path.to_string()
        }
    }

    fn name_len(&self) -> usize {
        self.registry.len()
            + 1
            + if self.official {
                OFFICIAL_PREFIX.len()
            } else {
                0
            }
            + self.path.len()
    }
}

fn split(s: &str) -> Result<Parts<'_>, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceError::LooksLikeId(s.to_string()));
    }
    // Neither name nor tag may contain '@', so the first one starts the digest.
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(check_digest(digest)?)),
        None => (s, None),
    };
    // Path components cannot contain ':', so a ':' after the last '/' starts
    // the tag (one in the domain is always followed by a '/').
    let last_segment = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_segment..].find(':') {
        Some(i) => {
            let (name, tag) = rest.split_at(last_segment + i);
            (name, Some(&tag[1..]))
        }
        None => (rest, None),
    };
    if name.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (domain, path) = split_domain(name);
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        let shown = if domain.is_none() && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_string()
        };
        return Err(ReferenceError::Uppercase(shown));
    }
    if let Some(domain) = domain {
        check_domain(domain)?;
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(ReferenceError::EmptyComponent(name.to_string()));
        }
        if !is_valid_component(component) {
            return Err(ReferenceError::Component(component.to_string()));
        }
    }
    if let Some(tag) = tag.filter(|t| !is_valid_tag(t)) {
        return Err(ReferenceError::Tag(tag.to_string()));
    }
    let registry = match domain {
        None | Some(DOCKER_HUB_LEGACY) => DOCKER_HUB,
        Some(d) => d,
    };
    let parts = Parts {
        registry,
        official: registry == DOCKER_HUB && !path.contains('/'),
        path,
        tag,
        digest,
    };
    let len = parts.name_len();
    if len > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong {
            name: format!("{}/{}", parts.registry, parts.repository()),
            len,
        });
    }
    Ok(parts)
}

/// Docker's rule: the first segment is a domain if it has '.' or ':', is
/// `localhost`, or has an uppercase letter (path components cannot).
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn is_valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `host [":" port]`, host a DNS name (labels of letters, digits and inner
/// hyphens) or a bracketed IPv6 address (no zone).
fn check_domain(domain: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Domain(domain.to_string());
    let (host, port) = if let Some(inner) = domain.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or_else(bad)?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (None, port)
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad());
    }
    if let Some(host) = host {
        let label_ok = |l: &str| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

/// `algorithm ":" hex`, the algorithm one oci-spec and docker know, the hex
/// of its exact length and lowercase (go-digest's checks, in its order).
fn check_digest(digest: &str) -> Result<&str, ReferenceError> {
    let bad = || ReferenceError::Digest(digest.to_string());
    let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
    if !is_valid_algorithm(algorithm)
        || hex.len() < 32
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(ReferenceError::DigestUnsupported {
                algorithm: algorithm.to_string(),
                digest: digest.to_string(),
            });
        }
    };
    if hex.len() != expected {
        return Err(ReferenceError::DigestLength {
            digest: digest.to_string(),
            expected,
        });
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::DigestHex(digest.to_string()));
    }
    Ok(digest)
}

/// `[A-Za-z][A-Za-z0-9]* ( [-_+.] [A-Za-z][A-Za-z0-9]* )*`
fn is_valid_algorithm(a: &str) -> bool {
    a.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(|c| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        for ok in [
            "a",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "0",
            "ubuntu-12.04-base",
        ] {
            assert!(is_valid_component(ok), "{ok}");
        }
        for bad in [
            "", "-a", "a-", "a___b", "a..b", "a._b", "a-.b", "_a", "a_", "A", "a:b", "a$",
        ] {
            assert!(!is_valid_component(bad), "{bad}");
        }
    }

    #[test]
    fn domains() {
        for ok in [
            "localhost",
            "localhost:5000",
            "a",
            "Docker",
            "127.0.0.1:5000",
            "xn--n3h.com:18080",
            "[::1]",
            "[2001:db8::1]:5000",
        ] {
            assert_eq!(check_domain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a.com",
            "a-.com",
            "a..com",
            "foo_bar.com",
            "a.com:",
            "a.com:5x",
            "[]",
            "[fe80::1%eth0]",
            "[::1",
            "[::1]5000",
            "fc00::1:5000",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!(is_valid_tag("latest"));
        assert!(is_valid_tag("_x"));
        assert!(is_valid_tag(&"a".repeat(128)));
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(!is_valid_tag(""));
        assert!(!is_valid_tag(".x"));
        assert!(!is_valid_tag("-x"));
        assert!(!is_valid_tag("a+b"));
    }

    #[test]
    fn messages_name_the_problem() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("docker/Docker"),
            "invalid reference format: repository name (docker/Docker) must be lowercase"
        );
        assert_eq!(
            msg("Uppercase:tag"),
            "invalid reference format: repository name (library/Uppercase) must be lowercase"
        );
        assert_eq!(
            msg(""),
            "invalid reference format: repository name must have at least one component"
        );
        assert!(msg("alpine:-x").contains("tag \"-x\""));
        assert!(msg("aa/asdf$$^/aa").contains("\"asdf$$^\""));
        assert!(msg("docker/").contains("empty path component"));
        assert!(msg("foo_bar.com/x").contains("\"foo_bar.com\" is not a valid registry"));
        assert!(msg("repo@sha256:abc").contains("digest \"sha256:abc\""));
        assert!(
            msg(&format!("a@md5:{}", "f".repeat(32)))
                .contains("unsupported digest algorithm \"md5\"")
        );
        assert!(msg(&format!("a@sha256:{}", "F".repeat(64))).contains("lowercase hex"));
        assert!(msg(&format!("a@sha256:{}", "f".repeat(40))).contains("needs 64 hex digits"));
        assert!(msg(&"a".repeat(250)).contains("must not be more than 255 characters, it has 268"));
    }
}
