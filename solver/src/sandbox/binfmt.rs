//! Whether this machine can run another architecture's programs: an enabled
//! binfmt_misc entry for it (qemu-user-static registers `qemu-aarch64` and
//! friends), as BuildKit checks before running a foreign platform's steps.

use std::fs;
use std::path::Path;

/// Where the kernel's binfmt_misc entries are.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// This machine's architecture in Go's names (`amd64`, `arm64`, ...).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The name qemu gives the Go architecture `arch` (`arm64` → `aarch64`).
fn qemu_name(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        "mips64le" => "mips64el",
        "mipsle" => "mipsel",
        "loong64" => "loongarch64",
        other => other,
    }
}

/// Whether `arch` (Go's name) runs here: it is the host's (or 386 on
/// amd64), or an enabled binfmt_misc entry under `dir` names its qemu
/// emulator.
pub fn can_run(arch: &str, dir: &Path) -> bool {
    let host = host_architecture();
    if arch == host || (host == "amd64" && arch == "386") {
        return true;
    }
    emulator(arch, dir).is_some()
}

/// The interpreter of the enabled binfmt_misc entry for `arch`, if any.
pub fn emulator(arch: &str, dir: &Path) -> Option<String> {
    if fs::read_to_string(dir.join("status")).is_ok_and(|s| s.trim() != "enabled") {
        return None;
    }
    let wanted = format!("qemu-{}", qemu_name(arch));
    let entries = fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "status" || name == "register" {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("enabled") {
            continue;
        }
        let interpreter = text
            .lines()
            .find_map(|l| l.strip_prefix("interpreter "))
            .unwrap_or("")
            .trim()
            .to_owned();
        let base = interpreter.rsplit('/').next().unwrap_or("");
        let matches =
            |s: &str| s == wanted || s.strip_prefix(&wanted).is_some_and(|r| r.starts_with('-'));
        if matches(&name) || matches(base) {
            return Some(interpreter);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_qemu_entries_count_and_disabled_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(emulator("arm64", dir.path()).is_none());
        assert!(can_run(host_architecture(), dir.path()));
        fs::write(dir.path().join("status"), "enabled\n").unwrap();
        fs::write(
            dir.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("riscv"),
            "disabled\ninterpreter /usr/bin/qemu-riscv64-static\nflags: F\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("s390"),
            "enabled\ninterpreter /usr/bin/qemu-s390x-static\nflags: F\n",
        )
        .unwrap();
        assert_eq!(
            emulator("arm64", dir.path()).as_deref(),
            Some("/usr/libexec/qemu-binfmt/aarch64-binfmt-P")
        );
        assert!(emulator("riscv64", dir.path()).is_none());
        assert!(emulator("s390x", dir.path()).is_some());
        assert!(emulator("ppc64le", dir.path()).is_none());
        fs::write(dir.path().join("status"), "disabled\n").unwrap();
        assert!(emulator("arm64", dir.path()).is_none());
    }
}
