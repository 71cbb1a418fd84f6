//! Whether a base name is a valid image reference (the docker/distribution
//! grammar that `reference.ParseNormalizedNamed` accepts), for
//! InvalidDefaultArgInFrom.
//!
//! The workspace's regex-free [`reference::parse`] implements that grammar and
//! normalisation (a bare 64-hex image id, upper case in the repository, a
//! normalised name over 255 characters and unsupported or malformed digests
//! are errors, as in docker).

/// True when `name` parses as a normalized image reference.
pub(crate) fn is_valid_reference(name: &str) -> bool {
    reference::parse(name).is_ok()
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
            // docker checks the digest itself, not only its shape
            "busybox@sha256:0123456789abcdef0123456789abcdef",
            "busybox@md5:0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_valid_reference(bad), "{bad}");
        }
    }
}
