//! Layer creation: a directory diff (overlay upperdir) → tar → diffID, compression, digest, in one streaming pass.
//!
//! The tar is deterministic: a depth-first walk with siblings sorted by their
//! name in the layer, so parents come before children; numeric ownership only;
//! mtimes in whole seconds (clamped to `SOURCE_DATE_EPOCH` when set); no
//! atime/ctime. Headers are ustar, with a PAX extended header only where ustar
//! cannot hold a value (long names and link targets, large sizes, ids, times)
//! and for xattrs (`SCHILY.xattr.*`), the way Go's `archive/tar` writes the
//! layers of docker, containerd and BuildKit.
//!
//! Overlay whiteouts become OCI whiteouts: a 0:0 character device `name` is
//! written as an empty regular file `.wh.name`, and a directory marked opaque
//! is followed by a `.wh..wh..opq` entry right after it, before its children,
//! so even extractors that apply the marker as they meet it keep the
//! directory's new content.
//!
//! The work is spread over threads so that no single one of them bounds the
//! throughput on a machine with few cores: one thread walks the tree and
//! reads files into large buffers, which are shared (not copied) by a thread
//! hashing the tar (the diffID) and by the caller's thread, which feeds the
//! compressor (itself using worker threads); the compressed output goes in
//! buffers to a last thread that writes the blob, which the store hashes
//! again (the digest). Files are never held in memory whole, and only a few
//! buffers are in flight at any time.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use crate::compression::{CompressionError, CompressionOptions, compressor};
use crate::digest::{Digest, Hasher};
use crate::layer::{OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};
use crate::store::{BlobWriter, Store, StoreError};

/// The opaque marker overlayfs writes when mounted with `userxattr`
/// (rootless).
const USER_OVERLAY_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Overlay xattrs saying that an entry's content lives in a lower layer: a
/// renamed directory (`redirect`) or a file whose data was not copied up
/// (`metacopy`).
const OUTSIDE_UPPER_XATTRS: [&[u8]; 4] = [
    b"trusted.overlay.redirect",
    b"trusted.overlay.metacopy",
    b"user.overlay.redirect",
    b"user.overlay.metacopy",
];

/// Size of the buffers passed from the tar thread to the compressing thread.
const CHUNK: usize = 1 << 20;
/// Buffers in flight: enough to ride out a large file's read or a slow
/// compression block without either side waiting.
const CHUNKS_IN_FLIGHT: usize = 8;

/// Size of the buffers of compressed output passed to the blob writing
/// thread: large enough that the store's writer passes them straight to the
/// kernel, without copying them into its own buffer.
const OUT_CHUNK: usize = 1 << 20;
/// Compressed buffers in flight.
const OUT_CHUNKS_IN_FLIGHT: usize = 4;

const BLOCK: usize = 512;

/// How to create a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateOptions {
    pub compression: CompressionOptions,
    /// When set, every mtime later than this (seconds since the epoch) is
    /// written as this, so that rebuilding the same tree later gives the same
    /// layer digest (<https://reproducible-builds.org/specs/source-date-epoch/>).
    pub source_date_epoch: Option<i64>,
}

/// A layer blob in the store, as an image manifest and config refer to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LayerDescriptor {
    pub media_type: String,
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Size of the (compressed) blob in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar, as listed in the image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// An error while creating a layer.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} changed while it was being archived")]
    Changed { path: PathBuf },
    #[error("cannot write the layer stream")]
    Write(#[source] io::Error),
    #[error("cannot store the layer")]
    Store(#[from] StoreError),
    #[error("cannot set up layer compression")]
    Compression(#[from] CompressionError),
    /// The upperdir relies on an overlay feature that keeps data outside it
    /// (`redirect_dir`, `metacopy`), so no layer made from it alone can be
    /// right; the overlay must be mounted with those features off.
    #[error("{path} has overlay attribute {xattr}, which a layer cannot represent")]
    OverlayFeature { path: PathBuf, xattr: String },
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> CreateError + '_ {
    move |source| CreateError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a layer from `dir` and stores its blob; returns its descriptor.
pub fn create_layer(
    store: &Store,
    dir: &Path,
    opts: &CreateOptions,
) -> Result<LayerDescriptor, CreateError> {
    create_layer_with(store, dir, opts, TarWriter::new(opts))
}

fn create_layer_with(
    store: &Store,
    dir: &Path,
    opts: &CreateOptions,
    tar: TarWriter,
) -> Result<LayerDescriptor, CreateError> {
    let blob = store.blob_writer()?;
    let (diff_id, blob) = if opts.compression.kind == crate::compression::Compression::None {
        // An uncompressed blob is the tar itself, whose digest the store
        // computes anyway: hashing it a second time would only cost time.
        // Writing it here costs no more than handing it to a thread would.
        let mut out = compressor(blob, &opts.compression)?;
        let diff_id = stream_tar(dir, tar, &mut out, false)?;
        (diff_id, out.finish().map_err(CreateError::Write)?)
    } else {
        compress_to_blob(dir, tar, opts, blob)?
    };
    let media_type = opts.compression.kind.media_type().to_string();
    let (digest, size) = blob.commit(None)?;
    Ok(LayerDescriptor {
        media_type,
        digest,
        size,
        diff_id: diff_id.unwrap_or(digest),
    })
}

/// Streams the tar of `dir` through the compressor into `blob`, which a
/// thread of its own hashes and writes; returns the diffID and the blob,
/// ready to commit.
fn compress_to_blob(
    dir: &Path,
    tar: TarWriter,
    opts: &CreateOptions,
    blob: BlobWriter,
) -> Result<(Option<Digest>, BlobWriter), CreateError> {
    let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(OUT_CHUNKS_IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let writer = std::thread::Builder::new()
            .name("layer-blob".into())
            .spawn_scoped(s, move || write_blob(blob, &full_rx, &free_tx))
            .map_err(CreateError::Write)?;
        let pipe = BlobPipe {
            buf: Vec::new(),
            full: full_tx,
            free: free_rx,
            unallocated: OUT_CHUNKS_IN_FLIGHT,
        };
        // On every path out of this closure the pipe is dropped (on an
        // error, with the compressor holding it), which ends the writer.
        let streamed = (|| -> Result<Option<Digest>, CreateError> {
            let mut out = compressor(pipe, &opts.compression)?;
            let diff_id = stream_tar(dir, tar, &mut out, true)?;
            out.finish()
                .and_then(BlobPipe::finish)
                .map_err(CreateError::Write)?;
            Ok(diff_id)
        })();
        let written = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // A failed write is the cause of the compressor's error, if it has
        // one (the pipe broke); the writer never fails because of the rest.
        let blob = written.map_err(CreateError::Write)?;
        Ok((streamed?, blob))
    })
}

/// The blob writing thread: hashes and writes the buffers that come in,
/// sends them back for reuse, and hands back the blob when they stop.
fn write_blob(
    mut blob: BlobWriter,
    full: &Receiver<Vec<u8>>,
    free: &Sender<Vec<u8>>,
) -> io::Result<BlobWriter> {
    for mut buf in full.iter() {
        blob.write_all(&buf)?;
        buf.clear();
        // The compressor's side may be gone already, done or failed.
        let _ = free.send(buf);
    }
    blob.flush()?;
    Ok(blob)
}

/// The compressor's output: collects it into large buffers for the blob
/// writing thread.
struct BlobPipe {
    buf: Vec<u8>,
    full: SyncSender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    /// Buffers that may still be allocated before waiting for one to come
    /// back: allocated on demand, so a small layer needs only one.
    unallocated: usize,
}

fn blob_writer_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "layer blob writer stopped")
}

impl BlobPipe {
    fn send(&mut self) -> io::Result<()> {
        let next = match self.free.try_recv() {
            Ok(buf) => buf,
            Err(_) if self.unallocated > 0 => {
                self.unallocated -= 1;
                Vec::with_capacity(OUT_CHUNK)
            }
            Err(_) => Vec::new(),
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.full.send(full).map_err(|_| blob_writer_gone())?;
        if self.buf.capacity() == 0 {
            self.buf = self.free.recv().map_err(|_| blob_writer_gone())?;
        }
        Ok(())
    }

    /// Sends what is left; the writer thread stops once it has written it.
    fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.full.send(last).map_err(|_| blob_writer_gone())?;
        }
        Ok(())
    }
}

impl Write for BlobPipe {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            // Also after a failed send, which may have left no buffer.
            self.unallocated = self.unallocated.saturating_sub(1);
            self.buf = Vec::with_capacity(OUT_CHUNK);
        }
        if self.buf.len() == OUT_CHUNK {
            self.send()?;
        }
        let n = (OUT_CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    /// Does nothing: the data reaches the blob through [`BlobPipe::finish`],
    /// and sending partial buffers would only make more of them.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the uncompressed layer tar of `dir` to `out` (the compression in
/// `opts` is not applied) and returns its diffID.
pub fn write_layer_tar(
    dir: &Path,
    opts: &CreateOptions,
    mut out: impl Write,
) -> Result<Digest, CreateError> {
    let diff_id = stream_tar(dir, TarWriter::new(opts), &mut out, true)?;
    out.flush().map_err(CreateError::Write)?;
    Ok(diff_id.expect("hashing was requested"))
}

/// Runs the tar producer on its own thread and copies its output into `out`
/// on this one; if `hash` is set, a third thread hashes it meanwhile.
fn stream_tar(
    dir: &Path,
    mut tar: TarWriter,
    out: &mut dyn Write,
    hash: bool,
) -> Result<Option<Digest>, CreateError> {
    let meta = fs::symlink_metadata(dir).map_err(read_err(dir))?;
    if !meta.is_dir() {
        return Err(CreateError::Read {
            path: dir.to_path_buf(),
            source: io::Error::other("not a directory"),
        });
    }
    let (full_tx, full_rx) = mpsc::sync_channel::<Arc<Chunk>>(CHUNKS_IN_FLIGHT);
    let (hash_tx, hash_rx) = mpsc::sync_channel::<Arc<Chunk>>(CHUNKS_IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let hasher = if hash {
            let hasher = std::thread::Builder::new()
                .name("layer-diffid".into())
                .spawn_scoped(s, move || {
                    let mut hasher = Hasher::new();
                    for chunk in hash_rx.iter() {
                        hasher.update(chunk.data());
                    }
                    hasher
                })
                .map_err(CreateError::Write)?;
            Some(hasher)
        } else {
            None
        };
        let producer = std::thread::Builder::new()
            .name("layer-tar".into())
            .spawn_scoped(s, move || {
                let mut sink = ChunkSink {
                    buf: Vec::new(),
                    fill: 0,
                    allocated: 0,
                    full: full_tx,
                    hash: hash.then_some(hash_tx),
                    recycle: free_tx,
                    free: free_rx,
                };
                tar.write_tree(dir, &mut sink)?;
                sink.finish()
            })
            .map_err(CreateError::Write)?;
        let mut consumed: Result<(), io::Error> = Ok(());
        for chunk in full_rx.iter() {
            if let Err(e) = out.write_all(chunk.data()) {
                consumed = Err(e);
                break;
            }
        }
        // Closing the channel frees the chunks queued in it; the producer,
        // once it has one of them back, fails to send it and stops, with an
        // error which the consumer's then supersedes.
        drop(full_rx);
        let produced = producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // The producer is gone, so the hasher's channel is closed.
        let hashed = hasher.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        consumed.map_err(CreateError::Write)?;
        produced?;
        Ok(hashed.map(Hasher::finish))
    })
}

/// A filled buffer of tar, shared by the diffID hasher and the compressor's
/// feed. Whichever lets go of it last sends its buffer back to the producer.
struct Chunk {
    buf: Vec<u8>,
    fill: usize,
    recycle: Sender<Vec<u8>>,
}

impl Chunk {
    fn data(&self) -> &[u8] {
        &self.buf[..self.fill]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The producer may have stopped and dropped its receiver.
        let _ = self.recycle.send(std::mem::take(&mut self.buf));
    }
}

/// The producer's end of the pipeline: fills fixed-size buffers and sends
/// them on. Buffers come back through `free` once every consumer is done
/// with them, so that they are allocated (and zeroed) once, and at most
/// [`CHUNKS_IN_FLIGHT`] of them exist.
struct ChunkSink {
    buf: Vec<u8>,
    fill: usize,
    /// Buffers allocated so far.
    allocated: usize,
    full: SyncSender<Arc<Chunk>>,
    /// The diffID hasher, when there is one.
    hash: Option<SyncSender<Arc<Chunk>>>,
    recycle: Sender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
}

fn consumer_gone() -> CreateError {
    CreateError::Write(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "layer writer stopped",
    ))
}

impl ChunkSink {
    /// Makes sure the current buffer has room, sending it on if it is full.
    fn room(&mut self) -> Result<&mut [u8], CreateError> {
        if self.buf.is_empty() || self.fill == self.buf.len() {
            if !self.buf.is_empty() {
                self.send()?;
            }
            self.buf = match self.free.try_recv() {
                Ok(buf) => buf,
                Err(_) if self.allocated < CHUNKS_IN_FLIGHT => {
                    self.allocated += 1;
                    vec![0; CHUNK]
                }
                // Never disconnected: this sink holds a sender, and a
                // consumer that stopped makes the next send fail instead.
                Err(_) => self.free.recv().map_err(|_| consumer_gone())?,
            };
            self.fill = 0;
        }
        Ok(&mut self.buf[self.fill..])
    }

    fn send(&mut self) -> Result<(), CreateError> {
        let chunk = Arc::new(Chunk {
            buf: std::mem::take(&mut self.buf),
            fill: self.fill,
            recycle: self.recycle.clone(),
        });
        self.fill = 0;
        if let Some(hash) = &self.hash {
            hash.send(Arc::clone(&chunk)).map_err(|_| consumer_gone())?;
        }
        self.full.send(chunk).map_err(|_| consumer_gone())
    }

    fn write(&mut self, mut data: &[u8]) -> Result<(), CreateError> {
        while !data.is_empty() {
            let room = self.room()?;
            let n = room.len().min(data.len());
            room[..n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: usize) -> Result<(), CreateError> {
        while n > 0 {
            let room = self.room()?;
            let k = room.len().min(n);
            room[..k].fill(0);
            self.fill += k;
            n -= k;
        }
        Ok(())
    }

    /// Reads exactly `size` bytes of `file` straight into the buffers.
    fn copy_file(&mut self, file: &mut File, size: u64, path: &Path) -> Result<(), CreateError> {
        let mut left = size;
        while left > 0 {
            let room = self.room()?;
            let want = room.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match file.read(&mut room[..want]) {
                Ok(0) => {
                    return Err(CreateError::Changed {
                        path: path.to_path_buf(),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(CreateError::Read {
                        path: path.to_path_buf(),
                        source: e,
                    });
                }
            };
            self.fill += n;
            left -= n as u64;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), CreateError> {
        if self.fill > 0 {
            self.send()?;
        }
        Ok(())
    }
}

/// What an entry of the source tree becomes in the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Char,
    Block,
    Fifo,
    /// An overlay whiteout (0:0 character device): an empty `.wh.` file.
    Whiteout,
}

/// An entry found in a directory, not yet written.
struct Pending {
    /// Its name in the layer, relative, without a trailing slash.
    name: Vec<u8>,
    path: PathBuf,
    meta: Metadata,
    kind: Kind,
}

struct TarWriter {
    epoch: Option<i64>,
    /// (dev, inode) of multiply-linked files already written → their name.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Ownership written for every entry instead of the real one; only tests
    /// set it, so that their pinned digests do not depend on who runs them.
    owner: Option<(u64, u64)>,
}

/// The ustar header fields of one entry.
struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    typeflag: u8,
    link: &'a [u8],
    dev: (u64, u64),
    xattrs: &'a [(OsString, Vec<u8>)],
}

/// Extended attributes by name, sorted.
type Xattrs = Vec<(OsString, Vec<u8>)>;

impl TarWriter {
    fn new(opts: &CreateOptions) -> Self {
        TarWriter {
            epoch: opts.source_date_epoch,
            links: HashMap::new(),
            owner: None,
        }
    }

    fn write_tree(&mut self, root: &Path, out: &mut ChunkSink) -> Result<(), CreateError> {
        // Depth-first with an explicit stack (deep trees must not overflow
        // ours); children are pushed in reverse so they pop in order.
        let mut stack = list_dir(root, &[])?;
        stack.reverse();
        while let Some(entry) = stack.pop() {
            self.write_entry(&entry, out)?;
            if entry.kind == Kind::Dir {
                let mut children = list_dir(&entry.path, &entry.name)?;
                children.reverse();
                stack.extend(children);
            }
        }
        out.zeros(2 * BLOCK)
    }

    fn mtime(&self, meta: &Metadata) -> i64 {
        let t = meta.mtime();
        self.epoch.map_or(t, |e| t.min(e))
    }

    fn write_entry(&mut self, e: &Pending, out: &mut ChunkSink) -> Result<(), CreateError> {
        let meta = &e.meta;
        let mut hdr = Header {
            name: &e.name,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            size: 0,
            mtime: self.mtime(meta),
            typeflag: 0,
            link: &[],
            dev: (0, 0),
            xattrs: &[],
        };
        if let Some((uid, gid)) = self.owner {
            (hdr.uid, hdr.gid) = (uid, gid);
        }
        if e.kind == Kind::Whiteout {
            // As docker's overlay converter does: the device's owner and
            // time, a fixed mode.
            hdr.mode = 0o600;
            hdr.typeflag = b'0';
            return write_header(out, &hdr);
        }
        let (xattrs, opaque) = read_xattrs(&e.path)?;
        let opaque = opaque && e.kind == Kind::Dir;
        hdr.xattrs = &xattrs;
        let mut dir_name;
        let target;
        match e.kind {
            Kind::Dir => {
                dir_name = e.name.clone();
                dir_name.push(b'/');
                hdr.name = &dir_name;
                hdr.typeflag = b'5';
            }
            Kind::Symlink => {
                target = fs::read_link(&e.path)
                    .map_err(read_err(&e.path))?
                    .into_os_string()
                    .into_vec();
                hdr.link = &target;
                hdr.typeflag = b'2';
            }
            Kind::Char | Kind::Block => {
                let rdev = meta.rdev();
                hdr.dev = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
                hdr.typeflag = if e.kind == Kind::Char { b'3' } else { b'4' };
            }
            Kind::Fifo => hdr.typeflag = b'6',
            Kind::File => {
                hdr.typeflag = b'0';
                hdr.size = meta.len();
            }
            Kind::Whiteout => unreachable!("handled above"),
        }
        if e.kind != Kind::Dir && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                hdr.typeflag = b'1';
                hdr.link = &first;
                hdr.size = 0;
                return write_header(out, &hdr);
            }
            self.links.insert(key, e.name.clone());
        }
        if e.kind == Kind::File {
            // Opened before the header is written: an unreadable file must
            // fail the layer, not leave a header without its data.
            let mut file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&e.path)
                .map_err(read_err(&e.path))?;
            write_header(out, &hdr)?;
            out.copy_file(&mut file, hdr.size, &e.path)?;
            out.zeros(padding(hdr.size))?;
        } else {
            write_header(out, &hdr)?;
        }
        if opaque {
            let mut name = e.name.clone();
            name.extend_from_slice(b"/");
            name.extend_from_slice(WHITEOUT_OPAQUE.as_bytes());
            let marker = Header {
                name: &name,
                mode: hdr.mode & 0o777,
                uid: hdr.uid,
                gid: hdr.gid,
                size: 0,
                mtime: hdr.mtime,
                typeflag: b'0',
                link: &[],
                dev: (0, 0),
                xattrs: &[],
            };
            write_header(out, &marker)?;
        }
        Ok(())
    }
}

/// The entries of `dir`, sorted by their names in the layer. Sockets are
/// skipped: tar cannot hold them, and docker skips them too.
fn list_dir(dir: &Path, prefix: &[u8]) -> Result<Vec<Pending>, CreateError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(read_err(&path))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() && meta.rdev() == 0 {
            Kind::Whiteout
        } else if ft.is_char_device() {
            Kind::Char
        } else if ft.is_block_device() {
            Kind::Block
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            continue;
        };
        let mut name = Vec::with_capacity(prefix.len() + 1 + entry.file_name().len() + 4);
        if !prefix.is_empty() {
            name.extend_from_slice(prefix);
            name.push(b'/');
        }
        if kind == Kind::Whiteout {
            name.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
        }
        name.extend_from_slice(entry.file_name().as_bytes());
        out.push(Pending {
            name,
            path,
            meta,
            kind,
        });
    }
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Overlay's own bookkeeping and the host's security labels describe the
/// machine the layer was built on, not the image.
fn keep_xattr(name: &[u8]) -> bool {
    !(name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == b"security.selinux")
}

/// The xattrs to carry into the layer, sorted, and whether overlay marks
/// the entry opaque.
fn read_xattrs(path: &Path) -> Result<(Xattrs, bool), CreateError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A filesystem without xattrs has none to carry.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok((Vec::new(), false)),
        Err(e) => {
            return Err(CreateError::Read {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let mut out = Vec::new();
    let mut opaque = false;
    for name in names {
        let bytes = name.as_bytes();
        if OUTSIDE_UPPER_XATTRS.contains(&bytes) {
            return Err(CreateError::OverlayFeature {
                path: path.to_path_buf(),
                xattr: String::from_utf8_lossy(bytes).into_owned(),
            });
        }
        let marker = bytes == OVERLAY_OPAQUE_XATTR.as_bytes()
            || bytes == USER_OVERLAY_OPAQUE_XATTR.as_bytes();
        if !marker && !keep_xattr(bytes) {
            continue;
        }
        // A value removed since the listing is simply absent.
        let Some(value) = xattr::get(path, &name).map_err(read_err(path))? else {
            continue;
        };
        if marker {
            // Only "y" means opaque: kernels from 6.7 also write "x" to mark
            // a directory holding xwhiteouts, which is not opaque.
            opaque |= value == b"y";
        } else {
            out.push((name, value));
        }
    }
    out.sort();
    Ok((out, opaque))
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Writes `v` as zero-padded octal with a trailing NUL, if it fits.
fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    if digits < 22 && v >= 1u64 << (3 * digits) {
        return false;
    }
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// Splits a name into ustar's prefix and name fields, at a slash.
fn split_ustar(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((&[], name));
    }
    if name.len() > 256 {
        return None;
    }
    // The prefix must be at most 155 bytes and the rest at most 100 and not
    // empty; the rightmost slash that keeps the prefix short enough
    // leaves the shortest rest.
    let limit = name.len().min(156);
    let slash = name[..limit].iter().rposition(|&b| b == b'/')?;
    let (prefix, rest) = (&name[..slash], &name[slash + 1..]);
    (!prefix.is_empty() && !rest.is_empty() && rest.len() <= 100).then_some((prefix, rest))
}

fn write_header(out: &mut ChunkSink, h: &Header<'_>) -> Result<(), CreateError> {
    let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut block = [0u8; BLOCK];
    match split_ustar(h.name) {
        Some((prefix, name)) => {
            block[..name.len()].copy_from_slice(name);
            block[345..345 + prefix.len()].copy_from_slice(prefix);
        }
        None => {
            pax.insert(b"path".to_vec(), h.name.to_vec());
            block[..100].copy_from_slice(&h.name[..100]);
        }
    }
    if h.link.len() > 100 {
        pax.insert(b"linkpath".to_vec(), h.link.to_vec());
        block[157..257].copy_from_slice(&h.link[..100]);
    } else {
        block[157..157 + h.link.len()].copy_from_slice(h.link);
    }
    octal(&mut block[100..108], u64::from(h.mode));
    // Values ustar cannot hold go in PAX records, the field then holds 0.
    for (range, value, key) in [
        (108..116, h.uid, &b"uid"[..]),
        (116..124, h.gid, b"gid"),
        (124..136, h.size, b"size"),
    ] {
        if !octal(&mut block[range.clone()], value) {
            octal(&mut block[range], 0);
            pax.insert(key.to_vec(), value.to_string().into_bytes());
        }
    }
    if h.mtime < 0 || !octal(&mut block[136..148], h.mtime as u64) {
        octal(&mut block[136..148], 0);
        pax.insert(b"mtime".to_vec(), h.mtime.to_string().into_bytes());
    }
    block[156] = h.typeflag;
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    octal(&mut block[329..337], h.dev.0);
    octal(&mut block[337..345], h.dev.1);
    for (name, value) in h.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name.as_bytes());
        pax.insert(key, value.clone());
    }
    checksum(&mut block);
    if !pax.is_empty() {
        write_pax(out, h.name, &pax)?;
    }
    out.write(&block)
}

fn checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    octal(&mut block[148..155], sum);
    block[155] = b' ';
}

/// Writes a PAX extended header (typeflag `x`) for the entry named `name`.
fn write_pax(
    out: &mut ChunkSink,
    name: &[u8],
    records: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<(), CreateError> {
    let mut data = Vec::new();
    for (key, value) in records {
        // "<len> <key>=<value>\n", where <len> counts its own digits.
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len = len.to_string().len() + rest;
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.push(b' ');
        data.extend_from_slice(key);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let base = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    let mut pax_name = b"PaxHeaders.0/".to_vec();
    pax_name.extend_from_slice(base);
    pax_name.truncate(100);
    let mut block = [0u8; BLOCK];
    block[..pax_name.len()].copy_from_slice(&pax_name);
    octal(&mut block[100..108], 0o644);
    octal(&mut block[108..116], 0);
    octal(&mut block[116..124], 0);
    if !octal(&mut block[124..136], data.len() as u64) {
        return Err(CreateError::Write(io::Error::other(
            "extended attributes too large for a tar header",
        )));
    }
    octal(&mut block[136..148], 0);
    block[156] = b'x';
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    octal(&mut block[329..337], 0);
    octal(&mut block[337..345], 0);
    checksum(&mut block);
    out.write(&block)?;
    out.write(&data)?;
    out.zeros(padding(data.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields_fit_or_refuse() {
        let mut f = [0xffu8; 8];
        assert!(octal(&mut f, 0o755));
        assert_eq!(&f, b"0000755\0");
        assert!(octal(&mut f, 0o7777777));
        assert!(!octal(&mut f, 0o10000000));
        let mut s = [0u8; 12];
        assert!(octal(&mut s, (1 << 33) - 1));
        assert!(!octal(&mut s, 1 << 33));
    }

    #[test]
    fn ustar_split_uses_prefix_only_when_it_fits() {
        assert_eq!(split_ustar(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        let long = [b"d".repeat(120), b"f".repeat(50)].join(&b'/');
        assert_eq!(split_ustar(&long), Some((&long[..120], &long[121..])));
        let no_slash = b"x".repeat(101);
        assert_eq!(split_ustar(&no_slash), None);
        let long_base = [b"d".repeat(10), b"f".repeat(101)].join(&b'/');
        assert_eq!(split_ustar(&long_base), None);
        assert_eq!(split_ustar(&b"y".repeat(257)), None);
        let long_prefix = [b"d".repeat(160), b"f".repeat(10)].join(&b'/');
        assert_eq!(split_ustar(&long_prefix), None);
    }

    fn sink() -> (ChunkSink, Receiver<Arc<Chunk>>) {
        let (full_tx, full_rx) = mpsc::sync_channel(64);
        let (free_tx, free_rx) = mpsc::channel();
        let sink = ChunkSink {
            buf: Vec::new(),
            fill: 0,
            allocated: 0,
            full: full_tx,
            hash: None,
            recycle: free_tx,
            free: free_rx,
        };
        (sink, full_rx)
    }

    #[test]
    fn values_beyond_ustar_go_to_pax_records() {
        let (mut out, rx) = sink();
        let hdr = Header {
            name: b"big",
            mode: 0o644,
            uid: 1 << 22,
            gid: 7,
            size: 1 << 34,
            mtime: -5,
            typeflag: b'0',
            link: &[],
            dev: (0, 0),
            xattrs: &[],
        };
        write_header(&mut out, &hdr).unwrap();
        out.finish().unwrap();
        let chunk = rx.recv().unwrap();
        let bytes = chunk.data();
        assert_eq!(
            bytes.len(),
            3 * BLOCK,
            "x header, its records, the entry header"
        );
        assert_eq!(bytes[156], b'x');
        let records = std::str::from_utf8(&bytes[BLOCK..2 * BLOCK])
            .unwrap()
            .trim_end_matches('\0');
        // Each record's length counts the whole record, its digits included.
        assert_eq!(
            records,
            "12 mtime=-5\n20 size=17179869184\n15 uid=4194304\n"
        );
        let entry = &bytes[2 * BLOCK..];
        assert_eq!(&entry[124..136], b"00000000000\0", "size field holds 0");
        assert_eq!(&entry[136..148], b"00000000000\0", "mtime field holds 0");
        assert_eq!(&entry[108..116], b"0000000\0", "uid field holds 0");
        assert_eq!(&entry[116..124], b"0000007\0", "gid fits");
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for vlen in [0usize, 1, 80, 89, 90, 91, 995, 996, 997, 9990] {
            let mut map = BTreeMap::new();
            map.insert(b"path".to_vec(), vec![b'a'; vlen]);
            let (mut sink, full_rx) = sink();
            write_pax(&mut sink, b"x", &map).unwrap();
            sink.finish().unwrap();
            let chunk = full_rx.recv().unwrap();
            let data = &chunk.data()[BLOCK..];
            let space = data.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&data[..space])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(data[len - 1], b'\n', "value length {vlen}");
            assert_eq!(len, space + 1 + "path=".len() + vlen + 1);
        }
    }

    /// A small tree with one of each kind of entry, files spanning several
    /// chunks, a hard link, a long name (PAX) and text and random content.
    fn fixed_tree(root: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect()
        };
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("line {i} of some text {}\n", i % 97).into_bytes())
            .collect();
        let long = format!("d/{}", "n".repeat(150));
        let files: [(&str, Vec<u8>); 6] = [
            ("a/empty", Vec::new()),
            ("a/text", text),
            ("a/random", random(2_500_000)),
            ("b/c/small", b"hello\n".to_vec()),
            ("b/odd", random(1_234_567)),
            (&long, b"long name".to_vec()),
        ];
        for (name, data) in &files {
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, data).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::create_dir(root.join("e")).unwrap();
        fs::hard_link(root.join("b/c/small"), root.join("b/link")).unwrap();
        std::os::unix::fs::symlink("../a/text", root.join("b/sym")).unwrap();
        for dir in ["", "a", "b", "b/c", "d", "e"] {
            fs::set_permissions(root.join(dir), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// The bytes of a layer must not change with how it is produced: these
    /// digests were computed before the pipeline was spread over threads.
    #[test]
    fn layer_digests_of_a_fixed_tree_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fixed_tree(&tree);
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut got = Vec::new();
        for kind in [
            crate::compression::Compression::None,
            crate::compression::Compression::Gzip,
            crate::compression::Compression::Zstd,
        ] {
            let opts = CreateOptions {
                compression: CompressionOptions::new(kind),
                // Older than any file, so every mtime is this one.
                source_date_epoch: Some(1_000_000_000),
            };
            let mut tar = TarWriter::new(&opts);
            tar.owner = Some((0, 0));
            let desc = create_layer_with(&store, &tree, &opts, tar).unwrap();
            got.push(format!(
                "{kind} {} {} {}",
                desc.digest, desc.diff_id, desc.size
            ));
        }
        let tar = "sha256:5e85e1bd0993c921ca68dddcdd9e9810a72c5662b3716354f95a9ba94594202b";
        assert_eq!(
            got,
            [
                format!("uncompressed {tar} {tar} 12002816"),
                format!(
                    "gzip sha256:d5e57ab494dee90721701a29dcebc7e5b12380cc750b36c9ffbf8b8f93186dc4 {tar} 4902720"
                ),
                format!(
                    "zstd sha256:4db21827b444b4aa9525c899e16818674a7427655242f69068e0004f78d651b9 {tar} 4159449"
                ),
            ]
        );
    }
}
