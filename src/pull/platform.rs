//! Platforms (`os/arch[/variant]`) and how an index entry is chosen for one.

use std::fmt;
use std::str::FromStr;

/// An OS and CPU architecture, as in an OCI index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, ...
    pub architecture: String,
    /// CPU variant (`v7`, `v8`), empty when not set.
    pub variant: String,
}

/// A `--platform` value that is not `os/arch[/variant]`.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {input:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7")]
pub struct ParseError {
    input: String,
}

impl Platform {
    /// The platform of this machine, normalised as containerd does (`linux/amd64`,
    /// `linux/arm64/v8`, `linux/arm/v7`).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform::new(std::env::consts::OS, architecture, "")
    }

    /// A normalised platform.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Self {
        let os = os.to_ascii_lowercase();
        let (architecture, variant) = normalize_arch(
            &architecture.to_ascii_lowercase(),
            &variant.to_ascii_lowercase(),
        );
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// True when an index entry for `other` can run here: same OS and architecture,
    /// and a compatible variant (an entry without a variant fits any).
    pub fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        if other.variant.is_empty() || self.variant == other.variant {
            return true;
        }
        // An armv7 machine runs v6 and v5 binaries, arm64 v8.x runs v8.
        match (
            self.variant.strip_prefix('v'),
            other.variant.strip_prefix('v'),
        ) {
            (Some(mine), Some(theirs)) => match (mine.parse::<f32>(), theirs.parse::<f32>()) {
                (Ok(mine), Ok(theirs)) => theirs <= mine,
                _ => false,
            },
            _ => false,
        }
    }

    /// How well an entry for `other` fits: higher is better; `None` when it does not.
    pub fn score(&self, other: &Platform) -> Option<u8> {
        if !self.matches(other) {
            None
        } else if self.variant == other.variant {
            Some(2)
        } else if other.variant.is_empty() {
            Some(1)
        } else {
            Some(0)
        }
    }
}

fn normalize_arch(architecture: &str, variant: &str) -> (String, String) {
    let (arch, variant) = match (architecture, variant) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "") => ("arm64", "v8"),
        ("aarch64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "") => ("arm", "v7"),
        ("arm", v @ ("5" | "6" | "7" | "8")) => return ("arm".into(), format!("v{v}")),
        (a, v) => (a, v),
    };
    (arch.to_string(), variant.to_string())
}

impl Default for Platform {
    /// The host's platform.
    fn default() -> Self {
        Platform::host()
    }
}

impl FromStr for Platform {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || ParseError {
            input: s.to_string(),
        };
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        }) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("linux/amd64", "linux/amd64")]
    #[case("linux/x86_64", "linux/amd64")]
    #[case("linux/arm64", "linux/arm64/v8")]
    #[case("linux/aarch64", "linux/arm64/v8")]
    #[case("linux/arm", "linux/arm/v7")]
    #[case("linux/arm/6", "linux/arm/v6")]
    #[case("Linux/AMD64", "linux/amd64")]
    #[case("windows/amd64", "windows/amd64")]
    fn parses(#[case] input: &str, #[case] shown: &str) {
        assert_eq!(input.parse::<Platform>().unwrap().to_string(), shown);
    }

    #[rstest]
    #[case("linux")]
    #[case("linux/")]
    #[case("/amd64")]
    #[case("linux/amd64/v1/x")]
    #[case("linux amd64")]
    fn rejects(#[case] input: &str) {
        let err = input.parse::<Platform>().unwrap_err().to_string();
        assert!(err.contains("os/arch"), "{err}");
    }

    #[rstest]
    #[case("linux/amd64", "linux/amd64", true)]
    #[case("linux/amd64", "linux/arm64", false)]
    #[case("linux/amd64", "windows/amd64", false)]
    #[case("linux/arm/v7", "linux/arm/v6", true)]
    #[case("linux/arm/v6", "linux/arm/v7", false)]
    #[case("linux/arm64", "linux/arm64/v8", true)]
    fn matching(#[case] host: &str, #[case] entry: &str, #[case] expected: bool) {
        let host: Platform = host.parse().unwrap();
        let entry: Platform = entry.parse().unwrap();
        assert_eq!(host.matches(&entry), expected);
    }

    #[test]
    fn exact_variant_scores_best() {
        let host: Platform = "linux/arm/v7".parse().unwrap();
        let exact = host.score(&"linux/arm/v7".parse().unwrap());
        let older = host.score(&"linux/arm/v6".parse().unwrap());
        assert!(exact > older);
        assert!(Platform::host().matches(&Platform::host()));
    }
}
