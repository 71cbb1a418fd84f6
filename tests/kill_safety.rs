//! SIGKILL during `builder load` and `builder save`: the store stays valid and no partial tarball appears.
//!
//! Each operation is killed with a real SIGKILL at 24 points spread over its
//! measured duration. After every kill: every blob in the root hashes to its
//! name, `index.json` parses and each of its entries has all its blobs, the
//! destination of a killed save does not exist, and the same command then
//! succeeds. The payload (48 MiB of random data in one layer, in both an OCI
//! layout and a docker archive) is large enough that kills land mid-write;
//! the test checks that they did.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cache::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_builder");
const KILL_POINTS: usize = 24;
const PAYLOAD: usize = 48 << 20;
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

/// How long `cmd` takes, as the median of three runs.
fn duration_of(mut make: impl FnMut() -> Command) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let start = Instant::now();
            succeed(&mut make());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[1]
}

/// Starts `cmd`, SIGKILLs it after `after`, and says whether it was still running.
fn kill_after(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(after);
    // Child::kill sends SIGKILL.
    let _ = child.kill();
    let status = child.wait().unwrap();
    status.signal() == Some(SIGKILL)
}

/// Kill times spread over the first 90% of a measured run: the machine is
/// shared, so a run may be quicker than the measurement and the last points
/// would often miss.
fn kill_points(total: Duration) -> impl Iterator<Item = Duration> {
    (0..KILL_POINTS).map(move |i| total.mul_f64(0.9 * (i as f64 + 0.5) / KILL_POINTS as f64))
}

#[test]
fn sigkill_during_load_leaves_a_valid_store() {
    let dir = tempfile::tempdir().unwrap();
    let (oci, docker) = make_archives(dir.path());
    for archive in [&oci, &docker] {
        let calibrate = dir.path().join("calibrate");
        let total = duration_of(|| {
            let _ = std::fs::remove_dir_all(&calibrate);
            let mut c = builder(&calibrate);
            c.arg("load").arg("-i").arg(archive);
            c
        });
        let mut killed = 0;
        let mut mid_write = 0;
        for (i, at) in kill_points(total).enumerate() {
            let root = dir.path().join(format!("load-{i}"));
            let mut cmd = builder(&root);
            cmd.arg("load").arg("-i").arg(archive);
            if kill_after(cmd, at) {
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
            "{}: load takes {total:?}; {killed} of {KILL_POINTS} kills hit a running load, {mid_write} mid-write",
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
    let total = duration_of(|| {
        let _ = std::fs::remove_file(&dest);
        let mut c = builder(&root);
        c.args(["save", "app:1", "-o"]).arg(&dest);
        c
    });
    let reference = std::fs::read(&dest).unwrap();
    std::fs::remove_file(&dest).unwrap();
    let mut killed = 0;
    for at in kill_points(total) {
        let mut cmd = builder(&root);
        cmd.args(["save", "app:1", "-o"]).arg(&dest);
        let was_running = kill_after(cmd, at);
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
    eprintln!("save takes {total:?}; {killed} of {KILL_POINTS} kills hit a running save");
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
    let total = duration_of(|| {
        let mut c = builder(&root);
        c.args(["save", "app:1", "-o"])
            .arg(dir.path().join("scratch.tar"));
        c
    });
    for at in kill_points(total).step_by(3) {
        let mut cmd = builder(&root);
        cmd.args(["save", "app:1", "-o"]).arg(&dest);
        kill_after(cmd, at);
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            before,
            "the old file is intact (or replaced whole)"
        );
    }
}
