//! The merged configuration: every source read once, and per registry the ordered
//! endpoints with TLS settings and credentials attached.
//!
//! Order for a registry: `--mirror` endpoints, then its hosts.toml directory (first
//! root that has one) or else containerd's legacy `mirrors`, then the upstream last. An
//! endpoint that repeats an earlier one's URL without adding a capability is dropped, so
//! the upstream is never tried twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::containerd::{self, ContainerdConfig, Registry};
use crate::config::docker::{self, DockerConfig};
use crate::config::flags::MirrorFlag;
use crate::config::DEFAULT_CONFIG_TOML;
use crate::config::{hosts, CriSettings, Error, Sources, Warning};
use crate::registry::{Capabilities, Endpoint};

/// The endpoints for one registry, with the warnings about its hosts.toml.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Ordered, merged, with credentials attached.
    pub endpoints: Vec<Endpoint>,
    /// Warnings about the files read for this registry only (its hosts.toml); the others
    /// are in [`Config::warnings`].
    pub warnings: Vec<Warning>,
}

/// The merged configuration, parsed once per run. `Debug` never shows a secret.
#[derive(Debug)]
pub struct Config {
    containerd: Option<ContainerdConfig>,
    hosts_dirs: Vec<PathBuf>,
    hosts_dirs_source: Option<String>,
    docker: Option<DockerConfig>,
    /// `--mirror`s, checked.
    mirrors: Vec<MirrorFlag>,
    plain_http: bool,
    cri: CriSettings,
    warnings: Vec<Warning>,
    /// Endpoints already resolved this run, so that a registry's hosts.toml is read (and
    /// warned about) once, however many images come from it.
    resolved: Mutex<HashMap<String, Vec<Endpoint>>>,
}

impl Config {
    /// Reads every source. Warnings are logged with `tracing::warn!` and kept in
    /// [`Config::warnings`]; anything invalid is an [`Error`] naming file, key and reason.
    pub fn load(sources: &Sources) -> Result<Config, Error> {
        let mut warnings = Vec::new();
        let config_toml = match &sources.config_toml {
            Some(path) => Some(path.clone()),
            None => existing(Path::new(DEFAULT_CONFIG_TOML)),
        };
        let containerd = config_toml
            .map(|path| containerd::load(&path, &mut warnings))
            .transpose()?;

        let (hosts_dirs, hosts_dirs_source) = if !sources.hosts_dirs.is_empty() {
            if let Some(c) = containerd
                .as_ref()
                .filter(|c| !c.registry.mirrors.is_empty())
            {
                warnings.push(Warning {
                    file: None,
                    key: "--hosts-dir".to_string(),
                    message: format!(
                        "replaces config_path, but the legacy mirrors in {} still apply to \
                         registries without a host directory (containerd never uses both)",
                        c.path.display()
                    ),
                });
            }
            (sources.hosts_dirs.clone(), Some("--hosts-dir".to_string()))
        } else {
            match &containerd {
                Some(c) => (
                    c.registry.config_path.clone(),
                    c.registry.config_path_source.clone(),
                ),
                None => (Vec::new(), None),
            }
        };

        let docker_path = match &sources.docker_config {
            Some(path) => Some(path.clone()),
            None => docker::default_path(),
        };
        let docker = docker_path
            .map(|path| docker::load(&path, &mut warnings))
            .transpose()?;

        let mirrors = sources
            .mirrors
            .iter()
            .map(|(host, url)| MirrorFlag::new(host, url))
            .collect::<Result<_, _>>()?;

        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        Ok(Config {
            cri: containerd
                .as_ref()
                .map(|c| c.cri.clone())
                .unwrap_or_default(),
            containerd,
            hosts_dirs,
            hosts_dirs_source,
            docker,
            mirrors,
            plain_http: sources.plain_http,
            warnings,
            resolved: Mutex::new(HashMap::new()),
        })
    }

    /// The ordered endpoints for `registry` (as in `Reference::registry()`), with TLS
    /// settings and credentials attached. Read once per registry and run; warnings
    /// about its hosts.toml are logged the first time.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, Error> {
        // A poisoned lock only means another thread panicked mid-insert; the map is
        // still a valid cache.
        let mut cache = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoints) = cache.get(registry) {
            return Ok(endpoints.clone());
        }
        let resolved = self.resolve(registry)?;
        for warning in &resolved.warnings {
            tracing::warn!("{warning}");
        }
        cache.insert(registry.to_string(), resolved.endpoints.clone());
        Ok(resolved.endpoints)
    }

    /// Like [`Config::endpoints`], but read afresh and with the warnings about the
    /// registry's hosts.toml returned rather than logged (for `ctrpull hosts`).
    pub fn resolve(&self, registry: &str) -> Result<Resolved, Error> {
        let mut warnings = Vec::new();
        let legacy = self.containerd.as_ref().map(|c| &c.registry);

        let mut endpoints: Vec<Endpoint> = self
            .mirrors
            .iter()
            .filter(|m| m.applies_to(registry))
            .map(|m| m.endpoint(registry))
            .collect();
        let flagged = endpoints.len();

        let from_hosts = hosts::lookup(registry, &self.hosts_dirs, self.plain_http, &mut warnings)?;
        let hosts_found = from_hosts.is_some();
        let rest = match from_hosts {
            Some(list) => list,
            None => match legacy.map(|r| r.legacy_endpoints(registry, self.plain_http)) {
                Some(Ok(Some(list))) => list,
                Some(Err(e)) => return Err(e),
                _ => vec![hosts::default_endpoint(registry, self.plain_http)?],
            },
        };
        endpoints.extend(rest);

        if let Some(registry_table) = legacy {
            for (i, endpoint) in endpoints.iter_mut().enumerate() {
                // `configs.*.tls` is the legacy way to set what hosts.toml sets itself;
                // containerd never applies both to one host.
                if i < flagged || !hosts_found {
                    apply_tls(registry_table, endpoint);
                }
                endpoint
                    .headers
                    .extend(registry_table.headers.iter().cloned());
            }
        }
        for endpoint in &mut endpoints {
            self.attach_credentials(endpoint);
        }
        Ok(Resolved {
            endpoints: dedupe(endpoints),
            warnings,
        })
    }

    /// containerd's `configs."<endpoint host>".auth` first, Docker's config.json second.
    fn attach_credentials(&self, endpoint: &mut Endpoint) {
        if endpoint.credentials.is_some() {
            return;
        }
        let from_containerd = self
            .containerd
            .as_ref()
            .and_then(|c| c.registry.auth_for(&endpoint.base))
            .map(|auth| (auth.credentials.clone(), auth.source.clone()));
        let found = from_containerd.or_else(|| {
            self.docker
                .as_ref()
                .and_then(|d| d.credentials_for(&endpoint.base))
                .map(|(credentials, source)| (credentials.clone(), source))
        });
        if let Some((credentials, source)) = found {
            endpoint.credentials = Some(credentials);
            endpoint.credentials_source = Some(source);
        }
    }

    /// The CRI plugin's pull settings found in config.toml.
    pub fn cri(&self) -> &CriSettings {
        &self.cri
    }

    /// Warnings about config.toml, config.json and the flags, found at load.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// The containerd config.toml read, if any.
    pub fn config_toml(&self) -> Option<&Path> {
        self.containerd.as_ref().map(|c| c.path.as_path())
    }

    /// The `version` of the config.toml read (1 when it has none), if any.
    pub fn config_version(&self) -> Option<i64> {
        self.containerd.as_ref().map(|c| c.version)
    }

    /// The dotted key of the config.toml table the CRI settings were read from
    /// (`plugins."io.containerd.grpc.v1.cri"` in a version 2 file), if any.
    pub fn cri_table(&self) -> Option<&str> {
        self.containerd.as_ref().map(|c| c.plugin_key.as_str())
    }

    /// The hosts.toml roots searched, in order.
    pub fn hosts_dirs(&self) -> &[PathBuf] {
        &self.hosts_dirs
    }

    /// Where [`Config::hosts_dirs`] came from (`--hosts-dir`, "file: key", or
    /// containerd's default).
    pub fn hosts_dirs_source(&self) -> Option<&str> {
        self.hosts_dirs_source.as_deref()
    }

    /// The Docker config.json read, if any.
    pub fn docker_config(&self) -> Option<&Path> {
        self.docker.as_ref().map(|d| d.path.as_path())
    }
}

/// `path` when it exists, or when it cannot be checked (so that reading it says why).
fn existing(path: &Path) -> Option<PathBuf> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        _ => Some(path.to_path_buf()),
    }
}

/// `configs."<endpoint host>".tls` onto an endpoint, replacing containerd's defaults.
fn apply_tls(registry: &Registry, endpoint: &mut Endpoint) {
    if let Some(tls) = registry.tls_for(&endpoint.base) {
        endpoint.skip_verify = tls.skip_verify;
        endpoint.ca_files = tls.ca_file.iter().cloned().collect();
        endpoint.client_certs = tls
            .client
            .iter()
            .map(|(cert, key)| (cert.clone(), Some(key.clone())))
            .collect();
    }
}

/// Drops an endpoint whose URL an earlier one already has with at least its pull and
/// resolve capabilities (ctrpull never pushes): trying the same URL twice only doubles
/// the wait on a dead host.
fn dedupe(endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    let covers =
        |a: Capabilities, b: Capabilities| (a.pull || !b.pull) && (a.resolve || !b.resolve);
    let mut out: Vec<Endpoint> = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let repeated = out
            .iter()
            .any(|e| e.base == endpoint.base && covers(e.capabilities, endpoint.capabilities));
        if repeated {
            tracing::debug!(url = %endpoint.base, source = %endpoint.source, "endpoint listed twice, skipped");
        } else {
            out.push(endpoint);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CONFIG_TOML;
    use crate::registry::Credentials;
    use rstest::rstest;
    use std::time::Duration;
    use tempfile::TempDir;
    use url::Url;

    const PASSWORD: &str = "merge-test-password";
    const DOCKER_PASSWORD: &str = "docker-json-test-password";

    /// A scratch directory with files for one test.
    struct Setup {
        dir: TempDir,
        sources: Sources,
    }

    impl Setup {
        fn new() -> Self {
            let dir = TempDir::new().unwrap();
            let docker = dir.path().join("config.json");
            std::fs::write(&docker, "{}").unwrap();
            let config = dir.path().join("config.toml");
            std::fs::write(&config, "version = 2\n").unwrap();
            let sources = Sources {
                config_toml: Some(config),
                docker_config: Some(docker),
                ..Sources::default()
            };
            Setup { dir, sources }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn config_toml(mut self, text: &str) -> Self {
            std::fs::write(self.path("config.toml"), text).unwrap();
            self.sources.config_toml = Some(self.path("config.toml"));
            self
        }

        fn docker_json(self, text: &str) -> Self {
            std::fs::write(self.path("config.json"), text).unwrap();
            self
        }

        /// Writes `<root>/<host>/hosts.toml`.
        fn hosts_toml(self, root: &str, host: &str, text: &str) -> Self {
            let dir = self.path(root).join(host);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("hosts.toml"), text).unwrap();
            self
        }

        fn hosts_dir(mut self, root: &str) -> Self {
            self.sources.hosts_dirs.push(self.path(root));
            self
        }

        fn mirror(mut self, host: &str, url: &str) -> Self {
            self.sources
                .mirrors
                .push((host.to_string(), Url::parse(url).unwrap()));
            self
        }

        fn load(&self) -> Config {
            Config::load(&self.sources).unwrap()
        }
    }

    fn bases(endpoints: &[Endpoint]) -> Vec<&str> {
        endpoints.iter().map(|e| e.base.as_str()).collect()
    }

    fn kinds(endpoints: &[Endpoint]) -> Vec<Option<&str>> {
        endpoints
            .iter()
            .map(|e| e.credentials.as_ref().map(Credentials::kind))
            .collect()
    }

    #[test]
    fn mirror_flags_come_first_in_order() {
        let setup = Setup::new()
            .config_toml("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://legacy.example\"]\n")
            .mirror("*", "https://all.example")
            .mirror("quay.io", "https://quay-only.example")
            .mirror("docker.io", "http://hub.example:5000/cache");
        let config = setup.load();
        let hub = config.endpoints("docker.io").unwrap();
        assert_eq!(
            bases(&hub),
            [
                "https://all.example/v2",
                "http://hub.example:5000/cache/v2",
                "https://legacy.example/v2",
                "https://registry-1.docker.io/v2",
            ]
        );
        assert_eq!(hub[0].source, "--mirror *=https://all.example/");
        assert!(hub[0].mirror && !hub[0].capabilities.push && hub[0].capabilities.resolve);
        let quay = config.endpoints("quay.io").unwrap();
        assert_eq!(
            bases(&quay),
            [
                "https://all.example/v2",
                "https://quay-only.example/v2",
                "https://quay.io/v2"
            ]
        );
    }

    #[test]
    fn a_mirror_flag_naming_the_upstream_is_not_repeated() {
        let config = Setup::new()
            .mirror("docker.io", "https://registry-1.docker.io")
            .load();
        let hub = config.endpoints("docker.io").unwrap();
        assert_eq!(bases(&hub), ["https://registry-1.docker.io/v2"]);
        assert_eq!(
            hub[0].source,
            "--mirror docker.io=https://registry-1.docker.io/"
        );
        assert!(!hub[0].mirror);
    }

    #[test]
    fn config_path_roots_first_with_an_entry_wins() {
        let setup = Setup::new()
            .hosts_toml(
                "one",
                "_default",
                "[host.\"https://one-default.example\"]\n",
            )
            .hosts_toml("two", "r.io", "[host.\"https://two-exact.example\"]\n")
            .hosts_toml("two", "s.io", "[host.\"https://two-s.example\"]\n");
        let roots = format!(
            "{}:{}",
            setup.path("one").display(),
            setup.path("two").display()
        );
        let config = setup.config_toml(&format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = {roots:?}\n"
        ));
        let config = config.load();
        assert_eq!(config.hosts_dirs().len(), 2);
        // containerd's hostDirFromRoots: `_default` under the first root beats an exact
        // directory under the second.
        assert_eq!(
            bases(&config.endpoints("r.io").unwrap()),
            ["https://one-default.example/v2", "https://r.io/v2"]
        );
    }

    #[test]
    fn hosts_dir_flag_replaces_config_path_and_falls_back_to_legacy_mirrors() {
        let setup = Setup::new()
            .config_toml("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"*\"]\nendpoint = [\"https://legacy.example\"]\n")
            .hosts_toml("certs.d", "r.io", "server = \"https://r.io\"\n[host.\"https://hosts.example\"]\ncapabilities = [\"pull\"]\ndial_timeout = \"2s\"\n")
            .hosts_dir("certs.d");
        let config = setup.load();
        assert_eq!(config.hosts_dirs_source(), Some("--hosts-dir"));
        let r = config.endpoints("r.io").unwrap();
        assert_eq!(bases(&r), ["https://hosts.example/v2", "https://r.io/v2"]);
        assert_eq!(r[0].dial_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            bases(&config.endpoints("s.io").unwrap()),
            ["https://legacy.example/v2", "https://s.io/v2"]
        );
        let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("`--hosts-dir` replaces config_path, but the legacy mirrors")
        );
    }

    #[test]
    fn configs_auth_applies_to_hosts_toml_endpoints_by_their_host_and_tls_does_not() {
        let setup = Setup::new().hosts_toml(
            "certs.d",
            "docker.io",
            "[host.\"https://hub-mirror.example:8443\"]\n",
        );
        let roots = setup.path("certs.d").display().to_string();
        // Keep `setup` (and its directory) alive: hosts.toml is read at resolve time.
        let setup = setup.config_toml(&format!(
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = {roots:?}
[plugins."io.containerd.grpc.v1.cri".registry.configs."hub-mirror.example:8443".auth]
  username = "m"
  password = "{PASSWORD}"
[plugins."io.containerd.grpc.v1.cri".registry.configs."registry-1.docker.io".auth]
  identitytoken = "{PASSWORD}"
[plugins."io.containerd.grpc.v1.cri".registry.headers]
  X-Node = ["n1"]
"#
        ));
        let config = setup.load();
        let hub = config.endpoints("docker.io").unwrap();
        assert_eq!(
            bases(&hub),
            [
                "https://hub-mirror.example:8443/v2",
                "https://registry-1.docker.io/v2"
            ]
        );
        assert_eq!(kinds(&hub), [Some("basic"), Some("identitytoken")]);
        assert!(hub
            .iter()
            .all(|e| e.headers.contains(&("X-Node".into(), "n1".into()))));
        assert!(hub[0]
            .credentials_source
            .as_deref()
            .unwrap()
            .ends_with("registry.configs.\"hub-mirror.example:8443\".auth"));
    }

    #[test]
    fn legacy_tls_applies_to_flags_and_legacy_endpoints() {
        let config = Setup::new()
            .config_toml("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"m.example\".tls]\nca_file = \"/ca.pem\"\ninsecure_skip_verify = true\n")
            .mirror("*", "https://m.example")
            .load();
        let r = config.endpoints("r.io").unwrap();
        assert!(r[0].skip_verify && r[0].ca_files == [PathBuf::from("/ca.pem")]);
        assert!(!r[1].skip_verify && r[1].ca_files.is_empty());
    }

    #[test]
    fn docker_config_is_the_fallback() {
        let config = Setup::new()
            .config_toml(&format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"a.example\".auth]\nusername = \"containerd\"\npassword = \"{PASSWORD}\"\n"
            ))
            .docker_json(&format!(
                r#"{{"auths": {{"a.example": {{"username": "docker", "password": "{DOCKER_PASSWORD}"}},
                    "b.example": {{"username": "docker", "password": "{DOCKER_PASSWORD}"}},
                    "https://index.docker.io/v1/": {{"identitytoken": "{DOCKER_PASSWORD}"}}}}}}"#
            ))
            .mirror("*", "https://a.example")
            .mirror("*", "https://b.example")
            .mirror("*", "https://c.example")
            .load();
        let hub = config.endpoints("docker.io").unwrap();
        assert_eq!(
            kinds(&hub),
            [Some("basic"), Some("basic"), None, Some("identitytoken")]
        );
        let user = |e: &Endpoint| match &e.credentials {
            Some(Credentials::Basic { username, .. }) => username.clone(),
            _ => String::new(),
        };
        assert_eq!(user(&hub[0]), "containerd");
        assert_eq!(user(&hub[1]), "docker");
        assert!(hub[3]
            .credentials_source
            .as_deref()
            .unwrap()
            .ends_with("config.json: auths.\"https://index.docker.io/v1/\""));

        for text in [format!("{config:?}"), format!("{hub:?}")] {
            assert!(
                !text.contains(PASSWORD) && !text.contains(DOCKER_PASSWORD),
                "{text}"
            );
            assert!(text.contains("<redacted>"));
        }
    }

    #[test]
    fn hosts_toml_warnings_belong_to_the_registry_and_are_read_once() {
        let setup = Setup::new()
            .hosts_toml("certs.d", "r.io", "bogus = 1\n")
            .hosts_dir("certs.d");
        let config = setup.load();
        assert!(config.warnings().is_empty());
        let resolved = config.resolve("r.io").unwrap();
        assert_eq!(resolved.warnings.len(), 1);
        assert!(resolved.warnings[0]
            .to_string()
            .contains("`bogus` is not a hosts.toml setting"));
        let first = config.endpoints("r.io").unwrap();
        std::fs::remove_dir_all(setup.path("certs.d")).unwrap();
        assert_eq!(
            config.endpoints("r.io").unwrap(),
            first,
            "cached for the run"
        );
        assert_eq!(
            bases(&config.resolve("r.io").unwrap().endpoints),
            ["https://r.io/v2"]
        );
    }

    #[test]
    fn no_config_toml_at_all() {
        let mut setup = Setup::new();
        setup.sources.config_toml = None;
        // DEFAULT_CONFIG_TOML may or may not exist on this machine; either way this loads.
        let config = Config::load(&setup.sources);
        if Path::new(DEFAULT_CONFIG_TOML).exists() {
            return;
        }
        let config = config.unwrap();
        assert_eq!(config.config_toml(), None);
        assert_eq!(config.cri(), &CriSettings::default());
        assert_eq!(
            bases(&config.endpoints("docker.io").unwrap()),
            ["https://registry-1.docker.io/v2"]
        );
    }

    #[rstest]
    #[case::missing_config(Some("missing.toml"), None, "missing.toml: No such file")]
    #[case::missing_docker(None, Some("missing.json"), "missing.json: No such file")]
    fn explicit_files_must_exist(
        #[case] config: Option<&str>,
        #[case] docker: Option<&str>,
        #[case] message: &str,
    ) {
        let mut setup = Setup::new();
        if let Some(name) = config {
            setup.sources.config_toml = Some(setup.path(name));
        }
        if let Some(name) = docker {
            setup.sources.docker_config = Some(setup.path(name));
        }
        let err = Config::load(&setup.sources).unwrap_err().to_string();
        assert!(
            err.starts_with("reading ") && err.contains(message),
            "{err}"
        );
    }

    #[test]
    fn invalid_hosts_toml_is_an_error_at_resolve() {
        let setup = Setup::new()
            .hosts_toml("certs.d", "r.io", "capabilities = \"pull\"\n")
            .hosts_dir("certs.d");
        let config = setup.load();
        let err = config.endpoints("r.io").unwrap_err().to_string();
        assert!(
            err.contains("r.io/hosts.toml: `capabilities` must be an array of strings"),
            "{err}"
        );
    }
}
