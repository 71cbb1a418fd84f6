//! End-to-end cost of RUN steps through the `builder` binary: a Dockerfile
//! of 30 `RUN echo N` steps on the project's busybox base image, built
//! without cache, against the same Dockerfile without its RUN steps.
//!
//! Run with `cargo bench --bench run_steps` as root. Prints the median total
//! and the per-step overhead, (total - base build) / 30. Target: at most
//! 30 ms a step (BuildKit 0.11 took about 150 ms a step on this machine).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_builder");
const STEPS: usize = 30;
const RUNS: usize = 7;

fn main() {
    if let Some(reason) = solver::sandbox::testsupport::unavailable_reason() {
        eprintln!("skipping run_steps benchmark: {reason}");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("run-steps-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let root = dir.path().join("root");

    // The base image, made the way the README's example makes it.
    let base_ctx = dir.path().join("busybox");
    std::fs::create_dir(&base_ctx).unwrap();
    std::fs::copy("/bin/busybox", base_ctx.join("busybox")).unwrap();
    let base_dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/busybox/Dockerfile");
    build(
        &root,
        &base_ctx,
        &["-t", "busybox", "-f", base_dockerfile.to_str().unwrap()],
    );

    let steps_ctx = dir.path().join("steps");
    let empty_ctx = dir.path().join("empty");
    std::fs::create_dir(&steps_ctx).unwrap();
    std::fs::create_dir(&empty_ctx).unwrap();
    let mut dockerfile = String::from("FROM busybox\n");
    std::fs::write(empty_ctx.join("Dockerfile"), &dockerfile).unwrap();
    for i in 1..=STEPS {
        writeln!(dockerfile, "RUN echo {i}").unwrap();
    }
    std::fs::write(steps_ctx.join("Dockerfile"), &dockerfile).unwrap();

    // One of each first, so that both start from the same warm state.
    build(&root, &empty_ctx, &["--no-cache"]);
    build(&root, &steps_ctx, &["--no-cache"]);
    let mut totals = Vec::with_capacity(RUNS);
    let mut bases = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        bases.push(build(&root, &empty_ctx, &["--no-cache"]));
        totals.push(build(&root, &steps_ctx, &["--no-cache"]));
    }
    let total = median(&mut totals);
    let base = median(&mut bases);
    let per_step = total.saturating_sub(base) / STEPS as u32;
    println!(
        "run_steps: {STEPS} RUN steps, median of {RUNS} builds without cache: total {:.1} ms, \
         base build {:.1} ms, per step {:.1} ms (target <= 30 ms)",
        ms(total),
        ms(base),
        ms(per_step)
    );
}

/// Runs one `builder build` and returns its wall time.
fn build(root: &Path, context: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(["build", "-q"])
        .args(args)
        .arg(context)
        .stdin(Stdio::null())
        .output()
        .expect("run builder");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
