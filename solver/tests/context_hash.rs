//! Context checksums: what changes them, what does not, and the stat cache
//! that spares reading unchanged files.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use cache::store::Store;
use frontend::dockerignore::PatternMatcher;
use solver::context_hash::{ContextHasher, ContextSum, Selection};

struct Fixture {
    _root: tempfile::TempDir,
    ctx: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        Self {
            _root: root,
            ctx: tempfile::tempdir().unwrap(),
            store,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.ctx.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn hasher(&self, ignore: Option<&PatternMatcher>) -> ContextHasher {
        ContextHasher::new(&self.store, self.ctx.path(), ignore).unwrap()
    }

    /// A fresh hasher's sum (the stat cache of earlier saves is used).
    fn sum(&self, paths: &[&str]) -> ContextSum {
        self.sum_with(paths, &[], None)
    }

    fn sum_with(
        &self,
        paths: &[&str],
        exclude: &[String],
        ignore: Option<&PatternMatcher>,
    ) -> ContextSum {
        self.hasher(ignore)
            .checksum(&Selection {
                paths: paths.to_vec(),
                exclude,
                owners: true,
            })
            .unwrap()
    }

    fn cache_files(&self) -> Vec<PathBuf> {
        let dir = self.store.root().join("context-cache");
        match fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn names(sum: &ContextSum) -> Vec<&str> {
    sum.entries.iter().map(|(n, _)| n.as_str()).collect()
}

/// Files must be older than the racy-timestamp margin before the stat
/// cache records them.
fn age() {
    std::thread::sleep(Duration::from_millis(250));
}

fn sample(f: &Fixture) {
    f.write("src/main.rs", "fn main() {}\n");
    f.write("src/lib/util.rs", "pub fn util() {}\n");
    f.write("README.md", "# readme\n");
    f.write("notes.txt", "notes\n");
}

#[test]
fn same_content_gives_the_same_digest_with_or_without_the_stat_cache() {
    let a = Fixture::new();
    let b = Fixture::new();
    sample(&a);
    sample(&b);
    age();
    let first = a.sum(&["/src"]);
    assert_eq!(
        names(&first),
        ["src", "src/lib", "src/lib/util.rs", "src/main.rs"]
    );
    // Another directory with the same files, another store.
    assert_eq!(b.sum(&["/src"]), first);
    // Saved cache, then a new hasher that reads nothing.
    let h = a.hasher(None);
    let sel = Selection {
        paths: vec!["/src"],
        exclude: &[],
        owners: true,
    };
    assert_eq!(h.checksum(&sel).unwrap(), first);
    h.save().unwrap();
    assert_eq!(a.cache_files().len(), 1);
    let h2 = a.hasher(None);
    assert_eq!(h2.checksum(&sel).unwrap(), first);
    assert_eq!(h2.stats().files_read, 0);
    assert_eq!(h2.stats().cache_hits, 2);
    // The whole context differs from a part of it.
    assert_ne!(a.sum(&["/"]).digest, first.digest);
    assert_eq!(a.sum(&["/"]), b.sum(&["/"]));
}

#[test]
fn content_mode_link_target_and_membership_changes_are_seen() {
    let f = Fixture::new();
    sample(&f);
    symlink("main.rs", f.path("src/link")).unwrap();
    let mut seen = vec![f.sum(&["/src"]).digest];
    let mut check = |what: &str| {
        let d = f.sum(&["/src"]).digest;
        assert!(!seen.contains(&d), "{what} did not change the digest");
        seen.push(d);
    };
    f.write("src/main.rs", "fn main() { }\n");
    check("content");
    fs::set_permissions(f.path("src/main.rs"), fs::Permissions::from_mode(0o755)).unwrap();
    check("mode");
    fs::set_permissions(f.path("src/main.rs"), fs::Permissions::from_mode(0o4755)).unwrap();
    check("setuid");
    fs::remove_file(f.path("src/link")).unwrap();
    symlink("lib/util.rs", f.path("src/link")).unwrap();
    check("link target");
    f.write("src/lib/new.rs", "");
    check("added file");
    fs::remove_file(f.path("src/lib/util.rs")).unwrap();
    check("removed file");
    fs::create_dir(f.path("src/empty")).unwrap();
    check("added directory");
    fs::set_permissions(f.path("src/empty"), fs::Permissions::from_mode(0o700)).unwrap();
    check("directory mode");
    let without_owners = |f: &Fixture| {
        f.hasher(None)
            .checksum(&Selection {
                paths: vec!["/src"],
                exclude: &[],
                owners: false,
            })
            .unwrap()
            .digest
    };
    let before = without_owners(&f);
    std::os::unix::fs::chown(f.path("src/main.rs"), Some(1000), Some(1000)).unwrap();
    // chown clears the set-id bits: give them back, only the owner differs.
    fs::set_permissions(f.path("src/main.rs"), fs::Permissions::from_mode(0o4755)).unwrap();
    check("owner");
    // COPY makes context files 0:0, so its selection leaves owners out.
    assert_eq!(without_owners(&f), before, "owners counted for COPY");
}

#[test]
fn unselected_ignored_and_touched_files_do_not_change_it() {
    let f = Fixture::new();
    sample(&f);
    f.write("src/secret.key", "k1");
    let ignore = PatternMatcher::new(["**/*.key"]).unwrap();
    let before = f.sum_with(&["/src"], &[], Some(&ignore));
    assert!(!names(&before).contains(&"src/secret.key"));
    f.write("notes.txt", "other notes\n");
    f.write("src/secret.key", "k2");
    let file = fs::File::options()
        .write(true)
        .open(f.path("src/main.rs"))
        .unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    drop(file);
    assert_eq!(f.sum_with(&["/src"], &[], Some(&ignore)), before);
    // Without the ignore file the key is part of it.
    assert_ne!(f.sum(&["/src"]).digest, before.digest);
}

#[test]
fn dockerignore_exceptions_reinclude() {
    let f = Fixture::new();
    f.write("dir/keep", "1");
    f.write("dir/other", "1");
    f.write("dir/sub/keep", "1");
    let ignore = PatternMatcher::new(["dir", "!dir/keep"]).unwrap();
    let sum = |f: &Fixture| f.sum_with(&["/"], &[], Some(&ignore));
    let before = sum(&f);
    assert_eq!(names(&before), [".", "dir", "dir/keep"]);
    f.write("dir/other", "2");
    f.write("dir/sub/keep", "2");
    assert_eq!(sum(&f), before);
    f.write("dir/keep", "2");
    assert_ne!(sum(&f), before);
}

#[test]
fn wildcards_select_matching_names_only() {
    let f = Fixture::new();
    f.write("a.go", "a");
    f.write("b.go", "b");
    f.write("c.txt", "c");
    f.write("pkg/x/y.go", "y");
    f.write("pkg/z.go", "z");
    let before = f.sum(&["/*.go"]);
    assert_eq!(names(&before), ["a.go", "b.go"]);
    f.write("c.txt", "cc");
    assert_eq!(f.sum(&["/*.go"]), before);
    f.write("b.go", "bb");
    assert_ne!(f.sum(&["/*.go"]), before);
    assert_eq!(
        names(&f.sum(&["/pkg/*/*.go"])),
        ["pkg", "pkg/x", "pkg/x/y.go"]
    );
    // `**` spans directories (what COPY --parents reads, a superset of a
    // plain one-level match).
    let all = f.sum(&["/pkg/**/*.go"]);
    assert_eq!(names(&all), ["pkg", "pkg/x", "pkg/x/y.go", "pkg/z.go"]);
    // A new match changes it; a pattern that matches nothing is a marker.
    f.write("d.go", "d");
    assert_ne!(f.sum(&["/*.go"]), before);
    let none = f.sum(&["/*.rs"]);
    assert_eq!(names(&none), ["<no match> /*.rs"]);
    assert_eq!(f.sum(&["/*.rs"]), none);
}

#[test]
fn exclude_patterns_are_relative_to_each_source() {
    let f = Fixture::new();
    f.write("src/a.rs", "a");
    f.write("src/debug.log", "1");
    f.write("src/deep/trace.log", "1");
    let one_level = ["*.log".to_owned()];
    let any_level = ["**/*.log".to_owned()];
    let base_one = f.sum_with(&["/src"], &one_level, None);
    let base_any = f.sum_with(&["/src"], &any_level, None);
    assert_eq!(
        names(&base_one),
        ["src", "src/a.rs", "src/deep", "src/deep/trace.log"]
    );
    assert_eq!(names(&base_any), ["src", "src/a.rs", "src/deep"]);
    f.write("src/debug.log", "2");
    assert_eq!(f.sum_with(&["/src"], &one_level, None), base_one);
    f.write("src/deep/trace.log", "2");
    assert_ne!(f.sum_with(&["/src"], &one_level, None), base_one);
    assert_eq!(f.sum_with(&["/src"], &any_level, None), base_any);
    // A bad pattern is a marker (COPY reports it), not an error.
    let bad = f.sum_with(&["/src"], &["[".to_owned()], None);
    assert_eq!(bad.entries.len(), 1);
    assert!(bad.entries[0].0.starts_with("<bad exclude>"), "{bad:?}");
}

#[test]
fn a_symlinked_source_is_followed_and_inner_links_are_hashed_as_links() {
    let f = Fixture::new();
    f.write("real/file", "content");
    f.write("real/other", "content");
    symlink("real", f.path("link")).unwrap();
    symlink("other", f.path("real/inner")).unwrap();
    let before = f.sum(&["/link"]);
    assert_eq!(
        names(&before),
        ["link", "link/file", "link/inner", "link/other"]
    );
    f.write("real/file", "changed");
    let after = f.sum(&["/link"]);
    assert_ne!(after, before);
    // The inner link is not followed: pointing it to a file with the same
    // content still changes the sum.
    fs::remove_file(f.path("real/inner")).unwrap();
    symlink("./other", f.path("real/inner")).unwrap();
    assert_ne!(f.sum(&["/link"]), after);
    // A file reached through a link keeps its written name.
    symlink("real/file", f.path("alias")).unwrap();
    let alias = f.sum(&["/alias"]);
    assert_eq!(names(&alias), ["alias"]);
    assert_ne!(alias.entries[0].1, f.sum(&["/real/file"]).entries[1].1);
}

#[test]
fn missing_and_escaping_sources_give_stable_markers() {
    let f = Fixture::new();
    f.write("a", "a");
    symlink("/etc", f.path("out")).unwrap();
    let missing = f.sum(&["/nope"]);
    assert_eq!(names(&missing), ["<missing> /nope"]);
    assert_eq!(f.sum(&["/nope"]), missing);
    assert_ne!(f.sum(&["/other"]), missing);
    let escaping = f.sum(&["/out/passwd"]);
    assert_eq!(escaping.entries.len(), 1);
    assert!(
        escaping.entries[0].0.starts_with("<escapes> /out/passwd"),
        "{escaping:?}"
    );
    // With another source the marker is one entry among the others, and
    // the file appearing changes the sum.
    let both = f.sum(&["/a", "/nope"]);
    assert_eq!(names(&both), ["<missing> /nope", "a"]);
    f.write("nope", "");
    assert_ne!(f.sum(&["/a", "/nope"]), both);
}

#[test]
fn racy_rewrite_with_the_same_size_and_mtime_is_seen() {
    let f = Fixture::new();
    f.write("f", "aaaa");
    // A time still to come stands for "just written" however long the
    // machine takes to get to the checksum (a stat stays untrusted until
    // it is clearly older than the read).
    let mtime = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let file = fs::File::options().write(true).open(f.path("f")).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    let h = f.hasher(None);
    let sel = Selection {
        paths: vec!["/f"],
        exclude: &[],
        owners: true,
    };
    let first = h.checksum(&sel).unwrap();
    // Just written: its timestamps cannot tell a later rewrite apart.
    assert_eq!(h.stats().racy, 1);
    h.save().unwrap();
    f.write("f", "bbbb");
    let file = fs::File::options().write(true).open(f.path("f")).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(
        fs::metadata(f.path("f")).unwrap().modified().unwrap(),
        mtime
    );
    let h2 = f.hasher(None);
    let second = h2.checksum(&sel).unwrap();
    assert_ne!(second, first);
    assert_eq!(h2.stats().files_read, 1);
}

#[test]
fn stat_cache_survives_save_and_spares_reads() {
    let f = Fixture::new();
    for i in 0..50 {
        f.write(&format!("d{}/f{i}", i % 5), &format!("content {i}"));
    }
    age();
    let sel = Selection {
        paths: vec!["/"],
        exclude: &[],
        owners: true,
    };
    let h = f.hasher(None);
    let cold = h.checksum(&sel).unwrap();
    assert_eq!((h.stats().files_read, h.stats().cache_hits), (50, 0));
    assert_eq!(h.stats().racy, 0);
    // A second checksum in the same hasher uses what the first recorded.
    assert_eq!(h.checksum(&sel).unwrap(), cold);
    assert_eq!(h.stats().files_read, 50);
    h.save().unwrap();

    let warm = f.hasher(None);
    assert_eq!(warm.checksum(&sel).unwrap(), cold);
    assert_eq!((warm.stats().files_read, warm.stats().cache_hits), (0, 50));
    // Nothing changed: saving writes nothing.
    let cache = f.cache_files().pop().unwrap();
    let written = fs::metadata(&cache).unwrap().modified().unwrap();
    warm.save().unwrap();
    assert_eq!(fs::metadata(&cache).unwrap().modified().unwrap(), written);

    f.write("d3/f3", "changed");
    let third = f.hasher(None);
    let changed = third.checksum(&sel).unwrap();
    assert_ne!(changed, cold);
    assert_eq!(
        (third.stats().files_read, third.stats().cache_hits),
        (1, 49)
    );
    let differing: Vec<&str> = changed
        .entries
        .iter()
        .zip(&cold.entries)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(differing, ["d3/f3"]);
}

#[test]
fn a_corrupt_or_foreign_cache_file_is_ignored() {
    let f = Fixture::new();
    sample(&f);
    age();
    let sel = Selection {
        paths: vec!["/"],
        exclude: &[],
        owners: true,
    };
    let h = f.hasher(None);
    let sum = h.checksum(&sel).unwrap();
    h.save().unwrap();
    let cache = f.cache_files().pop().unwrap();
    let mut bytes = fs::read(&cache).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&cache, &bytes).unwrap();
    let h2 = f.hasher(None);
    assert_eq!(h2.checksum(&sel).unwrap(), sum);
    assert_eq!(h2.stats().cache_hits, 0);
    assert_eq!(h2.stats().files_read, 4);
    // Saving replaces it with a good one.
    h2.save().unwrap();
    let h3 = f.hasher(None);
    assert_eq!(h3.checksum(&sel).unwrap(), sum);
    assert_eq!(h3.stats().files_read, 0);
    fs::write(&cache, b"not a cache").unwrap();
    assert_eq!(f.sum(&["/"]), sum);
    fs::write(&cache, b"").unwrap();
    assert_eq!(f.sum(&["/"]), sum);
}

#[test]
fn hard_links_between_selected_files_count() {
    let f = Fixture::new();
    f.write("a", "same");
    f.write("b", "same");
    let separate = f.sum(&["/"]);
    let only_a = f.sum(&["/a"]);
    fs::remove_file(f.path("b")).unwrap();
    fs::hard_link(f.path("a"), f.path("b")).unwrap();
    let linked = f.sum(&["/"]);
    assert_ne!(linked, separate);
    assert_eq!(f.sum(&["/", "/b"]), linked);
    // Only one name of the inode selected: an ordinary file.
    assert_eq!(f.sum(&["/a"]), only_a);
}

#[test]
fn concurrent_checksums_share_one_hasher() {
    let f = Fixture::new();
    for i in 0..200 {
        f.write(&format!("p{}/q{}/f{i}", i % 4, i % 7), &"x".repeat(i * 37));
    }
    let h = f.hasher(None);
    let selections = [vec!["/p0", "/p1"], vec!["/p2"], vec!["/"], vec!["/p*/q3"]];
    let expected: Vec<ContextSum> = selections.iter().map(|paths| f.sum(paths)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let h = &h;
                let paths = selections[i % 4].clone();
                s.spawn(move || {
                    h.checksum(&Selection {
                        paths,
                        exclude: &[],
                        owners: true,
                    })
                    .unwrap()
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.join().unwrap(), expected[i % 4]);
        }
    });
}

mod copy_common;

/// The selection is what COPY copies: for a source directory, the entries
/// below it are exactly the files COPY writes (.dockerignore with
/// exceptions, `--exclude` with exceptions, links, hidden files).
#[test]
fn entries_match_what_copy_writes() {
    if !copy_common::require_root() {
        return;
    }
    let f = Fixture::new();
    for rel in [
        "src/a.rs",
        "src/.hidden",
        "src/b.log",
        "src/t.tmp",
        "src/deep/c.log",
        "src/deep/keep.log",
        "src/deep/u.tmp",
        "src/vendor/x/y.txt",
        "src/vendor/keep/z.txt",
        "src/ignored_dir/f",
        "top.txt",
    ] {
        f.write(rel, rel);
    }
    symlink("a.rs", f.path("src/link")).unwrap();
    symlink("/nowhere", f.path("src/dangling")).unwrap();
    let ignore = PatternMatcher::new([
        "src/vendor",
        "!src/vendor/keep",
        "**/*.tmp",
        "src/ignored_dir",
    ])
    .unwrap();
    let cases: [(&str, &[&str]); 4] = [
        ("/src", &["*.log", "!deep/keep.log"]),
        ("/src", &[]),
        ("/src/deep", &["keep.log"]),
        ("/", &["src/deep", "top.txt"]),
    ];
    for (source, exclude) in cases {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        let flags: String = exclude.iter().map(|e| format!("--exclude={e} ")).collect();
        let op = copy_common::copy_op(&format!(
            "COPY {flags}{} /out/",
            source.trim_start_matches('/').to_owned() + if source == "/" { "." } else { "" }
        ));
        let dest = tempfile::tempdir().unwrap();
        let mut env = copy_common::Env::context(f.ctx.path(), dest.path());
        env.ignore = Some(&ignore);
        env.apply(&op).unwrap();
        let copied: Vec<String> = copy_common::listing(&dest.path().join("out"))
            .into_iter()
            .map(|p| p.trim_end_matches('/').to_owned())
            .collect();
        let sum = f.sum_with(&[source], &exclude, Some(&ignore));
        let prefix = format!("{}/", source.trim_start_matches('/'));
        let mut selected: Vec<String> = sum
            .entries
            .iter()
            .filter_map(|(name, _)| {
                if source == "/" {
                    (name != ".").then(|| name.clone())
                } else {
                    name.strip_prefix(&prefix).map(str::to_owned)
                }
            })
            .collect();
        selected.sort();
        assert_eq!(selected, copied, "COPY {flags}{source}");
        if source == "/src" && !exclude.is_empty() {
            assert_eq!(
                copied,
                [
                    ".hidden",
                    "a.rs",
                    "dangling",
                    "deep",
                    "deep/c.log",
                    "deep/keep.log",
                    "link",
                    "vendor",
                    "vendor/keep",
                    "vendor/keep/z.txt"
                ]
            );
        }
    }
}

#[test]
fn one_hasher_answers_a_selection_once() {
    let f = Fixture::new();
    sample(&f);
    let h = f.hasher(None);
    let sel = Selection {
        paths: vec!["/src"],
        exclude: &[],
        owners: true,
    };
    let first = h.checksum(&sel).unwrap();
    f.write("src/main.rs", "changed");
    // One build sees one state of its context.
    assert_eq!(h.checksum(&sel).unwrap(), first);
    assert_ne!(f.sum(&["/src"]), first);
}

#[test]
fn raw_names_fifos_and_devices_are_hashed_without_reading_them() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let f = Fixture::new();
    fs::create_dir(f.path("d")).unwrap();
    // Two names that read the same once made UTF-8.
    fs::write(f.path("d").join(OsStr::from_bytes(b"n\xff")), "x").unwrap();
    let one = f.sum(&["/d"]);
    fs::remove_file(f.path("d").join(OsStr::from_bytes(b"n\xff"))).unwrap();
    fs::write(f.path("d").join(OsStr::from_bytes(b"n\xfe")), "x").unwrap();
    let other = f.sum(&["/d"]);
    assert_eq!(names(&one), names(&other));
    assert_ne!(one.digest, other.digest);

    // A FIFO is not opened (that would block).
    nix::unistd::mkfifo(
        &f.path("d/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let with_fifo = f.sum(&["/d"]);
    assert!(names(&with_fifo).contains(&"d/fifo"));
    if !copy_common::require_root() {
        return;
    }
    let mknod = |rdev| {
        let _ = fs::remove_file(f.path("d/dev"));
        nix::sys::stat::mknod(
            &f.path("d/dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            rdev,
        )
        .unwrap();
        f.sum(&["/d"])
    };
    let null = mknod(nix::sys::stat::makedev(1, 3));
    let zero = mknod(nix::sys::stat::makedev(1, 5));
    assert_ne!(null, zero);
    assert_ne!(null, with_fifo);
}

/// `COPY --parents` with `**`: the entries, directories on the way
/// included, are the paths COPY writes.
#[test]
fn parents_entries_match_what_copy_writes() {
    if !copy_common::require_root() {
        return;
    }
    let f = Fixture::new();
    for rel in [
        "src/b.log",
        "src/a.rs",
        "src/deep/c.log",
        "src/deep/er/d.log",
        "src/deep/er/e.txt",
        "src/skip/f.log",
        "other/g.log",
    ] {
        f.write(rel, rel);
    }
    let ignore = PatternMatcher::new(["src/skip"]).unwrap();
    let op = copy_common::copy_op("COPY --parents src/**/*.log /out/");
    let dest = tempfile::tempdir().unwrap();
    let mut env = copy_common::Env::context(f.ctx.path(), dest.path());
    env.ignore = Some(&ignore);
    env.apply(&op).unwrap();
    let copied: Vec<String> = copy_common::listing(&dest.path().join("out"))
        .into_iter()
        .map(|p| p.trim_end_matches('/').to_owned())
        .collect();
    let sum = f.sum_with(&["/src/**/*.log"], &[], Some(&ignore));
    assert_eq!(names(&sum), copied);
    assert_eq!(
        copied,
        [
            "src",
            "src/b.log",
            "src/deep",
            "src/deep/c.log",
            "src/deep/er",
            "src/deep/er/d.log"
        ]
    );
}

/// Files of 64 MiB and more are hashed in chunks in parallel: the digest
/// is still a function of the content alone.
#[test]
fn large_files_hashed_in_chunks() {
    let a = Fixture::new();
    let b = Fixture::new();
    let mut content: Vec<u8> = (0..(80u32 << 20)).map(|i| (i % 251) as u8).collect();
    fs::write(a.path("big"), &content).unwrap();
    fs::write(b.path("big"), &content).unwrap();
    let h = a.hasher(None);
    let sel = Selection {
        paths: vec!["/big"],
        exclude: &[],
        owners: true,
    };
    let first = h.checksum(&sel).unwrap();
    assert_eq!(h.stats().bytes_read, 80 << 20);
    assert_eq!(b.sum(&["/big"]), first);
    // One byte in the last chunk.
    let last = content.len() - 1;
    content[last] ^= 1;
    fs::write(a.path("big"), &content).unwrap();
    assert_ne!(a.sum(&["/big"]), first);
    // Same length, one byte in the first chunk.
    content[last] ^= 1;
    content[0] ^= 1;
    fs::write(a.path("big"), &content).unwrap();
    assert_ne!(a.sum(&["/big"]), first);
}
