//! Build progress for a person or a program: an interactive display on a
//! terminal (`tty`), BuildKit's plain format for CI logs (`plain`), JSON
//! lines for tools (`json`), or nothing (`quiet`).
//!
//! Steps are numbered in the order they first appear, from 1. Besides the
//! solver's vertices, the build command reports its own steps (exporting,
//! naming) through [`Renderer::begin`] so that they read like BuildKit's.
//! The solver reports from several threads at once; every event goes
//! through one lock, so that lines never mix and times never go back.

mod json;
mod plain;
mod tty;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use frontend::graph::VertexId;
use solver::{LogStream, Progress, ProgressEvent};

pub(crate) use tty::{Screen, restore_terminal};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A line per running step that updates in place, on a terminal.
    Tty,
    /// BuildKit's `--progress=plain`.
    Plain,
    /// One JSON object per line and event.
    Json,
    /// Nothing.
    Quiet,
}

/// A step number, as shown after `#`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StepNo(usize);

/// A step as the displays see it: its number, and its vertex unless the
/// build command itself does it.
#[derive(Debug, Clone, Copy)]
struct Step {
    n: usize,
    vertex: Option<VertexId>,
}

/// What happened to a step. A step is `Started` then has `Log`/`Detail`
/// lines and ends `Done` or `Error`; or it is `Cached` and nothing else.
/// `Miss` comes right after `Started`.
#[derive(Debug, Clone, Copy)]
enum What<'a> {
    Started { name: &'a str },
    Cached { name: &'a str },
    Miss { reason: &'a str },
    Log { stream: LogStream, line: &'a str },
    Detail { line: &'a str },
    Done { duration: Duration },
    Error { message: &'a str },
}

/// When something happened.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    /// For differences: monotonic.
    at: Instant,
    /// Unix seconds, derived from `at` so that it never goes back either.
    unix: f64,
}

/// The end of a build.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    ok: bool,
    duration: Duration,
    /// Steps shown, cached ones included.
    steps: usize,
    cached: usize,
}

/// One way of showing progress. Called with the renderer's lock held.
trait Display: Send {
    fn step(&mut self, stamp: Stamp, step: Step, what: What<'_>);
    fn warning(&mut self, stamp: Stamp, message: &str);
    fn summary(&mut self, stamp: Stamp, summary: &Summary);
}

/// Shows nothing.
struct Quiet;

impl Display for Quiet {
    fn step(&mut self, _: Stamp, _: Step, _: What<'_>) {}
    fn warning(&mut self, _: Stamp, _: &str) {}
    fn summary(&mut self, _: Stamp, _: &Summary) {}
}

struct State {
    display: Box<dyn Display>,
    start: Instant,
    start_unix: f64,
    next: usize,
    vertices: HashMap<VertexId, usize>,
    /// Miss reasons that came before their step's start.
    misses: HashMap<VertexId, String>,
    /// When the build command's own running steps began.
    own: HashMap<StepNo, Instant>,
    cached: usize,
    /// Whether the summary was shown (it is shown once).
    summarized: bool,
}

/// Renders solver events and the build command's own steps.
pub(crate) struct Renderer {
    mode: Mode,
    state: Mutex<State>,
}

impl Renderer {
    /// A renderer writing lines to `out` (`tty` draws on the terminal of
    /// [`Renderer::tty`] instead).
    pub(crate) fn new(mode: Mode, out: Box<dyn Write + Send>) -> Renderer {
        let display: Box<dyn Display> = match mode {
            Mode::Plain => Box::new(plain::Plain::new(out)),
            Mode::Json => Box::new(json::Json::new(out)),
            Mode::Quiet => Box::new(Quiet),
            Mode::Tty => Box::new(tty::Tty::new(Screen::stderr())),
        };
        Renderer::with_display(mode, display)
    }

    /// A `tty` renderer drawing on `screen`.
    #[cfg(test)]
    pub(crate) fn tty(screen: Screen) -> Renderer {
        Renderer::with_display(Mode::Tty, Box::new(tty::Tty::new(screen)))
    }

    fn with_display(mode: Mode, display: Box<dyn Display>) -> Renderer {
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Renderer {
            mode,
            state: Mutex::new(State {
                display,
                start: Instant::now(),
                start_unix,
                next: 1,
                vertices: HashMap::new(),
                misses: HashMap::new(),
                own: HashMap::new(),
                cached: 0,
                summarized: false,
            }),
        }
    }

    /// Starts a step of the build command itself (`exporting to image`).
    pub(crate) fn begin(&self, description: &str) -> StepNo {
        let mut s = self.lock();
        let n = s.allocate();
        s.own.insert(StepNo(n), Instant::now());
        s.show(
            Step { n, vertex: None },
            What::Started { name: description },
        );
        StepNo(n)
    }

    /// A line of detail under a step (`naming to docker.io/library/app:latest done`).
    pub(crate) fn detail(&self, n: StepNo, line: &str) {
        self.lock().show(
            Step {
                n: n.0,
                vertex: None,
            },
            What::Detail { line },
        );
    }

    pub(crate) fn done(&self, n: StepNo) {
        let mut s = self.lock();
        let duration = s.own.remove(&n).map(|t| t.elapsed()).unwrap_or_default();
        s.show(
            Step {
                n: n.0,
                vertex: None,
            },
            What::Done { duration },
        );
    }

    pub(crate) fn failed(&self, n: StepNo, message: &str) {
        let mut s = self.lock();
        s.own.remove(&n);
        s.show(
            Step {
                n: n.0,
                vertex: None,
            },
            What::Error { message },
        );
    }

    /// A warning about the build, shown outside any step.
    pub(crate) fn warning(&self, message: &str) {
        let mut s = self.lock();
        let stamp = s.stamp();
        s.display.warning(stamp, message);
    }

    /// Ends the display with the total time and step counts; shown once,
    /// later calls do nothing, and not at all when no step was shown (a
    /// Dockerfile error is then all there is to say).
    pub(crate) fn summary(&self, ok: bool) {
        let mut s = self.lock();
        if s.summarized || s.next == 1 {
            return;
        }
        s.summarized = true;
        let stamp = s.stamp();
        let summary = Summary {
            ok,
            duration: stamp.at - s.start,
            steps: s.next - 1,
            cached: s.cached,
        };
        s.display.summary(stamp, &summary);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while printing leaves nothing inconsistent behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn allocate(&mut self) -> usize {
        let n = self.next;
        self.next += 1;
        n
    }

    fn vertex_step(&mut self, vertex: VertexId) -> Step {
        let n = match self.vertices.get(&vertex) {
            Some(&n) => n,
            None => {
                let n = self.allocate();
                self.vertices.insert(vertex, n);
                n
            }
        };
        Step {
            n,
            vertex: Some(vertex),
        }
    }

    fn stamp(&self) -> Stamp {
        let at = Instant::now();
        Stamp {
            at,
            unix: self.start_unix + (at - self.start).as_secs_f64(),
        }
    }

    fn show(&mut self, step: Step, what: What<'_>) {
        let stamp = self.stamp();
        self.display.step(stamp, step, what);
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
                let step = s.vertex_step(*vertex);
                s.show(step, What::Started { name: description });
                if let Some(reason) = s.misses.remove(vertex) {
                    s.show(step, What::Miss { reason: &reason });
                }
            }
            ProgressEvent::StepCached {
                vertex,
                description,
            } => {
                let step = s.vertex_step(*vertex);
                s.cached += 1;
                s.misses.remove(vertex);
                s.show(step, What::Cached { name: description });
            }
            // Shown under the step's name once it starts.
            ProgressEvent::CacheMiss { vertex, reason } => {
                s.misses.insert(*vertex, reason.clone());
            }
            ProgressEvent::Log {
                vertex,
                stream,
                line,
            } => {
                let step = s.vertex_step(*vertex);
                s.show(
                    step,
                    What::Log {
                        stream: *stream,
                        line,
                    },
                );
            }
            ProgressEvent::StepDone { vertex, duration } => {
                let step = s.vertex_step(*vertex);
                s.show(
                    step,
                    What::Done {
                        duration: *duration,
                    },
                );
            }
            ProgressEvent::StepFailed { vertex, message } => {
                let step = s.vertex_step(*vertex);
                s.show(step, What::Error { message });
            }
        }
    }
}

fn stream_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    }
}

/// `1.2s`, or `1m05.3s` from a minute on.
fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = (secs * 10.0).round() / 10.0;
        let minutes = (whole / 60.0).floor();
        format!("{}m{:04.1}s", minutes as u64, whole - minutes * 60.0)
    }
}

/// The summary's text: `Build finished in 1.2s: 5 steps, 3 run, 2 cached`.
fn summary_text(s: &Summary) -> String {
    let outcome = if s.ok {
        "Build finished in"
    } else {
        "Build failed after"
    };
    let steps = if s.steps == 1 { "step" } else { "steps" };
    format!(
        "{outcome} {}: {} {steps}, {} run, {} cached",
        seconds(s.duration),
        s.steps,
        s.steps - s.cached,
        s.cached
    )
}

#[cfg(test)]
mod testsupport {
    //! Synthetic event sequences and a writer the tests can read back.

    use super::*;
    use std::sync::Arc;

    /// A writer whose contents the test can read afterwards.
    #[derive(Clone, Default)]
    pub(super) struct Shared(pub(super) Arc<Mutex<Vec<u8>>>);

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
        pub(super) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn started(r: &Renderer, vertex: VertexId, description: &str) {
        r.event(&ProgressEvent::StepStarted {
            vertex,
            description: description.into(),
        });
    }

    fn log(r: &Renderer, vertex: VertexId, line: &str) {
        r.event(&ProgressEvent::Log {
            vertex,
            stream: LogStream::Stdout,
            line: line.into(),
        });
    }

    fn done(r: &Renderer, vertex: VertexId, millis: u64) {
        r.event(&ProgressEvent::StepDone {
            vertex,
            duration: Duration::from_millis(millis),
        });
    }

    /// A build of three stages: the base is cached, two RUN steps run in
    /// parallel (one after a cache miss) with their output interleaved, then
    /// the last step fails after some output.
    pub(super) fn failing_build(r: &Renderer) {
        r.event(&ProgressEvent::StepCached {
            vertex: 1,
            description: "[a 1/2] FROM docker.io/library/busybox:latest".into(),
        });
        r.event(&ProgressEvent::CacheMiss {
            vertex: 2,
            reason: "COPY src/ /app: src/main.rs changed".into(),
        });
        started(r, 2, "[a 2/2] COPY src/ /app");
        started(r, 5, "[b 2/2] RUN echo b");
        log(r, 2, "a one");
        log(r, 5, "b one");
        log(r, 2, "a two");
        done(r, 5, 1500);
        done(r, 2, 20);
        started(r, 7, "[stage-2 3/3] RUN make");
        for i in 1..=12 {
            log(r, 7, &format!("make line {i}"));
        }
        r.event(&ProgressEvent::StepFailed {
            vertex: 7,
            message: "process \"/bin/sh -c make\" did not complete successfully: exit code: 2"
                .into(),
        });
        r.summary(false);
    }

    /// A cached build followed by the build command's own step.
    pub(super) fn cached_build(r: &Renderer) {
        r.event(&ProgressEvent::StepCached {
            vertex: 1,
            description: "[1/2] FROM docker.io/library/busybox:latest".into(),
        });
        r.event(&ProgressEvent::StepCached {
            vertex: 3,
            description: "[2/2] RUN echo hi".into(),
        });
        let n = r.begin("exporting to image");
        r.detail(n, "writing image sha256:00 done");
        r.detail(n, "naming to docker.io/library/app:latest done");
        r.done(n);
        r.warning("Dockerfile:3:1: warning: something to know");
        r.summary(true);
        // Once only.
        r.summary(true);
    }
}

#[cfg(test)]
mod tests {
    use super::testsupport::*;
    use super::*;

    #[test]
    fn quiet_prints_nothing() {
        let out = Shared::default();
        let r = Renderer::new(Mode::Quiet, Box::new(out.clone()));
        failing_build(&r);
        cached_build(&r);
        assert_eq!(out.text(), "");
    }

    #[test]
    fn no_summary_without_steps() {
        for mode in [Mode::Plain, Mode::Json] {
            let out = Shared::default();
            let r = Renderer::new(mode, Box::new(out.clone()));
            r.summary(false);
            assert_eq!(out.text(), "", "{mode:?}");
        }
    }

    #[test]
    fn durations_read_as_seconds_then_minutes() {
        assert_eq!(seconds(Duration::from_millis(0)), "0.0s");
        assert_eq!(seconds(Duration::from_millis(1234)), "1.2s");
        assert_eq!(seconds(Duration::from_millis(59_940)), "59.9s");
        assert_eq!(seconds(Duration::from_millis(65_300)), "1m05.3s");
        assert_eq!(seconds(Duration::from_millis(3_599_990)), "60m00.0s");
    }

    #[test]
    fn summary_counts_steps_run_and_cached() {
        let s = Summary {
            ok: true,
            duration: Duration::from_millis(2345),
            steps: 5,
            cached: 2,
        };
        assert_eq!(
            summary_text(&s),
            "Build finished in 2.3s: 5 steps, 3 run, 2 cached"
        );
        let s = Summary {
            ok: false,
            steps: 1,
            cached: 0,
            ..s
        };
        assert_eq!(
            summary_text(&s),
            "Build failed after 2.3s: 1 step, 1 run, 0 cached"
        );
    }

    /// Events from many threads at once come out whole, each step numbered
    /// once.
    #[test]
    fn parallel_events_keep_lines_whole() {
        let out = Shared::default();
        let r = Renderer::new(Mode::Plain, Box::new(out.clone()));
        std::thread::scope(|scope| {
            for v in 0..8 {
                let r = &r;
                scope.spawn(move || {
                    r.event(&ProgressEvent::StepStarted {
                        vertex: v,
                        description: format!("RUN step {v}"),
                    });
                    for i in 0..200 {
                        r.event(&ProgressEvent::Log {
                            vertex: v,
                            stream: LogStream::Stderr,
                            line: format!("v{v} line {i}"),
                        });
                    }
                    r.event(&ProgressEvent::StepDone {
                        vertex: v,
                        duration: Duration::from_millis(1),
                    });
                });
            }
        });
        let text = out.text();
        let mut numbers = HashMap::new();
        let mut lines = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix('#') {
                let (n, rest) = rest.split_once(' ').unwrap();
                if let Some(name) = rest.strip_prefix("RUN step ") {
                    assert!(numbers.insert(name.to_owned(), n.to_owned()).is_none());
                    continue;
                }
                if rest.starts_with("DONE ") {
                    continue;
                }
                let (_, text) = rest.split_once(' ').unwrap();
                let v = text.strip_prefix('v').unwrap().split_once(' ').unwrap().0;
                assert_eq!(numbers[v], n, "{line}");
                lines += 1;
            } else {
                panic!("line without a step number: {line:?}");
            }
        }
        assert_eq!(lines, 8 * 200);
        assert_eq!(numbers.len(), 8);
    }
}
