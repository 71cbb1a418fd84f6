//! Instruction flags (`--name=value`), checked against what each instruction
//! accepts, with BuildKit's rules: strings need `=`, booleans may omit it,
//! list flags repeat, anything else is an error naming the flag.

use super::suggest;

/// What kind of value a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    String,
    Strings,
}

/// A flag problem: the message and the flag as written, to point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlagError {
    pub(crate) message: String,
    pub(crate) flag: String,
}

/// The flags of one instruction after validation.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    values: Vec<(&'static str, Value)>,
    /// Names in the order first seen.
    used: Vec<&'static str>,
}

#[derive(Debug)]
enum Value {
    Bool(bool),
    String(String),
    Strings(Vec<String>),
}

impl Flags {
    /// Validates `raw` (as the parser extracted them, quotes removed) against
    /// `spec`. A lone `--` ends the flags.
    pub(crate) fn parse(raw: &[String], spec: &[(&'static str, Kind)]) -> Result<Flags, FlagError> {
        let mut flags = Flags::default();
        if raw.is_empty() {
            return Ok(flags);
        }
        for arg in raw {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(FlagError {
                    message: format!("arg should start with -- : {arg}"),
                    flag: arg.clone(),
                });
            };
            if body.is_empty() {
                break;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let err = |message: String| FlagError {
                message,
                flag: format!("--{name}"),
            };
            let Some(&(key, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                let msg = format!("unknown flag: --{name}");
                return Err(err(suggest::with_hint(
                    msg,
                    name,
                    spec.iter().map(|(n, _)| *n),
                    true,
                )));
            };
            let seen = flags.used.contains(&key);
            if seen && kind != Kind::Strings {
                return Err(err(format!("duplicate flag specified: --{name}")));
            }
            if !seen {
                flags.used.push(key);
            }
            let v = match kind {
                Kind::Bool => match value {
                    Some("") => return Err(err(format!("missing a value on flag: --{name}"))),
                    None => Value::Bool(true),
                    Some(v) if v.eq_ignore_ascii_case("true") => Value::Bool(true),
                    Some(v) if v.eq_ignore_ascii_case("false") => Value::Bool(false),
                    Some(v) => {
                        return Err(err(format!(
                            "expecting boolean value for flag --{name}, not: {v}"
                        )));
                    }
                },
                Kind::String => match value {
                    Some(v) => Value::String(v.to_string()),
                    None => return Err(err(format!("missing a value on flag: --{name}"))),
                },
                Kind::Strings => match value {
                    Some(v) => {
                        if let Some((_, Value::Strings(list))) =
                            flags.values.iter_mut().find(|(n, _)| *n == key)
                        {
                            list.push(v.to_string());
                            continue;
                        }
                        Value::Strings(vec![v.to_string()])
                    }
                    None => return Err(err(format!("missing a value on flag: --{name}"))),
                },
            };
            flags.values.push((key, v));
        }
        Ok(flags)
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub(crate) fn string(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// A boolean flag's value, or none when it was not given.
    pub(crate) fn bool_opt(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn bool(&self, name: &str) -> bool {
        self.bool_opt(name).unwrap_or(false)
    }

    pub(crate) fn strings(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Some(Value::Strings(v)) => v.clone(),
            _ => Vec::new(),
        }
    }

    /// Flag names in the order they were first given.
    pub(crate) fn used(&self) -> Vec<&'static str> {
        self.used.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const SPEC: &[(&str, Kind)] = &[
        ("str1", Kind::String),
        ("b", Kind::Bool),
        ("list", Kind::Strings),
    ];

    #[test]
    fn bflag_rules() {
        let f = Flags::parse(&raw(&["--str1=", "--b", "--list=a", "--list=b"]), SPEC).unwrap();
        assert_eq!(f.string("str1").as_deref(), Some(""));
        assert!(f.bool("b"));
        assert_eq!(f.strings("list"), ["a", "b"]);
        assert_eq!(f.used(), ["str1", "b", "list"]);

        assert_eq!(
            Flags::parse(&raw(&["--b=false"]), SPEC)
                .unwrap()
                .bool_opt("b"),
            Some(false)
        );
        assert_eq!(
            Flags::parse(&raw(&["--b=TRUE"]), SPEC)
                .unwrap()
                .bool_opt("b"),
            Some(true)
        );
        assert_eq!(Flags::parse(&raw(&[]), SPEC).unwrap().bool_opt("b"), None);

        let e = Flags::parse(&raw(&["--str1"]), SPEC).unwrap_err();
        assert_eq!(e.message, "missing a value on flag: --str1");
        let e = Flags::parse(&raw(&["--b=false1"]), SPEC).unwrap_err();
        assert_eq!(
            e.message,
            "expecting boolean value for flag --b, not: false1"
        );
        let e = Flags::parse(&raw(&["--b="]), SPEC).unwrap_err();
        assert_eq!(e.message, "missing a value on flag: --b");
        let e = Flags::parse(&raw(&["--b", "--b"]), SPEC).unwrap_err();
        assert_eq!(e.message, "duplicate flag specified: --b");
        let e = Flags::parse(&raw(&["--str2=x"]), SPEC).unwrap_err();
        assert_eq!(e.message, "unknown flag: --str2 (did you mean str1?)");
        assert_eq!(e.flag, "--str2");
        let e = Flags::parse(&raw(&["--zzzzzz"]), SPEC).unwrap_err();
        assert_eq!(e.message, "unknown flag: --zzzzzz");
        // A lone `--` ends the flags, whatever follows.
        assert!(Flags::parse(&raw(&["--", "--bogus"]), SPEC).is_ok());
    }
}
