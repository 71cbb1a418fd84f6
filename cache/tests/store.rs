//! Content store: blob round trips, crash-safety rules, layout versioning, and
//! several threads and processes writing the same blobs at once.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use cache::Digest;
use cache::store::{Store, StoreError};

/// Deterministic pseudo-random bytes, so that processes produce the same blob.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn tmp_entries(store: &Store) -> Vec<String> {
    fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn blob_count(store: &Store) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn open_creates_an_oci_layout() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    let root = store.root();
    let layout: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index,
        serde_json::json!({"schemaVersion": 2, "manifests": []})
    );
    for d in ["blobs/sha256", "snapshots", "tmp"] {
        assert!(root.join(d).is_dir(), "{d} missing");
    }
    let version: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("builder-layout.json")).unwrap()).unwrap();
    assert_eq!(version["version"], 1);
}

#[test]
fn reopening_keeps_an_existing_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tagged = br#"{"schemaVersion":2,"manifests":[{"x":1}]}"#;
    fs::write(store.root().join("index.json"), tagged).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(fs::read(store.root().join("index.json")).unwrap(), tagged);
}

#[test]
fn put_read_has_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = b"hello blob";
    let d = store.put_blob(data).unwrap();
    assert_eq!(d, Digest::of(data));
    assert!(store.has_blob(&d));
    assert_eq!(
        store.blob_path(&d),
        dir.path().join("blobs/sha256").join(d.hex())
    );
    assert_eq!(store.read_blob(&d).unwrap(), data);
    assert_eq!(store.blob_size(&d).unwrap(), data.len() as u64);
    let mut s = String::new();
    std::io::Read::read_to_string(&mut store.open_blob(&d).unwrap(), &mut s).unwrap();
    assert_eq!(s, "hello blob");
    assert!(
        tmp_entries(&store).is_empty(),
        "temp files left: {:?}",
        tmp_entries(&store)
    );
}

#[test]
fn missing_blob_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = Digest::of(b"never stored");
    assert!(!store.has_blob(&d));
    assert!(matches!(store.read_blob(&d), Err(StoreError::NotFound(x)) if x == d));
    assert!(matches!(store.open_blob(&d), Err(StoreError::NotFound(_))));
    assert!(matches!(store.blob_size(&d), Err(StoreError::NotFound(_))));
}

#[test]
fn put_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store.put_blob(b"same").unwrap();
    let b = store.put_blob(b"same").unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"sa").unwrap();
    w.write_all(b"me").unwrap();
    let (c, size) = w.commit(None).unwrap();
    assert_eq!((a, size), (b, 4));
    assert_eq!(a, c);
    assert_eq!(blob_count(&store), 1);
    assert_eq!(store.read_blob(&a).unwrap(), b"same");
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn mismatched_digest_is_rejected_and_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let claimed = Digest::of(b"what was promised");
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"what was delivered").unwrap();
    match w.commit(Some(&claimed)) {
        Err(StoreError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::of(b"what was delivered"));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!store.has_blob(&claimed));
    assert!(!store.has_blob(&Digest::of(b"what was delivered")));
    assert_eq!(blob_count(&store), 0);
    assert!(
        tmp_entries(&store).is_empty(),
        "temp files left: {:?}",
        tmp_entries(&store)
    );
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut w = store.blob_writer().unwrap();
    w.write_all(&pattern(1 << 20, 1)).unwrap();
    drop(w);
    assert_eq!(blob_count(&store), 0);
    assert!(tmp_entries(&store).is_empty());
}

#[test]
fn corrupt_blob_is_detected_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let d = store.put_blob(b"original").unwrap();
    let path = store.blob_path(&d);
    fs::remove_file(&path).unwrap();
    fs::write(&path, b"tampered").unwrap();
    assert!(matches!(store.read_blob(&d), Err(StoreError::Corrupt { digest, .. }) if digest == d));
}

#[test]
fn unknown_layout_version_is_refused() {
    for content in [r#"{"version":2}"#, r#"{"version":"1"}"#, r#"{"version":0}"#] {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        fs::write(dir.path().join("builder-layout.json"), content).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::UnsupportedVersion { found, .. }) => {
                assert!(content.contains(&found), "{found}")
            }
            other => panic!("{content}: expected unsupported version, got {other:?}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("builder-layout.json"), "not json").unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::InvalidLayoutFile { .. })
    ));
}

#[test]
fn stale_tmp_entries_are_removed_but_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tmp = store.root().join("tmp");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    fs::write(tmp.join("old-file"), b"x").unwrap();
    File::options()
        .write(true)
        .open(tmp.join("old-file"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    fs::create_dir_all(tmp.join("old-dir/sub")).unwrap();
    fs::write(tmp.join("old-dir/sub/f"), b"x").unwrap();
    File::open(tmp.join("old-dir"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    fs::write(tmp.join("fresh-file"), b"x").unwrap();
    let fresh_dir = store.temp_dir("fresh-").unwrap();
    Store::open(dir.path()).unwrap();
    assert!(!tmp.join("old-file").exists());
    assert!(!tmp.join("old-dir").exists());
    assert!(tmp.join("fresh-file").exists());
    assert!(fresh_dir.path().is_dir());
    assert_eq!(fresh_dir.path().parent().unwrap(), tmp);
}

#[test]
fn temp_dir_content_can_be_renamed_into_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let t = store.temp_dir("snap-").unwrap();
    fs::write(t.path().join("f"), b"x").unwrap();
    let dest = store.root().join("snapshots/abc");
    fs::rename(t.keep(), &dest).unwrap();
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"x");
}

#[test]
fn concurrent_threads_write_the_same_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = Arc::new(pattern(4 << 20, 7));
    let expected = Digest::of(&data);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (store, data, barrier) = (store.clone(), data.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                if i % 2 == 0 {
                    store.put_blob(&data).unwrap()
                } else {
                    let mut w = store.blob_writer().unwrap();
                    for chunk in data.chunks(10_000) {
                        w.write_all(chunk).unwrap();
                    }
                    w.commit(Some(&expected)).unwrap().0
                }
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), expected);
    }
    assert_eq!(store.read_blob(&expected).unwrap(), *data);
    assert_eq!(blob_count(&store), 1);
    assert!(tmp_entries(&store).is_empty());
}

const CHILD_ROOT: &str = "BUILDER_STORE_TEST_CHILD_ROOT";

/// Not a test by itself: the body of the child processes of
/// `concurrent_processes_write_the_same_blobs`, run with `--ignored`.
#[test]
#[ignore = "helper run as a child process by concurrent_processes_write_the_same_blobs"]
fn child_process_writer() {
    let root = std::env::var(CHILD_ROOT).expect("run only as a child process");
    // Each child opens the root itself, racing on layout creation too.
    let store = Store::open(&root).unwrap();
    for seed in 0..4 {
        let data = pattern(2 << 20, seed);
        let expected = Digest::of(&data);
        let mut w = store.blob_writer().unwrap();
        for chunk in data.chunks(65_536) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(
            w.commit(Some(&expected)).unwrap(),
            (expected, data.len() as u64)
        );
        assert_eq!(store.put_blob(&data).unwrap(), expected);
    }
    let _lock = store.lock_exclusive("children").unwrap();
    let counter = Path::new(&root).join("counter");
    let n: u32 = fs::read_to_string(&counter)
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0);
    // A lost update here would mean the lock did not exclude.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&counter, (n + 1).to_string()).unwrap();
}

#[test]
fn concurrent_processes_write_the_same_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "child_process_writer",
                    "--test-threads=1",
                ])
                .env(CHILD_ROOT, &root)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("1 passed"),
            "child did not run the helper: {stdout}"
        );
    }
    let store = Store::open(&root).unwrap();
    for seed in 0..4 {
        let data = pattern(2 << 20, seed);
        assert_eq!(store.read_blob(&Digest::of(&data)).unwrap(), data);
    }
    assert_eq!(blob_count(&store), 4);
    assert!(
        tmp_entries(&store).is_empty(),
        "temp files left: {:?}",
        tmp_entries(&store)
    );
    assert_eq!(fs::read_to_string(root.join("counter")).unwrap(), "6");
}

#[test]
fn exclusive_lock_excludes_and_shared_locks_share() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store.lock_shared("index").unwrap();
    let b = store.try_lock_shared("index").unwrap();
    assert!(b.is_some(), "two shared locks must coexist");
    assert!(store.try_lock_exclusive("index").unwrap().is_none());
    drop((a, b));
    let x = store.lock_exclusive("index").unwrap();
    assert!(store.try_lock_shared("index").unwrap().is_none());
    assert!(
        store.try_lock_exclusive("other").unwrap().is_some(),
        "locks are per name"
    );
    drop(x);
    assert!(store.try_lock_exclusive("index").unwrap().is_some());
    for bad in ["", "..", "a/b"] {
        assert!(matches!(
            store.lock_exclusive(bad),
            Err(StoreError::InvalidLockName(_))
        ));
    }
}

#[test]
fn replace_file_swaps_whole_files_with_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let path = dir.path().join("some/new/dir/file.json");
    // The mode is the one asked for (not the temp file's 0600).
    store.replace_file(&path, b"first", 0o644, true).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    store.replace_file(&path, b"second", 0o600, false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert_eq!(tmp_entries(&store), Vec::<String>::new());
}
