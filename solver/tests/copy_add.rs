//! ADD (needs root: the copy chowns): local archives of every compression
//! unpacked safely, and `http://` downloads from a server on loopback with
//! `--checksum`, `--unpack` and `--chmod`.

mod copy_common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

use copy_common::*;
use sha2::Digest as _;
use solver::ops::copy::CopyError;

/// One entry of a test archive. Names are written into the header as
/// given, so hostile names (`../x`) can be made.
enum Kind<'a> {
    File(&'a str),
    Dir,
    Symlink(&'a str),
    Hardlink(&'a str),
    CharDevice,
}

struct Entry<'a> {
    name: &'a str,
    kind: Kind<'a>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

fn entry<'a>(name: &'a str, kind: Kind<'a>) -> Entry<'a> {
    let mode = match kind {
        Kind::Dir => 0o755,
        _ => 0o644,
    };
    Entry {
        name,
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_500_000_000,
    }
}

fn tar_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().unwrap();
            gnu.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        }
        header.set_mode(e.mode);
        header.set_uid(e.uid);
        header.set_gid(e.gid);
        header.set_mtime(e.mtime);
        let data: &[u8] = match &e.kind {
            Kind::File(content) => {
                header.set_entry_type(tar::EntryType::Regular);
                content.as_bytes()
            }
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                b""
            }
            Kind::Symlink(target) | Kind::Hardlink(target) => {
                header.set_entry_type(if matches!(e.kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                let gnu = header.as_gnu_mut().unwrap();
                gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
                b""
            }
            Kind::CharDevice => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_device_major(1).unwrap();
                header.set_device_minor(3).unwrap();
                b""
            }
        };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    match kind {
        "tar" => data.to_vec(),
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "bzip2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "xz" => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zstd" => zstd::encode_all(data, 3).unwrap(),
        other => panic!("unknown compression {other}"),
    }
}

fn sample_archive() -> Vec<u8> {
    let mut owned = entry("dir/a.txt", Kind::File("A"));
    owned.mode = 0o4750;
    owned.uid = 1234;
    owned.gid = 5678;
    // A hard link entry carries its target's metadata, as tar writes it.
    let mut hard = entry("dir/h", Kind::Hardlink("dir/a.txt"));
    (hard.mode, hard.uid, hard.gid) = (owned.mode, owned.uid, owned.gid);
    tar_bytes(&[
        entry("dir/", Kind::Dir),
        owned,
        entry("dir/l", Kind::Symlink("a.txt")),
        hard,
        entry("top", Kind::File("T")),
        entry("implied/deep/file", Kind::File("I")),
    ])
}

fn check_sample(root: &std::path::Path) {
    assert_eq!(read(root, "dir/a.txt"), "A");
    assert_eq!(mode(root, "dir/a.txt"), 0o4750);
    assert_eq!(owner(root, "dir/a.txt"), (1234, 5678));
    let meta = fs::metadata(root.join("dir/a.txt")).unwrap();
    assert_eq!(meta.mtime(), 1_500_000_000);
    assert_eq!(
        fs::read_link(root.join("dir/l")).unwrap().to_str(),
        Some("a.txt")
    );
    assert_eq!(fs::metadata(root.join("dir/h")).unwrap().ino(), meta.ino());
    assert_eq!(read(root, "top"), "T");
    assert_eq!(read(root, "implied/deep/file"), "I");
    assert_eq!(mode(root, "implied"), 0o755);
    assert_eq!(owner(root, "implied/deep"), (0, 0));
    assert_eq!(
        fs::metadata(root.join("dir")).unwrap().mtime(),
        1_500_000_000
    );
}

#[test]
fn add_unpacks_every_compression_detected_by_content() {
    if !require_root() {
        return;
    }
    let tar = sample_archive();
    for kind in ["tar", "gzip", "bzip2", "xz", "zstd"] {
        let (ctx, dest) = (tmp(), tmp());
        // The name says nothing: detection is by content, as in Docker.
        fs::write(ctx.path().join("archive.bin"), compress(kind, &tar)).unwrap();
        let env = Env::context(ctx.path(), dest.path());
        env.run("ADD archive.bin /out\nADD archive.bin /").unwrap();
        check_sample(&dest.path().join("out"));
        check_sample(dest.path());
        assert_eq!(owner(dest.path(), "out"), (0, 0), "{kind}");
    }
}

#[test]
fn copy_and_unpack_false_keep_archives_and_non_archives_are_copied() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    let gz = compress("gzip", &sample_archive());
    fs::write(ctx.path().join("t.tar.gz"), &gz).unwrap();
    file(ctx.path(), "fake.tar.gz", "not an archive", 0o644);
    file(ctx.path(), "empty.tar", "", 0o644);
    // A gzip stream that is not a tar inside.
    fs::write(ctx.path().join("text.gz"), compress("gzip", b"hello world")).unwrap();
    Env::context(ctx.path(), dest.path())
        .run(
            "COPY t.tar.gz /copied/\nADD --unpack=false t.tar.gz /kept/\n\
             ADD fake.tar.gz empty.tar text.gz /plain/",
        )
        .unwrap();
    let d = dest.path();
    assert_eq!(fs::read(d.join("copied/t.tar.gz")).unwrap(), gz);
    assert_eq!(fs::read(d.join("kept/t.tar.gz")).unwrap(), gz);
    assert_eq!(read(d, "plain/fake.tar.gz"), "not an archive");
    assert_eq!(read(d, "plain/empty.tar"), "");
    assert!(exists(d, "plain/text.gz"));
    assert!(!exists(d, "dir"));
}

#[test]
fn add_chown_applies_to_unpacked_entries() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    fs::write(ctx.path().join("t.tar"), sample_archive()).unwrap();
    Env::context(ctx.path(), dest.path())
        .run("ADD --chown=100:200 t.tar /out/")
        .unwrap();
    let d = dest.path();
    for p in ["out", "out/dir", "out/dir/a.txt", "out/dir/l", "out/top"] {
        assert_eq!(owner(d, p), (100, 200), "{p}");
    }
}

#[test]
fn add_wildcard_unpacks_each_archive() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    fs::write(
        ctx.path().join("a.tar"),
        tar_bytes(&[entry("from-a", Kind::File("a"))]),
    )
    .unwrap();
    fs::write(
        ctx.path().join("b.tar"),
        compress("zstd", &tar_bytes(&[entry("from-b", Kind::File("b"))])),
    )
    .unwrap();
    Env::context(ctx.path(), dest.path())
        .run("ADD *.tar /dest")
        .unwrap();
    assert_eq!(read(dest.path(), "dest/from-a"), "a");
    assert_eq!(read(dest.path(), "dest/from-b"), "b");
}

#[test]
fn hostile_archives_stay_inside_the_destination() {
    if !require_root() {
        return;
    }
    let base = tmp();
    let marker = format!("builder-copy-test-{}", std::process::id());
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "dotdot",
            tar_bytes(&[entry("../escape", Kind::File("x"))]),
            Some("outside extraction root"),
        ),
        (
            "deep dotdot",
            tar_bytes(&[entry("a/../../escape", Kind::File("x"))]),
            Some("outside extraction root"),
        ),
        (
            "climbing link",
            tar_bytes(&[
                entry("up", Kind::Symlink("../../..")),
                entry("up/escape", Kind::File("x")),
            ]),
            Some("points outside extraction root"),
        ),
        (
            "hardlink out",
            tar_bytes(&[entry("h", Kind::Hardlink("../../etc/passwd"))]),
            Some("outside extraction root"),
        ),
        (
            "device",
            tar_bytes(&[entry("null", Kind::CharDevice)]),
            Some("unsupported tar entry"),
        ),
    ];
    for (what, archive, error) in cases {
        let ctx = tmp();
        let root = base.path().join(what.replace(' ', "-"));
        fs::create_dir(&root).unwrap();
        fs::write(ctx.path().join("t.tar"), archive).unwrap();
        let result = Env::context(ctx.path(), &root).run("ADD t.tar /out/");
        match error {
            Some(message) => {
                let err = result.unwrap_err();
                assert!(matches!(err, CopyError::Archive { .. }), "{what}: {err:?}");
                assert!(err.to_string().contains(message), "{what}: {err}");
            }
            None => result.unwrap(),
        }
        assert!(!exists(&root, "escape"), "{what}");
        assert!(!exists(base.path(), "escape"), "{what}");
    }

    // An absolute link in the archive points into the extraction directory,
    // never to the host's root.
    let (ctx, root) = (tmp(), tmp());
    let name = format!("evil/tmp/{marker}");
    fs::write(
        ctx.path().join("t.tar"),
        tar_bytes(&[
            entry("evil", Kind::Symlink("/")),
            entry(&name, Kind::File("x")),
        ]),
    )
    .unwrap();
    Env::context(ctx.path(), root.path())
        .run("ADD t.tar /out/")
        .unwrap();
    assert_eq!(read(root.path(), &format!("out/tmp/{marker}")), "x");
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());

    // An entry replaces a link already in the destination rather than
    // writing through it.
    let (ctx, root) = (tmp(), tmp());
    dir(root.path(), "etc", 0o755);
    file(root.path(), "etc/shadow", "secret", 0o600);
    link(root.path(), "out/link", "/etc/shadow");
    fs::write(
        ctx.path().join("t.tar"),
        tar_bytes(&[entry("link", Kind::File("replaced"))]),
    )
    .unwrap();
    Env::context(ctx.path(), root.path())
        .run("ADD t.tar /out/")
        .unwrap();
    assert_eq!(read(root.path(), "etc/shadow"), "secret");
    assert_eq!(read(root.path(), "out/link"), "replaced");
    assert!(
        !fs::symlink_metadata(root.path().join("out/link"))
            .unwrap()
            .is_symlink()
    );
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[test]
fn add_url_downloads_without_unpacking() {
    if !require_root() {
        return;
    }
    let gz = compress("gzip", &sample_archive());
    let base = serve(vec![
        (
            "/t.tar.gz",
            Route::ok(gz.clone()).header("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ),
        ("/tool?x=1", Route::ok("#!/bin/sh\n")),
        (
            "/missing",
            Route {
                status: 404,
                headers: vec![],
                body: b"no".to_vec(),
            },
        ),
    ]);
    let (ctx, dest) = (tmp(), tmp());
    let env = Env::context(ctx.path(), dest.path());
    env.run(&format!(
        "ADD {base}/t.tar.gz /\nADD {base}/t.tar.gz /newname.tar.gz\n\
         ADD --unpack=true {base}/t.tar.gz /unpacked/\n\
         ADD --chmod=0755 {base}/tool?x=1 /usr/bin/\n"
    ))
    .unwrap();
    let d = dest.path();
    assert_eq!(fs::read(d.join("t.tar.gz")).unwrap(), gz);
    assert_eq!(mode(d, "t.tar.gz"), 0o600);
    assert_eq!(owner(d, "t.tar.gz"), (0, 0));
    assert_eq!(
        fs::metadata(d.join("t.tar.gz")).unwrap().mtime(),
        784_111_777
    );
    assert_eq!(fs::read(d.join("newname.tar.gz")).unwrap(), gz);
    check_sample(&d.join("unpacked"));
    assert_eq!(read(d, "usr/bin/tool"), "#!/bin/sh\n");
    assert_eq!(mode(d, "usr/bin/tool"), 0o755);

    let err = env.run(&format!("ADD {base}/missing /m")).unwrap_err();
    assert!(
        matches!(err, CopyError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("404"), "{err}");
    assert!(!exists(d, "m"));

    // Nothing listens on port 1 (a port freed by the test could be taken
    // by a server of another test meanwhile).
    let err = env.run("ADD http://127.0.0.1:1/x /x").unwrap_err();
    assert!(matches!(err, CopyError::Download { .. }), "{err:?}");
}

#[test]
fn add_url_checksum() {
    if !require_root() {
        return;
    }
    let body = b"checked content".to_vec();
    let base = serve(vec![("/f", Route::ok(body.clone()))]);
    let (ctx, dest) = (tmp(), tmp());
    let env = Env::context(ctx.path(), dest.path());
    let good = sha256(&body);
    env.run(&format!(
        "ARG DIGEST={good}\nARG LINK={base}/f\nADD --checksum=${{DIGEST}} ${{LINK}} /ok"
    ))
    .unwrap();
    assert_eq!(fs::read(dest.path().join("ok")).unwrap(), body);

    let bad = sha256(b"something else");
    let dest = tmp();
    let env = Env::context(ctx.path(), dest.path());
    let err = env
        .run(&format!("ADD --checksum={bad} {base}/f /sub/bad"))
        .unwrap_err();
    assert!(matches!(err, CopyError::ChecksumMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&good) && message.contains(&bad),
        "{message}"
    );
    // Verified before anything is written: not even the parent exists.
    assert!(listing(dest.path()).is_empty());
}
