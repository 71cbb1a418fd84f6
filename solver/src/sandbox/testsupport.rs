//! Test support: a busybox root filesystem (from Debian's static busybox)
//! for sandbox tests and benchmarks, and the check whether this machine can
//! run the sandbox at all.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

/// Where package busybox-static installs the binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// The unprivileged user of the test rootfs.
pub const TEST_USER: &str = "test";
pub const TEST_UID: u32 = 1000;
pub const TEST_GID: u32 = 1000;
/// `id` output for [`TEST_USER`]: its primary group and its supplementary
/// groups from `/etc/group`, in the kernel's (sorted) order.
pub const TEST_USER_ID_OUTPUT: &str =
    "uid=1000(test) gid=1000(test) groups=10(wheel),29(audio),1000(test)";

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
test:x:1000:1000:test user:/home/test:/bin/sh
";

const GROUP: &str = "\
root:x:0:
tty:x:5:
wheel:x:10:root,test
audio:x:29:test
test:x:1000:
nogroup:x:65534:
";

/// Why the sandbox cannot run here, if it cannot: not root, no static
/// busybox, or a kernel older than 6.8 (overlay's `lowerdir+`).
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the sandbox needs root".into());
    }
    if !Path::new(HOST_BUSYBOX).is_file() {
        return Some(format!(
            "{HOST_BUSYBOX} is missing (install busybox-static)"
        ));
    }
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_string_lossy()
        .into_owned();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version < (6, 8) {
        return Some(format!("linux {release} is older than 6.8"));
    }
    None
}

/// Builds a busybox root filesystem in `dir` (created if missing):
///
/// - `bin/busybox` and a symlink per applet, so `/bin/sh`, `/bin/id`… work;
/// - `etc/passwd` and `etc/group` with root, nobody and [`TEST_USER`] (in
///   groups wheel and audio), and `etc/motd`, a file for tests to delete;
/// - `tmp` (1777), `root` (0700), `home/test` (owned by the test user),
///   `mnt`.
///
/// There is deliberately no `dev`, `proc`, `sys`, `etc/hosts` or
/// `etc/resolv.conf`: the sandbox must provide them without leaving traces
/// in the upperdir. Ownership is only set when running as root.
pub fn busybox_rootfs(dir: &Path) -> io::Result<()> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(HOST_BUSYBOX, bin.join("busybox"))?;
    fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o755))?;
    let list = Command::new(HOST_BUSYBOX).arg("--list").output()?;
    if !list.status.success() {
        return Err(io::Error::other(format!("{HOST_BUSYBOX} --list failed")));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains('/') || applet == "busybox" {
            continue;
        }
        symlink("busybox", bin.join(applet))?;
    }
    let etc = dir.join("etc");
    fs::create_dir_all(&etc)?;
    fs::write(etc.join("passwd"), PASSWD)?;
    fs::write(etc.join("group"), GROUP)?;
    fs::write(etc.join("motd"), "welcome\n")?;
    for (path, mode) in [
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home/test", 0o755),
        ("mnt", 0o755),
    ] {
        let path = dir.join(path);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(dir.join("home/test"), Some(TEST_UID), Some(TEST_GID))?;
    }
    Ok(())
}
