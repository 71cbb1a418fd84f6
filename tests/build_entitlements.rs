//! Entitlements and resource flags of `builder build`, end to end, as root:
//! `RUN --network=host` and `RUN --security=insecure` need `--allow`, and
//! with it see the host's interfaces and every capability; `--shm-size`
//! sizes `/dev/shm`; `--ulimit` sets the steps' resource limits.

mod common;

use std::fs;
use std::path::Path;

use common::{TestRoot, sandbox_available, stderr};
use serde_json::json;

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn build_fails(t: &TestRoot, dockerfile: &str, args: &[&str]) -> String {
    let ctx = t.context(&[("Dockerfile", dockerfile)]);
    let out = t.build(&ctx, args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn host_network_and_insecure_steps_need_their_entitlement() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));

    let err = build_fails(&t, "FROM busybox\nRUN --network=host true\n", &[]);
    assert!(
        err.contains("network.host is not allowed: enable it with --allow network.host"),
        "{err}"
    );
    let err = build_fails(&t, "FROM busybox\nRUN --security=insecure true\n", &[]);
    assert!(
        err.contains("security.insecure is not allowed: enable it with --allow security.insecure"),
        "{err}"
    );
    // One entitlement does not grant the other.
    let err = build_fails(
        &t,
        "FROM busybox\nRUN --security=insecure true\n",
        &["--allow", "network.host"],
    );
    assert!(err.contains("--allow security.insecure"), "{err}");
    let err = build_fails(
        &t,
        "FROM busybox\nRUN true\n",
        &["--allow", "network.everything"],
    );
    assert!(
        err.contains("invalid --allow \"network.everything\""),
        "{err}"
    );
}

#[test]
fn entitled_steps_see_the_host_network_and_every_capability() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let dockerfile = "FROM busybox
RUN mkdir /out
RUN --network=host ls /sys/class/net > /out/net-host
RUN --network=none ls /sys/class/net > /out/net-none
RUN --network=none ip -o link | cut -d: -f2 | tr -d ' ' > /out/ip-none
RUN --security=insecure grep CapEff /proc/self/status > /out/caps-insecure
RUN --security=sandbox grep CapEff /proc/self/status > /out/caps-sandbox
";
    let out = t.build_local(
        dockerfile,
        &[],
        &["--allow", "network.host,security.insecure"],
    );

    let host_net = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    let mut host_net = host_net;
    host_net.sort();
    assert_eq!(sorted_lines(&read(&out, "out/net-host")), host_net);
    assert_eq!(read(&out, "out/net-none"), "lo\n");
    assert_eq!(read(&out, "out/ip-none"), "lo\n");

    // Every capability this (root) test process holds; all the kernel's
    // when it has them all (a container may lack some, e.g. SYS_RESOURCE).
    let own = fs::read_to_string("/proc/self/status").unwrap();
    let own_eff = own
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_owned();
    assert_eq!(read(&out, "out/caps-insecure"), format!("{own_eff}\n"));
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let all = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    if own_eff == format!("CapEff:\t{all:016x}") {
        assert_eq!(
            read(&out, "out/caps-insecure"),
            format!("CapEff:\t{all:016x}\n")
        );
    }
    // `--security=sandbox` is docker's default set.
    assert_eq!(
        read(&out, "out/caps-sandbox"),
        "CapEff:\t00000000a80425fb\n"
    );
}

#[test]
fn shm_size_sizes_dev_shm() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let dockerfile = "FROM busybox
RUN mkdir /out && df -k /dev/shm | tail -n 1 | awk '{print $2}' > /out/shm
";
    let out = t.build_local(dockerfile, &[], &[]);
    assert_eq!(read(&out, "out/shm"), "65536\n", "docker's default 64m");
    let out = t.build_local(dockerfile, &[], &["--shm-size", "128m", "--no-cache"]);
    assert_eq!(read(&out, "out/shm"), "131072\n");

    let err = build_fails(&t, dockerfile, &["--shm-size", "12q"]);
    assert!(err.contains("--shm-size: invalid size \"12q\""), "{err}");
}

#[test]
fn ulimit_sets_the_steps_resource_limits() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let dockerfile = "FROM busybox
RUN mkdir /out && ulimit -Sn > /out/nofile-soft && ulimit -Hn > /out/nofile-hard && ulimit -Sc > /out/core
";
    let out = t.build_local(
        dockerfile,
        &[],
        &["--ulimit", "nofile=1024:2048", "--ulimit", "core=0"],
    );
    assert_eq!(read(&out, "out/nofile-soft"), "1024\n");
    assert_eq!(read(&out, "out/nofile-hard"), "2048\n");
    assert_eq!(read(&out, "out/core"), "0\n");

    // Without HARD both limits are SOFT; -1 is unlimited.
    let out = t.build_local(
        dockerfile,
        &[],
        &[
            "--ulimit",
            "nofile=4096",
            "--ulimit",
            "core=-1",
            "--no-cache",
        ],
    );
    assert_eq!(read(&out, "out/nofile-soft"), "4096\n");
    assert_eq!(read(&out, "out/nofile-hard"), "4096\n");
    assert_eq!(read(&out, "out/core"), "unlimited\n");

    let err = build_fails(&t, dockerfile, &["--ulimit", "files=10"]);
    assert!(
        err.contains("--ulimit: invalid ulimit type \"files\""),
        "{err}"
    );
    let err = build_fails(&t, dockerfile, &["--ulimit", "nofile=2048:1024"]);
    assert!(
        err.contains("soft limit 2048 is greater than hard limit 1024"),
        "{err}"
    );
}

/// The first 64 bytes of an aarch64 ELF executable: enough for the kernel
/// to refuse it with ENOEXEC on another architecture without an emulator.
fn aarch64_elf_header() -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    h[16] = 2; // ET_EXEC
    h[18] = 0xb7; // EM_AARCH64
    h[20] = 1; // EV_CURRENT
    h[52] = 64; // e_ehsize
    h
}

#[test]
fn another_platform_without_an_emulator_fails_at_its_first_run_step() {
    if !sandbox_available() {
        return;
    }
    if solver::sandbox::binfmt::host_architecture() != "amd64" {
        eprintln!("skipping: the test's foreign platform is arm64, which this machine runs");
        return;
    }
    if solver::sandbox::binfmt::can_run("arm64", Path::new(solver::sandbox::binfmt::BINFMT_MISC)) {
        eprintln!("skipping: an arm64 emulator is registered with binfmt_misc");
        return;
    }
    let t = TestRoot::new();
    // An "arm64" base image whose shell is an aarch64 executable.
    let tree = t.path("arm64-tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/sh"), aarch64_elf_header()).unwrap();
    fs::set_permissions(
        tree.join("bin/sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::write(tree.join("hello"), "hello\n").unwrap();
    t.image_from_trees("arm64base", &[&tree], json!({}));

    let err = build_fails(
        &t,
        "FROM arm64base\nCOPY Dockerfile /copied\nRUN true\n",
        &["--platform", "linux/arm64"],
    );
    assert!(
        err.contains(
            "cannot run linux/arm64 steps: no emulator registered with binfmt_misc (install qemu-user-static)"
        ),
        "{err}"
    );
    // Without --platform the same step is an ordinary exec failure.
    let err = build_fails(&t, "FROM arm64base\nRUN true\n", &[]);
    assert!(!err.contains("binfmt_misc"), "{err}");
    assert!(err.contains("xec format error"), "{err}");

    // A COPY-only build of that platform works.
    let out = t.build_local(
        "FROM arm64base\nCOPY Dockerfile /copied\n",
        &[],
        &["--platform", "linux/arm64"],
    );
    assert_eq!(read(&out, "hello"), "hello\n");
    assert!(out.join("copied").is_file());
}
