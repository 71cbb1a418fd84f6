//! Target and build platforms (`linux/arm64/v8`), parsed and normalized.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An `os/arch[/variant]` platform, normalized the way containerd does
/// (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm` → `arm/v7`, `arm64/v8` → `arm64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A platform string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {value:?}: {reason}")]
pub struct PlatformError {
    pub value: String,
    pub reason: String,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// Normalizes names and fills the default variant.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let os = os.to_ascii_lowercase();
        let os = if os == "macos" {
            "darwin".to_string()
        } else {
            os
        };
        let arch = architecture.to_ascii_lowercase();
        let variant = variant
            .map(str::to_ascii_lowercase)
            .filter(|v| !v.is_empty());
        let (architecture, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386" | "386", _) => ("386".to_string(), None),
            ("x86_64" | "x86-64" | "amd64", v) => (
                "amd64".to_string(),
                v.filter(|v| *v != "v1").map(String::from),
            ),
            ("aarch64" | "arm64", Some("8" | "v8") | None) => ("arm64".to_string(), None),
            ("aarch64" | "arm64", Some(v)) => ("arm64".to_string(), Some(v.to_string())),
            ("armhf", _) => ("arm".to_string(), Some("v7".to_string())),
            ("armel", _) => ("arm".to_string(), Some("v6".to_string())),
            ("arm", None | Some("7")) => ("arm".to_string(), Some("v7".to_string())),
            ("arm", Some("5" | "6" | "8")) => ("arm".to_string(), variant.map(|v| format!("v{v}"))),
            (a, v) => (a.to_string(), v.map(String::from)),
        };
        Self {
            os,
            architecture,
            variant,
        }
    }

    /// The variant or the empty string (for `TARGETVARIANT`).
    pub fn variant_str(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }

    /// The same platform as an `oci_spec` value.
    pub fn to_oci(&self) -> oci_spec::image::Platform {
        let mut p = oci_spec::image::Platform::default();
        p.set_os(oci_spec::image::Os::from(self.os.as_str()));
        p.set_architecture(oci_spec::image::Arch::from(self.architecture.as_str()));
        p.set_variant(self.variant.clone());
        p
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::linux_amd64()
    }
}

const KNOWN_OS: &[&str] = &[
    "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix",
    "android", "ios",
];
const KNOWN_ARCH: &[&str] = &[
    "amd64", "x86_64", "x86-64", "386", "i386", "arm", "armhf", "armel", "arm64", "aarch64",
    "ppc64le", "ppc64", "s390x", "riscv64", "mips", "mipsle", "mips64", "mips64le", "loong64",
    "wasm",
];

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PlatformError {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        for p in &parts {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(err("components must be letters, digits, '_' or '-'"));
            }
        }
        match parts.as_slice() {
            [one] => {
                let lower = one.to_ascii_lowercase();
                if KNOWN_OS.contains(&lower.as_str()) {
                    Ok(Platform::new(&lower, "amd64", None))
                } else if KNOWN_ARCH.contains(&lower.as_str()) {
                    Ok(Platform::new("linux", &lower, None))
                } else {
                    Err(err("unknown operating system or architecture"))
                }
            }
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(err("expected os/arch[/variant]")),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The default `PATH` of a Linux image without one.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        let p: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(p, Platform::linux_amd64());
        assert_eq!(
            "linux/arm".parse::<Platform>().unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            "linux/arm64/v8".parse::<Platform>().unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            "linux/aarch64".parse::<Platform>().unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            "Linux/x86_64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            "darwin/ppc64le".parse::<Platform>().unwrap().to_string(),
            "darwin/ppc64le"
        );
        assert_eq!(
            "arm64".parse::<Platform>().unwrap().to_string(),
            "linux/arm64"
        );
        assert!("linux/".parse::<Platform>().is_err());
        assert!("nonsense".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
        let oci = p.to_oci();
        assert_eq!(oci.architecture().to_string(), "amd64");
    }
}
