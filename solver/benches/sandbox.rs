//! Per-step overhead of the sandbox: `/bin/true` on a busybox rootfs, each
//! run in a fresh upperdir, timed from `Executor::run` call to return.
//!
//! Run with `cargo bench -p solver --bench sandbox` as root. The target is
//! at most 30 ms a step (BuildKit with runc takes about 150 ms).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use solver::sandbox::testsupport::{busybox_rootfs, unavailable_reason};
use solver::sandbox::{
    CancelHandle, Executor, LinuxExecutor, NetworkMode, RootFs, RunSpec, StepIo,
};

const RUNS: usize = 30;
const WARMUP: usize = 3;

fn main() {
    if let Some(reason) = unavailable_reason() {
        eprintln!("skipping sandbox benchmark: {reason}");
        return;
    }
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sandbox-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let rootfs = base.join("rootfs");
    busybox_rootfs(&rootfs).expect("build busybox rootfs");
    let executor = LinuxExecutor::new(base.join("state")).expect("create executor");

    for network in [NetworkMode::Host, NetworkMode::None] {
        let mut times = Vec::with_capacity(RUNS);
        for i in 0..WARMUP + RUNS {
            let spec = fresh_spec(&base, &rootfs, network, i);
            let started = Instant::now();
            let outcome = executor
                .run(&spec, StepIo::null(), &CancelHandle::new())
                .expect("run /bin/true");
            let elapsed = started.elapsed();
            assert!(
                outcome.termination.success(),
                "/bin/true failed: {}",
                outcome.termination
            );
            if i >= WARMUP {
                times.push(elapsed);
            }
            let _ = std::fs::remove_dir_all(spec.rootfs.upperdir.parent().unwrap());
        }
        report(&format!("{network:?} network"), &mut times);
    }
    let _ = std::fs::remove_dir_all(&base);
}

fn fresh_spec(base: &Path, rootfs: &Path, network: NetworkMode, i: usize) -> RunSpec {
    let dir: PathBuf = base.join(format!("step-{network:?}-{i}"));
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut spec = RunSpec::new(
        RootFs {
            lowerdirs: vec![rootfs.to_path_buf()],
            upperdir: upper,
            workdir: work,
        },
        vec!["/bin/true".into()],
    );
    spec.network = network;
    spec
}

fn report(label: &str, times: &mut [Duration]) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64;
    let median = ms(times[times.len() / 2]);
    println!(
        "sandbox /bin/true, {label}: {} runs, mean {mean:.2} ms, median {median:.2} ms, min {:.2} ms, max {:.2} ms (target <= 30 ms)",
        times.len(),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
}
