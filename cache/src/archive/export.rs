//! Exporters for `save` and build's `-o`: OCI layout tar, docker-loadable tar, local dir, plain tar.
//!
//! `type=docker` writes one tarball that is both an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) and a docker archive
//! (`manifest.json` pointing into the same blobs), as BuildKit's docker
//! exporter does, so `docker load`, `podman load`, `skopeo … oci-archive:` and
//! `skopeo … docker-archive:` all read it. `type=oci` is the same without
//! `manifest.json`. Each blob is written once, streamed from the store and
//! hashed on the way so that a corrupt store never produces a tarball that
//! claims a digest it does not have (the export fails instead; a stream
//! such as stdout, which cannot be taken back, is left as a truncated tar,
//! since a blob's last bytes go out only once its digest matched). Files are
//! written through [`AtomicFile`]: a killed or failed export leaves nothing at
//! the destination. They are not fsynced, as `docker save`'s are not: see
//! [`AtomicFile`] for what an OS crash right after an export may leave.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;

use serde::Serialize;

use super::{ArchiveError, AtomicFile, blob_path};
use crate::compression::{self, Compression, CompressionOptions};
use crate::digest::{Digest, Hasher};
use crate::images::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, BlobRef, Image, ImageName, ImageStore,
    MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::json;
use crate::layer::flatten::flatten_layers;
use crate::snapshot::LayerRef;
use crate::store::{Store, StoreError};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An image to export and the names to give it in the output.
#[derive(Debug, Clone)]
pub struct ExportImage {
    pub image: Image,
    /// Names to record (`RepoTags`, index annotations); may be empty.
    pub names: Vec<ImageName>,
}

impl ExportImage {
    /// Looks `reference` up like `docker save` does: a name exports under
    /// that name, an id or digest exports unnamed.
    pub fn lookup(images: &ImageStore, reference: &str) -> Result<ExportImage, ArchiveError> {
        let image = images.resolve(reference)?;
        let names = match reference.parse::<ImageName>() {
            Ok(name) if image.names.contains(&name) => vec![name],
            _ => Vec::new(),
        };
        Ok(ExportImage { image, names })
    }
}

/// Layer compression for the export, as buildx's `compression=`,
/// `compression-level=` and `force-compression=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// `None` keeps every layer as stored.
    pub compression: Option<CompressionOptions>,
    /// Recompress layers even when they already use the wanted compression
    /// (to apply another level).
    pub force_compression: bool,
}

/// Where an export goes.
pub enum Destination {
    /// A file (tar exporters) or a directory (`local`).
    Path(PathBuf),
    /// A stream, e.g. stdout; tar exporters only.
    Writer(Box<dyn Write + Send>),
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Path(p) => write!(f, "Path({})", p.display()),
            Destination::Writer(_) => f.write_str("Writer"),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// The manifest digests written, in order (new ones where layers were
    /// recompressed).
    pub manifests: Vec<Digest>,
    /// Bytes written to the destination (tar exporters).
    pub bytes: u64,
}

/// One output type of `save` / `build -o`.
pub trait Exporter {
    /// The `type=` name.
    fn kind(&self) -> ExportKind;

    fn export(
        &self,
        images: &ImageStore,
        items: &[ExportImage],
        dest: Destination,
    ) -> Result<ExportReport, ArchiveError>;
}

/// The `type=` of `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Oci,
    Docker,
    Local,
    Tar,
}

impl ExportKind {
    pub fn name(self) -> &'static str {
        match self {
            ExportKind::Oci => "oci",
            ExportKind::Docker => "docker",
            ExportKind::Local => "local",
            ExportKind::Tar => "tar",
        }
    }

    /// The exporter for this type.
    pub fn exporter(self, opts: ExportOptions) -> Box<dyn Exporter> {
        match self {
            ExportKind::Oci => Box::new(OciExporter { opts }),
            ExportKind::Docker => Box::new(DockerExporter { opts }),
            ExportKind::Local => Box::new(LocalExporter),
            ExportKind::Tar => Box::new(TarExporter),
        }
    }
}

impl fmt::Display for ExportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExportKind {
    type Err = ArchiveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oci" => Ok(ExportKind::Oci),
            "docker" => Ok(ExportKind::Docker),
            "local" => Ok(ExportKind::Local),
            "tar" => Ok(ExportKind::Tar),
            _ => Err(ArchiveError::InvalidOption(format!("type={s}"))),
        }
    }
}

/// A parsed `-o type=…,dest=…,compression=…` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    pub kind: ExportKind,
    /// `dest=`; `None` or `-` means stdout for tar types.
    pub dest: Option<PathBuf>,
    /// `name=` (comma-separated names are split by the caller as buildx does).
    pub names: Vec<String>,
    pub options: ExportOptions,
}

impl FromStr for ExportSpec {
    type Err = ArchiveError;

    /// Parses buildx's syntax; a bare path is `type=local,dest=PATH`, as in buildx.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains('=') {
            return Ok(ExportSpec {
                kind: if s == "-" {
                    ExportKind::Tar
                } else {
                    ExportKind::Local
                },
                dest: Some(PathBuf::from(s)),
                names: Vec::new(),
                options: ExportOptions::default(),
            });
        }
        let mut kind = None;
        let mut dest = None;
        let mut names = Vec::new();
        let mut compression: Option<Compression> = None;
        let mut level = None;
        let mut force = false;
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ArchiveError::InvalidOption(part.to_string()))?;
            let bad = || ArchiveError::InvalidOption(part.to_string());
            match key.trim() {
                "type" => kind = Some(value.parse()?),
                "dest" => dest = Some(PathBuf::from(value)),
                "name" => names.push(value.to_string()),
                "compression" => compression = Some(value.parse()?),
                "compression-level" => level = Some(value.parse::<i32>().map_err(|_| bad())?),
                "force-compression" => force = value.parse::<bool>().map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        let kind =
            kind.ok_or_else(|| ArchiveError::InvalidOption(format!("{s} (type= is required)")))?;
        let compression = match (compression, level) {
            (Some(kind), level) => Some(CompressionOptions { kind, level }),
            // A level alone applies to the default compression, as in buildx.
            (None, Some(level)) => Some(CompressionOptions {
                kind: Compression::Gzip,
                level: Some(level),
            }),
            (None, None) => None,
        };
        Ok(ExportSpec {
            kind,
            dest,
            names,
            options: ExportOptions {
                compression,
                force_compression: force,
            },
        })
    }
}

/// An image as it will be written: its manifest after any recompression.
struct Prepared {
    manifest: BlobRef,
    config: BlobRef,
    layers: Vec<BlobRef>,
    names: Vec<ImageName>,
}

/// Recompresses layers as `opts` asks, writing new layer blobs and a new
/// manifest into the store; the config (and so the diffIDs) stays the same.
fn prepare(
    store: &Store,
    item: &ExportImage,
    opts: &ExportOptions,
) -> Result<Prepared, ArchiveError> {
    let image = &item.image;
    let unchanged = || Prepared {
        manifest: image.manifest_ref(),
        config: image.parsed.config.clone(),
        layers: image.parsed.layers.clone(),
        names: item.names.clone(),
    };
    let Some(target) = opts.compression else {
        return Ok(unchanged());
    };
    let mut layers = Vec::with_capacity(image.layers().len());
    let mut changed = false;
    for layer in image.layers() {
        match Compression::from_media_type(&layer.media_type) {
            Some(current)
                if current != target.kind
                    || (opts.force_compression && target.kind != Compression::None) =>
            {
                layers.push(Some(recompress(store, layer, &target)?));
                changed = true;
            }
            // Layers of unknown types (foreign, non-distributable) are kept.
            _ => layers.push(None),
        }
    }
    if !changed {
        return Ok(unchanged());
    }
    let mut doc: serde_json::Value = serde_json::from_slice(&image.manifest).map_err(|source| {
        ArchiveError::InvalidDocument {
            path: blob_path(&image.manifest_digest),
            source,
        }
    })?;
    // Docker v2 manifests cannot describe zstd layers and mixing media type
    // families is invalid, so a converted manifest is always OCI.
    doc["mediaType"] = MEDIA_TYPE_OCI_MANIFEST.into();
    if doc["config"]["mediaType"] == MEDIA_TYPE_DOCKER_CONFIG {
        doc["config"]["mediaType"] = MEDIA_TYPE_OCI_CONFIG.into();
    }
    let mut new_layers = Vec::with_capacity(layers.len());
    for (i, (converted, old)) in layers.into_iter().zip(image.layers()).enumerate() {
        let slot = &mut doc["layers"][i];
        let layer = match converted {
            Some(new) => {
                // Annotations describe the old blob (e.g. eStargz TOC digests).
                *slot =
                    serde_json::to_value(&new).map_err(|source| ArchiveError::InvalidDocument {
                        path: blob_path(&image.manifest_digest),
                        source,
                    })?;
                new
            }
            None => {
                let docker = Compression::from_media_type(&old.media_type).map(|c| c.media_type());
                if let Some(oci) = docker.filter(|m| *m != old.media_type) {
                    slot["mediaType"] = oci.into();
                    BlobRef {
                        media_type: oci.to_string(),
                        ..old.clone()
                    }
                } else {
                    old.clone()
                }
            }
        };
        new_layers.push(layer);
    }
    let manifest = json::to_vec(&doc)?;
    let digest = store.put_blob(&manifest)?;
    let mut config = image.parsed.config.clone();
    config.media_type = doc["config"]["mediaType"]
        .as_str()
        .unwrap_or(MEDIA_TYPE_OCI_CONFIG)
        .to_string();
    Ok(Prepared {
        manifest: BlobRef {
            media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
            digest,
            size: manifest.len() as u64,
        },
        config,
        layers: new_layers,
        names: item.names.clone(),
    })
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Decompresses a stored layer and compresses it again as `target` into a
/// new blob; checks the source's digest on the way. A blob made so before
/// (see [`super::conversions`]) is used again instead.
pub fn recompress(
    store: &Store,
    layer: &BlobRef,
    target: &CompressionOptions,
) -> Result<BlobRef, ArchiveError> {
    if let Some(made) = super::conversions::lookup(store, &layer.digest, target) {
        // Used now: as young as a blob just made, for prune.
        if let Ok(f) = std::fs::File::open(store.blob_path(&made.digest)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        return Ok(made);
    }
    let file = store.open_blob(&layer.digest)?;
    let mut source = HashingReader {
        inner: BufReader::with_capacity(256 * 1024, file),
        hasher: Hasher::new(),
    };
    let writer = store.blob_writer()?;
    let mut out = compression::compressor(writer, target)?;
    {
        let mut plain = compression::decompressor(&mut source)?;
        io::copy(&mut plain, &mut out).map_err(|e| ArchiveError::CorruptLayer {
            path: blob_path(&layer.digest),
            reason: e.to_string(),
        })?;
    }
    // Drain what the decompressor did not need (padding) so the whole blob is hashed.
    io::copy(&mut source, &mut io::sink()).map_err(ArchiveError::Stream)?;
    let actual = source.hasher.finish();
    if actual != layer.digest {
        return Err(ArchiveError::CorruptBlob {
            digest: layer.digest,
            actual,
        });
    }
    let writer = out.finish().map_err(ArchiveError::Stream)?;
    let (digest, size) = writer.commit(None)?;
    let made = BlobRef {
        media_type: target.kind.media_type().to_string(),
        digest,
        size,
    };
    super::conversions::record(store, &layer.digest, target, &made);
    Ok(made)
}

/// A tar header for a regular file or directory, with fixed owner and time
/// so that the same images always give the same bytes.
fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, data.len() as u64);
    tar.append_data(&mut h, path, data)
}

/// `docker save`'s `manifest.json` entry.
#[derive(Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The index entries for one image: one per name (containerd's full name and
/// the OCI `ref.name` tag, as containerd's and BuildKit's exporters write),
/// or one without names.
fn index_entries(p: &Prepared) -> Vec<serde_json::Value> {
    let base = serde_json::json!({
        "mediaType": p.manifest.media_type,
        "digest": p.manifest.digest,
        "size": p.manifest.size,
    });
    if p.names.is_empty() {
        return vec![base];
    }
    p.names
        .iter()
        .map(|n| {
            let mut e = base.clone();
            e["annotations"] = serde_json::json!({
                ANNOTATION_IMAGE_NAME: n.full(),
                ANNOTATION_REF_NAME: n.tag(),
            });
            e
        })
        .collect()
}

/// Writes the OCI layout (and, with `docker`, `manifest.json`) as a tar stream.
fn write_layout<W: Write>(
    store: &Store,
    prepared: &[Prepared],
    docker: bool,
    out: W,
) -> Result<W, ArchiveError> {
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    for p in prepared {
        for b in std::iter::once(&p.manifest)
            .chain(std::iter::once(&p.config))
            .chain(&p.layers)
        {
            blobs.insert(b.digest, b.size);
        }
    }
    let mut tar = tar::Builder::new(out);
    let s = ArchiveError::Stream;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0);
        tar.append_data(&mut h, dir, io::empty()).map_err(s)?;
    }
    for (digest, size) in &blobs {
        let stored = store.blob_size(digest)?;
        if stored != *size {
            return Err(ArchiveError::CorruptBlob {
                digest: *digest,
                actual: *digest,
            });
        }
        // The entry is written by hand rather than by `append_data` (same
        // bytes) so that the body goes from the reading thread's buffers
        // straight to the output, without another copy.
        let mut h = header(tar::EntryType::Regular, *size);
        h.set_path(blob_path(digest)).map_err(s)?;
        h.set_cksum();
        let out = tar.get_mut();
        out.write_all(h.as_bytes()).map_err(s)?;
        copy_blob(store, digest, *size, out)?;
        let pad = (512 - *size % 512) % 512;
        out.write_all(&[0; 512][..pad as usize]).map_err(s)?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": prepared.iter().flat_map(index_entries).collect::<Vec<_>>(),
    });
    append_bytes(&mut tar, "index.json", &json::to_vec(&index)?).map_err(s)?;
    if docker {
        let entries: Vec<DockerManifestEntry> = prepared
            .iter()
            .map(|p| DockerManifestEntry {
                config: blob_path(&p.config.digest),
                repo_tags: (!p.names.is_empty())
                    .then(|| p.names.iter().map(ImageName::familiar).collect()),
                layers: p.layers.iter().map(|l| blob_path(&l.digest)).collect(),
            })
            .collect();
        append_bytes(&mut tar, "manifest.json", &json::to_vec(&entries)?).map_err(s)?;
    }
    append_bytes(&mut tar, "oci-layout", OCI_LAYOUT).map_err(s)?;
    tar.into_inner().map_err(s)
}

/// Blobs this large or larger are read and hashed on a second thread while
/// this one writes them out: SHA-256 is the largest cost of an export, and
/// this way it overlaps the copy into the destination.
const PIPELINE_MIN: u64 = 4 << 20;

/// The size of the buffers passed from the reading thread to the writing one.
const CHUNK: usize = 1 << 20;

/// Buffers read ahead of the writer.
const CHUNKS_AHEAD: usize = 4;

/// Writes the `size` bytes of blob `digest` from the store to `out` (the
/// body of its tar entry) and fails if they do not hash to `digest` or are
/// fewer than `size`. The bytes checked are the bytes written: the reading
/// thread hashes each buffer before it hands it over.
fn copy_blob(
    store: &Store,
    digest: &Digest,
    size: u64,
    out: &mut impl Write,
) -> Result<(), ArchiveError> {
    let path = store.blob_path(digest);
    let rerr = |source| {
        ArchiveError::Store(StoreError::Io {
            path: path.clone(),
            source,
        })
    };
    let mut file = store.open_blob(digest)?.take(size);
    let (got, actual) = if size < PIPELINE_MIN {
        let mut data = Vec::with_capacity(size as usize);
        file.read_to_end(&mut data).map_err(rerr)?;
        let checked = (data.len() as u64, Digest::of(&data));
        // Checked before a byte goes out: a stream destination (stdout)
        // cannot take back what it was given.
        if checked == (size, *digest) {
            out.write_all(&data).map_err(ArchiveError::Stream)?;
        }
        checked
    } else {
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(CHUNKS_AHEAD);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || -> io::Result<(u64, Digest)> {
                let mut hasher = Hasher::new();
                loop {
                    let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
                    let n = read_full(&mut file, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    if full_tx.send((buf, n)).is_err() {
                        // The writer failed and says why.
                        break;
                    }
                }
                Ok((hasher.len(), hasher.finish()))
            });
            // The last buffer is held back until the whole blob is known
            // to match: a stream destination (stdout), which cannot take
            // back what it was given, then never gets a complete entry for
            // a corrupt blob, only a truncated tar.
            let mut held: Option<(Vec<u8>, usize)> = None;
            let mut written = Ok(());
            for (buf, n) in full_rx.iter() {
                if let Some((prev, m)) = held.replace((buf, n)) {
                    if let Err(e) = out.write_all(&prev[..m]) {
                        written = Err(e);
                        break;
                    }
                    let _ = free_tx.send(prev);
                }
            }
            // Unblocks a reader waiting to send after a failed write.
            drop(full_rx);
            let read = reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            written.map_err(ArchiveError::Stream)?;
            let read = read.map_err(rerr)?;
            if let Some((last, m)) = held
                && read == (size, *digest)
            {
                out.write_all(&last[..m]).map_err(ArchiveError::Stream)?;
            }
            Ok::<_, ArchiveError>(read)
        })?
    };
    if got != size {
        return Err(ArchiveError::Truncated {
            path: path.display().to_string(),
            got,
            expected: size,
        });
    }
    if actual != *digest {
        return Err(ArchiveError::CorruptBlob {
            digest: *digest,
            actual,
        });
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Counts bytes on their way to the destination.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Runs `write` into the destination: a file appears only when complete.
fn to_destination(
    dest: Destination,
    write: impl FnOnce(&mut dyn Write) -> Result<(), ArchiveError>,
) -> Result<u64, ArchiveError> {
    match dest {
        Destination::Path(path) => {
            let file = AtomicFile::create(&path)?;
            let mut out = Counting {
                inner: BufWriter::with_capacity(1 << 20, file),
                count: 0,
            };
            write(&mut out)?;
            let count = out.count;
            let file = out.inner.into_inner().map_err(|e| ArchiveError::Write {
                path: path.clone(),
                source: e.into_error(),
            })?;
            file.commit()?;
            Ok(count)
        }
        Destination::Writer(w) => {
            let mut out = Counting {
                inner: BufWriter::with_capacity(1 << 20, w),
                count: 0,
            };
            write(&mut out)?;
            out.flush().map_err(ArchiveError::Stream)?;
            Ok(out.count)
        }
    }
}

fn export_layout(
    images: &ImageStore,
    items: &[ExportImage],
    dest: Destination,
    opts: &ExportOptions,
    docker: bool,
) -> Result<ExportReport, ArchiveError> {
    if items.is_empty() {
        return Err(ArchiveError::NoImages);
    }
    let store = images.store();
    // The same image asked for twice (by two names) is one entry with both names.
    let mut merged: Vec<ExportImage> = Vec::with_capacity(items.len());
    for item in items {
        match merged
            .iter_mut()
            .find(|m| m.image.manifest_digest == item.image.manifest_digest)
        {
            Some(m) => {
                for n in &item.names {
                    if !m.names.contains(n) {
                        m.names.push(n.clone());
                    }
                }
            }
            None => merged.push(item.clone()),
        }
    }
    let prepared = merged
        .iter()
        .map(|i| prepare(store, i, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = to_destination(dest, |out| {
        write_layout(store, &prepared, docker, out).map(drop)
    })?;
    Ok(ExportReport {
        manifests: prepared.iter().map(|p| p.manifest.digest).collect(),
        bytes,
    })
}

/// `type=oci`: an OCI image layout tarball.
#[derive(Debug, Clone, Default)]
pub struct OciExporter {
    pub opts: ExportOptions,
}

impl Exporter for OciExporter {
    fn kind(&self) -> ExportKind {
        ExportKind::Oci
    }

    fn export(
        &self,
        images: &ImageStore,
        items: &[ExportImage],
        dest: Destination,
    ) -> Result<ExportReport, ArchiveError> {
        export_layout(images, items, dest, &self.opts, false)
    }
}

/// `type=docker` (and `builder save`): an OCI layout tarball that is also a
/// docker archive.
#[derive(Debug, Clone, Default)]
pub struct DockerExporter {
    pub opts: ExportOptions,
}

impl Exporter for DockerExporter {
    fn kind(&self) -> ExportKind {
        ExportKind::Docker
    }

    fn export(
        &self,
        images: &ImageStore,
        items: &[ExportImage],
        dest: Destination,
    ) -> Result<ExportReport, ArchiveError> {
        export_layout(images, items, dest, &self.opts, true)
    }
}

fn single<'a>(
    kind: &'static str,
    items: &'a [ExportImage],
) -> Result<&'a ExportImage, ArchiveError> {
    match items {
        [] => Err(ArchiveError::NoImages),
        [one] => Ok(one),
        _ => Err(ArchiveError::Unsupported {
            kind,
            reason: "exports exactly one image",
        }),
    }
}

/// `type=local`: the image's root filesystem, flattened into a directory.
///
/// A destination that does not exist yet appears complete or not at all (the
/// tree is built beside it and renamed); an existing directory is written
/// into, as buildx does.
#[derive(Debug, Clone, Default)]
pub struct LocalExporter;

impl Exporter for LocalExporter {
    fn kind(&self) -> ExportKind {
        ExportKind::Local
    }

    fn export(
        &self,
        images: &ImageStore,
        items: &[ExportImage],
        dest: Destination,
    ) -> Result<ExportReport, ArchiveError> {
        let item = single("local", items)?;
        let Destination::Path(dir) = dest else {
            return Err(ArchiveError::Unsupported {
                kind: "local",
                reason: "needs a destination directory",
            });
        };
        let werr = |source| ArchiveError::Write {
            path: dir.clone(),
            source,
        };
        if dir.exists() {
            flatten_into(images.store(), &item.image, &dir)?;
        } else {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::create_dir_all(&parent).map_err(werr)?;
            let staging = tempfile::Builder::new()
                .prefix(".builder-export-")
                .tempdir_in(&parent)
                .map_err(werr)?;
            flatten_into(images.store(), &item.image, staging.path())?;
            std::fs::rename(staging.path(), &dir).map_err(werr)?;
            // The rename took the directory; nothing is left to clean up.
            let _ = staging.keep();
        }
        Ok(ExportReport {
            manifests: vec![item.image.manifest_digest],
            bytes: 0,
        })
    }
}

/// `type=tar`: the flattened root filesystem as one tarball.
#[derive(Debug, Clone, Default)]
pub struct TarExporter;

impl Exporter for TarExporter {
    fn kind(&self) -> ExportKind {
        ExportKind::Tar
    }

    fn export(
        &self,
        images: &ImageStore,
        items: &[ExportImage],
        dest: Destination,
    ) -> Result<ExportReport, ArchiveError> {
        let item = single("tar", items)?;
        let store = images.store();
        let staging = store.temp_dir("export-tar-")?;
        let root = staging.path().join("rootfs");
        let rerr = |source| ArchiveError::Write {
            path: root.clone(),
            source,
        };
        std::fs::create_dir(&root).map_err(rerr)?;
        flatten_into(store, &item.image, &root)?;
        let mut top: Vec<_> = std::fs::read_dir(&root)
            .and_then(|d| {
                d.map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(rerr)?;
        top.sort();
        let bytes = to_destination(dest, |out| {
            let mut tar = tar::Builder::new(out);
            tar.follow_symlinks(false);
            for name in &top {
                let path = root.join(name);
                let meta = path.symlink_metadata().map_err(rerr)?;
                if meta.is_dir() {
                    tar.append_dir_all(name, &path)
                        .map_err(ArchiveError::Stream)?;
                } else {
                    tar.append_path_with_name(&path, name)
                        .map_err(ArchiveError::Stream)?;
                }
            }
            tar.into_inner().map_err(ArchiveError::Stream)?;
            Ok(())
        })?;
        Ok(ExportReport {
            manifests: vec![item.image.manifest_digest],
            bytes,
        })
    }
}

/// Applies the image's layers, lowest first, into the existing directory `dir`.
fn flatten_into(store: &Store, image: &Image, dir: &Path) -> Result<(), ArchiveError> {
    let summary = image.config_summary()?;
    let diff_ids = summary
        .diff_ids()
        .map_err(|e| ArchiveError::InvalidDocument {
            path: blob_path(&image.id()),
            source: serde_json::Error::io(io::Error::other(e.to_string())),
        })?;
    if diff_ids.len() != image.layers().len() {
        return Err(ArchiveError::LayerCount {
            config: blob_path(&image.id()),
            diff_ids: diff_ids.len(),
            layers: image.layers().len(),
        });
    }
    let layers: Vec<LayerRef> = image
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| LayerRef {
            digest: l.digest,
            diff_id,
        })
        .collect();
    flatten_layers(store, &layers, dir).map_err(ArchiveError::Flatten)?;
    Ok(())
}
