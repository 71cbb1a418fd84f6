//! `builder load/save/images/tag/rmi/inspect` against images made and checked by umoci and skopeo.
//!
//! Needs `umoci`, `skopeo` and a static `/bin/busybox`: without them the
//! tests print why and skip, except under `CI`, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_builder");

/// Whether the external tools are here; panics under CI when they are not.
fn tools_available() -> bool {
    let missing: Vec<&str> = ["umoci", "skopeo"]
        .into_iter()
        .filter(|t| {
            Command::new(t)
                .arg("--version")
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .chain((!Path::new("/bin/busybox").exists()).then_some("/bin/busybox"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but these tools are missing: {missing:?}");
    }
    eprintln!("skipping: missing {missing:?} (install umoci, skopeo and busybox-static)");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn builder(root: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--root").arg(root);
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn skopeo_inspect(transport: &str) -> serde_json::Value {
    let out = run(Command::new("skopeo").args(["--insecure-policy", "inspect", transport]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inspect(root: &Path, name: &str) -> serde_json::Value {
    let out = run(builder(root).args(["inspect", name]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// A two-layer image in an OCI layout made by umoci, and its manifest digest.
struct Fixture {
    dir: tempfile::TempDir,
    manifest_digest: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("L");
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout));
        run(Command::new("umoci")
            .args(["new", "--image"])
            .arg(format!("{}:t", layout.display())));
        run(Command::new("umoci")
            .args(["insert", "--image"])
            .arg(format!("{}:t", layout.display()))
            .args(["/bin/busybox", "/bin/busybox"]));
        let extra = dir.path().join("hello.txt");
        std::fs::write(&extra, "hello from the second layer\n").unwrap();
        run(Command::new("umoci")
            .args(["insert", "--image"])
            .arg(format!("{}:t", layout.display()))
            .arg(&extra)
            .arg("/etc/hello.txt"));
        run(Command::new("umoci")
            .args(["config", "--image"])
            .arg(format!("{}:t", layout.display()))
            .args(["--config.cmd", "/bin/busybox", "--config.cmd", "sh"]));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        Fixture {
            dir,
            manifest_digest,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn layout_ref(&self) -> String {
        format!("oci:{}:t", self.path("L").display())
    }

    /// `skopeo copy` the image to `transport:path[:name]`.
    fn copy_to(&self, dest: &str) {
        run(Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "-q",
            &self.layout_ref(),
            dest,
        ]));
    }
}

#[test]
fn oci_archive_round_trip_keeps_the_manifest_digest_and_satisfies_skopeo_and_umoci() {
    if !tools_available() {
        return;
    }
    let fx = Fixture::new();
    let archive = fx.path("app.oci.tar");
    fx.copy_to(&format!("oci-archive:{}:app:1", archive.display()));

    let root1 = fx.path("root1");
    let out = run(builder(&root1).arg("load").arg("-i").arg(&archive));
    assert_eq!(stdout(&out), "Loaded image: app:1\n");
    let info = inspect(&root1, "app:1");
    assert_eq!(info["ManifestDigest"], fx.manifest_digest.as_str());
    assert_eq!(info["RepoTags"], serde_json::json!(["app:1"]));
    assert_eq!(
        info["Config"]["config"]["Cmd"],
        serde_json::json!(["/bin/busybox", "sh"])
    );

    // The store is an OCI layout that skopeo reads directly.
    let in_store = skopeo_inspect(&format!("oci:{}:app:1", root1.display()));
    assert_eq!(in_store["Digest"], fx.manifest_digest.as_str());
    // `app` means `app:latest`, for skopeo too.
    run(builder(&root1).args(["tag", "app:1", "app"]));
    let latest = skopeo_inspect(&format!("oci:{}:app", root1.display()));
    assert_eq!(latest["Digest"], fx.manifest_digest.as_str());

    let saved = fx.path("saved.tar");
    run(builder(&root1)
        .args(["save", "-o"])
        .arg(&saved)
        .arg("app:1"));
    let as_oci = skopeo_inspect(&format!("oci-archive:{}", saved.display()));
    assert_eq!(as_oci["Digest"], fx.manifest_digest.as_str());
    let as_docker = skopeo_inspect(&format!("docker-archive:{}", saved.display()));
    assert_eq!(as_docker["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(as_docker["Architecture"], "amd64");

    // docker-archive's manifest.json: Config and Layers point at blobs in the tar.
    let extracted = fx.path("extracted");
    std::fs::create_dir(&extracted).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&saved)
        .arg("-C")
        .arg(&extracted));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(extracted.join("manifest.json")).unwrap()).unwrap();
    let entry = &manifest.as_array().unwrap()[0];
    assert_eq!(entry["RepoTags"], serde_json::json!(["app:1"]));
    let config = entry["Config"].as_str().unwrap();
    assert_eq!(
        config,
        format!(
            "blobs/sha256/{}",
            info["Id"].as_str().unwrap().trim_start_matches("sha256:")
        )
    );
    for path in std::iter::once(config).chain(
        entry["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap()),
    ) {
        let data = std::fs::read(extracted.join(path)).unwrap();
        assert_eq!(
            cache::Digest::of(&data).hex(),
            path.trim_start_matches("blobs/sha256/"),
            "{path}"
        );
    }
    // umoci unpacks the extracted layout by its ref.name tag.
    let bundle = fx.path("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:1", extracted.display()))
        .arg(&bundle));
    assert_eq!(
        std::fs::read(bundle.join("rootfs/bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/hello.txt")).unwrap(),
        "hello from the second layer\n"
    );

    // Into a second root, from a file and from stdin: same digest.
    let root2 = fx.path("root2");
    let out = run(builder(&root2)
        .arg("load")
        .stdin(std::fs::File::open(&saved).unwrap()));
    assert_eq!(stdout(&out), "Loaded image: app:1\n");
    assert_eq!(
        inspect(&root2, "app:1")["ManifestDigest"],
        fx.manifest_digest.as_str()
    );
    let root3 = fx.path("root3");
    run(builder(&root3)
        .args(["load", "-i", "-"])
        .stdin(std::fs::File::open(&saved).unwrap()));
    assert_eq!(
        inspect(&root3, "app:1")["ManifestDigest"],
        fx.manifest_digest.as_str()
    );
    let out = builder(&root3).args(["inspect", "app"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image: app:latest"));
}

#[test]
fn docker_archive_loads_with_uncompressed_layers_and_saves_back() {
    if !tools_available() {
        return;
    }
    let fx = Fixture::new();
    let archive = fx.path("app.docker.tar");
    fx.copy_to(&format!("docker-archive:{}:app:1", archive.display()));
    let original_config = skopeo_inspect(&format!("docker-archive:{}", archive.display()));

    let root = fx.path("root");
    let out = run(builder(&root).arg("load").arg("-i").arg(&archive));
    assert_eq!(stdout(&out), "Loaded image: app:1\n");
    let info = inspect(&root, "app:1");
    let layers = info["Manifest"]["layers"].as_array().unwrap();
    let diff_ids = info["Config"]["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(
            &layer["digest"], diff_id,
            "an uncompressed layer's digest is its diffID"
        );
    }
    assert_eq!(
        info["Manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(info["Architecture"], "amd64");

    let saved = fx.path("saved.tar");
    run(builder(&root).args(["save", "app:1", "-o"]).arg(&saved));
    let again = skopeo_inspect(&format!("docker-archive:{}", saved.display()));
    assert_eq!(again["Layers"], original_config["Layers"]);
    let as_oci = skopeo_inspect(&format!("oci-archive:{}", saved.display()));
    assert_eq!(as_oci["Digest"], info["ManifestDigest"]);
}

#[test]
fn images_tag_rmi_and_inspect_behave_like_docker() {
    if !tools_available() {
        return;
    }
    let fx = Fixture::new();
    let archive = fx.path("app.oci.tar");
    fx.copy_to(&format!("oci-archive:{}:app:1", archive.display()));
    let root = fx.path("root");
    run(builder(&root).arg("load").arg("-i").arg(&archive));
    let id = inspect(&root, "app:1")["Id"].as_str().unwrap().to_string();
    let short = &id["sha256:".len().."sha256:".len() + 12];

    run(builder(&root).args(["tag", "app:1", "localhost:5000/x:2"]));
    run(builder(&root).args(["tag", short, "app"]));
    let table = stdout(&run(builder(&root).arg("images")));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(header, ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let mut names: Vec<String> = rows.iter().map(|r| format!("{}:{}", r[0], r[1])).collect();
    names.sort();
    assert_eq!(names, ["app:1", "app:latest", "localhost:5000/x:2"]);
    assert!(rows.iter().all(|r| r[2] == short), "{table}");
    assert!(lines[1].ends_with("MB"), "{table}");
    let quiet = stdout(&run(builder(&root).args(["images", "-q"])));
    assert_eq!(quiet, format!("{short}\n{short}\n{short}\n"));

    let out = run(builder(&root).args(["rmi", "app:1"]));
    assert_eq!(stdout(&out), "Untagged: app:1\n");
    let out = builder(&root).args(["rmi", short]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "two names left: must be forced");
    // Names go in the order they were given (index order).
    let out = run(builder(&root).args(["rmi", "-f", short]));
    assert_eq!(
        stdout(&out),
        format!("Untagged: localhost:5000/x:2\nUntagged: app:latest\nDeleted: {id}\n")
    );
    assert_eq!(stdout(&run(builder(&root).args(["images", "-q"]))), "");

    for args in [
        &["inspect", "app:1"][..],
        &["rmi", "app:1"],
        &["save", "-o", "/dev/null", "app:1"],
        &["tag", "app:1", "b"],
    ] {
        let out = builder(&root).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no such image: app:1"), "{args:?}: {err}");
    }
}

#[test]
fn save_to_stdout_and_refusing_a_tampered_archive() {
    if !tools_available() {
        return;
    }
    let fx = Fixture::new();
    let archive = fx.path("app.oci.tar");
    fx.copy_to(&format!("oci-archive:{}:app:1", archive.display()));
    let root = fx.path("root");
    run(builder(&root).arg("load").arg("-i").arg(&archive));

    let file = fx.path("file.tar");
    run(builder(&root).args(["save", "-o"]).arg(&file).arg("app:1"));
    let piped = run(builder(&root)
        .args(["save", "app:1"])
        .stdout(Stdio::piped()));
    assert_eq!(
        piped.stdout,
        std::fs::read(&file).unwrap(),
        "stdout gets the same tarball"
    );

    // Flip one byte inside busybox's layer (not in a tar header).
    let mut data = std::fs::read(&file).unwrap();
    let info = inspect(&root, "app:1");
    let big = info["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let header_name = format!("blobs/sha256/{}", big.trim_start_matches("sha256:"));
    let at = data
        .windows(header_name.len())
        .position(|w| w == header_name.as_bytes())
        .unwrap();
    data[at + 512 + 4096] ^= 0x55;
    let tampered = fx.path("tampered.tar");
    std::fs::write(&tampered, &data).unwrap();
    let fresh = fx.path("fresh");
    let out = builder(&fresh)
        .arg("load")
        .arg("-i")
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&header_name),
        "the error names the blob: {err}"
    );
    assert_eq!(stdout(&run(builder(&fresh).args(["images", "-q"]))), "");
    assert!(
        !fresh
            .join("blobs/sha256")
            .join(big.trim_start_matches("sha256:"))
            .exists()
    );
}
