//! Linux capabilities a step keeps: docker's default set.

use std::fmt;

/// A Linux capability, by its number in `<linux/capability.h>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability(u8);

impl Capability {
    pub const CHOWN: Self = Self(0);
    pub const DAC_OVERRIDE: Self = Self(1);
    pub const DAC_READ_SEARCH: Self = Self(2);
    pub const FOWNER: Self = Self(3);
    pub const FSETID: Self = Self(4);
    pub const KILL: Self = Self(5);
    pub const SETGID: Self = Self(6);
    pub const SETUID: Self = Self(7);
    pub const SETPCAP: Self = Self(8);
    pub const NET_BIND_SERVICE: Self = Self(10);
    pub const NET_ADMIN: Self = Self(12);
    pub const NET_RAW: Self = Self(13);
    pub const SYS_CHROOT: Self = Self(18);
    pub const SYS_ADMIN: Self = Self(21);
    pub const MKNOD: Self = Self(27);
    pub const AUDIT_WRITE: Self = Self(29);
    pub const SETFCAP: Self = Self(31);

    /// The highest capability number the kernel ABI can express (64 bits in
    /// `capset` version 3).
    pub const MAX: u8 = 63;

    /// The capability numbered `n`, if the ABI can express it.
    pub fn from_number(n: u8) -> Option<Self> {
        (n <= Self::MAX).then_some(Self(n))
    }

    pub fn number(self) -> u8 {
        self.0
    }
}

/// A set of capabilities, as the kernel's 64-bit masks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapSet(u64);

impl CapSet {
    pub const EMPTY: Self = Self(0);

    pub const fn from_mask(mask: u64) -> Self {
        Self(mask)
    }

    pub fn of(caps: &[Capability]) -> Self {
        Self(caps.iter().fold(0, |mask, cap| mask | 1 << cap.0))
    }

    /// Every capability up to and including `last` (the kernel's
    /// `/proc/sys/kernel/cap_last_cap`).
    pub fn all_up_to(last: u8) -> Self {
        Self::of(
            &(0..=last.min(Capability::MAX))
                .map(Capability)
                .collect::<Vec<_>>(),
        )
    }

    /// The permitted set of this process: all a step can be given, since
    /// capset cannot add what the caller lacks (a container may run builder
    /// without some). `None` if `/proc/self/status` cannot be read.
    pub fn own_permitted() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapPrm:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(Self)
    }

    /// The mask as `/proc/<pid>/status` prints it (`CapEff:` and friends).
    pub const fn mask(self) -> u64 {
        self.0
    }

    pub fn contains(self, cap: Capability) -> bool {
        self.0 & (1 << cap.0) != 0
    }

    /// Capabilities up to and including `last` (the kernel's
    /// `/proc/sys/kernel/cap_last_cap`) that are not in the set: what the
    /// bounding set must lose.
    pub fn missing_up_to(self, last: u8) -> Vec<Capability> {
        (0..=last.min(Capability::MAX))
            .map(Capability)
            .filter(|cap| !self.contains(*cap))
            .collect()
    }
}

impl fmt::Debug for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapSet({:016x})", self.0)
    }
}

/// Docker's (and BuildKit's) default capabilities for a container.
///
/// A step running as root gets these in its bounding, permitted and
/// effective sets. The inheritable set stays empty, as in docker since
/// 20.10.14 and BuildKit since 0.10.1 (CVE-2022-24769: with a non-empty
/// inheritable set, a non-root user could gain capabilities by executing a
/// file with inheritable file capabilities). A non-root user ends up with no
/// effective or permitted capabilities after `execve`, as in docker.
pub const DOCKER_DEFAULT_CAPS: CapSet = CapSet::from_mask(
    1 << 0 // CHOWN
        | 1 << 1 // DAC_OVERRIDE
        | 1 << 3 // FOWNER
        | 1 << 4 // FSETID
        | 1 << 5 // KILL
        | 1 << 6 // SETGID
        | 1 << 7 // SETUID
        | 1 << 8 // SETPCAP
        | 1 << 10 // NET_BIND_SERVICE
        | 1 << 13 // NET_RAW
        | 1 << 18 // SYS_CHROOT
        | 1 << 27 // MKNOD
        | 1 << 29 // AUDIT_WRITE
        | 1 << 31, // SETFCAP
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_matches_capeff_of_docker_root() {
        assert_eq!(DOCKER_DEFAULT_CAPS.mask(), 0x00000000a80425fb);
        let named = CapSet::of(&[
            Capability::CHOWN,
            Capability::DAC_OVERRIDE,
            Capability::FOWNER,
            Capability::FSETID,
            Capability::KILL,
            Capability::SETGID,
            Capability::SETUID,
            Capability::SETPCAP,
            Capability::NET_BIND_SERVICE,
            Capability::NET_RAW,
            Capability::SYS_CHROOT,
            Capability::MKNOD,
            Capability::AUDIT_WRITE,
            Capability::SETFCAP,
        ]);
        assert_eq!(named, DOCKER_DEFAULT_CAPS);
        assert!(!DOCKER_DEFAULT_CAPS.contains(Capability::SYS_ADMIN));
        assert!(!DOCKER_DEFAULT_CAPS.contains(Capability::NET_ADMIN));
    }

    #[test]
    fn missing_lists_every_cap_outside_the_set() {
        let missing = DOCKER_DEFAULT_CAPS.missing_up_to(40);
        assert_eq!(missing.len(), 41 - 14);
        assert!(missing.contains(&Capability::SYS_ADMIN));
        assert!(missing.contains(&Capability::DAC_READ_SEARCH));
        assert!(!missing.contains(&Capability::CHOWN));
        assert_eq!(missing.last(), Some(&Capability(40)));
        assert_eq!(Capability::from_number(64), None);
    }
}
