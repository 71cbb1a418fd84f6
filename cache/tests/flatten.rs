//! Flattening layer chains: whiteouts delete, opaque directories lose lower
//! content, later layers override, links planted by lower layers are never
//! followed, hardlinks and metadata survive; flattening snapshots and layer
//! blobs agree, and both agree with what the kernel's overlayfs shows for the
//! same snapshots. Needs root (devices, chown, trusted xattrs, mount), as CI
//! provides.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use cache::Digest;
use cache::layer::LayerError;
use cache::layer::extract::unpack_layer;
use cache::layer::flatten::{flatten_layers, flatten_snapshots};
use cache::snapshot::LayerRef;
use cache::store::Store;
use tar::{EntryType, Header};

mod common;
use common::{describe, gzip, require_root, root_opts};

/// Builds tars header by header.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(name: &str, ty: EntryType, size: u64, mode: u32) -> Header {
        let mut h = Header::new_ustar();
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(mode);
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

    fn file_mode(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(
            Self::header(name, EntryType::Regular, data.len() as u64, mode),
            data,
        )
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_mode(name, data, 0o644)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(Self::header(name, EntryType::Directory, 0, 0o755), b"")
    }

    fn link(&mut self, ty: EntryType, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(name, ty, 0, 0o777);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, name, target)
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (key, value) in records {
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() {
                len = rest + len.to_string().len();
            }
            body.extend_from_slice(format!("{len} {key}=").as_bytes());
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        let h = Self::header(
            "PaxHeaders/entry",
            EntryType::XHeader,
            body.len() as u64,
            0o644,
        );
        self.raw(h, &body)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.resize(out.len() + 1024, 0);
        out
    }
}

/// A jail holding `outside/keep` (the target of escaping links) and `dest`.
struct Jail {
    dir: tempfile::TempDir,
}

impl Jail {
    fn new() -> Jail {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/keep"), b"keep").unwrap();
        fs::write(dir.path().join("sentinel"), b"sentinel").unwrap();
        fs::create_dir(dir.path().join("dest")).unwrap();
        Jail { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn dest(&self) -> PathBuf {
        self.root().join("dest")
    }

    fn outside_state(&self) -> BTreeMap<PathBuf, String> {
        let mut state = describe(self.root());
        state.retain(|path, _| !path.starts_with("dest"));
        state.remove(Path::new(""));
        state
    }
}

/// The file name layer 2 tries to plant in the host's /etc through a symlink.
fn host_etc_probe() -> String {
    format!("builder-flatten-test-{}", std::process::id())
}

/// Three layers exercising whiteouts, opaque directories, overrides and
/// links from lower layers that point out of the tree.
fn chain(jail: &Jail) -> Vec<Vec<u8>> {
    let outside = jail.root().join("outside");
    let l1 = Tar::default()
        .dir("etc/")
        .file("etc/passwd", b"v1")
        .file("etc/group", b"g1")
        .file("etc/hosts", b"hosts")
        .dir("opt/")
        .dir("opt/a/")
        .file("opt/a/1", b"1")
        .file("opt/a/2", b"2")
        .dir("opt/a/sub/")
        .file("opt/a/sub/deep", b"deep")
        .dir("data/")
        .file("data/x", b"x")
        .symlink("link", "etc")
        .dir("bin/")
        .file_mode("bin/tool", b"tool", 0o4755)
        .link(EntryType::Link, "bin/alias", "bin/tool")
        .pax(&[
            ("SCHILY.xattr.user.tag", b"1"),
            ("uid", b"1000"),
            ("gid", b"1001"),
        ])
        .file_mode("owned", b"owned", 0o640)
        .symlink("esc", outside.to_str().unwrap())
        .symlink("up", "../../x")
        .symlink("hostetc", "/etc")
        .file("lowerfile", b"will become a dir")
        .finish();
    let l2 = Tar::default()
        .file(".wh.data", b"")
        .dir("opt/")
        .dir("opt/a/")
        .file("opt/a/.wh..wh..opq", b"")
        .file("opt/a/3", b"3")
        .dir("etc/")
        .file_mode("etc/passwd", b"v2", 0o600)
        .file("etc/.wh.group", b"")
        .dir("esc/")
        .file("esc/passwd", b"not in outside")
        .dir("up/")
        .file("up/file", b"not in the jail")
        .dir("hostetc/")
        .file(&format!("hostetc/{}", host_etc_probe()), b"not in /etc")
        .dir("newdir/")
        .file("newdir/n", b"n")
        .dir("lowerfile/")
        .file("lowerfile/inside", b"inside")
        .finish();
    let l3 = Tar::default()
        .dir("data/")
        .file("data/y", b"y")
        .dir("newdir/")
        .file("newdir/.wh.n", b"")
        .finish();
    vec![l1, l2, l3]
}

/// Unpacks each layer into its own snapshot directory.
fn snapshots(layers: &[Vec<u8>]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let path = dir.path().join(format!("s{i}"));
        fs::create_dir(&path).unwrap();
        unpack_layer(&layer[..], &path, &root_opts()).unwrap();
        paths.push(path);
    }
    (dir, paths)
}

fn assert_chain_result(jail: &Jail) {
    let d = jail.dest();
    let read = |p: &str| fs::read(d.join(p)).unwrap();
    let names = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Overrides, with their new mode.
    assert_eq!(read("etc/passwd"), b"v2");
    assert_eq!(
        fs::metadata(d.join("etc/passwd")).unwrap().mode() & 0o7777,
        0o600
    );
    // Whiteouts of a file and of a whole directory, and a directory made again later.
    assert_eq!(names("etc"), ["hosts", "passwd"]);
    assert_eq!(names("data"), ["y"]);
    // The opaque directory keeps only its own layer's content.
    assert_eq!(names("opt/a"), ["3"]);
    // A whiteout in a higher layer removes a file of a middle one.
    assert_eq!(names("newdir"), Vec::<String>::new());
    // A lower file replaced by a directory.
    assert_eq!(read("lowerfile/inside"), b"inside");
    // Hardlinks within a layer stay hardlinks; setuid and owners survive.
    let tool = fs::symlink_metadata(d.join("bin/tool")).unwrap();
    let alias = fs::symlink_metadata(d.join("bin/alias")).unwrap();
    assert_eq!((tool.ino(), tool.nlink()), (alias.ino(), 2));
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    let owned = fs::symlink_metadata(d.join("owned")).unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1001, 0o640)
    );
    assert_eq!(owned.mtime(), 1_600_000_000);
    assert_eq!(
        xattr::get(d.join("owned"), "user.tag").unwrap().unwrap(),
        b"1"
    );
    assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new("etc"));
    // Links planted by layer 1 were replaced by directories, not followed.
    assert!(fs::symlink_metadata(d.join("esc")).unwrap().is_dir());
    assert_eq!(read("esc/passwd"), b"not in outside");
    assert!(fs::symlink_metadata(d.join("up")).unwrap().is_dir());
    assert_eq!(read("up/file"), b"not in the jail");
    assert!(fs::symlink_metadata(d.join("hostetc")).unwrap().is_dir());
    assert!(!Path::new("/etc").join(host_etc_probe()).exists());
    assert!(!jail.root().join("x").exists());
    // No overlay artefacts: no whiteout devices, no overlay xattrs.
    for (path, desc) in describe(&d) {
        assert!(!desc.contains("special"), "{path:?}: {desc}");
        assert!(!desc.contains("overlay"), "{path:?}: {desc}");
    }
}

#[test]
fn flatten_snapshots_applies_whiteouts_opaques_and_overrides() {
    if !require_root() {
        return;
    }
    let jail = Jail::new();
    let before = jail.outside_state();
    let layers = chain(&jail);
    let (_snaps, paths) = snapshots(&layers);
    let stats = flatten_snapshots(&paths, &jail.dest()).unwrap();
    assert_eq!(stats.layers, 3);
    assert_eq!(jail.outside_state(), before, "flatten wrote outside dest");
    assert_chain_result(&jail);
}

#[test]
fn flatten_layers_agrees_with_flatten_snapshots() {
    if !require_root() {
        return;
    }
    let jail = Jail::new();
    let before = jail.outside_state();
    let layers = chain(&jail);
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let refs: Vec<LayerRef> = layers
        .iter()
        .map(|tar| LayerRef {
            digest: store.put_blob(&gzip(tar)).unwrap(),
            diff_id: Digest::of(tar),
        })
        .collect();
    let stats = flatten_layers(&store, &refs, &jail.dest()).unwrap();
    assert_eq!(stats.layers, 3);
    assert_eq!(jail.outside_state(), before, "flatten wrote outside dest");
    assert_chain_result(&jail);

    let other = Jail::new();
    let (_snaps, paths) = snapshots(&chain(&other));
    flatten_snapshots(&paths, &other.dest()).unwrap();
    let mut from_layers = describe(&jail.dest());
    let mut from_snapshots = describe(&other.dest());
    // The roots differ: snapshots carry their own directory's metadata.
    from_layers.remove(Path::new(""));
    from_snapshots.remove(Path::new(""));
    // `esc` pointed into each jail, and is a directory in both results now.
    assert_eq!(from_layers, from_snapshots);
}

#[test]
fn flatten_layers_checks_digests() {
    if !require_root() {
        return;
    }
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let tar = Tar::default().file("a", b"a").finish();
    let digest = store.put_blob(&gzip(&tar)).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let wrong = LayerRef {
        digest,
        diff_id: Digest::of(b"not the tar"),
    };
    let err = flatten_layers(&store, &[wrong], dest.path()).unwrap_err();
    assert!(
        matches!(err, LayerError::DigestMismatch { what: "diffID", .. }),
        "{err:?}"
    );
    let missing = LayerRef {
        digest: Digest::of(b"absent"),
        diff_id: Digest::of(&tar),
    };
    let err = flatten_layers(&store, &[missing], dest.path()).unwrap_err();
    assert!(matches!(err, LayerError::Store(_)), "{err:?}");
}

#[test]
fn a_later_file_replaces_a_lower_directory_and_vice_versa() {
    if !require_root() {
        return;
    }
    let layers = vec![
        Tar::default()
            .dir("d/")
            .file("d/x", b"x")
            .file("f", b"f")
            .finish(),
        Tar::default()
            .file("d", b"now a file")
            .dir("f/")
            .file("f/y", b"y")
            .finish(),
    ];
    let (_snaps, paths) = snapshots(&layers);
    let dest = tempfile::tempdir().unwrap();
    flatten_snapshots(&paths, dest.path()).unwrap();
    assert_eq!(fs::read(dest.path().join("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(dest.path().join("f/y")).unwrap(), b"y");
}

/// Unmounts on drop, so that a failed assertion leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn overlayfs_shows_what_flatten_produces() {
    if !require_root() {
        return;
    }
    let jail = Jail::new();
    let layers = chain(&jail);
    let (snaps, paths) = snapshots(&layers);
    flatten_snapshots(&paths, &jail.dest()).unwrap();

    let mnt = snaps.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // overlayfs lists lowerdirs top first.
    let lower: Vec<&str> = paths.iter().rev().map(|p| p.to_str().unwrap()).collect();
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mount -t overlay failed");
    let _mount = Mount(mnt.clone());

    // The whiteout hides the lower file, the opaque dir hides lower content.
    assert!(!mnt.join("etc/group").exists());
    assert!(mnt.join("etc/hosts").exists());
    let mut in_a: Vec<_> = fs::read_dir(mnt.join("opt/a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    in_a.sort();
    assert_eq!(in_a, ["3"]);
    assert!(!mnt.join("data/x").exists() && mnt.join("data/y").exists());
    // And everything else matches the flattened tree, metadata included.
    assert_eq!(describe(&mnt), describe(&jail.dest()));
}
