//! Remote build cache: cache records shared through a registry (or
//! `builder cache-server`) or an OCI layout directory, as buildx's
//! `--cache-to`/`--cache-from`.
//!
//! Format: each cache result is one OCI image manifest (schema 2) whose
//! config has our own media type, [`CONFIG_MEDIA_TYPE`], and records the
//! cache key, the record's layers (with their diff ids, which a manifest
//! cannot hold) and the step's description; its layers are the result's
//! layer blobs, base first. The manifest is tagged `k-<key hex>`, so a
//! lookup is one manifest request (a 404 is a miss) and a hit fetches only
//! the layers the local store lacks, each verified against its digest on
//! the way in. Any registry that accepts OCI manifests with a foreign
//! config media type takes it (distribution 2.8 does).
//!
//! The backends are behind [`RemoteCache`] so that the solver does not
//! know where a record came from; errors are returned, and the solver turns
//! them into warnings: a cache that cannot be reached never fails a build.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use oci_spec::distribution::Reference;
use serde::{Deserialize, Serialize};
use ureq::Body;
use ureq::http::Response;

use crate::digest::Digest;
use crate::images::{BlobRef, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST};
use crate::keys::{CacheRecord, RecordLayer};
use crate::registry::client::{Endpoint, Req, ReqBody, check, header};
use crate::registry::credentials::Credentials;
use crate::registry::{Client, RegistryError, RegistryOptions, parse_reference};
use crate::store::{Store, StoreError};

/// The media type of a cache result's config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.builder.cache.config.v1+json";
/// Version of the config document; others are misses.
pub const CONFIG_VERSION: u32 = 1;
/// The annotation naming the key on each manifest.
const ANNOTATION_KEY: &str = "dev.builder.cache.key";
/// The OCI layout's tag annotation.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Configs and manifests larger than this are refused.
const MAX_DOCUMENT: u64 = 4 << 20;

/// The tag of a cache key: `k-<64 hex>` (tags allow at most 128 characters
/// of `[A-Za-z0-9_.-]`).
pub fn tag_of_key(key: &Digest) -> String {
    format!("k-{}", key.hex())
}

/// The config document of a cache result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub version: u32,
    pub key: Digest,
    pub layers: Vec<RecordLayer>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A cache result as documents: the config's and the manifest's bytes.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

/// The manifest and config of `record` under `key`, canonical JSON (the same
/// record always gives the same manifest digest, so re-exporting an entry
/// is a no-op for a registry).
pub fn encode(key: &Digest, record: &CacheRecord) -> Encoded {
    let config = CacheConfig {
        version: CONFIG_VERSION,
        key: *key,
        layers: record.layers.clone(),
        description: record.description.clone(),
    };
    let config = crate::json::to_vec(&config).expect("a cache config serializes");
    let layers: Vec<serde_json::Value> = record
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest.to_string(),
                "size": l.size,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": layers,
        "annotations": { ANNOTATION_KEY: key.to_string() },
    });
    let manifest = crate::json::to_vec(&manifest).expect("a manifest serializes");
    Encoded { config, manifest }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
}

/// The config's descriptor of a cache manifest; `None` when it is not one of
/// ours (another tool's image under the same tag is a miss, not an error).
fn config_of(manifest: &[u8]) -> Option<BlobRef> {
    let doc: ManifestDoc = serde_json::from_slice(manifest).ok()?;
    (doc.config.media_type == CONFIG_MEDIA_TYPE).then_some(BlobRef {
        media_type: doc.config.media_type,
        digest: doc.config.digest,
        size: doc.config.size,
    })
}

/// Checks a fetched config against the key asked for and the manifest's
/// layers; the record it describes.
fn decode(key: &Digest, manifest: &[u8], config: &[u8]) -> Option<CacheRecord> {
    let doc: ManifestDoc = serde_json::from_slice(manifest).ok()?;
    let config: CacheConfig = serde_json::from_slice(config).ok()?;
    if config.version != CONFIG_VERSION || config.key != *key {
        return None;
    }
    let same = doc.layers.len() == config.layers.len()
        && doc
            .layers
            .iter()
            .zip(&config.layers)
            .all(|(m, c)| m.digest == c.digest && m.size == c.size);
    if !same {
        return None;
    }
    Some(CacheRecord::new(config.layers, config.description))
}

/// What went wrong with a remote cache.
#[derive(Debug, thiserror::Error)]
pub enum RemoteCacheError {
    #[error("invalid cache spec {spec:?}: {why}")]
    Spec { spec: String, why: String },
    #[error("cache {cache}")]
    Registry {
        cache: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("cache {cache}: cannot {action} {}", path.display())]
    Io {
        cache: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cache {cache}: invalid {what}")]
    Invalid { cache: String, what: String },
    #[error("cache {cache}")]
    Store {
        cache: String,
        #[source]
        source: StoreError,
    },
}

/// A hit: the record (now with every blob in the local store) and how many
/// bytes had to be fetched for it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub record: CacheRecord,
    pub fetched_bytes: u64,
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    /// Cache results written (or already there with the same content).
    pub entries: usize,
    /// Blob bytes sent (blobs the remote already had do not count).
    pub uploaded_bytes: u64,
}

/// A place cache results are looked up in and exported to.
pub trait RemoteCache: Send + Sync + fmt::Debug {
    /// Where, for messages: `127.0.0.1:5000/team/cache`, `local:/ci/cache`.
    fn name(&self) -> String;
    /// The record of `key`, its missing blobs fetched into `store`; `None`
    /// on a miss.
    fn lookup(&self, store: &Store, key: &Digest) -> Result<Option<Fetched>, RemoteCacheError>;
    /// Writes the records (whose blobs are all in `store`).
    fn export(
        &self,
        store: &Store,
        entries: &[(Digest, CacheRecord)],
    ) -> Result<Exported, RemoteCacheError>;
}

/// `mode=` of `--cache-to`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// The final stage's results only.
    #[default]
    Min,
    /// Every result the build produced or hit.
    Max,
}

/// What a `--cache-to` exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    pub mode: CacheMode,
    /// `mounts=true`: the build's `RUN --mount=type=cache` directories too.
    pub mounts: bool,
}

/// One `--cache-from`/`--cache-to` value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSpec {
    /// `type=registry,ref=HOST/REPO`.
    Registry {
        reference: String,
        export: ExportOptions,
    },
    /// `type=local,src=DIR` / `dest=DIR`.
    Local { dir: PathBuf, export: ExportOptions },
    /// `type=inline`: accepted, nothing is exported (see the README).
    Inline,
}

impl CacheSpec {
    /// Parses buildx's CSV syntax; a value without `=` is a registry
    /// reference (`--cache-from HOST/REPO`, as buildx). `to` says which
    /// flag it came from (`dest=` for `--cache-to`, `src=` for `--cache-from`).
    pub fn parse(spec: &str, to: bool) -> Result<CacheSpec, RemoteCacheError> {
        let err = |why: String| RemoteCacheError::Spec {
            spec: spec.to_owned(),
            why,
        };
        if !spec.contains('=') {
            if spec.is_empty() {
                return Err(err("empty".into()));
            }
            return Ok(CacheSpec::Registry {
                reference: spec.to_owned(),
                export: ExportOptions::default(),
            });
        }
        let mut fields = BTreeMap::new();
        for field in spec.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| err(format!("{field:?} is not KEY=VALUE")))?;
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let mode = match fields.get("mode").map(String::as_str) {
            None | Some("min") => CacheMode::Min,
            Some("max") => CacheMode::Max,
            Some(other) => return Err(err(format!("mode must be min or max, not {other:?}"))),
        };
        let mounts = match fields.get("mounts").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(err(format!("mounts must be true or false, not {other:?}"))),
        };
        let export = ExportOptions { mode, mounts };
        match fields.get("type").map(String::as_str).unwrap_or("registry") {
            "registry" => {
                let reference = fields
                    .get("ref")
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| err("type=registry needs ref=HOST/REPO".into()))?;
                // buildx's `registry.insecure=true`: HTTP or unverified HTTPS.
                let insecure = ["registry.insecure", "insecure"]
                    .iter()
                    .any(|k| fields.get(*k).is_some_and(|v| v == "true"));
                let reference = match reference.strip_prefix("http://") {
                    None if insecure => format!("http://{reference}"),
                    _ => reference.clone(),
                };
                Ok(CacheSpec::Registry { reference, export })
            }
            "local" => {
                let key = if to { "dest" } else { "src" };
                let dir = fields
                    .get(key)
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| err(format!("type=local needs {key}=DIR")))?;
                Ok(CacheSpec::Local {
                    dir: PathBuf::from(dir),
                    export,
                })
            }
            "inline" => Ok(CacheSpec::Inline),
            other => Err(err(format!(
                "unknown type {other:?} (expected registry, local or inline)"
            ))),
        }
    }

    pub fn export_options(&self) -> ExportOptions {
        match self {
            CacheSpec::Registry { export, .. } | CacheSpec::Local { export, .. } => *export,
            CacheSpec::Inline => ExportOptions::default(),
        }
    }

    /// The backend; `None` for `type=inline`. A registry cache's credentials
    /// are `BUILDER_CACHE_TOKEN` when set (as the bearer token or basic
    /// password the cache server takes), else the docker credentials of
    /// its host.
    pub fn open(
        &self,
        options: &RegistryOptions,
    ) -> Result<Option<Arc<dyn RemoteCache>>, RemoteCacheError> {
        match self {
            CacheSpec::Registry { reference, .. } => Ok(Some(Arc::new(RegistryCache::new(
                reference,
                options.clone(),
                std::env::var("BUILDER_CACHE_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            )?))),
            CacheSpec::Local { dir, .. } => Ok(Some(Arc::new(LocalCache::new(dir)))),
            CacheSpec::Inline => Ok(None),
        }
    }
}

/// A cache in a registry repository.
pub struct RegistryCache {
    client: Client,
    registry: String,
    repository: String,
    /// The reference's tag or digest: an image that may carry inline cache
    /// metadata ([`INLINE_ANNOTATION`]), read on the first lookup.
    image: Option<String>,
    inline: OnceLock<HashMap<Digest, CacheRecord>>,
}

impl fmt::Debug for RegistryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryCache({})", self.name())
    }
}

impl RegistryCache {
    /// `reference` is `HOST/REPO[:TAG]`; keys are tags of `HOST/REPO`, and a
    /// TAG names an image whose inline cache metadata is read too. With an
    /// `http://` prefix the host is reached over plain HTTP (or HTTPS without
    /// certificate checks), as a `--insecure-registry`: a team cache server
    /// on another machine speaks plain HTTP.
    pub fn new(
        reference: &str,
        mut options: RegistryOptions,
        token: Option<String>,
    ) -> Result<RegistryCache, RemoteCacheError> {
        let insecure = reference.starts_with("http://");
        let reference = reference.strip_prefix("http://").unwrap_or(reference);
        let parsed: Reference =
            parse_reference(reference).map_err(|source| RemoteCacheError::Spec {
                spec: reference.to_owned(),
                why: source.to_string(),
            })?;
        if insecure {
            options.insecure.push(parsed.registry().to_owned());
        }
        let client = Client::new(options);
        if let Some(token) = token {
            client.set_credentials(
                parsed.registry(),
                Credentials {
                    username: "builder".into(),
                    secret: token,
                },
            );
        }
        let image = match (parsed.digest(), parsed.tag()) {
            (Some(d), _) => Some(d.to_owned()),
            (None, Some(t)) => Some(t.to_owned()),
            (None, None) => None,
        };
        Ok(RegistryCache {
            client,
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
            image,
            inline: OnceLock::new(),
        })
    }

    fn err(&self, source: RegistryError) -> RemoteCacheError {
        RemoteCacheError::Registry {
            cache: self.name(),
            source: Box::new(source),
        }
    }

    fn scopes(&self, push: bool) -> Vec<String> {
        let action = if push { "pull,push" } else { "pull" };
        vec![format!("repository:{}:{action}", self.repository)]
    }

    /// HEADs the manifest under `tag` with the scope of a pull or a push:
    /// `None` when there is none, else the checked answer.
    fn head_manifest(
        &self,
        ep: &Endpoint,
        tag: &str,
        push: bool,
    ) -> Result<Option<Response<Body>>, RegistryError> {
        let repo = &self.repository;
        let scopes = self.scopes(push);
        let head = Req::new(
            "HEAD",
            ep.url(&format!("/v2/{repo}/manifests/{tag}")),
            &scopes,
        )
        .header("accept", MEDIA_TYPE_OCI_MANIFEST);
        let resp = self.client.send(ep, &head)?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let action = if push { "push" } else { "pull" };
        check(resp, ep, &head, || format!("manifest {repo}:{tag}"), action).map(Some)
    }

    /// The manifest under `tag`, `None` when there is none.
    fn get_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let ep = self.client.endpoint(&self.registry);
        if self.head_manifest(&ep, tag, false)?.is_none() {
            return Ok(None);
        }
        let sep = if tag.contains(':') { '@' } else { ':' };
        let parsed = parse_reference(&format!("{}/{}{sep}{tag}", self.registry, self.repository))?;
        let (bytes, _, _) = crate::registry::pull::fetch_manifest(
            &self.client,
            &ep,
            &parsed,
            tag,
            None,
            &self.scopes(false),
        )?;
        Ok(Some(bytes))
    }

    /// The digest of the manifest under `tag`, if any (one HEAD).
    fn manifest_digest(&self, tag: &str) -> Result<Option<Digest>, RegistryError> {
        let ep = self.client.endpoint(&self.registry);
        Ok(self
            .head_manifest(&ep, tag, true)?
            .and_then(|resp| header(&resp, "docker-content-digest").and_then(|d| d.parse().ok())))
    }

    /// The records an image's inline cache metadata describes (none when
    /// the reference names no image or it has none).
    fn inline_records(&self, store: &Store) -> &HashMap<Digest, CacheRecord> {
        self.inline
            .get_or_init(|| self.load_inline(store).ok().flatten().unwrap_or_default())
    }

    fn load_inline(
        &self,
        store: &Store,
    ) -> Result<Option<HashMap<Digest, CacheRecord>>, RegistryError> {
        let Some(image) = &self.image else {
            return Ok(None);
        };
        let Some(manifest) = self.get_manifest(image)? else {
            return Ok(None);
        };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&manifest) else {
            return Ok(None);
        };
        let Some(entries) = doc["annotations"][INLINE_ANNOTATION]
            .as_str()
            .and_then(|t| serde_json::from_str::<Vec<InlineEntry>>(t).ok())
        else {
            return Ok(None);
        };
        let Ok(parsed) = serde_json::from_slice::<ManifestDoc>(&manifest) else {
            return Ok(None);
        };
        let config_ref = BlobRef {
            media_type: parsed.config.media_type.clone(),
            digest: parsed.config.digest,
            size: parsed.config.size,
        };
        if config_ref.size > MAX_DOCUMENT {
            return Ok(None);
        }
        if !store.has_blob(&config_ref.digest) {
            let ep = self.client.endpoint(&self.registry);
            crate::registry::pull::fetch_blobs(
                &self.client,
                &ep,
                &self.repository,
                store,
                std::slice::from_ref(&config_ref),
                &self.scopes(false),
            )?;
        }
        let config: serde_json::Value =
            match serde_json::from_slice(&store.read_blob(&config_ref.digest)?) {
                Ok(c) => c,
                Err(_) => return Ok(None),
            };
        let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if diff_ids.len() != parsed.layers.len() {
            return Ok(None);
        }
        let mut out = HashMap::new();
        for e in entries {
            if e.layers == 0 || e.layers > parsed.layers.len() {
                continue;
            }
            let layers = parsed.layers[..e.layers]
                .iter()
                .zip(&diff_ids)
                .map(|(l, d)| RecordLayer {
                    media_type: l.media_type.clone(),
                    digest: l.digest,
                    size: l.size,
                    diff_id: *d,
                })
                .collect();
            out.insert(e.key, CacheRecord::new(layers, ""));
        }
        Ok(Some(out))
    }

    /// Fetches the record's layers the store lacks; their bytes.
    fn fetch_missing(&self, store: &Store, record: &CacheRecord) -> Result<u64, RegistryError> {
        let missing: Vec<BlobRef> = record
            .layers
            .iter()
            .filter(|l| !store.has_blob(&l.digest))
            .map(|l| BlobRef {
                media_type: l.media_type.clone(),
                digest: l.digest,
                size: l.size,
            })
            .collect();
        let ep = self.client.endpoint(&self.registry);
        crate::registry::pull::fetch_blobs(
            &self.client,
            &ep,
            &self.repository,
            store,
            &missing,
            &self.scopes(false),
        )
    }

    fn lookup_inner(&self, store: &Store, key: &Digest) -> Result<Option<Fetched>, RegistryError> {
        if let Some(record) = self.inline_records(store).get(key).cloned() {
            let fetched_bytes = self.fetch_missing(store, &record)?;
            return Ok(Some(Fetched {
                record,
                fetched_bytes,
            }));
        }
        let Some(manifest) = self.get_manifest(&tag_of_key(key))? else {
            return Ok(None);
        };
        let Some(config_ref) = config_of(&manifest) else {
            return Ok(None);
        };
        if config_ref.size > MAX_DOCUMENT {
            return Ok(None);
        }
        let ep = self.client.endpoint(&self.registry);
        let scopes = self.scopes(false);
        let mut fetched_bytes = 0;
        if !store.has_blob(&config_ref.digest) {
            fetched_bytes += crate::registry::pull::fetch_blobs(
                &self.client,
                &ep,
                &self.repository,
                store,
                std::slice::from_ref(&config_ref),
                &scopes,
            )?;
        }
        let config = store.read_blob(&config_ref.digest)?;
        let Some(record) = decode(key, &manifest, &config) else {
            return Ok(None);
        };
        fetched_bytes += self.fetch_missing(store, &record)?;
        Ok(Some(Fetched {
            record,
            fetched_bytes,
        }))
    }

    fn export_inner(
        &self,
        store: &Store,
        entries: &[(Digest, CacheRecord)],
    ) -> Result<Exported, RegistryError> {
        let mut out = Exported::default();
        // Entries the registry already holds as they are cost one HEAD each.
        let mut todo = Vec::new();
        for (key, record) in entries {
            if record.layers.is_empty() {
                continue;
            }
            let encoded = encode(key, record);
            if self.manifest_digest(&tag_of_key(key))? == Some(Digest::of(&encoded.manifest)) {
                out.entries += 1;
                continue;
            }
            todo.push((key, record, encoded));
        }
        let mut seen = HashSet::new();
        let mut blobs = Vec::new();
        for (_, record, encoded) in &todo {
            let config = store.put_blob(&encoded.config)?;
            if seen.insert(config) {
                blobs.push(BlobRef {
                    media_type: CONFIG_MEDIA_TYPE.into(),
                    digest: config,
                    size: encoded.config.len() as u64,
                });
            }
            for l in &record.layers {
                if seen.insert(l.digest) {
                    blobs.push(BlobRef {
                        media_type: l.media_type.clone(),
                        digest: l.digest,
                        size: l.size,
                    });
                }
            }
        }
        let ep = self.client.endpoint(&self.registry);
        let repo = &self.repository;
        let outcomes = crate::registry::push::push_blobs(&self.client, &ep, repo, store, &blobs)?;
        out.uploaded_bytes = blobs
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == crate::registry::BlobOutcome::Uploaded)
            .map(|(b, _)| b.size)
            .sum();
        let scopes = self.scopes(true);
        for (key, _, encoded) in &todo {
            let tag = tag_of_key(key);
            let req = Req::new(
                "PUT",
                ep.url(&format!("/v2/{repo}/manifests/{tag}")),
                &scopes,
            )
            .header("content-type", MEDIA_TYPE_OCI_MANIFEST)
            .body(ReqBody::Bytes(&encoded.manifest));
            let resp = self.client.send(&ep, &req)?;
            check(resp, &ep, &req, || format!("repository {repo}"), "push")?;
            out.entries += 1;
        }
        Ok(out)
    }
}

impl RemoteCache for RegistryCache {
    fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    fn lookup(&self, store: &Store, key: &Digest) -> Result<Option<Fetched>, RemoteCacheError> {
        self.lookup_inner(store, key).map_err(|e| self.err(e))
    }

    fn export(
        &self,
        store: &Store,
        entries: &[(Digest, CacheRecord)],
    ) -> Result<Exported, RemoteCacheError> {
        self.export_inner(store, entries).map_err(|e| self.err(e))
    }
}

/// A cache in an OCI image layout directory (`type=local`): the same
/// manifests, named in `index.json` by their tag.
#[derive(Debug)]
pub struct LocalCache {
    dir: PathBuf,
}

impl LocalCache {
    pub fn new(dir: impl Into<PathBuf>) -> LocalCache {
        LocalCache { dir: dir.into() }
    }

    fn io(&self, action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RemoteCacheError {
        let cache = self.name();
        let path = path.to_path_buf();
        move |source| RemoteCacheError::Io {
            cache,
            action,
            path,
            source,
        }
    }

    fn store_err(&self) -> impl FnOnce(StoreError) -> RemoteCacheError {
        let cache = self.name();
        move |source| RemoteCacheError::Store { cache, source }
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(d.hex())
    }

    /// The index's manifests; an absent index is an empty cache.
    fn read_index(&self) -> Result<Vec<serde_json::Value>, RemoteCacheError> {
        let path = self.dir.join("index.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("read", &path)(e)),
        };
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| RemoteCacheError::Invalid {
                cache: self.name(),
                what: "index.json".into(),
            })?;
        Ok(doc["manifests"].as_array().cloned().unwrap_or_default())
    }

    /// Copies a blob of the layout into the store, verified.
    fn import_blob(&self, store: &Store, d: &Digest) -> Result<u64, RemoteCacheError> {
        let path = self.blob_path(d);
        let mut file = fs::File::open(&path).map_err(self.io("read", &path))?;
        let mut writer = store.blob_writer().map_err(self.store_err())?;
        let n = io::copy(&mut file, &mut writer).map_err(self.io("read", &path))?;
        writer.commit(Some(d)).map_err(self.store_err())?;
        Ok(n)
    }

    /// Writes `bytes` as `path` atomically.
    fn write_atomic(
        &self,
        path: &Path,
        write: impl FnOnce(&mut fs::File) -> io::Result<()>,
    ) -> Result<(), RemoteCacheError> {
        let dir = path.parent().expect("layout paths have a parent");
        fs::create_dir_all(dir).map_err(self.io("create", dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(self.io("create a file in", dir))?;
        write(tmp.as_file_mut()).map_err(self.io("write", path))?;
        tmp.as_file().sync_all().map_err(self.io("write", path))?;
        tmp.persist(path)
            .map_err(|e| self.io("write", path)(e.error))?;
        Ok(())
    }

    fn export_blob(&self, store: &Store, d: &Digest) -> Result<u64, RemoteCacheError> {
        let dest = self.blob_path(d);
        if dest.exists() {
            return Ok(0);
        }
        let src = store.blob_path(d);
        let mut from = fs::File::open(&src).map_err(self.io("read", &src))?;
        let mut n = 0;
        self.write_atomic(&dest, |f| {
            n = io::copy(&mut from, f)?;
            Ok(())
        })?;
        Ok(n)
    }
}

impl RemoteCache for LocalCache {
    fn name(&self) -> String {
        format!("local:{}", self.dir.display())
    }

    fn lookup(&self, store: &Store, key: &Digest) -> Result<Option<Fetched>, RemoteCacheError> {
        let tag = tag_of_key(key);
        let entry = self
            .read_index()?
            .into_iter()
            .find(|m| m["annotations"][ANNOTATION_REF_NAME].as_str() == Some(tag.as_str()));
        let Some(entry) = entry else { return Ok(None) };
        let Some(manifest_digest) = entry["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok())
        else {
            return Ok(None);
        };
        let path = self.blob_path(&manifest_digest);
        let manifest = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("read", &path)(e)),
        };
        if Digest::of(&manifest) != manifest_digest {
            return Err(RemoteCacheError::Invalid {
                cache: self.name(),
                what: format!("manifest {manifest_digest} (its content has another digest)"),
            });
        }
        let Some(config_ref) = config_of(&manifest) else {
            return Ok(None);
        };
        let path = self.blob_path(&config_ref.digest);
        let config = fs::read(&path).map_err(self.io("read", &path))?;
        if Digest::of(&config) != config_ref.digest {
            return Err(RemoteCacheError::Invalid {
                cache: self.name(),
                what: format!(
                    "config {} (its content has another digest)",
                    config_ref.digest
                ),
            });
        }
        let Some(record) = decode(key, &manifest, &config) else {
            return Ok(None);
        };
        let mut fetched_bytes = 0;
        for l in &record.layers {
            if !store.has_blob(&l.digest) {
                fetched_bytes += self.import_blob(store, &l.digest)?;
            }
        }
        Ok(Some(Fetched {
            record,
            fetched_bytes,
        }))
    }

    fn export(
        &self,
        store: &Store,
        entries: &[(Digest, CacheRecord)],
    ) -> Result<Exported, RemoteCacheError> {
        let mut out = Exported::default();
        let layout = self.dir.join("oci-layout");
        if !layout.exists() {
            self.write_atomic(&layout, |f| {
                f.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)
            })?;
        }
        let mut index: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut others = Vec::new();
        for m in self.read_index()? {
            match m["annotations"][ANNOTATION_REF_NAME].as_str() {
                Some(tag) => {
                    index.insert(tag.to_owned(), m);
                }
                None => others.push(m),
            }
        }
        for (key, record) in entries {
            if record.layers.is_empty() {
                continue;
            }
            let encoded = encode(key, record);
            for l in &record.layers {
                out.uploaded_bytes += self.export_blob(store, &l.digest)?;
            }
            for doc in [&encoded.config, &encoded.manifest] {
                let dest = self.blob_path(&Digest::of(doc));
                if !dest.exists() {
                    self.write_atomic(&dest, |f| f.write_all(doc))?;
                    out.uploaded_bytes += doc.len() as u64;
                }
            }
            let tag = tag_of_key(key);
            index.insert(
                tag.clone(),
                serde_json::json!({
                    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                    "digest": Digest::of(&encoded.manifest).to_string(),
                    "size": encoded.manifest.len(),
                    "annotations": { ANNOTATION_REF_NAME: tag },
                }),
            );
            out.entries += 1;
        }
        others.extend(index.into_values());
        let doc = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": others,
        });
        let bytes = crate::json::to_vec(&doc).expect("an index serializes");
        self.write_atomic(&self.dir.join("index.json"), |f| f.write_all(&bytes))?;
        Ok(out)
    }
}

/// The image manifest annotation of `--cache-to type=inline`: JSON
/// `[{"key":"sha256:…","layers":N}]`, each a cache key whose result is the
/// image's first N layers (so only results of the image's own chain can be
/// inline, as in buildx). `--cache-from HOST/REPO:TAG` reads it.
pub const INLINE_ANNOTATION: &str = "dev.builder.cache.inline.v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct InlineEntry {
    key: Digest,
    layers: usize,
}

/// `manifest` with the inline cache annotation for `entries` (key, number of
/// leading image layers), canonical JSON; `None` if it is not a manifest
/// object.
pub fn inline_manifest(manifest: &[u8], entries: &[(Digest, usize)]) -> Option<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let list: Vec<InlineEntry> = entries
        .iter()
        .map(|&(key, layers)| InlineEntry { key, layers })
        .collect();
    let text = serde_json::to_string(&list).ok()?;
    let annotations = doc
        .as_object_mut()?
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}));
    annotations
        .as_object_mut()?
        .insert(INLINE_ANNOTATION.into(), text.into());
    crate::json::to_vec(&doc).ok()
}

/// The key a `RUN --mount=type=cache` directory is exported under
/// (`mounts=true`): derived from the directory's name in `ROOT/mounts/`,
/// apart from every build step key. Such an entry is replaced by each
/// export: the last build to export a mount wins.
pub fn mount_key(dir_name: &str) -> Digest {
    Digest::of(format!("builder-cache-mount-v1\0{dir_name}").as_bytes())
}

/// A cache mount directory as a one-layer record (the layer is a gzip tar
/// of the directory, stored in `store`).
pub fn mount_record(
    store: &Store,
    dir: &Path,
    name: &str,
) -> Result<CacheRecord, RemoteCacheError> {
    let opts = crate::layer::create::CreateOptions {
        compression: crate::compression::CompressionOptions::new(
            crate::compression::Compression::Gzip,
        ),
        source_date_epoch: None,
    };
    let layer = crate::layer::create::create_layer(store, dir, &opts).map_err(|e| {
        RemoteCacheError::Invalid {
            cache: format!("mount {}", dir.display()),
            what: format!("directory (cannot archive it: {e})"),
        }
    })?;
    Ok(CacheRecord::new(
        vec![RecordLayer {
            media_type: layer.media_type,
            digest: layer.digest,
            size: layer.size,
            diff_id: layer.diff_id,
        }],
        format!("cache mount {name}"),
    ))
}

/// Unpacks a mount record's layer into `dest` (which must exist).
pub fn unpack_mount(
    store: &Store,
    record: &CacheRecord,
    dest: &Path,
) -> Result<(), RemoteCacheError> {
    let invalid = |what: String| RemoteCacheError::Invalid {
        cache: format!("mount {}", dest.display()),
        what,
    };
    let [layer] = record.layers.as_slice() else {
        return Err(invalid("record (a mount has one layer)".into()));
    };
    let file = store
        .open_blob(&layer.digest)
        .map_err(|source| RemoteCacheError::Store {
            cache: format!("mount {}", dest.display()),
            source,
        })?;
    let opts = crate::layer::extract::UnpackOptions {
        whiteouts: crate::layer::extract::WhiteoutMode::Apply,
        ..Default::default()
    };
    crate::layer::extract::unpack_layer(io::BufReader::new(file), dest, &opts)
        .map_err(|e| invalid(format!("layer {} ({e})", layer.digest)))?;
    Ok(())
}

/// `12.3MB`, as buildx prints sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(store: &Store, contents: &[&[u8]]) -> CacheRecord {
        let layers = contents
            .iter()
            .map(|c| {
                let digest = store.put_blob(c).unwrap();
                RecordLayer {
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    digest,
                    size: c.len() as u64,
                    diff_id: Digest::of(&[c, &b"-diff"[..]].concat()),
                }
            })
            .collect();
        CacheRecord::new(layers, "[2/3] RUN make")
    }

    #[test]
    fn specs_parse_as_buildx_writes_them() {
        assert_eq!(
            CacheSpec::parse("type=registry,ref=127.0.0.1:5000/team/cache,mode=max", true).unwrap(),
            CacheSpec::Registry {
                reference: "127.0.0.1:5000/team/cache".into(),
                export: ExportOptions {
                    mode: CacheMode::Max,
                    mounts: false
                }
            }
        );
        assert_eq!(
            CacheSpec::parse("127.0.0.1:5000/c", false).unwrap(),
            CacheSpec::Registry {
                reference: "127.0.0.1:5000/c".into(),
                export: ExportOptions::default()
            }
        );
        assert_eq!(
            CacheSpec::parse("type=local,dest=/tmp/c", true).unwrap(),
            CacheSpec::Local {
                dir: "/tmp/c".into(),
                export: ExportOptions::default()
            }
        );
        assert_eq!(
            CacheSpec::parse("type=local,src=/tmp/c", false).unwrap(),
            CacheSpec::Local {
                dir: "/tmp/c".into(),
                export: ExportOptions::default()
            }
        );
        assert_eq!(
            CacheSpec::parse("type=inline", true).unwrap(),
            CacheSpec::Inline
        );
        assert_eq!(
            CacheSpec::parse(
                "type=registry,ref=cache.lan:5000/c,registry.insecure=true",
                true
            )
            .unwrap(),
            CacheSpec::Registry {
                reference: "http://cache.lan:5000/c".into(),
                export: ExportOptions::default()
            }
        );
        let cache = RegistryCache::new(
            "http://cache.lan:5000/team/c",
            RegistryOptions::default(),
            None,
        )
        .unwrap();
        assert_eq!(cache.name(), "cache.lan:5000/team/c");
        assert_eq!(cache.client.options().insecure, ["cache.lan:5000"]);
        assert!(
            CacheSpec::parse("type=local,dest=/c,mounts=true", true)
                .unwrap()
                .export_options()
                .mounts
        );
        for bad in [
            "type=local,src=/x",
            "type=registry",
            "type=s3,ref=x",
            "type=registry,ref=a/b,mode=all",
            "type=registry,ref=a/b,mounts=yes",
        ] {
            let err = CacheSpec::parse(bad, true).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn encoding_is_canonical_and_decodes_only_for_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rec = record(&store, &[b"base", b"step"]);
        let key = Digest::of(b"key");
        let a = encode(&key, &rec);
        let b = encode(&key, &rec);
        assert_eq!(a.manifest, b.manifest);
        let doc: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(doc["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(doc["mediaType"], MEDIA_TYPE_OCI_MANIFEST);
        assert_eq!(doc["layers"].as_array().unwrap().len(), 2);
        let back = decode(&key, &a.manifest, &a.config).unwrap();
        assert_eq!(back.layers, rec.layers);
        assert!(decode(&Digest::of(b"other"), &a.manifest, &a.config).is_none());
        assert!(tag_of_key(&key).len() <= 128);
    }

    #[test]
    fn local_layout_round_trip_between_two_stores() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path().join("a")).unwrap();
        let b = Store::open(dir.path().join("b")).unwrap();
        let cache = LocalCache::new(dir.path().join("cache"));
        let rec = record(&a, &[b"base layer", b"step layer"]);
        let key = Digest::of(b"k1");
        assert!(cache.lookup(&b, &key).unwrap().is_none());
        let out = cache.export(&a, &[(key, rec.clone())]).unwrap();
        assert_eq!(out.entries, 1);
        assert!(out.uploaded_bytes > 0);
        // Again: nothing new to write.
        assert_eq!(
            cache
                .export(&a, &[(key, rec.clone())])
                .unwrap()
                .uploaded_bytes,
            0
        );
        let hit = cache.lookup(&b, &key).unwrap().unwrap();
        assert_eq!(hit.record.layers, rec.layers);
        assert_eq!(
            hit.fetched_bytes,
            (b"base layer".len() + b"step layer".len()) as u64
        );
        for l in &rec.layers {
            assert!(b.has_blob(&l.digest));
        }
        // The second lookup fetches nothing.
        assert_eq!(cache.lookup(&b, &key).unwrap().unwrap().fetched_bytes, 0);
        assert!(cache.lookup(&b, &Digest::of(b"k2")).unwrap().is_none());
        // A tampered layer is refused, not stored.
        let c = Store::open(dir.path().join("c")).unwrap();
        let p = cache.blob_path(&rec.layers[1].digest);
        let mut perms = fs::metadata(&p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&p, perms).unwrap();
        fs::write(&p, b"evil layer").unwrap();
        assert!(cache.lookup(&c, &key).is_err());
        assert!(!c.has_blob(&rec.layers[1].digest));
    }

    #[test]
    fn sizes_print_as_buildx() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(12_300_000), "12.3MB");
    }
}
