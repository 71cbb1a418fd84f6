//! COPY and ADD: expanded sources (context paths, stages, images, URLs, git,
//! heredocs), the destination relative to WORKDIR, and their flags.

use super::dispatch::{Converter, StageState, clean_path};
use super::env::Expander;
use super::stages::{Plan, SourceRef};
use crate::error::SourceError;
use crate::graph::{CopyOp, CopySource, Op};
use crate::instructions::{self, Command, CopyArgs, SourceArg, chmod};

/// Which of the two instructions is dispatched.
pub(crate) enum CopyKind<'c> {
    Copy(&'c instructions::Copy),
    Add(&'c instructions::Add),
}

impl Converter<'_> {
    pub(crate) fn dispatch_copy(
        &mut self,
        plan: &Plan<'_>,
        st: &mut StageState,
        cmd: &Command,
        kind: CopyKind<'_>,
        sources: &[Option<SourceRef>],
    ) -> Result<(), SourceError> {
        let (args, add): (&CopyArgs, bool) = match &kind {
            CopyKind::Copy(c) => (&c.args, false),
            CopyKind::Add(a) => (&a.args, true),
        };
        let keyword = if add { "ADD" } else { "COPY" };
        let span = cmd.span;
        let loc = self.loc;
        let mut exp = Expander::new(self.lexer, &st.env, loc, span);

        let mut paths = Vec::new();
        let mut inline = Vec::new();
        for s in &args.sources {
            match s {
                SourceArg::Path(p) => paths.push(exp.word(p)?),
                SourceArg::Heredoc {
                    name,
                    content,
                    expand,
                } => {
                    let content = if *expand {
                        exp.raw(content)?
                    } else {
                        content.clone()
                    };
                    inline.push((name.clone(), content));
                }
            }
        }
        let dest_written = exp.word(&args.dest)?;
        let chown = args
            .chown
            .as_deref()
            .map(|c| exp.word(c))
            .transpose()?
            .filter(|c| !c.is_empty());
        let chmod_str = args
            .chmod
            .as_deref()
            .map(|c| exp.word(c))
            .transpose()?
            .filter(|c| !c.is_empty());
        let chmod = chmod_str
            .as_deref()
            .map(|c| chmod::parse(c).map_err(|m| SourceError::new(loc.find(span, "--chmod"), m)))
            .transpose()?;
        let exclude = args
            .exclude
            .iter()
            .map(|e| exp.word(e))
            .collect::<Result<Vec<_>, _>>()?;
        let (checksum, keep_git_dir, unpack, parents) = match &kind {
            CopyKind::Add(a) => (
                a.checksum
                    .as_deref()
                    .map(|c| exp.word(c))
                    .transpose()?
                    .filter(|c| !c.is_empty()),
                a.keep_git_dir.unwrap_or(false),
                a.unpack,
                false,
            ),
            CopyKind::Copy(c) => (None, false, Some(false), c.parents),
        };
        let deps = st.arg_deps(&exp.matched);
        let display = exp.display(&cmd.original);

        if let Some(cs) = &checksum {
            let at = loc.find(span, "--checksum");
            if paths.len() != 1 || !inline.is_empty() {
                return Err(SourceError::new(
                    at,
                    "checksum can't be specified for multiple sources",
                ));
            }
            if !is_http(&paths[0]) && !is_git(&paths[0]) {
                return Err(SourceError::new(
                    at,
                    "checksum requires HTTP(S) or Git sources",
                ));
            }
            // For git, BuildKit's checksum is (a prefix of) the commit.
            let commit = is_git(&paths[0])
                && (7..=64).contains(&cs.len())
                && cs.bytes().all(|b| b.is_ascii_hexdigit());
            if !commit {
                validate_digest(cs).map_err(|m| SourceError::new(at, m))?;
            }
        }

        let mut op_sources = Vec::with_capacity(paths.len() + inline.len());
        let mut reads_input = false;
        let mut context_paths = Vec::new();
        for (raw, p) in args
            .sources
            .iter()
            .filter(|s| matches!(s, SourceArg::Path(_)))
            .zip(&paths)
        {
            let at = || match raw {
                SourceArg::Path(w) => loc.find(span, w),
                SourceArg::Heredoc { .. } => cmd.position,
            };
            if is_git(p) {
                if !add {
                    return Err(SourceError::new(at(), "source can't be a git ref for COPY"));
                }
                op_sources.push(CopySource::Git { url: p.clone() });
            } else if is_http(p) {
                if !add {
                    return Err(SourceError::new(at(), "source can't be a URL for COPY"));
                }
                op_sources.push(CopySource::Url {
                    url: p.clone(),
                    filename: url_filename(p),
                });
            } else {
                reads_input = true;
                context_paths.push(clean_path(&format!("/{p}")));
                let (pivot, path) = match (parents, p.split_once("/./")) {
                    (true, Some((pivot, rest))) => (
                        Some(clean_path(&format!("/{pivot}"))),
                        format!("{pivot}/{rest}"),
                    ),
                    (true, None) => (Some("/".to_string()), p.clone()),
                    (false, _) => (None, p.clone()),
                };
                op_sources.push(CopySource::Path {
                    path: clean_path(&format!("/{path}")),
                    pivot,
                });
            }
        }
        for (name, content) in &inline {
            op_sources.push(CopySource::Inline {
                name: name.clone(),
                content: content.clone(),
            });
        }

        let mut inputs = vec![st.tip];
        if reads_input {
            let from = match &kind {
                CopyKind::Copy(c) if c.from.is_some() => sources.first().cloned().flatten(),
                _ => None,
            };
            let v = match from {
                Some(src) => self.source_vertex(&src, st, plan, "copy", span, "--from")?,
                None => {
                    let mut v = None;
                    for p in &context_paths {
                        v = Some(self.context("context", p));
                    }
                    v.expect("a path source was seen")
                }
            };
            inputs.push(v);
        }

        // Sized for the text and the ` # buildkit` that commit() appends.
        let mut history = String::with_capacity(
            keyword.len()
                + " --parents".len()
                + chown.as_ref().map_or(0, |c| c.len() + " --chown=".len())
                + chmod_str
                    .as_ref()
                    .map_or(0, |c| c.len() + " --chmod=".len())
                + paths.iter().map(|p| p.len() + 1).sum::<usize>()
                + inline.iter().map(|(n, _)| n.len() + 3).sum::<usize>()
                + dest_written.len()
                + 1
                + " # buildkit".len(),
        );
        history.push_str(keyword);
        if parents {
            history.push_str(" --parents");
        }
        if let Some(c) = &chown {
            history.push_str(" --chown=");
            history.push_str(c);
        }
        if let Some(c) = &chmod_str {
            history.push_str(" --chmod=");
            history.push_str(c);
        }
        for p in &paths {
            history.push(' ');
            history.push_str(p);
        }
        for (name, _) in &inline {
            history.push_str(" <<");
            history.push_str(name);
        }
        history.push(' ');
        history.push_str(&dest_written);

        let op = CopyOp {
            add,
            sources: op_sources,
            dest: dest_path(&st.workdir, &dest_written),
            chown,
            chmod,
            link: args.link,
            parents,
            exclude,
            checksum,
            unpack,
            keep_git_dir,
        };
        let description = st.describe(&display);
        st.tip = self.add_vertex(
            Op::Copy(Box::new(op)),
            inputs,
            description,
            Some(st.index),
            Some(cmd.position),
            deps,
        );
        st.image.commit(history, true, true);
        Ok(())
    }
}

/// The destination made absolute against WORKDIR; a trailing `/` (or `/.`,
/// or an empty or `.` destination) keeps meaning "into this directory".
pub(crate) fn dest_path(workdir: &str, dest: &str) -> String {
    let rel = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let joined = if rel.starts_with('/') {
        clean_path(rel)
    } else {
        clean_path(&format!("{workdir}/{rel}"))
    };
    if (rel.ends_with('/') || rel.ends_with("/.")) && joined != "/" {
        format!("{joined}/")
    } else {
        joined
    }
}

fn is_git(src: &str) -> bool {
    if src.starts_with("git://") || src.starts_with("git@") || src.starts_with("ssh://") {
        return true;
    }
    if src.starts_with("http://") || src.starts_with("https://") || src.starts_with("file://") {
        let path = src.split(['#', '?']).next().unwrap_or(src);
        return path.ends_with(".git");
    }
    false
}

fn is_http(src: &str) -> bool {
    (src.starts_with("http://") || src.starts_with("https://")) && !is_git(src)
}

/// The file name a download is saved as: the URL path's last element.
fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    let path = path.split_once('/').map_or("", |(_, p)| p);
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(b) if !b.is_empty() && b != "." => b.to_string(),
        _ => "__unnamed__".into(),
    }
}

/// `algorithm:hex` with a supported algorithm and the right length.
fn validate_digest(d: &str) -> Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("invalid checksum digest format: {d}"));
    };
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm: {alg}")),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("invalid checksum digest format: {d}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(dest_path("/", "/foo2"), "/foo2");
        assert_eq!(dest_path("/", "/"), "/");
        assert_eq!(dest_path("/test1/test2", "./"), "/test1/test2/");
        assert_eq!(dest_path("/test1/test2", "bar/baz"), "/test1/test2/bar/baz");
        assert_eq!(dest_path("/test5/test6", "../"), "/test5/");
        assert_eq!(dest_path("/var/www", ""), "/var/www/");
        assert_eq!(dest_path("/var/www", "."), "/var/www/");
        assert_eq!(dest_path("/", "sample/"), "/sample/");
        assert_eq!(dest_path("/", "."), "/");
    }

    #[test]
    fn source_kinds() {
        assert!(is_git("https://github.com/moby/buildkit.git#v0.10.1"));
        assert!(is_git("git@github.com:moby/buildkit.git"));
        assert!(!is_http("https://github.com/moby/buildkit.git"));
        assert!(is_http("https://example.com/t.tar.gz"));
        assert!(!is_http("local/file"));
        assert_eq!(
            url_filename("https://example.com/a/t.tar.gz?x=1"),
            "t.tar.gz"
        );
        assert_eq!(url_filename("https://example.com/"), "__unnamed__");
        assert_eq!(url_filename("https://example.com"), "__unnamed__");
    }

    #[test]
    fn checksum_digests() {
        assert!(validate_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(
            validate_digest("md5:abc")
                .unwrap_err()
                .starts_with("unsupported digest algorithm")
        );
        assert!(
            validate_digest("abc")
                .unwrap_err()
                .starts_with("invalid checksum digest format")
        );
        assert!(
            validate_digest("sha256:xyz")
                .unwrap_err()
                .starts_with("invalid checksum digest format")
        );
    }
}
