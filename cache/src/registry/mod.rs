//! Registry client: pull images into the store, push images from it, and
//! authenticate, speaking the OCI distribution API (docker registry v2).
//!
//! Why our own client on `ureq` and not `oci-client`, as ARCHITECTURE.md
//! first planned: `oci-client` is async (tokio + reqwest + hyper, some 100
//! more crates for a program that is otherwise blocking), its blob push takes
//! the whole blob in memory (a 600 MB layer is 600 MB of RAM per upload), it
//! has no retry policy for 5xx or dropped connections, and a pulled blob is
//! handed to us as a stream that we verify and store ourselves anyway. What
//! the issue needs beyond plain requests (token auth, HEAD-skip, cross-repo
//! mount, chunked upload, platform selection, digest verification into the
//! store) is a few hundred lines on the blocking `ureq` agent the workspace
//! already has, and every blob then streams from disk to socket and from
//! socket to disk through [`Store::blob_writer`], whose commit refuses
//! content that does not match its digest.
//!
//! Layout: [`client`] (endpoints, HTTP with retries and the
//! `WWW-Authenticate` flow), [`credentials`] (`~/.docker/config.json`,
//! credential helpers, login/logout), [`pull`] and [`push`].

pub mod client;
pub mod credentials;
pub mod pull;
pub mod push;
pub(crate) mod sources;

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use oci_spec::distribution::Reference;

use crate::digest::Digest;
use crate::images::ImageError;
use crate::store::StoreError;

pub use client::{Client, RegistryOptions};
pub use pull::{PullPolicy, Pulled, ensure_image, ensure_image_for, find_local, pull, pull_for};
pub use push::{BlobOutcome, Pushed, push, push_many};

/// An error talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid reference {reference:?}")]
    InvalidReference {
        reference: String,
        #[source]
        source: reference::ReferenceError,
    },
    #[error("cannot reach registry {registry}")]
    Unreachable {
        registry: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error(
        "registry {registry} requires authentication (401 Unauthorized){hint}: run `builder login {registry}`"
    )]
    Unauthorized { registry: String, hint: String },
    #[error(
        "registry {registry} denied access to {repository} (403 Forbidden): check that the account of `builder login {registry}` may {action} it"
    )]
    Forbidden {
        registry: String,
        repository: String,
        action: &'static str,
    },
    #[error("{what} not found in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("registry {registry} answered {status} to {method} {url}: {body}")]
    Status {
        registry: String,
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error(
        "digest mismatch: {what} {expected} from registry {registry} has digest {actual}; it was not stored"
    )]
    DigestMismatch {
        registry: String,
        what: &'static str,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "size mismatch: blob {digest} from registry {registry} has {actual} bytes, its manifest says {expected}; it was not stored"
    )]
    SizeMismatch {
        registry: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{reference} has no image for platform {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: Platform,
        available: String,
    },
    #[error("{reference}: unsupported manifest type {media_type:?}")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: invalid manifest")]
    InvalidManifest {
        reference: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid token answer from {realm}")]
    Token {
        realm: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("error reading from registry {registry}")]
    Read {
        registry: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl RegistryError {
    /// Whether a transfer should start over: its body broke off midway.
    /// (Failed requests were already retried by [`Client`]; retrying them
    /// again here would multiply the attempts.)
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Read { .. })
    }
}

pub(crate) fn is_retry_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Runs `f` on every item with up to `client.opts.jobs` (1 to 16) at once;
/// the first error stops the rest. The results are in the order of `items`.
pub(crate) fn for_each_parallel<I: Sync, T: Send>(
    client: &Client,
    items: &[I],
    f: impl Fn(&I) -> Result<T, RegistryError> + Sync,
) -> Result<Vec<T>, RegistryError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<T>>> = Mutex::new(items.iter().map(|_| None).collect());
    let error: Mutex<Option<RegistryError>> = Mutex::new(None);
    let workers = client.opts.jobs.clamp(1, 16).min(items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    match f(item) {
                        Ok(t) => results.lock().unwrap()[i] = Some(t),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            error.lock().unwrap().get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|t| t.expect("every item ran"))
        .collect())
}

/// `transfer()`, started over while it breaks off midway
/// ([`RegistryError::is_transient`]), at most `client.opts.retries` times.
pub(crate) fn retry_transient<T>(
    client: &Client,
    mut transfer: impl FnMut() -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let mut attempt = 0;
    loop {
        match transfer() {
            Err(e) if e.is_transient() && attempt < client.opts.retries => {
                client.pause(attempt);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Parses and normalises a reference as docker does: `alpine` is
/// `docker.io/library/alpine` (tag `latest` is implied where a tag is needed).
/// Uses the regex-free [`reference::parse`] (oci-spec's `Reference::try_from`
/// compiles a regex, ~40 ms in every `builder pull/push/run`).
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    reference::parse(s).map_err(|source| RegistryError::InvalidReference {
        reference: s.to_string(),
        source,
    })
}

/// The tag of a reference, `latest` when it has neither tag nor digest.
pub fn tag_of(reference: &Reference) -> Option<&str> {
    match (reference.tag(), reference.digest()) {
        (Some(t), _) => Some(t),
        (None, Some(_)) => None,
        (None, None) => Some("latest"),
    }
}

/// The reference as docker prints it in full: `docker.io/library/alpine:latest`.
pub fn full_name(reference: &Reference) -> String {
    let mut s = format!("{}/{}", reference.registry(), reference.repository());
    if let Some(tag) = tag_of(reference) {
        s.push(':');
        s.push_str(tag);
    }
    if let Some(d) = reference.digest() {
        s.push('@');
        s.push_str(d);
    }
    s
}

/// An OS/architecture(/variant) pair, as in `--platform linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    /// This machine's platform, in Go's names (`linux/amd64`).
    fn default() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
}

/// Why a string is not a platform.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")]
pub struct InvalidPlatform(pub String);

impl FromStr for Platform {
    type Err = InvalidPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(variant.to_ascii_lowercase()),
            }),
            _ => Err(InvalidPlatform(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_as_docker_does() {
        let r = parse_reference("alpine").unwrap();
        assert_eq!(full_name(&r), "docker.io/library/alpine:latest");
        let r = parse_reference("user/app:1").unwrap();
        assert_eq!(full_name(&r), "docker.io/user/app:1");
        let r = parse_reference("127.0.0.1:5000/x/y:t").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "x/y");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost:5000/app@{d}")).unwrap();
        assert_eq!(tag_of(&r), None);
        assert_eq!(r.digest(), Some(d.as_str()));
        let r = parse_reference(&format!("app:1@{d}")).unwrap();
        assert_eq!(tag_of(&r), Some("1"));
        assert_eq!(full_name(&r), format!("docker.io/library/app:1@{d}"));
    }

    #[test]
    fn invalid_references_are_errors_naming_them() {
        for bad in ["Upper/Case", "user/App", "a:b:c", "app@sha256:zz", ""] {
            let err = parse_reference(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = parse_reference("user/App").unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("(user/App) must be lowercase"), "{source}");
        // As in docker, an uppercase first segment is a registry host.
        let r = parse_reference("UPPER/case").unwrap();
        assert_eq!((r.registry(), r.repository()), ("UPPER", "case"));
    }

    #[test]
    fn platforms_parse_and_print() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//x".parse::<Platform>().is_err());
    }
}
