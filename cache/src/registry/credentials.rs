//! Registry credentials from docker's `config.json`, as docker reads them.
//!
//! The file is `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
//! For a registry, `credHelpers[registry]` names a helper, else `credsStore`
//! does, else `auths[registry].auth` holds base64 `user:password`. A helper
//! is the program `docker-credential-<name>`, speaking JSON on stdin/stdout
//! (`get`, `store`, `erase`). Docker Hub's key is
//! `https://index.docker.io/v1/`; other keys may carry a scheme or path,
//! which lookups ignore. `login` and `logout` rewrite the file atomically and
//! keep every field they do not know.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

/// Docker Hub's key in `config.json`.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and password (or token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: errors and logs may show this.
        write!(f, "Credentials({:?}, <secret>)", self.username)
    }
}

/// An error reading or writing credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid docker config {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid auth entry for {registry} in {path}: not base64 of user:password")]
    BadAuth { registry: String, path: PathBuf },
    #[error("credential helper docker-credential-{helper} failed for {registry}: {message}")]
    Helper {
        helper: String,
        registry: String,
        message: String,
    },
    #[error("cannot find the home directory (set HOME or DOCKER_CONFIG)")]
    NoHome,
}

/// Docker's config file: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn config_path() -> Result<PathBuf, CredentialsError> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(CredentialsError::NoHome)?;
    Ok(PathBuf::from(home).join(".docker").join("config.json"))
}

/// The key of a registry in `config.json`.
pub fn config_key(registry: &str) -> String {
    if is_docker_hub(registry) {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// A config key reduced to its host: `https://host:5000/v1/` → `host:5000`.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

fn same_registry(key: &str, registry: &str) -> bool {
    let host = key_host(key);
    host == registry || (is_docker_hub(host) && is_docker_hub(registry))
}

/// Reads the config file; a missing file is an empty config.
fn read_config(path: &Path) -> Result<Map<String, Value>, CredentialsError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    serde_json::from_slice(&data).map_err(|source| CredentialsError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn write_config(path: &Path, config: &Map<String, Value>) -> Result<(), CredentialsError> {
    let werr = |source| CredentialsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(werr)?;
    let mut bytes = serde_json::to_vec_pretty(config).expect("a JSON map serialises");
    bytes.push(b'\n');
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.json-")
        .tempfile_in(dir)
        .map_err(werr)?;
    // Passwords inside: readable by the owner only, as docker does.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(werr)?;
    tmp.write_all(&bytes).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

/// The helper for a registry: `credHelpers[registry]`, else `credsStore`.
fn helper_for(config: &Map<String, Value>, registry: &str) -> Option<String> {
    if let Some(Value::Object(helpers)) = config.get("credHelpers") {
        for (key, v) in helpers {
            if same_registry(key, registry) {
                if let Some(h) = v.as_str().filter(|h| !h.is_empty()) {
                    return Some(h.to_string());
                }
            }
        }
    }
    config
        .get("credsStore")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

fn run_helper(
    helper: &str,
    action: &str,
    input: &str,
    registry: &str,
) -> Result<Option<String>, CredentialsError> {
    let fail = |message: String| CredentialsError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        message,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        // The protocol's answer for "no entry" on `get` and `erase`.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(fail(if stderr.is_empty() { stdout } else { stderr }));
    }
    Ok(Some(stdout))
}

/// The credentials stored for `registry`, if any.
pub fn lookup(registry: &str) -> Result<Option<Credentials>, CredentialsError> {
    let path = config_path()?;
    lookup_in(&path, registry)
}

/// [`lookup`] in a given config file.
pub fn lookup_in(path: &Path, registry: &str) -> Result<Option<Credentials>, CredentialsError> {
    let config = read_config(path)?;
    if let Some(helper) = helper_for(&config, registry) {
        let Some(out) = run_helper(&helper, "get", &config_key(registry), registry)? else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&out).map_err(|e| CredentialsError::Helper {
            helper: helper.clone(),
            registry: registry.to_string(),
            message: format!("invalid answer: {e}"),
        })?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (username, secret) = (field("Username"), field("Secret"));
        if secret.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Credentials { username, secret }));
    }
    let Some(Value::Object(auths)) = config.get("auths") else {
        return Ok(None);
    };
    // An exact key first, then one that differs only by scheme or path.
    let entry = auths.get(&config_key(registry)).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| same_registry(k, registry))
            .map(|(_, v)| v)
    });
    let Some(entry) = entry else {
        return Ok(None);
    };
    let bad = || CredentialsError::BadAuth {
        registry: registry.to_string(),
        path: path.to_path_buf(),
    };
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let decoded = BASE64.decode(auth.trim()).map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            secret: pass.to_string(),
        }));
    }
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if !field("password").is_empty() {
        return Ok(Some(Credentials {
            username: field("username"),
            secret: field("password"),
        }));
    }
    Ok(None)
}

/// Stores credentials for `registry` (in its helper when one is configured).
/// Returns the file written or the helper used, for the user.
pub fn store(registry: &str, creds: &Credentials) -> Result<String, CredentialsError> {
    let path = config_path()?;
    let mut config = read_config(&path)?;
    let key = config_key(registry);
    if let Some(helper) = helper_for(&config, registry) {
        let input = serde_json::json!({
            "ServerURL": key,
            "Username": creds.username,
            "Secret": creds.secret,
        })
        .to_string();
        run_helper(&helper, "store", &input, registry)?;
        return Ok(format!("docker-credential-{helper}"));
    }
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    let auths = auths.as_object_mut().expect("made an object above");
    // Other spellings of the same registry would shadow the new entry.
    auths.retain(|k, _| k == &key || !same_registry(k, registry));
    let auth = BASE64.encode(format!("{}:{}", creds.username, creds.secret));
    auths.insert(key, serde_json::json!({ "auth": auth }));
    write_config(&path, &config)?;
    Ok(path.display().to_string())
}

/// Removes the credentials of `registry`; returns whether there were any.
pub fn erase(registry: &str) -> Result<bool, CredentialsError> {
    let path = config_path()?;
    let mut config = read_config(&path)?;
    let mut found = false;
    if let Some(helper) = helper_for(&config, registry) {
        found |= run_helper(&helper, "erase", &config_key(registry), registry)?.is_some();
    }
    if let Some(Value::Object(auths)) = config.get_mut("auths") {
        let before = auths.len();
        auths.retain(|k, _| !same_registry(k, registry));
        if auths.len() != before {
            found = true;
            write_config(&path, &config)?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_entries_are_found_by_host_whatever_their_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let a = BASE64.encode("alice:s3cret");
        let b = BASE64.encode("bob:pw:with:colons");
        fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{a}"}},
                "https://index.docker.io/v1/":{{"auth":"{b}"}}}}}}"#
            ),
        )
        .unwrap();
        let c = lookup_in(&path, "reg.example:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.as_str()),
            ("alice", "s3cret")
        );
        let c = lookup_in(&path, "docker.io").unwrap().unwrap();
        assert_eq!(c.secret, "pw:with:colons");
        assert!(lookup_in(&path, "other:5000").unwrap().is_none());
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn a_missing_config_has_no_credentials_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(lookup_in(&path, "r:1").unwrap().is_none());
        fs::write(&path, "{not json").unwrap();
        let err = lookup_in(&path, "r:1").unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
