//! Dispatch of one instruction: the metadata instructions (ENV, ARG, LABEL,
//! USER, EXPOSE, …) here; RUN and COPY/ADD go to their own modules.

use super::dispatch::{Converter, StageState, normalize_workdir, with_shell};
use super::env::Expander;
use super::image::{Empty, HealthConfig, go_list, go_quote_list};
use super::stages::{Plan, Planned};
use crate::error::SourceError;
use crate::graph::Op;
use crate::instructions::{self, Command, Instruction, KeyValues};

impl Converter<'_> {
    pub(crate) fn dispatch(
        &mut self,
        plan: &Plan<'_>,
        st: &mut StageState,
        planned: &Planned<'_>,
    ) -> Result<(), SourceError> {
        let cmd: &Command = &planned.cmd;
        match &cmd.instruction {
            Instruction::Run(run) => self.dispatch_run(plan, st, cmd, run, &planned.sources),
            Instruction::Copy(c) => self.dispatch_copy(
                plan,
                st,
                cmd,
                super::copy::CopyKind::Copy(c),
                &planned.sources,
            ),
            Instruction::Add(a) => {
                self.dispatch_copy(plan, st, cmd, super::copy::CopyKind::Add(a), &[])
            }
            Instruction::Workdir { path } => self.dispatch_workdir(st, cmd, path),
            Instruction::Env(kv) => self.dispatch_env(st, cmd, kv),
            Instruction::Label(kv) => self.dispatch_label(st, cmd, kv),
            Instruction::Arg { args } => self.dispatch_arg(st, cmd, args),
            Instruction::Maintainer { maintainer } => {
                st.image.author = Some(maintainer.clone());
                st.image
                    .commit(format!("MAINTAINER {maintainer}"), false, false);
                Ok(())
            }
            Instruction::User { user } => {
                let user = Expander::new(self.lexer, &st.env, self.loc, cmd.span).word(user)?;
                st.user = Some(user.clone()).filter(|u| !u.is_empty());
                st.image.config.user = Some(user.clone());
                st.image.commit(format!("USER {user}"), false, false);
                Ok(())
            }
            Instruction::Volume { volumes } => {
                let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
                let mut out = Vec::with_capacity(volumes.len());
                for v in volumes {
                    let e = exp.word(v)?;
                    if e.is_empty() {
                        return Err(SourceError::new(
                            self.loc.find(cmd.span, v),
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    out.push(e);
                }
                for v in &out {
                    st.image.config.volumes.insert(v.clone(), Empty {});
                }
                st.image
                    .commit(format!("VOLUME {}", go_list(&out)), false, false);
                Ok(())
            }
            Instruction::StopSignal { signal } => {
                let sig = Expander::new(self.lexer, &st.env, self.loc, cmd.span).word(signal)?;
                if !valid_signal(&sig) {
                    return Err(SourceError::new(
                        self.loc.find(cmd.span, signal),
                        format!("invalid signal: {sig}"),
                    ));
                }
                st.image.config.stop_signal = Some(sig.clone());
                st.image.commit(format!("STOPSIGNAL {sig}"), false, false);
                Ok(())
            }
            Instruction::Expose { ports } => self.dispatch_expose(st, cmd, ports),
            Instruction::Shell { shell } => {
                st.image.config.shell = shell.clone();
                st.image
                    .commit(format!("SHELL {}", go_list(shell)), false, false);
                Ok(())
            }
            Instruction::Cmd(c) => {
                let args = if c.prepend_shell {
                    with_shell(&st.image, &c.command)
                } else {
                    c.command.clone()
                };
                st.image
                    .commit(format!("CMD {}", go_quote_list(&args)), false, false);
                st.image.config.cmd = Some(args);
                st.cmd_set = true;
                Ok(())
            }
            Instruction::Entrypoint(c) => {
                let args = if c.prepend_shell {
                    Some(with_shell(&st.image, &c.command))
                } else if c.command.is_empty() {
                    None
                } else {
                    Some(c.command.clone())
                };
                st.image.commit(
                    format!(
                        "ENTRYPOINT {}",
                        go_quote_list(args.as_deref().unwrap_or_default())
                    ),
                    false,
                    false,
                );
                st.image.config.entrypoint = args;
                if !st.cmd_set {
                    st.image.config.cmd = None;
                }
                Ok(())
            }
            Instruction::Healthcheck(h) => {
                let hc = HealthConfig {
                    test: h.test.clone(),
                    interval: h.interval,
                    timeout: h.timeout,
                    start_period: h.start_period,
                    start_interval: h.start_interval,
                    retries: h.retries,
                };
                let d = instructions::duration::format;
                st.image.commit(
                    format!(
                        "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                        go_list(&hc.test),
                        d(hc.interval),
                        d(hc.timeout),
                        d(hc.start_period),
                        d(hc.start_interval),
                        hc.retries
                    ),
                    false,
                    false,
                );
                st.image.config.healthcheck = Some(hc);
                Ok(())
            }
            Instruction::Onbuild(o) => {
                st.image.config.on_build.push(o.expression.clone());
                Ok(())
            }
        }
    }

    fn dispatch_env(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        kv: &KeyValues,
    ) -> Result<(), SourceError> {
        // The whole instruction is expanded with the environment before it.
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let mut pairs = Vec::with_capacity(kv.pairs.len());
        for p in &kv.pairs {
            pairs.push((exp.word(&p.key)?, exp.word(&p.value)?));
        }
        let mut msg = String::with_capacity(
            3 + pairs
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>(),
        );
        msg.push_str("ENV");
        for (k, v) in &pairs {
            msg.push(' ');
            msg.push_str(k);
            msg.push('=');
            msg.push_str(v);
            st.set_env(k, v);
            st.image.set_env(k, v);
        }
        st.image.commit(msg, false, false);
        Ok(())
    }

    fn dispatch_label(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        kv: &KeyValues,
    ) -> Result<(), SourceError> {
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let mut msg = String::from("LABEL");
        let mut pairs = Vec::with_capacity(kv.pairs.len());
        for p in &kv.pairs {
            pairs.push((exp.word(&p.key)?, exp.word(&p.value)?));
        }
        for (k, v) in pairs {
            msg.push(' ');
            msg.push_str(&k);
            msg.push('=');
            msg.push_str(&v);
            st.image.config.labels.insert(k, v);
        }
        st.image.commit(msg, false, false);
        Ok(())
    }

    fn dispatch_arg(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        args: &[instructions::ArgDef],
    ) -> Result<(), SourceError> {
        let mut commit = Vec::with_capacity(args.len());
        for def in args {
            self.consumed.insert(def.key.clone());
            let explicit = self.opts.build_args.get(&def.key);
            let value = match (explicit, &def.value) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => {
                    let p = self.lexer.process_word(default, &st.env).map_err(|e| {
                        SourceError::new(self.loc.find(cmd.span, default), e.message)
                    })?;
                    Some(p.value)
                }
                // A bare `ARG NAME` takes the global value (or stays unset).
                (None, None) => self.global.get(&def.key).map(String::from),
            };
            if let Some(v) = &value {
                st.set_env(&def.key, v);
            }
            commit.push(match &value {
                Some(v) => format!("{}={v}", def.key),
                None => def.key.clone(),
            });
            st.push_arg(&def.key, value);
        }
        st.image
            .commit(format!("ARG {}", commit.join(" ")), false, false);
        Ok(())
    }

    fn dispatch_workdir(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        path: &str,
    ) -> Result<(), SourceError> {
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let raw = exp.word(path)?;
        let deps = st.arg_deps(&exp.matched);
        let display = exp.display(&cmd.original);
        let wd = normalize_workdir(&st.workdir, &raw);
        st.workdir = wd.clone();
        st.image.config.working_dir = wd.clone();
        let with_layer = wd != "/";
        if with_layer {
            let description = st.describe(&display);
            let op = Op::Mkdir(crate::graph::MkdirOp {
                path: wd.clone(),
                mode: 0o755,
                user: st.user.clone(),
            });
            st.tip = self.add_vertex(
                op,
                vec![st.tip],
                description,
                Some(st.index),
                Some(cmd.position),
                deps,
            );
        }
        st.image.commit(format!("WORKDIR {wd}"), with_layer, false);
        Ok(())
    }

    fn dispatch_expose(
        &mut self,
        st: &mut StageState,
        cmd: &Command,
        ports: &[String],
    ) -> Result<(), SourceError> {
        let mut sorted: Vec<&String> = ports.iter().collect();
        sorted.sort();
        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let mut specs = Vec::new();
        for p in sorted {
            for w in exp.words(p)? {
                let parsed = parse_port_spec(&w)
                    .map_err(|m| SourceError::new(self.loc.find(cmd.span, p), m))?;
                specs.extend(parsed);
            }
        }
        for s in &specs {
            st.image.config.exposed_ports.insert(s.clone(), Empty {});
        }
        st.image
            .commit(format!("EXPOSE {}", go_list(&specs)), false, false);
        Ok(())
    }
}

/// `[ip:][hostPort:]containerPort[/proto]` → `port/proto` for every port of
/// a range, as docker's port spec parser does for EXPOSE.
fn parse_port_spec(raw: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let container = parts.last().copied().unwrap_or("");
    let host_port = if parts.len() >= 2 {
        parts[parts.len() - 2]
    } else {
        ""
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!("no port specified: {raw}<empty>"));
    }
    let proto = proto.to_ascii_lowercase();
    let proto = match proto.as_str() {
        "" => "tcp",
        "tcp" | "udp" | "sctp" => proto.as_str(),
        _ => return Err(format!("invalid proto: {proto}")),
    };
    let (start, end) = port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) =
            port_range(host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn port_range(s: &str) -> Option<(u32, u32)> {
    let num = |t: &str| {
        t.parse::<u16>()
            .ok()
            .filter(|_| t.bytes().all(|b| b.is_ascii_digit()))
            .map(u32::from)
    };
    match s.split_once('-') {
        None => num(s).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some((a, b))
        }
    }
}

/// moby's `signal.ParseSignal`: a non-zero number, or a name with or without `SIG`.
fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<i64>() {
        return n != 0;
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX", "UNUSED",
    ];
    if NAMES.contains(&name) {
        return true;
    }
    let rt = |prefix: &str, max: u32| {
        name.strip_prefix(prefix)
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| (1..=max).contains(&n))
    };
    rt("RTMIN+", 15) || rt("RTMAX-", 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(parse_port_spec("80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_port_spec("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            parse_port_spec("8000-8002/sctp").unwrap(),
            ["8000/sctp", "8001/sctp", "8002/sctp"]
        );
        assert_eq!(parse_port_spec("127.0.0.1:8080:80").unwrap(), ["80/tcp"]);
        assert_eq!(
            parse_port_spec("abc").unwrap_err(),
            "invalid containerPort: abc"
        );
        assert_eq!(parse_port_spec("80/xyz").unwrap_err(), "invalid proto: xyz");
        assert!(parse_port_spec("90-80").is_err());
        assert!(parse_port_spec("70000").is_err());
    }

    #[test]
    fn signals() {
        for ok in ["SIGKILL", "kill", "9", "SIGRTMIN+3", "RTMAX-2", "sigterm"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in ["0", "SIGFOO", "RTMIN+16", ""] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }
}
