//! `RUN --mount` end to end through `solver::build` in the real sandbox
//! (needs root: namespaces and overlayfs): cache, bind, tmpfs, secret and
//! ssh mounts, and that none of them leaves anything in the step's layer.
//! Without root the tests print why and pass, unless `CI` is set.

#![allow(clippy::result_large_err)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use cache::Digest;
use cache::images::{ImageStore, MEDIA_TYPE_OCI_CONFIG, ParsedManifest, oci_manifest};
use cache::layer::create::{CreateOptions, create_layer};
use cache::layer::flatten::flatten_layers;
use cache::snapshot::{LayerRef, Snapshots};
use cache::store::Store;
use frontend::dockerignore::PatternMatcher;
use solver::sandbox::CancelHandle;
use solver::sandbox::testsupport::{busybox_rootfs, unavailable_reason};
use solver::{
    BuildError, BuildRequest, BuildResult, NoProgress, SecretSource, SecretSpec, SshSpec, build,
};

const BASE: &str = "busybox:test";

macro_rules! require_root {
    () => {
        if let Some(reason) = unavailable_reason() {
            if std::env::var_os("CI").is_some() {
                panic!("run_mounts tests cannot run in CI: {reason}");
            }
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    context: PathBuf,
}

impl Fixture {
    /// A store holding `busybox:test` (one layer) and an empty context.
    fn new() -> Self {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run_mounts");
        fs::create_dir_all(&parent).unwrap();
        let dir = tempfile::tempdir_in(&parent).unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let rootfs = dir.path().join("busybox");
        busybox_rootfs(&rootfs).unwrap();
        let layer = create_layer(&store, &rootfs, &CreateOptions::default()).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "busybox rootfs"}],
        });
        let config = cache::json::to_vec(&config).unwrap();
        let manifest = oci_manifest(
            &cache::images::BlobRef {
                media_type: MEDIA_TYPE_OCI_CONFIG.into(),
                digest: Digest::of(&config),
                size: config.len() as u64,
            },
            &[cache::images::BlobRef {
                media_type: layer.media_type.clone(),
                digest: layer.digest,
                size: layer.size,
            }],
        )
        .unwrap();
        ImageStore::new(store.clone())
            .put(&manifest, &config, &[BASE.parse().unwrap()])
            .unwrap();
        let context = dir.path().join("context");
        fs::create_dir(&context).unwrap();
        Fixture {
            dir,
            store,
            context,
        }
    }

    /// A request that runs every step (results of earlier builds are not
    /// reused), so that a second build really runs again.
    fn request(&self, dockerfile: &str) -> BuildRequest {
        let mut req = BuildRequest::new(dockerfile, "Dockerfile", &self.context);
        req.no_cache = true;
        req
    }

    fn build(&self, req: &BuildRequest) -> Result<BuildResult, BuildError> {
        build(&self.store, req, &NoProgress, &CancelHandle::new())
    }

    fn build_ok(&self, req: &BuildRequest) -> Built {
        match self.build(req) {
            Ok(result) => Built::new(self, result),
            Err(err) => panic!(
                "build failed:\n{}",
                err.render("Dockerfile", &req.dockerfile)
            ),
        }
    }

    fn build_err(&self, req: &BuildRequest) -> String {
        match self.build(req) {
            Ok(_) => panic!("build succeeded"),
            Err(err) => format!(
                "{}\n{}",
                chain(&err),
                err.render("Dockerfile", &req.dockerfile)
            ),
        }
    }

    /// Nothing left in tmp/ and nothing of the store mounted.
    fn assert_clean(&self) {
        let tmp: Vec<_> = fs::read_dir(self.store.root().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.store.root().to_string_lossy().into_owned();
        assert!(!mounts.contains(&root), "store mounted:\n{mounts}");
    }
}

/// A built image: its layers' snapshots and its flattened filesystem.
struct Built {
    layers: Vec<PathBuf>,
    fs: tempfile::TempDir,
}

impl Built {
    fn new(f: &Fixture, result: BuildResult) -> Self {
        let manifest = ParsedManifest::parse(&result.manifest).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&result.config).unwrap();
        let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().parse().unwrap())
            .collect();
        let refs: Vec<LayerRef> = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .map(|(blob, diff_id)| LayerRef {
                digest: blob.digest,
                diff_id: *diff_id,
            })
            .collect();
        let fs = tempfile::tempdir_in(f.dir.path()).unwrap();
        flatten_layers(&f.store, &refs, fs.path()).unwrap();
        let snapshots = Snapshots::new(&f.store);
        Built {
            layers: diff_ids.iter().map(|d| snapshots.path(d)).collect(),
            fs,
        }
    }

    fn read(&self, path: &str) -> String {
        let path = self.fs.path().join(path.trim_start_matches('/'));
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn exists(&self, path: &str) -> bool {
        fs::symlink_metadata(self.fs.path().join(path.trim_start_matches('/'))).is_ok()
    }

    /// Every path in layer `n` (counting from the base), sorted.
    fn layer_paths(&self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.layers[n], "", &mut out);
        out.sort();
        out
    }

    fn last_layer_paths(&self) -> Vec<String> {
        self.layer_paths(self.layers.len() - 1)
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        out.push(name.clone());
        if entry.file_type().unwrap().is_dir() {
            walk(&entry.path(), &format!("{name}/"), out);
        }
    }
}

#[test]
fn cache_mount_persists_across_builds_and_stays_out_of_the_layer() {
    require_root!();
    let f = Fixture::new();
    // /root exists (0700) in the image; .cache/go below it does not.
    let dockerfile = "FROM busybox:test\n\
        RUN --mount=type=cache,target=/root/.cache/go \
        echo run >> /root/.cache/go/log && wc -l < /root/.cache/go/log > /count\n";
    let first = f.build_ok(&f.request(dockerfile));
    assert_eq!(first.read("/count").trim(), "1");
    assert_eq!(first.last_layer_paths(), ["count"]);
    let second = f.build_ok(&f.request(dockerfile));
    assert_eq!(second.read("/count").trim(), "2");
    assert_eq!(second.last_layer_paths(), ["count"]);
    assert!(!second.exists("/root/.cache"));
    // The cache lives under ROOT/mounts, keyed by the id (the target).
    let dir = f
        .store
        .root()
        .join("mounts")
        .join(Digest::of(b"/root/.cache/go").hex());
    assert_eq!(fs::read_to_string(dir.join("log")).unwrap(), "run\nrun\n");
    f.assert_clean();
}

#[test]
fn cache_mount_id_mode_owner_and_sharing_by_id() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test\n\
        RUN --mount=type=cache,id=shared-one,target=/a,uid=1000,gid=1000,mode=0710 \
        stat -c '%u %g %a' /a > /meta && touch /a/from-a\n\
        RUN --mount=type=cache,id=shared-one,target=/b ls /b > /seen\n";
    let built = f.build_ok(&f.request(dockerfile));
    assert_eq!(built.read("/meta").trim(), "1000 1000 710");
    assert_eq!(built.read("/seen").trim(), "from-a");
    assert!(!built.exists("/a") && !built.exists("/b"));
    assert_eq!(built.last_layer_paths(), ["seen"]);
}

#[test]
fn cache_mount_from_a_stage_starts_with_its_content() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test AS seed\n\
        RUN mkdir -p /seed/dir && echo seeded > /seed/dir/file\n\
        FROM busybox:test\n\
        RUN --mount=type=cache,target=/c,from=seed,source=/seed/dir cat /c/file > /got\n";
    let built = f.build_ok(&f.request(dockerfile));
    assert_eq!(built.read("/got").trim(), "seeded");
}

/// Two builds at once, each with a step on the same `sharing=locked` cache:
/// a step that finds the other's marker in the cache ran while it was held.
#[test]
fn locked_cache_mount_serialises_steps() {
    require_root!();
    let f = Fixture::new();
    let script = |name: &str| {
        format!(
            "FROM busybox:test\n\
             RUN --mount=type=cache,id=lock,target=/c,sharing=locked \
             sh -c 'if [ -e /c/busy ]; then echo overlap-{name} >> /c/log; fi; \
             touch /c/busy; sleep 1; \
             if [ -e /c/busy ]; then :; else echo lost-{name} >> /c/log; fi; \
             rm /c/busy; echo done-{name} >> /c/log'\n"
        )
    };
    let (a, b) = (f.request(&script("a")), f.request(&script("b")));
    std::thread::scope(|s| {
        let ta = s.spawn(|| f.build(&a).map(|_| ()).map_err(|e| chain(&e)));
        let tb = s.spawn(|| f.build(&b).map(|_| ()).map_err(|e| chain(&e)));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
    let log = fs::read_to_string(
        f.store
            .root()
            .join("mounts")
            .join(Digest::of(b"lock").hex())
            .join("log"),
    )
    .unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    assert_eq!(lines, ["done-a", "done-b"], "log:\n{log}");

    // The same steps with sharing=shared do overlap: each waits for the
    // other's marker, which only works when both hold the cache at once.
    let shared = |name: &str, other: &str| {
        format!(
            "FROM busybox:test\n\
             RUN --mount=type=cache,id=open,target=/c,sharing=shared \
             sh -c 'touch /c/{name}; i=0; while [ ! -e /c/{other} ] && [ $i -lt 300 ]; \
             do sleep 0.1; i=$((i+1)); done; test -e /c/{other}'\n"
        )
    };
    let (a, b) = (f.request(&shared("a", "b")), f.request(&shared("b", "a")));
    std::thread::scope(|s| {
        let ta = s.spawn(|| f.build(&a).map(|_| ()).map_err(|e| chain(&e)));
        let tb = s.spawn(|| f.build(&b).map(|_| ()).map_err(|e| chain(&e)));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
}

#[test]
fn bind_from_context_is_read_only_unless_rw_and_honours_dockerignore() {
    require_root!();
    let f = Fixture::new();
    fs::write(f.context.join("data.txt"), "context data\n").unwrap();
    fs::create_dir(f.context.join("sub")).unwrap();
    fs::write(f.context.join("sub/kept.txt"), "kept\n").unwrap();
    fs::write(f.context.join("sub/ignored.txt"), "ignored\n").unwrap();
    fs::set_permissions(f.context.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(f.context.join("a.log"), "").unwrap();
    fs::write(f.context.join("keep.log"), "").unwrap();
    fs::create_dir(f.context.join("skipdir")).unwrap();
    fs::write(f.context.join("skipdir/x"), "").unwrap();
    let ignore = "sub/ignored.txt\n*.log\n!keep.log\nskipdir\n";
    let dockerfile = "FROM busybox:test\n\
        RUN --mount=type=bind,target=/ctx \
        sh -c 'cat /ctx/data.txt > /copied; \
        if touch /ctx/new 2>/dev/null; then echo writable; else echo readonly; fi > /ro; \
        ls /ctx/sub > /sublist; ls /ctx > /rootlist; stat -c %a /ctx/sub > /submode'\n\
        RUN --mount=type=bind,source=sub,target=/s,rw \
        sh -c 'echo changed > /s/kept.txt && touch /s/new && cat /s/kept.txt > /rw'\n\
        RUN --mount=type=bind,source=data.txt,target=/etc/data.txt cat /etc/data.txt > /file\n";
    let mut req = f.request(dockerfile);
    req.ignore = Some(PatternMatcher::from_dockerignore(ignore).unwrap());
    let built = f.build_ok(&req);
    assert_eq!(
        built
            .read("/rootlist")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["data.txt", "keep.log", "sub"]
    );
    assert_eq!(built.read("/submode").trim(), "750");
    assert_eq!(built.read("/copied"), "context data\n");
    assert_eq!(built.read("/ro").trim(), "readonly");
    assert_eq!(built.read("/sublist").trim(), "kept.txt");
    assert_eq!(built.read("/rw").trim(), "changed");
    assert_eq!(built.read("/file"), "context data\n");
    // rw writes were thrown away; nothing of the mounts is in the layers.
    assert_eq!(
        fs::read_to_string(f.context.join("sub/kept.txt")).unwrap(),
        "kept\n"
    );
    assert!(!f.context.join("new").exists() && !f.context.join("sub/new").exists());
    let n = built.layers.len();
    assert_eq!(
        built.layer_paths(n - 3),
        ["copied", "ro", "rootlist", "sublist", "submode"]
    );
    assert_eq!(built.layer_paths(n - 2), ["rw"]);
    // /etc exists in the image, so its stub for the file does not show.
    assert_eq!(built.layer_paths(n - 1), ["file"]);
    assert!(!built.exists("/etc/data.txt") && !built.exists("/ctx") && !built.exists("/s"));

    // A source the ignore file excludes is not there to bind.
    let mut req = f.request(
        "FROM busybox:test\nRUN --mount=type=bind,source=sub/ignored.txt,target=/x cat /x\n",
    );
    req.ignore = Some(PatternMatcher::from_dockerignore("sub/ignored.txt\n").unwrap());
    let err = f.build_err(&req);
    assert!(err.contains("sub/ignored.txt"), "{err}");

    // A link in the context cannot lead a bind out of it.
    std::os::unix::fs::symlink("/etc", f.context.join("escape")).unwrap();
    let err = f.build_err(&f.request(
        "FROM busybox:test\nRUN --mount=type=bind,source=escape/passwd,target=/x cat /x\n",
    ));
    assert!(
        err.contains("escape/passwd") && err.contains("not found"),
        "{err}"
    );
    f.assert_clean();
}

#[test]
fn bind_from_a_stage_sees_its_files_and_cannot_escape_it() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test AS src\n\
        RUN mkdir /out && echo from-stage > /out/f && ln -s /out /link && ln -s ../../.. /out/up\n\
        FROM busybox:test\n\
        RUN --mount=type=bind,from=src,source=/link,target=/m \
        sh -c 'cat /m/f > /got; ls /m/up/ > /up; \
        if touch /m/x 2>/dev/null; then echo writable; else echo readonly; fi > /ro'\n\
        RUN --mount=type=bind,from=busybox:test,source=/etc/passwd,target=/p cp /p /passwd\n\
        RUN --mount=type=bind,from=src,source=/out,target=/w,rw \
        sh -c 'echo changed > /w/f; cat /w/f > /rw'\n\
        RUN --mount=type=bind,from=src,source=/out,target=/again cat /again/f > /after\n";
    let built = f.build_ok(&f.request(dockerfile));
    assert!(built.read("/passwd").starts_with("root:x:0:0"));
    assert_eq!(built.read("/rw").trim(), "changed");
    // The rw step's write went nowhere: the stage is unchanged.
    assert_eq!(built.read("/after").trim(), "from-stage");
    assert_eq!(built.read("/got").trim(), "from-stage");
    assert_eq!(built.read("/ro").trim(), "readonly");
    // `up` points at the stage's own root, seen through the bind as the
    // step's root (the link is read inside the step).
    assert!(built.read("/up").contains("bin"));
    let n = built.layers.len();
    assert_eq!(built.layer_paths(n - 4), ["got", "ro", "up"]);
    assert_eq!(built.layer_paths(n - 3), ["passwd"]);

    let err = f.build_err(&f.request(
        "FROM busybox:test AS src\nRUN true\nFROM busybox:test\n\
         RUN --mount=type=bind,from=src,source=/missing,target=/m true\n",
    ));
    assert!(
        err.contains("/missing") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn tmpfs_mount_is_fresh_and_sized() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test\n\
        RUN --mount=type=tmpfs,target=/scratch,size=2m \
        sh -c 'grep \" /scratch \" /proc/mounts > /mounts; echo x > /scratch/y; ls /scratch > /ls'\n\
        WORKDIR /w\n\
        RUN --mount=type=tmpfs,target=rel sh -c 'grep -c \" /w/rel tmpfs\" /proc/mounts > /rel'\n";
    let built = f.build_ok(&f.request(dockerfile));
    // A relative target is below the working directory.
    assert_eq!(built.read("/rel").trim(), "1");
    assert!(!built.exists("/w/rel"));
    let mounts = built.read("/mounts");
    assert!(
        mounts.starts_with("tmpfs /scratch tmpfs") && mounts.contains("size=2048k"),
        "{mounts}"
    );
    assert_eq!(built.read("/ls").trim(), "y");
    assert_eq!(built.layer_paths(built.layers.len() - 3), ["ls", "mounts"]);
    assert_eq!(built.last_layer_paths(), ["rel"]);
}

const SECRET: &str = "hunter2-very-secret-value";

#[test]
fn secret_mounts_as_file_and_env_and_never_reaches_the_store() {
    require_root!();
    let f = Fixture::new();
    let secret_file = f.dir.path().join("secret.txt");
    fs::write(&secret_file, SECRET).unwrap();
    let dockerfile = "FROM busybox:test\n\
        RUN --mount=type=secret,id=tok,mode=0440,uid=1000,gid=1000 \
        sh -c 'stat -c \"%a %u %g\" /run/secrets/tok > /meta; wc -c < /run/secrets/tok > /len; \
        if (echo x > /run/secrets/tok) 2>/dev/null; then echo writable; else echo readonly; fi > /ro'\n\
        ENV TOK=from-image\n\
        RUN --mount=type=secret,id=tok,env=TOK sh -c 'echo ${#TOK} > /envlen; \
        if [ -e /run/secrets/tok ]; then echo file; else echo nofile; fi > /file'\n\
        RUN --mount=type=secret,id=tok,target=/etc/tok,env=BOTH \
        sh -c 'printf %s \"$BOTH\" | cmp /etc/tok - && echo same > /cmp'\n\
        RUN --mount=type=secret,id=absent sh -c 'ls /run/secrets > /absent 2>&1 || echo none > /absent'\n";
    let mut req = f.request(dockerfile);
    req.secrets.push(SecretSpec {
        id: "tok".into(),
        source: SecretSource::File(secret_file),
    });
    let built = f.build_ok(&req);
    assert_eq!(built.read("/meta").trim(), "440 1000 1000");
    assert_eq!(built.read("/len").trim(), SECRET.len().to_string());
    assert_eq!(built.read("/ro").trim(), "readonly");
    assert_eq!(built.read("/envlen").trim(), SECRET.len().to_string());
    assert_eq!(built.read("/file").trim(), "nofile");
    assert_eq!(built.read("/absent").trim(), "none");
    assert_eq!(built.read("/cmp").trim(), "same");
    assert!(!built.exists("/run/secrets") && !built.exists("/etc/tok"));
    let n = built.layers.len();
    assert_eq!(built.layer_paths(n - 4), ["len", "meta", "ro"]);
    assert_eq!(built.layer_paths(n - 3), ["envlen", "file"]);
    assert_no_secret(f.store.root(), SECRET.as_bytes());
    f.assert_clean();
}

/// Fails when `needle` is in any file under `dir`, gzip layers
/// decompressed.
fn assert_no_secret(dir: &Path, needle: &[u8]) {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ty = entry.file_type().unwrap();
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                files.push(entry.path());
            }
        }
    }
    assert!(files.len() > 3, "nothing to search in {}", dir.display());
    for path in files {
        let bytes = fs::read(&path).unwrap();
        let mut contents = vec![bytes.clone()];
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            use std::io::Read;
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .unwrap();
            contents.push(out);
        }
        for c in contents {
            assert!(
                !c.windows(needle.len()).any(|w| w == needle),
                "secret found in {}",
                path.display()
            );
        }
    }
}

#[test]
fn missing_required_secret_and_ssh_fail_clearly() {
    require_root!();
    let f = Fixture::new();
    let err = f.build_err(
        &f.request("FROM busybox:test\nRUN --mount=type=secret,id=api_key,required=true true\n"),
    );
    assert!(err.contains("api_key") && err.contains("--secret"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
    let err =
        f.build_err(&f.request("FROM busybox:test\nRUN --mount=type=ssh,required=true true\n"));
    assert!(err.contains("--ssh"), "{err}");
    f.assert_clean();
}

#[test]
fn ssh_agent_socket_is_forwarded() {
    require_root!();
    let f = Fixture::new();
    let sock = f.dir.path().join("agent.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let host_inode = fs::metadata(&sock).unwrap().ino();
    // busybox has no client for UNIX stream sockets: the step checks the
    // socket and its attributes; the forwarding itself is unit-tested.
    let dockerfile = "FROM busybox:test\n\
        RUN --mount=type=ssh sh -c 'echo \"$SSH_AUTH_SOCK\" > /env; \
        test -S \"$SSH_AUTH_SOCK\" && stat -c \"%a %u %g %i\" \"$SSH_AUTH_SOCK\" > /stat'\n\
        USER test\n\
        RUN --mount=type=ssh,id=other,target=/agent,uid=1000,gid=1000,mode=0660 \
        sh -c 'echo \"$SSH_AUTH_SOCK\" > /tmp/env2; stat -c \"%a %u %g\" /agent > /tmp/stat2'\n";
    let mut req = f.request(dockerfile);
    req.ssh = vec![
        SshSpec {
            id: "default".into(),
            socket: sock.clone(),
        },
        SshSpec {
            id: "other".into(),
            socket: sock.clone(),
        },
    ];
    let built = f.build_ok(&req);
    assert_eq!(built.read("/env").trim(), "/run/buildkit/ssh_agent.0");
    let stat = built.read("/stat");
    let fields: Vec<&str> = stat.split_whitespace().collect();
    assert_eq!(fields[..3], ["600", "0", "0"], "{stat}");
    assert_ne!(fields[3], host_inode.to_string(), "the host socket itself");
    assert_eq!(built.read("/tmp/env2").trim(), "/agent");
    assert_eq!(built.read("/tmp/stat2").trim(), "660 1000 1000");
    assert!(!built.exists("/run/buildkit") && !built.exists("/agent"));
    f.assert_clean();
}

#[test]
fn mounts_on_symlinked_and_nested_targets() {
    require_root!();
    let f = Fixture::new();
    // /var/run -> /run: the mount lands on /run/c inside the root.
    let dockerfile = "FROM busybox:test\n\
        RUN mkdir -p /var /run && ln -s /run /var/run\n\
        RUN --mount=type=tmpfs,target=/var/run/c --mount=type=tmpfs,target=/var/run/c/inner \
        sh -c 'grep -c \" /run/c\" /proc/mounts > /count; touch /run/c/inner/x'\n";
    let built = f.build_ok(&f.request(dockerfile));
    assert_eq!(built.read("/count").trim(), "2");
    assert_eq!(built.last_layer_paths(), ["count"]);
}

#[test]
fn one_step_may_mount_a_locked_cache_twice() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test\n\
        RUN --mount=type=cache,id=twice,target=/a,sharing=locked \
        --mount=type=cache,id=twice,target=/b,sharing=locked \
        sh -c 'touch /a/x && ls /b > /seen'\n";
    let built = f.build_ok(&f.request(dockerfile));
    assert_eq!(built.read("/seen").trim(), "x");
}

#[test]
fn a_mountpoint_inside_a_read_only_context_bind_is_never_created_in_the_context() {
    require_root!();
    let f = Fixture::new();
    fs::create_dir(f.context.join("dir")).unwrap();
    let err = f.build_err(&f.request(
        "FROM busybox:test\n\
         RUN --mount=type=bind,target=/ctx --mount=type=tmpfs,target=/ctx/dir/new true\n",
    ));
    assert!(err.contains("/ctx/dir/new"), "{err}");
    assert!(!f.context.join("dir/new").exists());
    // An existing directory of the context takes the nested mount.
    let built = f.build_ok(&f.request(
        "FROM busybox:test\n\
         RUN --mount=type=bind,target=/ctx --mount=type=tmpfs,target=/ctx/dir \
         sh -c 'touch /ctx/dir/x && ls /ctx/dir > /ls'\n",
    ));
    assert_eq!(built.read("/ls").trim(), "x");
    assert_eq!(fs::read_dir(f.context.join("dir")).unwrap().count(), 0);
    f.assert_clean();
}

/// Two builds whose steps meet through a shared cache (so they surely run
/// at once) and both mount one `sharing=private` cache: one gets the cache,
/// the other a fresh directory, so neither sees the other's marker.
#[test]
fn private_cache_mount_in_use_gives_a_fresh_directory() {
    require_root!();
    let f = Fixture::new();
    let script = |name: &str, other: &str| {
        format!(
            "FROM busybox:test\n\
             RUN --mount=type=cache,id=meet,target=/meet,sharing=shared \
             --mount=type=cache,id=mine,target=/c,sharing=private \
             sh -c 'touch /c/{name} /meet/{name}; i=0; \
             while [ ! -e /meet/{other} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
             test -e /meet/{other} && ls /c > /seen'\n"
        )
    };
    let (a, b) = (f.request(&script("a", "b")), f.request(&script("b", "a")));
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| f.build(&a).map_err(|e| chain(&e)));
        let tb = s.spawn(|| f.build(&b).map_err(|e| chain(&e)));
        (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
    });
    let (ba, bb) = (Built::new(&f, ra), Built::new(&f, rb));
    assert_eq!(ba.read("/seen").trim(), "a");
    assert_eq!(bb.read("/seen").trim(), "b");
    // Only the step that held the cache left its marker in it.
    let kept: Vec<String> = fs::read_dir(
        f.store
            .root()
            .join("mounts")
            .join(Digest::of(b"mine").hex()),
    )
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    .collect();
    assert!(kept == ["a"] || kept == ["b"], "{kept:?}");
    f.assert_clean();
}

/// BuildKit's pattern for tools that must not end up in the image: a
/// `FROM scratch` step runs a shell bound in from another image.
#[test]
fn a_scratch_step_runs_tools_bound_in_from_an_image() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM scratch\n\
        RUN --mount=type=bind,from=busybox:test,source=/bin,target=/bin \
        [\"/bin/sh\", \"-c\", \"echo made > /made\"]\n";
    let built = f.build_ok(&f.request(dockerfile));
    assert_eq!(built.read("/made").trim(), "made");
    assert_eq!(built.last_layer_paths(), ["made"]);
    assert!(!built.exists("/bin"));
}

/// A step waiting for a `sharing=locked` cache that another build holds
/// gives up when its build is cancelled, without waiting for the holder.
#[test]
fn cancelling_a_build_stops_its_wait_for_a_locked_cache() {
    require_root!();
    let f = Fixture::new();
    let dir = f
        .store
        .root()
        .join("mounts")
        .join(Digest::of(b"held").hex());
    let holder = f.request(
        "FROM busybox:test\n\
         RUN --mount=type=cache,id=held,target=/c,sharing=locked \
         sh -c 'touch /c/running; i=0; \
         while [ ! -e /c/release ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; \
         touch /c/done'\n",
    );
    let waiter = f.request(
        "FROM busybox:test\n\
         RUN --mount=type=cache,id=held,target=/c,sharing=locked touch /c/waiter\n",
    );
    let cancel = CancelHandle::new();
    /// Lets the holder finish, also when an assertion fails first (the
    /// scope waits for it).
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            let _ = fs::write(self.0.join("release"), "");
        }
    }
    std::thread::scope(|s| {
        let release = Release(dir.clone());
        let held = s.spawn(|| f.build(&holder).map(|_| ()).map_err(|e| chain(&e)));
        while !dir.join("running").exists() {
            assert!(!held.is_finished(), "the holder ended early");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let waiting = s.spawn(|| build(&f.store, &waiter, &NoProgress, &cancel));
        std::thread::sleep(std::time::Duration::from_millis(300));
        cancel.cancel();
        let result = waiting.join().unwrap();
        assert!(
            matches!(result, Err(BuildError::Cancelled)),
            "{:?}",
            result.map(|_| ())
        );
        // The holder is still running (until released): the waiter did
        // not wait for it.
        assert!(!dir.join("done").exists());
        assert!(!dir.join("waiter").exists());
        drop(release);
        held.join().unwrap().unwrap();
    });
    assert!(dir.join("done").exists());
    f.assert_clean();
}

#[test]
fn a_file_cannot_be_mounted_on_a_directory_of_the_image() {
    require_root!();
    let f = Fixture::new();
    let secret_file = f.dir.path().join("secret.txt");
    fs::write(&secret_file, SECRET).unwrap();
    let mut req = f.request("FROM busybox:test\nRUN --mount=type=secret,id=tok,target=/etc true\n");
    req.secrets.push(SecretSpec {
        id: "tok".into(),
        source: SecretSource::File(secret_file),
    });
    let err = f.build_err(&req);
    assert!(
        err.contains("cannot mount a file on /etc: it is a directory in the image"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    f.assert_clean();
}
