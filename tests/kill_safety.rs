//! SIGKILL during `builder load` and `builder save`: the store stays valid and no partial tarball appears.
//!
//! Each operation is killed with a real SIGKILL at 24 points spread over its
//! progress: the kills wait for the file being written to reach a given size
//! (the temp file in the root's `tmp/` for a load, the output for a save), so
//! they spread over the write however fast or loaded the machine is. Kills
//! timed from a measured duration did not: when the measurement and the
//! kills met different loads, too few landed on a running process. After
//! every kill: every blob in the root hashes to its name, `index.json` parses
//! and each of its entries has all its blobs, the destination of a killed
//! save does not exist, and the same command then succeeds. The payload
//! (48 MiB of random data in one layer, in both an OCI layout and a docker
//! archive) is large enough that kills land mid-write; the test checks that
//! they did.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cache::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_builder");
const KILL_POINTS: usize = 24;
const PAYLOAD: usize = 48 << 20;
/// How long a killed operation may take to reach its kill point: far more
/// than a load or save of the payload takes on any machine.
const PROGRESS_LIMIT: Duration = Duration::from_secs(120);
/// The signal number of SIGKILL on Linux.
const SIGKILL: i32 = 9;

/// A minimal ustar writer, so the payload archives need no other tool.
struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    fn header(path: &str, size: u64, kind: u8, link: &str) -> [u8; 512] {
        fn octal(field: &mut [u8], value: u64) {
            let s = format!("{:0width$o}\0", value, width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        }
        assert!(path.len() < 100 && link.len() < 100);
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn file(&mut self, path: &str, data: &[u8]) {
        self.out
            .write_all(&Self::header(path, data.len() as u64, b'0', ""))
            .unwrap();
        self.out.write_all(data).unwrap();
        let pad = (512 - data.len() % 512) % 512;
        self.out.write_all(&vec![0u8; pad]).unwrap();
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.out
            .write_all(&Self::header(path, 0, b'2', target))
            .unwrap();
    }

    fn finish(mut self) -> W {
        self.out.write_all(&[0u8; 1024]).unwrap();
        self.out
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `app:1` as an OCI layout tarball and as a docker archive.
fn make_archives(dir: &Path) -> (PathBuf, PathBuf) {
    let mut layer = TarWriter { out: Vec::new() };
    layer.file("payload.bin", &noise(PAYLOAD, 42));
    layer.file("etc/hello", b"hello\n");
    let layer = layer.finish();
    let layer_digest = Digest::of(&layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = Digest::of(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = Digest::of(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"annotations":{{"io.containerd.image.name":"docker.io/library/app:1","org.opencontainers.image.ref.name":"1"}}}}]}}"#,
        manifest.len()
    );

    let oci = dir.join("app.oci.tar");
    let mut t = TarWriter {
        out: std::io::BufWriter::new(std::fs::File::create(&oci).unwrap()),
    };
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    t.file(&format!("blobs/sha256/{}", layer_digest.hex()), &layer);
    t.file(
        &format!("blobs/sha256/{}", config_digest.hex()),
        config.as_bytes(),
    );
    t.file(
        &format!("blobs/sha256/{}", manifest_digest.hex()),
        manifest.as_bytes(),
    );
    t.file("index.json", index.as_bytes());
    t.finish().flush().unwrap();

    let docker = dir.join("app.docker.tar");
    let mut t = TarWriter {
        out: std::io::BufWriter::new(std::fs::File::create(&docker).unwrap()),
    };
    t.file(&format!("{}.tar", layer_digest.hex()), &layer);
    t.symlink("0123/layer.tar", &format!("../{}.tar", layer_digest.hex()));
    t.file(&format!("{}.json", config_digest.hex()), config.as_bytes());
    t.file(
        "manifest.json",
        format!(
            r#"[{{"Config":"{}.json","RepoTags":["app:1"],"Layers":["0123/layer.tar"]}}]"#,
            config_digest.hex()
        )
        .as_bytes(),
    );
    t.finish().flush().unwrap();
    (oci, docker)
}

fn builder(root: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--root")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn succeed(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The store invariants that must hold whenever builder dies.
fn check_root(root: &Path) {
    let blobs = root.join("blobs/sha256");
    if let Ok(entries) = std::fs::read_dir(&blobs) {
        for e in entries {
            let e = e.unwrap();
            let data = std::fs::read(e.path()).unwrap();
            assert_eq!(
                Digest::of(&data).hex(),
                e.file_name().to_string_lossy(),
                "blob {:?} does not match its name",
                e.path()
            );
        }
    }
    let Ok(raw) = std::fs::read(root.join("index.json")) else {
        return;
    };
    let index: serde_json::Value =
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("index.json does not parse: {e}"));
    for entry in index["manifests"].as_array().unwrap() {
        let digest: Digest = entry["digest"].as_str().unwrap().parse().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(blobs.join(digest.hex())).expect("a named manifest is present"),
        )
        .unwrap();
        for blob in
            std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().unwrap())
        {
            let d: Digest = blob["digest"].as_str().unwrap().parse().unwrap();
            assert!(
                blobs.join(d.hex()).exists(),
                "index names an image whose blob {d} is missing"
            );
        }
    }
}

/// Files left in the root's tmp/ (evidence that a kill landed mid-write).
fn tmp_leftovers(root: &Path) -> usize {
    std::fs::read_dir(root.join("tmp")).map_or(0, |d| d.count())
}

/// The size of the largest file directly in `dir` (0 if there is none).
fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// The size of the largest file that process `pid` has open in `dir`. A
/// save writes its output as an unnamed `O_TMPFILE` in the destination's
/// directory (or, where that is not supported, a dot-named temp file there),
/// so the directory's listing does not show it but the process's open files do.
fn open_file_size_in(pid: u32, dir: &Path) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            // An unnamed file shows as `DIR/#INODE (deleted)`.
            std::fs::read_link(fd.path()).is_ok_and(|target| target.parent() == Some(dir))
        })
        // The link's metadata is that of the open file itself.
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// Starts `cmd`, SIGKILLs it as soon as `due(pid)` holds, and says whether it
/// was still running then. `what` names the kill point if it is never reached.
fn kill_when(mut cmd: Command, what: &str, mut due: impl FnMut(u32) -> bool) -> bool {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + PROGRESS_LIMIT;
    while !due(child.id()) {
        // A process that finished before its kill point counts as missed.
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not reach {what} within {PROGRESS_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Child::kill sends SIGKILL.
    let _ = child.kill();
    let status = child.wait().unwrap();
    status.signal() == Some(SIGKILL)
}

/// `part` 24ths of `total`, for the kill point `part` of a save (0: as soon
/// as it started; the last, 23/24, before the end of the write, so that it
/// finds the save running).
fn share(total: u64, part: usize) -> u64 {
    total * part as u64 / KILL_POINTS as u64
}

/// Where a load is killed.
#[derive(Debug, Clone, Copy)]
enum LoadPoint {
    /// When this many bytes of the layer are in its temp file (0: as soon
    /// as the load started).
    Written(u64),
    /// As soon as the layer is in the store: while the config, the manifest
    /// and the index entry are being written.
    Stored,
}

/// The first kill as soon as the load started, then one each time another
/// 21st of the payload is in the temp file (the last once all of it is:
/// while the rest of the layer is written and synced), and two as soon as
/// the layer entered the store.
fn load_points() -> Vec<LoadPoint> {
    let steps = KILL_POINTS - 3;
    (0..=steps)
        .map(|k| LoadPoint::Written((PAYLOAD * k / steps) as u64))
        .chain([LoadPoint::Stored; 2])
        .collect()
}

/// Whether a load into `root` has reached `point`.
fn load_reached(root: &Path, point: LoadPoint) -> bool {
    match point {
        LoadPoint::Written(0) => true,
        LoadPoint::Written(n) => largest_file(&root.join("tmp")) >= n,
        LoadPoint::Stored => largest_file(&root.join("blobs/sha256")) >= PAYLOAD as u64,
    }
}

#[test]
fn sigkill_during_load_leaves_a_valid_store() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, docker) = make_archives(dir.path());
    let points = load_points();
    assert_eq!(points.len(), KILL_POINTS);
    for archive in [&oci, &docker] {
        let mut killed = 0;
        let mut mid_write = 0;
        for (i, point) in points.iter().copied().enumerate() {
            let root = dir.path().join(format!("load-{i}"));
            let mut cmd = builder(&root);
            cmd.arg("load").arg("-i").arg(archive);
            if kill_when(cmd, &format!("{point:?}"), |_| load_reached(&root, point)) {
                killed += 1;
            }
            if tmp_leftovers(&root) > 0 {
                mid_write += 1;
            }
            check_root(&root);
            // The next load succeeds and names a complete image.
            succeed(builder(&root).arg("load").arg("-i").arg(archive));
            check_root(&root);
            succeed(builder(&root).args(["inspect", "app:1"]));
            std::fs::remove_dir_all(&root).unwrap();
        }
        eprintln!(
            "{}: {killed} of {KILL_POINTS} kills hit a running load, {mid_write} mid-write",
            archive.display()
        );
        assert!(
            killed >= KILL_POINTS / 2,
            "only {killed} kills hit a running load"
        );
        assert!(
            mid_write >= 3,
            "only {mid_write} kills landed while a blob was being written"
        );
    }
}

#[test]
fn sigkill_during_save_leaves_no_partial_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, _) = make_archives(dir.path());
    let root = dir.path().join("root");
    succeed(builder(&root).arg("load").arg("-i").arg(&oci));
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let dest = out_dir.join("app.tar");
    succeed(builder(&root).args(["save", "app:1", "-o"]).arg(&dest));
    let reference = std::fs::read(&dest).unwrap();
    std::fs::remove_file(&dest).unwrap();
    // As /proc shows the directory of the file being written.
    let out_dir = out_dir.canonicalize().unwrap();
    let mut killed = 0;
    for part in 0..KILL_POINTS {
        let at = share(reference.len() as u64, part);
        let mut cmd = builder(&root);
        cmd.args(["save", "app:1", "-o"]).arg(&dest);
        let was_running = kill_when(cmd, &format!("{at} bytes written"), |pid| {
            at == 0 || open_file_size_in(pid, &out_dir) >= at
        });
        if was_running {
            killed += 1;
            // A kill that lands after the tarball was linked into place but
            // before the process exited leaves the complete file: never a
            // partial one.
            let complete = dest.exists();
            if complete {
                assert!(
                    std::fs::read(&dest).unwrap() == reference,
                    "a killed save left a partial {}",
                    dest.display()
                );
            }
            assert_eq!(
                std::fs::read_dir(&out_dir).unwrap().count(),
                usize::from(complete),
                "a killed save left a temp file"
            );
        }
        check_root(&root);
        // The next save succeeds and writes the whole tarball.
        let _ = std::fs::remove_file(&dest);
        succeed(builder(&root).args(["save", "app:1", "-o"]).arg(&dest));
        assert_eq!(std::fs::read(&dest).unwrap(), reference);
        std::fs::remove_file(&dest).unwrap();
    }
    eprintln!("{killed} of {KILL_POINTS} kills hit a running save");
    assert!(
        killed >= KILL_POINTS / 2,
        "only {killed} kills hit a running save"
    );
    // The saved tarball still loads.
    let other = dir.path().join("other");
    std::fs::write(&dest, &reference).unwrap();
    succeed(builder(&other).arg("load").arg("-i").arg(&dest));
    check_root(&other);
}

#[test]
fn sigkill_while_overwriting_keeps_the_old_tarball_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, _) = make_archives(dir.path());
    let root = dir.path().join("root");
    succeed(builder(&root).arg("load").arg("-i").arg(&oci));
    let dest = dir.path().join("app.tar");
    succeed(builder(&root).args(["save", "app:1", "-o"]).arg(&dest));
    let before = std::fs::read(&dest).unwrap();
    let dir_of_dest = dir.path().canonicalize().unwrap();
    for part in (0..KILL_POINTS).step_by(3) {
        let at = share(before.len() as u64, part);
        let mut cmd = builder(&root);
        cmd.args(["save", "app:1", "-o"]).arg(&dest);
        kill_when(cmd, &format!("{at} bytes written"), |pid| {
            at == 0 || open_file_size_in(pid, &dir_of_dest) >= at
        });
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            before,
            "the old file is intact (or replaced whole)"
        );
    }
}
