//! Outputs of `builder build`, end to end, as root: OCI archives checked by
//! skopeo and umoci and run by runc, docker archives, flattened tar and local
//! directories, tarballs on stdout, `-q`, `--iidfile`, `--metadata-file`,
//! images kept unnamed, and reproducible digests with `SOURCE_DATE_EPOCH`.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::{TestRoot, sandbox_available, stderr, stdout, tool_available};
use serde_json::{Value, json};

const APP: &str = r#"FROM busybox
COPY greeting.txt /greeting.txt
ADD payload.tar /opt/
RUN echo "built" > /built.txt && chmod 0640 /built.txt
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /greeting.txt /built.txt /opt/payload/data"]
"#;

fn app_context(t: &TestRoot) -> std::path::PathBuf {
    let ctx = t.context(&[
        ("Dockerfile", APP),
        ("greeting.txt", "greetings\n"),
        ("payload/data", "payload data\n"),
    ]);
    let status = Command::new("tar")
        .args(["-cf", "payload.tar", "payload"])
        .current_dir(&ctx)
        .status()
        .unwrap();
    assert!(status.success());
    fs::remove_dir_all(ctx.join("payload")).unwrap();
    ctx
}

const APP_OUTPUT: &str = "greetings\nbuilt\npayload data\n";

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

#[test]
fn oci_archive_passes_skopeo_umoci_and_runs_under_runc() {
    if !sandbox_available()
        || !["skopeo", "umoci", "runc"]
            .iter()
            .all(|t| tool_available(t))
    {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = app_context(&t);
    let archive = t.path("app.oci.tar");
    let iid = t.path("iid");
    let meta = t.path("meta.json");
    let spec = format!("type=oci,dest={}", archive.display());
    let quiet = t.build_ok(
        &ctx,
        &[
            "-q",
            "-t",
            "app:1",
            "-o",
            &spec,
            "--iidfile",
            iid.to_str().unwrap(),
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    );
    // -q prints the image id alone, which --iidfile holds too.
    let id = quiet.trim_end().to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{quiet:?}");
    assert_eq!(quiet, format!("{id}\n"));
    assert_eq!(fs::read_to_string(&iid).unwrap(), id);
    let image = t.inspect("app:1");
    assert_eq!(image["Id"], id.as_str());
    let metadata: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(metadata["containerimage.digest"], image["ManifestDigest"]);
    assert_eq!(metadata["containerimage.config.digest"], id.as_str());
    assert_eq!(metadata["image.name"], "docker.io/library/app:1");

    // skopeo reads the archive and agrees on the digest and config.
    let inspected: Value = serde_json::from_slice(
        &run(Command::new("skopeo")
            .args(["--insecure-policy", "inspect"])
            .arg(format!("oci-archive:{}", archive.display())))
        .stdout,
    )
    .unwrap();
    assert_eq!(inspected["Digest"], image["ManifestDigest"]);
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 4);

    // umoci unpacks it into a runtime bundle, which runc runs with the same
    // output as builder run.
    let layout = t.path("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let ref_name = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_owned();
    let bundle = t.path("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{ref_name}", layout.display()))
        .arg(&bundle));
    let built = fs::metadata(bundle.join("rootfs/built.txt")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&built.permissions()) & 0o777,
        0o640
    );
    let config_path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    config["process"]["terminal"] = json!(false);
    fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let runc = run(Command::new("runc")
        .args(["run", "-b"])
        .arg(&bundle)
        .arg(format!("builder-e2e-{}", common::unique_seconds()))
        .stdin(Stdio::null()));
    let builder_run = t.ok(&["run", "app:1"]);
    assert_eq!(builder_run, APP_OUTPUT);
    assert_eq!(stdout(&runc), builder_run);
    t.check_store();
}

#[test]
fn docker_tar_and_local_outputs() {
    if !sandbox_available() || !tool_available("skopeo") {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = app_context(&t);
    let docker = t.path("app.docker.tar");
    let flat = t.path("app.rootfs.tar");
    let local = t.path("local");
    t.build_ok(
        &ctx,
        &[
            "-t",
            "app:2",
            "-o",
            &format!("type=docker,dest={}", docker.display()),
            "-o",
            &format!("type=tar,dest={}", flat.display()),
            "-o",
            local.to_str().unwrap(),
        ],
    );
    let inspected: Value = serde_json::from_slice(
        &run(Command::new("skopeo")
            .args(["--insecure-policy", "inspect"])
            .arg(format!("docker-archive:{}", docker.display())))
        .stdout,
    )
    .unwrap();
    assert_eq!(inspected["Digest"].as_str().map(|d| d.len()), Some(71));
    // docker load finds the name in manifest.json.
    let manifest: Value = serde_json::from_slice(
        &run(Command::new("tar")
            .arg("-xOf")
            .arg(&docker)
            .arg("manifest.json"))
        .stdout,
    )
    .unwrap();
    assert_eq!(manifest[0]["RepoTags"], json!(["app:2"]));
    // The flattened tar and the local directory hold the same files.
    let listing = stdout(&run(Command::new("tar").arg("-tf").arg(&flat)));
    for want in [
        "greeting.txt",
        "built.txt",
        "opt/payload/data",
        "bin/busybox",
    ] {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == want),
            "{want} not in the tar"
        );
        assert!(local.join(want).exists(), "{want} not in the local output");
    }
    assert_eq!(
        fs::read_to_string(local.join("opt/payload/data")).unwrap(),
        "payload data\n"
    );
    // The image was also named in the store, and loads back from the docker archive.
    assert_eq!(t.ok(&["run", "app:2"]), APP_OUTPUT);
    let other = TestRoot::new();
    other.ok(&["load", "-i", docker.to_str().unwrap()]);
    assert_eq!(other.inspect("app:2")["Id"], t.inspect("app:2")["Id"]);
}

#[test]
fn tar_to_stdout_and_image_outputs() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = app_context(&t);
    let out = t.build(&ctx, &["-o", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tar = t.path("stdout.tar");
    fs::write(&tar, &out.stdout).unwrap();
    let listing = stdout(&run(Command::new("tar").arg("-tf").arg(&tar)));
    assert!(
        listing.lines().any(|l| l.ends_with("built.txt")),
        "{listing}"
    );

    // type=image names the image in the store, several names at once.
    t.build_ok(&ctx, &["-o", "type=image,\"name=img:a,img:b\""]);
    assert_eq!(t.inspect("img:a")["Id"], t.inspect("img:b")["Id"]);
    assert_eq!(t.ok(&["run", "img:b"]), APP_OUTPUT);
}

#[test]
fn without_outputs_the_image_stays_unnamed_and_its_id_is_printed() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = app_context(&t);
    let out = t.build(&ctx, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    let id = log
        .lines()
        .find_map(|l| l.split("writing image ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no 'writing image' in {log}"))
        .to_owned();
    assert!(id.starts_with("sha256:"), "{id}");
    let images = t.ok(&["images", "--no-trunc"]);
    let row = images
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{images}"));
    assert!(row.starts_with("<none>"), "{row}");
    assert_eq!(t.ok(&["run", &id]), APP_OUTPUT);
    t.check_store();
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    if !sandbox_available() {
        return;
    }
    let digest = |via_env: bool| -> (String, String) {
        let t = TestRoot::new();
        t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
        let ctx = app_context(&t);
        // Fresh files in the context every time: their mtimes differ.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        fs::write(ctx.join("greeting.txt"), "greetings\n").unwrap();
        let meta = t.path("meta.json");
        let mut c = t.builder();
        c.args(["build", "-q", "--metadata-file"]).arg(&meta);
        if via_env {
            c.env("SOURCE_DATE_EPOCH", "1700000000");
        } else {
            c.args(["--build-arg", "SOURCE_DATE_EPOCH=1700000000"]);
        }
        let out = c.arg(&ctx).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let m: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
        let config = t.inspect(m["containerimage.digest"].as_str().unwrap());
        assert_eq!(config["Created"], "2023-11-14T22:13:20Z");
        (
            m["containerimage.digest"].as_str().unwrap().to_owned(),
            stdout(&out).trim().to_owned(),
        )
    };
    let first = digest(true);
    let second = digest(true);
    assert_eq!(first, second);
    assert_eq!(digest(false), first);
}
