//! `RUN --mount=...`: the CSV option list, its keys and their validation.

use std::borrow::Cow;

use serde::Serialize;

use super::suggest;
use crate::graph::CacheSharing;

/// The type of a `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            _ => return None,
        })
    }
}

/// One parsed `--mount`, options as written (after expansion) with defaults
/// that do not depend on the build state applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub readonly: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharing: Option<CacheSharing>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// A mount problem and the text to point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountError {
    pub(crate) message: String,
    pub(crate) token: String,
}

const ALL_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "mode",
    "uid",
    "gid",
    "size",
    "env",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
];

/// How values are treated.
pub(crate) enum Values<'a> {
    /// At instruction level: values are not expanded yet. The mount is only
    /// checked when no value needs expansion (`Ok(None)` otherwise).
    Check,
    /// At conversion: every value goes through the expander first.
    Expand(&'a mut dyn FnMut(&str) -> Result<String, String>),
}

fn needs_expansion(v: &str) -> bool {
    v.contains(['$', '\\', '\'', '"'])
}

/// Parses one `--mount` value.
pub(crate) fn parse(value: &str, mut values: Values<'_>) -> Result<Option<Mount>, MountError> {
    let fields = split_csv(value).map_err(|e| MountError {
        message: format!("failed to parse csv mounts: {e}"),
        token: value.to_string(),
    })?;
    if let Values::Check = values {
        for f in &fields {
            if let Some((k, v)) = f.split_once('=') {
                if k.eq_ignore_ascii_case("from") && has_variable(v) {
                    return Err(MountError {
                        message:
                            "'from' doesn't support variable expansion, define alias stage instead"
                                .into(),
                        token: f.to_string(),
                    });
                }
            }
        }
        if fields
            .iter()
            .any(|f| f.split_once('=').is_some_and(|(_, v)| needs_expansion(v)))
        {
            return Ok(None);
        }
    }

    let mut m = Mount {
        kind: MountType::Bind,
        from: None,
        source: None,
        target: None,
        readonly: false,
        id: None,
        sharing: None,
        required: false,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        env: None,
    };
    let mut ro_auto = true;
    for field in &fields {
        let err = |message: String| MountError {
            message,
            token: field.to_string(),
        };
        let Some((key, raw)) = field.split_once('=') else {
            match canonical_key(field).unwrap_or("") {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind, MountType::Secret | MountType::Ssh) => {
                    m.required = true
                }
                "required" => {
                    return Err(err(format!(
                        "unexpected key 'required' for mount type '{}'",
                        m.kind.as_str()
                    )));
                }
                _ => {
                    return Err(err(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )));
                }
            }
            continue;
        };
        let key_lower;
        let key = match canonical_key(key) {
            Some(k) => k,
            None => {
                key_lower = key.to_ascii_lowercase();
                key_lower.as_str()
            }
        };
        let value: Cow<'_, str> = match &mut values {
            Values::Check => Cow::Borrowed(raw),
            Values::Expand(f) => Cow::Owned(f(raw).map_err(&err)?),
        };
        let bad_value = || err(format!("invalid value for {key}: {value}"));
        match key {
            "type" => {
                let t = value.to_ascii_lowercase();
                m.kind = MountType::parse(&t).ok_or_else(|| {
                    err(suggest::with_hint(
                        format!("unsupported mount type {value:?}"),
                        &t,
                        ["bind", "cache", "tmpfs", "secret", "ssh"],
                        true,
                    ))
                })?;
            }
            "from" => m.from = Some(value.into_owned()),
            "source" | "src" => m.source = Some(value.into_owned()),
            "target" | "dst" | "destination" => m.target = Some(value.into_owned()),
            "readonly" | "ro" => {
                m.readonly = parse_bool(&value).ok_or_else(bad_value)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&value).ok_or_else(bad_value)?;
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.kind, MountType::Secret | MountType::Ssh) {
                    return Err(err(format!(
                        "unexpected key 'required' for mount type '{}'",
                        m.kind.as_str()
                    )));
                }
                m.required = parse_bool(&value).ok_or_else(bad_value)?;
            }
            "size" => {
                if m.kind != MountType::Tmpfs {
                    return Err(err(format!(
                        "unexpected key 'size' for mount type '{}'",
                        m.kind.as_str()
                    )));
                }
                m.size = Some(parse_ram_bytes(&value).ok_or_else(bad_value)?);
            }
            "id" => m.id = Some(value.into_owned()),
            "sharing" => {
                m.sharing = Some(match value.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    other => {
                        return Err(err(suggest::with_hint(
                            format!("unsupported sharing value {value:?}"),
                            other,
                            ["shared", "private", "locked"],
                            true,
                        )));
                    }
                });
            }
            "mode" => {
                let mode = u32::from_str_radix(&value, 8)
                    .map_err(|_| err(format!("invalid value {value} for mode")))?;
                m.mode = Some(mode);
            }
            "uid" => {
                m.uid = Some(
                    value
                        .parse()
                        .map_err(|_| err(format!("invalid value {value} for uid")))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    value
                        .parse()
                        .map_err(|_| err(format!("invalid value {value} for gid")))?,
                )
            }
            "env" => m.env = Some(value.into_owned()),
            _ => {
                return Err(err(suggest::with_hint(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    ALL_KEYS.iter().copied(),
                    true,
                )));
            }
        }
    }
    validate(&mut m, ro_auto).map_err(|message| MountError {
        message,
        token: value.to_string(),
    })?;
    Ok(Some(m))
}

fn validate(m: &mut Mount, ro_auto: bool) -> Result<(), String> {
    let kind = m.kind.as_str();
    if !matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    ) {
        if m.mode.is_some() {
            return Err(format!("mode not allowed for {kind:?} type mounts"));
        }
        if m.uid.is_some() {
            return Err(format!("uid not allowed for {kind:?} type mounts"));
        }
        if m.gid.is_some() {
            return Err(format!("gid not allowed for {kind:?} type mounts"));
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        return Err(format!("invalid cache sharing set for {kind} mount"));
    }
    if m.env.is_some() && m.kind != MountType::Secret {
        return Err(format!("env is only allowed for secret mounts, not {kind}"));
    }
    match m.kind {
        MountType::Secret => {
            if m.from.is_some() {
                return Err("secret mount should not have a from".into());
            }
            if m.source.is_none() && m.target.is_none() && m.id.is_none() {
                return Err("invalid secret mount. one of source, target required".into());
            }
            if m.source.is_some() && m.id.is_some() {
                return Err("both source and id can't be set".into());
            }
        }
        MountType::Ssh => {
            if m.from.is_some() {
                return Err("ssh mount should not have a from".into());
            }
        }
        MountType::Tmpfs => {
            if m.from.is_some() {
                return Err("tmpfs mount should not have a from".into());
            }
            if m.target.is_none() {
                return Err("mount target is required for tmpfs mounts".into());
            }
        }
        MountType::Bind | MountType::Cache => {
            if m.target.is_none() {
                return Err(format!("mount target is required for {kind} mounts"));
            }
        }
    }
    Ok(())
}

/// A known key, spelt as in [`ALL_KEYS`], whatever its case.
fn canonical_key(key: &str) -> Option<&'static str> {
    ALL_KEYS
        .iter()
        .copied()
        .find(|k| k.eq_ignore_ascii_case(key))
}

/// The `from=` value of a mount, read without expanding anything.
pub(crate) fn raw_from(value: &str) -> Option<String> {
    split_csv(value).ok()?.into_iter().find_map(|f| {
        let (k, v) = f.split_once('=')?;
        k.eq_ignore_ascii_case("from").then(|| v.to_string())
    })
}

/// `$` followed by anything: the mount's `from` names a stage literally.
fn has_variable(v: &str) -> bool {
    v.find('$').is_some_and(|i| i + 1 < v.len())
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Sizes like `64m`, `1.5GiB`, `4096` (binary multiples, as docker's `RAMInBytes`).
pub(crate) fn parse_ram_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_len);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mul: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    let bytes = value * mul as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return None;
    }
    Some(bytes as u64)
}

/// One CSV record as Go's `encoding/csv` reads it: `,`-separated, a field
/// that starts with `"` is quoted (`""` is a quote), a bare `"` elsewhere is
/// an error.
fn split_csv(s: &str) -> Result<Vec<Cow<'_, str>>, String> {
    let s = s.trim_end_matches(['\r', '\n']);
    if s.is_empty() {
        return Err("EOF".into());
    }
    let mut fields = Vec::new();
    let mut chars = s.char_indices().peekable();
    let mut col = 0usize;
    loop {
        if chars.peek().map(|(_, c)| *c) == Some('"') {
            let mut field = String::new();
            chars.next();
            col += 1;
            loop {
                match chars.next() {
                    Some((_, '"')) => {
                        col += 1;
                        if chars.peek().map(|(_, c)| *c) == Some('"') {
                            chars.next();
                            col += 1;
                            field.push('"');
                        } else {
                            break;
                        }
                    }
                    Some((_, c)) => {
                        col += 1;
                        field.push(c);
                    }
                    None => {
                        return Err(format!(
                            "extraneous or missing \" in quoted-field (column {})",
                            col + 1
                        ));
                    }
                }
            }
            match chars.peek() {
                None | Some((_, ',')) => {}
                Some(_) => {
                    return Err(format!(
                        "extraneous or missing \" in quoted-field (column {})",
                        col + 1
                    ));
                }
            }
            fields.push(Cow::Owned(field));
        } else {
            let start = chars.peek().map_or(s.len(), |(i, _)| *i);
            let mut end = s.len();
            while let Some(&(i, c)) = chars.peek() {
                if c == ',' {
                    end = i;
                    break;
                }
                if c == '"' {
                    return Err(format!("bare \" in non-quoted-field (column {})", col + 1));
                }
                chars.next();
                col += 1;
            }
            fields.push(Cow::Borrowed(&s[start..end]));
        }
        match chars.next() {
            Some((_, ',')) => col += 1,
            _ => break,
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> Result<Mount, String> {
        parse(s, Values::Check)
            .map(|m| m.expect("no expansion needed"))
            .map_err(|e| e.message)
    }

    #[test]
    fn csv_like_go() {
        assert_eq!(split_csv("a,b=c").unwrap(), ["a", "b=c"]);
        assert_eq!(
            split_csv("\"target=/a,b\",ro").unwrap(),
            ["target=/a,b", "ro"]
        );
        assert_eq!(split_csv("\"a\"\"b\"").unwrap(), ["a\"b"]);
        assert_eq!(split_csv("a,").unwrap(), ["a", ""]);
        assert!(split_csv("a=\"b\"").unwrap_err().starts_with("bare \""));
        assert!(split_csv("\"a").is_err());
        assert!(split_csv("").is_err());
    }

    #[test]
    fn defaults_and_options() {
        let m = check("target=/src").unwrap();
        assert_eq!((m.kind, m.readonly), (MountType::Bind, true));
        let m =
            check("type=cache,target=/root/.cache,id=x,sharing=locked,mode=0755,uid=1000,gid=1000")
                .unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert!(!m.readonly);
        assert_eq!(m.sharing, Some(CacheSharing::Locked));
        assert_eq!(
            (m.mode, m.uid, m.gid),
            (Some(0o755), Some(1000), Some(1000))
        );
        let m = check("type=tmpfs,dst=/t,size=128m").unwrap();
        assert_eq!(m.size, Some(128 << 20));
        let m = check("type=secret,id=tok,env=TOKEN,required").unwrap();
        assert!(m.required && m.readonly);
        assert_eq!(m.env.as_deref(), Some("TOKEN"));
        let m = check("type=ssh,required=false").unwrap();
        assert!(!m.required);
        let m = check("type=bind,from=build,source=/out,destination=/in,rw").unwrap();
        assert!(!m.readonly);
        assert_eq!(m.from.as_deref(), Some("build"));
        let m = check("TYPE=Bind,Target=/x,readonly=false").unwrap();
        assert!(!m.readonly);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            check("typ=cache,target=/x").unwrap_err(),
            "unexpected key 'typ' in 'typ=cache' (did you mean type?)"
        );
        assert_eq!(
            check("type=tmp,target=/x").unwrap_err(),
            "unsupported mount type \"tmp\" (did you mean tmpfs?)"
        );
        assert_eq!(
            check("target=/x,required").unwrap_err(),
            "unexpected key 'required' for mount type 'bind'"
        );
        assert_eq!(
            check("target=/x,mode=0700").unwrap_err(),
            "mode not allowed for \"bind\" type mounts"
        );
        assert_eq!(
            check("type=cache,target=/x,sharing=all").unwrap_err(),
            "unsupported sharing value \"all\""
        );
        assert_eq!(
            check("target=/x,sharing=shared").unwrap_err(),
            "invalid cache sharing set for bind mount"
        );
        assert_eq!(
            check("type=secret").unwrap_err(),
            "invalid secret mount. one of source, target required"
        );
        assert_eq!(
            check("type=secret,id=a,src=b").unwrap_err(),
            "both source and id can't be set"
        );
        assert_eq!(
            check("type=cache,target=/x,uid=me").unwrap_err(),
            "invalid value me for uid"
        );
        assert_eq!(
            check("type=tmpfs,target=/x,size=big").unwrap_err(),
            "invalid value for size: big"
        );
        assert_eq!(
            check("target=/x,ro=maybe").unwrap_err(),
            "invalid value for ro: maybe"
        );
        assert_eq!(
            check("target").unwrap_err(),
            "invalid field 'target' must be a key=value pair"
        );
        assert_eq!(
            check("type=cache").unwrap_err(),
            "mount target is required for cache mounts"
        );
        let e = parse("from=$stage,target=/x", Values::Check).unwrap_err();
        assert_eq!(
            e.message,
            "'from' doesn't support variable expansion, define alias stage instead"
        );
    }

    #[test]
    fn deferred_until_expansion() {
        assert_eq!(parse("type=$T,target=/x", Values::Check), Ok(None));
        let mut exp = |v: &str| Ok::<_, String>(v.replace("$T", "cache"));
        let m = parse("type=$T,target=/x", Values::Expand(&mut exp))
            .unwrap()
            .unwrap();
        assert_eq!(m.kind, MountType::Cache);
    }

    #[test]
    fn ram_sizes() {
        assert_eq!(parse_ram_bytes("1024"), Some(1024));
        assert_eq!(parse_ram_bytes("1k"), Some(1024));
        assert_eq!(parse_ram_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_ram_bytes("64 MB"), Some(64 << 20));
        assert_eq!(parse_ram_bytes("x"), None);
        assert_eq!(parse_ram_bytes("1q"), None);
    }
}
