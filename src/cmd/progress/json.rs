//! `--progress=json`: one JSON object per line and event, for tools. The
//! schema is documented in README.md ("Progress output"); keep the two in
//! step. Every object has `time` (Unix seconds, microsecond precision,
//! never decreasing) and `type`; step events have `step` and, for the
//! solver's steps, `vertex`.

use std::io::Write;

use super::{Display, Stamp, Step, Summary, What, stream_name};

pub(super) struct Json {
    out: Box<dyn Write + Send>,
    /// The line being written.
    buf: Vec<u8>,
}

/// A field's value.
enum Field<'a> {
    Str(&'a str),
    Float(f64),
    Int(usize),
}

impl Json {
    pub(super) fn new(out: Box<dyn Write + Send>) -> Json {
        Json {
            out,
            buf: Vec::new(),
        }
    }

    /// Writes one object. Written by hand rather than through a
    /// `serde_json::Value`, in one write: a step may print hundreds of
    /// thousands of lines, and stderr is unbuffered (a write per token
    /// made 300,000 lines take 19 s instead of about 1 s).
    fn emit(&mut self, stamp: Stamp, kind: &str, step: Option<Step>, fields: &[(&str, Field<'_>)]) {
        let buf = &mut self.buf;
        buf.clear();
        // Microseconds: more would be noise, less would order events badly.
        let _ = write!(buf, "{{\"time\":{:.6},\"type\":\"{kind}\"", stamp.unix);
        if let Some(step) = step {
            let _ = write!(buf, ",\"step\":{}", step.n);
            if let Some(v) = step.vertex {
                let _ = write!(buf, ",\"vertex\":{v}");
            }
        }
        for (key, value) in fields {
            let _ = write!(buf, ",\"{key}\":");
            let _ = match value {
                Field::Str(s) => serde_json::to_writer(&mut *buf, s),
                Field::Float(f) => serde_json::to_writer(&mut *buf, f),
                Field::Int(n) => serde_json::to_writer(&mut *buf, n),
            };
        }
        buf.extend_from_slice(b"}\n");
        // Progress is best effort: a closed stderr must not fail the build.
        let _ = self.out.write_all(buf);
        let _ = self.out.flush();
    }
}

impl Display for Json {
    fn step(&mut self, stamp: Stamp, step: Step, what: What<'_>) {
        let step = Some(step);
        match what {
            What::Started { name } => {
                self.emit(stamp, "started", step, &[("name", Field::Str(name))])
            }
            What::Cached { name } => {
                self.emit(stamp, "cached", step, &[("name", Field::Str(name))])
            }
            What::Miss { reason } => {
                self.emit(stamp, "cache-miss", step, &[("reason", Field::Str(reason))])
            }
            What::Log { stream, line } => self.emit(
                stamp,
                "log",
                step,
                &[
                    ("stream", Field::Str(stream_name(stream))),
                    ("line", Field::Str(line)),
                ],
            ),
            What::Detail { line } => {
                self.emit(stamp, "detail", step, &[("line", Field::Str(line))])
            }
            What::Done { duration } => self.emit(
                stamp,
                "done",
                step,
                &[("duration", Field::Float(duration.as_secs_f64()))],
            ),
            What::Error { message } => {
                self.emit(stamp, "error", step, &[("message", Field::Str(message))])
            }
        }
    }

    fn warning(&mut self, stamp: Stamp, message: &str) {
        self.emit(stamp, "warning", None, &[("message", Field::Str(message))]);
    }

    fn summary(&mut self, stamp: Stamp, summary: &Summary) {
        self.emit(
            stamp,
            "summary",
            None,
            &[
                ("duration", Field::Float(summary.duration.as_secs_f64())),
                ("steps", Field::Int(summary.steps)),
                ("cached", Field::Int(summary.cached)),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testsupport::*;
    use super::super::{Mode, Renderer};
    use serde_json::Value;

    fn render(events: fn(&Renderer)) -> Vec<Value> {
        let out = Shared::default();
        let r = Renderer::new(Mode::Json, Box::new(out.clone()));
        events(&r);
        out.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// The fields of an event other than `time`, as compact JSON.
    fn fields(v: &Value) -> String {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("time");
        if let Some(d) = v.get_mut("duration") {
            *d = Value::from("D");
        }
        v.to_string()
    }

    #[test]
    fn every_event_is_one_object_with_the_schema_fields() {
        let events = render(failing_build);
        let got: Vec<String> = events.iter().map(fields).collect();
        assert_eq!(
            got,
            [
                r#"{"name":"[a 1/2] FROM docker.io/library/busybox:latest","step":1,"type":"cached","vertex":1}"#,
                r#"{"name":"[a 2/2] COPY src/ /app","step":2,"type":"started","vertex":2}"#,
                r#"{"reason":"COPY src/ /app: src/main.rs changed","step":2,"type":"cache-miss","vertex":2}"#,
                r#"{"name":"[b 2/2] RUN echo b","step":3,"type":"started","vertex":5}"#,
                r#"{"line":"a one","step":2,"stream":"stdout","type":"log","vertex":2}"#,
                r#"{"line":"b one","step":3,"stream":"stdout","type":"log","vertex":5}"#,
                r#"{"line":"a two","step":2,"stream":"stdout","type":"log","vertex":2}"#,
                r#"{"duration":"D","step":3,"type":"done","vertex":5}"#,
                r#"{"duration":"D","step":2,"type":"done","vertex":2}"#,
                r#"{"name":"[stage-2 3/3] RUN make","step":4,"type":"started","vertex":7}"#,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain((1..=12).map(|i| format!(
                r#"{{"line":"make line {i}","step":4,"stream":"stdout","type":"log","vertex":7}}"#
            )))
            .chain([
                r#"{"message":"process \"/bin/sh -c make\" did not complete successfully: exit code: 2","step":4,"type":"error","vertex":7}"#.to_string(),
                r#"{"cached":1,"duration":"D","steps":4,"type":"summary"}"#.to_string(),
            ])
            .collect::<Vec<_>>()
        );
        assert_eq!(events[7]["duration"], 1.5);
        assert_eq!(events[8]["duration"], 0.02);
        let mut last = 0.0;
        for e in &events {
            let t = e["time"].as_f64().unwrap();
            assert!(t >= last, "time went back: {e}");
            assert!(t > 1.6e9, "not Unix seconds: {e}");
            // Microseconds at most.
            assert!(((t * 1e6).round() - t * 1e6).abs() < 1e-3, "{t}");
            last = t;
        }
    }

    #[test]
    fn own_steps_have_no_vertex_and_warnings_come_before_the_summary() {
        let events = render(cached_build);
        let got: Vec<String> = events.iter().map(fields).collect();
        assert_eq!(
            got,
            [
                r#"{"name":"[1/2] FROM docker.io/library/busybox:latest","step":1,"type":"cached","vertex":1}"#,
                r#"{"name":"[2/2] RUN echo hi","step":2,"type":"cached","vertex":3}"#,
                r#"{"name":"exporting to image","step":3,"type":"started"}"#,
                r#"{"line":"writing image sha256:00 done","step":3,"type":"detail"}"#,
                r#"{"line":"naming to docker.io/library/app:latest done","step":3,"type":"detail"}"#,
                r#"{"duration":"D","step":3,"type":"done"}"#,
                r#"{"message":"Dockerfile:3:1: warning: something to know","type":"warning"}"#,
                r#"{"cached":2,"duration":"D","steps":3,"type":"summary"}"#,
            ]
        );
    }

    #[test]
    fn output_lines_are_escaped() {
        use solver::Progress as _;
        let out = Shared::default();
        let r = Renderer::new(Mode::Json, Box::new(out.clone()));
        let line = "he said \"hi\"\t\x1b[1mbold\\ \u{7f} é\r";
        r.event(&solver::ProgressEvent::Log {
            vertex: 3,
            stream: solver::LogStream::Stderr,
            line: line.into(),
        });
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["line"], line);
        assert_eq!(v["stream"], "stderr");
        assert_eq!(
            (v["step"].clone(), v["vertex"].clone()),
            (1.into(), 3.into())
        );
    }
}
