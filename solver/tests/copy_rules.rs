//! COPY's rules on plain directories (needs root: the copy chowns): the
//! destination forms, wildcards, links, `.dockerignore`, `--exclude`,
//! `--parents`, `--chown`, `--chmod`, heredocs and metadata, following
//! BuildKit's scenarios (buildkit-scenarios.md, section B).

mod copy_common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use copy_common::*;
use frontend::dockerignore::PatternMatcher;
use frontend::graph::{Chmod, CopyOp, CopySource};
use solver::ops::copy::CopyError;

#[test]
fn file_to_a_name_or_into_a_directory() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo", "foo-contents", 0o644);
    Env::context(ctx.path(), dest.path())
        .run("COPY foo /foo2\nCOPY foo /\nCOPY foo /sample/")
        .unwrap();
    assert_eq!(read(dest.path(), "foo2"), "foo-contents");
    assert_eq!(read(dest.path(), "foo"), "foo-contents");
    assert_eq!(read(dest.path(), "sample/foo"), "foo-contents");
}

#[test]
fn wildcards_and_directory_contents() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo.go", "foo-contents", 0o600);
    file(ctx.path(), "bar.go", "bar-contents", 0o600);
    file(ctx.path(), "sub/dir1/dir2/foo", "sub-contents", 0o600);
    Env::context(ctx.path(), dest.path())
        .run(
            "COPY *.go /gofiles/\n\
             COPY f*.go foo2.go\n\
             COPY sub/* /subdest/\n\
             COPY sub/*/dir2/foo /subdest2/\n\
             COPY sub/*/dir2/foo /subdest3/bar\n\
             COPY . all/\n\
             COPY sub/dir1/ subdest4\n\
             COPY sub/dir1/. subdest5\n\
             COPY sub/dir1 subdest6\n",
        )
        .unwrap();
    let d = dest.path();
    assert_eq!(read(d, "gofiles/foo.go"), "foo-contents");
    assert_eq!(read(d, "gofiles/bar.go"), "bar-contents");
    assert_eq!(read(d, "foo2.go"), "foo-contents");
    assert!(fs::metadata(d.join("foo2.go")).unwrap().is_file());
    // A matched directory's contents, not the directory.
    assert_eq!(read(d, "subdest/dir2/foo"), "sub-contents");
    assert!(!exists(d, "subdest/dir1"));
    assert_eq!(read(d, "subdest2/foo"), "sub-contents");
    assert_eq!(read(d, "subdest3/bar"), "sub-contents");
    assert_eq!(read(d, "all/sub/dir1/dir2/foo"), "sub-contents");
    assert_eq!(read(d, "all/foo.go"), "foo-contents");
    for n in 4..=6 {
        assert_eq!(read(d, &format!("subdest{n}/dir2/foo")), "sub-contents");
    }
}

#[test]
fn several_sources_make_the_destination_a_directory() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "a", "A", 0o644);
    file(ctx.path(), "b", "B", 0o644);
    Env::context(ctx.path(), dest.path())
        .run("COPY a b /multi\nCOPY [ab] /matched")
        .unwrap();
    assert_eq!(read(dest.path(), "multi/a"), "A");
    assert_eq!(read(dest.path(), "multi/b"), "B");
    assert_eq!(read(dest.path(), "matched/a"), "A");
    assert_eq!(read(dest.path(), "matched/b"), "B");
}

#[test]
fn empty_wildcards_and_missing_sources() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo", "contents0", 0o600);
    let env = Env::context(ctx.path(), dest.path());
    env.run("COPY foo nomatch* /").unwrap();
    assert_eq!(read(dest.path(), "foo"), "contents0");

    let err = env.run("COPY nomatch* /x/").unwrap_err();
    assert!(matches!(err, CopyError::NoMatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no source files were specified: nothing matches nomatch*"
    );

    let err = env.run("COPY missing /x").unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(
        err.to_string(),
        "file not found in build context or excluded by .dockerignore: stat missing: no such file or directory"
    );
    // Nothing was written for the failed copies.
    assert_eq!(listing(dest.path()), vec!["foo"]);

    let err = env.run("COPY [ /x").unwrap_err();
    assert!(matches!(err, CopyError::BadPattern(_)), "{err:?}");
}

#[test]
fn destinations_relative_to_workdir() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo", "foo-contents", 0o600);
    file(ctx.path(), "testfile", "contents0", 0o600);
    Env::context(ctx.path(), dest.path())
        .run(
            "WORKDIR /test1\nWORKDIR test2\nCOPY foo ./\nADD foo ./bar/baz\n\
             WORKDIR ..\nCOPY foo ./\n\
             WORKDIR /test5/test6\nCOPY foo ../\n\
             WORKDIR /var/www\nENV empty=\"\"\nCOPY testfile $empty\n\
             WORKDIR /srv\nCOPY testfile .\n",
        )
        .unwrap();
    let d = dest.path();
    assert_eq!(read(d, "test1/test2/foo"), "foo-contents");
    assert_eq!(read(d, "test1/test2/bar/baz"), "foo-contents");
    assert_eq!(read(d, "test1/foo"), "foo-contents");
    assert_eq!(read(d, "test5/foo"), "foo-contents");
    assert_eq!(read(d, "var/www/testfile"), "contents0");
    assert_eq!(read(d, "srv/testfile"), "contents0");
}

#[test]
fn file_onto_directory_and_directory_onto_file() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo", "x", 0o644);
    file(ctx.path(), "d/inner", "y", 0o644);
    dir(dest.path(), "existing", 0o755);
    file(dest.path(), "plain", "old", 0o644);
    let env = Env::context(ctx.path(), dest.path());
    env.run("COPY foo /existing").unwrap();
    assert_eq!(read(dest.path(), "existing/foo"), "x");
    // A file replaces a file.
    env.run("COPY foo /plain").unwrap();
    assert_eq!(read(dest.path(), "plain"), "x");
    let err = env.run("COPY d /plain").unwrap_err();
    assert!(matches!(err, CopyError::NotADirectory { .. }), "{err:?}");
    assert_eq!(err.to_string(), "cannot copy to non-directory: /plain");
    dir(dest.path(), "target/foo", 0o755);
    let err = env.run("COPY foo /target/").unwrap_err();
    assert!(matches!(err, CopyError::ReplaceDirectory { .. }), "{err:?}");
}

#[test]
fn overwriting_the_same_paths() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "sub/dir1/dir2/foo", "foo-contents", 0o600);
    file(ctx.path(), "files/foo.go", "foo.go-contents", 0o600);
    Env::context(ctx.path(), dest.path())
        .run(
            "COPY sub sub\nCOPY sub sub\nCOPY files/foo.go dest/foo.go\n\
             COPY files/foo.go dest/foo.go\nCOPY files dest\n",
        )
        .unwrap();
    assert_eq!(read(dest.path(), "sub/dir1/dir2/foo"), "foo-contents");
    assert_eq!(read(dest.path(), "dest/foo.go"), "foo.go-contents");
}

#[test]
fn source_links_are_followed_and_inner_links_kept() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    let c = ctx.path();
    file(c, "bar", "bar-contents", 0o600);
    link(c, "foo", "bar");
    file(c, "sub/lfile", "lfile-contents", 0o600);
    link(c, "sub/l0", "subfile");
    file(c, "sub/subfile", "subfile-contents", 0o600);
    link(c, "sub/l1", "second");
    link(c, "sub/second", "baz");
    file(c, "sub/baz", "baz-contents", 0o600);
    file(c, "real/foo", "through-link", 0o600);
    link(c, "linkdir", "real");
    link(c, "tree/rel", "../bar");
    link(c, "tree/abs", "/etc/passwd");
    link(c, "tree/out", "../../outside");
    link(c, "tree/dangling", "nowhere");
    Env::context(c, dest.path())
        .run("COPY foo /\nCOPY sub/l* alllinks/\nCOPY linkdir/foo /via\nCOPY tree /tree")
        .unwrap();
    let d = dest.path();
    assert_eq!(read(d, "foo"), "bar-contents");
    assert!(!fs::symlink_metadata(d.join("foo")).unwrap().is_symlink());
    assert_eq!(read(d, "alllinks/l0"), "subfile-contents");
    assert_eq!(read(d, "alllinks/lfile"), "lfile-contents");
    assert_eq!(read(d, "alllinks/l1"), "baz-contents");
    assert_eq!(read(d, "via"), "through-link");
    // Links inside a copied directory stay links, whatever they point to.
    for (name, target) in [
        ("rel", "../bar"),
        ("abs", "/etc/passwd"),
        ("out", "../../outside"),
        ("dangling", "nowhere"),
    ] {
        let path = d.join("tree").join(name);
        assert!(fs::symlink_metadata(&path).unwrap().is_symlink(), "{name}");
        assert_eq!(fs::read_link(&path).unwrap(), Path::new(target));
    }
}

#[test]
fn context_links_that_leave_the_context_are_refused() {
    if !require_root() {
        return;
    }
    let base = tmp();
    let ctx = base.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    file(base.path(), "secret", "host-secret", 0o600);
    link(&ctx, "up", "../secret");
    link(&ctx, "abs", base.path().join("secret").to_str().unwrap());
    link(&ctx, "updir", "..");
    let dest = tmp();
    let env = Env::context(&ctx, dest.path());
    for df in [
        "COPY up /x",
        "COPY abs /x",
        "COPY updir/secret /x",
        "COPY up* /x/",
    ] {
        let err = env.run(df).unwrap_err();
        assert!(matches!(err, CopyError::Escapes { .. }), "{df}: {err:?}");
        assert!(
            err.to_string()
                .starts_with("path escapes the build context"),
            "{err}"
        );
    }
    assert!(listing(dest.path()).is_empty());
}

#[test]
fn stage_links_resolve_inside_the_stage() {
    if !require_root() {
        return;
    }
    let (stage, dest) = (tmp(), tmp());
    let s = stage.path();
    file(s, "out/sub/foo", "data", 0o644);
    link(s, "sub", "/out/sub");
    link(s, "sub2", "out/sub");
    link(s, "climb", "../../../../out/sub");
    Env::stage(s, dest.path())
        .run("COPY --from=build /sub/foo .\nCOPY --from=build /sub2/foo bar\nCOPY --from=build /climb/foo baz")
        .unwrap();
    assert_eq!(read(dest.path(), "foo"), "data");
    assert_eq!(read(dest.path(), "bar"), "data");
    assert_eq!(read(dest.path(), "baz"), "data");
}

#[test]
fn destination_links_never_leave_the_root() {
    if !require_root() {
        return;
    }
    let (ctx, base) = (tmp(), tmp());
    file(ctx.path(), "foo", "payload", 0o644);
    file(ctx.path(), "dir/inner", "inner", 0o644);
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    link(&root, "app", "/etc");
    link(&root, "host", outside.to_str().unwrap());
    link(&root, "up", "../../../../outside");
    link(&root, "file-link", "/etc/target-file");
    Env::context(ctx.path(), &root)
        .run(
            "COPY foo /app/foo\nCOPY foo /host/\nCOPY foo /up/foo\nCOPY foo /file-link\n\
             COPY dir /app/sub",
        )
        .unwrap();
    assert_eq!(read(&root, "etc/foo"), "payload");
    assert_eq!(read(&root, "etc/sub/inner"), "inner");
    assert_eq!(read(&root, "etc/target-file"), "payload");
    // The absolute link is taken inside the root, never on the host.
    let inside = root.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(inside.join("foo")).unwrap(), "payload");
    assert_eq!(read(&root, "outside/foo"), "payload");
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
    assert!(fs::symlink_metadata(root.join("app")).unwrap().is_symlink());
}

#[test]
fn directory_merges_through_a_link_to_a_directory() {
    if !require_root() {
        return;
    }
    // A merged-/usr image has /lib -> usr/lib; copying a tree with lib/ into
    // / must land in /usr/lib rather than fail or replace the link.
    let (ctx, root) = (tmp(), tmp());
    file(ctx.path(), "rootfs/lib/libfoo.so", "so", 0o644);
    dir(root.path(), "usr/lib", 0o755);
    link(root.path(), "lib", "usr/lib");
    Env::context(ctx.path(), root.path())
        .run("COPY rootfs/ /")
        .unwrap();
    assert_eq!(read(root.path(), "usr/lib/libfoo.so"), "so");
    assert!(
        fs::symlink_metadata(root.path().join("lib"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn sockets_become_files_and_names_survive() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    let _sock = std::os::unix::net::UnixListener::bind(ctx.path().join("socket.sock")).unwrap();
    for name in [
        "test-äöü.txt",
        "test-%C3%A4%C3%B6%C3%BC.txt",
        "test+aou.txt",
    ] {
        file(ctx.path(), name, name, 0o644);
    }
    Env::context(ctx.path(), dest.path())
        .run("COPY . /")
        .unwrap();
    assert!(
        fs::symlink_metadata(dest.path().join("socket.sock"))
            .unwrap()
            .is_file()
    );
    for name in [
        "test-äöü.txt",
        "test-%C3%A4%C3%B6%C3%BC.txt",
        "test+aou.txt",
    ] {
        assert_eq!(read(dest.path(), name), name);
    }
}

#[test]
fn dockerignore_hides_context_files() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    let c = ctx.path();
    for name in ["foo", "bar", "baz", "bay", "Dockerfile", ".dockerignore"] {
        file(c, name, name, 0o644);
    }
    file(c, "logs/a.log", "a", 0o644);
    file(c, "logs/keep.log", "keep", 0o644);
    let ignore = PatternMatcher::new([
        "ba*",
        "Dockerfile",
        "!bay",
        ".dockerignore",
        "logs",
        "!logs/keep.log",
    ])
    .unwrap();
    let mut env = Env::context(c, dest.path());
    env.ignore = Some(&ignore);
    env.run("COPY . .").unwrap();
    assert_eq!(
        listing(dest.path()),
        vec!["bay", "foo", "logs/", "logs/keep.log"]
    );
    let err = env.run("COPY bar /x").unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = env.run("COPY logs/a.log /x").unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // A wildcard does not see ignored names either.
    env.run("COPY b* /w/").unwrap();
    assert_eq!(read(dest.path(), "w/bay"), "bay");
    assert!(!exists(dest.path(), "w/bar"));
}

#[test]
fn exclude_patterns_are_relative_to_each_source() {
    if !require_root() {
        return;
    }
    let ctx = tmp();
    let c = ctx.path();
    for (name, content) in [
        ("dir1/file-101.png", "2"),
        ("dir1/file-102.txt", "3"),
        ("dir1/file-103.jpeg", "4"),
        ("dir2/file-201.pdf", "6"),
        ("dir2/file-202.jpeg", "7"),
        ("dir2/file-203.png", "8"),
        ("dir3/file-301.mp3", "9"),
        ("dir3/file-302.mpeg", "10"),
    ] {
        file(c, name, content, 0o600);
    }
    let cases: [(&str, &[&str]); 6] = [
        (
            "COPY --exclude=*/*.png --exclude=*/*.jpeg . /out",
            &[
                "dir1/file-102.txt",
                "dir2/file-201.pdf",
                "dir3/file-301.mp3",
                "dir3/file-302.mpeg",
            ],
        ),
        (
            "COPY --exclude=*/*.pdf --exclude=*/*.txt . /out",
            &[
                "dir1/file-101.png",
                "dir1/file-103.jpeg",
                "dir2/file-202.jpeg",
                "dir2/file-203.png",
                "dir3/file-301.mp3",
                "dir3/file-302.mpeg",
            ],
        ),
        ("ADD --exclude=*.mp3 dir3/ /out/", &["file-302.mpeg"]),
        (
            "COPY --exclude=*.mp3 --exclude=*.jpeg --exclude=*.png --exclude=*.pdf --exclude=*.txt dir* /out/",
            &["file-302.mpeg"],
        ),
        (
            "ADD --exclude=*.mp* --exclude=*.jpeg --exclude=*.png --exclude=*.pdf dir* /out",
            &["file-102.txt"],
        ),
        ("ADD --exclude=* dir* /out", &[]),
    ];
    for (df, expected) in cases {
        let dest = tmp();
        Env::context(c, dest.path()).run(df).unwrap();
        let out = dest.path().join("out");
        assert!(out.is_dir(), "{df}");
        let files: Vec<String> = listing(&out)
            .into_iter()
            .filter(|p| !p.ends_with('/'))
            .collect();
        assert_eq!(files, expected, "{df}");
    }
}

#[test]
fn parents_keep_the_path_below_the_pivot() {
    if !require_root() {
        return;
    }
    let ctx = tmp();
    file(ctx.path(), "foo1/foo2/bar", "testing", 0o600);
    file(ctx.path(), "foo1/foo2/baz", "testing2", 0o600);
    dir(ctx.path(), "foo1", 0o700);
    let dest = tmp();
    Env::context(ctx.path(), dest.path())
        .run("COPY --parents foo1/foo2/bar /\nWORKDIR /test\nCOPY --parents foo1/foo2/ba* .")
        .unwrap();
    assert_eq!(read(dest.path(), "foo1/foo2/bar"), "testing");
    assert_eq!(read(dest.path(), "test/foo1/foo2/bar"), "testing");
    assert_eq!(read(dest.path(), "test/foo1/foo2/baz"), "testing2");
    // Directories on the way get the source directories' mode.
    assert_eq!(mode(dest.path(), "foo1"), 0o700);

    let stage = tmp();
    let s = stage.path();
    for d in ["a/b/c/d/e", "a/b2/c/d/e", "a/b/c2/d/e", "a/b/c2/d/e2"] {
        dir(s, &format!("test/{d}"), 0o755);
    }
    for f in [
        "a/b/c/d/foo",
        "a/b/c/d/e/bay",
        "a/b2/c/d/e/bar",
        "a/b/c2/d/e/baz",
        "a/b/c2/d/e2/baz",
    ] {
        file(s, &format!("test/{f}"), f, 0o644);
    }
    let cases: [(&str, &[&str], &[&str]); 7] = [
        (
            "COPY --from=base --parents /test/a/b/./c/d /out/",
            &["out/c/d/e/", "out/c/d/foo"],
            &["out/a", "out/e"],
        ),
        (
            "COPY --from=base --parents /test/a/b/c/d/. /out/",
            &["out/test/a/b/c/d/e/", "out/test/a/b/c/d/foo"],
            &[],
        ),
        (
            "COPY --from=base --parents ./test/a/b/c/d /out/",
            &["out/test/a/b/c/d/e/", "out/test/a/b/c/d/foo"],
            &[],
        ),
        (
            "COPY --from=base --parents /test/a/./b/./c /out/",
            &["out/b/c/d/e/", "out/b/c/d/foo"],
            &[],
        ),
        (
            "COPY --from=base --parents /test/a/./*/c /out/",
            &["out/b/c/d/e/", "out/b2/c/d/e/bar"],
            &[],
        ),
        (
            "COPY --from=base --parents /test/a/b*/./c/**/e /out/",
            &["out/c/d/e/", "out/c/d/e/bay", "out/c/d/e/bar"],
            &[],
        ),
        (
            "COPY --from=base --parents /test/a/b/c*/./d/**/baz /test/a/b*/./c/**/bar /out/",
            &["out/d/e/baz", "out/d/e2/baz", "out/c/d/e/bar"],
            &["out/d/e/bay"],
        ),
    ];
    for (df, present, absent) in cases {
        let dest = tmp();
        Env::stage(s, dest.path())
            .run(&format!("FROM scratch AS base\nFROM scratch\n{df}"))
            .unwrap_or_else(|e| panic!("{df}: {e}"));
        let have = listing(dest.path());
        for p in present {
            assert!(
                have.contains(&p.to_string()),
                "{df}: {p} missing in {have:?}"
            );
        }
        for p in absent {
            assert!(!exists(dest.path(), p), "{df}: {p} present in {have:?}");
        }
    }
}

/// `/etc/passwd` and `/etc/group` of a fake image.
fn fake_etc(root: &Path) {
    file(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
         app:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        0o644,
    );
    file(
        root,
        "etc/group",
        "root:x:0:\ndaemon:x:1:\napp:x:1000:\nstaff:x:50:app\nnobody:x:65534:\n",
        0o644,
    );
}

#[test]
fn chown_by_name_and_id() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo", "foo-contents", 0o600);
    file(ctx.path(), "bar/sub", "", 0o600);
    fake_etc(dest.path());
    let env = Env::context(ctx.path(), dest.path());
    env.run(
        "COPY --chown=daemon foo /\n\
         COPY --chown=1000:nobody bar /baz\n\
         ENV owner=1000\nARG group=staff\nCOPY --chown=${owner}:${group} foo /foobis\n\
         COPY --chown=4242 foo /numeric\n\
         COPY --chown=app:50 foo /created/deep/file\n\
         COPY foo /plain",
    )
    .unwrap();
    let d = dest.path();
    assert_eq!(owner(d, "foo"), (1, 1));
    assert_eq!(owner(d, "baz"), (1000, 65534));
    assert_eq!(owner(d, "baz/sub"), (1000, 65534));
    assert_eq!(owner(d, "foobis"), (1000, 50));
    assert_eq!(owner(d, "numeric"), (4242, 4242));
    // Parents that the copy creates belong to the --chown user too.
    assert_eq!(owner(d, "created"), (1000, 50));
    assert_eq!(owner(d, "created/deep"), (1000, 50));
    // Context files become root's, whoever owns them on the host.
    assert_eq!(owner(d, "plain"), (0, 0));

    for (df, message) in [
        (
            "COPY --chown=ghost foo /x",
            "unable to find user ghost: no matching entries in passwd file",
        ),
        (
            "COPY --chown=app:ghosts foo /x",
            "unable to find group ghosts: no matching entries in group file",
        ),
    ] {
        let err = env.run(df).unwrap_err();
        assert!(matches!(err, CopyError::Chown(_)), "{err:?}");
        assert_eq!(err.to_string(), message);
    }
    assert!(!exists(d, "x"));
}

#[test]
fn chown_names_come_from_the_lookup_root_with_link() {
    if !require_root() {
        return;
    }
    let (ctx, parent, layer) = (tmp(), tmp(), tmp());
    file(ctx.path(), "foo", "x", 0o644);
    fake_etc(parent.path());
    let mut env = Env::context(ctx.path(), layer.path());
    env.lookup = Some(parent.path());
    env.run("COPY --link --chown=app:staff foo /opt/foo")
        .unwrap();
    assert_eq!(owner(layer.path(), "opt/foo"), (1000, 50));
    assert_eq!(owner(layer.path(), "opt"), (1000, 50));
    assert!(!exists(layer.path(), "etc"));
}

#[test]
fn owners_of_existing_and_created_directories() {
    if !require_root() {
        return;
    }
    // BuildKit's testCopyChownExistingDir.
    let stage = tmp();
    let s = stage.path();
    file(s, "file", "", 0o644);
    file(s, "dir/subdir/nestedfile", "", 0o644);
    chown(s, "file", 100, 200);
    chown(s, "dir", 100, 200);
    chown(s, "dir/subdir", 101, 201);
    chown(s, "dir/subdir/nestedfile", 102, 202);
    let base = |root: &Path| {
        file(root, "existingdir/existingfile", "", 0o644);
        dir(root, "existingdir/existingsubdir", 0o755);
        chown(root, "existingdir", 500, 600);
        chown(root, "existingdir/existingsubdir", 501, 601);
        chown(root, "existingdir/existingfile", 501, 601);
    };
    let dest = tmp();
    let d = dest.path();
    base(d);
    Env::stage(s, d)
        .run("FROM scratch AS source\nFROM scratch\nCOPY --from=source /file .\nCOPY --from=source /dir /dir\nCOPY --from=source /dir/. /existingdir")
        .unwrap();
    assert_eq!(owner(d, "file"), (100, 200));
    assert_eq!(owner(d, "dir"), (0, 0));
    assert_eq!(owner(d, "dir/subdir"), (101, 201));
    assert_eq!(owner(d, "dir/subdir/nestedfile"), (102, 202));
    assert_eq!(owner(d, "existingdir"), (500, 600));
    assert_eq!(owner(d, "existingdir/existingsubdir"), (501, 601));
    assert_eq!(owner(d, "existingdir/existingfile"), (501, 601));
    assert_eq!(owner(d, "existingdir/subdir"), (101, 201));
    assert_eq!(owner(d, "existingdir/subdir/nestedfile"), (102, 202));

    let dest = tmp();
    let d = dest.path();
    base(d);
    Env::stage(s, d)
        .run("FROM scratch AS source\nFROM scratch\nCOPY --from=source --chown=300:400 /file .\nCOPY --from=source --chown=300:400 /dir /dir\nCOPY --from=source --chown=300:400 /dir/. /existingdir")
        .unwrap();
    for p in [
        "file",
        "dir",
        "dir/subdir",
        "dir/subdir/nestedfile",
        "existingdir/subdir",
        "existingdir/subdir/nestedfile",
    ] {
        assert_eq!(owner(d, p), (300, 400), "{p}");
    }
    assert_eq!(owner(d, "existingdir"), (500, 600));
    assert_eq!(owner(d, "existingdir/existingsubdir"), (501, 601));
    assert_eq!(owner(d, "existingdir/existingfile"), (501, 601));
}

#[test]
fn chmod_octal_and_created_parents() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo", "foo-contents", 0o600);
    file(ctx.path(), "bar", "bar-contents", 0o700);
    Env::context(ctx.path(), dest.path())
        .run(
            "COPY --chmod=0644 foo /\nCOPY --chmod=777 bar /baz\nCOPY --chmod=0 foo /foobis\n\
             COPY --chmod=777 foo /parent/foo\nCOPY --chmod=770 foo /parent/sub/foo\n\
             ARG mode=755\nCOPY --chmod=${mode} foo /footer\nCOPY bar /kept\n\
             ADD --chmod=0640 foo /added",
        )
        .unwrap();
    let d = dest.path();
    assert_eq!(mode(d, "foo"), 0o644);
    assert_eq!(mode(d, "baz"), 0o777);
    assert_eq!(mode(d, "foobis"), 0o000);
    assert_eq!(mode(d, "parent"), 0o777);
    assert_eq!(mode(d, "parent/sub"), 0o770);
    assert_eq!(mode(d, "footer"), 0o755);
    assert_eq!(mode(d, "kept"), 0o700);
    assert_eq!(mode(d, "added"), 0o640);
}

#[test]
fn chmod_symbolic_matches_coreutils_chmod() {
    if !require_root() {
        return;
    }
    let ctx = tmp();
    let entries = [
        ("d755", true, 0o755),
        ("d700", true, 0o700),
        ("d750/f", false, 0o640),
        ("f600", false, 0o600),
        ("f644", false, 0o644),
        ("f711", false, 0o711),
        ("f4755", false, 0o4755),
        ("f001", false, 0o001),
    ];
    for (path, is_dir, m) in entries {
        if is_dir {
            dir(ctx.path(), path, m);
        } else {
            file(ctx.path(), path, "x", m);
        }
    }
    dir(ctx.path(), "d750", 0o750);
    for spec in [
        "go-w",
        "u=rw,g=r,o=r",
        "a+X",
        "u+rw,g+r,o-x,o+w",
        "a=rX,u+w",
        "g=u",
        "o=g,u-x",
        "u+s",
        "ug-s",
        "a+t",
        "a-rwx",
    ] {
        let dest = tmp();
        let mut op = copy_op("COPY . /out/");
        op.chmod = Some(Chmod::Symbolic(spec.into()));
        Env::context(ctx.path(), dest.path()).apply(&op).unwrap();
        // The same change by chmod(1) on a copy of each entry.
        let reference = tmp();
        for (path, is_dir, _) in entries.iter().chain([("d750", true, 0o750)].iter()) {
            let src_mode = fs::symlink_metadata(ctx.path().join(path)).unwrap().mode() & 0o7777;
            let probe = reference.path().join(path.replace('/', "_"));
            if *is_dir {
                fs::create_dir(&probe).unwrap();
            } else {
                fs::write(&probe, "x").unwrap();
            }
            // chown would clear set-id bits; set the mode after.
            let status = Command::new("chmod")
                .arg(format!("{src_mode:o}"))
                .arg(&probe)
                .status()
                .unwrap();
            assert!(status.success());
            let status = Command::new("chmod")
                .arg(spec)
                .arg(&probe)
                .status()
                .unwrap();
            assert!(status.success(), "chmod {spec}");
            let want = fs::symlink_metadata(&probe).unwrap().mode() & 0o7777;
            let got = mode(dest.path(), &format!("out/{path}"));
            assert_eq!(
                got, want,
                "chmod {spec} on {path} ({src_mode:o}): {got:o} vs {want:o}"
            );
        }
    }
}

#[test]
fn heredoc_sources() {
    if !require_root() {
        return;
    }
    let dest = tmp();
    fake_etc(dest.path());
    let env = Env::context(dest.path(), dest.path());
    env.run("COPY <<EOF single\nsingle file\nEOF\n").unwrap();
    env.run("COPY <<EOF <<EOF2 double/\nfirst\nEOF\nsecond\nEOF2\n")
        .unwrap();
    env.run("COPY --chmod=0755 --chown=app <<EOF /bin/script\n#!/bin/sh\nEOF\n")
        .unwrap();
    let d = dest.path();
    assert_eq!(read(d, "single"), "single file\n");
    assert_eq!(mode(d, "single"), 0o644);
    assert_eq!(owner(d, "single"), (0, 0));
    assert_eq!(read(d, "double/EOF"), "first\n");
    assert_eq!(read(d, "double/EOF2"), "second\n");
    assert_eq!(mode(d, "bin/script"), 0o755);
    assert_eq!(owner(d, "bin/script"), (1000, 1000));
}

#[test]
fn stage_metadata_is_preserved() {
    if !require_root() {
        return;
    }
    let (stage, dest) = (tmp(), tmp());
    let s = stage.path();
    file(s, "app/bin/tool", "tool", 0o644);
    chown(s, "app/bin/tool", 0, 0);
    // After the chown, which clears set-id bits.
    fs::set_permissions(s.join("app/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    file(s, "app/data", "data", 0o640);
    chown(s, "app/data", 33, 34);
    dir(s, "app/private", 0o700);
    chown(s, "app/private", 7, 8);
    link(s, "app/current", "bin/tool");
    let times = nix::sys::time::TimeSpec::new(1_000_000_000, 123);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &s.join("app/data"),
        &times,
        &times,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let xattr_ok = xattr::set(s.join("app/data"), "user.builder.test", b"v1").is_ok();
    Env::stage(s, dest.path())
        .run("FROM scratch AS s\nFROM scratch\nCOPY --from=s /app /app")
        .unwrap();
    let d = dest.path();
    assert_eq!(mode(d, "app/bin/tool"), 0o4755);
    assert_eq!(owner(d, "app/data"), (33, 34));
    assert_eq!(mode(d, "app/data"), 0o640);
    assert_eq!(
        (mode(d, "app/private"), owner(d, "app/private")),
        (0o700, (7, 8))
    );
    assert_eq!(
        fs::read_link(d.join("app/current")).unwrap(),
        Path::new("bin/tool")
    );
    let meta = fs::metadata(d.join("app/data")).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 123));
    if xattr_ok {
        assert_eq!(
            xattr::get(d.join("app/data"), "user.builder.test").unwrap(),
            Some(b"v1".to_vec())
        );
    } else {
        eprintln!("user xattrs unsupported on this filesystem: xattr check not run");
    }
}

#[test]
fn context_files_get_root_and_no_xattrs() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "f", "x", 0o640);
    chown(ctx.path(), "f", 1234, 5678);
    let xattr_ok = xattr::set(ctx.path().join("f"), "user.builder.test", b"v").is_ok();
    Env::context(ctx.path(), dest.path())
        .run("COPY f /f")
        .unwrap();
    assert_eq!(owner(dest.path(), "f"), (0, 0));
    assert_eq!(mode(dest.path(), "f"), 0o640);
    if xattr_ok {
        assert_eq!(
            xattr::get(dest.path().join("f"), "user.builder.test").unwrap(),
            None
        );
    }
}

#[test]
fn hard_links_within_one_copy_are_kept() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "d/a", "shared", 0o644);
    fs::hard_link(ctx.path().join("d/a"), ctx.path().join("d/b")).unwrap();
    let stats = Env::context(ctx.path(), dest.path()).run_stats("COPY d /d");
    let a = fs::metadata(dest.path().join("d/a")).unwrap();
    let b = fs::metadata(dest.path().join("d/b")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(stats.bytes, 6, "the content is written once");
}

trait RunStats {
    fn run_stats(&self, df: &str) -> solver::ops::copy::CopyStats;
}

impl RunStats for Env<'_> {
    fn run_stats(&self, df: &str) -> solver::ops::copy::CopyStats {
        self.apply(&copy_op(df)).unwrap()
    }
}

#[test]
fn times_are_clamped_to_source_date_epoch() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "new", "n", 0o644);
    file(ctx.path(), "old", "o", 0o644);
    let old = nix::sys::time::TimeSpec::new(1_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &ctx.path().join("old"),
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let mut env = Env::context(ctx.path(), dest.path());
    env.epoch = Some(1_600_000_000);
    env.run("COPY new old /a/b/").unwrap();
    env.run("COPY <<EOF /h/heredoc\nx\nEOF\n").unwrap();
    let mtime = |p: &str| fs::symlink_metadata(dest.path().join(p)).unwrap().mtime();
    assert_eq!(mtime("a/b/new"), 1_600_000_000);
    assert_eq!(mtime("a/b/old"), 1_000);
    assert_eq!(mtime("h/heredoc"), 1_600_000_000);
    assert_eq!(mtime("h"), 1_600_000_000);
    assert_eq!(mtime("a"), 1_600_000_000);
    assert_eq!(mtime("a/b"), 1_600_000_000);
}

#[test]
fn cancelled_and_unsupported() {
    if !require_root() {
        return;
    }
    let (ctx, dest) = (tmp(), tmp());
    file(ctx.path(), "foo", "x", 0o644);
    let env = Env::context(ctx.path(), dest.path());
    env.cancel.cancel();
    assert!(matches!(env.run("COPY foo /x"), Err(CopyError::Cancelled)));
    assert!(!exists(dest.path(), "x"));

    let env = Env::context(ctx.path(), dest.path());
    // A git source that cannot be cloned names its URL.
    let err = env
        .run("ADD git://127.0.0.1:1/nowhere.git#main /src")
        .unwrap_err();
    assert!(matches!(err, CopyError::Git { .. }), "{err:?}");
    assert!(
        err.to_string().contains("git://127.0.0.1:1/nowhere.git"),
        "{err}"
    );

    // Path sources need a source root.
    let op = CopyOp {
        sources: vec![CopySource::Path {
            path: "/foo".into(),
            pivot: None,
        }],
        ..copy_op("COPY foo /y")
    };
    let mut env = Env::context(ctx.path(), dest.path());
    env.src = None;
    assert!(matches!(env.apply(&op), Err(CopyError::NoSourceRoot)));
}
