//! Which checks run and whether they fail the build: the `# check=` directive
//! and the `BUILDKIT_DOCKERFILE_CHECK` build arg, parsed as BuildKit does.

use std::collections::BTreeSet;

/// The check settings (`skip=Rule1,Rule2;error=true`, `skip=all`,
/// `experimental=Rule|all`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckConfig {
    /// `skip=all`: no (non-experimental) rule runs.
    pub skip_all: bool,
    /// Rules named in `skip=`.
    pub skip: BTreeSet<String>,
    /// `error=true`: any finding fails the build.
    pub error: bool,
    /// `experimental=all`.
    pub experimental_all: bool,
    /// Experimental rules enabled by name.
    pub experimental: BTreeSet<String>,
}

/// A `# check=` value that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CheckConfigError {
    pub message: String,
}

impl CheckConfig {
    /// Parses `key=value` options separated by `;` (at most three parts, as
    /// BuildKit splits them). Empty text means the defaults.
    pub fn parse(text: &str) -> Result<Self, CheckConfigError> {
        let text = text.trim();
        let mut cfg = Self::default();
        if text.is_empty() {
            return Ok(cfg);
        }
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(CheckConfigError {
                    message: format!("invalid check option {}", crate::parser::go_quote(part)),
                });
            };
            let value = value.trim();
            match key.trim() {
                "skip" => {
                    if value == "all" {
                        cfg.skip_all = true;
                    } else {
                        cfg.skip = value.split(',').map(|r| r.trim().to_string()).collect();
                    }
                }
                "experimental" => {
                    if value == "all" {
                        cfg.experimental_all = true;
                    } else {
                        cfg.experimental = value.split(',').map(|r| r.trim().to_string()).collect();
                    }
                }
                "error" => {
                    cfg.error = parse_go_bool(value).ok_or_else(|| CheckConfigError {
                        message: format!(
                            "failed to parse check option {}: invalid boolean {}",
                            crate::parser::go_quote(part),
                            crate::parser::go_quote(value)
                        ),
                    })?;
                }
                other => {
                    return Err(CheckConfigError {
                        message: format!("invalid check option {}", crate::parser::go_quote(other)),
                    });
                }
            }
        }
        Ok(cfg)
    }

    /// Whether a rule runs under these settings. Experimental rules run only
    /// when enabled, even with `skip=all`; others unless skipped.
    pub fn enabled(&self, rule: &str, experimental: bool) -> bool {
        if experimental {
            self.experimental_all || self.experimental.contains(rule)
        } else {
            !self.skip_all && !self.skip.contains(rule)
        }
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_buildkit_forms() {
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true").unwrap();
        assert!(c.error && !c.skip_all);
        assert!(c.skip.contains("JSONArgsRecommended") && c.skip.contains("StageNameCasing"));
        assert!(!c.enabled("StageNameCasing", false));
        assert!(c.enabled("FromAsCasing", false));

        let c = CheckConfig::parse(" skip=all ").unwrap();
        assert!(c.skip_all && !c.error);
        assert!(!c.enabled("FromAsCasing", false));

        let c = CheckConfig::parse("skip=all;experimental=CopyIgnoredFile").unwrap();
        assert!(c.enabled("CopyIgnoredFile", true));
        assert!(!c.enabled("InvalidDefinitionDescription", true));

        assert_eq!(CheckConfig::parse("").unwrap(), CheckConfig::default());
        assert!(!CheckConfig::default().enabled("CopyIgnoredFile", true));
    }

    #[test]
    fn rejects_bad_options() {
        assert_eq!(
            CheckConfig::parse("error=yes").unwrap_err().message,
            "failed to parse check option \"error=yes\": invalid boolean \"yes\""
        );
        assert_eq!(
            CheckConfig::parse("skip").unwrap_err().message,
            "invalid check option \"skip\""
        );
        assert_eq!(
            CheckConfig::parse("warn=true").unwrap_err().message,
            "invalid check option \"warn\""
        );
    }
}
