//! `--progress=plain`: BuildKit's plain format, for CI logs. Every line
//! carries its step number, so parallel steps may interleave and still
//! read: `#3 [b 2/3] RUN make`, `#3 cache miss: …`, `#3 0.123 output`,
//! `#3 DONE 1.2s`, `#2 CACHED`, `#4 ERROR: …`; a blank line separates the
//! lines of different steps, and a summary line ends the build.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Instant;

use super::{Display, Stamp, Step, Summary, What, seconds, summary_text};

pub(super) struct Plain {
    out: Box<dyn Write + Send>,
    /// The step of the last line written (`Some(0)` for a line outside any
    /// step), for the blank line between steps.
    last: Option<usize>,
    /// When each step started, for the offsets of its output lines.
    started: HashMap<usize, Instant>,
    /// The line being written.
    buf: String,
}

impl Plain {
    pub(super) fn new(out: Box<dyn Write + Send>) -> Plain {
        Plain {
            out,
            last: None,
            started: HashMap::new(),
            buf: String::new(),
        }
    }

    /// Writes one line belonging to step `n` (0: none), in one write: stderr
    /// is unbuffered, and a write per piece made a step printing 300,000
    /// lines take seconds longer.
    fn line(&mut self, n: usize, args: std::fmt::Arguments<'_>) {
        self.buf.clear();
        if self.last.is_some_and(|last| last != n) {
            self.buf.push('\n');
        }
        self.last = Some(n);
        let _ = self.buf.write_fmt(args);
        self.buf.push('\n');
        // Progress is best effort: a closed stderr must not fail the build.
        let _ = self.out.write_all(self.buf.as_bytes());
        let _ = self.out.flush();
    }
}

impl Display for Plain {
    fn step(&mut self, stamp: Stamp, step: Step, what: What<'_>) {
        let n = step.n;
        match what {
            What::Started { name } => {
                self.started.insert(n, stamp.at);
                self.line(n, format_args!("#{n} {name}"));
            }
            What::Cached { name } => {
                self.line(n, format_args!("#{n} {name}"));
                self.line(n, format_args!("#{n} CACHED"));
            }
            What::Miss { reason } => self.line(n, format_args!("#{n} cache miss: {reason}")),
            What::Log { line, .. } => {
                // BuildKit shows the seconds since the step started.
                let at = self
                    .started
                    .get(&n)
                    .map(|t| stamp.at.saturating_duration_since(*t))
                    .unwrap_or_default();
                let line = line.strip_suffix('\r').unwrap_or(line);
                self.line(n, format_args!("#{n} {:.3} {line}", at.as_secs_f64()));
            }
            What::Detail { line } => self.line(n, format_args!("#{n} {line}")),
            What::Done { duration } => {
                self.started.remove(&n);
                self.line(n, format_args!("#{n} DONE {}", seconds(duration)));
            }
            What::Error { message } => {
                self.started.remove(&n);
                self.line(n, format_args!("#{n} ERROR: {message}"));
            }
        }
    }

    fn warning(&mut self, _: Stamp, message: &str) {
        self.line(0, format_args!("{message}"));
    }

    fn summary(&mut self, _: Stamp, summary: &Summary) {
        self.line(0, format_args!("{}", summary_text(summary)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testsupport::*;
    use super::super::{Mode, Renderer};

    fn render(events: fn(&Renderer)) -> String {
        let out = Shared::default();
        let r = Renderer::new(Mode::Plain, Box::new(out.clone()));
        events(&r);
        out.text()
    }

    /// Replaces the varying seconds of output lines with `T`, and of the
    /// summary with `S`.
    fn masked(text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            if let Some((head, tail)) = line.split_once(" in ").or(line.split_once(" after ")) {
                if head.starts_with("Build ") {
                    let (_, counts) = tail.split_once(':').unwrap();
                    out.push_str(&format!("{head} S:{counts}\n"));
                    continue;
                }
            }
            let mut parts = line.splitn(3, ' ');
            let (a, b, c) = (parts.next(), parts.next(), parts.next());
            match (a, b, c) {
                (Some(n), Some(t), Some(rest))
                    if n.starts_with('#') && t.contains('.') && t.parse::<f64>().is_ok() =>
                {
                    out.push_str(&format!("{n} T {rest}\n"))
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    #[test]
    fn parallel_steps_cached_miss_and_error() {
        let text = render(failing_build);
        assert_eq!(
            masked(&text),
            "\
#1 [a 1/2] FROM docker.io/library/busybox:latest
#1 CACHED

#2 [a 2/2] COPY src/ /app
#2 cache miss: COPY src/ /app: src/main.rs changed

#3 [b 2/2] RUN echo b

#2 T a one

#3 T b one

#2 T a two

#3 DONE 1.5s

#2 DONE 0.0s

#4 [stage-2 3/3] RUN make
#4 T make line 1
#4 T make line 2
#4 T make line 3
#4 T make line 4
#4 T make line 5
#4 T make line 6
#4 T make line 7
#4 T make line 8
#4 T make line 9
#4 T make line 10
#4 T make line 11
#4 T make line 12
#4 ERROR: process \"/bin/sh -c make\" did not complete successfully: exit code: 2

Build failed S: 4 steps, 3 run, 1 cached
"
        );
        // Output offsets count from the step's start, with milliseconds.
        let first = text.lines().find(|l| l.ends_with(" a one")).unwrap();
        let offset = first.split(' ').nth(1).unwrap();
        assert!(first.starts_with("#2 "), "{first}");
        assert_eq!(offset.len(), 5, "{first}");
        // Made right after the step started (however slow the machine).
        assert!(offset.parse::<f64>().unwrap() < 5.0, "{first}");
    }

    #[test]
    fn cached_build_with_own_steps_warning_and_summary() {
        let text = render(cached_build);
        let masked = masked(&text);
        let lines: Vec<&str> = masked.lines().collect();
        assert_eq!(
            lines[..9],
            [
                "#1 [1/2] FROM docker.io/library/busybox:latest",
                "#1 CACHED",
                "",
                "#2 [2/2] RUN echo hi",
                "#2 CACHED",
                "",
                "#3 exporting to image",
                "#3 writing image sha256:00 done",
                "#3 naming to docker.io/library/app:latest done",
            ]
        );
        assert!(lines[9].starts_with("#3 DONE "), "{}", lines[9]);
        assert_eq!(
            lines[10..],
            [
                "",
                "Dockerfile:3:1: warning: something to know",
                "Build finished S: 3 steps, 1 run, 2 cached",
            ]
        );
    }
}
