//! Hostile layers: hand-made tars that try to write outside the destination,
//! through planted links, with forged whiteouts or broken streams. Every case
//! unpacks into `jail/dest`, with sentinel files around it in `jail/`, and
//! checks that nothing outside `dest` changed, then that the case ended in
//! the expected error or in a contained result. Needs root (devices, chown,
//! trusted xattrs), as CI provides.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cache::Digest;
use cache::layer::LayerError;
use cache::layer::extract::{UnpackOptions, unpack_layer};
use cache::snapshot::{LayerRef, SnapshotError, Snapshots};
use cache::store::Store;
use tar::{EntryType, Header};

mod common;
use common::{gzip, require_root, root_opts};

/// Builds tars header by header, with raw names the `tar` builder refuses.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(name: &[u8], ty: EntryType, size: u64) -> Header {
        let mut h = Header::new_ustar();
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(if ty == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    fn raw(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(
            Self::header(name.as_bytes(), EntryType::Regular, data.len() as u64),
            data,
        )
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(Self::header(name.as_bytes(), EntryType::Directory, 0), b"")
    }

    fn link(&mut self, ty: EntryType, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), ty, 0);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, name, target)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, name, target)
    }

    fn device(&mut self, name: &str, ty: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), ty, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, b"")
    }

    /// A PAX extended header for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        let h = Self::header(b"PaxHeaders/entry", EntryType::XHeader, body.len() as u64);
        self.raw(h, &body)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.resize(out.len() + 1024, 0);
        out
    }
}

fn zstd_with_checksum(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A fresh jail: `dest` to unpack into, surrounded by sentinels.
struct Jail {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Jail {
    fn new() -> Jail {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::write(root.join("sentinel"), b"sentinel").unwrap();
        fs::create_dir(root.join("outside")).unwrap();
        fs::write(root.join("outside/keep"), b"keep").unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::create_dir(root.join("dest")).unwrap();
        Jail { _dir: dir, root }
    }

    fn dest(&self) -> PathBuf {
        self.root.join("dest")
    }

    /// `jail/outside` as an absolute path, for symlinks that escape `dest`.
    fn outside(&self) -> String {
        self.root.join("outside").to_str().unwrap().to_string()
    }

    /// Everything in the jail except `dest`, described without following links.
    fn state(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        describe(&self.root, &self.root, Some(&self.dest()), &mut out);
        out
    }
}

fn describe(root: &Path, path: &Path, skip: Option<&Path>, out: &mut BTreeMap<PathBuf, String>) {
    let meta = fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    let mut xattrs: Vec<String> = xattr::list(path)
        .unwrap()
        .map(|n| {
            let v = xattr::get(path, &n).unwrap().unwrap_or_default();
            format!("{}={:?}", n.to_string_lossy(), v)
        })
        .collect();
    xattrs.sort();
    let what = if ft.is_file() {
        format!("file {}", Digest::of(&fs::read(path).unwrap()))
    } else if ft.is_symlink() {
        format!("symlink {:?}", fs::read_link(path).unwrap())
    } else if ft.is_dir() {
        "dir".to_string()
    } else {
        format!("special {:?} {}", ft, meta.rdev())
    };
    out.insert(
        path.strip_prefix(root).unwrap().to_path_buf(),
        format!(
            "{what} mode={:o} uid={} gid={} nlink={} mtime={}.{} xattrs={xattrs:?}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.nlink(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
    );
    if ft.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            let child = entry.unwrap().path();
            if Some(child.as_path()) != skip {
                describe(root, &child, skip, out);
            }
        }
    }
}

fn nlink(path: &str) -> u64 {
    fs::symlink_metadata(path).unwrap().nlink()
}

/// Unpacks `layer` into a fresh jail, asserts that nothing outside `dest`
/// changed (nor the host's /etc/passwd), and returns the result with the jail.
fn run(
    layer: &[u8],
    opts: &UnpackOptions,
) -> (Result<cache::layer::extract::UnpackStats, LayerError>, Jail) {
    let jail = Jail::new();
    let before = jail.state();
    let passwd_links = nlink("/etc/passwd");
    let result = unpack_layer(layer, &jail.dest(), opts);
    assert_eq!(
        jail.state(),
        before,
        "something outside dest changed: {result:?}"
    );
    assert_eq!(
        nlink("/etc/passwd"),
        passwd_links,
        "/etc/passwd gained a link"
    );
    (result, jail)
}

fn expect_unsafe(layer: &[u8]) -> Jail {
    let (result, jail) = run(layer, &root_opts());
    match result {
        Err(LayerError::UnsafePath { .. }) => jail,
        other => panic!("expected an unsafe-path error, got {other:?}"),
    }
}

fn expect_contained(layer: &[u8]) -> Jail {
    let (result, jail) = run(layer, &root_opts());
    if let Err(e) = result {
        panic!("expected a contained result, got {e:?}");
    }
    jail
}

#[test]
fn dotdot_escape_is_refused() {
    if !require_root() {
        return;
    }
    expect_unsafe(&Tar::default().file("../escape", b"x").finish());
}

#[test]
fn dotdot_inside_a_path_is_refused() {
    if !require_root() {
        return;
    }
    let jail = expect_unsafe(
        &Tar::default()
            .dir("a")
            .file("a/../../escape", b"x")
            .finish(),
    );
    assert!(!jail.root.join("escape").exists());
}

#[test]
fn dotdot_in_a_pax_path_is_refused() {
    if !require_root() {
        return;
    }
    // The header name is innocent; the PAX record overrides it.
    let layer = Tar::default()
        .pax(&[("path", b"../pax-escape")])
        .file("innocent", b"x")
        .finish();
    expect_unsafe(&layer);
}

#[test]
fn dotdot_in_a_gnu_long_name_is_refused() {
    if !require_root() {
        return;
    }
    let long = format!("{}/../../../long-escape", "d".repeat(120));
    let mut tar = Tar::default();
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(long.len() as u64 + 1);
    h.set_mode(0o644);
    let mut name = long.into_bytes();
    name.push(0);
    tar.raw(h, &name);
    expect_unsafe(&tar.file("placeholder", b"x").finish());
}

#[test]
fn overlong_deep_path_is_refused() {
    if !require_root() {
        return;
    }
    // 2600 levels: deep enough to hurt recursive removal, and beyond PATH_MAX.
    let deep = "a/".repeat(2600) + "leaf";
    let layer = Tar::default()
        .pax(&[("path", deep.as_bytes())])
        .file("placeholder", b"x")
        .finish();
    let jail = expect_unsafe(&layer);
    assert!(!jail.dest().join("a").exists());
    // A deep path within the limit still works.
    let deep = "b/".repeat(1000) + "leaf";
    let layer = Tar::default()
        .pax(&[("path", deep.as_bytes())])
        .file("placeholder", b"deep")
        .finish();
    let jail = expect_contained(&layer);
    assert_eq!(fs::read(jail.dest().join(&deep)).unwrap(), b"deep");
}

#[test]
fn absolute_path_lands_inside_dest() {
    if !require_root() {
        return;
    }
    let name = "/etc/builder-hostile-test-absolute";
    let jail = expect_contained(&Tar::default().file(name, b"contained").finish());
    assert_eq!(
        fs::read(jail.dest().join("etc/builder-hostile-test-absolute")).unwrap(),
        b"contained"
    );
    assert!(!Path::new(name).exists());
}

#[test]
fn write_through_absolute_symlink_is_refused() {
    if !require_root() {
        return;
    }
    let jail = Jail::new();
    let layer = Tar::default()
        .symlink("evil", &jail.outside())
        .file("evil/pwned", b"x")
        .finish();
    let jail = expect_unsafe(&layer);
    assert!(!jail.root.join("outside/pwned").exists());
}

#[test]
fn write_through_relative_dotdot_symlink_is_refused() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .symlink("up", "../..")
        .file("up/pwned", b"x")
        .finish();
    expect_unsafe(&layer);
}

#[test]
fn overwrite_through_symlinked_directory_is_refused() {
    if !require_root() {
        return;
    }
    // `d` points at the jail's `outside`, whose `keep` the layer tries to replace.
    let outside = Jail::new().outside();
    let layer = Tar::default()
        .symlink("d", "../outside")
        .symlink("abs", &outside)
        .file("d/keep", b"overwritten")
        .finish();
    let jail = expect_unsafe(&layer);
    assert_eq!(fs::read(jail.root.join("outside/keep")).unwrap(), b"keep");
}

#[test]
fn symlink_chain_is_not_followed() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .symlink("b", "../outside")
        .symlink("a", "b")
        .file("a/new", b"x")
        .finish();
    expect_unsafe(&layer);
}

#[test]
fn hardlink_to_host_etc_passwd_is_refused() {
    if !require_root() {
        return;
    }
    // `/etc/passwd` is read as `etc/passwd` inside dest, where there is none.
    let (result, jail) = run(
        &Tar::default().hardlink("pw", "/etc/passwd").finish(),
        &root_opts(),
    );
    assert!(
        matches!(result, Err(LayerError::UnsafePath { .. })),
        "{result:?}"
    );
    assert!(!jail.dest().join("pw").exists());
}

#[test]
fn hardlink_to_dotdot_target_is_refused() {
    if !require_root() {
        return;
    }
    expect_unsafe(&Tar::default().hardlink("h", "../outside/keep").finish());
}

#[test]
fn hardlink_through_symlinked_parent_is_refused() {
    if !require_root() {
        return;
    }
    let outside = Jail::new().outside();
    let layer = Tar::default()
        .symlink("s", &outside)
        .symlink("r", "../outside")
        .hardlink("h1", "s/keep")
        .finish();
    expect_unsafe(&layer);
    let layer = Tar::default()
        .symlink("r", "../outside")
        .hardlink("h2", "r/keep")
        .finish();
    expect_unsafe(&layer);
}

#[test]
fn hardlink_to_a_directory_fails_cleanly() {
    if !require_root() {
        return;
    }
    let (result, _) = run(
        &Tar::default().dir("d").hardlink("h", "d").finish(),
        &root_opts(),
    );
    assert!(matches!(result, Err(LayerError::Io { .. })), "{result:?}");
}

#[test]
fn file_replacing_a_hardlink_does_not_write_through_it() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .file("victim", b"original")
        .hardlink("h", "victim")
        .file("h", b"replacement")
        .finish();
    let jail = expect_contained(&layer);
    assert_eq!(fs::read(jail.dest().join("victim")).unwrap(), b"original");
    assert_eq!(fs::read(jail.dest().join("h")).unwrap(), b"replacement");
    assert_eq!(nlink(jail.dest().join("victim").to_str().unwrap()), 1);
}

#[test]
fn whiteouts_naming_dot_or_dotdot_or_nothing_are_refused() {
    if !require_root() {
        return;
    }
    for name in [".wh...", ".wh..", ".wh.", "sub/.wh...", "sub/.wh."] {
        let jail = expect_unsafe(&Tar::default().dir("sub").file(name, b"").finish());
        assert!(jail.root.join("sentinel").exists(), "{name}");
    }
}

#[test]
fn whiteout_through_symlinked_parent_is_refused() {
    if !require_root() {
        return;
    }
    let outside = Jail::new().outside();
    let layer = Tar::default()
        .symlink("s", &outside)
        .symlink("r", "../outside")
        .file("s/.wh.keep", b"")
        .finish();
    expect_unsafe(&layer);
    expect_unsafe(
        &Tar::default()
            .symlink("r", "../outside")
            .file("r/.wh.keep", b"")
            .finish(),
    );
}

#[test]
fn opaque_marker_inside_symlinked_dir_is_refused() {
    if !require_root() {
        return;
    }
    // The jail state includes xattrs, so an opaque mark on `outside` would show.
    let outside = Jail::new().outside();
    let layer = Tar::default()
        .symlink("s", &outside)
        .symlink("r", "../outside")
        .file("s/.wh..wh..opq", b"")
        .finish();
    expect_unsafe(&layer);
    expect_unsafe(
        &Tar::default()
            .symlink("r", "../outside")
            .file("r/.wh..wh..opq", b"")
            .finish(),
    );
}

#[test]
fn devices_are_refused_without_allow_devices() {
    if !require_root() {
        return;
    }
    let opts = UnpackOptions {
        allow_devices: false,
        ..root_opts()
    };
    for ty in [EntryType::Char, EntryType::Block] {
        let layer = Tar::default().device("dev", ty, 8, 0).finish();
        let (result, jail) = run(&layer, &opts);
        assert!(
            matches!(result, Err(LayerError::DeviceNotAllowed { .. })),
            "{ty:?}: {result:?}"
        );
        assert!(fs::symlink_metadata(jail.dest().join("dev")).is_err());
    }
    // A fifo is not a device, and a 0:0 character device is a whiteout.
    let layer = Tar::default()
        .device("fifo", EntryType::Fifo, 0, 0)
        .device("wh", EntryType::Char, 0, 0)
        .finish();
    let (result, jail) = run(&layer, &opts);
    result.unwrap();
    assert!(
        fs::symlink_metadata(jail.dest().join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(jail.dest().join("wh"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[test]
fn duplicate_file_then_dir_becomes_a_dir() {
    if !require_root() {
        return;
    }
    let jail = expect_contained(
        &Tar::default()
            .file("a", b"file")
            .dir("a")
            .file("a/b", b"b")
            .finish(),
    );
    assert!(jail.dest().join("a").is_dir());
    assert_eq!(fs::read(jail.dest().join("a/b")).unwrap(), b"b");
}

#[test]
fn duplicate_dir_then_symlink_replaces_without_following() {
    if !require_root() {
        return;
    }
    let outside = Jail::new().outside();
    let layer = Tar::default()
        .dir("a")
        .file("a/x", b"x")
        .symlink("a", &outside)
        .symlink("b", "../outside")
        .finish();
    let jail = expect_contained(&layer);
    assert!(
        fs::symlink_metadata(jail.dest().join("a"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // And a later write through the new symlink is refused.
    let layer = Tar::default()
        .dir("a")
        .symlink("a", "../outside")
        .file("a/y", b"y")
        .finish();
    expect_unsafe(&layer);
}

#[test]
fn duplicate_symlink_then_file_replaces_the_link() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .symlink("f", "../outside/keep")
        .file("f", b"mine")
        .symlink("g", "../etc/passwd")
        .file("g", b"mine too")
        .finish();
    let jail = expect_contained(&layer);
    assert_eq!(fs::read(jail.dest().join("f")).unwrap(), b"mine");
    assert!(
        fs::symlink_metadata(jail.dest().join("g"))
            .unwrap()
            .is_file()
    );
}

#[test]
fn duplicate_symlink_then_dir_replaces_the_link() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .symlink("d", "../outside")
        .dir("d")
        .file("d/inside", b"x")
        .finish();
    let jail = expect_contained(&layer);
    assert!(
        fs::symlink_metadata(jail.dest().join("d"))
            .unwrap()
            .is_dir()
    );
    assert!(jail.dest().join("d/inside").is_file());
}

#[test]
fn truncated_gzip_is_an_error() {
    if !require_root() {
        return;
    }
    let gz = gzip(
        &Tar::default()
            .file("a", &[7u8; 100_000])
            .file("b", b"b")
            .finish(),
    );
    for cut in [gz.len() - 4, gz.len() / 2, 20] {
        let (result, _) = run(&gz[..cut], &root_opts());
        assert!(
            matches!(result, Err(LayerError::Truncated { .. })),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn corrupted_gzip_is_an_error() {
    if !require_root() {
        return;
    }
    let gz = gzip(
        &Tar::default()
            .file("a", b"hello world, a small file")
            .finish(),
    );
    // The CRC32 in the trailer: the data inflates fine, only the check fails.
    let mut bad = gz.clone();
    let at = gz.len() - 8;
    bad[at] ^= 0x55;
    let (result, _) = run(&bad, &root_opts());
    assert!(
        matches!(result, Err(LayerError::Corrupt { .. })),
        "{result:?}"
    );
    // A byte of the deflate data: an invalid code, or output the CRC rejects.
    let mut bad = gz.clone();
    bad[gz.len() / 2] ^= 0x55;
    let (result, _) = run(&bad, &root_opts());
    assert!(
        matches!(result, Err(LayerError::Corrupt { .. })),
        "{result:?}"
    );
}

#[test]
fn truncated_zstd_is_an_error() {
    if !require_root() {
        return;
    }
    let zst = zstd_with_checksum(&Tar::default().file("a", &[1u8; 50_000]).finish());
    for cut in [zst.len() - 2, zst.len() / 2] {
        let (result, _) = run(&zst[..cut], &root_opts());
        assert!(
            matches!(result, Err(LayerError::Truncated { .. })),
            "cut at {cut}: {result:?}"
        );
    }
}

#[test]
fn corrupted_zstd_is_an_error() {
    if !require_root() {
        return;
    }
    let data: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let zst = zstd_with_checksum(&Tar::default().file("a", &data).finish());
    for at in [zst.len() - 2, zst.len() / 2] {
        let mut bad = zst.clone();
        bad[at] ^= 0x55;
        let (result, _) = run(&bad, &root_opts());
        assert!(
            matches!(result, Err(LayerError::Corrupt { .. })),
            "flip at {at}: {result:?}"
        );
    }
}

#[test]
fn bad_header_checksum_is_an_error() {
    if !require_root() {
        return;
    }
    let mut layer = Tar::default().file("a", b"a").file("b", b"b").finish();
    layer[1024 + 10] ^= 1; // the name of `b`, after its checksum was computed
    let (result, jail) = run(&layer, &root_opts());
    assert!(
        matches!(result, Err(LayerError::Corrupt { .. })),
        "{result:?}"
    );
    assert!(!jail.dest().join("b").exists());
}

#[test]
fn huge_size_with_little_data_is_truncated() {
    if !require_root() {
        return;
    }
    let mut tar = Tar::default();
    tar.raw(
        Tar::header(b"huge", EntryType::Regular, 1 << 40),
        b"only a little data",
    );
    let (result, _) = run(&tar.0, &root_opts());
    assert!(
        matches!(result, Err(LayerError::Truncated { .. })),
        "{result:?}"
    );
    // The same for a directory entry whose data the reader must skip.
    let mut tar = Tar::default();
    tar.raw(Tar::header(b"d", EntryType::Directory, 1 << 40), b"xx");
    let (result, _) = run(&tar.0, &root_opts());
    assert!(
        matches!(result, Err(LayerError::Truncated { .. })),
        "{result:?}"
    );
}

#[test]
fn missing_end_of_archive_is_truncated() {
    if !require_root() {
        return;
    }
    let layer = Tar::default().file("a", b"a").finish();
    let (result, _) = run(&layer[..1024], &root_opts());
    assert!(
        matches!(result, Err(LayerError::Truncated { .. })),
        "{result:?}"
    );
    let (result, _) = run(&layer[..700], &root_opts());
    assert!(
        matches!(result, Err(LayerError::Truncated { .. })),
        "{result:?}"
    );
}

#[test]
fn overlay_xattrs_smuggled_in_pax_are_dropped() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.kept", b"1"),
        ])
        .dir("d")
        .finish();
    let jail = expect_contained(&layer);
    let d = jail.dest().join("d");
    let mut names: Vec<String> = xattr::list(&d)
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["user.kept"]);
}

#[test]
fn unsupported_entry_type_is_an_error() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .raw(Tar::header(b"odd", EntryType::new(b'Z'), 0), b"")
        .finish();
    let (result, _) = run(&layer, &root_opts());
    assert!(
        matches!(result, Err(LayerError::UnsupportedEntry { .. })),
        "{result:?}"
    );
}

#[test]
fn entry_replacing_the_root_is_refused() {
    if !require_root() {
        return;
    }
    expect_unsafe(&Tar::default().symlink("./", "../outside").finish());
    expect_unsafe(&Tar::default().file("/", b"x").finish());
}

/// Stores `blob` and returns the store (in a temp dir) and its snapshots.
fn store_with(blob: &[u8]) -> (tempfile::TempDir, Store, Digest) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let digest = store.put_blob(blob).unwrap();
    (dir, store, digest)
}

fn tmp_is_empty(store: &Store) -> bool {
    fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn snapshot_of_a_corrupted_blob_is_refused() {
    if !require_root() {
        return;
    }
    let tar = Tar::default().file("a", b"good").finish();
    let diff_id = Digest::of(&tar);
    let (_dir, store, digest) = store_with(&gzip(&tar));
    // Replace the stored blob by another valid layer: unpacking succeeds,
    // only the digest check can catch it.
    let other = gzip(&Tar::default().file("a", b"evil").finish());
    fs::write(store.blob_path(&digest), &other).unwrap();
    let snapshots = Snapshots::new(&store).durable(false);
    let err = snapshots.ensure(&LayerRef { digest, diff_id }).unwrap_err();
    match err {
        SnapshotError::Unpack {
            source: LayerError::DigestMismatch { what, expected, .. },
            ..
        } => {
            assert_eq!(what, "layer blob");
            assert_eq!(expected, digest);
        }
        other => panic!("expected a blob digest mismatch, got {other:?}"),
    }
    assert!(!snapshots.exists(&diff_id));
    assert!(snapshots.list().unwrap().is_empty());
    assert!(tmp_is_empty(&store));
}

#[test]
fn snapshot_with_a_wrong_diff_id_is_refused() {
    if !require_root() {
        return;
    }
    let tar = Tar::default().file("a", b"good").finish();
    let (_dir, store, digest) = store_with(&gzip(&tar));
    let claimed = Digest::of(b"what a lying config says");
    let snapshots = Snapshots::new(&store).durable(false);
    let err = snapshots
        .ensure(&LayerRef {
            digest,
            diff_id: claimed,
        })
        .unwrap_err();
    match err {
        SnapshotError::Unpack {
            source: LayerError::DigestMismatch { what, actual, .. },
            ..
        } => {
            assert_eq!(what, "diffID");
            assert_eq!(actual, Digest::of(&tar));
        }
        other => panic!("expected a diffID mismatch, got {other:?}"),
    }
    assert!(!snapshots.exists(&claimed));
    assert!(snapshots.list().unwrap().is_empty());
    assert!(tmp_is_empty(&store));
}

#[test]
fn snapshot_of_a_hostile_layer_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let tar = Tar::default()
        .symlink("up", "../..")
        .file("up/pwned", b"x")
        .finish();
    let (dir, store, digest) = store_with(&tar);
    let snapshots = Snapshots::new(&store).durable(false);
    let err = snapshots
        .ensure(&LayerRef {
            digest,
            diff_id: Digest::of(&tar),
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Unpack {
                source: LayerError::UnsafePath { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(snapshots.list().unwrap().is_empty());
    assert!(tmp_is_empty(&store));
    assert!(!dir.path().join("pwned").exists());
}
