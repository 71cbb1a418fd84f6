//! `builder build [OPTIONS] CONTEXT`: build an image from a Dockerfile, then
//! name it in the local store and/or export it, as `docker buildx build` does.
//!
//! The solver stores the image (manifest, config, layers) without naming it;
//! this command validates every output up front, runs the build with Ctrl-C
//! wired to cancellation, then tags (`-t`, `-o type=image`), exports (`-o
//! type=oci|docker|tar|local`), and writes `--iidfile`/`--metadata-file`.
//! With neither `-t` nor `-o` the image stays in the store unnamed and its
//! id is printed, as buildx prints `writing image sha256:…`.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use cache::archive::export::Destination;
use cache::archive::{AtomicFile, ExportImage, ExportKind, ExportSpec};
use cache::compression::{Compression, CompressionOptions};
use cache::images::{Image, ImageName, ImageStore, ParsedManifest};
use clap::Args;
use frontend::convert::{CompileOptions, NamedContext, Platform};
use frontend::dockerignore::{PatternMatcher, dockerfile_ignore_path, select_ignore_file};
use frontend::graph::NetworkMode;
use nix::sys::signal::Signal;
use solver::sandbox::CancelHandle;
use solver::{
    BuildError, BuildRequest, BuildResult, NamedContextDir, SecretSource, SecretSpec, SshSpec,
};

use super::progress::{Mode, Renderer};

/// `--progress` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ProgressArg {
    /// `tty` when stderr is a terminal, else `plain`.
    #[default]
    Auto,
    /// Numbered step lines with output and durations, for CI logs.
    Plain,
    /// A line per running step that updates in place.
    Tty,
    /// Nothing but errors.
    Quiet,
    /// One JSON object per event and line.
    Json,
}

impl ProgressArg {
    /// The display for this choice; `-q` means quiet whatever was chosen.
    fn mode(self, quiet: bool) -> Mode {
        match self {
            _ if quiet => Mode::Quiet,
            ProgressArg::Quiet => Mode::Quiet,
            ProgressArg::Json => Mode::Json,
            ProgressArg::Plain => Mode::Plain,
            ProgressArg::Tty => Mode::Tty,
            ProgressArg::Auto => {
                let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
                if io::stderr().is_terminal() && !dumb {
                    Mode::Tty
                } else {
                    Mode::Plain
                }
            }
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile; `-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Name and optionally a tag (`name:tag`) for the image in the local store.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// A build-time variable, `KEY=VALUE`, or `KEY` to take the value from the environment.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// The stage to build.
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Do not use the cache: run every step (results are still stored).
    #[arg(long)]
    no_cache: bool,
    /// Do not use the cache for the steps of this stage (and the steps
    /// after them); comma-separated or repeated.
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Run at most N steps at once (default: no limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=PATH` or `id=ID,env=VAR`.
    #[arg(long = "secret", value_name = "id=ID,src=PATH|env=VAR")]
    secrets: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh`: `default` (`$SSH_AUTH_SOCK`) or `ID=SOCKET`.
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    ssh: Vec<String>,
    /// Suppress the build output and print the image id on success.
    #[arg(short, long)]
    quiet: bool,
    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto, value_name = "TYPE")]
    progress: ProgressArg,
    /// An output: `type=oci|docker|tar|local|image,dest=PATH,name=NAME,...`, `DIR` (local) or `-` (tar to stdout).
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Write the image id to this file.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write the build result's metadata (digests, names) to this file as JSON.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// The network of RUN steps: `default` (the host's), `none` or `host`.
    #[arg(long, default_value = "default", value_name = "MODE")]
    network: String,
    /// Extra privileges: `network.host`, `security.insecure` (comma-separated or repeated).
    #[arg(long, value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// A label for the image, `KEY=VALUE`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// A custom host-to-IP mapping for RUN steps, `HOST:IP`.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_hosts: Vec<String>,
    /// An extra named context: `NAME=DIR`, `NAME=docker-image://REF` or
    /// `NAME=oci-layout://PATH[:TAG|@DIGEST]`; it
    /// replaces a stage or image of that name in FROM, `COPY --from` and
    /// `RUN --mount from=`.
    #[arg(
        long = "build-context",
        value_name = "NAME=DIR|docker-image://REF|oci-layout://PATH"
    )]
    build_contexts: Vec<String>,
    /// The platform to build for (one; default: linux/amd64).
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// Size of `/dev/shm` in RUN steps, e.g. `128m` (default: 64m).
    #[arg(long, value_name = "SIZE")]
    shm_size: Option<String>,
    /// A resource limit of RUN steps, `TYPE=SOFT[:HARD]` (e.g. `nofile=1024:2048`).
    #[arg(long = "ulimit", value_name = "TYPE=SOFT[:HARD]")]
    ulimits: Vec<String>,
    /// Pull every base image again, even when the local store has the tag.
    #[arg(long)]
    pull: bool,
    /// Push the image to the registry of each `-t` name (`-o type=registry`).
    #[arg(long)]
    push: bool,
    #[command(flatten)]
    registry: super::pull::RegistryArgs,
    /// Export the build cache: `type=registry,ref=HOST/REPO[,mode=min|max]`, `type=local,dest=DIR[,mode=…]` or `type=inline`.
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Import build cache: `type=registry,ref=HOST/REPO`, `type=local,src=DIR`, or `HOST/REPO`.
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// A registry cache that is both --cache-from and --cache-to (mode=max), e.g. `127.0.0.1:5000/team/cache`.
    #[arg(long = "cache", value_name = "HOST/REPO", env = "BUILDER_CACHE")]
    cache: Option<String>,
    /// Evaluate the build checks (BuildKit's Dockerfile rules) and print
    /// what they find instead of building; exit 1 with `# check=error=true`.
    #[arg(long)]
    check: bool,
    /// The build context: a directory, `-` (a tar on stdin), a tarball
    /// URL, or a git repository (`URL#REF:SUBDIR`).
    #[arg(value_name = "CONTEXT|-|URL")]
    context: String,
    /// The context directory the build reads (set from `context`).
    #[arg(skip)]
    context_dir: PathBuf,
}

/// Where the image goes once built.
#[derive(Debug, Default)]
struct Outputs {
    /// `-t` and `type=image,name=` names.
    names: Vec<ImageName>,
    exports: Vec<ExportSpec>,
    /// Whether some `-o` was given (the image then is not kept unnamed).
    any_output: bool,
    /// Whether an export writes to stdout (then the id is not printed there).
    stdout_taken: bool,
    /// Names to push to their registries (`--push`, `type=registry`, `push=true`).
    push: Vec<ImageName>,
}

pub(crate) fn run(root: &Path, mut args: BuildArgs) -> anyhow::Result<ExitCode> {
    // Before any thread exists, so that only the signal thread sees them.
    let signals = Signals::install().context("cannot set up signal handling")?;
    // A remote context lives in ROOT/tmp until this returns.
    let context = super::context::prepare(
        root,
        &args.context,
        &args.build_args,
        args.file.as_deref(),
        &signals.cancel,
    )?;
    args.context_dir = context.dir.clone();
    args.file = context.file.clone();
    let outputs = parse_outputs(&args)?;
    let mode = args.progress.mode(args.quiet);
    let (shown, dockerfile) = read_dockerfile(&args)?;
    let mut request = request(&args, &shown, dockerfile)?;
    // Layers are made in the compression the image export asks for, so that
    // it needs no recompression (a 600 MB layer: seconds).
    if let Some(c) = outputs
        .exports
        .iter()
        .filter(|e| matches!(e.kind, ExportKind::Oci | ExportKind::Docker))
        .find_map(|e| e.options.compression)
    {
        request.layer_compression = c;
    }

    if args.check {
        return Ok(check_only(&request, &shown));
    }
    // A Dockerfile that does not parse gives no report: the build says why.
    let checks = match run_checks(&request) {
        Ok(report) => Some(report),
        Err(frontend::checks::CheckError::Dockerfile(_)) => None,
        Err(err) => {
            eprint!("{}", err.render(&shown, &request.dockerfile));
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(e) = checks.as_ref().and_then(|r| r.error()) {
        // As BuildKit: `error=true` fails the build before any step runs.
        let report = checks.as_ref().expect("an error comes from a report");
        eprint!("{}", report.render(&shown, &request.dockerfile));
        eprintln!("error: {e}");
        return Ok(ExitCode::from(1));
    }

    let images = super::images::open(root)?;
    // Base images the store lacks (all of them with --pull) come from
    // their registries.
    solver::enable_registry(solver::RegistryAccess {
        client: args.registry.client(args.platform.as_deref())?,
        policy: if args.pull {
            cache::registry::PullPolicy::Always
        } else {
            cache::registry::PullPolicy::Missing
        },
    });
    let progress = Renderer::new(mode, Box::new(io::stderr()));
    // Until the result is named: prune must not take its blobs before that.
    let gc_hold = images.store().lock_shared(cache::gc::GC_LOCK)?;
    import_oci_contexts(&images, &args.build_contexts, &mut request)?;
    let built = solver::build(images.store(), &request, &progress, &signals.cancel);
    let result = match built {
        Ok(result) if !signals.cancel.is_cancelled() => result,
        Ok(_) | Err(BuildError::Cancelled) => {
            progress.summary(false);
            return Ok(cancelled(&signals));
        }
        Err(err) => {
            progress.summary(false);
            eprint!("{}", err.render(&shown, &request.dockerfile));
            return Ok(ExitCode::from(1));
        }
    };
    // From here on a signal ends builder at once: every output below is
    // written atomically, so an interrupted export leaves nothing half-done.
    signals.exit_on_signal.store(true, Ordering::SeqCst);
    if let Err(err) = finish(&images, &args, &outputs, &progress, &result) {
        progress.summary(false);
        return Err(err);
    }
    report_remote_cache(&progress, &result);
    print_warnings(&progress, &shown, &result, checks.as_ref());
    drop(gc_hold);
    super::prune::auto(images.store(), &progress);
    progress.summary(true);
    if args.quiet && !outputs.stdout_taken {
        println!("{}", result.config_digest);
    }
    Ok(ExitCode::SUCCESS)
}

/// Names, exports and result files.
fn finish(
    images: &ImageStore,
    args: &BuildArgs,
    outputs: &Outputs,
    progress: &Renderer,
    result: &BuildResult,
) -> anyhow::Result<()> {
    let id = result.config_digest;
    let step = progress.begin("exporting to image");
    let outcome = (|| -> anyhow::Result<()> {
        progress.detail(step, &format!("writing image {id} done"));
        if !outputs.names.is_empty() || !outputs.any_output {
            // With no name this keeps the image as an unnamed index entry, so
            // that it stays listed and is not collected.
            images
                .add(&result.manifest_digest, &outputs.names)
                .context("cannot store the image")?;
        }
        for name in &outputs.names {
            progress.detail(step, &format!("naming to {} done", name.full()));
        }
        let image = Image {
            names: outputs.names.clone(),
            manifest_digest: result.manifest_digest,
            manifest: result.manifest.clone(),
            parsed: ParsedManifest::parse(&result.manifest)
                .context("the built manifest does not parse")?,
            config: result.config.clone(),
        };
        for spec in &outputs.exports {
            export(images, &image, &outputs.names, spec)?;
            let to = match &spec.dest {
                Some(p) if p != Path::new("-") => p.display().to_string(),
                _ => "stdout".to_owned(),
            };
            progress.detail(step, &format!("exporting {} to {to} done", spec.kind));
        }
        if !outputs.push.is_empty() {
            let client = args.registry.client(None)?;
            for name in &outputs.push {
                let reference = cache::registry::parse_reference(&name.full())?;
                progress.detail(step, &format!("pushing {}", name.full()));
                let pushed = cache::registry::push(&client, images, &image, &reference)
                    .with_context(|| format!("cannot push {}", name.full()))?;
                progress.detail(
                    step,
                    &format!("pushing {}: digest: {} done", name.full(), pushed.digest),
                );
            }
        }
        Ok(())
    })();
    match &outcome {
        Ok(()) => progress.done(step),
        Err(err) => progress.failed(step, &format!("{err:#}")),
    }
    outcome?;
    if let Some(path) = &args.iidfile {
        write_file(path, id.to_string().as_bytes()).context("cannot write the --iidfile")?;
    }
    if let Some(path) = &args.metadata_file {
        let mut doc = serde_json::json!({
            "containerimage.digest": result.manifest_digest.to_string(),
            "containerimage.config.digest": id.to_string(),
            "containerimage.descriptor": {
                "mediaType": image_media_type(&result.manifest),
                "digest": result.manifest_digest.to_string(),
                "size": result.manifest.len(),
            },
        });
        if !outputs.names.is_empty() {
            let names: Vec<String> = outputs.names.iter().map(|n| n.full()).collect();
            doc["image.name"] = names.join(",").into();
        }
        let mut text = serde_json::to_string_pretty(&doc)?;
        text.push('\n');
        write_file(path, text.as_bytes()).context("cannot write the --metadata-file")?;
    }
    Ok(())
}

fn export(
    images: &ImageStore,
    image: &Image,
    names: &[ImageName],
    spec: &ExportSpec,
) -> anyhow::Result<()> {
    let mut names = names.to_vec();
    for n in &spec.names {
        let n: ImageName = n
            .parse()
            .with_context(|| format!("invalid name {n:?} in -o"))?;
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let item = ExportImage {
        image: image.clone(),
        names,
    };
    let dest = match &spec.dest {
        Some(p) if p != Path::new("-") => Destination::Path(p.clone()),
        _ => Destination::Writer(Box::new(io::stdout())),
    };
    let what = match &spec.dest {
        Some(p) if p != Path::new("-") => p.display().to_string(),
        _ => "stdout".to_owned(),
    };
    spec.kind
        .exporter(spec.options)
        .export(images, std::slice::from_ref(&item), dest)
        .with_context(|| format!("cannot export the image ({}) to {what}", spec.kind))?;
    Ok(())
}

fn image_media_type(manifest: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| cache::images::MEDIA_TYPE_OCI_MANIFEST.to_owned())
}

/// Writes `bytes` to `path` so that a reader never sees half of it.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = AtomicFile::create(path)?;
    io::Write::write_all(&mut file, bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.commit()?;
    Ok(())
}

/// What the remote caches did: bytes that came from `--cache-from`, and
/// what each `--cache-to` received (failures are among the warnings).
fn report_remote_cache(progress: &Renderer, result: &BuildResult) {
    use cache::remote_cache::human_bytes;
    let stats = &result.stats;
    if stats.remote_hits > 0 {
        let step = progress.begin("importing cache");
        progress.detail(
            step,
            &format!(
                "{} result(s) from the remote cache, {} downloaded",
                stats.remote_hits,
                human_bytes(stats.remote_bytes)
            ),
        );
        progress.done(step);
    }
    if stats.remote_mounts > 0 {
        let step = progress.begin("importing cache mounts");
        progress.detail(
            step,
            &format!(
                "{} cache mount(s) from the remote cache",
                stats.remote_mounts
            ),
        );
        progress.done(step);
    }
    for (name, exported) in &stats.exports {
        let step = progress.begin(&format!("exporting cache to {name}"));
        progress.detail(
            step,
            &format!(
                "{} result(s), {} uploaded done",
                exported.entries,
                human_bytes(exported.uploaded_bytes)
            ),
        );
        progress.done(step);
    }
}

/// The build's warnings, once, after its steps (none when quiet): the
/// compiler's, then the build checks' findings.
fn print_warnings(
    progress: &Renderer,
    shown: &str,
    result: &BuildResult,
    checks: Option<&frontend::checks::CheckReport>,
) {
    for w in &result.warnings {
        let line = match w.position {
            Some(p) => format!("{shown}:{}:{}: warning: {}", p.line, p.column, w.message),
            None => format!("warning: {}", w.message),
        };
        progress.warning(&line);
    }
    for f in checks.iter().flat_map(|r| &r.findings) {
        // The compiler already warns about these two.
        if matches!(f.rule, "DuplicateStageName" | "NoEmptyContinuation") {
            continue;
        }
        progress.warning(&format!(
            "{shown}:{}:{}: warning: {}: {}",
            f.position.line, f.position.column, f.rule, f.message
        ));
    }
}

/// The build checks for this request (its build args, platform and ignore file).
fn run_checks(
    request: &BuildRequest,
) -> Result<frontend::checks::CheckReport, frontend::checks::CheckError> {
    let opts = frontend::checks::CheckOptions {
        build_args: request.options.build_args.clone(),
        ignore: request.ignore.as_ref(),
        platform: request.options.platform.clone(),
        ..Default::default()
    };
    frontend::checks::run(&request.dockerfile, &opts)
}

/// `--check`: the findings on stdout (`PATH:LINE:COL: Rule: message`, the
/// line, a caret) and a summary, as buildx; errors the build would hit
/// (compiled without looking up images) on stderr. Exit 1 on an error or
/// with `error=true` and a finding.
fn check_only(request: &BuildRequest, shown: &str) -> ExitCode {
    let report = match run_checks(request) {
        Ok(report) => report,
        Err(err) => {
            eprint!("{}", err.render(shown, &request.dockerfile));
            return ExitCode::from(1);
        }
    };
    let compiled = frontend::convert::compile(
        &request.dockerfile,
        &request.options,
        &frontend::convert::NoResolver,
    );
    if let Err(err) = compiled {
        eprint!("{}", err.render(shown, &request.dockerfile));
        return ExitCode::from(1);
    }
    print!("{}", report.render(shown, &request.dockerfile));
    match report.findings.len() {
        0 => println!("Check complete, no warnings found."),
        1 => println!("Check complete, 1 warning has been found!"),
        n => println!("Check complete, {n} warnings have been found!"),
    }
    match report.error() {
        Some(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    }
}

fn cancelled(signals: &Signals) -> ExitCode {
    eprintln!("error: build cancelled");
    let signal = signals.last().unwrap_or(Signal::SIGINT);
    ExitCode::from(128 + signal as u8)
}

/// The Dockerfile's name for messages and its bytes.
fn read_dockerfile(args: &BuildArgs) -> anyhow::Result<(String, Vec<u8>)> {
    match &args.file {
        Some(f) if f.as_os_str() == "-" => {
            let mut buf = Vec::new();
            io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the Dockerfile from stdin")?;
            // As docker names a Dockerfile read from stdin.
            Ok(("Dockerfile".to_owned(), buf))
        }
        Some(f) => {
            let bytes = std::fs::read(f)
                .with_context(|| format!("cannot read the Dockerfile {}", f.display()))?;
            Ok((f.display().to_string(), bytes))
        }
        None => {
            let f = args.context_dir.join("Dockerfile");
            let bytes = std::fs::read(&f)
                .with_context(|| format!("cannot read the Dockerfile {}", f.display()))?;
            Ok(("Dockerfile".to_owned(), bytes))
        }
    }
}

/// `--build-context NAME=DIR|docker-image://REF`: what the frontend sees
/// for each name, and the local directories (with their `.dockerignore`).
/// `PATH[:TAG|@DIGEST]` of `oci-layout://`: the layout directory and what
/// picks the image in it.
fn oci_layout_spec(layout: &str) -> anyhow::Result<(PathBuf, OciPick)> {
    if let Some((path, digest)) = layout.rsplit_once('@') {
        let digest: cache::Digest = digest
            .parse()
            .map_err(|e| anyhow::anyhow!("bad digest {digest:?} in oci-layout://: {e}"))?;
        return Ok((PathBuf::from(path), OciPick::Digest(digest)));
    }
    match layout.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !tag.is_empty() => {
            Ok((PathBuf::from(path), OciPick::Tag(tag.to_owned())))
        }
        _ if layout.is_empty() => anyhow::bail!("oci-layout:// needs a directory"),
        _ => Ok((PathBuf::from(layout), OciPick::Default)),
    }
}

/// Which image of an OCI layout a named context uses.
enum OciPick {
    Digest(cache::Digest),
    Tag(String),
    /// The only one, else the one tagged `latest`.
    Default,
}

/// Imports the image each `--build-context NAME=oci-layout://…` names into
/// the store and points the context at it by digest.
fn import_oci_contexts(
    images: &ImageStore,
    specs: &[String],
    request: &mut BuildRequest,
) -> anyhow::Result<()> {
    for spec in specs {
        let Some((name, layout)) = spec
            .split_once('=')
            .and_then(|(n, v)| Some((n, v.strip_prefix("oci-layout://")?)))
        else {
            continue;
        };
        let (dir, pick) = oci_layout_spec(layout)?;
        let index_path = dir.join("index.json");
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?,
        )
        .with_context(|| format!("invalid {}", index_path.display()))?;
        let entries: Vec<(String, Option<String>)> = index["manifests"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|d| {
                        (
                            d["digest"].as_str().unwrap_or_default().to_owned(),
                            d["annotations"]["org.opencontainers.image.ref.name"]
                                .as_str()
                                .map(str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let tag_of = |t: &str| {
            entries
                .iter()
                .find(|(_, r)| r.as_deref() == Some(t))
                .map(|(d, _)| d.clone())
        };
        let chosen = match &pick {
            OciPick::Digest(d) => entries
                .iter()
                .find(|(e, _)| *e == d.to_string())
                .map(|(e, _)| e.clone()),
            OciPick::Tag(t) => tag_of(t),
            OciPick::Default if entries.len() == 1 => Some(entries[0].0.clone()),
            OciPick::Default => tag_of("latest"),
        };
        let Some(chosen) = chosen else {
            let what = match &pick {
                OciPick::Digest(d) => format!("no image {d}"),
                OciPick::Tag(t) => format!("no image tagged {t:?}"),
                OciPick::Default => format!(
                    "{} images and none tagged \"latest\" (name one with :TAG or @DIGEST)",
                    entries.len()
                ),
            };
            anyhow::bail!(
                "--build-context {spec}: the OCI layout {} has {what}",
                dir.display()
            );
        };
        let loaded = cache::archive::import_oci_layout(
            images,
            &dir,
            &cache::archive::ImportOptions::default(),
        )
        .with_context(|| format!("--build-context {spec}: cannot import {}", dir.display()))?;
        let image = loaded
            .iter()
            .find(|l| l.manifest_digest.to_string() == chosen)
            .or(if loaded.len() == 1 { loaded.first() } else { None })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--build-context {spec}: image {chosen} of {} is not an image for this platform",
                    dir.display()
                )
            })?;
        request.options.named_contexts.insert(
            name.to_owned(),
            NamedContext::Image(format!("oci-layout@{}", image.manifest_digest)),
        );
    }
    Ok(())
}

fn named_contexts(
    specs: &[String],
) -> anyhow::Result<(
    BTreeMap<String, NamedContext>,
    BTreeMap<String, NamedContextDir>,
)> {
    let mut names = BTreeMap::new();
    let mut dirs = BTreeMap::new();
    for spec in specs {
        let Some((name, value)) = spec.split_once('=') else {
            anyhow::bail!(
                "invalid --build-context {spec:?}: expected NAME=DIR or NAME=docker-image://REF"
            );
        };
        if name.is_empty() || value.is_empty() {
            anyhow::bail!(
                "invalid --build-context {spec:?}: the name and the value must not be empty"
            );
        }
        if name == "context" {
            anyhow::bail!(
                "invalid --build-context {spec:?}: \"context\" is the main build context"
            );
        }
        if names.contains_key(name) {
            anyhow::bail!("invalid --build-context {spec:?}: {name:?} is given twice");
        }
        let named = if let Some(reference) = value.strip_prefix("docker-image://") {
            if reference.is_empty() {
                anyhow::bail!(
                    "invalid --build-context {spec:?}: docker-image:// needs an image reference"
                );
            }
            if let Err(e) = cache::registry::parse_reference(reference) {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("invalid --build-context {spec:?}"));
            }
            NamedContext::Image(reference.to_owned())
        } else if let Some(layout) = value.strip_prefix("oci-layout://") {
            let (dir, _) = oci_layout_spec(layout)
                .with_context(|| format!("invalid --build-context {spec:?}"))?;
            if !dir.join("index.json").is_file() {
                anyhow::bail!(
                    "invalid --build-context {spec:?}: {} is not an OCI image layout (no index.json)",
                    dir.display()
                );
            }
            // Imported when the store is open (see `import_oci_contexts`).
            NamedContext::Image(value.to_owned())
        } else if let Some((scheme, _)) = value.split_once("://") {
            anyhow::bail!(
                "invalid --build-context {spec:?}: unknown source {scheme}:// (expected a directory, docker-image://REF or oci-layout://PATH)"
            );
        } else {
            let dir = PathBuf::from(value);
            if !dir.is_dir() {
                anyhow::bail!("invalid --build-context {spec:?}: {value} is not a directory");
            }
            let ignore_path = dir.join(".dockerignore");
            let ignore = match std::fs::read_to_string(&ignore_path) {
                Ok(text) => {
                    Some(PatternMatcher::from_dockerignore(&text).with_context(|| {
                        format!("invalid ignore file {}", ignore_path.display())
                    })?)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read {}", ignore_path.display()));
                }
            };
            dirs.insert(name.to_owned(), NamedContextDir { dir, ignore });
            NamedContext::Local
        };
        names.insert(name.to_owned(), named);
    }
    Ok((names, dirs))
}

/// The ignore file that applies: `<Dockerfile>.dockerignore` beside the
/// Dockerfile, else the context's `.dockerignore`.
fn ignore_file(args: &BuildArgs) -> anyhow::Result<Option<PatternMatcher>> {
    let read = |p: &Path| -> anyhow::Result<Option<(PathBuf, String)>> {
        match std::fs::read_to_string(p) {
            Ok(text) => Ok(Some((p.to_path_buf(), text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    };
    let dockerfile = match &args.file {
        Some(f) if f.as_os_str() == "-" => None,
        Some(f) => Some(f.clone()),
        None => Some(args.context_dir.join("Dockerfile")),
    };
    let specific = match &dockerfile {
        Some(f) => read(Path::new(&dockerfile_ignore_path(&f.to_string_lossy())))?,
        None => None,
    };
    let general = read(&args.context_dir.join(".dockerignore"))?;
    let chosen = select_ignore_file(
        specific.as_ref().map(|(_, t)| t.as_str()),
        general.as_ref().map(|(_, t)| t.as_str()),
    );
    let Some(text) = chosen else {
        return Ok(None);
    };
    // The same choice again, for the file's name in messages.
    let Some((path, _)) = specific.as_ref().or(general.as_ref()) else {
        return Ok(None);
    };
    let matcher = PatternMatcher::from_dockerignore(text)
        .with_context(|| format!("invalid ignore file {}", path.display()))?;
    Ok(Some(matcher))
}

fn request(args: &BuildArgs, shown: &str, dockerfile: Vec<u8>) -> anyhow::Result<BuildRequest> {
    let meta = std::fs::metadata(&args.context_dir).with_context(|| {
        format!(
            "unable to prepare the context: path {:?} not found",
            args.context_dir.display().to_string()
        )
    })?;
    if !meta.is_dir() {
        anyhow::bail!(
            "unable to prepare the context: {} is not a directory",
            args.context_dir.display()
        );
    }
    let mut build_args = parse_build_args(&args.build_args)?;
    // As buildx: the caller's SOURCE_DATE_EPOCH reaches the build as the
    // build arg of that name unless one was given.
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        build_args.entry("SOURCE_DATE_EPOCH".into()).or_insert(v);
    }
    let source_date_epoch = match build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) if !v.is_empty() => {
            Some(v.parse::<i64>().ok().filter(|n| *n >= 0).with_context(|| {
                format!("invalid SOURCE_DATE_EPOCH {v:?}: expected seconds since 1970")
            })?)
        }
        _ => None,
    };
    let platform = match &args.platform {
        Some(p) if p.contains(',') => {
            anyhow::bail!("--platform {p}: building for several platforms is not supported yet")
        }
        Some(p) => Some(
            p.parse::<Platform>()
                .with_context(|| format!("invalid --platform {p}"))?,
        ),
        None => None,
    };
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            anyhow::bail!("invalid --label {l:?}: empty key");
        }
        labels.insert(k.to_owned(), v.to_owned());
    }
    let network = match args.network.as_str() {
        "default" => NetworkMode::Default,
        "none" => NetworkMode::None,
        "host" => NetworkMode::Host,
        other => anyhow::bail!("invalid --network {other:?}: expected default, none or host"),
    };
    let mut allow_host = false;
    let mut allow_insecure = false;
    for entitlement in args.allow.iter().flat_map(|a| a.split(',')) {
        match entitlement.trim() {
            "network.host" => allow_host = true,
            "security.insecure" => allow_insecure = true,
            other => anyhow::bail!(
                "invalid --allow {other:?}: expected network.host or security.insecure"
            ),
        }
    }
    // buildx grants network.host when the whole build asks for the host's network.
    if network == NetworkMode::Host {
        allow_host = true;
    }
    let mut extra_hosts = Vec::new();
    for h in &args.add_hosts {
        let (host, ip) = h
            .split_once(['=', ':'])
            .with_context(|| format!("invalid --add-host {h:?}: expected HOST:IP"))?;
        let ip = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("invalid --add-host {h:?}: bad IP address"))?;
        extra_hosts.push((host.to_owned(), ip));
    }
    let (cache_from, cache_to, cache_inline) = remote_caches(args)?;
    let (named_options, named_contexts) = named_contexts(&args.build_contexts)?;
    Ok(BuildRequest {
        dockerfile,
        dockerfile_path: shown.to_owned(),
        context_dir: args.context_dir.clone(),
        ignore: ignore_file(args)?,
        options: CompileOptions {
            target: args.target.clone(),
            build_args,
            platform,
            dockerfile_name: shown.to_owned(),
            labels,
            named_contexts: named_options,
            ..CompileOptions::default()
        },
        named_contexts,
        network_allowed_host: allow_host,
        allow_security_insecure: allow_insecure,
        network,
        extra_hosts,
        source_date_epoch,
        layer_compression: CompressionOptions::new(Compression::Gzip),
        no_cache: args.no_cache,
        no_cache_stages: args.no_cache_filter.clone(),
        jobs: args.jobs.map(|n| n as usize),
        secrets: args
            .secrets
            .iter()
            .map(|s| parse_secret(s))
            .collect::<anyhow::Result<_>>()?,
        ssh: args
            .ssh
            .iter()
            .map(|s| parse_ssh(s))
            .collect::<anyhow::Result<_>>()?,
        cache_from,
        cache_to,
        cache_inline,
        shm_size: args
            .shm_size
            .as_deref()
            .map(|s| solver::sandbox::parse_size(s).map_err(|e| anyhow::anyhow!("--shm-size: {e}")))
            .transpose()?,
        ulimits: args
            .ulimits
            .iter()
            .map(|u| u.parse().map_err(|e| anyhow::anyhow!("--ulimit: {e}")))
            .collect::<anyhow::Result<_>>()?,
    })
}

type CacheFrom = Vec<Arc<dyn cache::remote_cache::RemoteCache>>;
/// `--cache-to type=inline` was given.
type CacheInline = bool;
type CacheTo = Vec<(
    Arc<dyn cache::remote_cache::RemoteCache>,
    cache::remote_cache::ExportOptions,
)>;

/// `--cache-from`, `--cache-to` and `--cache`/`BUILDER_CACHE` as backends.
fn remote_caches(args: &BuildArgs) -> anyhow::Result<(CacheFrom, CacheTo, CacheInline)> {
    use cache::remote_cache::{CacheMode, CacheSpec, ExportOptions};
    let options = cache::registry::RegistryOptions::default();
    let mut from = Vec::new();
    let mut to = Vec::new();
    let mut inline = false;
    let open = |spec: &CacheSpec, flag: &str, raw: &str| {
        spec.open(&options)
            .with_context(|| format!("invalid {flag} {raw:?}"))
    };
    for raw in &args.cache_from {
        let spec = CacheSpec::parse(raw, false)?;
        if let Some(c) = open(&spec, "--cache-from", raw)? {
            from.push(c);
        }
    }
    for raw in &args.cache_to {
        let spec = CacheSpec::parse(raw, true)?;
        match open(&spec, "--cache-to", raw)? {
            Some(c) => to.push((c, spec.export_options())),
            None => inline = true,
        }
    }
    if let Some(raw) = args.cache.as_deref().filter(|c| !c.is_empty()) {
        let export = ExportOptions {
            mode: CacheMode::Max,
            mounts: false,
        };
        let spec = CacheSpec::Registry {
            reference: raw.to_owned(),
            export,
        };
        if let Some(c) = open(&spec, "--cache", raw)? {
            from.push(c.clone());
            to.push((c, export));
        }
    }
    Ok((from, to, inline))
}

/// `--secret id=ID,src=PATH` (also `source=`, and `type=file|env`), or
/// `id=ID,env=VAR`, as buildx. Without a source, the file or variable
/// named like the id is used (buildx: `env` when such a variable is set).
fn parse_secret(raw: &str) -> anyhow::Result<SecretSpec> {
    let mut id = None;
    let mut kind = None;
    let mut src = None;
    let mut env = None;
    for field in raw.split(',') {
        let (k, v) = field
            .split_once('=')
            .with_context(|| format!("invalid --secret {raw:?}: {field:?} is not KEY=VALUE"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_owned()),
            "type" => kind = Some(v.to_owned()),
            "src" | "source" => src = Some(v.to_owned()),
            "env" => env = Some(v.to_owned()),
            other => anyhow::bail!("invalid --secret {raw:?}: unknown key {other:?}"),
        }
    }
    let id = id
        .or_else(|| src.as_ref().or(env.as_ref()).cloned())
        .filter(|id| !id.is_empty())
        .with_context(|| format!("invalid --secret {raw:?}: id=ID is required"))?;
    let source = match (kind.as_deref(), src, env) {
        (_, Some(_), Some(_)) => {
            anyhow::bail!("invalid --secret {raw:?}: give either src= or env=, not both")
        }
        (Some("env"), Some(var), None) | (_, None, Some(var)) => SecretSource::Env(var),
        (Some("file") | None, Some(path), None) => SecretSource::File(PathBuf::from(path)),
        (Some("env"), None, None) => SecretSource::Env(id.clone()),
        (Some("file"), None, None) => SecretSource::File(PathBuf::from(&id)),
        (None, None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None, None) => SecretSource::File(PathBuf::from(&id)),
        (Some(other), _, _) => {
            anyhow::bail!("invalid --secret {raw:?}: unknown type {other:?} (file or env)")
        }
    };
    if let SecretSource::File(path) = &source {
        if !path.is_file() {
            anyhow::bail!(
                "invalid --secret {raw:?}: {} is not a readable file",
                path.display()
            );
        }
    }
    Ok(SecretSpec { id, source })
}

/// `--ssh default`, `--ssh ID=SOCKET`: the agent socket must exist.
fn parse_ssh(raw: &str) -> anyhow::Result<SshSpec> {
    let (id, socket) = match raw.split_once('=') {
        Some((id, path)) => (id.to_owned(), PathBuf::from(path)),
        None => {
            let sock = std::env::var_os("SSH_AUTH_SOCK").with_context(|| {
                format!(
                    "--ssh {raw}: SSH_AUTH_SOCK is not set (start an agent or give {raw}=SOCKET)"
                )
            })?;
            (raw.to_owned(), PathBuf::from(sock))
        }
    };
    if id.is_empty() {
        anyhow::bail!("invalid --ssh {raw:?}: empty id");
    }
    if !socket.exists() {
        anyhow::bail!("--ssh {raw}: {} does not exist", socket.display());
    }
    Ok(SshSpec { id, socket })
}

/// `--build-arg K=V`, or `K` alone taking its value from the environment
/// (and passing nothing when it is unset, as docker does).
fn parse_build_args(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some(("", _)) => anyhow::bail!("invalid --build-arg {a:?}: empty name"),
            Some((k, v)) => {
                out.insert(k.to_owned(), v.to_owned());
            }
            None if a.is_empty() => anyhow::bail!("invalid --build-arg: empty name"),
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// Parses `-t` and `-o` before anything is built, so that a typo does not
/// cost a build.
fn parse_outputs(args: &BuildArgs) -> anyhow::Result<Outputs> {
    let mut out = Outputs::default();
    for t in &args.tags {
        let name = ImageName::from_str(t).with_context(|| format!("invalid tag {t:?}"))?;
        if !out.names.contains(&name) {
            out.names.push(name);
        }
    }
    for o in &args.outputs {
        out.any_output = true;
        let kind = o
            .split(',')
            .find_map(|p| p.trim().strip_prefix("type="))
            .unwrap_or("");
        match kind {
            "image" | "registry" => {
                let (names, push) = image_output_names(o)?;
                if kind == "registry" && names.is_empty() {
                    anyhow::bail!("-o {o}: type=registry needs name=REF");
                }
                for name in names {
                    if (push || kind == "registry") && !out.push.contains(&name) {
                        out.push.push(name.clone());
                    }
                    if !out.names.contains(&name) {
                        out.names.push(name);
                    }
                }
                continue;
            }
            "cacheonly" => continue,
            _ => {}
        }
        let spec: ExportSpec = o.parse().with_context(|| format!("invalid -o {o:?}"))?;
        let to_stdout = spec.dest.as_deref().is_none_or(|d| d == Path::new("-"));
        if spec.kind == ExportKind::Local && to_stdout {
            anyhow::bail!("-o {o}: the local exporter needs dest=DIR");
        }
        if to_stdout {
            if io::stdout().is_terminal() {
                anyhow::bail!(
                    "-o {o}: refusing to write a tarball to the terminal: give dest=FILE or redirect stdout"
                );
            }
            if out.stdout_taken {
                anyhow::bail!("-o {o}: only one output can go to stdout");
            }
            out.stdout_taken = true;
        }
        out.exports.push(spec);
    }
    if args.push {
        if out.names.is_empty() {
            anyhow::bail!("--push needs a name to push to: give -t REF");
        }
        for name in &out.names {
            if !out.push.contains(name) {
                out.push.push(name.clone());
            }
        }
    }
    Ok(out)
}

/// The names of `type=image,name=a,name=b`, or `name="a,b"` as buildx's CSV
/// quoting allows.
fn image_output_names(spec: &str) -> anyhow::Result<(Vec<ImageName>, bool)> {
    let mut names = Vec::new();
    let mut push = false;
    for field in split_csv(spec) {
        let (key, value) = field
            .split_once('=')
            .with_context(|| format!("invalid -o field {field:?}: expected KEY=VALUE"))?;
        match key.trim() {
            "type" => {}
            "name" => {
                for n in value.split(',').filter(|n| !n.is_empty()) {
                    names.push(
                        n.parse::<ImageName>()
                            .with_context(|| format!("invalid name {n:?} in -o"))?,
                    );
                }
            }
            "push" if value == "false" => {}
            "push" if value == "true" => push = true,
            "push" => anyhow::bail!("-o {spec}: push={value} is neither true nor false"),
            "unpack" | "store" | "compression" | "compression-level" | "force-compression"
            | "oci-mediatypes" => {}
            other => anyhow::bail!("-o {spec}: unknown field {other:?} for type=image"),
        }
    }
    Ok((names, push))
}

/// Splits on commas outside double quotes, dropping the quotes, as buildx's
/// CSV reading of `-o` does.
fn split_csv(s: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT cancel the build (which kills its
/// running step); a second one, or one once the build is done, ends builder
/// at once.
struct Signals {
    cancel: CancelHandle,
    exit_on_signal: Arc<AtomicBool>,
    last: Arc<std::sync::Mutex<Option<Signal>>>,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let set = super::run::handled_signals();
        set.thread_block()?;
        let cancel = CancelHandle::new();
        let exit_on_signal = Arc::new(AtomicBool::new(false));
        let last = Arc::new(std::sync::Mutex::new(None));
        let (c, e, l) = (
            cancel.clone(),
            Arc::clone(&exit_on_signal),
            Arc::clone(&last),
        );
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                loop {
                    let Ok(signal) = set.wait() else { continue };
                    *l.lock().unwrap_or_else(|p| p.into_inner()) = Some(signal);
                    if e.swap(true, Ordering::SeqCst) {
                        super::progress::restore_terminal();
                        eprintln!("error: interrupted");
                        std::process::exit(128 + signal as i32);
                    }
                    c.cancel();
                }
            })?;
        Ok(Signals {
            cancel,
            exit_on_signal,
            last,
        })
    }

    fn last(&self) -> Option<Signal> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_keep_quoted_commas() {
        assert_eq!(
            split_csv(r#"type=image,"name=a:1,b:2",push=false"#),
            vec!["type=image", "name=a:1,b:2", "push=false"]
        );
        assert_eq!(
            split_csv(r#"type=image,name="a,b""#),
            vec!["type=image", "name=a,b"]
        );
    }

    #[test]
    fn image_outputs_name_images() {
        let (names, push) = image_output_names(r#"type=image,name="app:1,app:2""#).unwrap();
        assert!(!push);
        let full: Vec<String> = names.iter().map(|n| n.full()).collect();
        assert_eq!(
            full,
            vec!["docker.io/library/app:1", "docker.io/library/app:2"]
        );
        assert!(
            image_output_names("type=image,name=app,push=true")
                .unwrap()
                .1
        );
        assert!(image_output_names("type=image,name=app,push=maybe").is_err());
        assert!(image_output_names("type=image,bogus=1").is_err());
    }
}
