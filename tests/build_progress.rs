//! `builder build --progress=…` end to end, as root on a busybox base: the
//! plain format of a cold and a cached build, the JSON events' schema and
//! cache-miss reasons, the interactive display under a pseudo-terminal
//! (`script` from util-linux), and quiet builds.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{BIN, TestRoot, sandbox_available, stderr, stdout, tool_available};
use serde_json::{Value, json};

/// Two stages; the second copies from the first. Every step prints or
/// changes something, so that nothing is skipped as a no-op.
const DOCKERFILE: &str = "\
FROM busybox AS base
COPY app.txt /app.txt
RUN echo \"built from $(cat /app.txt)\" && echo to-stderr >&2 && cp /app.txt /built
FROM busybox
COPY --from=base /built /built
RUN cat /built
";

fn project(t: &TestRoot) -> std::path::PathBuf {
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    t.context(&[("Dockerfile", DOCKERFILE), ("app.txt", "one\n")])
}

/// `#N [stage i/n] …` lines: step number → name.
fn plain_steps(progress: &str) -> Vec<(String, String)> {
    progress
        .lines()
        .filter_map(|l| {
            let (n, rest) = l.split_once(' ')?;
            (n.starts_with('#') && rest.starts_with('[')).then(|| (n.to_owned(), rest.to_owned()))
        })
        .collect()
}

#[test]
fn plain_shows_done_then_cached_for_every_step() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let ctx = project(&t);

    let cold = t.build(&ctx, &["-t", "app"]);
    assert!(cold.status.success(), "{}", stderr(&cold));
    let progress = stderr(&cold);
    let steps = plain_steps(&progress);
    let lines: Vec<&str> = progress.lines().collect();
    let has = |n: &str, what: &str| lines.iter().any(|l| l.starts_with(&format!("{n} {what}")));
    let mut cached = 0;
    for (n, name) in &steps {
        // Everything runs but a step identical to one that ran (the second
        // stage's FROM).
        if has(n, "CACHED") {
            assert!(name.contains("] FROM "), "{name} is CACHED:\n{progress}");
            assert!(!has(n, "DONE"), "{progress}");
            cached += 1;
        } else {
            assert!(has(n, "DONE "), "{name} has no DONE line:\n{progress}");
        }
    }
    let step = |prefix: &str| -> String {
        steps
            .iter()
            .find(|(_, name)| name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no step {prefix}:\n{progress}"))
            .0
            .clone()
    };
    for prefix in [
        "[base 2/3] COPY app.txt /app.txt",
        "[base 3/3] RUN echo",
        "[stage-1 2/3] COPY --from=base /built /built",
        "[stage-1 3/3] RUN cat /built",
    ] {
        assert!(has(&step(prefix), "DONE "), "{progress}");
    }
    let total = steps.len() + 1;
    assert!(
        progress.contains(&format!("\n#{total} exporting to image\n")),
        "{progress}"
    );
    // (Loading the context is the build's own work, not a cached step.)
    let mut cold_names: Vec<String> = steps
        .iter()
        .map(|(_, name)| name.clone())
        .filter(|name| !name.starts_with("[internal] "))
        .collect();
    cold_names.sort();
    let cold_names: Vec<&String> = cold_names.iter().collect();
    // Output lines carry their step number and seconds since its start.
    let run = step("[base 3/3] RUN echo");
    let output = lines
        .iter()
        .find(|l| l.ends_with(" built from one"))
        .unwrap_or_else(|| panic!("no output line:\n{progress}"));
    let mut parts = output.split(' ');
    assert_eq!(parts.next(), Some(run.as_str()), "{output}");
    let secs = parts.next().unwrap();
    assert!(secs.parse::<f64>().is_ok() && secs.len() >= 5, "{output}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{run} ")) && l.ends_with(" to-stderr")),
        "{progress}"
    );
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with("Build finished in ")
            && summary.ends_with(&format!(
                ": {total} steps, {} run, {cached} cached",
                total - cached
            )),
        "{progress}"
    );

    let warm = t.build(&ctx, &["-t", "app"]);
    assert!(warm.status.success(), "{}", stderr(&warm));
    let progress = stderr(&warm);
    let steps = plain_steps(&progress);
    assert!(!steps.is_empty(), "{progress}");
    let lines: Vec<&str> = progress.lines().collect();
    for (n, name) in &steps {
        assert!(
            lines.contains(&format!("{n} CACHED").as_str()),
            "{name} is not CACHED:\n{progress}"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with(&format!("{n} DONE"))),
            "{name} ran:\n{progress}"
        );
    }
    assert!(!progress.contains(" built from one"), "{progress}");
    // Every step is shown, not only the one whose result was found.
    let mut warm_names: Vec<&String> = steps.iter().map(|(_, name)| name).collect();
    warm_names.sort();
    assert_eq!(warm_names, cold_names, "{progress}");
    let total = steps.len() + 1;
    assert!(
        progress.contains(&format!("\n#{total} exporting to image\n")),
        "{progress}"
    );
    let summary = lines.last().unwrap();
    assert!(
        summary.ends_with(&format!(": {total} steps, 1 run, {} cached", total - 1)),
        "{progress}"
    );
    t.check_store();
}

/// Every event of a JSON progress stream, checked against the schema in
/// README.md.
fn check_schema(stderr: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut last_time: HashMap<String, f64> = HashMap::new();
    let mut names: HashMap<u64, String> = HashMap::new();
    for line in stderr.lines() {
        let e: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON object ({err}): {line:?}\n{stderr}"));
        let o = e
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let time = o["time"]
            .as_f64()
            .unwrap_or_else(|| panic!("no time: {line}"));
        assert!(time > 1.6e9, "time is not in Unix seconds: {line}");
        let kind = o["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no type: {line}"));
        let step = o.get("step").map(|s| {
            s.as_u64()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("bad step: {line}"))
        });
        let str_field = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{kind} without {k}: {line}"))
        };
        let mut allowed = vec!["time", "type", "step", "vertex"];
        match kind {
            "started" | "cached" => {
                let name = str_field("name").to_owned();
                assert!(!name.is_empty(), "{line}");
                let previous = names.insert(step.unwrap(), name.clone());
                assert!(previous.is_none(), "step {step:?} named twice: {line}");
                allowed.push("name");
            }
            "log" => {
                assert!(
                    ["stdout", "stderr"].contains(&str_field("stream")),
                    "{line}"
                );
                str_field("line");
                allowed.extend(["stream", "line"]);
            }
            "detail" => {
                str_field("line");
                allowed.push("line");
            }
            "cache-miss" => {
                str_field("reason");
                allowed.push("reason");
            }
            "done" => {
                assert!(o["duration"].as_f64().is_some_and(|d| d >= 0.0), "{line}");
                allowed.push("duration");
            }
            "error" | "warning" => {
                str_field("message");
                allowed.push("message");
            }
            "summary" => {
                assert!(o["duration"].as_f64().is_some_and(|d| d >= 0.0), "{line}");
                assert!(o["steps"].as_u64().is_some(), "{line}");
                assert!(o["cached"].as_u64().is_some(), "{line}");
                allowed.extend(["duration", "steps", "cached"]);
            }
            other => panic!("unknown type {other:?}: {line}"),
        }
        if !matches!(kind, "warning" | "summary") {
            let step = step.unwrap_or_else(|| panic!("{kind} without step: {line}"));
            assert!(
                matches!(kind, "started" | "cached") || names.contains_key(&step),
                "{kind} before its step was named: {line}"
            );
        }
        if let Some(v) = o.get("vertex") {
            assert!(v.as_u64().is_some(), "bad vertex: {line}");
        }
        for k in o.keys() {
            assert!(
                allowed.contains(&k.as_str()),
                "unexpected field {k}: {line}"
            );
        }
        // Per vertex (or own step), time never goes back.
        let who = match o.get("vertex") {
            Some(v) => format!("v{v}"),
            None => format!("s{}", step.unwrap_or(0)),
        };
        let prev = last_time.insert(who, time).unwrap_or(0.0);
        assert!(time >= prev, "time went back: {line}");
        events.push(e);
    }
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some(json!("summary")),
        "the summary ends the stream:\n{stderr}"
    );
    events
}

fn json_build(t: &TestRoot, ctx: &Path) -> Vec<Value> {
    let out = t.output(&[
        "build",
        "--progress=json",
        "-t",
        "app",
        ctx.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    check_schema(&stderr(&out))
}

fn of<'a>(events: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    events.iter().filter(move |e| e["type"] == kind)
}

#[test]
fn json_events_follow_the_schema_and_name_the_changed_file() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let ctx = project(&t);

    let cold = json_build(&t, &ctx);
    let started = of(&cold, "started").count();
    let cached = of(&cold, "cached").count();
    assert_eq!(of(&cold, "done").count(), started, "{cold:#?}");
    // Only a step identical to one that ran (the second stage's FROM).
    assert!(
        of(&cold, "cached").all(|e| e["name"].as_str().unwrap().contains("] FROM ")),
        "{cold:#?}"
    );
    assert_eq!(
        of(&cold, "cache-miss").count(),
        0,
        "a first build explains nothing"
    );
    let export = of(&cold, "started")
        .find(|e| e["name"] == "exporting to image")
        .expect("the build command's own step");
    assert!(export.get("vertex").is_none(), "{export}");
    assert!(of(&cold, "detail").any(|e| e["step"] == export["step"]));
    assert!(
        of(&cold, "started")
            .filter(|e| e["name"] != "exporting to image")
            .all(|e| e["vertex"].is_u64()),
        "{cold:#?}"
    );
    let logs: Vec<(&str, &str)> = of(&cold, "log")
        .map(|e| (e["stream"].as_str().unwrap(), e["line"].as_str().unwrap()))
        .collect();
    assert!(logs.contains(&("stdout", "built from one")), "{logs:?}");
    assert!(logs.contains(&("stderr", "to-stderr")), "{logs:?}");
    let summary = cold.last().unwrap();
    assert_eq!(summary["steps"], json!(started + cached));
    assert_eq!(summary["cached"], json!(cached));

    let warm = json_build(&t, &ctx);
    let cached = of(&warm, "cached").count();
    assert!(cached >= 1, "{warm:#?}");
    assert_eq!(
        of(&warm, "started").count(),
        1,
        "only the export runs: {warm:#?}"
    );
    assert_eq!(of(&warm, "log").count(), 0, "{warm:#?}");
    let summary = warm.last().unwrap();
    assert_eq!(summary["steps"], json!(cached + 1));
    assert_eq!(summary["cached"], json!(cached));

    fs::write(ctx.join("app.txt"), "two\n").unwrap();
    let changed = json_build(&t, &ctx);
    let misses: Vec<&Value> = of(&changed, "cache-miss").collect();
    assert_eq!(
        misses.len(),
        1,
        "only the root cause is explained: {changed:#?}"
    );
    assert_eq!(
        misses[0]["reason"], "COPY app.txt /app.txt: app.txt changed",
        "{changed:#?}"
    );
    // Right after its step's start.
    let at = changed
        .iter()
        .position(|e| e["type"] == "cache-miss")
        .unwrap();
    assert_eq!(changed[at - 1]["type"], "started");
    assert_eq!(changed[at - 1]["step"], misses[0]["step"]);
    assert_eq!(changed[at - 1]["name"], "[base 2/3] COPY app.txt /app.txt");
    t.check_store();
}

#[test]
fn plain_says_why_a_step_missed_under_its_name() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let ctx = project(&t);
    t.build_ok(&ctx, &["-t", "app"]);
    fs::write(ctx.join("app.txt"), "two\n").unwrap();
    let out = t.build(&ctx, &["-t", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let progress = stderr(&out);
    let lines: Vec<&str> = progress.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.ends_with(" [base 2/3] COPY app.txt /app.txt"))
        .unwrap_or_else(|| panic!("{progress}"));
    let n = lines[at].split(' ').next().unwrap();
    assert_eq!(
        lines[at + 1],
        format!("{n} cache miss: COPY app.txt /app.txt: app.txt changed"),
        "{progress}"
    );
    assert_eq!(progress.matches("cache miss:").count(), 1, "{progress}");
}

/// Runs `builder ARGS` under a pseudo-terminal `columns` wide; returns the
/// lines the terminal shows at the end, and whether builder succeeded.
fn under_pty(t: &TestRoot, args: &[&str], columns: u16) -> (Vec<String>, bool) {
    let mut command = format!(
        "stty cols {columns} rows 24; exec {BIN} --root {}",
        t.root().display()
    );
    for a in args {
        command.push_str(&format!(" '{a}'"));
    }
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env_remove("BUILDER_ROOT")
        // `script` runs the command with $SHELL: one shell whatever the
        // machine's.
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    (terminal(&raw, usize::from(columns)), out.status.success())
}

/// What a terminal `width` columns wide shows after `raw`: enough of one
/// for indicatif's drawing (cursor up/down, line clearing, carriage
/// returns, deferred wrapping at the right margin), colors ignored.
fn terminal(raw: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    chars.next();
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut action = ' ';
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() || c == '~' {
                        action = c;
                        break;
                    }
                    params.push(c);
                }
                let n = params.parse::<usize>().unwrap_or(1).max(1);
                match action {
                    'A' => {
                        row = row.saturating_sub(n);
                        col = col.min(width - 1);
                    }
                    'B' => {
                        row += n;
                        col = col.min(width - 1);
                    }
                    'K' => {
                        while lines.len() <= row {
                            lines.push(Vec::new());
                        }
                        if params == "2" {
                            lines[row].clear();
                        } else {
                            lines[row].truncate(col);
                        }
                    }
                    _ => {}
                }
            }
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
            }
            c if c.is_control() => {}
            c => {
                if col >= width {
                    row += 1;
                    col = 0;
                }
                while lines.len() <= row {
                    lines.push(Vec::new());
                }
                let line = &mut lines[row];
                while line.len() <= col {
                    line.push(' ');
                }
                line[col] = c;
                col += 1;
            }
        }
    }
    let mut out: Vec<String> = lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_owned())
        .collect();
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out
}

/// The step lines of a tty display (` => [1/2] …`, ` => CACHED …`), not
/// the detail lines under them (` => => …`).
fn tty_steps(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with(" => ") && !l.starts_with(" => => "))
        .collect()
}

#[test]
fn tty_marks_cached_steps_and_ends_with_a_summary() {
    if !sandbox_available() || !tool_available("script") {
        return;
    }
    let t = TestRoot::new();
    let ctx = project(&t);
    let c = ctx.to_str().unwrap();

    // `auto` on a terminal is the interactive display.
    let (lines, ok) = under_pty(&t, &["build", "-t", "app", c], 80);
    let cold = lines.join("\n");
    assert!(ok, "{cold}");
    assert!(!cold.contains("#1 "), "plain output on a terminal:\n{cold}");
    let steps = tty_steps(&lines);
    for prefix in [
        " => [base 2/3] COPY app.txt /app.txt ",
        " => [base 3/3] RUN echo ",
        " => [stage-1 2/3] COPY --from=base /built /built ",
        " => [stage-1 3/3] RUN cat /built ",
        " => exporting to image ",
    ] {
        let line = steps
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?}:\n{cold}"));
        // The duration, right-aligned.
        assert!(
            line.ends_with('s') && line.chars().count() == 80,
            "{line:?}"
        );
    }
    for l in &steps {
        assert!(l.chars().count() <= 80, "{l:?} is wider than the terminal");
    }
    let cached = steps
        .iter()
        .filter(|l| l.starts_with(" => CACHED "))
        .count();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(" => => naming to docker.io/library/app:latest")),
        "{cold}"
    );
    let summary = format!(
        ": {} steps, {} run, {cached} cached",
        steps.len(),
        steps.len() - cached
    );
    assert!(
        lines[lines.len() - 1].starts_with("Build finished in ")
            && lines[lines.len() - 1].ends_with(&summary),
        "{summary}:\n{cold}"
    );

    let (lines, ok) = under_pty(&t, &["build", "--progress=tty", "-t", "app", c], 80);
    let warm = lines.join("\n");
    assert!(ok, "{warm}");
    let steps = tty_steps(&lines);
    assert!(
        steps
            .iter()
            .any(|l| l.starts_with(" => CACHED [stage-1 3/3] RUN cat /built ")),
        "{warm}"
    );
    for l in &steps {
        assert!(
            l.starts_with(" => CACHED ") || l.starts_with(" => exporting to image "),
            "{l:?} ran:\n{warm}"
        );
    }
    let summary = format!(": {} steps, 1 run, {} cached", steps.len(), steps.len() - 1);
    assert!(
        lines[lines.len() - 1].ends_with(&summary),
        "{summary}:\n{warm}"
    );
}

#[test]
fn tty_failure_is_marked_and_followed_by_the_last_lines() {
    if !sandbox_available() || !tool_available("script") {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = t.context(&[(
        "Dockerfile",
        "FROM busybox\nRUN for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line-$i; done; exit 3\n",
    )]);
    let (lines, ok) = under_pty(&t, &["build", "--progress=tty", ctx.to_str().unwrap()], 80);
    let screen = lines.join("\n");
    assert!(!ok, "{screen}");
    let at = lines
        .iter()
        .position(|l| l.starts_with(" => ERROR [2/2] RUN for i in"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(lines[at + 1].starts_with("Build failed after "), "{screen}");
    // Then the error, with the step's last output lines, as in every mode.
    assert_eq!(lines[at + 2], "------", "{screen}");
    assert!(
        lines[at + 3].starts_with(" > [2/2] RUN for i in"),
        "{screen}"
    );
    let shown: Vec<String> = (3..=12).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines[at + 4..at + 14], shown[..], "{screen}");
    assert_eq!(lines[at + 14], "------", "{screen}");
    assert!(screen.contains("exit code: 3"), "{screen}");
    // Each output line appears once: in the error, not in the display too.
    assert_eq!(
        lines.iter().filter(|l| *l == "line-12").count(),
        1,
        "{screen}"
    );
}

#[test]
fn quiet_shows_nothing_and_dash_q_only_the_id() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let ctx = project(&t);
    let c = ctx.to_str().unwrap();
    let out = t.output(&["build", "--progress=quiet", "-t", "app", c]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
    assert_eq!(stdout(&out), "");
    let out = t.output(&["build", "-q", c]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
    let id = stdout(&out);
    assert!(
        id.starts_with("sha256:") && id.trim_end().len() == 71,
        "{id:?}"
    );
    // `auto` without a terminal is plain.
    let out = t.output(&["build", "--progress=auto", c]);
    assert!(out.status.success());
    assert!(
        stderr(&out).starts_with("#1 [") && stderr(&out).contains("\n#1 CACHED\n"),
        "{}",
        stderr(&out)
    );
}

/// Ctrl-C typed at the terminal cancels the build; the display ends
/// cleanly (no running line left behind by the terminal's `^C` echo) and
/// the terminal's settings are as they were.
#[test]
fn tty_ctrl_c_leaves_a_clean_screen_and_terminal() {
    if !sandbox_available() || !tool_available("script") {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let seconds = common::unique_seconds();
    let ctx = t.context(&[(
        "Dockerfile",
        &format!("FROM busybox\nRUN echo waiting && sleep {seconds}\n"),
    )]);
    let command = format!(
        "stty cols 80 rows 24; stty -a | grep -o -- '-*echoctl'; {BIN} --root {} build --progress=tty {}; echo status=$?; stty -a | grep -o -- '-*echoctl'",
        t.root().display(),
        ctx.display()
    );
    let mut child = common::KillOnDrop(
        Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env_remove("BUILDER_ROOT")
            .env("TERM", "xterm-256color")
            // `script` runs the command with $SHELL. The terminal's Ctrl-C
            // reaches the whole foreground group, the shell included: dash
            // dies of it before printing the status, bash waits for its child
            // and goes on when the child exits instead of dying (as builder
            // does, with 130), so the lines after the build are printed.
            .env("SHELL", "/bin/bash")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let running =
        common::wait_for_process(&["sleep", &seconds], std::time::Duration::from_secs(30));
    assert!(!running.is_empty(), "the step never started");
    // Let the display draw the running step, then type Ctrl-C.
    std::thread::sleep(std::time::Duration::from_millis(300));
    use std::io::Write as _;
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(child.0.stdout.as_mut().unwrap(), &mut raw).unwrap();
    drop(stdin);
    child.0.wait().unwrap();
    let lines = terminal(&String::from_utf8_lossy(&raw), 80);
    let screen = lines.join("\n");
    assert_eq!(lines[0], "echoctl", "{screen}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(" => ERROR [2/2] RUN echo waiting")),
        "{screen}"
    );
    // Nothing left of the running line (its spinner and name).
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("RUN echo waiting") && !l.starts_with(" => ")),
        "{screen}"
    );
    assert!(
        lines.iter().any(|l| l == "error: build cancelled"),
        "{screen}"
    );
    assert!(lines.iter().any(|l| l == "status=130"), "{screen}");
    assert_eq!(lines.last().unwrap(), "echoctl", "{screen}");
    assert!(
        common::wait_until_gone(&["sleep", &seconds], std::time::Duration::from_secs(10))
            .is_empty()
    );
}
