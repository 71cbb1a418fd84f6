//! `--progress=tty`: what a person at a terminal sees. Each running step
//! has a line that updates in place (spinner, name, its latest output line,
//! elapsed time); a finished step becomes a permanent line with its
//! duration, `CACHED` for a cache hit or `ERROR` for a failure, and its
//! cache-miss reason under it. A summary ends it. (A failed step's last
//! output lines follow in the build's error, in every mode.)
//!
//! Drawing is indicatif's `MultiProgress`, on a [`Screen`]: the terminal
//! on stderr (buffered, so that a redraw reaches it in one write and does
//! not flicker), or an in-memory terminal for tests. Everything is cut to
//! the screen's width so that no line wraps and breaks the redraw.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::{Style, Term, measure_text_width, truncate_str};
use indicatif::TermLike;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use nix::sys::termios::{LocalFlags, SetArg, Termios, tcgetattr, tcsetattr};

use super::{Display, Stamp, Step, Summary, What, seconds, summary_text};

/// Redraws a second at most.
const REFRESH_HZ: u8 = 10;
/// The spinner's tick.
const TICK: Duration = Duration::from_millis(100);
/// The room kept for a step's time at the end of its line (`10m05.3s`).
const TIME_WIDTH: usize = 8;

/// Where the tty display draws.
#[derive(Debug, Clone)]
pub(crate) struct Screen {
    inner: Arc<ScreenKind>,
}

#[derive(Debug)]
enum ScreenKind {
    Stderr(Term),
    /// Made by tests only.
    #[cfg_attr(not(test), allow(dead_code))]
    Memory(Mutex<Frames>),
}

/// A terminal in memory that, like the buffered stderr, shows what was
/// written only when it is flushed: a test reading the screen while a
/// redraw is half done sees the frame before it, as a person would.
#[derive(Debug)]
struct Frames {
    /// Written to by the display.
    drawing: Emulator,
    /// What the last flush showed.
    shown: Emulator,
}

impl Screen {
    /// The terminal on stderr (drawn on even when stderr is not one, as
    /// `--progress=tty` asks).
    pub(crate) fn stderr() -> Screen {
        Screen {
            inner: Arc::new(ScreenKind::Stderr(Term::buffered_stderr())),
        }
    }

    /// A terminal in memory, `width` columns wide, for tests.
    #[cfg(test)]
    pub(crate) fn memory(width: u16) -> Screen {
        let blank = Emulator {
            width,
            ..Emulator::default()
        };
        Screen {
            inner: Arc::new(ScreenKind::Memory(Mutex::new(Frames {
                drawing: blank.clone(),
                shown: blank,
            }))),
        }
    }

    /// The lines a terminal would show now (without colors), and the
    /// texts written that were wider than the screen (and so wrapped).
    #[cfg(test)]
    pub(crate) fn contents(&self) -> (Vec<String>, Vec<String>) {
        match &*self.inner {
            ScreenKind::Memory(f) => {
                let f = f.lock().unwrap();
                (f.shown.screen(), f.shown.too_wide.clone())
            }
            ScreenKind::Stderr(_) => (Vec::new(), Vec::new()),
        }
    }

    fn columns(&self) -> usize {
        usize::from(TermLike::width(self)).max(20)
    }

    fn emulate<T>(&self, f: impl FnOnce(&mut Emulator) -> T) -> Option<T> {
        match &*self.inner {
            ScreenKind::Memory(m) => {
                Some(f(&mut m.lock().unwrap_or_else(|p| p.into_inner()).drawing))
            }
            ScreenKind::Stderr(_) => None,
        }
    }
}

impl TermLike for Screen {
    fn width(&self) -> u16 {
        match &*self.inner {
            // A terminal's size, or 80 columns when stderr is no terminal.
            ScreenKind::Stderr(t) => match t.size_checked() {
                Some((_, w)) if w > 0 => w,
                _ => 80,
            },
            ScreenKind::Memory(f) => f.lock().unwrap_or_else(|p| p.into_inner()).drawing.width,
        }
    }

    fn height(&self) -> u16 {
        match &*self.inner {
            ScreenKind::Stderr(t) => match t.size_checked() {
                Some((h, _)) if h > 0 => h,
                _ => 24,
            },
            ScreenKind::Memory(_) => 24,
        }
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.move_cursor_up(n),
            ScreenKind::Memory(_) if n == 0 => Ok(()),
            ScreenKind::Memory(_) => {
                self.emulate(|e| {
                    e.row = e.row.saturating_sub(n);
                    e.col = e.col.min(usize::from(e.width).saturating_sub(1));
                });
                Ok(())
            }
        }
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.move_cursor_down(n),
            ScreenKind::Memory(_) if n == 0 => Ok(()),
            ScreenKind::Memory(_) => {
                self.emulate(|e| {
                    e.row += n;
                    e.col = e.col.min(usize::from(e.width).saturating_sub(1));
                });
                Ok(())
            }
        }
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.move_cursor_right(n),
            ScreenKind::Memory(_) if n == 0 => Ok(()),
            ScreenKind::Memory(_) => {
                self.emulate(|e| e.col = (e.col + n).min(usize::from(e.width) - 1));
                Ok(())
            }
        }
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.move_cursor_left(n),
            ScreenKind::Memory(_) if n == 0 => Ok(()),
            ScreenKind::Memory(_) => {
                self.emulate(|e| e.col = e.col.min(usize::from(e.width) - 1).saturating_sub(n));
                Ok(())
            }
        }
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.write_line(s),
            ScreenKind::Memory(_) => {
                self.emulate(|e| {
                    e.write(s);
                    e.write("\n");
                });
                Ok(())
            }
        }
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.write_str(s),
            ScreenKind::Memory(_) => {
                self.emulate(|e| e.write(s));
                Ok(())
            }
        }
    }

    fn clear_line(&self) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.clear_line(),
            ScreenKind::Memory(_) => {
                self.emulate(Emulator::clear_line);
                Ok(())
            }
        }
    }

    fn flush(&self) -> io::Result<()> {
        match &*self.inner {
            ScreenKind::Stderr(t) => t.flush(),
            ScreenKind::Memory(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                f.shown = f.drawing.clone();
                Ok(())
            }
        }
    }
}

/// Just enough of a terminal for indicatif's drawing: lines of text, a
/// cursor, carriage returns, and wrapping at the right margin (deferred, as
/// in xterm: the cursor waits there until the next character).
#[derive(Debug, Default, Clone)]
struct Emulator {
    width: u16,
    lines: Vec<String>,
    row: usize,
    col: usize,
    /// Texts given in one write that were wider than the screen.
    too_wide: Vec<String>,
}

impl Emulator {
    fn line(&mut self) -> &mut String {
        while self.lines.len() <= self.row {
            self.lines.push(String::new());
        }
        &mut self.lines[self.row]
    }

    fn write(&mut self, s: &str) {
        let plain = console::strip_ansi_codes(s).into_owned();
        for text in plain.split(['\r', '\n']) {
            if measure_text_width(text.trim_end()) > usize::from(self.width) {
                self.too_wide.push(text.trim_end().to_owned());
            }
        }
        for c in plain.chars() {
            match c {
                '\r' => self.col = 0,
                '\n' => {
                    self.row += 1;
                    self.col = 0;
                }
                c => {
                    if self.col >= usize::from(self.width) {
                        self.row += 1;
                        self.col = 0;
                    }
                    let col = self.col;
                    let line = self.line();
                    let mut chars: Vec<char> = line.chars().collect();
                    while chars.len() <= col {
                        chars.push(' ');
                    }
                    chars[col] = c;
                    *line = chars.into_iter().collect::<String>();
                    self.col += 1;
                }
            }
        }
    }

    fn clear_line(&mut self) {
        self.line().clear();
        self.col = 0;
    }

    /// The screen's lines, without trailing blanks.
    #[cfg(test)]
    fn screen(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.lines.iter().map(|l| l.trim_end().to_owned()).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }
}

/// A step that is running.
struct Running {
    bar: ProgressBar,
    name: String,
    miss: Option<String>,
    /// Detail lines (the build command's own steps), shown under it.
    details: Vec<String>,
    started: std::time::Instant,
    /// Its latest output line, read when the line is drawn (10 times a
    /// second) rather than formatted for every line a step prints.
    latest: Arc<Mutex<String>>,
}

/// The terminal's settings before the display turned off its echo of
/// control characters, to put back at the end (or on a forced exit).
static SAVED_TERMIOS: Mutex<Option<Termios>> = Mutex::new(None);

/// Stops the terminal on stderr from echoing Ctrl-C as `^C` while the
/// display runs: indicatif leaves the cursor at the right margin, waiting
/// to wrap, so the echo would start a line the next redraw does not know
/// about and a stale running line would stay on screen. Harmless if never
/// undone (only the `^C` is not shown).
fn quiet_control_echo() {
    let stderr = io::stderr();
    let Ok(mut termios) = tcgetattr(&stderr) else {
        return; // not a terminal
    };
    if !termios.local_flags.contains(LocalFlags::ECHOCTL) {
        return;
    }
    let saved = termios.clone();
    termios.local_flags.remove(LocalFlags::ECHOCTL);
    if tcsetattr(&stderr, SetArg::TCSANOW, &termios).is_ok() {
        *SAVED_TERMIOS.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
    }
}

/// Puts back what [`quiet_control_echo`] changed, if anything.
pub(crate) fn restore_terminal() {
    let saved = SAVED_TERMIOS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(saved) = saved {
        let _ = tcsetattr(io::stderr(), SetArg::TCSANOW, &saved);
    }
}

pub(super) struct Tty {
    screen: Screen,
    multi: MultiProgress,
    style: ProgressStyle,
    running: HashMap<usize, Running>,
}

impl Tty {
    pub(super) fn new(screen: Screen) -> Tty {
        if matches!(&*screen.inner, ScreenKind::Stderr(_)) {
            quiet_control_echo();
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(screen.clone()),
            REFRESH_HZ,
        ));
        // Not `set_move_cursor`: with no running step left, indicatif would
        // then return to the start of the last permanent line and write over
        // it. Clearing and rewriting does not flicker as the terminal gets
        // each redraw in one write (the screen is buffered until flushed).
        let style = ProgressStyle::with_template(" {spinner:.cyan} {line} {secs:>8}")
            .expect("the template is valid")
            .with_key("secs", |state: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&seconds(state.elapsed()));
            })
            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
        Tty {
            screen,
            multi,
            style,
            running: HashMap::new(),
        }
    }

    /// Prints a permanent line above the running steps.
    fn print(&self, line: &str) {
        // Best effort, as all progress.
        let _ = self.multi.println(line);
    }

    /// ` => CACHED [1/2] FROM busybox            0.0s`, cut to the width.
    fn finished_line(&self, tag: Option<(&str, Style)>, name: &str, duration: Duration) -> String {
        let width = self.screen.columns();
        let time = seconds(duration);
        let tag_text = tag
            .as_ref()
            .map(|(t, _)| format!("{t} "))
            .unwrap_or_default();
        // " => " + tag + name + " " + time, time right-aligned.
        let room = width.saturating_sub(4 + tag_text.len() + 1 + TIME_WIDTH);
        let name = one_line(name);
        let name = truncate_str(&name, room, "…");
        let pad = width
            .saturating_sub(4 + tag_text.len() + measure_text_width(&name) + time.len())
            .max(1);
        let tag = match tag {
            Some((t, style)) => format!("{} ", style.apply_to(t)),
            None => String::new(),
        };
        format!(" => {tag}{name}{}{}", " ".repeat(pad), dim().apply_to(time))
    }

    /// A line under a step (`=> => naming to … done`, `cache miss: …`).
    fn sub_line(&self, text: &str, style: Style) -> String {
        let width = self.screen.columns();
        let text = one_line(text);
        let text = truncate_str(&text, width.saturating_sub(8), "…");
        format!(" => => {}", style.apply_to(text))
    }

    fn finish(&mut self, n: usize) -> Option<Running> {
        let running = self.running.remove(&n)?;
        running.bar.finish_and_clear();
        self.multi.remove(&running.bar);
        Some(running)
    }
}

impl Display for Tty {
    fn step(&mut self, stamp: Stamp, step: Step, what: What<'_>) {
        let n = step.n;
        match what {
            What::Started { name } => {
                let latest = Arc::new(Mutex::new(String::new()));
                let (screen, shown, line) = (self.screen.clone(), name.to_owned(), latest.clone());
                let style = self.style.clone().with_key(
                    "line",
                    move |_: &ProgressState, w: &mut dyn fmt::Write| {
                        let latest = line.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = w.write_str(&running_message(screen.columns(), &shown, &latest));
                    },
                );
                let bar = self.multi.add(ProgressBar::new_spinner().with_style(style));
                bar.enable_steady_tick(TICK);
                self.running.insert(
                    n,
                    Running {
                        bar,
                        name: name.to_owned(),
                        miss: None,
                        details: Vec::new(),
                        started: stamp.at,
                        latest,
                    },
                );
            }
            What::Cached { name } => {
                let line = self.finished_line(Some(("CACHED", cached())), name, Duration::ZERO);
                self.print(&line);
            }
            What::Miss { reason } => {
                if let Some(r) = self.running.get_mut(&n) {
                    r.miss = Some(reason.to_owned());
                }
            }
            What::Log { line, .. } | What::Detail { line } => {
                let Some(r) = self.running.get_mut(&n) else {
                    return;
                };
                let mut latest = r.latest.lock().unwrap_or_else(|p| p.into_inner());
                latest.clear();
                latest.push_str(line);
                drop(latest);
                if matches!(what, What::Detail { .. }) {
                    r.details.push(line.to_owned());
                }
            }
            What::Done { duration } => {
                let Some(r) = self.finish(n) else { return };
                let mut out = self.finished_line(None, &r.name, duration);
                for d in &r.details {
                    out.push('\n');
                    out.push_str(&self.sub_line(d, Style::new()));
                }
                if let Some(reason) = &r.miss {
                    out.push('\n');
                    out.push_str(&self.sub_line(&format!("cache miss: {reason}"), miss()));
                }
                self.print(&out);
            }
            What::Error { .. } => {
                let Some(r) = self.finish(n) else { return };
                let duration = stamp.at.saturating_duration_since(r.started);
                let mut out = self.finished_line(Some(("ERROR", error())), &r.name, duration);
                if let Some(reason) = &r.miss {
                    out.push('\n');
                    out.push_str(&self.sub_line(&format!("cache miss: {reason}"), miss()));
                }
                self.print(&out);
            }
        }
    }

    fn warning(&mut self, _: Stamp, message: &str) {
        self.print(&format!(
            "{}",
            Style::new().yellow().for_stderr().apply_to(message)
        ));
    }

    fn summary(&mut self, _: Stamp, summary: &Summary) {
        let left: Vec<usize> = self.running.keys().copied().collect();
        for n in left {
            self.finish(n);
        }
        let style = if summary.ok {
            Style::new().green().bold().for_stderr()
        } else {
            error()
        };
        self.print(&format!("{}", style.apply_to(summary_text(summary))));
        let _ = self.multi.clear();
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.bar.finish_and_clear();
        }
        let _ = self.multi.clear();
        if matches!(&*self.screen.inner, ScreenKind::Stderr(_)) {
            restore_terminal();
        }
    }
}

/// A running step's line between its spinner and its time: its name, then
/// its latest output, both cut so that the output keeps some room, padded
/// to the room there is so that the time stays right-aligned.
fn running_message(columns: usize, name: &str, latest: &str) -> String {
    // " ⠋ " + message + " " + time, one column spare.
    let room = columns.saturating_sub(3 + 1 + TIME_WIDTH + 1);
    let name = one_line(name);
    let latest = one_line(latest);
    let text = if latest.trim().is_empty() {
        truncate_str(&name, room, "…").into_owned()
    } else {
        let separator = " │ ";
        let latest_width = measure_text_width(&latest);
        let name_width = measure_text_width(&name);
        let name_room = name_width.min(room / 2).max(
            room.saturating_sub(separator.chars().count() + latest_width)
                .min(name_width),
        );
        let name = truncate_str(&name, name_room, "…");
        let rest = room.saturating_sub(measure_text_width(&name) + 3);
        let latest = truncate_str(&latest, rest, "…");
        format!(
            "{name}{}{}",
            dim().apply_to(separator),
            dim().apply_to(latest)
        )
    };
    let pad = room.saturating_sub(measure_text_width(&text));
    format!("{text}{}", " ".repeat(pad))
}

/// What a terminal shows of an output line on one line: after its last
/// carriage return (progress bars of tools), without escape sequences and
/// control characters, tabs as spaces.
fn one_line(line: &str) -> String {
    let line = line.trim_end_matches(['\r', '\n']);
    let line = line.rsplit('\r').next().unwrap_or(line);
    let line = console::strip_ansi_codes(line);
    line.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

fn dim() -> Style {
    Style::new().dim().for_stderr()
}

fn cached() -> Style {
    Style::new().blue().bold().for_stderr()
}

fn miss() -> Style {
    Style::new().yellow().for_stderr()
}

fn error() -> Style {
    Style::new().red().bold().for_stderr()
}

#[cfg(test)]
mod tests {
    use super::super::Renderer;
    use super::super::testsupport::*;
    use super::*;

    fn render(width: u16, events: fn(&Renderer)) -> (Vec<String>, Vec<String>) {
        let screen = Screen::memory(width);
        let r = Renderer::tty(screen.clone());
        events(&r);
        drop(r);
        screen.contents()
    }

    #[test]
    fn cached_steps_are_marked_and_details_shown_under_their_step() {
        let (lines, too_wide) = render(80, cached_build);
        assert_eq!(too_wide, Vec::<String>::new());
        assert_eq!(lines.len(), 7, "{lines:#?}");
        assert!(lines[0].starts_with(" => CACHED [1/2] FROM docker.io/library/busybox:latest "));
        assert!(lines[0].ends_with(" 0.0s"), "{}", lines[0]);
        assert_eq!(
            lines[0].chars().count(),
            80,
            "right-aligned time: {:?}",
            lines[0]
        );
        assert!(
            lines[1].starts_with(" => CACHED [2/2] RUN echo hi "),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with(" => exporting to image "),
            "{}",
            lines[2]
        );
        assert!(lines[2].ends_with('s'), "{}", lines[2]);
        assert_eq!(lines[3], " => => writing image sha256:00 done");
        assert_eq!(
            lines[4],
            " => => naming to docker.io/library/app:latest done"
        );
        assert_eq!(lines[5], "Dockerfile:3:1: warning: something to know");
        assert!(
            lines[6].starts_with("Build finished in ")
                && lines[6].ends_with(": 3 steps, 1 run, 2 cached"),
            "{}",
            lines[6]
        );
    }

    #[test]
    fn failed_step_is_marked_and_misses_show_under_their_step() {
        let (lines, too_wide) = render(80, failing_build);
        let text = lines.join("\n");
        assert_eq!(too_wide, Vec::<String>::new());
        assert!(lines[0].starts_with(" => CACHED [a 1/2] FROM"), "{text}");
        // Steps become permanent in the order they finish.
        assert!(lines[1].starts_with(" => [b 2/2] RUN echo b "), "{text}");
        assert!(lines[1].ends_with(" 1.5s"), "{text}");
        assert!(
            lines[2].starts_with(" => [a 2/2] COPY src/ /app "),
            "{text}"
        );
        assert_eq!(
            lines[3],
            " => => cache miss: COPY src/ /app: src/main.rs changed"
        );
        assert!(
            lines[4].starts_with(" => ERROR [stage-2 3/3] RUN make "),
            "{text}"
        );
        assert!(lines[5].starts_with("Build failed after "), "{text}");
        assert_eq!(lines.len(), 6, "{text}");
    }

    #[test]
    fn running_line_keeps_room_for_the_latest_output() {
        let message = |name: &str, latest: &str| {
            let m = running_message(80, name, latest);
            // Padded to the room there is, for the time after it.
            assert_eq!(measure_text_width(&m), 80 - 13, "{m:?}");
            console::strip_ansi_codes(&m).trim_end().to_owned()
        };
        let name = "[build 3/7] RUN apt-get update && apt-get install -y build-essential curl git";
        let m = message(
            name,
            "Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]",
        );
        let (n, l) = m.split_once(" │ ").unwrap();
        assert!(
            n.starts_with("[build 3/7] RUN apt-get") && n.ends_with('…'),
            "{m}"
        );
        assert!(
            l.starts_with("Get:1 http://deb") && measure_text_width(l) >= 25,
            "{m}"
        );
        // Short names are whole; without output, the name alone.
        assert_eq!(
            message("[1/2] RUN make", "cc -c a.c"),
            "[1/2] RUN make │ cc -c a.c"
        );
        assert_eq!(message("[1/2] RUN make", ""), "[1/2] RUN make");
        assert_eq!(message(name, "").chars().count(), 80 - 13);
        // Carriage returns and escapes from the step do not reach the terminal.
        assert_eq!(
            message("[1/2] RUN x", "\x1b[1m 10%\r 55%\tdone\x07"),
            "[1/2] RUN x │  55% done"
        );
    }

    #[test]
    fn running_steps_show_their_latest_output_until_they_finish() {
        use solver::{LogStream, Progress as _, ProgressEvent};
        let screen = Screen::memory(80);
        let r = Renderer::tty(screen.clone());
        for (vertex, name) in [(1, "[a 2/2] RUN make"), (2, "[b 2/2] RUN sleep 5")] {
            r.event(&ProgressEvent::StepStarted {
                vertex,
                description: name.into(),
            });
        }
        for i in 0..1000 {
            r.event(&ProgressEvent::Log {
                vertex: 1,
                stream: LogStream::Stdout,
                line: format!("cc -c file{i}.c"),
            });
        }
        // Drawn by the spinner's tick (in time, on a busy machine).
        let drawn = |lines: &[String]| {
            lines.len() == 2 && lines.iter().any(|l| l.contains("cc -c file999.c"))
        };
        for _ in 0..100 {
            std::thread::sleep(TICK);
            if drawn(&screen.contents().0) {
                break;
            }
        }
        let (lines, too_wide) = screen.contents();
        assert_eq!(too_wide, Vec::<String>::new());
        assert_eq!(lines.len(), 2, "{lines:#?}");
        let make = lines.iter().find(|l| l.contains("RUN make")).unwrap();
        assert!(
            make.contains("[a 2/2] RUN make │ cc -c file999.c "),
            "{make:?}"
        );
        assert!(
            make.ends_with('s') && make.chars().count() == 80 - 1,
            "{make:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("[b 2/2] RUN sleep 5 ")),
            "{lines:#?}"
        );
        r.event(&ProgressEvent::StepDone {
            vertex: 1,
            duration: Duration::from_millis(300),
        });
        let (lines, _) = screen.contents();
        assert!(lines[0].starts_with(" => [a 2/2] RUN make "), "{lines:#?}");
        assert!(lines[1].contains("[b 2/2] RUN sleep 5 "), "{lines:#?}");
        r.summary(true);
        let (lines, _) = screen.contents();
        assert_eq!(lines.len(), 2, "the running line is gone: {lines:#?}");
        assert!(lines[1].starts_with("Build finished in "), "{lines:#?}");
    }

    #[test]
    fn narrow_terminal_cuts_lines_to_its_width() {
        let (lines, too_wide) = render(40, failing_build);
        let text = lines.join("\n");
        // Step lines fit; only the summary wraps.
        assert_eq!(too_wide.len(), 1, "{too_wide:#?}");
        assert!(
            too_wide[0].starts_with("Build failed after"),
            "{too_wide:#?}"
        );
        assert!(
            lines[0].starts_with(" => CACHED [a 1/2] FROM doc"),
            "{text}"
        );
        assert!(
            lines[0].contains('…') && lines[0].ends_with(" 0.0s"),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(" => => cache miss: COPY src/")),
            "{text}"
        );
    }
}
