//! Base images from the local image store, for the frontend's
//! [`ImageResolver`] and for the solver's source ops.
//!
//! Only the local store is consulted (registry pulls come later): an image
//! that is not there resolves to `None`, which the build turns into an
//! error naming the reference and where the Dockerfile uses it.

use std::sync::Mutex;

use cache::Digest;
use cache::images::{ConfigSummary, Image, ImageError, ImageStore};
use frontend::convert::{ImageResolver, Platform, ResolvedImage};

/// Resolves references against an [`ImageStore`].
#[derive(Debug)]
pub struct LocalResolver<'a> {
    images: &'a ImageStore,
    /// Observations made while resolving (a platform mismatch), for the
    /// build's warnings.
    notes: Mutex<Vec<String>>,
}

impl<'a> LocalResolver<'a> {
    pub fn new(images: &'a ImageStore) -> Self {
        Self {
            images,
            notes: Mutex::new(Vec::new()),
        }
    }

    /// The local image `reference` names (a name, `name@digest`, a digest
    /// or an image id), or `None` when the store has no such image.
    pub fn lookup(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        match self.images.resolve(reference) {
            Ok(image) => Ok(Some(image)),
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Warnings collected so far, oldest first; each is reported once.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note_platform(&self, reference: &str, image: &Image, wanted: &Platform) {
        let Ok(summary) = ConfigSummary::parse(&image.config) else {
            return;
        };
        let os = summary.os.unwrap_or_default();
        let arch = summary.architecture.unwrap_or_default();
        if os.is_empty() || arch.is_empty() {
            return;
        }
        let variant_differs = match (&summary.variant, &wanted.variant) {
            (Some(have), Some(want)) => have != want,
            _ => false,
        };
        if os != wanted.os || arch != wanted.architecture || variant_differs {
            let have = match &summary.variant {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            };
            // Like BuildKit's InvalidBaseImagePlatform check.
            self.notes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!(
                    "base image {reference} was pulled with platform \"{have}\", expected \"{wanted}\" for current build"
                ));
        }
    }
}

impl ImageResolver for LocalResolver<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        match self.lookup(reference) {
            Ok(Some(image)) => {
                self.note_platform(reference, &image, platform);
                Ok(Some(ResolvedImage {
                    digest: image.manifest_digest.to_string(),
                    config: image.config,
                }))
            }
            Ok(None) => Ok(None),
            Err(err) => Err(error_chain(&err)),
        }
    }
}

/// The manifest digest a source op names, parsed.
pub(crate) fn parse_digest(text: &str) -> Option<Digest> {
    text.parse().ok()
}

/// `err` and its causes on one line, for messages that cannot carry a
/// source error.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
