//! hosts.toml directories: the ordered endpoints for one registry host.
//!
//! Follows containerd's `core/remotes/docker/config/hosts.go` (`ConfigureHosts`,
//! `HostDirFromRoot`, `parseHostsFile`) and `docs/hosts.md`, so that ctrpull contacts the
//! same hosts, in the same order, with the same TLS settings as containerd would:
//!
//! 1. The first of `<root>/<host>_<port>_`, `<root>/<host>:<port>` and `<root>/_default`
//!    that exists is *the* host directory; later candidates are never consulted, even when
//!    it has no hosts.toml.
//! 2. Its hosts.toml gives `[host."<url>"]` entries in file order, then `server` (or, when
//!    absent, the registry's default upstream) last. Without a hosts.toml the directory is
//!    read in Docker's certificate layout (`*.crt`, `*.cert` + `*.key`) for the upstream.
//!
//! Where containerd is lax we are strict: a hosts.toml it cannot decode makes containerd log
//! an error and quietly drop to certificate files; here it is an [`Error`] naming the file,
//! the key and the reason.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use toml::{Table, Value};
use url::Url;

use crate::registry::{Capabilities, Endpoint};

/// The file read from a host directory.
pub const HOSTS_FILE: &str = "hosts.toml";

/// The host directory used when no directory is named after the registry.
pub const DEFAULT_HOST_DIR: &str = "_default";

/// Docker Hub's API host, the upstream for images on `docker.io`.
pub const DOCKER_HUB_UPSTREAM: &str = "registry-1.docker.io";

/// Top-level keys of a hosts.toml; the upstream's settings sit next to `server`.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "host",
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
];

/// Keys of a `[host."<url>"]` table.
const HOST_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
    "dial_timeout",
];

/// Why the endpoints of a registry could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry name cannot name a host directory or a URL host.
    #[error("registry {registry:?} is not a usable host[:port]: {reason}")]
    InvalidRegistry {
        /// The registry as given.
        registry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host directory, hosts.toml or certificate file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// hosts.toml is not valid TOML.
    #[error("{}: invalid TOML: {source}", path.display())]
    Toml {
        /// The hosts.toml.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A key has a value of the wrong type.
    #[error("{}: `{key}` must be {expected}, found {found}", path.display())]
    WrongType {
        /// The hosts.toml.
        path: PathBuf,
        /// The key, dotted from the top of the file (`host."https://m".ca`).
        key: String,
        /// What the key accepts.
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
    },
    /// A `server` or `[host."<url>"]` URL is not an http(s) URL with a host.
    #[error("{}: `{key}`: invalid URL {url:?}: {reason}", path.display())]
    InvalidUrl {
        /// The hosts.toml.
        path: PathBuf,
        /// The key holding the URL.
        key: String,
        /// The URL as written.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `capabilities` names something other than pull, resolve, push or referrers.
    #[error(
        "{}: `{key}`: unknown capability {capability:?} (expected pull, resolve, push or referrers)",
        path.display()
    )]
    UnknownCapability {
        /// The hosts.toml.
        path: PathBuf,
        /// The `capabilities` key.
        key: String,
        /// The value not understood.
        capability: String,
    },
    /// A `client` entry given as an array is not a `[cert, key]` pair.
    #[error("{}: `{key}`: a client certificate pair must be [cert, key], found {len} element(s)", path.display())]
    InvalidClientPair {
        /// The hosts.toml.
        path: PathBuf,
        /// The `client` key.
        key: String,
        /// How many elements the array had.
        len: usize,
    },
    /// A `[header]` name or value cannot be sent in an HTTP request.
    #[error("{}: `{key}`: {reason}", path.display())]
    InvalidHeader {
        /// The hosts.toml.
        path: PathBuf,
        /// The header key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Ordered endpoints for `registry` (as in `Reference::registry()`: "docker.io",
/// "127.0.0.1:5000").
///
/// Mirrors come first in hosts.toml order, the upstream (`server`) last. Without
/// `hosts_dir`, or when no host directory exists for `registry`, the result is
/// [`default_endpoint`] alone. `plain_http` is ctr's `--plain-http`: it only changes the
/// scheme of the implicit upstream, never of a URL written in hosts.toml.
pub fn endpoints(
    registry: &str,
    hosts_dir: Option<&Path>,
    plain_http: bool,
) -> Result<Vec<Endpoint>, Error> {
    check_registry(registry)?;
    let dir = match hosts_dir {
        Some(root) => find_host_dir(root, registry)?,
        None => None,
    };
    let entries = match dir {
        Some(dir) => load_host_dir(&dir)?,
        None => vec![Entry::upstream("default".to_string())],
    };
    entries
        .into_iter()
        .map(|entry| entry.into_endpoint(registry, plain_http))
        .collect()
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
fn check_registry(registry: &str) -> Result<(), Error> {
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
        Ok(endpoint)
    }
}

/// Whether `url` is the registry itself rather than a mirror (containerd's `isProxy`,
/// which decides whether requests carry `?ns=<registry>`).
///
/// containerd compares the `host[:port]` strings as written; we compare what they mean, so
/// that `https://r:443` is not a mirror of `r` and `[::ffff:127.0.0.1]` equals
/// `[::ffff:7f00:1]` (which is how `Url` writes it).
fn same_host(url: &Url, registry: &str) -> bool {
    if registry == crate::reference::DEFAULT_REGISTRY && url.host_str() == Some(DOCKER_HUB_UPSTREAM)
    {
        return true;
    }
    let (host, port) = split_port(registry);
    let port = match port {
        Some(port) => port.parse::<u16>().ok(),
        // The registry's own default port is the one of whatever scheme reaches it.
        None => match url.scheme() {
            "http" => Some(80),
            _ => Some(443),
        },
    };
    if port != url.port_or_known_default() {
        return false;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match (url.host(), bare.parse::<IpAddr>()) {
        (Some(url::Host::Ipv4(a)), Ok(IpAddr::V4(b))) => a == b,
        (Some(url::Host::Ipv6(a)), Ok(IpAddr::V6(b))) => a == b,
        (Some(url::Host::Domain(a)), Err(_)) => a.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// `host[:port]` → (host, port), keeping IPv6 brackets on the host.
fn split_port(registry: &str) -> (&str, Option<&str>) {
    let host_end = if registry.starts_with('[') {
        registry.find(']').map_or(registry.len(), |i| i + 1)
    } else {
        0
    };
    match registry[host_end..].rfind(':') {
        Some(i) => (
            &registry[..host_end + i],
            Some(&registry[host_end + i + 1..]),
        ),
        None => (registry, None),
    }
}

/// containerd's `IsLocalhost`: `localhost` or a loopback IP address.
fn is_loopback(registry: &str) -> bool {
    let (host, port) = split_port(registry);
    if host == "localhost" {
        return true;
    }
    // Go's net.SplitHostPort only removes the brackets when there is a port, so
    // containerd does not see a bare `[::1]` as loopback (https, certificates checked).
    let host = match port {
        Some(_) => host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host),
        None => host,
    };
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        // Go's IsLoopback also counts IPv4-mapped 127.0.0.0/8.
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Reads a host directory: its hosts.toml, or Docker's certificate layout without one.
fn load_host_dir(dir: &Path) -> Result<Vec<Entry>, Error> {
    let path = dir.join(HOSTS_FILE);
    match std::fs::read_to_string(&path) {
        // containerd treats an empty hosts.toml as a missing one.
        Ok(text) if !text.is_empty() => parse_hosts_file(dir, &path, &text),
        Ok(_) => load_cert_files(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => load_cert_files(dir),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Docker's `certs.d` layout: `*.crt` are CAs, `*.cert` client certificates with the key
/// in the matching `*.key` (or inside the `.cert` when there is none), for the upstream.
fn load_cert_files(dir: &Path) -> Result<Vec<Entry>, Error> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut names = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(read) => {
            for entry in read {
                let entry = entry.map_err(io_err(dir))?;
                let file_type = entry.file_type().map_err(io_err(&entry.path()))?;
                if !file_type.is_dir() {
                    names.push(entry.file_name());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    // Go's os.ReadDir returns names sorted; keep the same order for CAs and certificates.
    names.sort();

    let mut entry = Entry::upstream(format!("{} (certificate files)", dir.display()));
    for name in names {
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".crt") {
            entry.ca_files.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = match std::fs::metadata(&key) {
                Ok(_) => Some(key),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(source) => return Err(Error::Io { path: key, source }),
            };
            entry.client_certs.push((dir.join(name), key));
        }
    }
    Ok(vec![entry])
}

/// Where values come from, for error messages and relative paths.
struct File<'a> {
    dir: &'a Path,
    path: &'a Path,
}

impl File<'_> {
    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> Error {
        Error::WrongType {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
            found: found.type_str(),
        }
    }

    /// hosts.toml paths may be relative to the file's directory (`docs/hosts.md`).
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

fn parse_hosts_file(dir: &Path, path: &Path, text: &str) -> Result<Vec<Entry>, Error> {
    let file = File { dir, path };
    let table: Table = text.parse().map_err(|source| Error::Toml {
        path: path.to_path_buf(),
        source,
    })?;

    let mut entries = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| file.wrong_type("host", "a table", hosts))?;
        // `toml` is built with `preserve_order`, so this is file order: the order in
        // which containerd tries the hosts.
        for (url, value) in hosts {
            let prefix = format!("host.{url:?}");
            let host = value
                .as_table()
                .ok_or_else(|| file.wrong_type(&prefix, "a table", value))?;
            let source = format!("{} [{prefix}]", path.display());
            entries.push(parse_entry(
                &file,
                Some(url),
                host,
                &prefix,
                HOST_KEYS,
                source,
            )?);
        }
    }

    // The top level configures the upstream, tried last.
    let server = match table.get("server") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        Some(Value::String(_)) | None => None,
        Some(other) => return Err(file.wrong_type("server", "a string", other)),
    };
    let source = match server {
        Some(_) => format!("{} server", path.display()),
        None => format!("{} (default server)", path.display()),
    };
    entries.push(parse_entry(
        &file,
        server,
        &table,
        "",
        TOP_LEVEL_KEYS,
        source,
    )?);
    Ok(entries)
}

/// Parses one host's settings: a `[host."<url>"]` table, or the top level with `server`.
fn parse_entry(
    file: &File<'_>,
    url: Option<&str>,
    table: &Table,
    prefix: &str,
    known: &[&str],
    source: String,
) -> Result<Entry, Error> {
    let key = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    for name in table.keys() {
        if !known.contains(&name.as_str()) {
            tracing::warn!(
                file = %file.path.display(),
                key = %key(name),
                "unknown key in hosts.toml, ignored"
            );
        }
    }

    let bool_at = |name: &str| match table.get(name) {
        None => Ok(None),
        Some(Value::Boolean(b)) => Ok(Some(*b)),
        Some(other) => Err(file.wrong_type(&key(name), "a boolean", other)),
    };
    let override_path = bool_at("override_path")?.unwrap_or(false);

    let mut entry = Entry::upstream(source);
    if let Some(url) = url {
        let url_key = if prefix.is_empty() { "server" } else { prefix };
        entry.url = Some(parse_url(file, url_key, url, override_path)?);
    }
    entry.skip_verify = bool_at("skip_verify")?;

    if let Some(value) = table.get("capabilities") {
        let name = key("capabilities");
        let list = value
            .as_array()
            .ok_or_else(|| file.wrong_type(&name, "an array of strings", value))?;
        // An empty list means "all", as in containerd (`len(config.Capabilities) > 0`).
        if !list.is_empty() {
            entry.capabilities = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
        }
        for item in list {
            let capability = item
                .as_str()
                .ok_or_else(|| file.wrong_type(&name, "an array of strings", item))?;
            match capability.to_ascii_lowercase().as_str() {
                "pull" => entry.capabilities.pull = true,
                "resolve" => entry.capabilities.resolve = true,
                "push" => entry.capabilities.push = true,
                // containerd 2.x's referrers API; ctrpull never asks for referrers.
                "referrers" => {}
                _ => {
                    return Err(Error::UnknownCapability {
                        path: file.path.to_path_buf(),
                        key: name,
                        capability: capability.to_string(),
                    })
                }
            }
        }
    }

    if let Some(value) = table.get("ca") {
        let name = key("ca");
        let expected = "a string or an array of strings";
        entry.ca_files = match value {
            Value::String(s) => vec![file.resolve(s)],
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(|s| file.resolve(s))
                        .ok_or_else(|| file.wrong_type(&name, expected, item))
                })
                .collect::<Result<_, _>>()?,
            other => return Err(file.wrong_type(&name, expected, other)),
        };
    }

    if let Some(value) = table.get("client") {
        entry.client_certs = parse_client(file, &key("client"), value)?;
    }

    if let Some(value) = table.get("header") {
        let name = key("header");
        let headers = value
            .as_table()
            .ok_or_else(|| file.wrong_type(&name, "a table", value))?;
        for (header, value) in headers {
            let header_key = format!("{name}.{header}");
            let values = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        item.as_str().ok_or_else(|| {
                            file.wrong_type(&header_key, "a string or an array of strings", item)
                        })
                    })
                    .collect::<Result<_, _>>()?,
                other => {
                    return Err(file.wrong_type(
                        &header_key,
                        "a string or an array of strings",
                        other,
                    ))
                }
            };
            check_header(file, &header_key, header, &values)?;
            entry.headers.extend(
                values
                    .into_iter()
                    .map(|v| (header.to_string(), v.to_string())),
            );
        }
    }

    if let Some(value) = table.get("dial_timeout") {
        let name = key("dial_timeout");
        if !value.is_str() {
            return Err(file.wrong_type(&name, "a duration string", value));
        }
        tracing::warn!(
            file = %file.path.display(),
            key = %name,
            "dial_timeout is not supported by ctrpull yet, ignored"
        );
    }

    Ok(entry)
}

/// `client`: a path, an array of paths, or an array of `[cert, key]` pairs.
fn parse_client(
    file: &File<'_>,
    name: &str,
    value: &Value,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, Error> {
    let expected = "a string, an array of strings or an array of [cert, key] pairs";
    let items = match value {
        Value::String(s) => return Ok(vec![(file.resolve(s), None)]),
        Value::Array(items) => items,
        other => return Err(file.wrong_type(name, expected, other)),
    };
    let mut pairs = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => pairs.push((file.resolve(s), None)),
            Value::Array(pair) => {
                let [cert, key] = pair.as_slice() else {
                    return Err(Error::InvalidClientPair {
                        path: file.path.to_path_buf(),
                        key: name.to_string(),
                        len: pair.len(),
                    });
                };
                let (Some(cert), Some(key)) = (cert.as_str(), key.as_str()) else {
                    let bad = if cert.is_str() { key } else { cert };
                    return Err(file.wrong_type(name, expected, bad));
                };
                // The documented `["client.pem", ""]` means "the key is in the certificate
                // file". containerd turns "" into the hosts directory and then fails to
                // read it as a key; we read the intent instead.
                let key = (!key.is_empty()).then(|| file.resolve(key));
                pairs.push((file.resolve(cert), key));
            }
            other => return Err(file.wrong_type(name, expected, other)),
        }
    }
    Ok(pairs)
}

/// A `server` or `[host."<url>"]` URL, with containerd's scheme default and `/v2` rule.
fn parse_url(file: &File<'_>, key: &str, raw: &str, override_path: bool) -> Result<Url, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        path: file.path.to_path_buf(),
        key: key.to_string(),
        url: raw.to_string(),
        reason,
    };
    // containerd prefixes "https://" to anything not starting with "http"; looking for
    // "://" gives the same answer for real URLs without mangling a host named `http…`.
    let text = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let mut url = Url::parse(&text).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host".to_string()));
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        // containerd only keeps scheme, host and path; say so rather than drop it quietly.
        tracing::warn!(
            file = %file.path.display(),
            key,
            "hosts.toml URL has user info, a query or a fragment; only scheme, host and path are used"
        );
        // These cannot fail on an http(s) URL with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
    }

    // path.Clean, then `/v2` unless already there or `override_path` says the path is
    // the API root as written.
    let mut segments: Vec<&str> = Vec::new();
    for segment in url.path().split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    if !override_path && segments.last() != Some(&"v2") {
        segments.push("v2");
    }
    let path = format!("/{}", segments.join("/"));
    url.set_path(&path);
    Ok(url)
}

/// Header names are RFC 9110 tokens; values cannot hold line breaks or NUL.
fn check_header(file: &File<'_>, key: &str, name: &str, values: &[&str]) -> Result<(), Error> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let reason = if name.is_empty() || !name.bytes().all(token) {
        "not a valid HTTP header name"
    } else if values
        .iter()
        .any(|v| v.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')))
    {
        "header values cannot contain CR, LF or NUL"
    } else {
        return Ok(());
    };
    Err(Error::InvalidHeader {
        path: file.path.to_path_buf(),
        key: key.to_string(),
        reason,
    })
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
    #[case::absent("", Capabilities::ALL)]
    #[case::empty_means_all("capabilities = []", Capabilities::ALL)]
    #[case::pull("capabilities = [\"pull\"]", Capabilities { pull: true, ..NO_CAPS })]
    #[case::pull_resolve("capabilities = [\"pull\", \"resolve\"]", Capabilities { pull: true, resolve: true, push: false })]
    #[case::case_insensitive("capabilities = [\"PULL\", \"Push\"]", Capabilities { pull: true, resolve: false, push: true })]
    #[case::referrers_only("capabilities = [\"referrers\"]", NO_CAPS)]
    fn capabilities(#[case] line: &str, #[case] expected: Capabilities) {
        let root = TempDir::new().unwrap();
        write_hosts(
            root.path(),
            "r.io",
            &format!("[host.\"https://m\"]\n{line}\n"),
        );
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        assert_eq!(eps[0].capabilities, expected);
        assert_eq!(eps[1].capabilities, Capabilities::ALL);
    }

    #[rstest]
    #[case::relative("ca = \"m.crt\"", &["r.io/m.crt"])]
    #[case::nested_relative("ca = \"certs/m.crt\"", &["r.io/certs/m.crt"])]
    #[case::absolute("ca = \"/etc/certs/m.pem\"", &["/etc/certs/m.pem"])]
    #[case::array("ca = [\"a.pem\", \"/abs/b.pem\"]", &["r.io/a.pem", "/abs/b.pem"])]
    fn ca_paths(#[case] line: &str, #[case] expected: &[&str]) {
        let root = TempDir::new().unwrap();
        write_hosts(
            root.path(),
            "r.io",
            &format!("[host.\"https://m\"]\n{line}\n"),
        );
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        let expected: Vec<PathBuf> = expected.iter().map(|p| root.path().join(p)).collect();
        assert_eq!(eps[0].ca_files, expected);
    }

    #[test]
    fn client_forms() {
        let root = TempDir::new().unwrap();
        write_hosts(
            root.path(),
            "r.io",
            r#"
[host."https://a"]
  client = "c.pem"
[host."https://b"]
  client = ["c1.pem", "/abs/c2.pem"]
[host."https://c"]
  client = [["c.cert", "c.key"], ["/abs/both.pem", ""]]
"#,
        );
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        let d = root.path().join("r.io");
        assert_eq!(eps[0].client_certs, [(d.join("c.pem"), None)]);
        assert_eq!(
            eps[1].client_certs,
            [(d.join("c1.pem"), None), ("/abs/c2.pem".into(), None)]
        );
        assert_eq!(
            eps[2].client_certs,
            [
                (d.join("c.cert"), Some(d.join("c.key"))),
                ("/abs/both.pem".into(), None)
            ]
        );
    }

    #[test]
    fn headers_keep_order_and_repeat_for_arrays() {
        let root = TempDir::new().unwrap();
        write_hosts(
            root.path(),
            "r.io",
            r#"
[host."https://m".header]
  X-Zed = "z"
  x-custom = ["a", "b"]
  authorization-hint = "h"
"#,
        );
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        let h: Vec<(&str, &str)> = eps[0]
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            h,
            [
                ("X-Zed", "z"),
                ("x-custom", "a"),
                ("x-custom", "b"),
                ("authorization-hint", "h")
            ]
        );
    }

    #[rstest]
    #[case::bare_host("https://m", false, "https://m/v2")]
    #[case::root_slash("https://m/", false, "https://m/v2")]
    #[case::has_v2("https://m/v2", false, "https://m/v2")]
    #[case::has_v2_slash("https://m/v2/", false, "https://m/v2")]
    #[case::prefix("https://m/quay", false, "https://m/quay/v2")]
    #[case::unclean("https://m//a/./b/../c/", false, "https://m/a/c/v2")]
    #[case::no_scheme("m:5000", false, "https://m:5000/v2")]
    #[case::http("http://m:5000", false, "http://m:5000/v2")]
    #[case::override_as_is("https://m/v2/upstream", true, "https://m/v2/upstream")]
    #[case::override_no_v2("https://m/api", true, "https://m/api")]
    #[case::override_root("https://m", true, "https://m/")]
    #[case::drops_query("https://m/p?x=1#f", false, "https://m/p/v2")]
    fn host_urls(#[case] url: &str, #[case] override_path: bool, #[case] base: &str) {
        let root = TempDir::new().unwrap();
        write_hosts(
            root.path(),
            "r.io",
            &format!("[host.\"{url}\"]\noverride_path = {override_path}\n"),
        );
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        assert_eq!(eps[0].base.as_str(), base);
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

    #[test]
    fn unknown_keys_and_dial_timeout_are_not_errors() {
        let root = TempDir::new().unwrap();
        write_hosts(
            root.path(),
            "r.io",
            "mirrors = 1\n[host.\"https://m\"]\nserver = \"x\"\ndial_timeout = \"1s\"\n",
        );
        let eps = endpoints("r.io", Some(root.path()), false).unwrap();
        assert_eq!(bases(&eps), ["https://m/v2", "https://r.io/v2"]);
    }

    #[rstest]
    #[case::bad_toml("[host.\"https://m\"\n", "invalid TOML")]
    #[case::duplicate_table("[host.\"https://m\"]\n[host.\"https://m\"]\n", "invalid TOML")]
    #[case::server_type("server = 1\n", "`server` must be a string, found integer")]
    #[case::host_not_table("host = \"https://m\"\n", "`host` must be a table, found string")]
    #[case::host_entry_not_table(
        "[host]\n\"https://m\" = true\n",
        r#"`host."https://m"` must be a table, found boolean"#
    )]
    #[case::capabilities_string(
        "[host.\"https://m\"]\ncapabilities = \"pull\"\n",
        r#"`host."https://m".capabilities` must be an array of strings, found string"#
    )]
    #[case::capability_not_string(
        "capabilities = [1]\n",
        "`capabilities` must be an array of strings, found integer"
    )]
    #[case::unknown_capability(
        "[host.\"https://m\"]\ncapabilities = [\"pull\", \"fetch\"]\n",
        r#"`host."https://m".capabilities`: unknown capability "fetch""#
    )]
    #[case::bad_url(
        "[host.\"https://\"]\n",
        r#"`host."https://"`: invalid URL "https://""#
    )]
    #[case::bad_port(
        "server = \"https://m:http\"\n",
        r#"`server`: invalid URL "https://m:http": invalid port number"#
    )]
    #[case::ftp_scheme("[host.\"ftp://m\"]\n", r#"scheme "ftp" is not http or https"#)]
    #[case::skip_verify_string(
        "skip_verify = \"yes\"\n",
        "`skip_verify` must be a boolean, found string"
    )]
    #[case::override_path_int(
        "[host.\"https://m\"]\noverride_path = 1\n",
        r#"`host."https://m".override_path` must be a boolean, found integer"#
    )]
    #[case::ca_int(
        "[host.\"https://m\"]\nca = 5\n",
        r#"`host."https://m".ca` must be a string or an array of strings, found integer"#
    )]
    #[case::ca_array_int(
        "ca = [\"a\", 5]\n",
        "`ca` must be a string or an array of strings, found integer"
    )]
    #[case::client_triple(
        "client = [[\"a\", \"b\", \"c\"]]\n",
        "`client`: a client certificate pair must be [cert, key], found 3 element(s)"
    )]
    #[case::client_table("client = {a = 1}\n", "`client` must be a string, an array of strings or an array of [cert, key] pairs, found table")]
    #[case::header_not_table("header = \"x\"\n", "`header` must be a table, found string")]
    #[case::header_int(
        "[header]\nx = 1\n",
        "`header.x` must be a string or an array of strings, found integer"
    )]
    #[case::header_bad_name(
        "[header]\n\"x y\" = \"1\"\n",
        "`header.x y`: not a valid HTTP header name"
    )]
    #[case::header_newline(
        "[header]\nx = \"a\\nb\"\n",
        "`header.x`: header values cannot contain CR, LF or NUL"
    )]
    #[case::dial_timeout_int(
        "dial_timeout = 5\n",
        "`dial_timeout` must be a duration string, found integer"
    )]
    fn invalid_files(#[case] text: &str, #[case] message: &str) {
        let root = TempDir::new().unwrap();
        let path = write_hosts(root.path(), "r.io", text);
        let err = endpoints("r.io", Some(root.path()), false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains(message), "{msg}");
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
    fn host_dir_that_is_a_file_is_an_error() {
        let root = TempDir::new().unwrap();
        std::fs::write(root.path().join("r.io"), "").unwrap();
        let err = endpoints("r.io", Some(root.path()), false).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
