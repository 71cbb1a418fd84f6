//! Local image store: tags as index.json entries with org.opencontainers.image.ref.name.
//!
//! The store root is an OCI image layout, so the image store is its
//! `index.json`: one manifest descriptor per name. The `ref.name` annotation
//! holds the name as a person types it (`app` for `app:latest`, `app:1`,
//! `localhost:5000/x:1`), so `skopeo inspect oci:$ROOT:app` finds it, and
//! containerd's `io.containerd.image.name` holds the docker-normalised full
//! reference (`docker.io/library/app:latest`), which is what lookups use.
//! An image without a name (loaded from an unnamed archive) keeps an entry
//! without annotation so that it stays listed and is not collected. Blobs are
//! never removed here; an image that loses its last entry is left to GC.
//!
//! `index.json` is rewritten whole, atomically (temp file, fsync, rename), so
//! other tools reading the layout (`skopeo inspect oci:$ROOT:name`) never see a
//! torn file; read-modify-write cycles hold the exclusive `index` lock so that
//! two builders never lose each other's tags.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::distribution::Reference;
use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::json::{self, JsonError};
use crate::store::{Store, StoreError};

/// The OCI annotation naming an index entry (here: the full image name).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation for the full image name in OCI archives.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The lock serialising updates of `index.json`.
const INDEX_LOCK: &str = "index";
const INDEX_FILE: &str = "index.json";

/// An error of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("image id prefix {0} is ambiguous")]
    Ambiguous(String),
    #[error("invalid image name {name:?}")]
    InvalidName {
        name: String,
        #[source]
        source: NameError,
    },
    #[error("invalid image index {path}")]
    InvalidIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write image index {path}")]
    WriteIndex {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid image manifest {digest}")]
    InvalidManifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("invalid image config {digest}")]
    InvalidConfig {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    /// A pull from a registry failed (see `crate::registry`).
    #[error("cannot pull {reference}")]
    Pull {
        reference: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("image {image} is incomplete: blob {digest} is missing")]
    MissingBlob { image: String, digest: Digest },
    #[error("unable to delete {reference} (must be forced): image is referenced by {count} names")]
    MultipleNames { reference: String, count: usize },
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// Why a string is not an image name.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("not a valid reference")]
    Reference(#[source] reference::ReferenceError),
    #[error("a name cannot be a 64-character hexadecimal string")]
    LooksLikeId,
    #[error("a name to tag cannot contain a digest")]
    HasDigest,
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not an image manifest")]
    Parse(#[source] oci_spec::OciSpecError),
    #[error("digest {0:?} is not a sha256 digest")]
    Digest(String),
}

/// A normalised image name with a tag: `docker.io/library/app:latest`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    registry: String,
    repository: String,
    tag: String,
}

impl ImageName {
    /// The registry host (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry (`library/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The full name, as stored: `docker.io/library/app:latest`.
    pub fn full(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }

    /// The repository as docker shows it: `app`, `user/app`, `localhost:5000/x`.
    pub fn familiar_repository(&self) -> String {
        if self.registry == "docker.io" {
            match self.repository.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// The name as docker shows it: `app:latest`.
    pub fn familiar(&self) -> String {
        format!("{}:{}", self.familiar_repository(), self.tag)
    }

    /// The shortest name that normalises back to this one: `app` for
    /// `app:latest`, else [`ImageName::familiar`]. Stored as the OCI
    /// `ref.name`, so OCI tools address `oci:ROOT:app` as docker users would.
    pub fn short(&self) -> String {
        if self.tag == "latest" {
            self.familiar_repository()
        } else {
            self.familiar()
        }
    }

    /// Whether `reference` names the same repository (ignoring tag and digest).
    fn same_repository(&self, reference: &Reference) -> bool {
        self.registry == reference.registry() && self.repository == reference.repository()
    }
}

impl FromStr for ImageName {
    type Err = NameError;

    /// Parses and normalises a name the way docker does: `app` →
    /// `docker.io/library/app:latest`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_hex(s) && s.len() == 64 {
            return Err(NameError::LooksLikeId);
        }
        let reference = reference::parse(s).map_err(NameError::Reference)?;
        if reference.digest().is_some() {
            return Err(NameError::HasDigest);
        }
        Ok(ImageName {
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            tag: reference.tag().unwrap_or("latest").to_string(),
        })
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full())
    }
}

impl fmt::Debug for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageName({})", self.full())
    }
}

impl Serialize for ImageName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses a user-given image name, with the name in the error.
pub fn parse_name(s: &str) -> Result<ImageName, ImageError> {
    s.parse().map_err(|source| ImageError::InvalidName {
        name: s.to_string(),
        source,
    })
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A blob referenced by a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobRef {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// The parts of a manifest the image store needs, read from its exact bytes.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    /// The manifest's own `mediaType`, or the OCI manifest type when absent.
    pub media_type: String,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

impl ParsedManifest {
    pub fn parse(bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
        let manifest = ImageManifest::from_reader(bytes).map_err(ManifestError::Parse)?;
        let media_type = manifest
            .media_type()
            .as_ref()
            .map_or(MEDIA_TYPE_OCI_MANIFEST.to_string(), |m| m.to_string());
        Ok(ParsedManifest {
            media_type,
            config: blob_ref(manifest.config())?,
            layers: manifest
                .layers()
                .iter()
                .map(blob_ref)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Converts an oci-spec descriptor into a [`BlobRef`]; only sha256 is accepted.
pub fn blob_ref(d: &Descriptor) -> Result<BlobRef, ManifestError> {
    let digest = d.digest().to_string();
    Ok(BlobRef {
        media_type: d.media_type().to_string(),
        digest: digest
            .parse()
            .map_err(|_| ManifestError::Digest(digest.clone()))?,
        size: d.size(),
    })
}

/// Builds a canonical OCI image manifest for a config and layers.
pub fn oci_manifest(config: &BlobRef, layers: &[BlobRef]) -> Result<Vec<u8>, JsonError> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        schema_version: u32,
        media_type: &'static str,
        config: &'a BlobRef,
        layers: &'a [BlobRef],
    }
    json::to_vec(&Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_MANIFEST,
        config,
        layers,
    })
}

/// The fields of an image config shown by `images` and `inspect`; lenient,
/// since configs come from other tools.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigSummary {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigSummary {
    pub fn parse(bytes: &[u8]) -> Result<ConfigSummary, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The layers' diffIDs, in order.
    pub fn diff_ids(&self) -> Result<Vec<Digest>, crate::digest::InvalidDigest> {
        self.rootfs.as_ref().map_or(Ok(Vec::new()), |r| {
            r.diff_ids.iter().map(|d| d.parse()).collect()
        })
    }

    /// `created` as seconds since the epoch.
    pub fn created_unix(&self) -> Option<i64> {
        self.created.as_deref().and_then(parse_rfc3339)
    }
}

/// Parses an RFC 3339 timestamp (`2024-01-02T03:04:05.123Z`, `+02:00`
/// offsets) into seconds since the epoch; image configs carry nothing else.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// An image in the store, with its manifest and config as stored bytes.
#[derive(Debug, Clone)]
pub struct Image {
    /// Every name pointing at this manifest, sorted.
    pub names: Vec<ImageName>,
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub parsed: ParsedManifest,
    pub config: Vec<u8>,
}

impl Image {
    /// The image id, as docker defines it: the config digest.
    pub fn id(&self) -> Digest {
        self.parsed.config.digest
    }

    /// Sum of the (stored, compressed) layer sizes.
    pub fn size(&self) -> u64 {
        self.parsed.layers.iter().map(|l| l.size).sum()
    }

    pub fn layers(&self) -> &[BlobRef] {
        &self.parsed.layers
    }

    pub fn config_summary(&self) -> Result<ConfigSummary, ImageError> {
        ConfigSummary::parse(&self.config).map_err(|source| ImageError::InvalidConfig {
            digest: self.id(),
            source,
        })
    }

    /// The descriptor of the manifest, as an index entry would hold it.
    pub fn manifest_ref(&self) -> BlobRef {
        BlobRef {
            media_type: self.parsed.media_type.clone(),
            digest: self.manifest_digest,
            size: self.manifest.len() as u64,
        }
    }
}

/// One row of `builder images`.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    /// `None` for an image kept without a name.
    pub name: Option<ImageName>,
    pub manifest_digest: Digest,
    pub id: Digest,
    pub size: u64,
    pub created: Option<String>,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, Default)]
pub struct Removal {
    /// Names that were removed.
    pub untagged: Vec<ImageName>,
    /// Image ids that no longer have any entry (their blobs await GC).
    pub deleted: Vec<Digest>,
}

/// The `index.json` document; unknown fields are kept as they are.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// One entry of the index, decoded.
#[derive(Debug, Clone)]
struct Entry {
    name: Option<ImageName>,
    digest: Digest,
}

fn entry_of(d: &Descriptor) -> Option<Entry> {
    let digest = d.digest().to_string().parse().ok()?;
    let annotations = d.annotations().as_ref();
    let name = annotations
        .and_then(|a| {
            a.get(ANNOTATION_IMAGE_NAME)
                .or_else(|| a.get(ANNOTATION_REF_NAME))
        })
        .and_then(|n| n.parse().ok());
    Some(Entry { name, digest })
}

fn index_descriptor(
    manifest: &BlobRef,
    name: Option<&ImageName>,
) -> Result<Descriptor, ImageError> {
    let digest = oci_spec::image::Digest::from_str(&manifest.digest.to_string())
        .expect("a sha256 digest is a valid oci digest");
    let mut d = Descriptor::new(
        MediaType::from(manifest.media_type.as_str()),
        manifest.size,
        digest,
    );
    if let Some(name) = name {
        d.set_annotations(Some(HashMap::from([
            (ANNOTATION_REF_NAME.to_string(), name.short()),
            (ANNOTATION_IMAGE_NAME.to_string(), name.full()),
        ])));
    }
    Ok(d)
}

/// How a user's string matched.
enum Found {
    /// By name: the manifest of that entry.
    Name(ImageName, Digest),
    /// By digest or id: these manifests.
    Manifests(Vec<Digest>),
}

/// The image store on a content store's `index.json`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    store: Store,
}

impl ImageStore {
    pub fn new(store: Store) -> ImageStore {
        ImageStore { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn index_path(&self) -> PathBuf {
        self.store.root().join(INDEX_FILE)
    }

    fn read_index(&self) -> Result<IndexDoc, ImageError> {
        let path = self.index_path();
        let data = fs::read(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|source| ImageError::InvalidIndex { path, source })
    }

    /// Replaces `index.json` atomically: readers see the old or the new file.
    fn write_index(&self, index: &IndexDoc) -> Result<(), ImageError> {
        let path = self.index_path();
        let bytes = json::to_vec(index)?;
        let werr = |source| ImageError::WriteIndex {
            path: path.clone(),
            source,
        };
        self.store
            .replace_file(&path, &bytes, 0o644, true)
            .map_err(werr)?;
        fs::File::open(self.store.root())
            .and_then(|d| d.sync_all())
            .map_err(werr)?;
        Ok(())
    }

    /// Runs a read-modify-write cycle of the index under the exclusive lock.
    fn update<T>(
        &self,
        f: impl FnOnce(&mut IndexDoc) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let _lock = self.store.lock_exclusive(INDEX_LOCK)?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        if index.media_type.is_none() {
            index.media_type = Some(MEDIA_TYPE_OCI_INDEX.to_string());
        }
        self.write_index(&index)?;
        Ok(out)
    }

    fn entries(&self) -> Result<Vec<Entry>, ImageError> {
        let _lock = self.store.lock_shared(INDEX_LOCK)?;
        Ok(self
            .read_index()?
            .manifests
            .iter()
            .filter_map(entry_of)
            .collect())
    }

    /// Reads and parses a manifest from the store.
    pub fn read_manifest(&self, digest: &Digest) -> Result<(Vec<u8>, ParsedManifest), ImageError> {
        let bytes = self.store.read_blob(digest)?;
        let parsed =
            ParsedManifest::parse(&bytes).map_err(|source| ImageError::InvalidManifest {
                digest: *digest,
                source,
            })?;
        Ok((bytes, parsed))
    }

    fn image_from(&self, manifest_digest: Digest, entries: &[Entry]) -> Result<Image, ImageError> {
        let (manifest, parsed) = self.read_manifest(&manifest_digest)?;
        let config = self.store.read_blob(&parsed.config.digest)?;
        let mut names: Vec<ImageName> = entries
            .iter()
            .filter(|e| e.digest == manifest_digest)
            .filter_map(|e| e.name.clone())
            .collect();
        names.sort();
        names.dedup();
        Ok(Image {
            names,
            manifest_digest,
            manifest,
            parsed,
            config,
        })
    }

    /// Checks that the manifest, its config and every layer are in the store.
    pub fn check_complete(
        &self,
        manifest_digest: &Digest,
        what: &str,
    ) -> Result<ParsedManifest, ImageError> {
        let missing = |digest: Digest| ImageError::MissingBlob {
            image: what.to_string(),
            digest,
        };
        if !self.store.has_blob(manifest_digest) {
            return Err(missing(*manifest_digest));
        }
        let (_, parsed) = self.read_manifest(manifest_digest)?;
        for blob in std::iter::once(&parsed.config).chain(&parsed.layers) {
            if !self.store.has_blob(&blob.digest) {
                return Err(missing(blob.digest));
            }
        }
        Ok(parsed)
    }

    /// Stores a manifest and its config (layers must already be in the
    /// store) and points `names` at it; with no names the image is kept
    /// unnamed. Returns the manifest digest.
    pub fn put(
        &self,
        manifest: &[u8],
        config: &[u8],
        names: &[ImageName],
    ) -> Result<Digest, ImageError> {
        let config_digest = self.store.put_blob(config)?;
        let parsed =
            ParsedManifest::parse(manifest).map_err(|source| ImageError::InvalidManifest {
                digest: Digest::of(manifest),
                source,
            })?;
        if parsed.config.digest != config_digest {
            return Err(ImageError::MissingBlob {
                image: describe(names),
                digest: parsed.config.digest,
            });
        }
        let digest = self.store.put_blob(manifest)?;
        self.add(&digest, names)?;
        Ok(digest)
    }

    /// Points `names` at a manifest that is already in the store, after
    /// checking that the whole image is; names move from other images as a
    /// docker tag does. With no names, the image is kept unnamed.
    pub fn add(&self, manifest_digest: &Digest, names: &[ImageName]) -> Result<(), ImageError> {
        // `app:1` and `docker.io/library/app:1` are one name: one entry.
        let mut unique: Vec<ImageName> = Vec::with_capacity(names.len());
        for n in names {
            if !unique.contains(n) {
                unique.push(n.clone());
            }
        }
        let names = unique.as_slice();
        let parsed = self.check_complete(manifest_digest, &describe(names))?;
        let manifest_ref = BlobRef {
            media_type: parsed.media_type,
            digest: *manifest_digest,
            size: self.store.blob_size(manifest_digest)?,
        };
        self.update(|index| {
            let mut new = Vec::new();
            if names.is_empty() {
                let present = index
                    .manifests
                    .iter()
                    .filter_map(entry_of)
                    .any(|e| e.digest == *manifest_digest);
                if !present {
                    new.push(index_descriptor(&manifest_ref, None)?);
                }
            } else {
                index.manifests.retain(|d| match entry_of(d) {
                    // The names move here, and a nameless entry of this
                    // manifest is no longer needed to keep it.
                    Some(e) => match &e.name {
                        Some(n) => !names.contains(n),
                        None => e.digest != *manifest_digest,
                    },
                    None => true,
                });
                for name in names {
                    new.push(index_descriptor(&manifest_ref, Some(name))?);
                }
            }
            index.manifests.extend(new);
            Ok(())
        })
    }

    fn find(&self, entries: &[Entry], s: &str) -> Result<Found, ImageError> {
        let not_found = || {
            let shown = s
                .parse::<ImageName>()
                .map_or_else(|_| s.to_string(), |n| n.familiar());
            ImageError::NotFound(shown)
        };
        let unique = |mut v: Vec<Digest>| {
            v.sort();
            v.dedup();
            v
        };
        if let Ok(d) = s.parse::<Digest>() {
            let by_manifest: Vec<Digest> = entries
                .iter()
                .filter(|e| e.digest == d)
                .map(|e| e.digest)
                .collect();
            if !by_manifest.is_empty() {
                return Ok(Found::Manifests(unique(by_manifest)));
            }
            let by_id = self.manifests_with_id(entries, |id| *id == d)?;
            return if by_id.is_empty() {
                Err(not_found())
            } else {
                Ok(Found::Manifests(by_id))
            };
        }
        if s.contains('@') {
            let reference = reference::parse(s).map_err(|e| ImageError::InvalidName {
                name: s.to_string(),
                source: NameError::Reference(e),
            })?;
            let digest: Digest = reference
                .digest()
                .unwrap_or_default()
                .parse()
                .map_err(|_| ImageError::NotFound(s.to_string()))?;
            let matching: Vec<&Entry> = entries.iter().filter(|e| e.digest == digest).collect();
            // Prefer the repository asked for; a digest names the content
            // wherever it is tagged, as in docker's containerd store.
            let same_repo = matching.iter().any(|e| {
                e.name
                    .as_ref()
                    .is_some_and(|n| n.same_repository(&reference))
            });
            if same_repo || !matching.is_empty() {
                return Ok(Found::Manifests(vec![digest]));
            }
            return Err(ImageError::NotFound(s.to_string()));
        }
        if let Ok(name) = s.parse::<ImageName>() {
            if let Some(e) = entries.iter().find(|e| e.name.as_ref() == Some(&name)) {
                return Ok(Found::Name(name, e.digest));
            }
        }
        let prefix = s.strip_prefix("sha256:").unwrap_or(s);
        if is_hex(prefix) && prefix.len() <= 64 {
            let ids = self.ids(entries)?;
            let mut matching: Vec<Digest> = ids
                .iter()
                .filter(|(_, id)| id.hex().starts_with(prefix))
                .map(|(_, id)| *id)
                .collect();
            matching.sort();
            matching.dedup();
            if matching.len() > 1 {
                return Err(ImageError::Ambiguous(s.to_string()));
            }
            if let Some(id) = matching.first() {
                let manifests = unique(
                    ids.iter()
                        .filter(|(_, i)| i == id)
                        .map(|(m, _)| *m)
                        .collect(),
                );
                return Ok(Found::Manifests(manifests));
            }
        }
        Err(not_found())
    }

    /// (manifest digest, image id) of every distinct manifest in the index.
    fn ids(&self, entries: &[Entry]) -> Result<Vec<(Digest, Digest)>, ImageError> {
        let mut manifests: Vec<Digest> = entries.iter().map(|e| e.digest).collect();
        manifests.sort();
        manifests.dedup();
        manifests
            .into_iter()
            .map(|m| Ok((m, self.read_manifest(&m)?.1.config.digest)))
            .collect()
    }

    fn manifests_with_id(
        &self,
        entries: &[Entry],
        pred: impl Fn(&Digest) -> bool,
    ) -> Result<Vec<Digest>, ImageError> {
        Ok(self
            .ids(entries)?
            .into_iter()
            .filter(|(_, id)| pred(id))
            .map(|(m, _)| m)
            .collect())
    }

    /// Finds an image by name (`app`, `app:1`, `localhost:5000/x:1`), by
    /// `name@sha256:…`, by manifest digest, or by image id or a unique prefix
    /// of it, like docker.
    pub fn resolve(&self, s: &str) -> Result<Image, ImageError> {
        let entries = self.entries()?;
        let digest = match self.find(&entries, s)? {
            Found::Name(_, d) => d,
            Found::Manifests(ds) => ds[0],
        };
        self.image_from(digest, &entries)
    }

    /// Every index entry as a row, in index order; unnamed images once each.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let entries = self.entries()?;
        let mut cache: HashMap<Digest, (Digest, u64, Option<String>)> = HashMap::new();
        let mut rows = Vec::new();
        for e in &entries {
            let (id, size, created) = match cache.get(&e.digest) {
                Some(v) => v.clone(),
                None => {
                    let (_, parsed) = self.read_manifest(&e.digest)?;
                    let id = parsed.config.digest;
                    let config = self.store.read_blob(&id)?;
                    let summary = ConfigSummary::parse(&config)
                        .map_err(|source| ImageError::InvalidConfig { digest: id, source })?;
                    let v = (
                        id,
                        parsed.layers.iter().map(|l| l.size).sum(),
                        summary.created,
                    );
                    cache.insert(e.digest, v.clone());
                    v
                }
            };
            rows.push(ImageSummary {
                name: e.name.clone(),
                manifest_digest: e.digest,
                id,
                size,
                created,
            });
        }
        Ok(rows)
    }

    /// `docker tag SRC DST`: points `dst` at the image `src` names.
    pub fn tag(&self, src: &str, dst: &ImageName) -> Result<Image, ImageError> {
        let image = self.resolve(src)?;
        self.add(&image.manifest_digest, std::slice::from_ref(dst))?;
        self.resolve(&dst.full())
    }

    /// `docker rmi`: removes a name, or by id/digest every entry of the
    /// image (refused without `force` when that drops several names). Blobs
    /// stay until GC.
    pub fn remove(&self, s: &str, force: bool) -> Result<Removal, ImageError> {
        let mut found = None;
        let mut removal = Removal::default();
        self.update(|index| {
            let entries: Vec<Entry> = index.manifests.iter().filter_map(entry_of).collect();
            let hit = self.find(&entries, s)?;
            let manifests = match &hit {
                Found::Name(name, d) => {
                    index.manifests.retain(|desc| {
                        entry_of(desc).is_none_or(|e| e.name.as_ref() != Some(name))
                    });
                    removal.untagged.push(name.clone());
                    vec![*d]
                }
                Found::Manifests(ds) => {
                    let names: Vec<ImageName> = entries
                        .iter()
                        .filter(|e| ds.contains(&e.digest))
                        .filter_map(|e| e.name.clone())
                        .collect();
                    if names.len() > 1 && !force {
                        return Err(ImageError::MultipleNames {
                            reference: s.to_string(),
                            count: names.len(),
                        });
                    }
                    index
                        .manifests
                        .retain(|desc| entry_of(desc).is_none_or(|e| !ds.contains(&e.digest)));
                    removal.untagged.extend(names);
                    ds.clone()
                }
            };
            found = Some(manifests);
            Ok(())
        })?;
        let remaining = self.entries()?;
        for m in found.unwrap_or_default() {
            if !remaining.iter().any(|e| e.digest == m) {
                let (_, parsed) = self.read_manifest(&m)?;
                if !removal.deleted.contains(&parsed.config.digest) {
                    removal.deleted.push(parsed.config.digest);
                }
            }
        }
        Ok(removal)
    }
}

fn describe(names: &[ImageName]) -> String {
    names
        .first()
        .map_or_else(|| "<unnamed>".to_string(), |n| n.familiar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_docker() {
        let cases = [
            ("app", "docker.io/library/app:latest", "app:latest"),
            ("app:1", "docker.io/library/app:1", "app:1"),
            ("user/app", "docker.io/user/app:latest", "user/app:latest"),
            (
                "docker.io/library/app:2",
                "docker.io/library/app:2",
                "app:2",
            ),
            (
                "index.docker.io/library/app:2",
                "docker.io/library/app:2",
                "app:2",
            ),
            (
                "localhost:5000/x:1",
                "localhost:5000/x:1",
                "localhost:5000/x:1",
            ),
            ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
            (
                "ghcr.io/o/r/deep:v1.2",
                "ghcr.io/o/r/deep:v1.2",
                "ghcr.io/o/r/deep:v1.2",
            ),
            ("[::1]:5000/app:v", "[::1]:5000/app:v", "[::1]:5000/app:v"),
        ];
        for (input, full, familiar) in cases {
            let n: ImageName = input.parse().unwrap();
            assert_eq!(n.full(), full, "{input}");
            assert_eq!(n.familiar(), familiar, "{input}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "App", "app:", "a b", &"a".repeat(64), "app@sha256:0000"] {
            assert!(bad.parse::<ImageName>().is_err(), "{bad:?}");
        }
        let upper = "user/App".parse::<ImageName>().unwrap_err();
        let NameError::Reference(source) = upper else {
            panic!("{upper:?}")
        };
        assert_eq!(
            source.to_string(),
            "invalid reference format: repository name (user/App) must be lowercase"
        );
        let with_digest = format!("app@sha256:{}", "0".repeat(64));
        assert!(matches!(
            with_digest.parse::<ImageName>(),
            Err(NameError::HasDigest)
        ));
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.789123Z"),
            Some(1709210096)
        );
        assert_eq!(parse_rfc3339("2024-02-29T14:34:56+02:00"), Some(1709210096));
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00-01:30"), Some(946690200));
        for bad in [
            "",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "2024-02-29T12:34:56",
            "2024-02-29T12:34:56.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn oci_manifest_is_canonical_and_parses_back() {
        let config = BlobRef {
            media_type: MEDIA_TYPE_OCI_CONFIG.into(),
            digest: Digest::of(b"{}"),
            size: 2,
        };
        let layer = BlobRef {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: Digest::of(b"x"),
            size: 1,
        };
        let bytes = oci_manifest(&config, std::slice::from_ref(&layer)).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"config":{"digest":"sha256:"#),
            "{text}"
        );
        assert!(!text.contains(' '));
        let parsed = ParsedManifest::parse(&bytes).unwrap();
        assert_eq!(parsed.config, config);
        assert_eq!(parsed.layers, vec![layer]);
        assert_eq!(parsed.media_type, MEDIA_TYPE_OCI_MANIFEST);
    }
}
