//! Compression of layer streams: gzip, zstd, or none.
//!
//! Both compressors use several cores: zstd through its own worker threads
//! (`zstdmt`), gzip through a block-parallel deflate in the manner of pigz
//! (independent 1 MiB blocks, each primed with the 32 KiB before it and ended
//! with a sync flush, stitched into one gzip member with a combined CRC). The
//! output depends only on the data and the level, never on the thread count,
//! so layer digests are reproducible across machines.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Crc, FlushCompress, Status};

/// OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip-compressed layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd-compressed layer.
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker v2 media type of a (gzip) layer, found in docker-built images.
pub const DOCKER_MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker v2 media type of an uncompressed layer.
pub const DOCKER_MEDIA_TYPE_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Default gzip level, as in docker, BuildKit and `gzip` itself.
pub const DEFAULT_GZIP_LEVEL: i32 = 6;
/// Default zstd level, as in BuildKit and the `zstd` tool.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Input per parallel deflate block: large enough that priming each block with
/// its predecessor's window costs under 1% in ratio, small enough that two
/// workers stay busy on modest layers.
const GZIP_BLOCK: usize = 1 << 20;
/// The deflate window: the most a block can refer back into its predecessor.
const DEFLATE_WINDOW: usize = 32 * 1024;

/// A compression algorithm for layer blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_TAR,
            Compression::Gzip => MEDIA_TYPE_TAR_GZIP,
            Compression::Zstd => MEDIA_TYPE_TAR_ZSTD,
        }
    }

    /// The compression a layer media type (OCI or docker v2) declares, or
    /// `None` for a media type that is not a layer.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            MEDIA_TYPE_TAR | DOCKER_MEDIA_TYPE_TAR => Some(Compression::None),
            MEDIA_TYPE_TAR_GZIP | DOCKER_MEDIA_TYPE_TAR_GZIP => Some(Compression::Gzip),
            MEDIA_TYPE_TAR_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The level used when none is given; `None` for no compression.
    pub fn default_level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some(DEFAULT_GZIP_LEVEL),
            Compression::Zstd => Some(DEFAULT_ZSTD_LEVEL),
        }
    }

    /// The name used on the command line (`compression=` of `-o`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = CompressionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uncompressed" | "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(CompressionError::UnknownCompression(s.to_string())),
        }
    }
}

/// What to compress with, and how hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CompressionOptions {
    pub kind: Compression,
    /// gzip: 0–9; zstd: 1–22 (or negative for the fast modes); `None` for
    /// the kind's default.
    pub level: Option<i32>,
}

impl CompressionOptions {
    pub fn new(kind: Compression) -> Self {
        CompressionOptions { kind, level: None }
    }

    pub fn with_level(kind: Compression, level: i32) -> Self {
        CompressionOptions {
            kind,
            level: Some(level),
        }
    }

    /// The level that will be used, after defaults; `None` for no compression.
    pub fn effective_level(&self) -> Option<i32> {
        self.level
            .filter(|_| self.kind != Compression::None)
            .or(self.kind.default_level())
    }

    fn validate(&self) -> Result<Option<i32>, CompressionError> {
        let level = self.effective_level();
        let ok = match (self.kind, level) {
            (Compression::None, _) => true,
            (Compression::Gzip, Some(l)) => (0..=9).contains(&l),
            (Compression::Zstd, Some(l)) => zstd::compression_level_range().contains(&l) && l != 0,
            (_, None) => false,
        };
        if !ok {
            return Err(CompressionError::InvalidLevel {
                kind: self.kind,
                level: self.level.unwrap_or_default(),
            });
        }
        Ok(level)
    }
}

/// An error from setting up compression or decompression.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("unknown compression {0:?} (expected gzip, zstd or uncompressed)")]
    UnknownCompression(String),
    #[error("invalid {kind} compression level {level}")]
    InvalidLevel { kind: Compression, level: i32 },
    #[error("cannot start the {kind} compressor")]
    Start {
        kind: Compression,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the stream header")]
    Read(#[source] io::Error),
}

/// A writer that compresses into `W`. Call [`Compressor::finish`] to complete
/// the stream; dropping it instead leaves `W` with a truncated stream.
pub enum Compressor<W: Write> {
    None(W),
    Gzip(ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// Writes the end of the stream and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
        }
    }

    /// The writer the compressed stream goes to.
    pub fn get_ref(&self) -> &W {
        match self {
            Compressor::None(w) => w,
            Compressor::Gzip(g) => g.out.as_ref().expect("writer present until finish"),
            Compressor::Zstd(z) => z.get_ref(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.write_all(buf),
            Compressor::Gzip(g) => g.write_all(buf),
            Compressor::Zstd(z) => z.write_all(buf),
        }
    }

    /// Passes data on as far as the format allows without ending the stream;
    /// not needed before [`Compressor::finish`].
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}

/// The number of compression threads: every core, and at least two so that
/// compression overlaps with whatever feeds it.
fn compression_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 16)
}

/// A compressing writer for `opts`; multi-threaded for gzip and zstd.
pub fn compressor<W: Write + Send>(
    w: W,
    opts: &CompressionOptions,
) -> Result<Compressor<W>, CompressionError> {
    let level = opts.validate()?;
    let threads = compression_threads();
    match (opts.kind, level) {
        (Compression::None, _) => Ok(Compressor::None(w)),
        (Compression::Gzip, Some(level)) => {
            let level = u32::try_from(level).expect("validated gzip level");
            ParallelGzip::new(w, level, threads)
                .map(Compressor::Gzip)
                .map_err(|source| CompressionError::Start {
                    kind: Compression::Gzip,
                    source,
                })
        }
        (Compression::Zstd, Some(level)) => {
            let start = |source| CompressionError::Start {
                kind: Compression::Zstd,
                source,
            };
            let mut enc = zstd::stream::write::Encoder::new(w, level).map_err(start)?;
            enc.multithread(u32::try_from(threads).unwrap_or(2))
                .map_err(start)?;
            // The content checksum lets a reader detect a corrupt blob early;
            // digests catch it too, but only at the end.
            enc.include_checksum(true).map_err(start)?;
            Ok(Compressor::Zstd(enc))
        }
        (_, None) => unreachable!("validate gives compressed kinds a level"),
    }
}

/// The compression a stream starting with `magic` uses (a few bytes suffice:
/// 2 for gzip, 4 for zstd). Anything else is taken as uncompressed.
pub fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if magic.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(magic) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// zstd skippable frames (magic 0x184D2A50–5F, little-endian) may precede the
/// data frames, e.g. in seekable or eStargz-like zstd layers.
fn is_zstd_skippable(magic: &[u8]) -> bool {
    magic.len() >= 4 && magic[0] & 0xf0 == 0x50 && magic[1..4] == [0x2a, 0x4d, 0x18]
}

/// A reader that decompresses `r`, whichever of gzip, zstd or plain it is.
pub fn decompressor<'a, R: Read + Send + 'a>(
    r: R,
) -> Result<Box<dyn Read + Send + 'a>, CompressionError> {
    let (kind, reader) = sniff(r)?;
    Ok(match kind {
        Compression::None => Box::new(reader),
        // Concatenated gzip members are one valid stream (gzip and Go's
        // reader accept them), so read them all.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| CompressionError::Start { kind, source: e })?,
        ),
    })
}

/// Detects the compression of `r` without losing anything: the returned
/// reader still yields the stream from its first byte.
pub fn sniff<R: Read>(mut r: R) -> Result<(Compression, Sniffed<R>), CompressionError> {
    // Read the magic directly rather than through `fill_buf`, which may return
    // fewer bytes than the magic when the source is a pipe or a socket.
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CompressionError::Read(e)),
        }
    }
    let kind = detect(&head[..got]);
    let inner = Prefixed {
        prefix: head,
        len: got,
        pos: 0,
        inner: r,
    };
    Ok((kind, Sniffed(BufReader::with_capacity(256 * 1024, inner))))
}

/// A buffered stream whose first bytes were examined by [`sniff`].
pub struct Sniffed<R>(BufReader<Prefixed<R>>);

impl<R: Read> Read for Sniffed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> BufRead for Sniffed<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.0.consume(amt)
    }
}

/// Yields the sniffed bytes, then the rest of the stream.
struct Prefixed<R> {
    prefix: [u8; 4],
    len: usize,
    pos: usize,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.len {
            let n = (self.len - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// One block of input for a deflate worker.
struct Job {
    /// The end of the previous block's input, used as the dictionary.
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
    reply: SyncSender<io::Result<Done>>,
}

struct Done {
    deflated: Vec<u8>,
    crc: Crc,
    /// The input buffer, handed back for reuse.
    data: Vec<u8>,
}

/// A gzip writer that deflates blocks on worker threads and writes them to
/// `W` in order, from the caller's thread.
pub struct ParallelGzip<W: Write> {
    out: Option<W>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Receiver<io::Result<Done>>>,
    max_pending: usize,
    buf: Vec<u8>,
    spare: Vec<Vec<u8>>,
    dict: Vec<u8>,
    crc: Crc,
    len: u64,
    level: u32,
}

impl<W: Write> ParallelGzip<W> {
    fn new(mut out: W, level: u32, threads: usize) -> io::Result<Self> {
        // A fixed header (no name, mtime 0, OS "unknown") keeps the output a
        // function of the content only, as Go's and BuildKit's writers do.
        let xfl = match level {
            9 => 2,
            0 | 1 => 4,
            _ => 0,
        };
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])?;
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new()
                .name(format!("gzip-{i}"))
                .spawn(move || deflate_worker(&rx, level))?;
            workers.push(handle);
        }
        Ok(ParallelGzip {
            out: Some(out),
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            max_pending: threads * 2,
            buf: Vec::with_capacity(GZIP_BLOCK),
            spare: Vec::new(),
            dict: Vec::new(),
            crc: Crc::new(),
            len: 0,
            level,
        })
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        while self.pending.len() >= self.max_pending {
            self.write_oldest()?;
        }
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(GZIP_BLOCK));
        let data = std::mem::replace(&mut self.buf, next);
        let dict = std::mem::take(&mut self.dict);
        // Every block but the last is full, so its tail is a whole window.
        let tail = data.len().saturating_sub(DEFLATE_WINDOW);
        self.dict = data[tail..].to_vec();
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job {
            dict,
            data,
            last,
            reply,
        };
        self.jobs
            .as_ref()
            .expect("jobs open until finish")
            .send(job)
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        self.pending.push_back(rx);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = rx
            .recv()
            .map_err(|_| io::Error::other("gzip worker thread died"))??;
        self.out
            .as_mut()
            .expect("writer present until finish")
            .write_all(&done.deflated)?;
        self.crc.combine(&done.crc);
        let mut data = done.data;
        data.clear();
        if self.spare.len() < self.max_pending {
            self.spare.push(data);
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.stop_workers();
        let mut out = self.out.take().expect("writer present until finish");
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32, per RFC 1952.
        trailer[4..].copy_from_slice(&(self.len as u32).to_le_bytes());
        out.write_all(&trailer)?;
        out.flush()?;
        Ok(out)
    }

    fn stop_workers(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// The compression level in use.
    pub fn level(&self) -> u32 {
        self.level
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let room = GZIP_BLOCK - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.len += n as u64;
            data = &data[n..];
            if self.buf.len() == GZIP_BLOCK {
                self.submit(false)?;
            }
        }
        Ok(total)
    }

    /// Writes out the blocks already finished. Partial blocks stay buffered:
    /// cutting a block short would make the output depend on flush timing.
    fn flush(&mut self) -> io::Result<()> {
        while self.pending.front().is_some() {
            self.write_oldest()?;
        }
        self.out
            .as_mut()
            .expect("writer present until finish")
            .flush()
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        self.pending.clear();
        self.stop_workers();
    }
}

fn deflate_worker(jobs: &Mutex<Receiver<Job>>, level: u32) {
    let mut deflate = flate2::Compress::new(flate2::Compression::new(level), false);
    loop {
        let job = {
            let Ok(rx) = jobs.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let result = deflate_block(&mut deflate, &job, level);
        let _ = job.reply.send(result.map(|deflated| {
            let mut crc = Crc::new();
            crc.update(&job.data);
            Done {
                deflated,
                crc,
                data: job.data,
            }
        }));
    }
}

/// Deflates one block as raw deflate, ending on a byte boundary (sync flush)
/// so the next block's output can simply follow, or ending the stream.
///
/// Stretches that deflate cannot shrink (already compressed or random data)
/// are written as stored blocks instead: deflating them costs as much CPU as
/// text and gains nothing, which is what zstd's own incompressibility check
/// avoids too. The choice depends only on the block's content, so the output
/// stays a function of the data.
fn deflate_block(deflate: &mut flate2::Compress, job: &Job, level: u32) -> io::Result<Vec<u8>> {
    let data = &job.data[..];
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 1024);
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for start in (0..data.len()).step_by(PROBE_CHUNK) {
        let end = (start + PROBE_CHUNK).min(data.len());
        let stored = level > 0 && incompressible(&data[start..end]);
        match runs.last_mut() {
            Some((_, run_end, run_stored)) if *run_stored == stored => *run_end = end,
            _ => runs.push((start, end, stored)),
        }
    }
    if runs.is_empty() {
        runs.push((0, 0, false));
    }
    let count = runs.len();
    for (i, (start, end, stored)) in runs.into_iter().enumerate() {
        let last = job.last && i + 1 == count;
        if stored {
            store_run(&data[start..end], last, &mut out);
            continue;
        }
        // A fresh deflate stream primed with the 32 KiB before the run, as at
        // the start of every block.
        deflate.reset();
        if start >= DEFLATE_WINDOW {
            deflate
                .set_dictionary(&data[start - DEFLATE_WINDOW..start])
                .map_err(io::Error::other)?;
        } else if !job.dict.is_empty() || start > 0 {
            let from_dict = job.dict.len().min(DEFLATE_WINDOW - start);
            let mut window = job.dict[job.dict.len() - from_dict..].to_vec();
            window.extend_from_slice(&data[..start]);
            deflate.set_dictionary(&window).map_err(io::Error::other)?;
        }
        deflate_run(deflate, &data[start..end], last, &mut out)?;
    }
    Ok(out)
}

/// Input is judged compressible or not in pieces of this size.
const PROBE_CHUNK: usize = 64 * 1024;

/// Appends `data` as stored deflate blocks (at most 65535 bytes each); the
/// output is byte-aligned before and after.
fn store_run(data: &[u8], last: bool, out: &mut Vec<u8>) {
    let pieces = data.len().div_ceil(0xffff);
    for (i, piece) in data.chunks(0xffff).enumerate() {
        let len = piece.len() as u16;
        out.push(u8::from(last && i + 1 == pieces));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(piece);
    }
}

fn deflate_run(
    deflate: &mut flate2::Compress,
    data: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut consumed = 0;
    loop {
        out.reserve(data.len() - consumed + (data.len() - consumed) / 16 + 1024);
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(&data[consumed..], out, flush)
            .map_err(io::Error::other)?;
        consumed += (deflate.total_in() - before) as usize;
        let done = match status {
            Status::StreamEnd => true,
            // A sync flush is complete once all input is taken and the
            // output was not filled: zlib had room for everything.
            Status::Ok | Status::BufError => {
                !last && consumed == data.len() && out.len() < out.capacity()
            }
        };
        if done {
            return Ok(());
        }
    }
}

/// Whether deflate would save next to nothing on `data`: its byte entropy
/// leaves Huffman coding under 3% to gain, and hardly any position starts a
/// 4-byte repeat within deflate's window for LZ77 to use. Random data fails
/// both tests by far; text, code and binaries pass the first.
fn incompressible(data: &[u8]) -> bool {
    if data.len() < 1024 {
        return false;
    }
    // The byte histogram of a quarter of the data (the first 16 of every 64
    // bytes) estimates the entropy well enough: for random data the estimate
    // stays far above the threshold, for text far below. Four interleaved
    // histograms avoid stalls on repeated bytes.
    let mut hist = [[0u32; 256]; 4];
    let mut sampled = 0usize;
    for group in data.chunks(64) {
        let group = &group[..group.len().min(16)];
        let mut quads = group.chunks_exact(4);
        for q in &mut quads {
            hist[0][q[0] as usize] += 1;
            hist[1][q[1] as usize] += 1;
            hist[2][q[2] as usize] += 1;
            hist[3][q[3] as usize] += 1;
        }
        for &b in quads.remainder() {
            hist[0][b as usize] += 1;
        }
        sampled += group.len();
    }
    let n = sampled as f64;
    let bits: f64 = (0..256)
        .map(|i| f64::from(hist[0][i] + hist[1][i] + hist[2][i] + hist[3][i]))
        .filter(|&c| c > 0.0)
        .map(|c| c * (n / c).log2())
        .sum();
    if bits < 0.97 * 8.0 * n {
        return false;
    }
    // Only positions whose 4 bytes hash into one sixteenth of the range are
    // looked at: the choice depends on content, not offset, so a repeat
    // samples the same positions as its original.
    const SLOT_BITS: u32 = 13;
    let mut table = [(u32::MAX, 0u32); 1 << SLOT_BITS];
    let (mut samples, mut matches) = (0usize, 0usize);
    for (i, w) in data.windows(4).enumerate() {
        let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let h = v.wrapping_mul(0x9E37_79B1);
        if h >> 28 != 0 {
            continue;
        }
        samples += 1;
        let slot = &mut table[((h >> 16) as usize) & ((1 << SLOT_BITS) - 1)];
        if slot.0 != u32::MAX && slot.1 == v && i - slot.0 as usize <= DEFLATE_WINDOW {
            matches += 1;
        }
        *slot = (i as u32, v);
    }
    matches * 50 < samples
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let words = [
            "layer ", "tar ", "digest ", "zstd ", "gzip ", "overlay ", "\n",
        ];
        let mut x: u32 = 12345;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if x % 5 == 0 {
                out.push((x >> 16) as u8);
            } else {
                out.extend_from_slice(words[(x >> 16) as usize % words.len()].as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    fn round_trip(opts: CompressionOptions, data: &[u8]) -> Vec<u8> {
        let mut c = compressor(Vec::new(), &opts).unwrap();
        // Odd write sizes cross block boundaries at every offset.
        for chunk in data.chunks(77_777) {
            c.write_all(chunk).unwrap();
        }
        let compressed = c.finish().unwrap();
        assert_eq!(detect(&compressed), opts.kind, "{opts:?}");
        let mut back = Vec::new();
        decompressor(&compressed[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "{opts:?}");
        compressed
    }

    #[test]
    fn every_kind_round_trips() {
        for len in [
            0,
            1,
            GZIP_BLOCK - 1,
            GZIP_BLOCK,
            GZIP_BLOCK + 1,
            3 * GZIP_BLOCK + 12345,
        ] {
            let data = sample(len);
            for kind in [Compression::None, Compression::Gzip, Compression::Zstd] {
                round_trip(CompressionOptions::new(kind), &data);
            }
        }
    }

    #[test]
    fn parallel_gzip_is_read_by_flate2_single_member_decoder() {
        let data = sample(5 * GZIP_BLOCK + 3);
        let gz = round_trip(CompressionOptions::new(Compression::Gzip), &data);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        assert!(
            gz.len() < data.len() / 2,
            "text must compress: {} of {}",
            gz.len(),
            data.len()
        );
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn incompressibility_probe() {
        assert!(incompressible(&random(PROBE_CHUNK, 1)));
        assert!(!incompressible(&sample(PROBE_CHUNK)));
        // Random bytes repeated within deflate's window: high byte entropy,
        // yet LZ77 halves them.
        let half = random(PROBE_CHUNK / 4, 2);
        let repeated: Vec<u8> = half
            .iter()
            .chain(&half)
            .chain(&half)
            .chain(&half)
            .copied()
            .collect();
        assert!(!incompressible(&repeated));
        assert!(
            !incompressible(&random(100, 3)),
            "tiny inputs are left to deflate"
        );
    }

    #[test]
    fn mixed_random_and_text_gzip_round_trips_and_stays_compact() {
        // Runs of random bytes between text, across block and probe borders,
        // and a final random run so the stream ends in a stored block.
        let mut data = Vec::new();
        for i in 0..7u64 {
            data.extend(sample(300_000 + i as usize * 1234));
            data.extend(random(200_000 + i as usize * 777, i + 10));
        }
        let gz = round_trip(CompressionOptions::new(Compression::Gzip), &data);
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        plain.write_all(&data).unwrap();
        let plain = plain.finish().unwrap();
        // Storing the random runs must not cost more than a fraction of a
        // percent against deflating everything.
        assert!(
            gz.len() as f64 <= plain.len() as f64 * 1.005,
            "{} vs {}",
            gz.len(),
            plain.len()
        );
        let mut child = std::process::Command::new("gzip")
            .arg("-t")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run gzip -t");
        child.stdin.take().expect("piped").write_all(&gz).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "gzip -t rejects the stream"
        );
        let random_only = random(3 * GZIP_BLOCK, 99);
        let gz = round_trip(CompressionOptions::new(Compression::Gzip), &random_only);
        assert!(gz.len() < random_only.len() + random_only.len() / 1000 + 64);
    }

    #[test]
    fn gzip_output_does_not_depend_on_thread_count() {
        let data = sample(4 * GZIP_BLOCK + 99);
        let run = |threads| {
            let mut g = ParallelGzip::new(Vec::new(), 6, threads).unwrap();
            g.write_all(&data).unwrap();
            g.finish().unwrap()
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn levels_are_validated() {
        for (kind, level) in [
            (Compression::Gzip, 10),
            (Compression::Gzip, -1),
            (Compression::Zstd, 23),
            (Compression::Zstd, 0),
        ] {
            let err = compressor(Vec::new(), &CompressionOptions::with_level(kind, level)).err();
            assert!(
                matches!(err, Some(CompressionError::InvalidLevel { .. })),
                "{kind} {level}"
            );
        }
        for (kind, level) in [
            (Compression::Gzip, 1),
            (Compression::Gzip, 9),
            (Compression::Zstd, 19),
            (Compression::Zstd, -5),
        ] {
            round_trip(
                CompressionOptions::with_level(kind, level),
                &sample(100_000),
            );
        }
    }

    #[test]
    fn detects_magic_bytes() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(detect(&[0x5e, 0x2a, 0x4d, 0x18]), Compression::Zstd);
        assert_eq!(detect(b"etc/\0\0\0"), Compression::None);
        assert_eq!(detect(&[0x1f]), Compression::None);
        assert_eq!(detect(&[]), Compression::None);
    }

    #[test]
    fn media_types_and_names() {
        for kind in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(Compression::from_media_type(kind.media_type()), Some(kind));
            assert_eq!(kind.name().parse::<Compression>().unwrap(), kind);
        }
        assert_eq!(
            Compression::from_media_type(DOCKER_MEDIA_TYPE_TAR_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
        assert!("brotli".parse::<Compression>().is_err());
    }

    /// A reader that returns one byte per call, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    #[test]
    fn short_reads_do_not_defeat_sniffing() {
        let data = sample(10_000);
        let mut c = compressor(Vec::new(), &CompressionOptions::new(Compression::Zstd)).unwrap();
        c.write_all(&data).unwrap();
        let z = c.finish().unwrap();
        let mut back = Vec::new();
        decompressor(Trickle(&z))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
