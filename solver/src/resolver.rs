//! Base images from the local image store, for the frontend's
//! [`ImageResolver`] and for the solver's source ops.
//!
//! The local store is consulted first; once the binary has called
//! [`enable_registry`], a reference the store does not have (or every base
//! image, with `--pull`) is pulled from its registry, for the stage's
//! platform. An image that is nowhere resolves to `None`, which the build
//! turns into an error naming the reference and where the Dockerfile uses
//! it (the reason a pull failed is a note).

use std::sync::{Mutex, OnceLock};

use cache::Digest;
use cache::images::{ConfigSummary, Image, ImageError, ImageStore};
use frontend::convert::{ImageResolver, Platform, ResolvedImage};

/// How builds reach registries; see [`enable_registry`].
#[derive(Debug)]
pub struct RegistryAccess {
    pub client: cache::registry::Client,
    /// `Missing` uses a locally present tag (docker's classic builder);
    /// `Always` (`--pull`) resolves every base image again.
    pub policy: cache::registry::PullPolicy,
}

static REGISTRY: OnceLock<RegistryAccess> = OnceLock::new();

/// Lets builds of this process pull images (`FROM`, `COPY --from`,
/// `RUN --mount=from=`) from registries. The binary calls it once, before
/// building; library users and tests that never call it stay offline.
pub fn enable_registry(access: RegistryAccess) {
    let _ = REGISTRY.set(access);
}

/// Resolves references against an [`ImageStore`].
#[derive(Debug)]
pub struct LocalResolver<'a> {
    images: &'a ImageStore,
    /// Observations made while resolving (a platform mismatch), for the
    /// build's warnings.
    notes: Mutex<Vec<String>>,
    /// Why pulling a reference failed, by reference, for the error that
    /// reports the image missing.
    pull_failures: Mutex<std::collections::HashMap<String, String>>,
}

impl<'a> LocalResolver<'a> {
    pub fn new(images: &'a ImageStore) -> Self {
        Self {
            images,
            notes: Mutex::new(Vec::new()),
            pull_failures: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Why `reference` could not be pulled, if a pull of it failed.
    pub fn pull_failure(&self, reference: &str) -> Option<String> {
        self.pull_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(reference)
            .cloned()
    }

    /// The image `reference` names (a name, `name@digest`, a digest or an
    /// image id) in the local store, else pulled from its registry when
    /// [`enable_registry`] was called; `None` when there is no such image.
    pub fn lookup(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        match self.local(reference)? {
            Some(image) => Ok(Some(image)),
            None => match REGISTRY.get() {
                Some(access) => self
                    .pull_if_needed(access, reference, &access.client.options().platform)
                    .map_err(|source| ImageError::Pull {
                        reference: reference.to_string(),
                        source: Box::new(source),
                    }),
                None => Ok(None),
            },
        }
    }

    /// The image in the local store only.
    fn local(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        match self.images.resolve(reference) {
            Ok(image) => Ok(Some(image)),
            Err(ImageError::NotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The image from the store or its registry, as `access.policy` says;
    /// `None` for what is no registry reference (an image id) and, unless
    /// `--pull` was asked for, for an image no registry has or can serve.
    fn pull_if_needed(
        &self,
        access: &RegistryAccess,
        reference: &str,
        platform: &cache::registry::Platform,
    ) -> Result<Option<Image>, cache::registry::RegistryError> {
        use cache::registry::{self, PullPolicy, RegistryError};
        if access.policy != PullPolicy::Always {
            if let Ok(Some(image)) = self.local(reference) {
                return Ok(Some(image));
            }
        }
        let Ok(parsed) = registry::parse_reference(reference) else {
            return Ok(None);
        };
        match registry::ensure_image_for(
            &access.client,
            self.images,
            &parsed,
            access.policy,
            platform,
        ) {
            Ok(pulled) => Ok(Some(pulled.image)),
            // Nowhere to be found (or no network): the build reports the
            // image as missing, as it does offline; the note says why.
            Err(err @ (RegistryError::NotFound { .. } | RegistryError::Unreachable { .. }))
                if access.policy != PullPolicy::Always =>
            {
                let reason = error_chain(&err);
                self.pull_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(reference.to_owned(), reason.clone());
                self.notes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("cannot pull {reference}: {reason}"));
                Ok(None)
            }
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
        if let Some(access) = REGISTRY.get() {
            let wanted = cache::registry::Platform {
                os: platform.os.clone(),
                architecture: platform.architecture.clone(),
                variant: platform.variant.clone(),
            };
            let found = self
                .pull_if_needed(access, reference, &wanted)
                .map_err(|err| error_chain(&err))?;
            if let Some(image) = found {
                self.note_platform(reference, &image, platform);
                return Ok(Some(ResolvedImage {
                    digest: image.manifest_digest.to_string(),
                    config: image.config,
                }));
            }
            return Ok(None);
        }
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
