//! Build arguments: the predefined platform and proxy args, global ARGs
//! (before the first FROM) and which build args the Dockerfile consumed.

use std::collections::{BTreeMap, BTreeSet};

use super::platform::Platform;
use crate::error::SourceError;
use crate::instructions::{Command, Instruction, Locator};
use crate::shell::Lexer;

/// Proxy variables: they reach RUN without an ARG line and stay out of
/// cache keys.
pub(crate) const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

const PLATFORM_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// Args the builder itself understands: giving them never warns as unused.
pub(crate) fn is_builtin(name: &str) -> bool {
    PROXY_ARGS.contains(&name)
        || PLATFORM_ARGS.contains(&name)
        || name == "TARGETSTAGE"
        || name == "SOURCE_DATE_EPOCH"
        || name.starts_with("BUILDKIT_")
}

/// `KEY=VALUE` proxy settings from the build args, both spellings of each
/// (programs disagree on which they read), in a fixed order.
pub(crate) fn proxy_env(build_args: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for upper in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ] {
        // The upper-case spelling wins when both are given.
        let lower = upper.to_ascii_lowercase();
        let value = build_args.get(upper).or_else(|| build_args.get(&lower));
        if let Some(v) = value {
            out.push((upper.to_string(), v.clone()));
            out.push((lower, v.clone()));
        }
    }
    out
}

/// The global scope: predefined args, then global ARG values in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct GlobalArgs {
    /// Values visible in FROM lines (and to bare `ARG NAME` in stages).
    pub(crate) env: Vec<(String, String)>,
    /// Names of global ARGs the Dockerfile declared (with or without value).
    pub(crate) declared: BTreeSet<String>,
}

/// The predefined platform args (`BUILDPLATFORM` … `TARGETVARIANT`) of
/// `build` and `target`; an explicit build arg overrides the derived value.
pub(crate) fn platform_args(
    build_args: &BTreeMap<String, String>,
    target: &Platform,
    build: &Platform,
) -> Vec<(String, String)> {
    [
        ("BUILDPLATFORM", build.to_string()),
        ("BUILDOS", build.os.clone()),
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", build.variant_str().to_string()),
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant_str().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| arg_or(build_args, k, v))
    .collect()
}

/// `key` with its build arg's value if one was given, else `derived`.
fn arg_or(build_args: &BTreeMap<String, String>, key: &str, derived: String) -> (String, String) {
    (
        key.to_string(),
        build_args.get(key).cloned().unwrap_or(derived),
    )
}

impl GlobalArgs {
    /// The predefined args; an explicit build arg overrides the derived value.
    pub(crate) fn predefined(
        build_args: &BTreeMap<String, String>,
        target: &Platform,
        build: &Platform,
        target_stage: &str,
    ) -> Self {
        let mut env = platform_args(build_args, target, build);
        env.push(arg_or(build_args, "TARGETSTAGE", target_stage.to_string()));
        Self {
            env,
            declared: BTreeSet::new(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, key: &str, value: String) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.env.push((key.to_string(), value)),
        }
    }

    /// Applies the global ARG lines: a build arg replaces the default (which
    /// is then never expanded); otherwise the default is expanded with the
    /// global values defined so far.
    pub(crate) fn declare(
        &mut self,
        meta_args: &[Command],
        build_args: &BTreeMap<String, String>,
        lexer: &Lexer,
        loc: &Locator,
    ) -> Result<(), SourceError> {
        for cmd in meta_args {
            let Instruction::Arg { args } = &cmd.instruction else {
                continue;
            };
            for def in args {
                self.declared.insert(def.key.clone());
                let value = match (build_args.get(&def.key), &def.value) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(default)) => {
                        let p = lexer.process_word(default, &self.env).map_err(|e| {
                            SourceError::new(loc.find(cmd.span, default), e.message)
                        })?;
                        Some(p.value)
                    }
                    (None, None) => None,
                };
                if let Some(v) = value {
                    self.set(&def.key, v);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predefined_args_follow_platforms_and_overrides() {
        let mut build_args = BTreeMap::new();
        build_args.insert("TARGETOS".to_string(), "freebsd".to_string());
        let target: Platform = "darwin/ppc64le".parse().unwrap();
        let g = GlobalArgs::predefined(&build_args, &target, &Platform::linux_amd64(), "default");
        assert_eq!(g.get("TARGETPLATFORM"), Some("darwin/ppc64le"));
        assert_eq!(g.get("TARGETOS"), Some("freebsd"));
        assert_eq!(g.get("TARGETARCH"), Some("ppc64le"));
        assert_eq!(g.get("TARGETVARIANT"), Some(""));
        assert_eq!(g.get("BUILDPLATFORM"), Some("linux/amd64"));
        assert_eq!(g.get("TARGETSTAGE"), Some("default"));
    }

    #[test]
    fn proxies_in_both_spellings() {
        let mut build_args = BTreeMap::new();
        build_args.insert("http_proxy".to_string(), "http://p:3128".to_string());
        build_args.insert("NO_PROXY".to_string(), "localhost".to_string());
        let env = proxy_env(&build_args);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"]);
        assert!(is_builtin("https_proxy") && is_builtin("TARGETARCH") && !is_builtin("FOO"));
    }
}
