//! Parse + compile time of a generated 5,000-instruction, multi-stage
//! Dockerfile that uses every instruction. Run with
//! `cargo bench -p frontend --bench compile`; prints the allocation count of
//! one compilation (independent of machine load), then min/median/max wall
//! time over many runs (the minimum is the uncontended figure on a shared
//! machine) and the mean CPU time. A run is timed until its result is freed.
//! `COMPILE_BENCH_RUNS=N` changes the number of runs (1 for a profiler).

use std::alloc::{GlobalAlloc, Layout};

// The builder binary allocates with mimalloc; measure with the same allocator.
use mimalloc::MiMalloc;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use frontend::convert::{CompileOptions, NoResolver, compile};

/// Counts allocations, a figure that does not depend on how busy the
/// machine is (timings on a shared machine do).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to mimalloc unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const STAGES: usize = 10;
const INSTRUCTIONS: usize = 5_000;

/// One instruction of the mix, numbered `i` within stage `s`.
fn instruction(out: &mut String, s: usize, i: usize) {
    match i % 20 {
        0 => writeln!(out, "RUN echo step {i} && make -j4 target-{i}"),
        1 => writeln!(out, "ENV VAR_{i}=value-{i} PATH_{i}=\"$HOME/bin:${{VAR_{i}}}\""),
        2 => writeln!(out, "COPY --chown=app:app src/file-{i}.txt /app/data/"),
        3 => writeln!(out, "ARG ARG_{i}=default-{i}"),
        4 => writeln!(out, "LABEL com.example.label-{i}=\"value ${{ARG_{}}}\" other-{i}=x", i - 1),
        5 => writeln!(out, "RUN --mount=type=cache,target=/root/.cache/{i},sharing=locked --mount=type=bind,source=go.mod,target=/src/go.mod go build ./..."),
        6 => writeln!(out, "WORKDIR /work/dir-{i}"),
        7 => writeln!(out, "EXPOSE {} {}/udp", 1000 + i, 2000 + i),
        8 => writeln!(out, "RUN [\"/bin/sh\", \"-c\", \"echo exec form {i}\"]"),
        9 => writeln!(out, "USER user{i}:group{i}"),
        10 => writeln!(out, "ADD --chmod=0644 https://example.com/files/{i}.tar.gz /downloads/"),
        11 => writeln!(out, "VOLUME /data/{i}"),
        12 => writeln!(out, "RUN <<EOF\necho heredoc {i}\necho $VAR_{}\nEOF", i - 11),
        13 => writeln!(out, "CMD [\"/app/server\", \"--port\", \"{i}\"]"),
        14 => writeln!(out, "HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -f http://localhost:{i}/"),
        15 => writeln!(out, "COPY <<EOF /etc/config-{i}.conf\nkey={i}\nvalue=${{VAR_{}}}\nEOF", i - 14),
        16 => writeln!(out, "STOPSIGNAL SIGTERM"),
        17 => writeln!(out, "ONBUILD RUN echo child of stage {s}"),
        18 => writeln!(out, "ENTRYPOINT [\"/app/entry-{i}\"]"),
        _ => writeln!(out, "SHELL [\"/bin/sh\", \"-c\"]\nMAINTAINER builder-{i}"),
    }
    .expect("writing to a String");
}

fn dockerfile() -> (String, usize) {
    let mut out =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=alpine:3.20\nARG VERSION=1.0\n");
    let mut count = 2;
    let per_stage = INSTRUCTIONS / STAGES;
    for s in 0..STAGES {
        if s == 0 || s % 3 == 1 {
            writeln!(out, "FROM ${{BASE}} AS stage{s}").unwrap();
        } else {
            writeln!(out, "FROM stage{} AS stage{s}", s - 1).unwrap();
        }
        writeln!(out, "ARG VERSION").unwrap();
        count += 2;
        let mut i = 0;
        while count < (s + 1) * per_stage {
            instruction(&mut out, s, i);
            count += if i % 20 == 19 { 2 } else { 1 };
            i += 1;
        }
        if s > 0 {
            writeln!(out, "COPY --from=stage{} /app /from-{}", s - 1, s - 1).unwrap();
            count += 1;
        }
    }
    (out, count)
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux;
/// none elsewhere). On a busy machine wall time includes waiting for a CPU;
/// this does not.
fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn main() {
    let (src, count) = dockerfile();
    let opts = CompileOptions::default();
    // The first compilation builds lazily initialised tables (the reference
    // regex); count allocations of a later one.
    drop(compile(src.as_bytes(), &opts, &NoResolver).expect("the generated Dockerfile compiles"));
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let ast = frontend::parser::parse(src.as_bytes()).expect("parses");
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    drop(ast);
    let (a2, b2) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let compiled =
        compile(src.as_bytes(), &opts, &NoResolver).expect("the generated Dockerfile compiles");
    let (a3, b3) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    println!(
        "compile: allocations: parse {} ({:.1} MB), parse + compile {} ({:.1} MB)",
        a1 - a0,
        (b1 - b0) as f64 / 1e6,
        a3 - a2,
        (b3 - b2) as f64 / 1e6
    );
    println!(
        "compile: {count} instructions, {} lines, {} stages in graph, {} vertices",
        src.lines().count(),
        compiled.stages.len(),
        compiled.graph.len()
    );
    let iterations: usize = std::env::var("COMPILE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(1);
    // Each run is timed from the call to `compile` until its result has
    // been freed: freeing a large graph is part of what a caller pays, and
    // leaving it out would make the CPU time (which always includes it)
    // larger than the wall time for no visible reason. The time until
    // `compile` returns is reported too.
    let mut times: Vec<Duration> = Vec::with_capacity(iterations);
    let mut compile_times: Vec<Duration> = Vec::with_capacity(iterations);
    let cpu_start = thread_cpu_time();
    for _ in 0..iterations {
        let t = Instant::now();
        let c =
            compile(std::hint::black_box(src.as_bytes()), &opts, &NoResolver).expect("compiles");
        compile_times.push(t.elapsed());
        drop(std::hint::black_box(c));
        times.push(t.elapsed());
    }
    let cpu = cpu_start
        .zip(thread_cpu_time())
        .map(|(a, b)| (b - a) / iterations as u32);
    let mut parse_times: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let ast = frontend::parser::parse(std::hint::black_box(src.as_bytes())).expect("parses");
        drop(std::hint::black_box(ast));
        parse_times.push(t.elapsed());
    }
    for t in [&mut times, &mut compile_times, &mut parse_times] {
        t.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = |t: &[Duration]| ms(t[t.len() / 2]);
    println!(
        "compile: parse + compile + drop of the result over {iterations} runs: min {:.2} ms, median {:.2} ms, max {:.2} ms (target < 20 ms)",
        ms(times[0]),
        median(&times),
        ms(times[iterations - 1])
    );
    if let Some(cpu) = cpu {
        println!(
            "compile: the same, CPU time per run (mean, same region plus the loop): {:.2} ms",
            ms(cpu)
        );
    }
    println!(
        "compile: of which until compile returns: min {:.2} ms, median {:.2} ms",
        ms(compile_times[0]),
        median(&compile_times)
    );
    println!(
        "compile: parse + drop alone: min {:.2} ms, median {:.2} ms",
        ms(parse_times[0]),
        median(&parse_times)
    );
}
