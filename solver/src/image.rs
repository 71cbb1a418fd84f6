//! The final image: the target stage's config with its layers and history,
//! and an OCI image manifest, both stored as canonical JSON blobs.
//!
//! The config is the compiler's [`ImageConfig`] with `rootfs.diff_ids`
//! replaced by the built chain's and every new history entry dated. History
//! and layers are kept consistent the way BuildKit's exporter does it: one
//! non-empty entry per layer, entries marked empty from the bottom when
//! there are too many, generic entries appended when there are too few.

use std::time::{SystemTime, UNIX_EPOCH};

use cache::Digest;
use cache::images::{BlobRef, MEDIA_TYPE_OCI_CONFIG, oci_manifest};
use cache::json::{self, JsonError};
use cache::store::{Store, StoreError};
use frontend::convert::{History, ImageConfig};

use crate::rootfs::LayerChain;

/// An image written to the content store (not tagged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub config_digest: Digest,
    pub config: Vec<u8>,
}

/// What can go wrong while writing the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageWriteError {
    #[error("cannot encode the image {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: JsonError,
    },
    #[error("cannot store the image {what}")]
    Store {
        what: &'static str,
        #[source]
        source: StoreError,
    },
}

/// The comment BuildKit's exporter gives history entries it has to invent.
const EXPORTER_COMMENT: &str = "buildkit.exporter.image.v0";

/// Builds the config and manifest for `image` on `chain` and stores both.
///
/// `created` is the image's creation time in seconds since the epoch
/// (`SOURCE_DATE_EPOCH` when set, else now): it dates the config and every
/// history entry without a date, i.e. this build's own instructions, while
/// the base image's entries keep theirs. With a fixed `created` the same
/// layers give the same digests.
pub fn write_image(
    store: &Store,
    image: &ImageConfig,
    chain: &LayerChain,
    created: Timestamp,
) -> Result<StoredImage, ImageWriteError> {
    let config = config_json(image, chain, created).map_err(|source| ImageWriteError::Encode {
        what: "config",
        source,
    })?;
    let config_digest = store
        .put_blob(&config)
        .map_err(|source| ImageWriteError::Store {
            what: "config",
            source,
        })?;
    let layers: Vec<BlobRef> = chain
        .layers()
        .iter()
        .map(|l| BlobRef {
            media_type: l.descriptor.media_type.clone(),
            digest: l.descriptor.digest,
            size: l.descriptor.size,
        })
        .collect();
    let config_ref = BlobRef {
        media_type: MEDIA_TYPE_OCI_CONFIG.to_string(),
        digest: config_digest,
        size: config.len() as u64,
    };
    let manifest =
        oci_manifest(&config_ref, &layers).map_err(|source| ImageWriteError::Encode {
            what: "manifest",
            source,
        })?;
    let manifest_digest = store
        .put_blob(&manifest)
        .map_err(|source| ImageWriteError::Store {
            what: "manifest",
            source,
        })?;
    Ok(StoredImage {
        manifest_digest,
        manifest,
        config_digest,
        config,
    })
}

/// The config JSON (canonical: keys sorted, no spaces).
pub fn config_json(
    image: &ImageConfig,
    chain: &LayerChain,
    created: Timestamp,
) -> Result<Vec<u8>, JsonError> {
    let mut image = image.clone();
    image.rootfs.kind = "layers".into();
    image.rootfs.diff_ids = chain.diff_ids().iter().map(Digest::to_string).collect();
    let stamp = created.to_rfc3339();
    image.history = normalize_history(std::mem::take(&mut image.history), chain.len(), &stamp);
    json::to_vec(&Dated {
        created: &stamp,
        image: &image,
    })
}

/// The compiler's config type has no `created`; this adds it.
#[derive(serde::Serialize)]
struct Dated<'a> {
    created: &'a str,
    #[serde(flatten)]
    image: &'a ImageConfig,
}

/// One non-empty history entry per layer, and a date on every entry.
fn normalize_history(mut history: Vec<History>, layers: usize, stamp: &str) -> Vec<History> {
    let with_layer = history.iter().filter(|h| !h.empty_layer).count();
    if with_layer > layers {
        let mut seen = 0;
        for entry in &mut history {
            if seen >= layers {
                entry.empty_layer = true;
            }
            if !entry.empty_layer {
                seen += 1;
            }
        }
    }
    for _ in with_layer..layers {
        history.push(History {
            created: None,
            created_by: "created by builder".into(),
            author: None,
            comment: Some(EXPORTER_COMMENT.into()),
            empty_layer: false,
        });
    }
    for entry in &mut history {
        if entry.created.is_none() {
            entry.created = Some(stamp.to_string());
        }
    }
    history
}

/// A point in time for image metadata, in seconds and nanoseconds since the
/// epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// Whole seconds, as `SOURCE_DATE_EPOCH` gives them.
    pub fn from_unix(seconds: i64) -> Self {
        Self { seconds, nanos: 0 }
    }

    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(_) => Self::from_unix(0),
        }
    }

    /// RFC 3339 in UTC as Go's `time.Time` marshals it:
    /// `2024-01-02T03:04:05Z`, with the fraction only when non-zero and
    /// without trailing zeros.
    pub fn to_rfc3339(&self) -> String {
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let mut out = format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        if self.nanos != 0 {
            let fraction = format!("{:09}", self.nanos);
            out.push('.');
            out.push_str(fraction.trim_end_matches('0'));
        }
        out.push('Z');
        out
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::images::parse_rfc3339;

    #[test]
    fn timestamps_format_like_go() {
        assert_eq!(Timestamp::from_unix(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp::from_unix(1_700_000_000).to_rfc3339(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            Timestamp::from_unix(951_782_400).to_rfc3339(),
            "2000-02-29T00:00:00Z"
        );
        let t = Timestamp {
            seconds: 1_700_000_000,
            nanos: 120_000_000,
        };
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.12Z");
        assert_eq!(
            Timestamp::from_unix(-1).to_rfc3339(),
            "1969-12-31T23:59:59Z"
        );
        // The store's parser reads back what is written, across many days.
        for seconds in (-5_000_000_000i64..5_000_000_000).step_by(86_399_777) {
            let text = Timestamp::from_unix(seconds).to_rfc3339();
            assert_eq!(parse_rfc3339(&text), Some(seconds), "{text}");
        }
    }

    fn entry(created_by: &str, empty: bool, created: Option<&str>) -> History {
        History {
            created: created.map(String::from),
            created_by: created_by.into(),
            author: None,
            comment: None,
            empty_layer: empty,
        }
    }

    #[test]
    fn history_matches_layers() {
        let base = entry("base", false, Some("2020-01-01T00:00:00Z"));
        let run = entry("RUN x", false, None);
        let env = entry("ENV a=b", true, None);
        let history = vec![base.clone(), env.clone(), run.clone()];
        let out = normalize_history(history.clone(), 2, "T");
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].created.as_deref(), Some("2020-01-01T00:00:00Z"));
        assert_eq!(out[1].created.as_deref(), Some("T"));
        assert!(out.iter().map(|h| !h.empty_layer).eq([true, false, true]));

        // Too many entries with layers: the top ones become empty.
        let out = normalize_history(history.clone(), 1, "T");
        assert!(out.iter().map(|h| h.empty_layer).eq([false, true, true]));

        // Too few: generic entries are added.
        let out = normalize_history(history, 4, "T");
        assert_eq!(out.len(), 5);
        assert_eq!(out.iter().filter(|h| !h.empty_layer).count(), 4);
        assert_eq!(out[4].comment.as_deref(), Some(EXPORTER_COMMENT));
    }
}
