//! Import of OCI layout tarballs and docker archives into the store, verifying every blob.
//!
//! The archive is read once, as a stream (it may be stdin). Files under
//! `blobs/sha256/` go straight into the store through a [`BlobWriter`] whose
//! commit checks the name's digest. Other files are those of a docker archive
//! (`<id>/layer.tar`, `<hex>.json`, `manifest.json`, the latter usually last):
//! small ones are kept in memory, large ones are written to uncommitted blob
//! writers while their digest and diffID are computed, and committed only once
//! `manifest.json` and the image config show that they are layers and that
//! they match the config's diffIDs. Names are added to `index.json` last, after
//! every blob of the image is in, so a killed load leaves no tag pointing at a
//! missing blob.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};

use oci_spec::image::{Descriptor, ImageIndex};
use serde::Deserialize;

use super::{ArchiveError, blob_path_digest};
use crate::compression::{self, Compression};
use crate::digest::{Digest, Hasher};
use crate::images::{
    self, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, BlobRef, ConfigSummary, ImageName,
    ImageStore, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::store::{BlobWriter, Store, StoreError};

/// Non-blob files up to this size are kept in memory (configs, metadata,
/// tiny layers); larger ones are streamed into uncommitted blobs.
const IN_MEMORY: u64 = 1 << 20;
/// JSON documents are always read into memory, up to this size.
const MAX_DOCUMENT: u64 = 64 << 20;
/// Symlink chains longer than this are treated as broken.
const MAX_LINK_HOPS: usize = 16;
/// Nested image indexes deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;
/// Marks the attestation manifests BuildKit puts in indexes; never an image to run.
const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// Which image of a multi-platform index to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub os: String,
    pub architecture: String,
}

impl Default for ImportOptions {
    /// The platform of this machine, in Go's names (`linux/amd64`).
    fn default() -> Self {
        let here = crate::registry::Platform::default();
        ImportOptions {
            os: here.os,
            architecture: here.architecture,
        }
    }
}

/// An image that was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Its names; empty when the archive gave none.
    pub names: Vec<ImageName>,
    pub manifest_digest: Digest,
    /// The image id (config digest).
    pub id: Digest,
}

/// Computes a layer's diffID while it is being written: the digest of the
/// decompressed stream, or of the stream itself when it is plain tar.
enum DiffHasher {
    Undecided(Vec<u8>),
    Plain,
    Gzip(Box<flate2::write::MultiGzDecoder<Hasher>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Hasher>>),
    Failed(String),
}

impl DiffHasher {
    fn feed(&mut self, buf: &[u8]) {
        let result = match self {
            DiffHasher::Undecided(head) => {
                head.extend_from_slice(buf);
                if head.len() >= 4 {
                    self.decide();
                }
                return;
            }
            DiffHasher::Plain | DiffHasher::Failed(_) => return,
            DiffHasher::Gzip(d) => d.write_all(buf),
            DiffHasher::Zstd(d) => d.write_all(buf),
        };
        if let Err(e) = result {
            *self = DiffHasher::Failed(e.to_string());
        }
    }

    fn decide(&mut self) {
        let DiffHasher::Undecided(head) = self else {
            return;
        };
        let head = std::mem::take(head);
        *self = match compression::detect(&head) {
            Compression::None => DiffHasher::Plain,
            Compression::Gzip => {
                DiffHasher::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Hasher::new())))
            }
            Compression::Zstd => match zstd::stream::write::Decoder::new(Hasher::new()) {
                Ok(d) => DiffHasher::Zstd(Box::new(d)),
                Err(e) => DiffHasher::Failed(e.to_string()),
            },
        };
        self.feed(&head);
    }

    fn finish(mut self, raw: Digest) -> (Compression, Result<Digest, String>) {
        self.decide();
        match self {
            DiffHasher::Undecided(_) => unreachable!("decided above"),
            DiffHasher::Plain => (Compression::None, Ok(raw)),
            DiffHasher::Gzip(d) => (
                Compression::Gzip,
                d.finish().map(Hasher::finish).map_err(|e| e.to_string()),
            ),
            DiffHasher::Zstd(mut d) => {
                let r = d
                    .flush()
                    .map(|()| d.into_inner().finish())
                    .map_err(|e| e.to_string());
                (Compression::Zstd, r)
            }
            DiffHasher::Failed(e) => (Compression::None, Err(e)),
        }
    }
}

/// A large non-blob file, written but not yet committed to the store.
struct Pending {
    writer: BlobWriter,
    digest: Digest,
    size: u64,
    compression: Compression,
    diff_id: Result<Digest, String>,
}

/// Where a file of the archive ended up.
enum ArchiveFile {
    Memory(Vec<u8>),
    /// Committed under its verified digest.
    Blob {
        digest: Digest,
        size: u64,
    },
    Pending(Box<Pending>),
}

/// The non-blob files of the archive and its links, by normalised path.
struct Files {
    files: HashMap<String, ArchiveFile>,
    links: HashMap<String, String>,
}

/// Strips `./`, empty components and trailing slashes; resolves `..`
/// (never above the archive root).
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

impl Files {
    /// Follows links to the path of an actual file.
    fn resolve(&self, path: &str) -> Option<String> {
        let mut path = normalize(path)?;
        for _ in 0..MAX_LINK_HOPS {
            if self.files.contains_key(&path) {
                return Some(path);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }

    fn get(&self, path: &str, referrer: &str) -> Result<(String, &ArchiveFile), ArchiveError> {
        let missing = || ArchiveError::MissingFile {
            path: path.to_string(),
            referrer: referrer.to_string(),
        };
        let resolved = self.resolve(path).ok_or_else(missing)?;
        let file = self.files.get(&resolved).ok_or_else(missing)?;
        Ok((resolved, file))
    }

    /// The bytes of a (small) file.
    fn bytes(&self, store: &Store, path: &str, referrer: &str) -> Result<Vec<u8>, ArchiveError> {
        match self.get(path, referrer)? {
            (_, ArchiveFile::Memory(b)) => Ok(b.clone()),
            (_, ArchiveFile::Blob { digest, .. }) => Ok(store.read_blob(digest)?),
            (p, ArchiveFile::Pending(pending)) => Err(ArchiveError::TooLarge {
                path: p,
                size: pending.size,
            }),
        }
    }
}

/// Imports every image of an OCI layout tarball or a docker archive (plain,
/// or compressed with gzip or zstd as a whole) and names them as the archive
/// says. Nothing is named before all of an image's blobs are stored.
pub fn import_archive<R: Read + Send>(
    images: &ImageStore,
    reader: R,
    opts: &ImportOptions,
) -> Result<Vec<LoadedImage>, ArchiveError> {
    let store = images.store();
    let input = compression::decompressor(BufReader::with_capacity(256 * 1024, reader))?;
    let files = read_entries(store, input)?;
    let docker = files.resolve("manifest.json").is_some();
    if files.resolve("index.json").is_some() {
        let loaded = import_oci(images, &files, opts)?;
        // Some docker versions write an empty OCI index beside manifest.json.
        if loaded.is_empty() && docker {
            import_docker(images, files)
        } else {
            Ok(loaded)
        }
    } else if docker {
        import_docker(images, files)
    } else {
        Err(ArchiveError::NotAnArchive)
    }
}

fn read_entries(store: &Store, input: impl Read) -> Result<Files, ArchiveError> {
    let mut archive = tar::Archive::new(input);
    let mut files = Files {
        files: HashMap::new(),
        links: HashMap::new(),
    };
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = normalize(&raw_path) else {
            continue;
        };
        let entry_err = |source| ArchiveError::Entry {
            path: path.clone(),
            source,
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name_bytes() {
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let base = path.rsplit_once('/').map_or("", |(dir, _)| dir);
                    let joined = if target.starts_with('/') {
                        target
                    } else {
                        format!("{base}/{target}")
                    };
                    if let Some(t) = normalize(&joined) {
                        files.links.insert(path, t);
                    }
                }
                continue;
            }
            tar::EntryType::Link => {
                if let Some(t) = entry
                    .link_name_bytes()
                    .and_then(|t| normalize(&String::from_utf8_lossy(&t)))
                {
                    files.links.insert(path, t);
                }
                continue;
            }
            _ => continue,
        }
        let size = entry.size();
        if let Some(expected) = blob_path_digest(&path) {
            let mut writer = store.blob_writer()?;
            let got = io::copy(&mut entry, &mut writer).map_err(entry_err)?;
            if got != size {
                return Err(ArchiveError::Truncated {
                    path,
                    got,
                    expected: size,
                });
            }
            let (digest, size) = writer.commit(Some(&expected)).map_err(|e| match e {
                StoreError::DigestMismatch { expected, actual } => ArchiveError::BlobMismatch {
                    path: path.clone(),
                    expected,
                    actual,
                },
                e => e.into(),
            })?;
            files.files.insert(path, ArchiveFile::Blob { digest, size });
        } else if size <= IN_MEMORY
            || (path.ends_with(".json") || !path.contains('/')) && size <= MAX_DOCUMENT
        {
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).map_err(entry_err)?;
            if data.len() as u64 != size {
                return Err(ArchiveError::Truncated {
                    path,
                    got: data.len() as u64,
                    expected: size,
                });
            }
            files.files.insert(path, ArchiveFile::Memory(data));
        } else {
            let mut writer = store.blob_writer()?;
            let mut raw = Hasher::new();
            let mut diff = DiffHasher::Undecided(Vec::new());
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match entry.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(entry_err(e)),
                };
                writer.write_all(&buf[..n]).map_err(entry_err)?;
                raw.update(&buf[..n]);
                diff.feed(&buf[..n]);
            }
            if raw.len() != size {
                return Err(ArchiveError::Truncated {
                    path,
                    got: raw.len(),
                    expected: size,
                });
            }
            let digest = raw.finish();
            let (compression, diff_id) = diff.finish(digest);
            let pending = Pending {
                writer,
                digest,
                size,
                compression,
                diff_id,
            };
            files
                .files
                .insert(path, ArchiveFile::Pending(Box::new(pending)));
        }
    }
    Ok(files)
}

/// The names an OCI index entry gives its image: containerd's full name, or
/// `ref.name` when it is a full reference. A bare tag (`1.0`, as skopeo
/// writes for `oci-archive:F:1.0`) names no repository, so the image stays
/// unnamed, as containerd does without `--base-name`.
fn names_of(desc: &Descriptor) -> Vec<ImageName> {
    let Some(annotations) = desc.annotations() else {
        return Vec::new();
    };
    if let Some(name) = annotations
        .get(ANNOTATION_IMAGE_NAME)
        .and_then(|n| n.parse().ok())
    {
        return vec![name];
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        Some(r) if r.contains(':') || r.contains('/') => r.parse().ok().into_iter().collect(),
        _ => Vec::new(),
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_OCI_MANIFEST || media_type == MEDIA_TYPE_DOCKER_MANIFEST
}

/// The image manifest a descriptor leads to: itself, or the entry for the
/// wanted platform of a (nested) index.
fn pick_manifest(
    store: &Store,
    desc: &Descriptor,
    opts: &ImportOptions,
    depth: usize,
) -> Result<Digest, ArchiveError> {
    let digest = images::blob_ref(desc)
        .map_err(ArchiveError::Descriptor)?
        .digest;
    let media_type = desc.media_type().to_string();
    if is_manifest(&media_type) {
        return Ok(digest);
    }
    if !is_index(&media_type) || depth >= MAX_INDEX_DEPTH {
        return Err(ArchiveError::UnsupportedMediaType { digest, media_type });
    }
    let bytes = store.read_blob(&digest)?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(|source| ArchiveError::InvalidDocument {
            path: super::blob_path(&digest),
            source,
        })?;
    let candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            !d.annotations()
                .as_ref()
                .is_some_and(|a| a.contains_key(ANNOTATION_REFERENCE_TYPE))
        })
        .collect();
    let wanted = candidates.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == opts.os && p.architecture().to_string() == opts.architecture
        })
    });
    let chosen = match (wanted, candidates.as_slice()) {
        (Some(d), _) => *d,
        (None, [only]) if only.platform().is_none() => *only,
        _ => {
            return Err(ArchiveError::NoPlatform {
                digest,
                platform: format!("{}/{}", opts.os, opts.architecture),
            });
        }
    };
    pick_manifest(store, chosen, opts, depth + 1)
}

fn import_oci(
    images: &ImageStore,
    files: &Files,
    opts: &ImportOptions,
) -> Result<Vec<LoadedImage>, ArchiveError> {
    let store = images.store();
    let index_bytes = files.bytes(store, "index.json", "the archive")?;
    let index: ImageIndex =
        serde_json::from_slice(&index_bytes).map_err(|source| ArchiveError::InvalidDocument {
            path: "index.json".into(),
            source,
        })?;
    let mut loaded: Vec<LoadedImage> = Vec::new();
    for desc in index.manifests() {
        if desc
            .annotations()
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_REFERENCE_TYPE))
        {
            continue;
        }
        let manifest_digest = pick_manifest(store, desc, opts, 0)?;
        let names = names_of(desc);
        match loaded
            .iter_mut()
            .find(|l| l.manifest_digest == manifest_digest)
        {
            Some(l) => {
                for n in names {
                    if !l.names.contains(&n) {
                        l.names.push(n);
                    }
                }
            }
            None => {
                let what = names
                    .first()
                    .map_or_else(|| manifest_digest.to_string(), |n| n.familiar());
                let parsed = images.check_complete(&manifest_digest, &what)?;
                loaded.push(LoadedImage {
                    names,
                    manifest_digest,
                    id: parsed.config.digest,
                });
            }
        }
    }
    for image in &loaded {
        images.add(&image.manifest_digest, &image.names)?;
    }
    Ok(loaded)
}

/// One entry of a docker archive's `manifest.json`.
#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The digest a docker archive's file name promises: `<hex>.json`,
/// `<hex>.tar`, `blobs/sha256/<hex>`.
fn digest_in_name(path: &str) -> Option<Digest> {
    if let Some(d) = blob_path_digest(path) {
        return Some(d);
    }
    let base = path.rsplit('/').next()?;
    let hex = base
        .strip_suffix(".json")
        .or_else(|| base.strip_suffix(".tar"))?;
    format!("sha256:{hex}").parse().ok()
}

fn import_docker(images: &ImageStore, mut files: Files) -> Result<Vec<LoadedImage>, ArchiveError> {
    let store = images.store().clone();
    let manifest_bytes = files.bytes(&store, "manifest.json", "the archive")?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&manifest_bytes).map_err(|source| {
            ArchiveError::InvalidDocument {
                path: "manifest.json".into(),
                source,
            }
        })?;
    let mut staged = Vec::new();
    for entry in &entries {
        let config = files.bytes(&store, &entry.config, "manifest.json")?;
        let config_digest = Digest::of(&config);
        if let Some(expected) = digest_in_name(&entry.config) {
            if expected != config_digest {
                return Err(ArchiveError::BlobMismatch {
                    path: entry.config.clone(),
                    expected,
                    actual: config_digest,
                });
            }
        }
        let summary =
            ConfigSummary::parse(&config).map_err(|source| ArchiveError::InvalidDocument {
                path: entry.config.clone(),
                source,
            })?;
        let diff_ids = summary
            .diff_ids()
            .map_err(|e| ArchiveError::InvalidDocument {
                path: entry.config.clone(),
                source: serde_json::Error::io(io::Error::other(e.to_string())),
            })?;
        if diff_ids.len() != entry.layers.len() {
            return Err(ArchiveError::LayerCount {
                config: entry.config.clone(),
                diff_ids: diff_ids.len(),
                layers: entry.layers.len(),
            });
        }
        let mut layers = Vec::with_capacity(entry.layers.len());
        for (path, diff_id) in entry.layers.iter().zip(&diff_ids) {
            layers.push(store_layer(&store, &mut files, path, diff_id)?);
        }
        store.put_blob(&config)?;
        let config_ref = BlobRef {
            media_type: MEDIA_TYPE_OCI_CONFIG.into(),
            digest: config_digest,
            size: config.len() as u64,
        };
        let manifest = images::oci_manifest(&config_ref, &layers)?;
        let names = entry
            .repo_tags
            .iter()
            .flatten()
            .map(|t| images::parse_name(t))
            .collect::<Result<Vec<_>, _>>()?;
        staged.push((manifest, names, config_digest));
    }
    let mut loaded = Vec::new();
    for (manifest, names, id) in staged {
        let manifest_digest = store.put_blob(&manifest)?;
        images.add(&manifest_digest, &names)?;
        loaded.push(LoadedImage {
            names,
            manifest_digest,
            id,
        });
    }
    Ok(loaded)
}

/// Checks a docker archive layer against its diffID and stores it as it is
/// (usually plain tar, so its digest is its diffID).
fn store_layer(
    store: &Store,
    files: &mut Files,
    path: &str,
    diff_id: &Digest,
) -> Result<BlobRef, ArchiveError> {
    let (resolved, _) = files.get(path, "manifest.json")?;
    let mismatch = |actual: Digest| ArchiveError::DiffIdMismatch {
        path: path.to_string(),
        expected: *diff_id,
        actual,
    };
    let corrupt = |reason: String| ArchiveError::CorruptLayer {
        path: path.to_string(),
        reason,
    };
    let (digest, size, compression) = match files.files.get(&resolved) {
        Some(ArchiveFile::Memory(data)) => {
            let (compression, actual) =
                diff_id_of(&data[..]).map_err(|e| corrupt(e.to_string()))?;
            if actual != *diff_id {
                return Err(mismatch(actual));
            }
            (store.put_blob(data)?, data.len() as u64, compression)
        }
        Some(ArchiveFile::Blob { digest, size }) => {
            let (compression, actual) =
                diff_id_of(store.open_blob(digest)?).map_err(|e| corrupt(e.to_string()))?;
            if actual != *diff_id {
                return Err(mismatch(actual));
            }
            (*digest, *size, compression)
        }
        Some(ArchiveFile::Pending(p)) => {
            let actual = p.diff_id.clone().map_err(corrupt)?;
            if actual != *diff_id {
                return Err(mismatch(actual));
            }
            let compression = p.compression;
            let Some(ArchiveFile::Pending(p)) = files.files.remove(&resolved) else {
                unreachable!("matched above")
            };
            let (digest, size) = p.writer.commit(Some(&p.digest))?;
            // A layer listed twice (docker archives link duplicates) is
            // committed once.
            files
                .files
                .insert(resolved, ArchiveFile::Blob { digest, size });
            (digest, size, compression)
        }
        None => unreachable!("resolve only returns existing files"),
    };
    Ok(BlobRef {
        media_type: compression.media_type().to_string(),
        digest,
        size,
    })
}

/// The compression and diffID of a layer stream.
fn diff_id_of<R: Read + Send>(r: R) -> io::Result<(Compression, Digest)> {
    let (compression, sniffed) = compression::sniff(r).map_err(io::Error::other)?;
    let mut reader = compression::decompressor(sniffed).map_err(io::Error::other)?;
    let mut hasher = Hasher::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok((compression, hasher.finish()))
}

/// Imports the images of an OCI image layout directory (`index.json` and
/// `blobs/`, as `oci-layout://PATH` names it), as [`import_archive`] does
/// for the same files in a tar.
pub fn import_oci_layout(
    images: &ImageStore,
    dir: &std::path::Path,
    opts: &ImportOptions,
) -> Result<Vec<LoadedImage>, ArchiveError> {
    if !dir.join("index.json").is_file() {
        return Err(ArchiveError::Read(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} has no index.json: not an OCI image layout",
                dir.display()
            ),
        )));
    }
    // The tar is streamed through a bounded channel (no temporary copy).
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let writer = ChunkWriter {
        sender,
        buf: Vec::new(),
    };
    let reader = ChunkReader {
        receiver,
        chunk: Vec::new(),
        at: 0,
    };
    std::thread::scope(|s| {
        let tarring = s.spawn(move || -> io::Result<()> {
            let mut builder = tar::Builder::new(writer);
            builder.follow_symlinks(false);
            builder.append_dir_all(".", dir)?;
            builder.into_inner()?.flush()
        });
        let imported = import_archive(images, reader, opts);
        match tarring.join() {
            Ok(Ok(())) => imported,
            // The import stopped reading (done, or failed on its own).
            Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => imported,
            Ok(Err(e)) => Err(ArchiveError::Entry {
                path: dir.display().to_string(),
                source: e,
            }),
            Err(_) => Err(ArchiveError::Read(io::Error::other(
                "reading the OCI layout panicked",
            ))),
        }
    })
}

/// The writing end of [`import_oci_layout`]'s stream: 256 KiB chunks.
struct ChunkWriter {
    sender: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    const CHUNK: usize = 256 * 1024;

    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::take(&mut self.buf);
        self.sender
            .send(chunk)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// The reading end of [`import_oci_layout`]'s stream; ends when the writer
/// is dropped.
struct ChunkReader {
    receiver: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.receiver.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
