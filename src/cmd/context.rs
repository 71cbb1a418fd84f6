//! The build context argument of `builder build`: a local directory, `-`
//! (a tar on stdin), a tarball URL, or a git repository
//! (`URL#REF:SUBDIR`). Remote contexts are materialised in a directory
//! under `ROOT/tmp`, removed when the build ends.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use solver::ops::copy::remote;
use solver::sandbox::CancelHandle;

/// The build arg that keeps `.git` in a git context, as in BuildKit.
const KEEP_GIT_DIR_ARG: &str = "BUILDKIT_CONTEXT_KEEP_GIT_DIR";

/// A prepared build context.
#[derive(Debug)]
pub(crate) struct BuildContext {
    /// The directory the build reads its context from.
    pub(crate) dir: PathBuf,
    /// The `-f` to use: for a remote context, a relative `-f` names a file
    /// inside the context.
    pub(crate) file: Option<PathBuf>,
    /// The temp directory to remove when done.
    tmp: Option<PathBuf>,
}

impl Drop for BuildContext {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// What kind of context `spec` names.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    Stdin,
    Tarball,
    Git,
}

fn kind(spec: &str) -> Kind {
    if spec == "-" {
        return Kind::Stdin;
    }
    if remote::is_git_url(spec) {
        return Kind::Git;
    }
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return Kind::Tarball;
    }
    // A local repository named `*.git` (bare, or with a work tree).
    let path = spec.split('#').next().unwrap_or(spec);
    let local = Path::new(path);
    if path.trim_end_matches('/').ends_with(".git")
        && (local.join("HEAD").is_file() || local.join(".git").exists())
    {
        return Kind::Git;
    }
    Kind::Dir
}

/// Whether the build args ask to keep `.git` in a git context.
fn keep_git_dir(build_args: &[String]) -> bool {
    build_args
        .iter()
        .filter_map(|a| a.split_once('='))
        .rfind(|(k, _)| *k == KEEP_GIT_DIR_ARG)
        .is_some_and(|(_, v)| matches!(v.trim(), "1" | "true" | "TRUE" | "True"))
}

/// Prepares the context `spec`. `file` is the `-f` as given.
pub(crate) fn prepare(
    root: &Path,
    spec: &str,
    build_args: &[String],
    file: Option<&Path>,
    cancel: &CancelHandle,
) -> anyhow::Result<BuildContext> {
    let kind = kind(spec);
    if kind == Kind::Dir {
        return Ok(BuildContext {
            dir: PathBuf::from(spec),
            file: file.map(Path::to_path_buf),
            tmp: None,
        });
    }
    if kind == Kind::Stdin && file.is_some_and(|f| f.as_os_str() == "-") {
        anyhow::bail!(
            "unable to prepare the context: the context and the Dockerfile cannot both come from stdin"
        );
    }
    let tmp = temp_dir(root)?;
    let mut context = BuildContext {
        dir: tmp.clone(),
        file: None,
        tmp: Some(tmp.clone()),
    };
    match kind {
        Kind::Stdin => {
            let dir = tmp.join("context");
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            materialise(io::stdin(), &dir, "the context on stdin")
                .context("unable to prepare the context from stdin")?;
            context.dir = dir;
        }
        Kind::Tarball => {
            let download = remote::download(spec, cancel)
                .with_context(|| format!("unable to prepare the context {spec}"))?;
            let dir = tmp.join("context");
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            materialise(download, &dir, spec)
                .with_context(|| format!("unable to prepare the context {spec}"))?;
            context.dir = dir;
        }
        Kind::Git => {
            // `git clone` wants a URL or a path; a local path is fine as is.
            let dir = remote::git_checkout(
                spec,
                &tmp.join("checkout"),
                keep_git_dir(build_args),
                None,
                None,
                cancel,
            )
            .with_context(|| format!("unable to prepare the git context {spec}"))?;
            context.dir = dir;
        }
        Kind::Dir => unreachable!("handled above"),
    }
    context.file = match file {
        Some(f) if f.as_os_str() != "-" && f.is_relative() => Some(context.dir.join(f)),
        other => other.map(Path::to_path_buf),
    };
    Ok(context)
}

/// Writes what `input` holds into the existing directory `dir`: a tar
/// (compressed, or with the ustar magic) is unpacked; anything else is a
/// Dockerfile and the context is otherwise empty, as with docker.
fn materialise(mut input: impl Read + Send, dir: &Path, what: &str) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(TAR_BLOCK);
    (&mut input)
        .take(TAR_BLOCK as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {what}"))?;
    let compressed = head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(b"BZh")
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let tar = head.get(257..262) == Some(b"ustar".as_slice());
    let whole = io::Cursor::new(head).chain(input);
    if compressed || tar {
        remote::unpack_context_tar(whole, dir, what)?;
        return Ok(());
    }
    let path = dir.join("Dockerfile");
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    io::copy(&mut { whole }, &mut file).with_context(|| format!("cannot read {what}"))?;
    Ok(())
}

/// A tar header's size; the ustar magic is at offset 257.
const TAR_BLOCK: usize = 512;

/// A new directory under `ROOT/tmp`.
fn temp_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let base = root.join("tmp");
    std::fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = base.join(format!("context-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind("-"), Kind::Stdin);
        assert_eq!(kind("."), Kind::Dir);
        assert_eq!(kind("https://example.com/ctx.tar.gz"), Kind::Tarball);
        assert_eq!(kind("http://127.0.0.1:8000/ctx.tar"), Kind::Tarball);
        assert_eq!(kind("https://example.com/repo.git#main:sub"), Kind::Git);
        assert_eq!(kind("git@example.com:repo.git"), Kind::Git);
        assert_eq!(kind("file:///srv/repo.git"), Kind::Git);
    }

    #[test]
    fn keep_git_dir_arg() {
        assert!(keep_git_dir(&["BUILDKIT_CONTEXT_KEEP_GIT_DIR=1".into()]));
        assert!(!keep_git_dir(&["BUILDKIT_CONTEXT_KEEP_GIT_DIR=0".into()]));
        assert!(!keep_git_dir(&["OTHER=1".into()]));
    }
}
