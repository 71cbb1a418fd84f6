//! Remote sources shared by `ADD <git url>` and remote build contexts:
//! git checkouts made with the `git` command, and plain downloads.
//!
//! A git source is `URL[#REF[:SUBDIR]]` as in BuildKit: the repository is
//! cloned shallowly at `REF` (a branch or tag; a commit sha falls back to a
//! full clone and a checkout), with its submodules, and `.git` is removed
//! unless asked to keep it.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::CopyError;
use super::fetch::Fetcher;
use crate::sandbox::CancelHandle;

/// Whether `s` names a git repository: `git://`, `git@`, `ssh://`, or an
/// `http(s)://`/`file://` URL whose path ends in `.git`.
pub fn is_git_url(s: &str) -> bool {
    if s.starts_with("git://") || s.starts_with("git@") || s.starts_with("ssh://") {
        return true;
    }
    if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file://") {
        let path = s.split(['#', '?']).next().unwrap_or(s);
        return path.trim_end_matches('/').ends_with(".git");
    }
    false
}

/// A parsed `URL#REF:SUBDIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    pub url: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
}

impl GitSource {
    pub fn parse(spec: &str) -> GitSource {
        let (url, fragment) = match spec.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (spec, None),
        };
        let (reference, subdir) = match fragment {
            None => (None, None),
            Some(f) => match f.split_once(':') {
                Some((r, s)) => (Some(r), Some(s)),
                None => (Some(f), None),
            },
        };
        let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        GitSource {
            url: url.to_owned(),
            reference: nonempty(reference),
            subdir: nonempty(subdir.map(|s| s.trim_matches('/'))),
        }
    }
}

fn looks_like_commit(r: &str) -> bool {
    (7..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

fn git_failed(url: &str, what: &str, status: std::process::ExitStatus, stderr: &[u8]) -> CopyError {
    let stderr = String::from_utf8_lossy(stderr);
    CopyError::Git {
        url: url.to_owned(),
        reason: format!("{what} failed ({status}): {}", stderr.trim()),
    }
}

/// Runs git, killing it when `cancel` fires; returns what it printed on
/// standard output.
fn run_git(
    url: &str,
    what: &str,
    cmd: &mut Command,
    cancel: &CancelHandle,
) -> Result<Vec<u8>, CopyError> {
    let cannot_run = |e: io::Error| CopyError::Git {
        url: url.to_owned(),
        reason: format!("cannot run git: {e}"),
    };
    let mut child = cmd
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_run)?;
    // Read both pipes aside so that a chatty git cannot block on a full one.
    let read_aside = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read_aside(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = read_aside(Box::new(child.stderr.take().expect("stderr is piped")));
    let status = loop {
        if cancel.is_cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = stdout.join();
            let _ = stderr.join();
            return Err(CopyError::Cancelled);
        }
        match child.try_wait().map_err(cannot_run)? {
            Some(status) => break status,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(git_failed(url, what, status, &stderr));
    }
    Ok(stdout)
}

/// The commit the git source `spec` names now, asked of the repository
/// with `git ls-remote` (no clone), for the cache key of an ADD: as `git
/// clone --branch` picks it, a branch before a tag (an annotated tag's
/// commit, not the tag object), or the remote HEAD without a reference. A
/// full commit sha is its own answer; an abbreviated one cannot be asked
/// for and gives None, as does a reference the repository does not have
/// (the step then runs and reports what git says).
pub fn resolve_commit(spec: &str, cancel: &CancelHandle) -> Result<Option<String>, CopyError> {
    let src = GitSource::parse(spec);
    let url = src.url.as_str();
    let wanted: Vec<String> = match src.reference.as_deref() {
        Some(r) if looks_like_commit(r) => {
            return Ok((r.len() == 40 || r.len() == 64).then(|| r.to_ascii_lowercase()));
        }
        Some(r) => vec![
            format!("refs/heads/{r}"),
            format!("refs/tags/{r}^{{}}"),
            format!("refs/tags/{r}"),
        ],
        None => vec!["HEAD".to_owned()],
    };
    let mut ls = Command::new("git");
    ls.args(["ls-remote", "--"]).arg(url);
    // An annotated tag's commit is listed (as `TAG^{}`) only when asked for.
    let pattern = src.reference.as_deref().unwrap_or("HEAD");
    ls.arg(pattern).arg(format!("{pattern}^{{}}"));
    let out = run_git(url, "git ls-remote", &mut ls, cancel)?;
    let out = String::from_utf8_lossy(&out);
    let refs: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(sha, _)| looks_like_commit(sha))
        .collect();
    Ok(wanted.iter().find_map(|w| {
        refs.iter()
            .find(|(_, name)| name == w)
            .map(|(sha, _)| sha.to_ascii_lowercase())
    }))
}

/// Checks out `commit` in the clone at `dest`, with its submodules.
fn check_out(url: &str, dest: &Path, commit: &str, cancel: &CancelHandle) -> Result<(), CopyError> {
    run_git(
        url,
        &format!("git checkout {commit}"),
        Command::new("git").arg("-C").arg(dest).args([
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            commit,
        ]),
        cancel,
    )?;
    run_git(
        url,
        "git submodule update",
        Command::new("git").arg("-C").arg(dest).args([
            "submodule",
            "update",
            "--init",
            "--recursive",
            "--quiet",
        ]),
        cancel,
    )?;
    Ok(())
}

/// The commit checked out in `dir`.
fn head_commit(url: &str, dir: &Path, cancel: &CancelHandle) -> Result<String, CopyError> {
    let mut rev_parse = Command::new("git");
    rev_parse.arg("-C").arg(dir).args(["rev-parse", "HEAD"]);
    let out = run_git(url, "git rev-parse HEAD", &mut rev_parse, cancel)?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// Clones the git source `spec` into `dest` (which must not exist or be
/// empty) and returns the directory to use: `dest`, or its `SUBDIR`.
/// `expected_commit` (ADD --checksum) must be a prefix of the checked-out
/// commit; `keyed_commit`, the commit [`resolve_commit`] found when the
/// step's cache key was computed, is the commit checked out: fetched by its
/// id if the reference has moved on since ([`CopyError::UrlChanged`] if the
/// repository no longer has it).
pub fn git_checkout(
    spec: &str,
    dest: &Path,
    keep_git_dir: bool,
    expected_commit: Option<&str>,
    keyed_commit: Option<&str>,
    cancel: &CancelHandle,
) -> Result<PathBuf, CopyError> {
    let src = GitSource::parse(spec);
    let url = src.url.as_str();
    let shallow = !src.reference.as_deref().is_some_and(looks_like_commit);
    let mut clone = Command::new("git");
    clone.args(["clone", "--quiet", "--recurse-submodules"]);
    if shallow {
        clone.args(["--depth", "1", "--shallow-submodules"]);
        if let Some(r) = &src.reference {
            clone.args(["--branch", r]);
        }
    }
    clone.arg("--").arg(url).arg(dest);
    run_git(url, "git clone", &mut clone, cancel)?;
    if !shallow {
        let r = src.reference.as_deref().expect("a commit was given");
        check_out(url, dest, r, cancel)?;
    }
    // The commit checked out, asked of git once (again only after a fetch).
    let mut head = None;
    if let Some(keyed) = keyed_commit {
        let actual = head_commit(url, dest, cancel)?;
        if !actual.starts_with(keyed) {
            // The reference moved on since the key was computed (a push
            // while the build ran): the keyed commit is what this step
            // stands for. Servers give a commit by its id (protocol v2);
            // one that is gone (a force push) cannot be built under that key.
            let mut fetch = Command::new("git");
            fetch
                .arg("-C")
                .arg(dest)
                .args(["fetch", "--quiet", "--depth", "1", "origin", keyed]);
            if run_git(url, "git fetch", &mut fetch, cancel)
                .and_then(|_| check_out(url, dest, keyed, cancel))
                .is_err()
            {
                if cancel.is_cancelled() {
                    return Err(CopyError::Cancelled);
                }
                return Err(CopyError::UrlChanged {
                    url: spec.to_owned(),
                });
            }
        } else {
            head = Some(actual);
        }
    }
    if expected_commit.is_some() || keyed_commit.is_some() {
        let actual = match head {
            Some(actual) => actual,
            None => head_commit(url, dest, cancel)?,
        };
        if let Some(expected) = expected_commit
            && (expected.is_empty() || !actual.starts_with(&expected.to_ascii_lowercase()))
        {
            return Err(CopyError::ChecksumMismatch {
                url: spec.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
        // A sha256 repository's commit ids are 64 digits: 40 given are a
        // prefix.
        if keyed_commit.is_some_and(|keyed| !actual.starts_with(keyed)) {
            return Err(CopyError::UrlChanged {
                url: spec.to_owned(),
            });
        }
    }
    if !keep_git_dir {
        remove_git_dirs(dest).map_err(|source| CopyError::Io {
            what: format!("remove .git of the checkout of {url}"),
            source,
        })?;
    }
    let root = match &src.subdir {
        Some(sub) => {
            if sub.split('/').any(|c| c == "..") {
                return Err(CopyError::Git {
                    url: url.to_owned(),
                    reason: format!("subdirectory {sub:?} leaves the repository"),
                });
            }
            let dir = dest.join(sub);
            // A link on the way (`link -> /`) must not lead out of the
            // checkout: the resolved directory has to stay inside it.
            let inside = match (std::fs::canonicalize(&dir), std::fs::canonicalize(dest)) {
                (Ok(resolved), Ok(top)) => resolved.starts_with(&top),
                _ => true, // Missing: reported below.
            };
            if !inside {
                return Err(CopyError::Git {
                    url: url.to_owned(),
                    reason: format!("subdirectory {sub:?} leaves the repository through a link"),
                });
            }
            let meta = std::fs::metadata(&dir);
            if !meta.is_ok_and(|m| m.is_dir()) {
                return Err(CopyError::Git {
                    url: url.to_owned(),
                    reason: format!("subdirectory {sub:?} is not a directory in the repository"),
                });
            }
            dir
        }
        None => dest.to_path_buf(),
    };
    Ok(root)
}

/// Removes `.git` (a directory, or a submodule's `.git` file) at the top
/// and in every directory below.
fn remove_git_dirs(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path = entry.path();
        if entry.file_name() == ".git" {
            if ty.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        } else if ty.is_dir() {
            remove_git_dirs(&path)?;
        }
    }
    Ok(())
}

/// Downloads `url` (http or https, TLS roots as for ADD) into an unnamed
/// temp file, positioned at its start.
pub fn download(url: &str, cancel: &CancelHandle) -> Result<File, CopyError> {
    let fetcher = Fetcher::new(url.starts_with("https://"))?;
    Ok(fetcher.fetch(url, None, cancel)?.file)
}

/// Unpacks a build context sent as a tar (plain, gzip, bzip2, xz or
/// zstd, told apart by its first bytes) into the existing directory `dest`.
/// `what` names the tar in errors. Names that leave `dest`, devices and
/// owners are refused or dropped as for layers.
pub fn unpack_context_tar(
    mut input: impl Read + Send,
    dest: &Path,
    what: &str,
) -> Result<(), CopyError> {
    let mut magic = [0u8; 6];
    let mut got = 0;
    while got < magic.len() {
        match input.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(CopyError::ArchiveIo {
                    archive: what.to_owned(),
                    what: "read".to_owned(),
                    source,
                });
            }
        }
    }
    let head = magic[..got].to_vec();
    let input = BufReader::with_capacity(256 * 1024, io::Cursor::new(head).chain(input));
    let reader: Box<dyn Read + Send> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if magic.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(input))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(input))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(input).map_err(|source| {
                CopyError::ArchiveIo {
                    archive: what.to_owned(),
                    what: "decompress".to_owned(),
                    source,
                }
            })?,
        )
    } else {
        Box::new(input)
    };
    let opts = cache::layer::extract::UnpackOptions {
        allow_devices: false,
        preserve_owner: false,
        whiteouts: cache::layer::extract::WhiteoutMode::Apply,
    };
    cache::layer::extract::unpack_layer(reader, dest, &opts).map_err(|e| CopyError::Archive {
        archive: what.to_owned(),
        reason: error_chain(&e),
    })?;
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fragments() {
        let s = GitSource::parse("https://h/r.git#main:sub/dir/");
        assert_eq!(s.url, "https://h/r.git");
        assert_eq!(s.reference.as_deref(), Some("main"));
        assert_eq!(s.subdir.as_deref(), Some("sub/dir"));
        let s = GitSource::parse("git@h:r.git#:sub");
        assert_eq!(s.reference, None);
        assert_eq!(s.subdir.as_deref(), Some("sub"));
        let s = GitSource::parse("file:///x/r.git");
        assert_eq!(s.reference, None);
        assert_eq!(s.subdir, None);
    }

    #[test]
    fn a_clone_stops_when_cancelled() {
        // A server that accepts and never answers: git would wait forever.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancelHandle::new();
        let canceller = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            canceller.cancel();
        });
        let started = std::time::Instant::now();
        let url = format!("git://127.0.0.1:{port}/repo.git");
        let err =
            git_checkout(&url, &dir.path().join("c"), false, None, None, &cancel).unwrap_err();
        t.join().unwrap();
        drop(listener);
        assert!(matches!(err, CopyError::Cancelled), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Runs git in `dir` as a fixed author; returns its output.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn references_resolve_to_the_commit_a_clone_would_check_out() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo.git");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["commit", "-q", "--allow-empty", "-m", "one"]);
        let one = git(&repo, &["rev-parse", "HEAD"]);
        // An annotated tag, and a tag and a branch of the same name on
        // different commits: `git clone --branch same` takes the branch.
        git(&repo, &["tag", "-a", "-m", "v1", "v1"]);
        git(&repo, &["tag", "same"]);
        git(&repo, &["commit", "-q", "--allow-empty", "-m", "two"]);
        let two = git(&repo, &["rev-parse", "HEAD"]);
        git(&repo, &["branch", "same"]);
        git(&repo, &["branch", "other/main", &one]);
        let url = format!("file://{}", repo.display());
        let cancel = CancelHandle::new();
        let resolve =
            |fragment: &str| resolve_commit(&format!("{url}{fragment}"), &cancel).unwrap();
        assert_eq!(resolve("").as_deref(), Some(two.as_str()));
        assert_eq!(resolve("#:sub").as_deref(), Some(two.as_str()));
        assert_eq!(resolve("#main").as_deref(), Some(two.as_str()));
        assert_eq!(
            resolve("#v1").as_deref(),
            Some(one.as_str()),
            "not the tag object"
        );
        assert_eq!(resolve("#same").as_deref(), Some(two.as_str()));
        // `git clone --branch` takes short names only: a full one is not
        // resolved (the step runs uncached and reports what git says).
        assert_eq!(resolve("#refs/tags/v1"), None);
        assert_eq!(resolve("#no-such-branch"), None);
        // A commit is its own answer; an abbreviated one cannot be asked for.
        assert_eq!(resolve(&format!("#{one}")).as_deref(), Some(one.as_str()));
        assert_eq!(resolve(&format!("#{}", &one[..10])), None);
        // A clone of the reference checks out the commit it resolved to,
        // even once the reference has moved on (fetched by its id), and
        // fails as a changed URL when the repository does not have it.
        let checkout = |keyed: &str| {
            let dest = tempfile::tempdir().unwrap();
            let dir = dest.path().join("c");
            let result = git_checkout(
                &format!("{url}#main"),
                &dir,
                true,
                None,
                Some(keyed),
                &cancel,
            );
            result.map(|_| git(&dir, &["rev-parse", "HEAD"]))
        };
        assert_eq!(checkout(&two).unwrap(), two);
        assert_eq!(
            checkout(&one).unwrap(),
            one,
            "the moved reference's old commit"
        );
        let err = checkout(&"0".repeat(40)).unwrap_err();
        assert!(matches!(err, CopyError::UrlChanged { .. }), "{err:?}");
        // A repository that cannot be asked is an error, not an answer.
        let missing = format!("file://{}/missing.git", dir.path().display());
        assert!(resolve_commit(&missing, &cancel).is_err());
    }

    #[test]
    fn recognises_git_urls() {
        assert!(is_git_url("https://github.com/moby/buildkit.git#v0.10.1"));
        assert!(is_git_url("git@github.com:moby/buildkit.git"));
        assert!(is_git_url("file:///srv/repo.git#main:sub"));
        assert!(!is_git_url("https://example.com/ctx.tar.gz"));
        assert!(!is_git_url("./dir"));
    }
}
