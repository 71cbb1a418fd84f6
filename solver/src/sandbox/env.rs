//! The environment of a step: docker's defaults for PATH, HOSTNAME and HOME.

/// The `PATH` docker and BuildKit give a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The value of `key` in `KEY=VALUE` entries; the last entry wins, as with
/// `getenv` after a later `setenv`.
pub fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|entry| {
        let (k, v) = entry.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Adds [`DEFAULT_PATH`] when `env` has no `PATH`, as BuildKit's Dockerfile
/// frontend does for every RUN. The caller decides whether to use it (the
/// composition of image ENV and ARGs is theirs).
pub fn ensure_default_path(env: &mut Vec<String>) {
    if env_get(env, "PATH").is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
}

/// The environment the process gets: `env` plus `HOSTNAME` (docker sets it
/// for every container) and `HOME` (runc sets it from the user's passwd
/// entry), each only when `env` lacks it.
pub(crate) fn with_process_defaults(env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let mut out = env.to_vec();
    if env_get(env, "HOSTNAME").is_none() {
        out.push(format!("HOSTNAME={hostname}"));
    }
    if env_get(env, "HOME").is_none() {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Checks that every entry is `KEY=VALUE` with a non-empty key and no NUL.
pub(crate) fn validate(env: &[String]) -> Result<(), String> {
    for entry in env {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() && !entry.contains('\0') => {}
            // Only the name: the value may be a secret.
            Some((key, _)) if !key.is_empty() => {
                return Err(format!("environment variable {key:?} contains a NUL byte"));
            }
            Some(_) => return Err("an environment variable has an empty name".into()),
            None => return Err(format!("environment entry {entry:?} is not KEY=VALUE")),
        }
    }
    Ok(())
}

/// Where `execve` should look for `command`, in order: the command itself
/// when it contains a `/`, else each directory of `path` (an empty entry is
/// the working directory, as for `execvp`).
pub(crate) fn command_candidates(command: &str, path: &str) -> Vec<String> {
    if command.contains('/') {
        return vec![command.to_owned()];
    }
    path.split(':')
        .map(|dir| match dir {
            "" => command.to_owned(),
            dir => format!("{}/{command}", dir.trim_end_matches('/')),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_path_only_when_missing() {
        let mut env = strings(&["A=1"]);
        ensure_default_path(&mut env);
        assert_eq!(env, strings(&["A=1", &format!("PATH={DEFAULT_PATH}")]));
        let mut env = strings(&["PATH=/x"]);
        ensure_default_path(&mut env);
        assert_eq!(env, strings(&["PATH=/x"]));
        // An empty PATH is the image's choice, not a missing one.
        let mut env = strings(&["PATH="]);
        ensure_default_path(&mut env);
        assert_eq!(env, strings(&["PATH="]));
    }

    #[test]
    fn last_entry_wins() {
        let env = strings(&["A=1", "B=x=y", "A=2"]);
        assert_eq!(env_get(&env, "A"), Some("2"));
        assert_eq!(env_get(&env, "B"), Some("x=y"));
        assert_eq!(env_get(&env, "C"), None);
    }

    #[test]
    fn hostname_and_home_added_unless_set() {
        let env = with_process_defaults(&strings(&["A=1"]), "box", "/root");
        assert_eq!(env, strings(&["A=1", "HOSTNAME=box", "HOME=/root"]));
        let env = with_process_defaults(&strings(&["HOME=/h", "HOSTNAME=n"]), "box", "/root");
        assert_eq!(env, strings(&["HOME=/h", "HOSTNAME=n"]));
    }

    #[test]
    fn candidates_follow_path_order() {
        assert_eq!(command_candidates("./x", "/bin"), vec!["./x"]);
        assert_eq!(command_candidates("/bin/sh", "/usr/bin"), vec!["/bin/sh"]);
        assert_eq!(
            command_candidates("sh", "/usr/bin/:/bin::"),
            vec!["/usr/bin/sh", "/bin/sh", "sh", "sh"]
        );
    }

    #[test]
    fn validation_rejects_malformed_entries() {
        assert!(validate(&strings(&["A=", "B=c=d"])).is_ok());
        assert!(validate(&strings(&["NOEQUALS"])).is_err());
        assert!(validate(&strings(&["=value"])).is_err());
        assert!(validate(&strings(&["A=b\0c"])).is_err());
        // Messages never show a value: it may be a secret.
        for bad in ["=hunter2", "A=hunter2\0"] {
            let message = validate(&strings(&[bad])).unwrap_err();
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
