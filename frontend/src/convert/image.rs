//! The image config each stage produces: docker/OCI JSON field names, history
//! entries worded like BuildKit's.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::platform::{DEFAULT_PATH, Platform};

/// An image config (`application/vnd.oci.image.config.v1+json` with docker's
/// extensions: Healthcheck, Shell, OnBuild). Serializes to the same JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    /// The base image's layers; the solver appends the stage's own.
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// The `config` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub working_dir: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub shell: Vec<String>,
    #[serde(
        default,
        rename = "OnBuild",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub on_build: Vec<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `{}` in JSON (the value type of ExposedPorts and Volumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Empty {}

/// HEALTHCHECK settings; durations in nanoseconds, zero meaning "inherit".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// `rootfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Cow<'static, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// The comment BuildKit puts on the history entries it writes.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

impl ImageConfig {
    /// The config of `FROM scratch` (and of a base that could not be resolved).
    pub fn empty(platform: &Platform) -> Self {
        let mut img = ImageConfig {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..ImageConfig::default()
        };
        img.config.working_dir = "/".into();
        img.config.env = vec![format!("PATH={DEFAULT_PATH}")];
        img
    }

    /// Adds a history entry; RUN/COPY/ADD (steps that leave a layer through
    /// the build state) get BuildKit's ` # buildkit` suffix.
    pub(crate) fn commit(&mut self, created_by: String, with_layer: bool, from_state: bool) {
        let mut created_by = created_by;
        if from_state {
            created_by.push_str(" # buildkit");
        }
        self.history.push(History {
            created: None,
            created_by,
            author: None,
            comment: Some(Cow::Borrowed(HISTORY_COMMENT)),
            empty_layer: !with_layer,
        });
    }

    /// Sets `KEY=VALUE` in Env, replacing an existing entry in place.
    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        set_env_list(&mut self.config.env, key, value);
    }

    pub(crate) fn env_value(&self, key: &str) -> Option<&str> {
        self.config.env.iter().rev().find_map(|e| {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            (k == key).then_some(v)
        })
    }
}

pub(crate) fn set_env_list(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    for e in env.iter_mut() {
        if e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key {
            *e = entry;
            return;
        }
    }
    env.push(entry);
}

/// Go's `strconv.Quote`.
#[cfg(test)]
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_go_quote(&mut out, s);
    out
}

/// Go's `strconv.Quote` of `s`, appended to `out`.
fn push_go_quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control()
                || matches!(
                    c,
                    '\u{a0}' | '\u{2028}' | '\u{2029}' | '\u{200b}' | '\u{feff}'
                ) =>
            {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub(crate) fn go_quote_list(items: &[String]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_go_quote(&mut out, s);
    }
    out.push(']');
    out
}

/// Go's `%v` of a `[]string`: `[a b]`.
pub(crate) fn go_list(items: &[String]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 1).sum::<usize>());
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(s);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        assert_eq!(go_quote("a \"b\"\n"), "\"a \\\"b\\\"\\n\"");
        assert_eq!(go_quote("\u{1}é"), "\"\\x01é\"");
        assert_eq!(
            go_quote_list(&["/bin/sh".into(), "-c".into(), "echo hi".into()]),
            "[\"/bin/sh\" \"-c\" \"echo hi\"]"
        );
        assert_eq!(
            go_list(&["/bin/bash".into(), "-c".into()]),
            "[/bin/bash -c]"
        );
    }

    #[test]
    fn config_json_round_trip_with_docker_names() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","A=1"],"Cmd":["sh"],
            "WorkingDir":"/app","ExposedPorts":{"80/tcp":{}},"OnBuild":["RUN x"],"Labels":null,"Volumes":null,
            "Healthcheck":{"Test":["CMD","true"],"Interval":1000000000}},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]},
            "history":[{"created_by":"/bin/sh -c #(nop) ADD file","empty_layer":true}]}"#;
        let img: ImageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(img.config.env, ["PATH=/bin", "A=1"]);
        assert_eq!(img.config.on_build, ["RUN x"]);
        assert_eq!(
            img.config.healthcheck.as_ref().unwrap().interval,
            1_000_000_000
        );
        assert_eq!(img.env_value("A"), Some("1"));
        assert!(img.history[0].empty_layer);
        let out = serde_json::to_value(&img).unwrap();
        assert_eq!(
            out["config"]["ExposedPorts"]["80/tcp"],
            serde_json::json!({})
        );
        assert_eq!(out["rootfs"]["diff_ids"][0], "sha256:aa");
        assert!(out["config"].get("Labels").is_none());
    }

    #[test]
    fn set_env_replaces_in_place() {
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        set_env_list(&mut env, "A", "3");
        set_env_list(&mut env, "C", "");
        assert_eq!(env, ["A=3", "B=2", "C="]);
    }
}
