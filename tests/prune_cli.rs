//! End to end: `builder du` and `builder prune` on a store that real builds
//! filled, and the automatic cap after a build. Needs root, namespaces and
//! overlayfs (see tests/common).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cache::gc::parse_size;
use common::{TestRoot, sandbox_available};

const DOCKERFILE: &str = "FROM busybox\n\
    RUN echo one > /one\n\
    COPY f /f\n\
    RUN cat /f > /two\n";

/// The (count, size) of a `builder du` row.
fn du_row(du: &str, name: &str) -> (u64, u64) {
    let line = du
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} row in\n{du}"));
    let cells: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (cells[0].parse().unwrap(), parse_size(cells[1]).unwrap())
}

/// The size on a `Build cache:` or `Total:` line.
fn du_total(du: &str, name: &str) -> u64 {
    let line = du
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} line in\n{du}"));
    parse_size(line[name.len()..].trim()).unwrap()
}

/// The `tmp/removing-*` directories of `root`: what a prune moved away and
/// some process is deleting.
fn trash_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("removing-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the background deletion that the automatic cap started
/// after a build is done (polling; it is a separate, detached process).
fn wait_for_trash_deletion(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = trash_dirs(root);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tmp/ still holds {left:?} two minutes after the build"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup() -> Option<(TestRoot, std::path::PathBuf)> {
    if !sandbox_available() {
        return None;
    }
    let root = TestRoot::new();
    root.busybox_image("busybox", serde_json::json!({}));
    let ctx = root.context(&[("Dockerfile", DOCKERFILE), ("f", "two\n")]);
    Some((root, ctx))
}

#[test]
fn du_then_prune_keeps_images_runnable_and_rebuildable() {
    let Some((root, ctx)) = setup() else { return };
    root.build_ok(&ctx, &["-t", "app"]);

    let du = root.ok(&["du"]);
    assert_eq!(du_row(&du, "Images").0, 2, "{du}");
    assert!(du_row(&du, "Images").1 > 0, "{du}");
    assert_eq!(du_row(&du, "Cache records").0, 3, "{du}");
    assert!(du_row(&du, "Snapshots").1 > 0, "{du}");
    assert!(du_total(&du, "Build cache:") > 0, "{du}");
    let verbose = root.ok(&["du", "--verbose"]);
    assert!(verbose.contains("RUN cat /f > /two"), "{verbose}");

    // Nothing was used over an hour ago, and the cache fits in 1 GB.
    let out = root.ok(&["prune", "--filter", "until=1h"]);
    assert!(out.ends_with("Total: 0B\n"), "{out}");
    let out = root.ok(&["prune", "--keep-storage", "1GB", "-f"]);
    assert!(out.ends_with("Total: 0B\n"), "{out}");
    assert_eq!(du_row(&root.ok(&["du"]), "Cache records").0, 3);

    let out = root.ok(&["prune"]);
    assert!(out.contains("cache record"), "{out}");
    assert!(out.contains("RUN echo one > /one"), "{out}");
    let total = out.lines().last().unwrap();
    assert!(
        total.starts_with("Total: ") && total != "Total: 0B",
        "{out}"
    );
    let du = root.ok(&["du"]);
    assert_eq!(du_row(&du, "Cache records").0, 0, "{du}");
    assert_eq!(du_row(&du, "Images").0, 2, "{du}");
    root.check_store();
    assert_eq!(
        root.ok(&["run", "--rm", "app", "cat", "/one", "/two"]),
        "one\ntwo\n"
    );

    // A rebuild runs the steps again and caches them again.
    let first = root.build(&ctx, &["-t", "app"]);
    assert!(first.status.success());
    assert!(!common::stderr(&first).contains("CACHED"));
    let second = root.build(&ctx, &["-t", "app"]);
    assert!(second.status.success());
    assert!(common::stderr(&second).contains("CACHED"));
    assert_eq!(
        root.ok(&["run", "--rm", "app", "cat", "/one", "/two"]),
        "one\ntwo\n"
    );

    let out = root.ok(&["prune", "--all"]);
    assert!(out.contains("snapshots: "), "{out}");
    let du = root.ok(&["du"]);
    for row in [
        "Layers (cache only)",
        "Layers (unreferenced)",
        "Snapshots",
        "Cache records",
    ] {
        assert_eq!(du_row(&du, row), (0, 0), "{row} in\n{du}");
    }
    assert!(du_total(&du, "Build cache:") < 64 * 1024, "{du}");
    root.check_store();
    // The snapshots come back from the image's blobs.
    assert_eq!(
        root.ok(&["run", "--rm", "app", "cat", "/one", "/two"]),
        "one\ntwo\n"
    );
    root.build_ok(&ctx, &["-t", "app2"]);
    assert_eq!(root.ok(&["run", "--rm", "app2", "cat", "/two"]), "two\n");
}

#[test]
fn the_automatic_cap_prunes_after_a_build() {
    let Some((root, ctx)) = setup() else { return };
    let mut c = root.builder();
    c.env("BUILDER_GC_KEEP_STORAGE", "1B")
        .args(["build", "--progress=plain", "-t", "app"])
        .arg(&ctx);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(err.contains("pruning build cache"), "{err}");
    assert!(err.contains(", reclaiming "), "{err}");
    // Every snapshot left snapshots/ before the build returned (a cap of 1B
    // is never met, so image snapshots go too); deleting them may go on in
    // the background, where du does not count it.
    let snapshots: Vec<_> = std::fs::read_dir(root.root().join("snapshots"))
        .unwrap()
        .collect();
    assert!(snapshots.is_empty(), "{snapshots:?}");
    let du = root.ok(&["du"]);
    assert_eq!(du_row(&du, "Cache records").0, 0, "{du}");
    assert_eq!(du_row(&du, "Snapshots"), (0, 0), "{du}");
    assert_eq!(du_row(&du, "Temporary files").0, 0, "{du}");
    root.check_store();
    // The deletion finishes, leaving tmp/ empty.
    wait_for_trash_deletion(&root.root());
    let tmp: Vec<_> = std::fs::read_dir(root.root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    assert_eq!(root.ok(&["run", "--rm", "app", "cat", "/two"]), "two\n");

    // Off: the records stay.
    let mut c = root.builder();
    c.env("BUILDER_GC_KEEP_STORAGE", "off")
        .args(["build", "--progress=plain", "-t", "app"])
        .arg(&ctx);
    let out = c.output().unwrap();
    assert!(out.status.success());
    assert!(!common::stderr(&out).contains("pruning build cache"));
    assert_eq!(du_row(&root.ok(&["du"]), "Cache records").0, 3);

    let mut c = root.builder();
    c.env("BUILDER_GC_KEEP_STORAGE", "lots")
        .args(["build", "--progress=plain", "-t", "app"])
        .arg(&ctx);
    let out = c.output().unwrap();
    assert!(out.status.success(), "a bad cap only warns");
    let err = common::stderr(&out);
    assert!(err.contains("BUILDER_GC_KEEP_STORAGE"), "{err}");
}

#[test]
fn prune_waits_for_a_running_build() {
    let Some((root, _)) = setup() else { return };
    let ctx = root.context(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo started && sleep 4 && echo slept > /slept\n",
    )]);
    let mut build = root.builder();
    build
        .args(["build", "--progress=plain", "-t", "slow"])
        .arg(&ctx)
        .stderr(Stdio::piped());
    let mut child = build.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait until the RUN step prints, so the build surely holds the lock.
    for line in lines.by_ref() {
        if line.unwrap().ends_with(" started") {
            break;
        }
    }
    let out = root.output(&["prune", "--all"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("waiting for running builds"),
        "{}",
        common::stderr(&out)
    );
    // The rest of the build's output, then its status.
    for line in lines {
        line.unwrap();
    }
    assert!(child.wait().unwrap().success());
    root.check_store();
    assert_eq!(
        root.ok(&["run", "--rm", "slow", "cat", "/slept"]),
        "slept\n"
    );
}

#[test]
fn cache_mounts_stay_until_prune_all() {
    let Some((root, _)) = setup() else { return };
    let ctx = root.context(&[(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=cache,target=/cache dd if=/dev/zero of=/cache/x bs=1k count=300\n",
    )]);
    root.build_ok(&ctx, &["-t", "mnt"]);
    let du = root.ok(&["du"]);
    let (count, size) = du_row(&du, "Cache mounts");
    assert_eq!(count, 1, "{du}");
    assert!(size >= 300 * 1024, "{du}");
    assert!(root.ok(&["du", "-v"]).contains("CACHE MOUNT"));

    let out = root.ok(&["prune"]);
    assert!(!out.contains("cache mount"), "{out}");
    assert_eq!(du_row(&root.ok(&["du"]), "Cache mounts").0, 1);
    let out = root.ok(&["prune", "--filter", "until=1h"]);
    assert!(!out.contains("cache mount"), "{out}");
    let out = root.ok(&["prune", "-a"]);
    assert!(out.contains("cache mount"), "{out}");
    assert_eq!(du_row(&root.ok(&["du"]), "Cache mounts"), (0, 0));
    // A new build starts with an empty cache mount again.
    root.build_ok(&ctx, &["-t", "mnt"]);
    assert_eq!(du_row(&root.ok(&["du"]), "Cache mounts").0, 1);
}

#[test]
fn bad_sizes_and_filters_are_usage_errors() {
    let root = TestRoot::new();
    for (args, message) in [
        (
            &["prune", "--keep-storage", "5XB"][..],
            "invalid size \"5XB\": unknown unit",
        ),
        (
            &["prune", "--filter", "until=1x"],
            "invalid duration \"1x\"",
        ),
        (
            &["prune", "--filter", "label=a"],
            "unsupported filter \"label\"",
        ),
        (&["prune", "--filter", "24h"], "expected until=DURATION"),
    ] {
        let out = root.output(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = common::stderr(&out);
        assert!(err.contains(message), "{args:?}: {err}");
    }
    // An empty store: nothing to do, said plainly.
    assert_eq!(root.ok(&["prune", "-a", "-f"]), "Total: 0B\n");
    let du = root.ok(&["du"]);
    assert_eq!(du_total(&du, "Total:"), 0, "{du}");
}

#[test]
fn prune_during_concurrent_builds_removes_nothing_they_need() {
    let Some((root, _)) = setup() else { return };
    let builds: Vec<_> = (0..3)
        .map(|i| {
            let ctx = root.context(&[
                (
                    "Dockerfile",
                    &format!(
                        "FROM busybox\nRUN echo {i} > /n && sleep 1\nCOPY f /f\nRUN cat /n /f > /out\n"
                    ),
                ),
                ("f", "file\n"),
            ]);
            let mut c = root.builder();
            c.env("BUILDER_GC_KEEP_STORAGE", "1B")
                .args(["build", "--progress=plain", "-t", &format!("c{i}")])
                .arg(&ctx);
            c.stdout(Stdio::null()).stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut prunes = Vec::new();
    for _ in 0..4 {
        let mut c = root.builder();
        c.args(["prune", "-a"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        prunes.push(c.spawn().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    for b in builds {
        let out = b.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    for mut p in prunes {
        assert!(p.wait().unwrap().success());
    }
    root.check_store();
    // The store goes at the end of the test: not under a deleting reaper.
    wait_for_trash_deletion(&root.root());
    for i in 0..3 {
        assert_eq!(
            root.ok(&["run", "--rm", &format!("c{i}"), "cat", "/out"]),
            format!("{i}\nfile\n")
        );
    }
}
