//! Isolation of RUN steps, end to end, as root: what a step sees from inside
//! (docker's capabilities, no mount, only its own processes, no host files,
//! loopback only with `--network=none`) and what it leaves untouched outside
//! (the host's hostname and `/tmp`).

mod common;

use std::fs;
use std::path::Path;

use common::{TestRoot, sandbox_available, unique_seconds};
use serde_json::json;

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn a_step_sees_only_its_sandbox() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let tag = unique_seconds();
    let host_marker = format!("/tmp/builder-host-marker-{tag}");
    let inside_file = format!("/tmp/builder-inside-{tag}");
    fs::write(&host_marker, "host\n").unwrap();
    let hostname_before = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();

    let dockerfile = format!(
        r#"FROM busybox
RUN mkdir /out && grep CapEff /proc/self/status > /out/caps
RUN mount -t tmpfs none /mnt 2> /out/mount.err; echo "rc=$?" > /out/mount.rc
RUN sleep 0.2 & ps -o pid,comm > /out/ps
RUN ls -a / > /out/root; if [ -e {host_marker} ]; then echo present; else echo absent; fi > /out/marker
RUN touch {inside_file} && (hostname changed-inside 2> /out/hostname.err || true) && hostname > /out/hostname
RUN ls /sys/class/net > /out/net-default
RUN --network=none ls /sys/class/net > /out/net-none
RUN cat /proc/1/cmdline | tr '\0' ' ' > /out/pid1
"#
    );
    let out = t.build_local(&dockerfile, &[], &[]);
    let _ = fs::remove_file(&host_marker);

    // Docker's default capability set.
    assert_eq!(read(&out, "out/caps"), "CapEff:\t00000000a80425fb\n");
    // No CAP_SYS_ADMIN: mount fails with EPERM.
    assert_ne!(read(&out, "out/mount.rc"), "rc=0\n");
    let err = read(&out, "out/mount.err");
    assert!(
        err.contains("ermission denied") || err.contains("Operation not permitted"),
        "{err}"
    );
    assert!(!out.join("mnt").read_dir().unwrap().any(|_| true));
    // Only the step's own processes: its shell and what it started (the
    // background sleep, and ps, which the shell may exec as PID 1).
    let ps = read(&out, "out/ps");
    let rows: Vec<(u32, String)> = ps
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap().parse().unwrap(), f.next().unwrap().into())
        })
        .collect();
    assert!((2..=3).contains(&rows.len()), "{ps}");
    assert!(rows.iter().any(|(pid, _)| *pid == 1), "{ps}");
    assert!(rows.iter().any(|(_, name)| name == "ps"), "{ps}");
    assert!(rows.iter().all(|(pid, _)| *pid < 10), "{ps}");
    // Host files are absent: the root holds the image and the sandbox's
    // own mounts only.
    assert_eq!(read(&out, "out/marker"), "absent\n");
    let root_entries: Vec<String> = read(&out, "out/root").lines().map(str::to_owned).collect();
    for host_only in ["work", "usr", "var", "lib", "boot"] {
        assert!(
            !root_entries.iter().any(|e| e == host_only),
            "/{host_only} visible in {root_entries:?}"
        );
    }
    // The step had its own UTS namespace and no CAP_SYS_ADMIN.
    assert_ne!(read(&out, "out/hostname"), "changed-inside\n");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname_before
    );
    // Its /tmp is the image's: the host's /tmp did not receive the file.
    assert!(!Path::new(&inside_file).exists());
    assert!(out.join(inside_file.trim_start_matches('/')).exists());
    // Networks: the host's by default, loopback only on request.
    let mut host_net: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host_net.sort();
    assert_eq!(
        read(&out, "out/net-default").lines().collect::<Vec<_>>(),
        host_net
    );
    assert_eq!(read(&out, "out/net-none"), "lo\n");
    // The step's shell is PID 1 of its namespace.
    assert!(
        read(&out, "out/pid1").starts_with("/bin/sh -c "),
        "{}",
        read(&out, "out/pid1")
    );
    t.check_store();
}

#[test]
fn build_wide_network_none() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let dockerfile = "FROM busybox\nRUN ls /sys/class/net > /net\n";
    let out = t.build_local(dockerfile, &[], &["--network", "none"]);
    assert_eq!(read(&out, "net"), "lo\n");
    // RUN --network=host is an entitlement.
    let ctx = t.context(&[(
        "Dockerfile",
        "FROM busybox\nRUN --network=host ls /sys/class/net > /net\n",
    )]);
    let denied = t.build(&ctx, &[]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        common::stderr(&denied).contains("network.host"),
        "{}",
        common::stderr(&denied)
    );
    t.build_ok(&ctx, &["--allow", "network.host"]);
}
