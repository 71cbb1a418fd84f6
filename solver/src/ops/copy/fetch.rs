//! ADD of `http(s)://` URLs: a blocking download into an anonymous temp
//! file, verified against `--checksum` before anything reaches the target.
//!
//! TLS certificates are verified. The trusted roots are, in this order: the
//! PEM file named by `SSL_CERT_FILE`, the PEM files in the directories of
//! `SSL_CERT_DIR`, the system bundle (`/etc/ssl/certs/ca-certificates.crt`
//! and the other usual places), and Mozilla's roots compiled in. Proxies come
//! from `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` and `NO_PROXY`, as for curl.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use sha2::Digest as _;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::CopyError;
use crate::sandbox::CancelHandle;

/// Usual places of the system's CA bundle (Debian, Fedora, openSUSE, Alpine).
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A downloaded file, not yet written anywhere.
pub(super) struct Download {
    pub(super) file: File,
    /// Seconds since the epoch from `Last-Modified`, when the server sent a
    /// date that parses.
    pub(super) last_modified: Option<i64>,
}

/// What `url` serves now, for the cache key of an `ADD` without
/// `--checksum`: the sha256 of the body and its `Last-Modified` date
/// (which ADD gives the file). The step downloads it again when it runs.
pub(crate) fn content_digest(
    url: &str,
    cancel: &CancelHandle,
) -> Result<(cache::Digest, Option<i64>), CopyError> {
    let fetcher = Fetcher::new(url.starts_with("https://"))?;
    let mut download = fetcher.fetch(url, None, cancel)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match download.file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(CopyError::Io {
                    what: format!("read the download of {url}"),
                    source,
                });
            }
        };
        hasher.update(&buf[..n]);
    }
    Ok((
        cache::Digest::from_bytes(hasher.finalize().into()),
        download.last_modified,
    ))
}

/// An expected digest (`algorithm:hex`).
enum Expected {
    Sha256(String),
    Sha384(String),
    Sha512(String),
}

impl Expected {
    fn parse(text: &str) -> Result<Expected, String> {
        let Some((alg, hex)) = text.split_once(':') else {
            return Err(format!("invalid checksum digest format: {text}"));
        };
        let len = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(format!("unsupported digest algorithm: {alg}")),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("invalid checksum digest format: {text}"));
        }
        let hex = hex.to_ascii_lowercase();
        Ok(match alg {
            "sha256" => Expected::Sha256(hex),
            "sha384" => Expected::Sha384(hex),
            _ => Expected::Sha512(hex),
        })
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn for_expected(expected: &Expected) -> Hasher {
        match expected {
            Expected::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Expected::Sha384(_) => Hasher::Sha384(sha2::Sha384::new()),
            Expected::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha384(h) => format!("sha384:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// One HTTP client for the URLs of a COPY/ADD.
pub(super) struct Fetcher {
    agent: ureq::Agent,
}

impl Fetcher {
    /// `strict`: some URL is `https://`, so roots that cannot be loaded
    /// are an error rather than a fall back to the compiled-in ones.
    pub(super) fn new(strict: bool) -> Result<Fetcher, CopyError> {
        let roots = match trusted_roots() {
            Ok(roots) => roots,
            Err(e) if strict => return Err(e),
            Err(_) => RootCerts::WebPki,
        };
        let config = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .user_agent(concat!("builder/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Fetcher {
            agent: config.new_agent(),
        })
    }

    /// Downloads `url`, checking `checksum` when given. Nothing is written
    /// outside an unnamed temp file until the caller copies it.
    pub(super) fn fetch(
        &self,
        url: &str,
        checksum: Option<&str>,
        cancel: &CancelHandle,
    ) -> Result<Download, CopyError> {
        let expected = checksum
            .map(|c| {
                Expected::parse(c).map_err(|reason| CopyError::Checksum {
                    url: url.to_owned(),
                    reason,
                })
            })
            .transpose()?;
        self.download(url, expected, false, cancel)
    }

    /// Downloads `url`, which must still serve the content whose sha256
    /// (`keyed`) the step's cache key was computed from: anything else is
    /// [`CopyError::UrlChanged`].
    pub(super) fn fetch_keyed(
        &self,
        url: &str,
        keyed: &cache::Digest,
        cancel: &CancelHandle,
    ) -> Result<Download, CopyError> {
        self.download(url, Some(Expected::Sha256(keyed.hex())), true, cancel)
    }

    /// Downloads `url`, checking `expected` when given; `keyed`: a mismatch
    /// means the content changed since the key was computed.
    fn download(
        &self,
        url: &str,
        expected: Option<Expected>,
        keyed: bool,
        cancel: &CancelHandle,
    ) -> Result<Download, CopyError> {
        let download_err = |source: ureq::Error| CopyError::Download {
            url: url.to_owned(),
            source: Box::new(source),
        };
        let response = self.agent.get(url).call().map_err(download_err)?;
        let status = response.status();
        if !status.is_success() {
            return Err(CopyError::HttpStatus {
                url: url.to_owned(),
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or("").to_owned(),
            });
        }
        let last_modified = response
            .headers()
            .get("last-modified")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        let io_err = |what: &str| {
            let what = format!("{what} {url}");
            move |source: io::Error| CopyError::Io { what, source }
        };
        let mut file = tempfile::tempfile().map_err(io_err("create temp file for"))?;
        let mut body = response.into_body().into_reader();
        let mut hasher = expected.as_ref().map(Hasher::for_expected);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if cancel.is_cancelled() {
                return Err(CopyError::Cancelled);
            }
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CopyError::Io {
                        what: format!("download {url}"),
                        source,
                    });
                }
            };
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            file.write_all(&buf[..n]).map_err(io_err("save"))?;
        }
        if let (Some(expected), Some(hasher)) = (expected, hasher) {
            let actual = hasher.finish();
            let wanted = match expected {
                Expected::Sha256(h) => format!("sha256:{h}"),
                Expected::Sha384(h) => format!("sha384:{h}"),
                Expected::Sha512(h) => format!("sha512:{h}"),
            };
            if actual != wanted && keyed {
                return Err(CopyError::UrlChanged {
                    url: url.to_owned(),
                });
            }
            if actual != wanted {
                return Err(CopyError::ChecksumMismatch {
                    url: url.to_owned(),
                    expected: wanted,
                    actual,
                });
            }
        }
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("rewind download of"))?;
        Ok(Download {
            file,
            last_modified,
        })
    }
}

/// The roots a download trusts; see the module documentation.
fn trusted_roots() -> Result<RootCerts, CopyError> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
        let path = Path::new(&path);
        let certs = read_pem_certs(path).map_err(|source| CopyError::TlsRoots {
            path: path.display().to_string(),
            source,
        })?;
        if certs.is_empty() {
            return Err(CopyError::TlsRoots {
                path: path.display().to_string(),
                source: io::Error::new(io::ErrorKind::InvalidData, "no PEM certificate in it"),
            });
        }
        return Ok(RootCerts::new_with_certs(&certs));
    }
    if let Some(dirs) = std::env::var_os("SSL_CERT_DIR").filter(|p| !p.is_empty()) {
        let mut certs = Vec::new();
        for dir in std::env::split_paths(&dirs) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // Hash-named links and unrelated files are fine to skip.
                if let Ok(found) = read_pem_certs(&entry.path()) {
                    certs.extend(found);
                }
            }
        }
        if !certs.is_empty() {
            return Ok(RootCerts::new_with_certs(&certs));
        }
    }
    for bundle in SYSTEM_BUNDLES {
        if let Ok(certs) = read_pem_certs(Path::new(bundle)) {
            if !certs.is_empty() {
                return Ok(RootCerts::new_with_certs(&certs));
            }
        }
    }
    Ok(RootCerts::WebPki)
}

fn read_pem_certs(path: &Path) -> io::Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(path)?;
    Ok(ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect())
}

/// Parses an HTTP date in the IMF-fixdate form that every current server
/// sends (`Sun, 06 Nov 1994 08:49:37 GMT`); the obsolete forms give `None`.
pub(super) fn parse_http_date(text: &str) -> Option<i64> {
    let rest = text.trim().split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let hour: i64 = hms.next()?.parse().ok()?;
    let minute: i64 = hms.next()?.parse().ok()?;
    let second: i64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    Some(
        cache::images::days_from_civil(year, month, day) * 86_400
            + hour * 3600
            + minute * 60
            + second,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn digests() {
        assert!(Expected::parse(&format!("sha256:{}", "A".repeat(64))).is_ok());
        assert!(Expected::parse("md5:00").is_err());
        assert!(Expected::parse("abc").is_err());
        assert!(Expected::parse("sha256:abc").is_err());
    }
}
