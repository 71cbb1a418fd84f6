//! Whether a base name is a valid image reference (the docker/distribution
//! grammar that `reference.ParseNormalizedNamed` accepts), for
//! InvalidDefaultArgInFrom.

use std::sync::OnceLock;

use regex::Regex;

fn grammar() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let host = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let domain = format!(r"(?:{host}(?:\.{host})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?");
        let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        let tag = r"[\w][\w.-]{0,127}";
        let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
        Regex::new(&format!(
            r"^(?:{domain}/)?{component}(?:/{component})*(?::{tag})?(?:@{digest})?$"
        ))
        .expect("valid reference grammar")
    })
}

/// True when `name` parses as a normalized image reference.
pub(crate) fn is_valid_reference(name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    // A bare 64-hex string is an image ID, not a name.
    if name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return false;
    }
    // Without a domain, the repository must be lower case; a first
    // component is a domain only when it has `.` or `:`, is `localhost`,
    // or has upper case letters.
    let path_start = match name.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            first.len() + 1
        }
        _ => 0,
    };
    let repo_end = name[path_start..]
        .find([':', '@'])
        .map_or(name.len(), |i| path_start + i);
    if repo_end > 255 {
        return false;
    }
    grammar().is_match(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for ok in [
            "alpine",
            "alpine:3.20",
            "docker.io/library/alpine:3.20",
            "localhost:5000/app",
            "Registry.Example.com/team/app:v1",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "scratch",
        ] {
            assert!(is_valid_reference(ok), "{ok}");
        }
        for bad in [
            "",
            "busybox:",
            "Alpine",
            ":3.20",
            "/app",
            "app/",
            "a b",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_valid_reference(bad), "{bad}");
        }
    }
}
