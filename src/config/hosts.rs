//! hosts.toml directories: the ordered endpoints for one registry host.
//!
//! Follows containerd's `core/remotes/docker/config/hosts.go` (`ConfigureHosts`,
//! `HostDirFromRoot`, `parseHostsFile`) and `docs/hosts.md`, so that ctrpull contacts the
//! same hosts, in the same order, with the same TLS settings as containerd would:
//!
//! 1. The first of `<root>/<host>_<port>_`, `<root>/<host>:<port>` and `<root>/_default`
//!    that exists is *the* host directory; later candidates are never consulted, even when
//!    it has no hosts.toml. With several roots (CRI's colon-separated `config_path`), the
//!    first root that has any candidate wins, so `<first>/_default` beats
//!    `<second>/<host>` (CRI's `hostDirFromRoots`).
//! 2. Its hosts.toml gives `[host."<url>"]` entries in file order, then `server` (or, when
//!    absent, the registry's default upstream) last. Without a hosts.toml the directory is
//!    read in Docker's certificate layout (`*.crt`, `*.cert` + `*.key`) for the upstream.
//!
//! Where containerd is lax we are strict: a hosts.toml it cannot decode makes containerd log
//! an error and quietly drop to certificate files; here it is an [`Error`] naming the file,
//! the key and the reason.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::config::authority::{is_loopback, same_host, split_port};
use crate::config::{Error, Warning};
use crate::registry::{Capabilities, Endpoint};

mod certs;
mod file;

pub(crate) use crate::config::authority::api_root;
use certs::load_cert_files;

/// The file read from a host directory.
pub const HOSTS_FILE: &str = "hosts.toml";

/// The host directory used when no directory is named after the registry.
pub const DEFAULT_HOST_DIR: &str = "_default";

/// Docker Hub's API host, the upstream for images on `docker.io`.
pub const DOCKER_HUB_UPSTREAM: &str = "registry-1.docker.io";

/// Ordered endpoints for `registry` (as in `Reference::registry()`: "docker.io",
/// "127.0.0.1:5000").
///
/// Mirrors come first in hosts.toml order, the upstream (`server`) last. Without
/// `hosts_dir`, or when no host directory exists for `registry`, the result is
/// [`default_endpoint`] alone. `plain_http` is ctr's `--plain-http`: it only changes the
/// scheme of the implicit upstream, never of a URL written in hosts.toml. Warnings about
/// the hosts.toml (unknown keys) are logged; [`crate::config::Config`] collects them
/// instead.
pub fn endpoints(
    registry: &str,
    hosts_dir: Option<&Path>,
    plain_http: bool,
) -> Result<Vec<Endpoint>, Error> {
    let roots: Vec<PathBuf> = hosts_dir.map(Path::to_path_buf).into_iter().collect();
    let mut warnings = Vec::new();
    let found = lookup(registry, &roots, plain_http, &mut warnings)?;
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    match found {
        Some(endpoints) => Ok(endpoints),
        None => Ok(vec![default_endpoint(registry, plain_http)?]),
    }
}

/// The endpoints of the host directory for `registry` under the first of `roots` that
/// has one, or `None` when no root has any candidate directory.
pub(crate) fn lookup(
    registry: &str,
    roots: &[PathBuf],
    plain_http: bool,
    warnings: &mut Vec<Warning>,
) -> Result<Option<Vec<Endpoint>>, Error> {
    check_registry(registry)?;
    for root in roots {
        if let Some(dir) = find_host_dir(root, registry)? {
            let endpoints = load_host_dir(&dir, warnings)?
                .into_iter()
                .map(|entry| entry.into_endpoint(registry, plain_http))
                .collect::<Result<_, _>>()?;
            return Ok(Some(endpoints));
        }
    }
    Ok(None)
}

/// The endpoint containerd uses for `registry` when nothing is configured:
/// `https://registry-1.docker.io/v2` for `docker.io`, else `<scheme>://<registry>/v2`.
///
/// The scheme is https, or http with `plain_http` (never for Docker Hub). A loopback
/// registry (`localhost`, 127.0.0.0/8, `::1`) without `plain_http` gets https on port 443
/// or no port and http on any other port, with certificate checks off unless the port
/// is 80.
pub fn default_endpoint(registry: &str, plain_http: bool) -> Result<Endpoint, Error> {
    check_registry(registry)?;
    Entry::upstream("default".to_string()).into_endpoint(registry, plain_http)
}

/// The host directories containerd considers for `registry` under `root`, in order:
/// `<host>_<port>_` (when there is a port), `<host>:<port>`, then [`DEFAULT_HOST_DIR`].
pub fn host_directories(root: &Path, registry: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::with_capacity(3);
    // containerd's hostDirectory: the last ':' (index > 0) becomes '_' and a '_' is
    // appended, so `[::1]:5000` looks in `[::1]_5000_`.
    if let Some(i) = registry.rfind(':').filter(|&i| i > 0) {
        dirs.push(root.join(dir_name(&format!(
            "{}_{}_",
            &registry[..i],
            &registry[i + 1..]
        ))));
    }
    dirs.push(root.join(dir_name(registry)));
    dirs.push(root.join(DEFAULT_HOST_DIR));
    dirs
}

/// Windows has no ':' in file names; containerd drops it there (`config_windows.go`).
fn dir_name(name: &str) -> String {
    if cfg!(windows) {
        name.replace(':', "")
    } else {
        name.to_string()
    }
}

/// The registry becomes a path component and a URL host: refuse anything that could
/// step outside `hosts_dir`.
pub(crate) fn check_registry(registry: &str) -> Result<(), Error> {
    let reason = if registry.is_empty() {
        "it is empty"
    } else if registry == "." || registry == ".." {
        "it is a relative directory name"
    } else if registry.contains(['/', '\\', '\0']) {
        "it contains a path separator"
    } else {
        return Ok(());
    };
    Err(Error::InvalidRegistry {
        registry: registry.to_string(),
        reason: reason.to_string(),
    })
}

/// The first candidate that exists, as containerd's `HostDirFromRoot` (a plain `stat`).
fn find_host_dir(root: &Path, registry: &str) -> Result<Option<PathBuf>, Error> {
    for dir in host_directories(root, registry) {
        match std::fs::metadata(&dir) {
            Ok(_) => return Ok(Some(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Io { path: dir, source }),
        }
    }
    Ok(None)
}

/// One host as configured, before the registry's defaults are filled in.
#[derive(Debug)]
struct Entry {
    /// `None` for the registry's own upstream.
    url: Option<Url>,
    capabilities: Capabilities,
    skip_verify: Option<bool>,
    ca_files: Vec<PathBuf>,
    client_certs: Vec<(PathBuf, Option<PathBuf>)>,
    headers: Vec<(String, String)>,
    dial_timeout: Option<Duration>,
    source: String,
}

impl Entry {
    fn upstream(source: String) -> Self {
        Entry {
            url: None,
            capabilities: Capabilities::ALL,
            skip_verify: None,
            ca_files: Vec::new(),
            client_certs: Vec::new(),
            headers: Vec::new(),
            dial_timeout: None,
            source,
        }
    }

    fn into_endpoint(self, registry: &str, plain_http: bool) -> Result<Endpoint, Error> {
        let mut skip_verify = self.skip_verify.unwrap_or(false);
        let mut capabilities = self.capabilities;
        let url = match self.url {
            Some(url) => url,
            None => {
                // ConfigureHosts fills in the implicit upstream and gives it every
                // capability, whatever the top-level `capabilities` said.
                capabilities = Capabilities::ALL;
                let (scheme, host) = if registry == crate::reference::DEFAULT_REGISTRY {
                    ("https", DOCKER_HUB_UPSTREAM)
                } else if plain_http {
                    ("http", registry)
                } else if is_loopback(registry) {
                    let port = split_port(registry).1;
                    // containerd pairs http with skip_verify here so that its transport
                    // tries https first and falls back to http: the protocol on a local
                    // port is ambiguous, port 80 is not.
                    if port != Some("80") {
                        skip_verify = true;
                    }
                    match port {
                        None | Some("443") => ("https", registry),
                        Some(_) => ("http", registry),
                    }
                } else {
                    ("https", registry)
                };
                Url::parse(&format!("{scheme}://{host}/v2")).map_err(|e| {
                    Error::InvalidRegistry {
                        registry: registry.to_string(),
                        reason: e.to_string(),
                    }
                })?
            }
        };
        let mirror = !same_host(&url, registry);
        let mut endpoint = Endpoint::new(url, mirror, self.source);
        endpoint.capabilities = capabilities;
        endpoint.skip_verify = skip_verify;
        endpoint.ca_files = self.ca_files;
        endpoint.client_certs = self.client_certs;
        endpoint.headers = self.headers;
        endpoint.dial_timeout = self.dial_timeout;
        Ok(endpoint)
    }
}

/// The endpoints of `registry` from the text of a hosts.toml in `dir` (the parser
/// [`lookup`] uses, for the fuzz targets).
pub(crate) fn parse_hosts_toml(
    dir: &Path,
    text: &str,
    registry: &str,
    warnings: &mut Vec<Warning>,
) -> Result<Vec<Endpoint>, Error> {
    check_registry(registry)?;
    file::parse_hosts_file(dir, &dir.join(HOSTS_FILE), text, warnings)?
        .into_iter()
        .map(|entry| entry.into_endpoint(registry, false))
        .collect()
}

/// Reads a host directory: its hosts.toml, or Docker's certificate layout without one.
fn load_host_dir(dir: &Path, warnings: &mut Vec<Warning>) -> Result<Vec<Entry>, Error> {
    let path = dir.join(HOSTS_FILE);
    match std::fs::read_to_string(&path) {
        // containerd treats an empty hosts.toml as a missing one.
        Ok(text) if !text.is_empty() => file::parse_hosts_file(dir, &path, &text, warnings),
        Ok(_) => load_cert_files(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => load_cert_files(dir),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Why an HTTP header cannot be sent, if it cannot: names are RFC 9110 tokens, values
/// cannot hold control characters (line breaks, NUL, backspace…) other than tab.
/// The HTTP client's own rules decide, so what passes here is what it sends.
pub(crate) fn header_problem(name: &str, values: &[&str]) -> Option<&'static str> {
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        Some("not a valid HTTP header name")
    } else if values
        .iter()
        .any(|v| reqwest::header::HeaderValue::from_str(v).is_err())
    {
        Some("header values cannot contain control characters such as CR, LF or NUL")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use tempfile::TempDir;

    /// Writes `<root>/<dir>/hosts.toml` and returns the file's path.
    fn write_hosts(root: &Path, dir: &str, text: &str) -> PathBuf {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(HOSTS_FILE);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn bases(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.base.to_string()).collect()
    }

    const NO_CAPS: Capabilities = Capabilities {
        pull: false,
        resolve: false,
        push: false,
    };

    #[rstest]
    #[case::docker_hub("docker.io", false, "https://registry-1.docker.io/v2", false)]
    #[case::docker_hub_ignores_plain_http(
        "docker.io",
        true,
        "https://registry-1.docker.io/v2",
        false
    )]
    #[case::remote("quay.io", false, "https://quay.io/v2", false)]
    #[case::remote_plain_http("quay.io", true, "http://quay.io/v2", false)]
    #[case::remote_port("reg.example:5000", false, "https://reg.example:5000/v2", false)]
    #[case::localhost("localhost", false, "https://localhost/v2", true)]
    #[case::localhost_443("localhost:443", false, "https://localhost/v2", true)]
    #[case::localhost_5000("localhost:5000", false, "http://localhost:5000/v2", true)]
    #[case::localhost_80("localhost:80", false, "http://localhost/v2", false)]
    #[case::loopback_v4("127.0.0.1:5000", false, "http://127.0.0.1:5000/v2", true)]
    #[case::loopback_v4_other("127.1.2.3", false, "https://127.1.2.3/v2", true)]
    #[case::loopback_v6("[::1]:5000", false, "http://[::1]:5000/v2", true)]
    #[case::loopback_plain_http("127.0.0.1:5000", true, "http://127.0.0.1:5000/v2", false)]
    #[case::loopback_v6_no_port("[::1]", false, "https://[::1]/v2", false)]
    #[case::loopback_v4_mapped(
        "[::ffff:127.0.0.1]:5000",
        false,
        "http://[::ffff:7f00:1]:5000/v2",
        true
    )]
    #[case::not_loopback("10.0.0.1:5000", false, "https://10.0.0.1:5000/v2", false)]
    #[case::underscore_host("my_registry.local", false, "https://my_registry.local/v2", false)]
    fn default_upstream(
        #[case] registry: &str,
        #[case] plain_http: bool,
        #[case] base: &str,
        #[case] skip_verify: bool,
    ) {
        let eps = endpoints(registry, None, plain_http).unwrap();
        assert_eq!(bases(&eps), [base]);
        let ep = &eps[0];
        assert_eq!(ep.skip_verify, skip_verify);
        assert!(!ep.mirror, "{registry}: the upstream is not a mirror");
        assert_eq!(ep.capabilities, Capabilities::ALL);
        assert_eq!(ep.source, "default");
        assert_eq!(default_endpoint(registry, plain_http).unwrap(), *ep);
    }

    #[rstest]
    #[case::host_port_underscore(&["r_5000_", "r:5000", "_default"], "r_5000_")]
    #[case::host_port_colon(&["r:5000", "_default"], "r:5000")]
    #[case::default_dir(&["_default", "other"], "_default")]
    fn lookup_order(#[case] dirs: &[&str], #[case] chosen: &str) {
        let root = TempDir::new().unwrap();
        for dir in dirs {
            write_hosts(
                root.path(),
                dir,
                &format!(
                    "[host.\"https://{}.mirror\"]\n",
                    dir.replace([':', '_'], "x")
                ),
            );
        }
        let eps = endpoints("r:5000", Some(root.path()), false).unwrap();
        let expected = format!("https://{}.mirror/v2", chosen.replace([':', '_'], "x"));
        assert_eq!(eps[0].base.as_str(), expected);
        assert!(eps[0].source.starts_with(
            &root
                .path()
                .join(chosen)
                .join(HOSTS_FILE)
                .display()
                .to_string()
        ));
    }

    #[test]
    fn host_directories_candidates() {
        let root = Path::new("/etc/containerd/certs.d");
        let names = |r| -> Vec<String> {
            host_directories(root, r)
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names("docker.io"), ["docker.io", "_default"]);
        assert_eq!(names("r:5000"), ["r_5000_", "r:5000", "_default"]);
        assert_eq!(
            names("[::1]:5000"),
            ["[::1]_5000_", "[::1]:5000", "_default"]
        );
    }

    #[test]
    fn no_directory_gives_the_default() {
        let root = TempDir::new().unwrap();
        write_hosts(root.path(), "other.io", "server = \"https://x\"\n");
        let eps = endpoints("quay.io", Some(root.path()), false).unwrap();
        assert_eq!(bases(&eps), ["https://quay.io/v2"]);
        assert_eq!(eps[0].source, "default");
        // A hosts_dir that does not exist at all is not an error either.
        let missing = root.path().join("missing");
        assert_eq!(endpoints("quay.io", Some(&missing), false).unwrap(), eps);
    }

    #[test]
    fn directory_without_hosts_toml_stops_the_lookup_and_reads_certificates() {
        let root = TempDir::new().unwrap();
        write_hosts(root.path(), "_default", "[host.\"https://never\"]\n");
        let dir = root.path().join("r.io");
        std::fs::create_dir(&dir).unwrap();
        for f in [
            "b.crt",
            "a.crt",
            "client.cert",
            "client.key",
            "solo.cert",
            "x.txt",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        assert_eq!(bases(&eps), ["https://r.io/v2"]);
        assert_eq!(eps[0].ca_files, [dir.join("a.crt"), dir.join("b.crt")]);
        assert_eq!(
            eps[0].client_certs,
            [
                (dir.join("client.cert"), Some(dir.join("client.key"))),
                (dir.join("solo.cert"), None)
            ]
        );
        assert_eq!(
            eps[0].source,
            format!("{} (certificate files)", dir.display())
        );
    }

    #[test]
    fn empty_hosts_toml_is_a_missing_one() {
        let root = TempDir::new().unwrap();
        write_hosts(root.path(), "r.io", "");
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        assert_eq!(bases(&eps), ["https://r.io/v2"]);
    }

    #[test]
    fn hosts_in_file_order_then_server() {
        let root = TempDir::new().unwrap();
        let path = write_hosts(
            root.path(),
            "docker.io",
            r#"
server = "https://registry-1.docker.io"

[host."https://zeta.mirror"]
  capabilities = ["pull", "resolve"]
[host."http://alpha.mirror:5000"]
  capabilities = ["pull"]
[host."https://mid.mirror"]
[host."https://zeta.mirror".header]
  x-late = "still zeta"
"#,
        );
        let eps = endpoints("docker.io", Some(root.path()), false).unwrap();
        assert_eq!(
            bases(&eps),
            [
                "https://zeta.mirror/v2",
                "http://alpha.mirror:5000/v2",
                "https://mid.mirror/v2",
                "https://registry-1.docker.io/v2",
            ]
        );
        assert_eq!(
            eps.iter().map(|e| e.mirror).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(eps[0].headers, [("x-late".into(), "still zeta".into())]);
        let p = path.display();
        assert_eq!(
            eps[1].source,
            format!(r#"{p} [host."http://alpha.mirror:5000"]"#)
        );
        assert_eq!(eps[3].source, format!("{p} server"));
    }

    #[test]
    fn without_server_the_upstream_is_last_with_top_level_tls() {
        let root = TempDir::new().unwrap();
        let path = write_hosts(
            root.path(),
            "localhost:5000",
            r#"
capabilities = ["pull"]
ca = "upstream.crt"
skip_verify = false
[header]
  x-top = "1"
[host."https://m"]
"#,
        );
        let eps = endpoints("localhost:5000", Some(root.path()), false).unwrap();
        assert_eq!(bases(&eps), ["https://m/v2", "http://localhost:5000/v2"]);
        let up = &eps[1];
        // containerd fills in the implicit upstream's capabilities and, for a loopback
        // registry, its skip_verify; the top-level TLS files and headers stay.
        assert_eq!(up.capabilities, Capabilities::ALL);
        assert!(up.skip_verify);
        assert_eq!(
            up.ca_files,
            [root.path().join("localhost:5000/upstream.crt")]
        );
        assert_eq!(up.headers, [("x-top".into(), "1".into())]);
        assert!(!up.mirror);
        assert_eq!(up.source, format!("{} (default server)", path.display()));
    }

    #[test]
    fn server_takes_top_level_settings() {
        let root = TempDir::new().unwrap();
        write_hosts(
            root.path(),
            "quay.io",
            "server = \"mirror.corp:8443/quay\"\ncapabilities = [\"pull\"]\nskip_verify = true\n",
        );
        let eps = endpoints("quay.io", Some(root.path()), true).unwrap();
        // No scheme means https, even with plain_http (containerd only prefixes https).
        assert_eq!(bases(&eps), ["https://mirror.corp:8443/quay/v2"]);
        assert_eq!(
            eps[0].capabilities,
            Capabilities {
                pull: true,
                ..NO_CAPS
            }
        );
        assert!(eps[0].skip_verify);
        assert!(eps[0].mirror);
    }

    #[rstest]
    #[case::same_host("r.io", "https://r.io", false)]
    #[case::same_host_with_path("r.io", "https://r.io/other", false)]
    #[case::default_port_written("r.io", "https://r.io:443", false)]
    #[case::registry_default_port("r.io:443", "https://r.io", false)]
    #[case::other_port("r.io", "https://r.io:5000", true)]
    #[case::docker_hub_upstream("docker.io", "https://registry-1.docker.io", false)]
    #[case::docker_io_itself("docker.io", "https://docker.io", false)]
    #[case::other_host("docker.io", "https://mirror.gcr.io", true)]
    #[case::ipv6("[::1]:5000", "http://[::1]:5000", false)]
    #[case::ipv6_other_spelling("[::ffff:127.0.0.1]:5000", "http://[::ffff:7f00:1]:5000", false)]
    #[case::scheme_does_not_matter("r.io", "http://r.io", false)]
    #[case::http_on_443("r.io", "http://r.io:443", true)]
    #[case::case_insensitive("Reg.IO", "https://reg.io", false)]
    fn mirror_flag(#[case] registry: &str, #[case] url: &str, #[case] mirror: bool) {
        let root = TempDir::new().unwrap();
        let dir = host_directories(root.path(), registry).remove(0);
        let dir = dir.file_name().unwrap().to_str().unwrap();
        write_hosts(root.path(), dir, &format!("[host.\"{url}\"]\n"));
        let eps = endpoints(registry, Some(root.path()), false).unwrap();
        assert_eq!(eps[0].mirror, mirror, "{registry} vs {url}");
    }

    #[rstest]
    #[case::empty("")]
    #[case::parent("..")]
    #[case::slash("a/b")]
    fn invalid_registry(#[case] registry: &str) {
        let root = TempDir::new().unwrap();
        assert!(matches!(
            endpoints(registry, Some(root.path()), false),
            Err(Error::InvalidRegistry { .. })
        ));
    }

    #[test]
    fn invalid_hosts_toml_is_an_error_not_a_fallback() {
        let root = TempDir::new().unwrap();
        std::fs::write(root.path().join("r.io.crt"), "").unwrap();
        let path = write_hosts(root.path(), "r.io", "capabilities = [\"pul\"]\n");
        let err = endpoints("r.io", Some(root.path()), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: `capabilities`: unknown capability \"pul\" (expected pull, resolve, push or referrers)",
                path.display()
            )
        );
    }

    #[test]
    fn host_dir_that_is_a_file_is_an_error() {
        let root = TempDir::new().unwrap();
        std::fs::write(root.path().join("r.io"), "").unwrap();
        let err = endpoints("r.io", Some(root.path()), false).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
