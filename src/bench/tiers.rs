//! Bandwidth tiers: the link conditions a benchmark runs under, built in or from TOML.
//!
//! ```toml
//! [[tier]]
//! name = "dsl"
//! rate = "50mbit"            # whole link; omit for unlimited
//! per_connection = "10mbit"  # per-flow cap (a WAN or CDN's); omit for none
//! latency = "60ms"           # added per new connection and per request
//! ```

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::link::{parse_rate, LinkConfig};

/// One link condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tier {
    /// Name used on the command line and in reports.
    pub name: String,
    /// Aggregate rate in bytes/s; `None` is unlimited.
    pub rate: Option<u64>,
    /// Per-connection rate in bytes/s; `None` is uncapped.
    pub per_connection_rate: Option<u64>,
    /// Latency added once per connection and once per request.
    #[serde(with = "duration_text")]
    pub latency: Duration,
}

impl Tier {
    /// The link emulator settings for this tier.
    pub fn link_config(&self) -> LinkConfig {
        LinkConfig {
            rate: self.rate,
            per_connection_rate: self.per_connection_rate,
            connect_latency: self.latency,
            request_latency: self.latency,
            ..LinkConfig::default()
        }
    }

    /// True when the tier shapes nothing.
    pub fn is_unshaped(&self) -> bool {
        self.rate.is_none() && self.per_connection_rate.is_none() && self.latency.is_zero()
    }
}

/// Serializes durations as humantime strings ("40ms") in reports.
mod duration_text {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

const MBIT: u64 = 1_000_000 / 8;

/// The built-in tiers: `100mbit`, `1gbit`, `10gbit` and `unshaped`.
///
/// Per-connection caps are what one TCP flow typically gets through a WAN or CDN
/// edge at that link class: a single stream cannot fill the link, which is why one
/// HTTP stream per layer (containerd's way) leaves most of it idle.
pub fn builtin() -> Vec<Tier> {
    let tier = |name: &str, rate: Option<u64>, per: Option<u64>, latency_ms: u64| Tier {
        name: name.to_string(),
        rate,
        per_connection_rate: per,
        latency: Duration::from_millis(latency_ms),
    };
    vec![
        tier("100mbit", Some(100 * MBIT), Some(25 * MBIT), 40),
        tier("1gbit", Some(1000 * MBIT), Some(100 * MBIT), 20),
        tier("10gbit", Some(10_000 * MBIT), Some(400 * MBIT), 2),
        tier("unshaped", None, None, 0),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tier: Vec<FileTier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTier {
    name: String,
    rate: Option<String>,
    per_connection: Option<String>,
    latency: Option<String>,
}

/// Tiers from a TOML file (see the module docs). Errors name the file, the tier
/// and the field.
pub fn load(path: &Path) -> Result<Vec<Tier>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Tiers from TOML text.
pub fn parse(text: &str) -> Result<Vec<Tier>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut tiers: Vec<Tier> = Vec::new();
    for (i, t) in file.tier.into_iter().enumerate() {
        let at = |field: &str| format!("tier[{i}] ({:?}).{field}", t.name);
        if t.name.trim().is_empty() || t.name.contains(',') {
            return Err(format!(
                "tier[{i}].name must be non-empty and without commas"
            ));
        }
        if tiers.iter().any(|x| x.name == t.name) {
            return Err(format!("{}: defined twice", at("name")));
        }
        let rate = |value: &Option<String>, field: &str| {
            value
                .as_deref()
                .map(parse_rate)
                .transpose()
                .map_err(|e| format!("{}: {e}", at(field)))
        };
        let latency = t
            .latency
            .as_deref()
            .map(humantime::parse_duration)
            .transpose()
            .map_err(|e| format!("{}: {e}", at("latency")))?
            .unwrap_or_default();
        tiers.push(Tier {
            rate: rate(&t.rate, "rate")?,
            per_connection_rate: rate(&t.per_connection, "per_connection")?,
            name: t.name,
            latency,
        });
    }
    if tiers.is_empty() {
        return Err("no [[tier]] defined".into());
    }
    Ok(tiers)
}

/// Resolves `--tiers`: a TOML file path, or comma-separated names of built-in tiers.
pub fn select(spec: &str) -> Result<Vec<Tier>, String> {
    let path = Path::new(spec);
    if path.is_file() {
        return load(path);
    }
    let all = builtin();
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            all.iter().find(|t| t.name == name).cloned().ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
                format!(
                    "unknown tier {name:?} (built in: {}; or give a TOML file)",
                    names.join(", ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tiers_match_the_documented_table() {
        let tiers = select("100mbit,1gbit,10gbit,unshaped").unwrap();
        assert_eq!(tiers[0].rate, Some(12_500_000));
        assert_eq!(tiers[0].per_connection_rate, Some(3_125_000));
        assert_eq!(tiers[0].latency, Duration::from_millis(40));
        assert_eq!(tiers[1].per_connection_rate, Some(12_500_000));
        assert_eq!(tiers[2].per_connection_rate, Some(50_000_000));
        assert!(tiers[3].is_unshaped());
        assert!(!tiers[0].is_unshaped());
    }

    #[test]
    fn unknown_names_are_errors() {
        let err = select("100mbit,5gbit").unwrap_err();
        assert!(err.contains("5gbit") && err.contains("built in"), "{err}");
    }

    #[test]
    fn parses_a_file() {
        let tiers = parse(
            "[[tier]]\nname = \"dsl\"\nrate = \"50mbit\"\nper_connection = \"10mbit\"\nlatency = \"60ms\"\n\n[[tier]]\nname = \"lan\"\n",
        )
        .unwrap();
        assert_eq!(tiers.len(), 2);
        assert_eq!(tiers[0].rate, Some(6_250_000));
        assert_eq!(tiers[0].latency, Duration::from_millis(60));
        assert!(tiers[1].is_unshaped());
        let config = tiers[0].link_config();
        assert_eq!(config.per_connection_rate, Some(1_250_000));
        assert_eq!(config.request_latency, Duration::from_millis(60));
    }

    #[test]
    fn file_errors_name_the_field() {
        let err = parse("[[tier]]\nname = \"x\"\nrate = \"fast\"\n").unwrap_err();
        assert!(err.contains("tier[0]") && err.contains("rate"), "{err}");
        let err = parse("[[tier]]\nname = \"x\"\nlatency = \"soon\"\n").unwrap_err();
        assert!(err.contains("latency"), "{err}");
        let err = parse("[[tier]]\nname = \"x\"\nspeed = \"1\"\n").unwrap_err();
        assert!(err.contains("speed"), "{err}");
        let err = parse("[[tier]]\nname = \"x\"\n[[tier]]\nname = \"x\"\n").unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }
}
