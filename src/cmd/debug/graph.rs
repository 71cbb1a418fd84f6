//! `builder debug graph`: compile a Dockerfile and print its build graph.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use frontend::convert::{CompileOptions, NoResolver, Platform};

/// Output format of `debug graph`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum GraphFormat {
    /// Graphviz DOT: vertices labelled with their description, edges with the input slot.
    #[default]
    Dot,
    /// The compiled graph, stages and image configs as JSON.
    Json,
}

/// What `debug graph` was asked to do.
pub(crate) struct GraphArgs {
    pub(crate) file: Option<PathBuf>,
    pub(crate) target: Option<String>,
    pub(crate) build_args: Vec<String>,
    pub(crate) platform: Option<String>,
    pub(crate) format: GraphFormat,
    pub(crate) context: PathBuf,
}

/// `--build-arg K=V`, or `K` alone taking its value from the environment (as
/// docker does; an unset variable passes nothing).
pub(crate) fn parse_build_args(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some(("", _)) => anyhow::bail!("invalid build arg {a:?}: empty name"),
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn run(args: GraphArgs) -> anyhow::Result<ExitCode> {
    // `-f` is relative to the current directory, as in docker; the default
    // is the context's Dockerfile.
    let (shown, bytes) = match &args.file {
        Some(f) if f.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the Dockerfile from stdin")?;
            ("-".to_string(), buf)
        }
        Some(f) => (f.display().to_string(), read(f)?),
        None => {
            let f = args.context.join("Dockerfile");
            (f.display().to_string(), read(&f)?)
        }
    };
    let platform = match &args.platform {
        Some(p) => Some(
            p.parse::<Platform>()
                .with_context(|| format!("--platform {p}"))?,
        ),
        None => None,
    };
    let opts = CompileOptions {
        target: args.target.clone(),
        build_args: parse_build_args(&args.build_args)?,
        platform,
        dockerfile_name: shown.clone(),
        ..CompileOptions::default()
    };
    // No image store yet: every base stays an unresolved source.
    let compiled = match frontend::convert::compile(&bytes, &opts, &NoResolver) {
        Ok(c) => c,
        Err(err) => {
            eprint!("{}", err.render(&shown, &bytes));
            return Ok(ExitCode::from(1));
        }
    };
    for w in &compiled.warnings {
        match w.position {
            Some(p) => eprintln!("{shown}:{}:{}: warning: {}", p.line, p.column, w.message),
            None => eprintln!("warning: {}", w.message),
        }
    }
    let out = match args.format {
        GraphFormat::Dot => compiled.graph.to_dot(),
        GraphFormat::Json => {
            // Through a Value so that keys come out sorted.
            let value = serde_json::to_value(&compiled).context("serializing the graph")?;
            let mut s = serde_json::to_string_pretty(&value).context("serializing the graph")?;
            s.push('\n');
            s
        }
    };
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("writing the graph")?;
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_with_and_without_values() {
        let raw = vec![
            "A=1".to_string(),
            "B=".to_string(),
            "C=x=y".to_string(),
            "PATH".to_string(),
            "BUILDER_TEST_SURELY_UNSET_VARIABLE".to_string(),
        ];
        let args = parse_build_args(&raw).unwrap();
        assert_eq!(args.get("A").map(String::as_str), Some("1"));
        assert_eq!(args.get("B").map(String::as_str), Some(""));
        assert_eq!(args.get("C").map(String::as_str), Some("x=y"));
        assert_eq!(args.get("PATH"), std::env::var("PATH").ok().as_ref());
        assert!(!args.contains_key("BUILDER_TEST_SURELY_UNSET_VARIABLE"));
        assert!(parse_build_args(&["=v".to_string()]).is_err());
    }
}
