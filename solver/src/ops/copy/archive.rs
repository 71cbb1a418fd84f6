//! ADD's archive handling: a local tar (plain, gzip, bzip2, xz or zstd,
//! recognised by content as Docker does, never by name) is unpacked into the
//! destination directory.
//!
//! Extraction follows BuildKit's rules for ADD: names are taken relative to
//! the destination (a leading `/` is dropped, a `..` that leaves it is an
//! error), links already in the destination are followed inside it for
//! parent directories (an absolute target starts from the destination, a
//! relative one may not climb out), an existing entry is replaced rather
//! than written through, and entries keep the archive's owners unless
//! `--chown` is given. Devices and fifos are refused.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::CopyError;
use super::chown::Owner;
use super::resolve::{Escape, ResolveError, Tree, display_abs};
use super::tree::{Stamp, Writer, create_file, set_times};

/// How an archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    fn from_magic(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(b"BZh") {
            Compression::Bzip2
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A decompressing reader over `input`.
fn decompress<'r, R: Read + 'r>(
    input: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'r>> {
    let input = BufReader::with_capacity(256 * 1024, input);
    Ok(match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
    })
}

/// Whether `file` is a tar archive, possibly compressed: its first header
/// must decompress and parse (with a valid checksum), as Docker checks it.
/// Returns the compression, and leaves the file at its start.
pub(super) fn detect(file: &mut File) -> io::Result<Option<Compression>> {
    file.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 6];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    let compression = Compression::from_magic(&magic[..got]);
    let is_tar = match decompress(&mut *file, compression) {
        Ok(reader) => {
            let mut archive = tar::Archive::new(reader);
            matches!(archive.entries().map(|mut e| e.next()), Ok(Some(Ok(_))))
        }
        Err(_) => false,
    };
    file.seek(SeekFrom::Start(0))?;
    Ok(is_tar.then_some(compression))
}

/// A tar name made relative to the extraction root; `None` for the root
/// itself. A name that leaves the root is refused.
fn clean_name(raw: &[u8]) -> Result<Option<PathBuf>, String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = PathBuf::new();
    let raw_path: &Path =
        Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(raw));
    for part in raw_path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                if !out.pop() {
                    return Err(format!("archive path {text:?} is outside extraction root"));
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Unpacks the archive in `file` into the target directory `dest_rel`
/// (existing, resolved).
pub(super) fn extract(
    writer: &mut Writer<'_>,
    file: &mut File,
    compression: Compression,
    archive_name: &str,
    dest_rel: &Path,
) -> Result<(), CopyError> {
    let bad = |reason: String| CopyError::Archive {
        archive: archive_name.to_owned(),
        reason,
    };
    let io_bad = |what: String| {
        move |source: io::Error| CopyError::ArchiveIo {
            archive: archive_name.to_owned(),
            what,
            source,
        }
    };
    file.seek(SeekFrom::Start(0))
        .map_err(io_bad("rewind".into()))?;
    let reader = decompress(&mut *file, compression).map_err(io_bad("decompress".into()))?;
    let root_host = writer.dest.host_path(dest_rel);
    let root = Tree::new(&root_host, None, Escape::Archive);
    let mut archive = tar::Archive::new(reader);
    let mut dirs: Vec<(PathBuf, Stamp)> = Vec::new();
    let entries = archive.entries().map_err(io_bad("read".into()))?;
    for entry in entries {
        writer.check_cancel()?;
        let mut entry = entry.map_err(io_bad("read".into()))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let raw_name = entry.path_bytes().into_owned();
        let Some(name) = clean_name(&raw_name).map_err(bad)? else {
            continue;
        };
        let shown = display_abs(&name);
        let header = entry.header();
        let owner = match writer.chown {
            Some(owner) => owner,
            None => Owner {
                uid: header
                    .uid()
                    .map_err(io_bad(format!("read owner of {shown}")))? as u32,
                gid: header
                    .gid()
                    .map_err(io_bad(format!("read owner of {shown}")))? as u32,
            },
        };
        let mode = header
            .mode()
            .map_err(io_bad(format!("read mode of {shown}")))?
            & 0o7777;
        let mtime = writer.clamp(Stamp {
            sec: header
                .mtime()
                .map_err(io_bad(format!("read time of {shown}")))? as i64,
            nsec: 0,
        });
        let is_dir = kind.is_dir();
        let at = root
            .resolve(&name, is_dir)
            .map_err(|e| archive_resolve_error(archive_name, &name, e))?;
        if at.as_os_str().is_empty() {
            continue;
        }
        // Directories the archive implies but does not list: root-owned
        // 0755, as BuildKit makes them.
        if let Some(parent) = at.parent() {
            let mut cur = PathBuf::new();
            for part in parent.components() {
                cur.push(part);
                match root
                    .lstat(&cur)
                    .map_err(|e| archive_resolve_error(archive_name, &cur, e))?
                {
                    Some(meta) if meta.is_dir() => {}
                    Some(_) => {
                        return Err(bad(format!("{} is not a directory", display_abs(&cur))));
                    }
                    None => {
                        let host = root.host_path(&cur);
                        let what = format!("create {}", display_abs(&cur));
                        fs::create_dir(&host).map_err(io_bad(what.clone()))?;
                        std::os::unix::fs::lchown(&host, Some(0), Some(0))
                            .map_err(io_bad(what.clone()))?;
                        {
                            use std::os::unix::fs::PermissionsExt;
                            fs::set_permissions(&host, fs::Permissions::from_mode(0o755))
                                .map_err(io_bad(what))?;
                        }
                        writer.stats.directories += 1;
                        dirs.push((host, writer.created));
                    }
                }
            }
        }
        let host = root.host_path(&at);
        let existing = root
            .lstat(&at)
            .map_err(|e| archive_resolve_error(archive_name, &at, e))?;
        match existing {
            Some(meta) if meta.is_dir() && is_dir => {}
            Some(meta) if meta.is_dir() => fs::remove_dir_all(&host)
                .map_err(io_bad(format!("replace {}", display_abs(&at))))?,
            Some(_) => {
                fs::remove_file(&host).map_err(io_bad(format!("replace {}", display_abs(&at))))?
            }
            None => {}
        }
        let set_owner = |host: &Path| {
            std::os::unix::fs::lchown(host, Some(owner.uid), Some(owner.gid))
                .map_err(io_bad(format!("set owner of {shown}")))
        };
        let set_mode = |host: &Path| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(host, fs::Permissions::from_mode(mode))
                .map_err(io_bad(format!("set mode of {shown}")))
        };
        if is_dir {
            if !host.is_dir() {
                fs::create_dir(&host).map_err(io_bad(format!("create {shown}")))?;
                writer.stats.directories += 1;
            }
            set_owner(&host)?;
            set_mode(&host)?;
            dirs.push((host, mtime));
        } else if kind.is_file() || kind.is_contiguous() {
            let mut out = create_file(&host).map_err(io_bad(format!("create {shown}")))?;
            let n = io::copy(&mut entry, &mut out).map_err(io_bad(format!("write {shown}")))?;
            drop(out);
            set_owner(&host)?;
            set_mode(&host)?;
            set_times(&host, mtime, mtime).map_err(io_bad(format!("set times of {shown}")))?;
            writer.stats.files += 1;
            writer.stats.bytes += n;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| bad(format!("symlink {shown} has no target")))?
                .into_owned();
            let target = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(target);
            std::os::unix::fs::symlink(&target, &host)
                .map_err(io_bad(format!("create symlink {shown}")))?;
            set_owner(&host)?;
            set_times(&host, mtime, mtime).map_err(io_bad(format!("set times of {shown}")))?;
            writer.stats.symlinks += 1;
        } else if kind.is_hard_link() {
            let raw = entry
                .link_name_bytes()
                .ok_or_else(|| bad(format!("hardlink {shown} has no target")))?
                .into_owned();
            let Some(link) = clean_name(&raw).map_err(bad)? else {
                return Err(bad(format!("hardlink {shown} targets the extraction root")));
            };
            let link = root
                .resolve(&link, false)
                .map_err(|e| archive_resolve_error(archive_name, &link, e))?;
            fs::hard_link(root.host_path(&link), &host)
                .map_err(io_bad(format!("link {shown} to {}", display_abs(&link))))?;
            let linked = host
                .symlink_metadata()
                .map_err(io_bad(format!("stat {shown}")))?;
            set_owner(&host)?;
            if !linked.file_type().is_symlink() {
                set_mode(&host)?;
                set_times(&host, mtime, mtime).map_err(io_bad(format!("set times of {shown}")))?;
            }
            writer.stats.files += 1;
        } else {
            return Err(bad(format!(
                "unsupported tar entry {shown} of type {:?}",
                kind.as_byte() as char
            )));
        }
    }
    for (host, mtime) in dirs.into_iter().rev() {
        set_times(&host, mtime, mtime).map_err(|source| CopyError::ArchiveIo {
            archive: archive_name.to_owned(),
            what: format!("set times of {}", host.display()),
            source,
        })?;
    }
    Ok(())
}

fn archive_resolve_error(archive: &str, name: &Path, e: ResolveError) -> CopyError {
    match e {
        ResolveError::Escapes { link, .. } => CopyError::Archive {
            archive: archive.to_owned(),
            reason: format!(
                "archive symlink {} points outside extraction root (resolving {})",
                display_abs(&link),
                display_abs(name)
            ),
        },
        ResolveError::Loop { path } => CopyError::Archive {
            archive: archive.to_owned(),
            reason: format!("too many symlinks resolving {}", display_abs(&path)),
        },
        ResolveError::Io { path, source } => CopyError::ArchiveIo {
            archive: archive.to_owned(),
            what: format!("stat {}", display_abs(&path)),
            source,
        },
    }
}
