//! RUN: the command line after SHELL and heredocs, its environment, and
//! `--mount`s with their inputs.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};

use super::dispatch::{Converter, StageState, clean_path, with_shell};
use super::env::Expander;
use super::stages::{Plan, SourceRef};
use crate::error::SourceError;
use crate::graph::{
    ExecMount, ExecMountKind, ExecOp, InlineFile, NetworkMode, Op, SecurityMode, Shared,
};
use crate::instructions::mount::{self, Mount, MountType};
use crate::instructions::{Command, Run, heredoc_marker};

impl Converter<'_> {
    pub(crate) fn dispatch_run(
        &mut self,
        plan: &Plan<'_>,
        st: &mut StageState,
        cmd: &Command,
        run: &Run,
        sources: &[Option<SourceRef>],
    ) -> Result<(), SourceError> {
        let mut files = Vec::new();
        let mut summary = None;
        let args = if run.heredocs.is_empty() {
            if run.command.prepend_shell {
                with_shell(&st.image, &run.command.command)
            } else {
                run.command.command.clone()
            }
        } else {
            let mut args = run.command.command.clone();
            if args.len() != 1 || !run.command.prepend_shell {
                return Err(SourceError::new(
                    cmd.position,
                    format!(
                        "parsing produced an invalid run command: {}",
                        args.join(" ")
                    ),
                ));
            }
            let first = &run.heredocs[0];
            if heredoc_marker(&args[0]).is_some() {
                // The command is one heredoc: its body is the script.
                let data = first.data();
                summary = Some(summarize(&first.content));
                if data.starts_with("#!") && st.platform.os != "windows" {
                    let path = format!("/dev/pipes/{}", first.name);
                    files.push(InlineFile {
                        path: path.clone(),
                        mode: 0o755,
                        content: data,
                    });
                    args = vec![path];
                } else {
                    args = vec![data];
                }
            } else {
                // Heredocs inside a longer command: give the shell the text back.
                let mut full = args[0].clone();
                for h in &run.heredocs {
                    full.push('\n');
                    full.push_str(&h.content);
                    full.push_str(&h.name);
                }
                args = vec![full];
            }
            if run.command.prepend_shell {
                args = with_shell(&st.image, &args);
            }
            args
        };

        let mut exp = Expander::new(self.lexer, &st.env, self.loc, cmd.span);
        let mut mounts = Vec::with_capacity(run.mounts.len());
        let mut inputs = vec![st.tip];
        let mut ssh_count = 0;
        for (n, m) in run.mounts.iter().enumerate() {
            // A mount parsed at instruction level had only literal values:
            // expansion would not change it.
            let parsed: Cow<'_, Mount> = match &m.parsed {
                Some(p) => Cow::Borrowed(p),
                None => {
                    let mut expand = |v: &str| exp.word(v).map_err(|e| e.message);
                    let p = mount::parse(&m.raw, mount::Values::Expand(&mut expand))
                        .map_err(|e| {
                            SourceError::new(
                                self.loc.find_after(cmd.span, &m.raw, &e.token),
                                e.message,
                            )
                        })?
                        .expect("expanded mounts are always parsed");
                    Cow::Owned(p)
                }
            };
            let target = parsed.target.as_deref().map(|t| {
                if t.starts_with('/') {
                    clean_path(t)
                } else {
                    clean_path(&format!("{}/{t}", st.workdir))
                }
            });
            if target.as_deref() == Some("/") {
                return Err(SourceError::new(
                    self.loc.find(cmd.span, &m.raw),
                    "invalid mount target \"/\"",
                ));
            }
            let source_path = parsed
                .source
                .as_deref()
                .map(|s| clean_path(&format!("/{s}")));
            let from_vertex = match sources.get(n).cloned().flatten() {
                Some(src) if parsed.kind != MountType::Tmpfs && parsed.from.is_some() => {
                    Some(self.source_vertex(&src, st, plan, "mount", cmd.span, &m.raw)?)
                }
                _ => None,
            };
            let mut push_input = |v| {
                inputs.push(v);
                Some(inputs.len() - 1)
            };
            let mount = match parsed.kind {
                MountType::Bind => {
                    let v = match from_vertex {
                        Some(v) => v,
                        None => self.context("context", source_path.as_deref().unwrap_or("/")),
                    };
                    ExecMount {
                        target: target.unwrap_or_default(),
                        kind: ExecMountKind::Bind,
                        input: push_input(v),
                        source: Some(source_path.unwrap_or_else(|| "/".into())),
                        readonly: parsed.readonly,
                    }
                }
                MountType::Cache => {
                    let target = target.unwrap_or_default();
                    ExecMount {
                        kind: ExecMountKind::Cache {
                            id: parsed
                                .id
                                .clone()
                                .or_else(|| parsed.target.clone())
                                .unwrap_or_default(),
                            sharing: parsed.sharing.unwrap_or_default(),
                            mode: parsed.mode,
                            uid: parsed.uid,
                            gid: parsed.gid,
                        },
                        input: from_vertex.and_then(&mut push_input),
                        source: from_vertex
                            .map(|_| source_path.clone().unwrap_or_else(|| "/".into())),
                        target,
                        readonly: parsed.readonly,
                    }
                }
                MountType::Tmpfs => ExecMount {
                    target: target.unwrap_or_default(),
                    kind: ExecMountKind::Tmpfs { size: parsed.size },
                    input: None,
                    source: None,
                    readonly: parsed.readonly,
                },
                MountType::Secret => {
                    let id = match (&parsed.id, &parsed.source, &parsed.target) {
                        (_, Some(src), _) => src.clone(),
                        (Some(id), None, _) => id.clone(),
                        (None, None, Some(t)) => base_name(t),
                        (None, None, None) => {
                            return Err(SourceError::new(
                                self.loc.find(cmd.span, &m.raw),
                                "one of source, target required",
                            ));
                        }
                    };
                    let target = match (&target, &parsed.env) {
                        (Some(t), _) => t.clone(),
                        // Only an environment variable is wanted.
                        (None, Some(_)) => String::new(),
                        (None, None) => format!("/run/secrets/{}", base_name(&id)),
                    };
                    ExecMount {
                        target,
                        kind: ExecMountKind::Secret {
                            id,
                            required: parsed.required,
                            env: parsed.env.clone(),
                            mode: parsed.mode.unwrap_or(0o400),
                            uid: parsed.uid.unwrap_or(0),
                            gid: parsed.gid.unwrap_or(0),
                        },
                        input: None,
                        source: None,
                        readonly: true,
                    }
                }
                MountType::Ssh => {
                    let target =
                        target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_count}"));
                    ssh_count += 1;
                    ExecMount {
                        target,
                        kind: ExecMountKind::Ssh {
                            id: parsed.id.clone().unwrap_or_else(|| "default".into()),
                            required: parsed.required,
                            mode: parsed.mode.unwrap_or(0o600),
                            uid: parsed.uid.unwrap_or(0),
                            gid: parsed.gid.unwrap_or(0),
                        },
                        input: None,
                        source: None,
                        readonly: true,
                    }
                }
            };
            mounts.push(mount);
        }
        let matched = std::mem::take(&mut exp.matched);
        let mut display = exp.display(&cmd.original);
        if let Some(s) = summary {
            display.push_str(&format!(" ({s})"));
        }
        // Secret values given as env must not show up in progress output.
        for m in &mounts {
            if let ExecMountKind::Secret {
                env: Some(name), ..
            } = &m.kind
            {
                if let Some(v) = st.env.get(name).map(String::from) {
                    if !v.is_empty() {
                        display = display.replace(&v, "****");
                    }
                }
            }
        }

        let in_env = st.args_in_env();
        let extra = st.arg_deps(&matched);
        let deps = if extra.is_subset(&in_env) {
            in_env
        } else {
            let mut all: BTreeSet<Shared<str>> = (*in_env).clone();
            all.extend(extra);
            Shared::new(all)
        };
        let proxy_env: Vec<String> = self
            .proxy
            .iter()
            .filter(|kv| kv.split_once('=').is_some_and(|(k, _)| !st.env.contains(k)))
            .cloned()
            .collect();
        let history = run_command_string(&args, st);
        let op = ExecOp {
            args,
            env: st.env.list(),
            proxy_env,
            user: st.user.clone(),
            cwd: st.workdir.clone(),
            network: run.network.unwrap_or(NetworkMode::Default),
            security: run.security.unwrap_or(SecurityMode::Sandbox),
            mounts,
            files,
        };
        let description = st.describe(&display);
        st.tip = self.add_vertex_shared(
            Op::Exec(Box::new(op)),
            inputs,
            description,
            Some(st.index),
            Some(cmd.position),
            deps,
        );
        st.image.commit(history, true, true);
        Ok(())
    }
}

/// BuildKit's history text: `RUN |N k=v … ` for the ARGs in scope, then the argv.
fn run_command_string(args: &[String], st: &mut StageState) -> String {
    let prefix = st
        .run_prefix
        .get_or_insert_with(|| build_args_prefix(&st.args, &st.env));
    let len =
        4 + prefix.len() + args.iter().map(|a| a.len() + 1).sum::<usize>() + " # buildkit".len();
    let mut out = String::with_capacity(len);
    out.push_str("RUN");
    if !prefix.is_empty() {
        out.push(' ');
        out.push_str(prefix);
    }
    for a in args {
        out.push(' ');
        out.push_str(a);
    }
    if prefix.is_empty() && args.is_empty() {
        out.push(' ');
    }
    out
}

/// `|N k=v …`: a re-declared ARG keeps its first position and shows its
/// last value (from the environment when set there).
fn build_args_prefix(args: &[(Shared<str>, Option<String>)], env: &super::env::EnvState) -> String {
    let mut order: Vec<&str> = Vec::with_capacity(args.len());
    let mut seen: HashSet<&str> = HashSet::with_capacity(args.len());
    for (k, _) in args {
        if seen.insert(k) {
            order.push(k);
        }
    }
    if order.is_empty() {
        return String::new();
    }
    let values: Vec<&str> = order
        .iter()
        .map(|&k| match env.get(k) {
            Some(v) => v,
            None => args
                .iter()
                .rev()
                .find(|(ak, _)| &**ak == k)
                .and_then(|(_, v)| v.as_deref())
                .unwrap_or(""),
        })
        .collect();
    let len = 1
        + 20
        + order
            .iter()
            .zip(&values)
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let mut out = String::with_capacity(len);
    out.push('|');
    out.push_str(&order.len().to_string());
    for (k, value) in order.into_iter().zip(values) {
        out.push(' ');
        out.push_str(k);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The first line of a heredoc, with `...` when there are more.
fn summarize(doc: &str) -> String {
    let doc = doc.trim().replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

fn base_name(p: &str) -> String {
    let t = p.trim_end_matches('/');
    match t.rsplit_once('/') {
        Some((_, b)) if !b.is_empty() => b.to_string(),
        _ if t.is_empty() => "/".into(),
        _ => t.to_string(),
    }
}
