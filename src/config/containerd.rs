//! containerd's `config.toml`: which table holds the CRI settings in each config version,
//! the pull settings there, and the misplaced keys containerd ignores or chokes on.
//!
//! Where the CRI plugin reads its image settings (`services/server/config/config.go` in
//! 1.7, `cmd/containerd/server/config/config.go` and `plugins/cri/images/plugin.go` in
//! 2.x):
//!
//! | `version` | table | read by |
//! |---|---|---|
//! | absent, 0, 1 | `plugins.cri` | 1.x; 2.x renames it to `plugins."io.containerd.grpc.v1.cri"` |
//! | 2 | `plugins."io.containerd.grpc.v1.cri"` | 1.x; 2.x migrates `registry` and the pull settings to the next row |
//! | 3 | `plugins."io.containerd.cri.v1.images"` | 2.x only |
//!
//! A type containerd cannot decode (a table where it wants a string, a string where it
//! wants a list) makes it refuse to start, so those are [`Error`]s here; keys it does
//! not know are ignored by containerd and are [`Warning`]s here.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::config::{CriSettings, DEFAULT_CONFIG_PATH};
use crate::config::{Error, Warning};

mod cri;
mod lint;
mod registry;

use cri::{parse_cri_settings, select_cri_table};
use lint::{check_imports, check_proxy_plugins, toml_error};

pub(crate) use registry::{decode_basic, Registry};

/// The CRI plugin in a version 1 file.
const CRI_V1: &str = "cri";
/// The CRI plugin in a version 2 file (and its runtime half in version 3).
const CRI_GRPC: &str = "io.containerd.grpc.v1.cri";
/// The CRI image plugin in a version 3 file.
const CRI_IMAGES: &str = "io.containerd.cri.v1.images";

/// The keys of the CRI table that ctrpull reads; containerd 2.x migrates exactly these
/// (among others) from the version 2 table to the version 3 one.
const PULL_KEYS: &[&str] = &[
    "registry",
    "max_concurrent_downloads",
    "image_pull_progress_timeout",
];

/// What ctrpull takes from a containerd config.toml.
#[derive(Debug)]
pub(crate) struct ContainerdConfig {
    /// The file.
    pub path: PathBuf,
    /// Its `version` (1 when absent or 0, as containerd reads it).
    pub version: i64,
    /// The dotted key of the CRI table read (`plugins."io.containerd.grpc.v1.cri"`).
    pub plugin_key: String,
    /// Its `registry` table.
    pub registry: Registry,
    /// Its pull settings.
    pub cri: CriSettings,
}

/// The file being read: its path, for errors, and the warnings found so far.
pub(crate) struct Doc<'a> {
    path: &'a Path,
    warnings: &'a mut Vec<Warning>,
}

impl Doc<'_> {
    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            file: Some(self.path.to_path_buf()),
            key: key.into(),
            message: message.into(),
        });
    }

    /// "file: key: reason" prefix for `source` fields.
    fn source(&self, key: &str) -> String {
        format!("{}: {key}", self.path.display())
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidValue {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// A value containerd's decoder rejects, which stops containerd from starting.
    fn fatal_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.invalid(
            key,
            format!(
                "must be {expected}, found {}: containerd cannot decode this and refuses to start",
                article(found.type_str())
            ),
        )
    }
}

/// "a table", "an integer".
fn article(type_name: &str) -> String {
    let an = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if an { "an" } else { "a" })
}

/// `prefix.part`, quoting `part` when TOML needs it: `plugins."io.containerd.grpc.v1.cri"`.
pub(crate) fn dotted(prefix: &str, part: &str) -> String {
    let bare = !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let part = if bare {
        part.to_string()
    } else {
        format!("{part:?}")
    };
    if prefix.is_empty() {
        part
    } else {
        format!("{prefix}.{part}")
    }
}

/// Reads and parses the config.toml at `path`.
pub(crate) fn load(path: &Path, warnings: &mut Vec<Warning>) -> Result<ContainerdConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, warnings)
}

/// Parses a config.toml read from `path`.
pub(crate) fn parse(
    path: &Path,
    text: &str,
    warnings: &mut Vec<Warning>,
) -> Result<ContainerdConfig, Error> {
    let mut doc = Doc { path, warnings };
    let table: Table = text
        .parse()
        .map_err(|source| toml_error(path, text, source))?;

    let version = match table.get("version") {
        None => 1,
        // containerd: "Version 0 is not defined, treated at version 1".
        Some(Value::Integer(0 | 1)) => 1,
        Some(Value::Integer(v @ (2 | 3))) => *v,
        Some(Value::Integer(version)) => {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                version: *version,
            })
        }
        Some(other) => return Err(doc.fatal_type("version", "an integer", other)),
    };
    check_imports(&mut doc, &table);
    check_proxy_plugins(&mut doc, &table);

    let empty = Table::new();
    let plugins = match table.get("plugins") {
        None => &empty,
        Some(Value::Table(plugins)) => plugins,
        Some(other) => return Err(doc.fatal_type("plugins", "a table", other)),
    };
    let name = select_cri_table(&mut doc, version, plugins)?;
    let plugin_key = dotted("plugins", name);
    let cri_table = match plugins.get(name) {
        None => &empty,
        Some(Value::Table(t)) => t,
        Some(other) => return Err(doc.fatal_type(&plugin_key, "a table", other)),
    };

    let cri = parse_cri_settings(&mut doc, &plugin_key, cri_table)?;
    let registry_key = dotted(&plugin_key, "registry");
    let mut registry = match cri_table.get("registry") {
        None => Registry::default(),
        Some(Value::Table(t)) => registry::parse(&mut doc, &registry_key, &plugin_key, version, t)?,
        Some(other) => return Err(doc.fatal_type(&registry_key, "a table", other)),
    };
    // containerd 2.2+ (plugins/cri/images/plugin.go) fills in Docker-compatible host
    // directories when neither `config_path` nor `mirrors` is set. Only a version 3 file
    // says the node runs containerd 2.x; 2.0 and 2.1 did not do this yet.
    if version == 3 && registry.config_path.is_empty() && registry.mirrors.is_empty() {
        registry.config_path = DEFAULT_CONFIG_PATH.split(':').map(PathBuf::from).collect();
        registry.config_path_source = Some(format!(
            "containerd 2.2+ default for {} without `{}`",
            path.display(),
            dotted(&registry_key, "config_path")
        ));
    }
    Ok(ContainerdConfig {
        path: path.to_path_buf(),
        version,
        plugin_key,
        registry,
        cri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};
    use crate::registry::{Capabilities, Credentials, Endpoint};
    use rstest::rstest;
    use tempfile::TempDir;

    const FILE: &str = "/etc/containerd/config.toml";
    const GRPC: &str = r#"plugins."io.containerd.grpc.v1.cri""#;

    /// The article's section 2.1 snippet, as printed.
    const ARTICLE_2_1: &str = r#"[plugins."io.containerd.grpc.v1.cri".registry]
[plugins."io.containerd.grpc.v1.cri".registry.mirrors]
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."myregistry.example.com"]
endpoint = ["http://myregistry.example.com:5000"]
"#;
    /// Section 2.2.
    const ARTICLE_2_2: &str = r#"[plugins."io.containerd.grpc.v1.cri".registry.configs]
[plugins."io.containerd.grpc.v1.cri".registry.configs."myregistry.example.com".auth]
username = "admin"
password = "securepassword"
auth = "" # base64编码的"username:password"
identitytoken = ""
"#;
    /// Section 4.1.
    const ARTICLE_4_1: &str = r#"[plugins."io.containerd.grpc.v1.cri".registry.configs."myregistry.example.com".tls]
insecure_skip_verify = true # 仅测试环境使用
[proxy_plugins]
[proxy_plugins.cache]
type = "snapshot"
address = "/var/lib/containerd/io.containerd.grpc.v1.cri/cache"
"#;
    /// Section 4.2.
    const ARTICLE_4_2: &str = r#"[plugins."io.containerd.grpc.v1.cri".image_pull_progress_timeout]
default = "5m"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."myregistry.example.com".endpoint]
max_concurrent_downloads = 5
"#;
    /// Section 5.2.
    const ARTICLE_5_2: &str = r#"[plugins."io.containerd.grpc.v1.cri".registry.configs."myregistry.example.com".tracking]
enabled = true
"#;
    /// Section 6.1.
    const ARTICLE_6_1: &str = r#"[plugins."io.containerd.grpc.v1.cri".registry.mirrors]
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
endpoint = ["https://registry-1.docker.io", "https://mirror.gcr.io"]
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."private.registry"]
endpoint = ["http://private-reg:5000", "http://backup-reg:5000"]
"#;

    fn parse_text(text: &str) -> (Result<ContainerdConfig, Error>, Vec<String>) {
        let mut warnings = Vec::new();
        let result = parse(Path::new(FILE), text, &mut warnings);
        (result, warnings.iter().map(ToString::to_string).collect())
    }

    /// Loads `text` as the only configuration (an empty Docker config, no hosts dirs).
    fn load(text: &str) -> (Result<Config, Error>, TempDir) {
        let dir = TempDir::new().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        let docker = dir.path().join("config.json");
        std::fs::write(&docker, "{}").unwrap();
        let sources = Sources {
            config_toml: Some(config),
            docker_config: Some(docker),
            ..Sources::default()
        };
        (Config::load(&sources), dir)
    }

    /// (url, mirror, capabilities, credentials kind, skip_verify) per endpoint.
    fn summary(endpoints: &[Endpoint]) -> Vec<(&str, bool, String, Option<&str>, bool)> {
        endpoints
            .iter()
            .map(|e| {
                (
                    e.base.as_str(),
                    e.mirror,
                    e.capabilities.to_string(),
                    e.credentials.as_ref().map(Credentials::kind),
                    e.skip_verify,
                )
            })
            .collect()
    }

    fn texts(config: &Config) -> Vec<String> {
        config.warnings().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn article_2_1_with_version_2() {
        let (config, _dir) = load(&format!("version = 2\n{ARTICLE_2_1}"));
        let config = config.unwrap();
        let endpoints = config.endpoints("myregistry.example.com").unwrap();
        assert_eq!(
            summary(&endpoints),
            [
                (
                    "http://myregistry.example.com:5000/v2",
                    true,
                    "pull,resolve".into(),
                    None,
                    false
                ),
                (
                    "https://myregistry.example.com/v2",
                    false,
                    "pull,resolve".into(),
                    None,
                    false
                ),
            ]
        );
        assert!(texts(&config).is_empty(), "{:?}", texts(&config));
        // Other registries are not affected: no `*` entry.
        assert_eq!(
            config.endpoints("quay.io").unwrap()[0].base.as_str(),
            "https://quay.io/v2"
        );
    }

    #[test]
    fn article_2_1_as_printed_has_no_version_line() {
        let (config, dir) = load(ARTICLE_2_1);
        let config = config.unwrap();
        assert_eq!(config.config_version(), Some(1));
        assert_eq!(config.endpoints("myregistry.example.com").unwrap().len(), 2);
        assert_eq!(
            texts(&config),
            [format!(
                "{}: `{GRPC}` is ignored by containerd 1.x because this file has no `version = 2` (version 1 files name the plugin `plugins.cri`); containerd 2.x reads it, and so does ctrpull. Add `version = 2` at the top of the file",
                dir.path().join("config.toml").display()
            )]
        );
    }

    #[test]
    fn article_2_1_2_2_4_1_5_2_together() {
        let text = format!("version = 2\n{ARTICLE_2_1}{ARTICLE_2_2}{ARTICLE_4_1}{ARTICLE_5_2}");
        let (config, dir) = load(&text);
        let config = config.unwrap();
        let endpoints = config.endpoints("myregistry.example.com").unwrap();
        // The credentials and TLS are keyed "myregistry.example.com": containerd applies
        // them to the appended upstream only, never to the mirror on port 5000.
        assert_eq!(
            summary(&endpoints),
            [
                (
                    "http://myregistry.example.com:5000/v2",
                    true,
                    "pull,resolve".into(),
                    None,
                    false
                ),
                (
                    "https://myregistry.example.com/v2",
                    false,
                    "pull,resolve".into(),
                    Some("basic"),
                    true
                ),
            ]
        );
        let file = dir.path().join("config.toml");
        assert_eq!(
            endpoints[1].credentials_source.as_deref(),
            Some(
                format!(
                    "{}: {GRPC}.registry.configs.\"myregistry.example.com\".auth",
                    file.display()
                )
                .as_str()
            )
        );
        let Some(Credentials::Basic { username, password }) = &endpoints[1].credentials else {
            panic!("{:?}", endpoints[1].credentials)
        };
        assert_eq!(
            (username.as_str(), password.expose()),
            ("admin", "securepassword")
        );
        let f = file.display();
        assert_eq!(
            texts(&config),
            [
                format!("{f}: `proxy_plugins.cache` is not a cache: `type = \"snapshot\"` registers a remote snapshotter named \"cache\", a gRPC service containerd expects to find listening on the socket \"/var/lib/containerd/io.containerd.grpc.v1.cri/cache\"; containerd caches no images or layers with it and uses it only where snapshotter \"cache\" is selected. ctrpull ignores it; a pull-through cache is a registry mirror (hosts.toml or --mirror)"),
                format!("{f}: `{GRPC}.registry.configs.\"myregistry.example.com\".tracking` is not a containerd setting: containerd has no per-registry pull audit log and ignores this table. Pulls are logged by containerd (journalctl -u containerd) and reported as kubelet events"),
                format!("{f}: `{GRPC}.registry.configs.\"myregistry.example.com\"` does not apply to the mirror endpoint http://myregistry.example.com:5000/v2: containerd looks `configs` up by the endpoint's host:port (myregistry.example.com:5000), so no credentials or TLS settings are used there. Name the table `configs.\"myregistry.example.com:5000\"` to apply them"),
            ]
        );
        assert!(!format!("{config:?}").contains("securepassword"));
    }

    #[test]
    fn article_4_2_as_printed_is_refused() {
        let (result, _) = parse_text(&format!("version = 2\n{ARTICLE_4_2}"));
        assert_eq!(
            result.unwrap_err().to_string(),
            format!("{FILE}: `{GRPC}.image_pull_progress_timeout`: must be a Go duration string, found a table: containerd cannot decode this and refuses to start. Write `image_pull_progress_timeout = \"5m\"` inside `[{GRPC}]` instead of a `[{GRPC}.image_pull_progress_timeout]` table")
        );
    }

    #[test]
    fn article_4_2_endpoint_table_alone_is_refused() {
        let text = format!(
            "version = 2\n{}",
            &ARTICLE_4_2[ARTICLE_4_2
                .find("[plugins.\"io.containerd.grpc.v1.cri\".registry")
                .unwrap()..]
        );
        let (result, _) = parse_text(&text);
        assert_eq!(
            result.unwrap_err().to_string(),
            format!("{FILE}: `{GRPC}.registry.mirrors.\"myregistry.example.com\".endpoint`: must be a list of endpoint URLs, found a table: containerd cannot decode this and refuses to start; `max_concurrent_downloads` belongs in `[{GRPC}]`, not under a mirror")
        );
    }

    #[test]
    fn article_4_2_endpoint_table_next_to_2_1_is_a_toml_error_with_a_hint() {
        let text = format!(
            "version = 2\n{ARTICLE_2_1}{}",
            &ARTICLE_4_2[ARTICLE_4_2
                .find("[plugins.\"io.containerd.grpc.v1.cri\".registry")
                .unwrap()..]
        );
        let err = parse_text(&text).0.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{FILE}: invalid TOML: TOML parse error at line 6")),
            "{err}"
        );
        assert!(err.contains("duplicate key"), "{err}");
        assert!(err.ends_with("hint: `endpoint` is both a list (`endpoint = [...]`) and a table (`[...endpoint]`), which TOML forbids; containerd refuses to start with this file too. A mirror's `endpoint` is only a list of URLs: `max_concurrent_downloads` belongs in the CRI plugin's own table ([plugins.\"io.containerd.grpc.v1.cri\"] in a version 2 file)"), "{err}");
    }

    #[test]
    fn article_6_1_upstream_is_not_tried_twice() {
        let (config, _dir) = load(&format!("version = 2\n{ARTICLE_6_1}"));
        let config = config.unwrap();
        let hub = config.endpoints("docker.io").unwrap();
        assert_eq!(
            summary(&hub),
            [
                (
                    "https://registry-1.docker.io/v2",
                    false,
                    "pull,resolve".into(),
                    None,
                    false
                ),
                (
                    "https://mirror.gcr.io/v2",
                    true,
                    "pull,resolve".into(),
                    None,
                    false
                ),
            ]
        );
        let private = config.endpoints("private.registry").unwrap();
        assert_eq!(
            summary(&private),
            [
                (
                    "http://private-reg:5000/v2",
                    true,
                    "pull,resolve".into(),
                    None,
                    false
                ),
                (
                    "http://backup-reg:5000/v2",
                    true,
                    "pull,resolve".into(),
                    None,
                    false
                ),
                (
                    "https://private.registry/v2",
                    false,
                    "pull,resolve".into(),
                    None,
                    false
                ),
            ]
        );
        assert!(texts(&config).is_empty());
    }

    #[rstest]
    #[case::v3_with_v2_table("version = 3\n[plugins.\"io.containerd.grpc.v1.cri\"]\nmax_concurrent_downloads = 5\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/d\"\n",
        &["`plugins.\"io.containerd.grpc.v1.cri\".registry` is ignored by containerd in a version 3 file: `registry` belongs in `[plugins.\"io.containerd.cri.v1.images\"]`",
          "`plugins.\"io.containerd.grpc.v1.cri\".max_concurrent_downloads` is ignored by containerd in a version 3 file: `max_concurrent_downloads` belongs in `[plugins.\"io.containerd.cri.v1.images\"]`"])]
    #[case::v2_with_v3_table("version = 2\n[plugins.\"io.containerd.cri.v1.images\"]\nmax_concurrent_downloads = 5\n",
        &["`plugins.\"io.containerd.cri.v1.images\"` is a version 3 table: containerd 1.x ignores it in a version 2 file"])]
    #[case::v2_with_short_name("version = 2\n[plugins.cri]\nmax_concurrent_downloads = 5\n",
        &["`plugins.cri` is a version 1 plugin name: containerd 1.x refuses to start with it in a version 2 file and containerd 2.x ignores it; use `plugins.\"io.containerd.grpc.v1.cri\"`"])]
    #[case::imports("version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n",
        &["`imports` is not followed by ctrpull: registry settings in /etc/containerd/conf.d/*.toml are not read"])]
    #[case::negative_downloads("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nmax_concurrent_downloads = -1\n",
        &["max_concurrent_downloads` is negative: containerd reads any value below 1 as \"no limit\""])]
    #[case::other_plugins_are_not_ours("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nsnapshotter = \"x\"\n[plugins.\"io.containerd.internal.v1.opt\"]\npath = \"/x\"\n[proxy_plugins.stargz]\ntype = \"snapshot\"\naddress = \"/run/stargz.sock\"\n", &[])]
    fn file_warnings(#[case] text: &str, #[case] expected: &[&str]) {
        let (result, found) = parse_text(text);
        let config = result.unwrap();
        assert_eq!(found.len(), expected.len(), "{found:?}");
        for (warning, part) in found.iter().zip(expected) {
            assert!(
                warning.starts_with(&format!("{FILE}: ")) && warning.contains(part),
                "{warning}\n  missing: {part}"
            );
        }
        // Tables containerd ignores are ignored here too.
        assert!(config.registry.config_path.is_empty() || config.version == 3);
    }

    #[test]
    fn version_3_defaults_config_path_like_containerd_2_2() {
        let config = parse_text("version = 3\n").0.unwrap();
        assert_eq!(
            config.registry.config_path,
            [
                PathBuf::from("/etc/containerd/certs.d"),
                PathBuf::from("/etc/docker/certs.d")
            ]
        );
        // With legacy mirrors containerd keeps config_path empty; a version 2 file too.
        let mirrors = "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry.mirrors.\"r\"]\nendpoint = [\"https://m\"]\n";
        assert!(parse_text(mirrors)
            .0
            .unwrap()
            .registry
            .config_path
            .is_empty());
        assert!(parse_text("version = 2\n")
            .0
            .unwrap()
            .registry
            .config_path
            .is_empty());
    }

    #[test]
    fn legacy_capabilities_never_push() {
        let config = parse_text(&format!("version = 2\n{ARTICLE_6_1}"))
            .0
            .unwrap();
        let endpoints = config
            .registry
            .legacy_endpoints("docker.io", false)
            .unwrap()
            .unwrap();
        assert!(endpoints.iter().all(|e| e.capabilities
            == Capabilities {
                pull: true,
                resolve: true,
                push: false
            }));
    }

    #[rstest]
    #[case("io.containerd.grpc.v1.cri", "plugins.\"io.containerd.grpc.v1.cri\"")]
    #[case("cri", "plugins.cri")]
    #[case("my_key-1", "plugins.my_key-1")]
    #[case("a b", "plugins.\"a b\"")]
    fn dotted_keys(#[case] part: &str, #[case] expected: &str) {
        assert_eq!(dotted("plugins", part), expected);
    }
}
