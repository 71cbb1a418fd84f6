//! Layer creation from an overlay-style upperdir, read back with the `tar`
//! crate and GNU tar. Needs root (mknod, chown, trusted.* xattrs): the tests
//! skip with a message when not root, except under CI where they fail.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use cache::Digest;
use cache::compression::{Compression, CompressionOptions, decompressor};
use cache::layer::create::{
    CreateError, CreateOptions, LayerDescriptor, create_layer, write_layer_tar,
};
use cache::store::Store;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI must run it"
    );
    eprintln!("skipping {test}: needs root (mknod, chown, trusted.* xattrs)");
    false
}

/// Bytes that do not compress, so sizes cross buffer boundaries for real.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

const CAPABILITY: &[u8] = &[
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const OLD_MTIME: i64 = 1_234_567_890;

fn long_dir() -> String {
    format!("long/{}", "d".repeat(150))
}

/// The 300-byte path of a file.
fn long_file() -> String {
    format!("{}/{}", long_dir(), "e".repeat(144))
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, secs: i64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64);
    File::open(path).unwrap().set_modified(t).unwrap();
}

/// An upperdir with every kind of entry a RUN step can leave behind.
fn build_tree(root: &Path) {
    let mk = |p: &str| fs::create_dir_all(root.join(p)).unwrap();
    let write = |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap();
    for d in [
        "bin",
        "etc",
        "dev",
        "run",
        "var/cache/apt",
        "var/lib",
        "tmp",
        "sbin",
    ] {
        mk(d);
    }
    write("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n");
    write("etc/empty", b"");
    write("bin/busybox", &noise(3 * 1024 * 1024 + 77, 1));
    fs::hard_link(root.join("bin/busybox"), root.join("bin/ls")).unwrap();
    fs::hard_link(root.join("bin/busybox"), root.join("sbin/init")).unwrap();
    symlink("busybox", root.join("bin/sh")).unwrap();
    let far = format!("/{}/target", "t".repeat(120));
    symlink(&far, root.join("bin/far")).unwrap();
    write("bin/su", b"#!/bin/sh\n");
    set_mode(&root.join("bin/su"), 0o4755);
    write("bin/wall", b"#!/bin/sh\n");
    set_mode(&root.join("bin/wall"), 0o2711);
    set_mode(&root.join("tmp"), 0o1777);
    write("bin/ping", b"\x7fELF");
    xattr::set(root.join("bin/ping"), "security.capability", CAPABILITY).unwrap();
    xattr::set(root.join("bin/ping"), "user.note", b"kept").unwrap();
    // Overlay bookkeeping on a copied-up file must not leak into the layer.
    xattr::set(
        root.join("etc/passwd"),
        "trusted.overlay.origin",
        b"\x00\xfb",
    )
    .unwrap();
    write("etc/owned", b"owned");
    lchown(root.join("etc/owned"), Some(1234), Some(5678)).unwrap();
    write("etc/bigid", b"big");
    lchown(root.join("etc/bigid"), Some(3_000_000), Some(3_000_001)).unwrap();
    nix::unistd::mkfifo(&root.join("run/fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    mknod(
        &root.join("dev/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    mknod(
        &root.join("dev/loop0"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 0),
    )
    .unwrap();
    // Modes set explicitly: the umask applies to mkfifo and mknod.
    for (p, mode) in [
        ("run/fifo", 0o620),
        ("dev/null", 0o666),
        ("dev/loop0", 0o660),
    ] {
        set_mode(&root.join(p), mode);
    }
    // Overlay whiteouts; the kernel may share one whiteout inode among
    // several, so two linked ones must still become two whiteouts.
    mknod(
        &root.join("etc/removed"),
        SFlag::S_IFCHR,
        Mode::empty(),
        makedev(0, 0),
    )
    .unwrap();
    fs::hard_link(root.join("etc/removed"), root.join("etc/gone")).unwrap();
    write("var/cache/apt/pkgcache.bin", b"cache");
    xattr::set(root.join("var/cache"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(root.join("var/lib"), "trusted.overlay.opaque", b"x").unwrap();
    mk(&long_dir());
    write(&long_file(), b"deep");
    let mid = format!("mid/{}", "m".repeat(99));
    mk(&mid);
    write(&format!("{mid}/f"), b"split");
    let _socket = std::os::unix::net::UnixListener::bind(root.join("run/sock")).unwrap();
    set_mtime(&root.join("etc/passwd"), OLD_MTIME);
}

#[derive(Debug)]
struct Entry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    dev: Option<(u32, u32)>,
    pax: BTreeMap<String, Vec<u8>>,
    data: Vec<u8>,
}

fn read_tar(tar_bytes: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut pax = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for ext in exts {
                let ext = ext.unwrap();
                pax.insert(ext.key().unwrap().to_string(), ext.value_bytes().to_vec());
            }
        }
        let h = e.header().clone();
        let kind = h.entry_type();
        let dev = matches!(kind, tar::EntryType::Char | tar::EntryType::Block).then(|| {
            (
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            )
        });
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Entry {
            path: e.path().unwrap().to_string_lossy().into_owned(),
            kind,
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned()),
            dev,
            pax,
            data,
        });
    }
    out
}

fn decompress(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    decompressor(blob).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn layer(
    store: &Store,
    dir: &Path,
    kind: Compression,
    epoch: Option<i64>,
) -> (LayerDescriptor, Vec<u8>) {
    let opts = CreateOptions {
        compression: CompressionOptions::new(kind),
        source_date_epoch: epoch,
    };
    let desc = create_layer(store, dir, &opts).unwrap();
    let blob = fs::read(store.blob_path(&desc.digest)).unwrap();
    (desc, blob)
}

fn find<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} missing from the layer"))
}

#[test]
fn layer_headers_round_trip_as_root() {
    if !have_root("layer_headers_round_trip_as_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("upper");
    build_tree(&tree);
    let store = Store::open(dir.path().join("store")).unwrap();
    let (desc, blob) = layer(&store, &tree, Compression::None, None);
    let entries = read_tar(&blob);

    let mid = format!("mid/{}", "m".repeat(99));
    let expected_order = vec![
        "bin/".to_string(),
        "bin/busybox".into(),
        "bin/far".into(),
        "bin/ls".into(),
        "bin/ping".into(),
        "bin/sh".into(),
        "bin/su".into(),
        "bin/wall".into(),
        "dev/".into(),
        "dev/loop0".into(),
        "dev/null".into(),
        "etc/".into(),
        "etc/.wh.gone".into(),
        "etc/.wh.removed".into(),
        "etc/bigid".into(),
        "etc/empty".into(),
        "etc/owned".into(),
        "etc/passwd".into(),
        "long/".into(),
        format!("{}/", long_dir()),
        long_file(),
        "mid/".into(),
        format!("{mid}/"),
        format!("{mid}/f"),
        "run/".into(),
        "run/fifo".into(),
        "sbin/".into(),
        "sbin/init".into(),
        "tmp/".into(),
        "var/".into(),
        "var/cache/".into(),
        "var/cache/.wh..wh..opq".into(),
        "var/cache/apt/".into(),
        "var/cache/apt/pkgcache.bin".into(),
        "var/lib/".into(),
    ];
    let order: Vec<_> = entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        order, expected_order,
        "entry order (sockets skipped, whiteouts renamed, opaque marker after its dir)"
    );

    use tar::EntryType as T;
    let busybox = find(&entries, "bin/busybox");
    assert_eq!(busybox.kind, T::Regular);
    assert_eq!(busybox.data, fs::read(tree.join("bin/busybox")).unwrap());
    for link in ["bin/ls", "sbin/init"] {
        let e = find(&entries, link);
        assert_eq!(
            (e.kind, e.link.as_deref()),
            (T::Link, Some("bin/busybox")),
            "{link}"
        );
        assert!(e.data.is_empty());
    }
    let sh = find(&entries, "bin/sh");
    assert_eq!((sh.kind, sh.link.as_deref()), (T::Symlink, Some("busybox")));
    let far = find(&entries, "bin/far");
    let far_target = format!("/{}/target", "t".repeat(120));
    assert_eq!(far.link.as_deref(), Some(far_target.as_str()));
    assert_eq!(
        far.pax.get("linkpath").map(Vec::as_slice),
        Some(far_target.as_bytes())
    );

    assert_eq!(find(&entries, "bin/su").mode, 0o4755);
    assert_eq!(find(&entries, "bin/wall").mode, 0o2711);
    let tmp = find(&entries, "tmp/");
    assert_eq!((tmp.kind, tmp.mode), (T::Directory, 0o1777));
    assert_eq!(find(&entries, "etc/passwd").mode, 0o644);
    assert_eq!(find(&entries, "etc/passwd").mtime, OLD_MTIME as u64);

    let ping = find(&entries, "bin/ping");
    assert_eq!(
        ping.pax
            .get("SCHILY.xattr.security.capability")
            .map(Vec::as_slice),
        Some(CAPABILITY)
    );
    assert_eq!(
        ping.pax.get("SCHILY.xattr.user.note").map(Vec::as_slice),
        Some(&b"kept"[..])
    );
    for e in &entries {
        assert!(
            !e.pax.keys().any(|k| k.contains("overlay")),
            "{}: overlay xattrs leaked: {:?}",
            e.path,
            e.pax.keys().collect::<Vec<_>>()
        );
        assert!(
            !e.path.starts_with('/') && !e.path.starts_with("./"),
            "{}",
            e.path
        );
    }
    assert!(
        find(&entries, "etc/passwd").pax.is_empty(),
        "trusted.overlay.origin must be dropped"
    );

    let owned = find(&entries, "etc/owned");
    assert_eq!((owned.uid, owned.gid), (1234, 5678));
    let big = find(&entries, "etc/bigid");
    assert_eq!(big.pax.get("uid").map(Vec::as_slice), Some(&b"3000000"[..]));
    assert_eq!(big.pax.get("gid").map(Vec::as_slice), Some(&b"3000001"[..]));
    assert_eq!(find(&entries, "etc/passwd").uid, 0);

    let fifo = find(&entries, "run/fifo");
    assert_eq!((fifo.kind, fifo.mode), (T::Fifo, 0o620));
    let null = find(&entries, "dev/null");
    assert_eq!(
        (null.kind, null.dev, null.mode),
        (T::Char, Some((1, 3)), 0o666)
    );
    let lp = find(&entries, "dev/loop0");
    assert_eq!((lp.kind, lp.dev, lp.mode), (T::Block, Some((7, 0)), 0o660));

    for wh in ["etc/.wh.removed", "etc/.wh.gone"] {
        let e = find(&entries, wh);
        assert_eq!(
            (e.kind, e.mode, e.data.len()),
            (T::Regular, 0o600, 0),
            "{wh}"
        );
    }
    let opq = find(&entries, "var/cache/.wh..wh..opq");
    assert_eq!((opq.kind, opq.data.len()), (T::Regular, 0));
    assert!(find(&entries, "var/cache/").pax.is_empty());

    let long = find(&entries, &long_file());
    assert_eq!(long.data, b"deep");
    assert_eq!(
        long.pax.get("path").map(Vec::as_slice),
        Some(long_file().as_bytes())
    );
    // 104 bytes fit ustar's prefix and name fields: no PAX header needed.
    assert!(find(&entries, &format!("{mid}/f")).pax.is_empty());

    // An uncompressed layer is its own diffID.
    assert_eq!(desc.diff_id, Digest::of(&blob));
    assert_eq!(desc.digest, Digest::of(&blob));
    assert_eq!(desc.size, blob.len() as u64);
    assert_eq!(desc.media_type, "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(blob.len() % 512, 0);
    assert!(
        blob[blob.len() - 1024..].iter().all(|&b| b == 0),
        "two zero blocks end the tar"
    );
}

#[test]
fn every_compression_has_the_same_diff_id_as_root() {
    if !have_root("every_compression_has_the_same_diff_id_as_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("upper");
    build_tree(&tree);
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut plain = Vec::new();
    let diff_id = write_layer_tar(&tree, &CreateOptions::default(), &mut plain).unwrap();
    assert_eq!(diff_id, Digest::of(&plain));
    let media = [
        (Compression::None, "application/vnd.oci.image.layer.v1.tar"),
        (
            Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            Compression::Zstd,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ];
    for (kind, media_type) in media {
        let (desc, blob) = layer(&store, &tree, kind, None);
        assert_eq!(desc.media_type, media_type);
        assert_eq!(
            desc.digest,
            Digest::of(&blob),
            "{kind}: digest is the blob's sha256"
        );
        assert_eq!(desc.size, blob.len() as u64);
        let tar_bytes = decompress(&blob);
        assert_eq!(
            desc.diff_id,
            Digest::of(&tar_bytes),
            "{kind}: diffID is the tar's sha256"
        );
        assert_eq!(desc.diff_id, diff_id, "{kind}");
        assert_eq!(tar_bytes, plain, "{kind}");
        if kind != Compression::None {
            assert!(blob.len() < tar_bytes.len(), "{kind} must compress");
        }
    }
    assert!(
        fs::read_dir(store.root().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "temp files left in the store"
    );
}

#[test]
fn gnu_tar_accepts_the_layer_as_root() {
    if !have_root("gnu_tar_accepts_the_layer_as_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("upper");
    build_tree(&tree);
    let store = Store::open(dir.path().join("store")).unwrap();
    for kind in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let (desc, _) = layer(&store, &tree, kind, None);
        let blob = store.blob_path(&desc.digest);
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&blob)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{kind}: tar -tvf failed: {stderr}"
        );
        assert!(
            stdout.lines().any(|l| l.ends_with(&long_file())),
            "{kind}: long path missing:\n{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("3000000/3000001") && l.ends_with("etc/bigid")),
            "{kind}: {stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("-rwsr-xr-x") && l.ends_with("bin/su")),
            "{kind}: {stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("hrw") && l.ends_with("bin/ls link to bin/busybox")),
            "{kind}: {stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("crw-rw-rw-") && l.contains(" 1,3 ")),
            "{kind}: {stdout}"
        );
    }

    // Extracting with GNU tar restores the xattrs, modes and links.
    let (desc, _) = layer(&store, &tree, Compression::Zstd, None);
    let out_dir = dir.path().join("gnu");
    fs::create_dir(&out_dir).unwrap();
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(store.blob_path(&desc.digest))
        .arg("-C")
        .arg(&out_dir)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        xattr::get(out_dir.join("bin/ping"), "security.capability")
            .unwrap()
            .as_deref(),
        Some(CAPABILITY)
    );
    assert_eq!(fs::read(out_dir.join(long_file())).unwrap(), b"deep");
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        fs::metadata(out_dir.join("bin/busybox")).unwrap(),
        fs::metadata(out_dir.join("bin/ls")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hardlink restored");
    assert_eq!(
        fs::metadata(out_dir.join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert!(out_dir.join("var/cache/.wh..wh..opq").is_file());
}

#[test]
fn source_date_epoch_makes_layers_reproducible_as_root() {
    if !have_root("source_date_epoch_makes_layers_reproducible_as_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    build_tree(&a);
    // Whole seconds apart, so every fresh mtime differs between the trees.
    std::thread::sleep(Duration::from_millis(1100));
    build_tree(&b);
    let store = Store::open(dir.path().join("store")).unwrap();
    let epoch = 1_500_000_000;
    for kind in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let (la, blob) = layer(&store, &a, kind, Some(epoch));
        let (lb, _) = layer(&store, &b, kind, Some(epoch));
        assert_eq!(
            la, lb,
            "{kind}: same tree, same SOURCE_DATE_EPOCH, same layer"
        );
        let entries = read_tar(&decompress(&blob));
        // Older mtimes are kept, newer ones clamped.
        assert_eq!(find(&entries, "etc/passwd").mtime, OLD_MTIME as u64);
        assert_eq!(find(&entries, "bin/busybox").mtime, epoch as u64);
        assert!(entries.iter().all(|e| e.mtime <= epoch as u64));
    }
    let (ua, _) = layer(&store, &a, Compression::None, None);
    let (ub, _) = layer(&store, &b, Compression::None, None);
    assert_ne!(
        ua.diff_id, ub.diff_id,
        "without the clamp the trees' mtimes differ"
    );
}

#[test]
fn failed_layer_leaves_nothing_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let missing: PathBuf = dir.path().join("no-such-dir");
    let err = create_layer(&store, &missing, &CreateOptions::default()).unwrap_err();
    assert!(
        matches!(err, CreateError::Read { ref path, .. } if *path == missing),
        "{err:?}"
    );
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(create_layer(&store, &file, &CreateOptions::default()).is_err());
    assert!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(
        fs::read_dir(store.root().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn empty_tree_is_just_the_end_of_archive() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let diff_id = write_layer_tar(dir.path(), &CreateOptions::default(), &mut out).unwrap();
    assert_eq!(out, vec![0u8; 1024]);
    assert_eq!(diff_id, Digest::of(&[0u8; 1024]));
}

#[test]
fn overlay_redirect_or_metacopy_is_refused_as_root() {
    if !have_root("overlay_redirect_or_metacopy_is_refused_as_root") {
        return;
    }
    for xattr_name in ["trusted.overlay.metacopy", "trusted.overlay.redirect"] {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("upper");
        fs::create_dir_all(tree.join("d")).unwrap();
        fs::write(tree.join("d/f"), b"").unwrap();
        xattr::set(tree.join("d/f"), xattr_name, b"").unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        match create_layer(&store, &tree, &CreateOptions::default()) {
            Err(CreateError::OverlayFeature { path, xattr }) => {
                assert_eq!((path, xattr.as_str()), (tree.join("d/f"), xattr_name));
            }
            other => panic!("{xattr_name}: expected a refusal, got {other:?}"),
        }
        assert!(
            fs::read_dir(store.root().join("blobs/sha256"))
                .unwrap()
                .next()
                .is_none()
        );
    }
}

/// The kernel's own whiteouts and opaque directories, from a real overlay
/// mount, come out as OCI whiteouts.
#[test]
fn real_overlay_upperdir_as_root() {
    if !have_root("real_overlay_upperdir_as_root") {
        return;
    }
    use nix::mount::{MsFlags, mount, umount};
    let dir = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = dir.path().join(d);
        fs::create_dir(&p).unwrap();
        p
    });
    fs::create_dir_all(lower.join("etc")).unwrap();
    fs::write(lower.join("etc/old"), b"old").unwrap();
    fs::write(lower.join("etc/other"), b"other").unwrap();
    fs::create_dir_all(lower.join("cache/sub")).unwrap();
    fs::write(lower.join("cache/sub/x"), b"x").unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if let Err(e) = mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    ) {
        assert!(
            std::env::var_os("CI").is_none(),
            "overlay mount failed: {e}"
        );
        eprintln!("skipping real_overlay_upperdir_as_root: cannot mount overlay: {e}");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        fs::remove_file(merged.join("etc/old")).unwrap();
        fs::remove_file(merged.join("etc/other")).unwrap();
        fs::remove_dir_all(merged.join("cache")).unwrap();
        fs::create_dir(merged.join("cache")).unwrap();
        fs::write(merged.join("cache/new"), b"new").unwrap();
        fs::write(merged.join("etc/added"), b"added").unwrap();
    });
    umount(&merged).unwrap();
    result.unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let (_, blob) = layer(&store, &upper, Compression::None, None);
    let entries = read_tar(&blob);
    let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "cache/",
            "cache/.wh..wh..opq",
            "cache/new",
            "etc/",
            "etc/.wh.old",
            "etc/.wh.other",
            "etc/added"
        ],
        "{entries:#?}"
    );
    for e in &entries {
        assert!(
            e.pax.keys().all(|k| !k.contains("overlay")),
            "{}: {:?}",
            e.path,
            e.pax
        );
    }
}

/// A sink that breaks after its first megabyte, like a full disk.
struct Breaks(usize);

impl std::io::Write for Breaks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0 >= 1 << 20 {
            // Slow to fail, so that the tar thread is waiting for a free
            // buffer by then.
            std::thread::sleep(Duration::from_millis(300));
            return Err(std::io::Error::other("disk full"));
        }
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn failing_writer_stops_the_tar_thread() {
    let dir = tempfile::tempdir().unwrap();
    // Sparse, so reading it is fast: far more than the buffers in flight.
    File::create(dir.path().join("big"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(write_layer_tar(&path, &CreateOptions::default(), Breaks(0)));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("write_layer_tar hangs after a write error");
    match result {
        Err(CreateError::Write(e)) => assert_eq!(e.to_string(), "disk full"),
        other => panic!("expected the writer's error, got {other:?}"),
    }
}
