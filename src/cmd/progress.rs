//! Build progress for a person or a program: BuildKit's plain format
//! (`#N [stage 1/3] RUN ...`, `#N 0.123 output`, `#N DONE 0.3s`), JSON lines,
//! or nothing.
//!
//! Steps are numbered in the order they start, from 1. Besides the solver's
//! vertices, the build command reports its own steps (exporting, naming)
//! through [`Renderer::begin`] so that they read like BuildKit's.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use frontend::graph::VertexId;
use solver::{LogStream, Progress, ProgressEvent};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// BuildKit's `--progress=plain`.
    Plain,
    /// One JSON object per line and event.
    Json,
    /// Nothing.
    Quiet,
}

/// A step number, as shown after `#`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepNo(usize);

struct State {
    out: Box<dyn Write + Send>,
    next: usize,
    vertices: HashMap<VertexId, StepNo>,
    started: HashMap<usize, Instant>,
    /// Whether anything was printed yet (steps are separated by a blank line).
    printed: bool,
}

/// Renders solver events and the build command's own steps.
pub(crate) struct Renderer {
    mode: Mode,
    state: Mutex<State>,
}

impl Renderer {
    pub(crate) fn new(mode: Mode, out: Box<dyn Write + Send>) -> Renderer {
        Renderer {
            mode,
            state: Mutex::new(State {
                out,
                next: 1,
                vertices: HashMap::new(),
                started: HashMap::new(),
                printed: false,
            }),
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Starts a step of the build command itself (`exporting to image`).
    pub(crate) fn begin(&self, description: &str) -> StepNo {
        let mut s = self.lock();
        let n = s.allocate();
        self.started(&mut s, n, description);
        n
    }

    /// A line of detail under a step (`naming to docker.io/library/app:latest done`).
    pub(crate) fn detail(&self, n: StepNo, line: &str) {
        let mut s = self.lock();
        match self.mode {
            Mode::Plain => s.line(format_args!("#{} {line}", n.0)),
            Mode::Json => s.json(serde_json::json!({"step": n.0, "detail": line})),
            Mode::Quiet => {}
        }
    }

    pub(crate) fn done(&self, n: StepNo) {
        let mut s = self.lock();
        let elapsed = s
            .started
            .remove(&n.0)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        self.finished(&mut s, n, elapsed);
    }

    pub(crate) fn failed(&self, n: StepNo, message: &str) {
        let mut s = self.lock();
        s.started.remove(&n.0);
        self.errored(&mut s, n, message);
    }

    /// Writes a line outside any step (warnings).
    pub(crate) fn note(&self, line: &str) {
        let mut s = self.lock();
        match self.mode {
            Mode::Plain => s.line(format_args!("{line}")),
            Mode::Json => s.json(serde_json::json!({"note": line})),
            Mode::Quiet => {}
        }
    }

    fn started(&self, s: &mut State, n: StepNo, description: &str) {
        s.started.insert(n.0, Instant::now());
        match self.mode {
            Mode::Plain => {
                if s.printed {
                    s.line(format_args!(""));
                }
                s.line(format_args!("#{} {description}", n.0));
            }
            Mode::Json => s.json(serde_json::json!({
                "step": n.0, "started": description,
            })),
            Mode::Quiet => {}
        }
    }

    fn finished(&self, s: &mut State, n: StepNo, elapsed: Duration) {
        match self.mode {
            Mode::Plain => s.line(format_args!("#{} DONE {:.1}s", n.0, elapsed.as_secs_f64())),
            Mode::Json => s.json(serde_json::json!({
                "step": n.0, "done": true, "seconds": elapsed.as_secs_f64(),
            })),
            Mode::Quiet => {}
        }
    }

    fn errored(&self, s: &mut State, n: StepNo, message: &str) {
        match self.mode {
            Mode::Plain => s.line(format_args!("#{} ERROR: {message}", n.0)),
            Mode::Json => s.json(serde_json::json!({"step": n.0, "error": message})),
            Mode::Quiet => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while printing leaves nothing inconsistent behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn allocate(&mut self) -> StepNo {
        let n = StepNo(self.next);
        self.next += 1;
        n
    }

    fn number(&mut self, vertex: VertexId) -> StepNo {
        if let Some(&n) = self.vertices.get(&vertex) {
            return n;
        }
        let n = self.allocate();
        self.vertices.insert(vertex, n);
        n
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        self.printed = true;
        // Progress is best effort: a closed stderr must not fail the build.
        let _ = writeln!(self.out, "{args}");
        let _ = self.out.flush();
    }

    fn json(&mut self, value: serde_json::Value) {
        self.line(format_args!("{value}"));
    }
}

impl Progress for Renderer {
    fn event(&self, event: &ProgressEvent) {
        if self.mode == Mode::Quiet {
            return;
        }
        let mut s = self.lock();
        match event {
            ProgressEvent::StepStarted {
                vertex,
                description,
            } => {
                let n = s.number(*vertex);
                self.started(&mut s, n, description);
            }
            ProgressEvent::Log {
                vertex,
                stream,
                line,
            } => {
                let n = s.number(*vertex);
                let at = s.started.get(&n.0).map(|t| t.elapsed()).unwrap_or_default();
                match self.mode {
                    // BuildKit shows the seconds since the step started.
                    Mode::Plain => s.line(format_args!("#{} {:.3} {line}", n.0, at.as_secs_f64())),
                    Mode::Json => s.json(serde_json::json!({
                        "step": n.0,
                        "stream": stream_name(*stream),
                        "line": line,
                    })),
                    Mode::Quiet => {}
                }
            }
            ProgressEvent::StepDone { vertex, duration } => {
                let n = s.number(*vertex);
                s.started.remove(&n.0);
                self.finished(&mut s, n, *duration);
            }
            ProgressEvent::StepFailed { vertex, message } => {
                let n = s.number(*vertex);
                s.started.remove(&n.0);
                self.errored(&mut s, n, message);
            }
            // Rendered properly by the progress rework (issue 5).
            ProgressEvent::StepCached {
                vertex,
                description,
            } => {
                let n = s.number(*vertex);
                self.started(&mut s, n, description);
                s.started.remove(&n.0);
                self.finished(&mut s, n, Duration::ZERO);
            }
            ProgressEvent::CacheMiss { .. } => {}
        }
    }
}

fn stream_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer whose contents the test can read afterwards.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn events(r: &Renderer) {
        r.event(&ProgressEvent::StepStarted {
            vertex: 4,
            description: "[1/2] FROM docker.io/library/busybox:latest".into(),
        });
        r.event(&ProgressEvent::StepDone {
            vertex: 4,
            duration: Duration::from_millis(20),
        });
        r.event(&ProgressEvent::StepStarted {
            vertex: 7,
            description: "[2/2] RUN echo hi".into(),
        });
        r.event(&ProgressEvent::Log {
            vertex: 7,
            stream: LogStream::Stdout,
            line: "hi".into(),
        });
        r.event(&ProgressEvent::StepFailed {
            vertex: 7,
            message: "exit code: 1".into(),
        });
        let n = r.begin("exporting to image");
        r.detail(n, "writing image sha256:00 done");
        r.done(n);
    }

    #[test]
    fn plain_numbers_steps_in_start_order() {
        let out = Shared::default();
        let r = Renderer::new(Mode::Plain, Box::new(out.clone()));
        events(&r);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#1 [1/2] FROM docker.io/library/busybox:latest");
        assert_eq!(lines[1], "#1 DONE 0.0s");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "#2 [2/2] RUN echo hi");
        assert!(
            lines[4].starts_with("#2 0.0") && lines[4].ends_with(" hi"),
            "{}",
            lines[4]
        );
        assert_eq!(lines[5], "#2 ERROR: exit code: 1");
        assert_eq!(lines[6], "");
        assert_eq!(lines[7], "#3 exporting to image");
        assert_eq!(lines[8], "#3 writing image sha256:00 done");
        assert!(lines[9].starts_with("#3 DONE "), "{}", lines[9]);
        assert_eq!(lines.len(), 10);
    }

    #[test]
    fn json_lines_parse_and_quiet_prints_nothing() {
        let out = Shared::default();
        let r = Renderer::new(Mode::Json, Box::new(out.clone()));
        events(&r);
        let values: Vec<serde_json::Value> = out
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            values[0]["started"],
            "[1/2] FROM docker.io/library/busybox:latest"
        );
        assert_eq!(values[2]["step"], 2);
        assert_eq!(values[3]["line"], "hi");
        assert_eq!(values[3]["stream"], "stdout");
        assert_eq!(values[4]["error"], "exit code: 1");

        let out = Shared::default();
        let r = Renderer::new(Mode::Quiet, Box::new(out.clone()));
        events(&r);
        r.note("warning: x");
        assert_eq!(out.text(), "");
    }
}
