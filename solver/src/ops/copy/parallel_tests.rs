//! The copy with worker threads writes exactly the tree the sequential copy
//! writes (same names, types, modes, owners, times, xattrs, contents and
//! hard links, hence the same layer), and fails with the same error.
//!
//! These tests chown files, so they need root and skip elsewhere.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use frontend::convert::{CompileOptions, NoResolver, compile};
use frontend::graph::{CopyOp, Op};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::{CopyContext, CopyError, CopyStats, apply_copy_with};
use crate::sandbox::CancelHandle;

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: COPY tests chown files and need root");
    false
}

fn copy_op(line: &str) -> CopyOp {
    let text = format!("FROM scratch\n{line}\n");
    let compiled = compile(text.as_bytes(), &CompileOptions::default(), &NoResolver).unwrap();
    compiled
        .graph
        .vertices()
        .find_map(|(_, v)| match &v.op {
            Op::Copy(op) => Some((**op).clone()),
            _ => None,
        })
        .unwrap()
}

fn run(
    op: &CopyOp,
    src: &Path,
    context: bool,
    dest: &Path,
    workers: usize,
) -> Result<CopyStats, CopyError> {
    let cancel = CancelHandle::new();
    let cx = CopyContext {
        dest_root: dest,
        lookup_root: dest,
        src_root: Some(src),
        src_is_context: context,
        src_ignore: None,
        cwd: "/",
        source_date_epoch: None,
        cancel: &cancel,
        downloads: &[],
    };
    apply_copy_with(op, &cx, workers)
}

/// Sets the modification time; the access time goes an hour ahead, past
/// the change time, so that reading the source (relatime) leaves it alone
/// and every copy sees the same.
fn set_time(path: &Path, sec: i64, nsec: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let atime = TimeSpec::new(now.as_secs() as i64 + 3600, 0);
    let t = TimeSpec::new(sec, nsec);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A source with many files and the cases that need care: nested and
/// oddly-moded directories, set-id bits, unreadable modes, owners, xattrs,
/// hard links within and across directories, symlinks, a fifo, and two
/// directories that meet in the target through a link there.
fn make_source(root: &Path) {
    let modes = [
        0o644, 0o755, 0o600, 0o4755, 0o2755, 0o6711, 0o1755, 0o000, 0o444, 0o2644,
    ];
    for d in 0..12 {
        let dir = root.join(format!("d{d:02}"));
        for s in 0..3 {
            let sub = dir.join(format!("s{s}"));
            fs::create_dir_all(&sub).unwrap();
            for f in 0..25 {
                let path = sub.join(format!("f{f:02}"));
                let size = (d * 7919 + s * 104_729 + f * 1_299_709) % 20_000;
                let content: Vec<u8> = (0..size).map(|i| (i * 31 + f + d) as u8).collect();
                fs::write(&path, content).unwrap();
                let mode = modes[(d + s + f) % modes.len()];
                std::os::unix::fs::lchown(&path, Some(1000 + f as u32), Some(2000 + d as u32))
                    .unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
                if f % 5 == 0 {
                    // tmpfs without user xattrs: both copies see none.
                    let _ = xattr::set(&path, "user.test", format!("v{d}{s}{f}").as_bytes());
                }
                set_time(
                    &path,
                    1_600_000_000 + (d * 100 + f) as i64,
                    (s * 1000 + f) as i64,
                );
            }
            set_time(&sub, 1_500_000_000 + s as i64, 5);
        }
    }
    fs::set_permissions(root.join("d01"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(root.join("d02/s1"), fs::Permissions::from_mode(0o2750)).unwrap();
    fs::set_permissions(root.join("d03"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::lchown(root.join("d04"), Some(33), Some(44)).unwrap();
    // Hard links: three names across directories, a pair in one directory.
    fs::hard_link(root.join("d00/s0/f03"), root.join("d05/s2/h1")).unwrap();
    fs::hard_link(root.join("d00/s0/f03"), root.join("d11/s0/h2")).unwrap();
    fs::hard_link(root.join("d07/s1/f10"), root.join("d07/s1/g10")).unwrap();
    symlink("../s1/f01", root.join("d06/s0/rel")).unwrap();
    symlink("/d00/s0/f00", root.join("d06/s0/abs")).unwrap();
    symlink("nowhere", root.join("d06/s0/dangling")).unwrap();
    nix::unistd::mkfifo(
        &root.join("d08/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // In the target `lib` is a link to `usr/lib`: both directories write
    // `usr/lib/x`, and the later one in walk order (usr) wins.
    for (dir, text) in [("lib", "from lib"), ("usr/lib", "from usr/lib")] {
        fs::create_dir_all(root.join(dir)).unwrap();
        for name in ["x", "y"] {
            fs::write(root.join(dir).join(name), format!("{text} {name}")).unwrap();
        }
    }
    fs::write(root.join("lib/only-lib"), "lib").unwrap();
    for rel in [
        "d06/s0/rel",
        "d06/s0/abs",
        "d06/s0/dangling",
        "d08/fifo",
        "lib/x",
        "lib/y",
        "lib/only-lib",
        "usr/lib/x",
        "usr/lib/y",
    ] {
        set_time(&root.join(rel), 1_400_000_000, 0);
    }
}

/// A target that already has content: a file and a link to replace, and
/// the `lib -> usr/lib` link.
fn make_target(root: &Path) {
    let app = root.join("app");
    fs::create_dir_all(app.join("usr/lib")).unwrap();
    symlink("usr/lib", app.join("lib")).unwrap();
    fs::create_dir_all(app.join("d00/s0")).unwrap();
    fs::write(app.join("d00/s0/f01"), "old").unwrap();
    symlink("/etc/passwd", app.join("d00/s0/f02")).unwrap();
}

/// What [`make_target`] makes and the copy keeps.
const PREEXISTING: [&str; 6] = [
    "app",
    "app/usr",
    "app/usr/lib",
    "app/d00",
    "app/d00/s0",
    "app/lib",
];

/// Everything about a tree that goes into a layer, one line per entry.
fn snapshot(root: &Path) -> Vec<String> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut Vec<String>,
        inodes: &mut HashMap<u64, String>,
        files: &mut Vec<(String, std::path::PathBuf)>,
    ) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            // Metadata before anything is read: reading moves atimes.
            let m = path.symlink_metadata().unwrap();
            let ft = m.file_type();
            let mut xattrs: Vec<String> = xattr::list(&path)
                .map(|names| {
                    names
                        .map(|n| {
                            let v = xattr::get(&path, &n).ok().flatten().unwrap_or_default();
                            format!("{}={}", n.to_string_lossy(), String::from_utf8_lossy(&v))
                        })
                        .collect()
                })
                .unwrap_or_default();
            xattrs.sort();
            let kind = if ft.is_dir() {
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&path).unwrap().display())
            } else if ft.is_file() {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                files.push((rel.clone(), path.clone()));
                format!("file size={} linkgroup={first}", m.len())
            } else {
                format!("special {:o}", m.mode() & 0o170000)
            };
            let times = if PREEXISTING.contains(&rel.as_str()) {
                // Not the copy's: they keep their times, which the copy's
                // writes into them change.
                String::new()
            } else if ft.is_dir() {
                // The walk reads directories: only mtime is stable.
                format!("m={}.{}", m.mtime(), m.mtime_nsec())
            } else {
                format!(
                    "a={}.{} m={}.{}",
                    m.atime(),
                    m.atime_nsec(),
                    m.mtime(),
                    m.mtime_nsec()
                )
            };
            out.push(format!(
                "{rel} {kind} mode={:o} owner={}:{} {times} xattrs={xattrs:?}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
            if ft.is_dir() {
                walk(root, &path, out, inodes, files);
            }
        }
    }
    let mut out = Vec::new();
    let mut files = Vec::new();
    walk(root, root, &mut out, &mut HashMap::new(), &mut files);
    for (rel, path) in files {
        let content = fs::read(&path).unwrap();
        let sum = content.iter().fold(0u64, |h, b| {
            h.wrapping_mul(1_000_003).wrapping_add(u64::from(*b))
        });
        out.push(format!("{rel} content={sum:x}"));
    }
    out
}

#[test]
fn parallel_copy_writes_the_sequential_tree() {
    if !is_root() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    for (line, context) in [
        ("COPY . /app", true),
        ("COPY . /app", false),
        ("COPY --chown=7:8 --chmod=4750 . /app/", false),
    ] {
        let op = copy_op(line);
        let seq = tempfile::tempdir().unwrap();
        make_target(seq.path());
        let seq_stats = run(&op, src.path(), context, seq.path(), 0).unwrap();
        let expected = snapshot(seq.path());
        for workers in [1, 2, 4, 8] {
            let par = tempfile::tempdir().unwrap();
            make_target(par.path());
            let par_stats = run(&op, src.path(), context, par.path(), workers).unwrap();
            assert_eq!(par_stats, seq_stats, "{line} with {workers} workers");
            let got = snapshot(par.path());
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(g, e, "{line} (context: {context}) with {workers} workers");
            }
            assert_eq!(got.len(), expected.len());
        }
        // What the sequential copy is known to do with the tricky parts.
        let app = seq.path().join("app");
        let meta = |rel: &str| app.join(rel).symlink_metadata().unwrap();
        assert_eq!(
            fs::read_to_string(app.join("usr/lib/x")).unwrap(),
            "from usr/lib x"
        );
        assert_eq!(
            fs::read_to_string(app.join("usr/lib/only-lib")).unwrap(),
            "lib"
        );
        assert_eq!(meta("d00/s0/f03").ino(), meta("d05/s2/h1").ino());
        assert_eq!(meta("d00/s0/f03").ino(), meta("d11/s0/h2").ino());
        assert_eq!(meta("d07/s1/f10").ino(), meta("d07/s1/g10").ino());
        assert!(
            meta("d00/s0/f02").is_file(),
            "a link in the way is replaced"
        );
        if line == "COPY . /app" {
            // d00/s0/f03: modes[3]; d01/s0/f04: modes[5]; d00/s0/f06: modes[6].
            assert_eq!(meta("d00/s0/f03").mode() & 0o7777, 0o4755);
            assert_eq!(meta("d01/s0/f04").mode() & 0o7777, 0o6711);
            assert_eq!(meta("d00/s0/f06").mode() & 0o7777, 0o1755);
            assert_eq!(meta("d01").mode() & 0o7777, 0o1777);
            let owner = if context { (0, 0) } else { (1003, 2000) };
            assert_eq!((meta("d00/s0/f03").uid(), meta("d00/s0/f03").gid()), owner);
            assert_eq!(meta("d02/s1/f07").mtime(), 1_600_000_000 + 207);
            assert_eq!(meta("d02/s1/f07").mtime_nsec(), 1007);
        }
    }
}

#[test]
fn parallel_copy_fails_with_the_first_error_in_walk_order() {
    if !is_root() {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    make_source(src.path());
    let op = copy_op("COPY . /app");
    for workers in [0, 1, 4, 8] {
        for _ in 0..3 {
            let dest = tempfile::tempdir().unwrap();
            // Directories where files go: a file cannot replace them.
            for rel in ["app/d09/s2/f20", "app/d03/s1/f05", "app/d10/s0/f00"] {
                fs::create_dir_all(dest.path().join(rel)).unwrap();
            }
            let err = run(&op, src.path(), true, dest.path(), workers).unwrap_err();
            assert!(
                matches!(&err, CopyError::ReplaceDirectory { path } if path == "/app/d03/s1/f05"),
                "{workers} workers: {err:?}"
            );
        }
    }
}
