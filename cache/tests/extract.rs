//! Layer extraction round trips: every entry kind with its modes, owners,
//! xattrs and times, overlay-format whiteouts, compressed and plain streams,
//! duplicates, applying onto a tree, a round trip through `create_layer`'s
//! tar writer, and the snapshot store. Needs root (devices, chown, trusted
//! xattrs), as CI provides.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use cache::Digest;
use cache::layer::create::{CreateOptions, write_layer_tar};
use cache::layer::extract::{UnpackOptions, WhiteoutMode, unpack_layer};
use cache::snapshot::{LayerRef, Snapshots};
use cache::store::Store;
use tar::{EntryType, Header};

mod common;
use common::{describe, gzip, require_root, root_opts};

/// Builds tars header by header.
#[derive(Default)]
struct Tar(Vec<u8>);

struct Attrs {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const DEFAULT: Attrs = Attrs {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 1_600_000_000,
};

impl Tar {
    fn header(name: &str, ty: EntryType, size: u64, a: &Attrs) -> Header {
        let mut h = Header::new_ustar();
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(a.mode);
        h.set_uid(a.uid);
        h.set_gid(a.gid);
        h.set_mtime(a.mtime);
        h
    }

    fn raw(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn file_with(&mut self, name: &str, data: &[u8], a: &Attrs) -> &mut Self {
        self.raw(
            Self::header(name, EntryType::Regular, data.len() as u64, a),
            data,
        )
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_with(name, data, &DEFAULT)
    }

    fn dir_with(&mut self, name: &str, a: &Attrs) -> &mut Self {
        self.raw(Self::header(name, EntryType::Directory, 0, a), b"")
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.dir_with(
            name,
            &Attrs {
                mode: 0o755,
                ..DEFAULT
            },
        )
    }

    fn link(&mut self, ty: EntryType, name: &str, target: &str, a: &Attrs) -> &mut Self {
        let mut h = Self::header(name, ty, 0, a);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    fn device(
        &mut self,
        name: &str,
        ty: EntryType,
        major: u32,
        minor: u32,
        a: &Attrs,
    ) -> &mut Self {
        let mut h = Self::header(name, ty, 0, a);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, b"")
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
            &DEFAULT,
        );
        self.raw(h, &body)
    }

    fn gnu_long_name(&mut self, name: &str) -> &mut Self {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(EntryType::GNULongName);
        h.set_size(name.len() as u64 + 1);
        h.set_mode(0o644);
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        self.raw(h, &data)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        // Pad to a 10 KiB record, as GNU tar does: the padding is part of the diffID.
        out.resize((out.len() + 1024).next_multiple_of(10240), 0);
        out
    }
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// A capability set granting CAP_NET_BIND_SERVICE (VFS_CAP_REVISION_2, effective).
const NET_BIND_CAP: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn every_kind_layer() -> Vec<u8> {
    let long_dir = "l".repeat(90);
    let long_name = format!("{long_dir}/{}", "n".repeat(120));
    let long_target = "t".repeat(150);
    let mut t = Tar::default();
    t.dir_with(
        "./",
        &Attrs {
            mode: 0o751,
            mtime: 1_000,
            ..DEFAULT
        },
    )
    .dir_with(
        "usr/",
        &Attrs {
            mode: 0o755,
            mtime: 2_000,
            ..DEFAULT
        },
    )
    .dir_with(
        "usr/bin/",
        &Attrs {
            mode: 0o755,
            mtime: 3_000,
            ..DEFAULT
        },
    )
    .file_with(
        "usr/bin/tool",
        b"#!/bin/sh\necho tool\n",
        &Attrs {
            mode: 0o4755,
            mtime: 4_000,
            ..DEFAULT
        },
    )
    .link(EntryType::Link, "usr/bin/hard", "usr/bin/tool", &DEFAULT)
    .link(
        EntryType::Symlink,
        "usr/bin/link",
        "tool",
        &Attrs {
            mtime: 5_000,
            ..DEFAULT
        },
    )
    .dir_with(
        "home/",
        &Attrs {
            mode: 0o755,
            mtime: 6_000,
            ..DEFAULT
        },
    )
    .dir_with(
        "home/user/",
        &Attrs {
            mode: 0o700,
            uid: 1000,
            gid: 1000,
            mtime: 7_000,
        },
    )
    .pax(&[
        ("mtime", b"8000.123456789"),
        ("SCHILY.xattr.user.note", b"hello"),
        ("SCHILY.xattr.security.capability", &NET_BIND_CAP),
    ])
    .file_with(
        "home/user/notes",
        b"notes",
        &Attrs {
            mode: 0o640,
            uid: 1000,
            gid: 1001,
            mtime: 1,
        },
    )
    .dir("dev/")
    .device(
        "dev/null",
        EntryType::Char,
        1,
        3,
        &Attrs {
            mode: 0o666,
            ..DEFAULT
        },
    )
    .device(
        "dev/loop0",
        EntryType::Block,
        7,
        0,
        &Attrs {
            mode: 0o660,
            gid: 6,
            ..DEFAULT
        },
    )
    .device(
        "dev/fifo",
        EntryType::Fifo,
        0,
        0,
        &Attrs {
            mode: 0o600,
            ..DEFAULT
        },
    )
    .dir(&format!("{long_dir}/"))
    .pax(&[("path", long_name.as_bytes())])
    .file("placeholder-for-pax-path", b"long pax name")
    .gnu_long_name(&format!("{long_dir}/{}", "g".repeat(130)))
    .file("placeholder-for-gnu-name", b"long gnu name")
    .pax(&[("linkpath", long_target.as_bytes())])
    .link(EntryType::Symlink, "longlink", "placeholder", &DEFAULT)
    .file(".wh.gone", b"")
    .dir("opq/")
    .file("opq/.wh..wh..opq", b"")
    .file("opq/kept", b"kept")
    .dir_with(
        "ro/",
        &Attrs {
            mode: 0o555,
            mtime: 9_000,
            ..DEFAULT
        },
    )
    .file("ro/inside", b"inside a read-only dir")
    .dir_with(
        "tmp/",
        &Attrs {
            mode: 0o1777,
            mtime: 10_000,
            ..DEFAULT
        },
    )
    .file("usr/bin/.wh..wh.plnk", b"aufs metadata, ignored");
    t.finish()
}

#[test]
fn every_entry_kind_round_trips() {
    if !require_root() {
        return;
    }
    let layer = every_kind_layer();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path();
    let stats = unpack_layer(&layer[..], dest, &root_opts()).unwrap();
    assert_eq!(stats.diff_id, Digest::of(&layer));
    assert_eq!(stats.bytes, layer.len() as u64);
    assert_eq!(stats.entries, 25);

    let meta = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
    let root = fs::symlink_metadata(dest).unwrap();
    assert_eq!((root.mode() & 0o7777, root.mtime()), (0o751, 1_000));

    let tool = meta("usr/bin/tool");
    assert_eq!(tool.mode(), 0o100_000 | 0o4755, "setuid survives the chown");
    assert_eq!(tool.mtime(), 4_000);
    assert_eq!(
        fs::read(dest.join("usr/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    let hard = meta("usr/bin/hard");
    assert_eq!((hard.ino(), hard.nlink()), (tool.ino(), 2));

    let link = meta("usr/bin/link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(dest.join("usr/bin/link")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        link.mtime(),
        5_000,
        "symlink times are set without following it"
    );

    // Directory times are set after their content was written.
    assert_eq!(meta("usr").mtime(), 2_000);
    assert_eq!(meta("usr/bin").mtime(), 3_000);
    let user = meta("home/user");
    assert_eq!(
        (user.mode() & 0o7777, user.uid(), user.gid(), user.mtime()),
        (0o700, 1000, 1000, 7_000)
    );

    let notes = meta("home/user/notes");
    assert_eq!(
        (notes.mode() & 0o7777, notes.uid(), notes.gid()),
        (0o640, 1000, 1001)
    );
    assert_eq!(
        (notes.mtime(), notes.mtime_nsec()),
        (8_000, 123_456_789),
        "PAX mtime wins"
    );
    let path = dest.join("home/user/notes");
    assert_eq!(xattr::get(&path, "user.note").unwrap().unwrap(), b"hello");
    assert_eq!(
        xattr::get(&path, "security.capability").unwrap().unwrap(),
        NET_BIND_CAP
    );

    let null = meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (nix::sys::stat::makedev(1, 3), 0o666)
    );
    let loop0 = meta("dev/loop0");
    assert!(loop0.file_type().is_block_device());
    assert_eq!(
        (loop0.rdev(), loop0.gid()),
        (nix::sys::stat::makedev(7, 0), 6)
    );
    assert!(meta("dev/fifo").file_type().is_fifo());

    let long_dir = "l".repeat(90);
    assert_eq!(
        fs::read(dest.join(format!("{long_dir}/{}", "n".repeat(120)))).unwrap(),
        b"long pax name"
    );
    assert_eq!(
        fs::read(dest.join(format!("{long_dir}/{}", "g".repeat(130)))).unwrap(),
        b"long gnu name"
    );
    assert_eq!(
        fs::read_link(dest.join("longlink")).unwrap(),
        Path::new(&"t".repeat(150))
    );
    assert!(!dest.join("placeholder-for-pax-path").exists());

    // Whiteouts in overlay format.
    let gone = meta("gone");
    assert!(gone.file_type().is_char_device());
    assert_eq!((gone.rdev(), gone.uid(), gone.gid()), (0, 0, 0));
    assert_eq!(
        gone.mtime(),
        1_600_000_000,
        "a whiteout keeps its entry's time"
    );
    assert!(fs::symlink_metadata(dest.join(".wh.gone")).is_err());
    assert_eq!(
        xattr::get(dest.join("opq"), "trusted.overlay.opaque")
            .unwrap()
            .unwrap(),
        b"y"
    );
    assert!(fs::symlink_metadata(dest.join("opq/.wh..wh..opq")).is_err());
    assert_eq!(fs::read(dest.join("opq/kept")).unwrap(), b"kept");
    assert!(fs::symlink_metadata(dest.join("usr/bin/.wh..wh.plnk")).is_err());

    // Read-only directories get their mode after their content.
    assert_eq!(meta("ro").mode() & 0o7777, 0o555);
    assert!(dest.join("ro/inside").is_file());
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
}

#[test]
fn gzip_zstd_and_plain_give_the_same_tree_and_diff_id() {
    if !require_root() {
        return;
    }
    let layer = every_kind_layer();
    let mut trees = Vec::new();
    for blob in [layer.clone(), gzip(&layer), zstd(&layer)] {
        let dir = tempfile::tempdir().unwrap();
        let stats = unpack_layer(&blob[..], dir.path(), &root_opts()).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&layer));
        // Every directory is explicit in this layer, so even their times are fixed.
        trees.push(describe(dir.path()));
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

#[test]
fn concatenated_gzip_members_are_one_stream() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .file("a", &[5u8; 3000])
        .file("b", b"b")
        .finish();
    let (head, tail) = layer.split_at(1536);
    let mut blob = gzip(head);
    blob.extend(gzip(tail));
    let dir = tempfile::tempdir().unwrap();
    let stats = unpack_layer(&blob[..], dir.path(), &root_opts()).unwrap();
    assert_eq!(stats.diff_id, Digest::of(&layer));
    assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"b");
}

#[test]
fn duplicate_directories_merge_and_the_last_header_wins() {
    if !require_root() {
        return;
    }
    let layer = Tar::default()
        .dir_with(
            "d/",
            &Attrs {
                mode: 0o700,
                mtime: 100,
                ..DEFAULT
            },
        )
        .file("d/x", b"x")
        .dir_with(
            "d/",
            &Attrs {
                mode: 0o750,
                uid: 5,
                gid: 6,
                mtime: 200,
            },
        )
        .file("d/y", b"y")
        .file("f", b"first")
        .file_with(
            "f",
            b"second",
            &Attrs {
                mode: 0o600,
                ..DEFAULT
            },
        )
        .finish();
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(&layer[..], dir.path(), &root_opts()).unwrap();
    let d = fs::metadata(dir.path().join("d")).unwrap();
    assert_eq!(
        (d.mode() & 0o7777, d.uid(), d.gid(), d.mtime()),
        (0o750, 5, 6, 200)
    );
    assert!(dir.path().join("d/x").is_file() && dir.path().join("d/y").is_file());
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"second");
    assert_eq!(
        fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn a_whiteout_never_hides_an_entry_of_its_own_layer() {
    if !require_root() {
        return;
    }
    // Either order: the directory stays, made opaque since lower content is hidden.
    for layer in [
        Tar::default()
            .file(".wh.d", b"")
            .dir("d/")
            .file("d/x", b"x")
            .finish(),
        Tar::default()
            .dir("d/")
            .file("d/x", b"x")
            .file(".wh.d", b"")
            .finish(),
        Tar::default().file(".wh.d", b"").file("d/x", b"x").finish(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(&layer[..], dir.path(), &root_opts()).unwrap();
        let d = dir.path().join("d");
        assert!(fs::symlink_metadata(&d).unwrap().is_dir());
        assert!(d.join("x").is_file());
        assert_eq!(
            xattr::get(&d, "trusted.overlay.opaque").unwrap().unwrap(),
            b"y"
        );
    }
    // A file of the layer already hides the lower one; no whiteout device.
    for layer in [
        Tar::default()
            .file(".wh.f", b"")
            .file("f", b"mine")
            .finish(),
        Tar::default()
            .file("f", b"mine")
            .file(".wh.f", b"")
            .finish(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        unpack_layer(&layer[..], dir.path(), &root_opts()).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"mine");
    }
}

#[test]
fn apply_mode_deletes_what_lower_layers_left() {
    if !require_root() {
        return;
    }
    let apply = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..root_opts()
    };
    let dir = tempfile::tempdir().unwrap();
    let lower = Tar::default()
        .dir("a/")
        .file("a/1", b"1")
        .file("a/2", b"2")
        .dir("b/")
        .file("b/old", b"old")
        .file("gone", b"gone")
        .dir("gonedir/")
        .file("gonedir/x", b"x")
        .finish();
    unpack_layer(&lower[..], dir.path(), &apply).unwrap();
    // The opaque marker comes after this layer's own entry in `b`: that one stays.
    let upper = Tar::default()
        .file(".wh.gone", b"")
        .file(".wh.gonedir", b"")
        .file("a/.wh.1", b"")
        .file("b/new", b"new")
        .file("b/.wh..wh..opq", b"")
        .finish();
    unpack_layer(&upper[..], dir.path(), &apply).unwrap();
    let p = dir.path();
    assert!(!p.join("gone").exists() && !p.join("gonedir").exists());
    assert!(!p.join("a/1").exists() && p.join("a/2").is_file());
    assert!(!p.join("b/old").exists());
    assert_eq!(fs::read(p.join("b/new")).unwrap(), b"new");
    // No overlay artefacts in a plain tree.
    assert!(
        xattr::get(p.join("b"), "trusted.overlay.opaque")
            .unwrap()
            .is_none()
    );
    let names: Vec<_> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // A whiteout never hides what its own layer put below the path, even
    // when the layer only implies the directory.
    let upper = Tar::default()
        .file("a/new", b"new")
        .file(".wh.a", b"")
        .finish();
    unpack_layer(&upper[..], dir.path(), &apply).unwrap();
    assert!(p.join("a/new").is_file());
    assert!(!p.join("a/2").exists(), "the lower content is hidden");
}

#[test]
fn tree_round_trips_through_the_layer_writer() {
    if !require_root() {
        return;
    }
    // A tree in overlay format (from a layer), written back as a tar by
    // create's writer and unpacked again, must come back identical.
    let src = tempfile::tempdir().unwrap();
    let layer = every_kind_layer();
    unpack_layer(&layer[..], src.path(), &root_opts()).unwrap();
    let mut tar = Vec::new();
    let diff_id = write_layer_tar(src.path(), &CreateOptions::default(), &mut tar).unwrap();
    assert_eq!(diff_id, Digest::of(&tar));
    let dest = tempfile::tempdir().unwrap();
    let stats = unpack_layer(&tar[..], dest.path(), &root_opts()).unwrap();
    assert_eq!(stats.diff_id, diff_id);
    // The writer leaves out the root directory and whole-second-rounds
    // mtimes (for reproducible layers); everything else must survive.
    let comparable = |root: &Path| -> BTreeMap<PathBuf, String> {
        describe(root)
            .into_iter()
            .filter(|(path, _)| !path.as_os_str().is_empty())
            .map(|(path, d)| {
                (
                    path,
                    d.replace("mtime=8000.123456789", "mtime=8000.000000000"),
                )
            })
            .collect()
    };
    assert_eq!(comparable(dest.path()), comparable(src.path()));
}

fn stored_layer(store: &Store, tar: &[u8]) -> LayerRef {
    LayerRef {
        digest: store.put_blob(&gzip(tar)).unwrap(),
        diff_id: Digest::of(tar),
    }
}

#[test]
fn snapshots_are_unpacked_once_listed_and_removed() {
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let snapshots = Snapshots::new(&store);
    let layer = stored_layer(&store, &every_kind_layer());
    assert!(!snapshots.exists(&layer.diff_id));
    let path = snapshots.ensure(&layer).unwrap();
    assert_eq!(
        path,
        root.path().join("snapshots").join(layer.diff_id.hex())
    );
    assert_eq!(
        xattr::get(path.join("opq"), "trusted.overlay.opaque")
            .unwrap()
            .unwrap(),
        b"y"
    );
    let ino = fs::metadata(path.join("usr/bin/tool")).unwrap().ino();
    // A second ensure reuses it rather than unpacking again.
    assert_eq!(snapshots.ensure(&layer).unwrap(), path);
    assert_eq!(fs::metadata(path.join("usr/bin/tool")).unwrap().ino(), ino);
    let other = stored_layer(&store, &Tar::default().file("other", b"o").finish());
    snapshots.ensure(&other).unwrap();
    let mut expected = vec![layer.diff_id, other.diff_id];
    expected.sort();
    assert_eq!(snapshots.list().unwrap(), expected);
    assert!(
        fs::read_dir(root.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );

    let _held = snapshots.hold(&other.diff_id).unwrap();
    assert!(snapshots.remove(&layer.diff_id).unwrap());
    assert!(!snapshots.remove(&layer.diff_id).unwrap());
    assert!(!path.exists());
    assert_eq!(snapshots.list().unwrap(), vec![other.diff_id]);
    assert!(
        fs::read_dir(root.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn concurrent_ensure_of_one_layer_unpacks_it_once() {
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut tar = Tar::default();
    for i in 0..50 {
        tar.file(&format!("f{i}"), &big[..big.len() / 50 * (i % 3 + 1) / 3]);
    }
    let layer = stored_layer(&store, &tar.finish());
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let snapshots = Snapshots::new(&store).durable(false);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let path = snapshots.ensure(&layer).unwrap();
                fs::metadata(path.join("f49")).unwrap().ino()
            })
        })
        .collect();
    let inodes: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        inodes.windows(2).all(|w| w[0] == w[1]),
        "all callers see one snapshot: {inodes:?}"
    );
    assert_eq!(Snapshots::new(&store).list().unwrap(), vec![layer.diff_id]);
    assert!(
        fs::read_dir(root.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn adopt_moves_a_finished_tree_into_place_once() {
    if !require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let snapshots = Snapshots::new(&store);
    let staging = store.temp_dir("upper-").unwrap();
    let upper = staging.path().join("upper");
    fs::create_dir(&upper).unwrap();
    fs::write(upper.join("built"), b"artifact").unwrap();
    let diff_id = Digest::of(b"computed by the caller");
    assert!(snapshots.adopt(&upper, &diff_id).unwrap());
    assert!(!upper.exists());
    assert_eq!(
        fs::read(snapshots.path(&diff_id).join("built")).unwrap(),
        b"artifact"
    );
    // A second tree for the same diffID is left with the caller.
    fs::create_dir(&upper).unwrap();
    assert!(!snapshots.adopt(&upper, &diff_id).unwrap());
    assert!(upper.exists());
}

#[test]
fn adopting_a_snapshot_this_process_holds_does_not_wait_for_itself() {
    if !require_root() {
        return;
    }
    // A parallel build holds the snapshot one step made while another step,
    // which made the same layer, adopts it: that must not block forever.
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let snapshots = Snapshots::new(&store);
    let staging = store.temp_dir("upper-").unwrap();
    let upper = staging.path().join("upper");
    fs::create_dir(&upper).unwrap();
    let diff_id = Digest::of(b"made twice");
    assert!(snapshots.adopt(&upper, &diff_id).unwrap());
    let _held = snapshots.hold(&diff_id).unwrap();
    fs::create_dir(&upper).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (snaps, dir) = (snapshots.clone(), upper.clone());
    std::thread::spawn(move || tx.send(snaps.adopt(&dir, &diff_id).unwrap()).unwrap());
    let adopted = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("adopt waited for a lock its own process holds");
    assert!(!adopted);
}
