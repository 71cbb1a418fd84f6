//! Storage upkeep on hand-made stores: prune keeps what images need,
//! removes cache least recently used first, honours `until`, skips held
//! snapshots, and waits for (or, automatically, skips) running builds.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use cache::Digest;
use cache::gc::{self, AutoPrune, ItemKind, PruneOptions};
use cache::images::{BlobRef, ImageStore, MEDIA_TYPE_OCI_CONFIG, oci_manifest};
use cache::keys::{CacheRecord, KeyIndex, RecordLayer};
use cache::snapshot::Snapshots;
use cache::store::Store;

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const HOUR: Duration = Duration::from_secs(3600);

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
}

/// One layer: its blob in the store and its snapshot.
#[derive(Clone, Copy)]
struct Layer {
    blob: Digest,
    diff_id: Digest,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        Fixture { _dir: dir, store }
    }

    fn root(&self) -> &Path {
        self.store.root()
    }

    /// A blob of `size` bytes that no other seed produces, written `age` ago.
    fn blob(&self, seed: &str, size: usize, age: Duration) -> Digest {
        let mut data = seed.as_bytes().repeat(size / seed.len() + 1);
        data.truncate(size);
        let d = self.store.put_blob(&data).unwrap();
        set_mtime(&self.store.blob_path(&d), age);
        d
    }

    /// A layer: a blob and a snapshot holding `size` bytes.
    fn layer(&self, seed: &str, size: usize) -> Layer {
        let blob = self.blob(seed, size, Duration::ZERO);
        let diff_id = Digest::of(format!("diff {seed}").as_bytes());
        let tmp = self.store.temp_dir("test-").unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("data"), seed.repeat(size / seed.len() + 1)).unwrap();
        assert!(snapshots(&self.store).adopt(&tree, &diff_id).unwrap());
        Layer { blob, diff_id }
    }

    /// Tags an image made of `layers`; returns its manifest digest.
    fn image(&self, name: &str, layers: &[Layer]) -> Digest {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            },
        });
        let config = cache::json::to_vec(&config).unwrap();
        let config_ref = BlobRef {
            media_type: MEDIA_TYPE_OCI_CONFIG.into(),
            digest: Digest::of(&config),
            size: config.len() as u64,
        };
        let layer_refs: Vec<BlobRef> = layers
            .iter()
            .map(|l| BlobRef {
                media_type: LAYER_TYPE.into(),
                digest: l.blob,
                size: self.store.blob_size(&l.blob).unwrap(),
            })
            .collect();
        let manifest = oci_manifest(&config_ref, &layer_refs).unwrap();
        ImageStore::new(self.store.clone())
            .put(&manifest, &config, &[name.parse().unwrap()])
            .unwrap()
    }

    /// A cache record of `layers`, last used `age` ago; returns its key.
    fn record(&self, name: &str, layers: &[Layer], age: Duration) -> Digest {
        let key = Digest::of(format!("key {name}").as_bytes());
        let layers = layers
            .iter()
            .map(|l| RecordLayer {
                media_type: LAYER_TYPE.into(),
                digest: l.blob,
                size: self.store.blob_size(&l.blob).unwrap(),
                diff_id: l.diff_id,
            })
            .collect();
        let index = KeyIndex::new(&self.store);
        index
            .put(&key, &CacheRecord::new(layers, format!("RUN {name}")))
            .unwrap();
        set_mtime(&index.path(&key), age);
        key
    }

    /// A cache mount directory with one file, last written `age` ago.
    fn mount(&self, name: &str, size: usize, age: Duration) -> PathBuf {
        let dir = self.root().join("mounts").join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("file"), vec![7u8; size]).unwrap();
        set_mtime(&dir.join("file"), age);
        set_mtime(&dir, age);
        dir
    }

    fn has_record(&self, key: &Digest) -> bool {
        KeyIndex::new(&self.store).path(key).exists()
    }

    fn has_snapshot(&self, l: &Layer) -> bool {
        snapshots(&self.store).exists(&l.diff_id)
    }
}

fn snapshots(store: &Store) -> Snapshots {
    Snapshots::new(store).durable(false)
}

fn set_mtime(path: &Path, age: Duration) {
    let t = SystemTime::now() - age;
    File::open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn prune_keeps_what_tagged_images_need_and_removes_the_rest() {
    let f = Fixture::new();
    let base = f.layer("base", 50_000);
    let step = f.layer("step", 60_000);
    let manifest = f.image("app:1", &[base]);
    let key = f.record("step", &[base, step], HOUR);
    let old_orphan = f.blob("orphan", 30_000, 2 * HOUR);
    // Young and unnamed: may be an import that has not named it yet.
    let young_orphan = f.blob("young", 30_000, Duration::ZERO);
    let stale_tmp = f.root().join("tmp/blob-stale");
    fs::write(&stale_tmp, b"left by a killed process").unwrap();
    set_mtime(&stale_tmp, 2 * HOUR);
    let fresh_tmp = f.root().join("tmp/blob-fresh");
    fs::write(&fresh_tmp, b"being written").unwrap();

    let before = gc::usage(&f.store).unwrap();
    assert_eq!(before.images.count, 1);
    assert_eq!(before.cache_layers.count, 1, "{before:?}");
    assert_eq!(before.unreferenced_blobs.count, 2);
    assert_eq!(before.snapshots.count, 2);
    assert_eq!(before.records.count, 1);
    assert!(before.images.size >= 50_000 && before.images.reclaimable == 0);
    assert!(before.cache_layers.size >= 60_000);
    assert!(before.unreferenced_blobs.reclaimable >= 60_000);
    assert_eq!(before.tmp.count, 2);
    assert_eq!(before.total(), before.images.size + before.build_cache());

    let report = gc::prune(&f.store, &PruneOptions::default()).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(report.removed[0].kind, ItemKind::Record);
    assert_eq!(report.removed[0].id, key.to_string());
    assert!(
        report.removed[0].size >= 60_000 * 2,
        "blob and snapshot of the step"
    );
    assert_eq!(report.blobs.count, 1, "the old orphan");
    assert_eq!(report.tmp.count, 1);
    assert!(report.reclaimed >= 60_000 * 2 + 30_000);

    assert!(!f.has_record(&key));
    assert!(!f.store.has_blob(&step.blob));
    assert!(!f.has_snapshot(&step));
    assert!(!f.store.has_blob(&old_orphan));
    assert!(f.store.has_blob(&young_orphan));
    assert!(!stale_tmp.exists());
    assert!(fresh_tmp.exists());
    // The image is whole, its snapshot too (only --all drops it).
    let images = ImageStore::new(f.store.clone());
    images.check_complete(&manifest, "app:1").unwrap();
    assert!(f.has_snapshot(&base));
    let after = gc::usage(&f.store).unwrap();
    assert_eq!(after.records.count, 0);
    assert_eq!(after.cache_layers.count, 0);
    assert_eq!(report.build_cache_after, after.build_cache());

    let all = PruneOptions {
        all: true,
        ..PruneOptions::default()
    };
    let report = gc::prune(&f.store, &all).unwrap();
    assert_eq!(report.snapshots.count, 1);
    assert_eq!(report.blobs.count, 1);
    assert!(!f.has_snapshot(&base));
    assert!(!f.store.has_blob(&young_orphan));
    images.check_complete(&manifest, "app:1").unwrap();
    // The snapshot comes back from the blob it was made from... once a
    // real layer is there; here it is enough that the blob is.
    assert!(f.store.has_blob(&base.blob));
}

#[test]
fn keep_storage_removes_least_recently_used_records_first() {
    let f = Fixture::new();
    let (a, b, c) = (
        f.layer("aaaa", 100_000),
        f.layer("bbbb", 100_000),
        f.layer("cccc", 100_000),
    );
    let oldest = f.record("oldest", &[a], 3 * HOUR);
    let newest = f.record("newest", &[c], HOUR);
    let middle = f.record("middle", &[b], 2 * HOUR);
    let usage = gc::usage(&f.store).unwrap();
    let private = |k: &Digest| {
        usage
            .record_details
            .iter()
            .find(|r| r.key == *k)
            .unwrap()
            .private_size
    };
    assert!(private(&oldest) >= 200_000, "blob and snapshot");
    // Room for everything but the oldest record.
    let keep = usage.build_cache() - private(&oldest);
    let report = gc::prune(
        &f.store,
        &PruneOptions {
            keep_storage: Some(keep),
            ..PruneOptions::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = report.removed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [oldest.to_string()]);
    assert!(!f.has_record(&oldest) && !f.store.has_blob(&a.blob) && !f.has_snapshot(&a));
    assert!(f.has_record(&middle) && f.has_record(&newest));
    assert!(f.store.has_blob(&b.blob) && f.has_snapshot(&b));
    assert!(gc::usage(&f.store).unwrap().build_cache() <= keep);

    // One byte less than what is left: the next oldest goes, only it.
    let left = gc::usage(&f.store).unwrap().build_cache();
    let report = gc::prune(
        &f.store,
        &PruneOptions {
            keep_storage: Some(left - 1),
            ..PruneOptions::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = report.removed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [middle.to_string()]);
    assert!(f.has_record(&newest) && f.has_snapshot(&c));

    // A record that is used again becomes the newest.
    let again = f.record("again", &[f.layer("dddd", 100_000)], 5 * HOUR);
    KeyIndex::new(&f.store).get(&again).unwrap().unwrap();
    let report = gc::prune(
        &f.store,
        &PruneOptions {
            keep_storage: Some(gc::usage(&f.store).unwrap().build_cache() - 1),
            ..PruneOptions::default()
        },
    )
    .unwrap();
    let ids: Vec<&str> = report.removed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [newest.to_string()]);
    assert!(f.has_record(&again));
}

#[test]
fn until_keeps_what_was_used_recently() {
    let f = Fixture::new();
    let (old_layer, new_layer) = (f.layer("old", 10_000), f.layer("new", 10_000));
    let old = f.record("old", &[old_layer], 48 * HOUR);
    let new = f.record("new", &[new_layer], HOUR);
    let old_mount = f.mount("old-mount", 10_000, 48 * HOUR);
    let new_mount = f.mount("new-mount", 10_000, HOUR);
    let day = PruneOptions {
        until: Some(24 * HOUR),
        ..PruneOptions::default()
    };
    let report = gc::prune(&f.store, &day).unwrap();
    let mut removed: Vec<(ItemKind, String)> = report
        .removed
        .iter()
        .map(|r| (r.kind, r.id.clone()))
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            (ItemKind::Record, old.to_string()),
            (ItemKind::Mount, "old-mount".to_string())
        ]
    );
    assert!(!f.has_record(&old) && !f.has_snapshot(&old_layer) && !old_mount.exists());
    assert!(f.has_record(&new) && f.has_snapshot(&new_layer) && new_mount.exists());

    // Without a filter: every record, but cache mounts stay...
    gc::prune(&f.store, &PruneOptions::default()).unwrap();
    assert!(!f.has_record(&new) && !f.has_snapshot(&new_layer));
    assert!(new_mount.exists());
    // ...until --all.
    let ctx = f.root().join("context-cache");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("abc"), b"stat cache").unwrap();
    KeyIndex::new(&f.store).put_note("step-1", b"note").unwrap();
    let report = gc::prune(
        &f.store,
        &PruneOptions {
            all: true,
            ..PruneOptions::default()
        },
    )
    .unwrap();
    let mut kinds: Vec<ItemKind> = report.removed.iter().map(|r| r.kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [ItemKind::Mount, ItemKind::ContextCache, ItemKind::Note]
    );
    assert!(!new_mount.exists() && !ctx.join("abc").exists());
    let usage = gc::usage(&f.store).unwrap();
    assert_eq!(usage.build_cache(), usage.tmp.size, "{usage:?}");
}

#[test]
fn a_held_snapshot_is_not_removed() {
    let f = Fixture::new();
    let layer = f.layer("held", 10_000);
    let hold = snapshots(&f.store).hold(&layer.diff_id).unwrap();
    let all = PruneOptions {
        all: true,
        ..PruneOptions::default()
    };
    let report = gc::prune(&f.store, &all).unwrap();
    assert_eq!(report.held, [layer.diff_id]);
    assert!(f.has_snapshot(&layer));
    drop(hold);
    let report = gc::prune(&f.store, &all).unwrap();
    assert!(report.held.is_empty());
    assert_eq!(report.snapshots.count, 1);
    assert!(!f.has_snapshot(&layer));
}

#[test]
fn hard_links_count_once() {
    let f = Fixture::new();
    let dir = f.mount("linked", 200_000, Duration::ZERO);
    let one = gc::usage(&f.store).unwrap().mounts.size;
    fs::hard_link(dir.join("file"), dir.join("link")).unwrap();
    let two = gc::usage(&f.store).unwrap().mounts.size;
    assert!(one >= 200_000);
    assert_eq!(one, two);
}

/// Whether the environment sets the automatic cap, which the tests of the
/// default cap cannot then check (said on stderr).
fn keep_storage_is_set() -> bool {
    let set = std::env::var_os(gc::ENV_KEEP_STORAGE).is_some();
    if set {
        eprintln!(
            "skipped: {} is set in this environment",
            gc::ENV_KEEP_STORAGE
        );
    }
    set
}

#[test]
fn a_running_build_makes_auto_prune_skip_and_manual_prune_wait() {
    if keep_storage_is_set() {
        return;
    }
    let f = Fixture::new();
    let layer = f.layer("busy", 10_000);
    let key = f.record("busy", &[layer], HOUR);
    fs::write(
        f.root().join("config.json"),
        r#"{"gc":{"keepStorage":"1B"}}"#,
    )
    .unwrap();
    let build = f.store.lock_shared(gc::GC_LOCK).unwrap();
    assert!(matches!(gc::auto_prune(&f.store).unwrap(), AutoPrune::Busy));
    assert!(f.has_record(&key));

    let (tx, rx) = mpsc::channel();
    let store = f.store.clone();
    let manual = std::thread::spawn(move || {
        let report = gc::prune(&store, &PruneOptions::default());
        tx.send(()).unwrap();
        report
    });
    // Still waiting a good while later, with nothing removed.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    assert!(f.has_record(&key) && f.has_snapshot(&layer));
    drop(build);
    rx.recv_timeout(Duration::from_secs(30))
        .expect("prune goes on once the build is done");
    let report = manual.join().unwrap().unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(!f.has_record(&key) && !f.has_snapshot(&layer));

    // With no build running the cap applies.
    let again = f.record("again", &[f.layer("again", 10_000)], HOUR);
    match gc::auto_prune(&f.store).unwrap() {
        AutoPrune::Pruned { cap, report, .. } => {
            assert_eq!(cap, 1);
            assert_eq!(report.removed.len(), 1);
        }
        other => panic!("expected a prune, got {other:?}"),
    }
    assert!(!f.has_record(&again));
    fs::write(
        f.root().join("config.json"),
        r#"{"gc":{"keepStorage":"off"}}"#,
    )
    .unwrap();
    assert!(matches!(
        gc::auto_prune(&f.store).unwrap(),
        AutoPrune::Disabled
    ));
}

/// The `tmp/removing-*` directories of a store.
fn removing_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root.join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("removing-"))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

#[test]
fn auto_prune_moves_trees_away_at_once_and_leaves_their_deletion_to_the_caller() {
    if keep_storage_is_set() {
        return;
    }
    let f = Fixture::new();
    let layer = f.layer("trash", 100_000);
    let key = f.record("trash", &[layer], HOUR);
    let mount = f.mount("trash", 100_000, HOUR);
    fs::write(
        f.root().join("config.json"),
        r#"{"gc":{"keepStorage":"1B"}}"#,
    )
    .unwrap();
    let trash = match gc::auto_prune(&f.store).unwrap() {
        AutoPrune::Pruned { report, trash, .. } => {
            assert_eq!(report.removed.len(), 2, "{report:?}");
            assert!(report.reclaimed >= 200_000, "{report:?}");
            trash
        }
        other => panic!("expected a prune, got {other:?}"),
    };
    // Gone from the store at once, kept in tmp/ for the caller to delete.
    assert!(!f.has_record(&key) && !f.has_snapshot(&layer));
    assert!(!mount.exists());
    assert!(snapshots(&f.store).list().unwrap().is_empty());
    let dirs = removing_dirs(f.root());
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert_eq!(trash.dirs().len(), 2);
    // Trash being deleted is no longer cache.
    let usage = gc::usage(&f.store).unwrap();
    assert_eq!(usage.tmp, gc::Category::default(), "{usage:?}");
    assert!(usage.build_cache() < 100_000, "{usage:?}");

    // Refused: anything but removing-* directories of the store's tmp/.
    let outside = f.root().join("snapshots");
    for bad in [outside.clone(), f.root().join("tmp"), dirs[0].join("tree")] {
        let err = gc::remove_trash(f.root(), std::slice::from_ref(&bad)).unwrap_err();
        assert!(err.to_string().contains(&*bad.to_string_lossy()), "{err}");
    }
    assert!(outside.exists() && dirs.iter().all(|d| d.exists()));

    // What another deleter took first counts as deleted; a root given
    // relative to the working directory (`--root ./cache`) is the same root.
    fs::remove_dir_all(&dirs[0]).unwrap();
    let cwd = std::env::current_dir().unwrap();
    let relative_root = std::path::PathBuf::from("../".repeat(cwd.components().count() - 1))
        .join(f.root().strip_prefix("/").unwrap());
    assert!(relative_root.is_relative());
    gc::remove_trash(&relative_root, &trash.into_dirs()).unwrap();
    assert!(removing_dirs(f.root()).is_empty());
    gc::remove_trash(f.root(), &dirs).unwrap();

    // Dropped, trash is deleted there and then.
    let layer = f.layer("dropped", 10_000);
    f.record("dropped", &[layer], HOUR);
    match gc::auto_prune(&f.store).unwrap() {
        AutoPrune::Pruned { trash, .. } => {
            assert_eq!(removing_dirs(f.root()), trash.dirs());
            drop(trash);
        }
        other => panic!("expected a prune, got {other:?}"),
    }
    assert!(removing_dirs(f.root()).is_empty());
    assert_eq!(fs::read_dir(f.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn keep_storage_drops_image_snapshots_only_after_all_records() {
    let f = Fixture::new();
    let base = f.layer("base", 50_000);
    let manifest = f.image("app", &[base]);
    let step = f.layer("step", 50_000);
    let key = f.record("step", &[base, step], 48 * HOUR);
    let tiny = PruneOptions {
        keep_storage: Some(1),
        until: Some(24 * HOUR),
        ..PruneOptions::default()
    };
    // With an age filter only the old record goes: when the image's
    // snapshot was last used is not known.
    let report = gc::prune(&f.store, &tiny).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(!f.has_record(&key) && !f.has_snapshot(&step));
    assert!(f.has_snapshot(&base));
    let report = gc::prune(
        &f.store,
        &PruneOptions {
            until: None,
            ..tiny
        },
    )
    .unwrap();
    assert_eq!(report.snapshots.count, 1);
    assert!(!f.has_snapshot(&base));
    ImageStore::new(f.store.clone())
        .check_complete(&manifest, "app")
        .unwrap();
    // Under the limit nothing of the image's goes.
    let again = f.layer("base2", 50_000);
    let manifest2 = f.image("app2", &[again]);
    let report = gc::prune(
        &f.store,
        &PruneOptions {
            keep_storage: Some(10_000_000),
            ..PruneOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.snapshots.count, 0);
    assert!(f.has_snapshot(&again));
    assert!(f.store.has_blob(&manifest2));
}
