//! Build checks: BuildKit's Dockerfile lint rules that need no build
//! (`builder build --check`, `# check=skip=…;error=true`).
//!
//! Separate from compilation on purpose: the checks walk the typed
//! instructions with their own ARG/ENV scoping, so a build pays for them
//! only when it prints them. Rule names, messages and documentation links
//! are BuildKit's (docs.docker.com/reference/build-checks/).

mod config;
mod reference;
mod rules;

use std::collections::{BTreeMap, BTreeSet};

pub use self::config::{CheckConfig, CheckConfigError};
use crate::convert::Platform;
use crate::dockerignore::PatternMatcher;
use crate::error::{Position, SourceError};

/// A documented rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    pub url: &'static str,
    /// Runs only when enabled with `experimental=` (as in BuildKit).
    pub experimental: bool,
}

macro_rules! rule {
    ($name:literal, $slug:literal, $desc:literal) => {
        rule!($name, $slug, $desc, false)
    };
    ($name:literal, $slug:literal, $desc:literal, $exp:literal) => {
        Rule {
            name: $name,
            description: $desc,
            url: concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/"),
            experimental: $exp,
        }
    };
}

/// Every rule evaluated here.
pub const RULES: &[Rule] = &[
    rule!(
        "StageNameCasing",
        "stage-name-casing",
        "Stage names should be lowercase"
    ),
    rule!(
        "FromAsCasing",
        "from-as-casing",
        "The 'as' keyword should match the case of the 'from' keyword"
    ),
    rule!(
        "NoEmptyContinuation",
        "no-empty-continuation",
        "Empty continuation lines will become errors in a future release"
    ),
    rule!(
        "ConsistentInstructionCasing",
        "consistent-instruction-casing",
        "All commands within the Dockerfile should use the same casing (either upper or lower)"
    ),
    rule!(
        "DuplicateStageName",
        "duplicate-stage-name",
        "Stage names should be unique"
    ),
    rule!(
        "ReservedStageName",
        "reserved-stage-name",
        "Reserved words should not be used as stage names"
    ),
    rule!(
        "JSONArgsRecommended",
        "json-args-recommended",
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
    ),
    rule!(
        "MaintainerDeprecated",
        "maintainer-deprecated",
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
    ),
    rule!(
        "UndefinedArgInFrom",
        "undefined-arg-in-from",
        "FROM command must use declared ARGs"
    ),
    rule!(
        "WorkdirRelativePath",
        "workdir-relative-path",
        "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
    ),
    rule!(
        "UndefinedVar",
        "undefined-var",
        "Variables should be defined before their use"
    ),
    rule!(
        "MultipleInstructionsDisallowed",
        "multiple-instructions-disallowed",
        "Multiple instructions of the same type should not be used in the same stage"
    ),
    rule!(
        "LegacyKeyValueFormat",
        "legacy-key-value-format",
        "Legacy key/value format with whitespace separator should not be used"
    ),
    rule!(
        "RedundantTargetPlatform",
        "redundant-target-platform",
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
    ),
    rule!(
        "SecretsUsedInArgOrEnv",
        "secrets-used-in-arg-or-env",
        "Sensitive data should not be used in the ARG or ENV commands"
    ),
    rule!(
        "InvalidDefaultArgInFrom",
        "invalid-default-arg-in-from",
        "Default value for global ARG results in an empty or invalid base image name"
    ),
    rule!(
        "FromPlatformFlagConstDisallowed",
        "from-platform-flag-const-disallowed",
        "FROM --platform flag should not use a constant value"
    ),
    rule!(
        "ExposeProtoCasing",
        "expose-proto-casing",
        "Protocol in EXPOSE instruction should be lowercase"
    ),
    rule!(
        "ExposeInvalidFormat",
        "expose-invalid-format",
        "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
    ),
    rule!(
        "InvalidDefinitionDescription",
        "invalid-definition-description",
        "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
        true
    ),
    rule!(
        "CopyIgnoredFile",
        "copy-ignored-file",
        "Attempting to Copy file that is excluded by .dockerignore",
        true
    ),
];

/// Looks a rule up by name.
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name == name)
}

/// What the checks need besides the Dockerfile.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions<'a> {
    /// `--build-arg` values; `BUILDKIT_DOCKERFILE_CHECK` overrides `# check=`.
    pub build_args: BTreeMap<String, String>,
    /// The context's .dockerignore, for CopyIgnoredFile.
    pub ignore: Option<&'a PatternMatcher>,
    /// The platform built for (`--platform`); the build platform when none.
    pub platform: Option<Platform>,
    /// The platform the build runs on (linux/amd64 by default).
    pub build_platform: Platform,
    /// The environment (`KEY`, `VALUE`) of base images by reference as
    /// written after ARG expansion, when known. An image not listed is
    /// taken to define only `PATH`, as every image built here does.
    pub image_env: BTreeMap<String, Vec<(String, String)>>,
}

/// One rule violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    pub message: String,
    /// Where the offending instruction starts.
    pub position: Position,
    pub url: &'static str,
}

impl Finding {
    /// `PATH:LINE:COL: RuleName: message`, the line and a caret.
    pub fn render(&self, path: &str, source: &[u8]) -> String {
        SourceError::new(self.position, format!("{}: {}", self.rule, self.message))
            .render(path, source)
    }
}

/// The result of running the checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckReport {
    /// In Dockerfile order.
    pub findings: Vec<Finding>,
    /// The settings in force.
    pub config: CheckConfig,
}

impl CheckReport {
    /// Every finding rendered, in order.
    pub fn render(&self, path: &str, source: &[u8]) -> String {
        self.findings
            .iter()
            .map(|f| f.render(path, source))
            .collect()
    }

    /// With `error=true` and any finding: BuildKit's failure message
    /// (`lint violation found for rules: A, B`).
    pub fn error(&self) -> Option<String> {
        if !self.config.error || self.findings.is_empty() {
            return None;
        }
        let rules: BTreeSet<&str> = self.findings.iter().map(|f| f.rule).collect();
        Some(format!(
            "lint violation found for rules: {}",
            rules.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Why the checks could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The Dockerfile does not parse (the build would fail the same way).
    #[error(transparent)]
    Dockerfile(#[from] SourceError),
    /// A bad `# check=` directive.
    #[error("{position}: invalid check directive: {source}", position = DirectivePos(*.line))]
    Directive {
        line: usize,
        #[source]
        source: CheckConfigError,
    },
    /// A bad `BUILDKIT_DOCKERFILE_CHECK` build arg.
    #[error("invalid BUILDKIT_DOCKERFILE_CHECK build arg")]
    BuildArg(#[source] CheckConfigError),
}

impl CheckError {
    /// For a person: a Dockerfile or directive error as `PATH:LINE:COL:
    /// message` with the line and a caret, a build arg error on one line.
    pub fn render(&self, path: &str, source: &[u8]) -> String {
        match self {
            CheckError::Dockerfile(e) => e.render(path, source),
            CheckError::Directive {
                line,
                source: cause,
            } => SourceError::new(
                Position::new(*line, 1),
                format!("invalid check directive: {cause}"),
            )
            .render(path, source),
            CheckError::BuildArg(cause) => format!("{self}: {cause}\n"),
        }
    }
}

struct DirectivePos(usize);

impl std::fmt::Display for DirectivePos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:1", self.0)
    }
}

/// The build arg that overrides the `# check=` directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// Parses `src` and evaluates every enabled rule.
pub fn run(src: &[u8], opts: &CheckOptions<'_>) -> Result<CheckReport, CheckError> {
    let ast = crate::parser::parse(src)?;
    let config = match opts.build_args.get(CHECK_BUILD_ARG) {
        Some(v) => CheckConfig::parse(v).map_err(CheckError::BuildArg)?,
        None => match ast.directives.iter().find(|d| d.name == "check") {
            Some(d) => CheckConfig::parse(&d.value).map_err(|source| CheckError::Directive {
                line: d.line,
                source,
            })?,
            None => CheckConfig::default(),
        },
    };
    let mut findings = rules::evaluate(ast, src, opts, &config)?;
    findings.sort_by_key(|f| f.position);
    Ok(CheckReport { findings, config })
}
