//! Where to pull from: containerd's `config.toml`, hosts.toml directories, Docker's
//! `config.json` and command-line mirrors, merged into one [`Config`].
//!
//! [`Config::load`] reads every source once, from [`Sources`]; [`Config::endpoints`] then
//! gives, per registry, the ordered [`Endpoint`](crate::registry::Endpoint)s a pull tries,
//! with TLS settings and credentials attached. Invalid configuration is an [`Error`]
//! naming the file, the key and the reason, never a silent fallback; settings containerd
//! ignores or misreads are [`Warning`]s.
//!
//! # Layout
//!
//! - this file: what comes in ([`Sources`]) and goes out besides endpoints
//!   ([`CriSettings`], [`Warning`], [`Error`]).
//! - `merge` ([`Config`]): the order of sources and which wins.
//! - `containerd`: `config.toml` (versions 1–3, the CRI plugin's `registry` table and
//!   pull settings, and the misplaced keys operators copy from blog posts).
//! - [`hosts`]: hosts.toml directories (`config_path`, `--hosts-dir`).
//! - `docker`: Docker's `config.json`, the credentials fallback.
//! - `flags`: `--mirror HOST=URL`.
//! - `authority`, `duration`: `host[:port]` matching and Go duration strings.
//!
//! Data flows `Sources` → `containerd` + `docker` (parsed once at load) → `merge`, which
//! asks `hosts` for the registry's host directory and builds the endpoint list.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

mod authority;
mod containerd;
mod docker;
mod duration;
mod flags;
pub mod hosts;
mod merge;

pub(crate) use duration::format_go_duration;
pub use merge::{Config, Resolved};

/// Parses the text of a containerd config.toml as if read from `path`, collecting
/// warnings (the parser [`Config::load`] uses, for the fuzz targets).
pub(crate) fn parse_config_toml(
    path: &std::path::Path,
    text: &str,
    warnings: &mut Vec<Warning>,
) -> Result<(), Error> {
    containerd::parse(path, text, warnings).map(drop)
}

/// containerd's configuration file, read when [`Sources::config_toml`] is `None` and it
/// exists.
pub const DEFAULT_CONFIG_TOML: &str = "/etc/containerd/config.toml";

/// The `config_path` containerd 2.2+ uses on Linux when a config sets neither
/// `config_path` nor `mirrors` (applied here to version 3 files only).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";

/// containerd's `max_concurrent_downloads` when the CRI table does not set it.
pub const DEFAULT_MAX_CONCURRENT_DOWNLOADS: usize = 3;

/// containerd's `image_pull_progress_timeout` when the CRI table does not set it (5m since
/// 1.7.10; 1m in 1.7.0–1.7.9).
pub const DEFAULT_IMAGE_PULL_PROGRESS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Where configuration comes from; the CLI flags map onto this.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// containerd's config.toml (`--config`). `None` reads [`DEFAULT_CONFIG_TOML`] when it
    /// exists; a path given here must exist.
    pub config_toml: Option<PathBuf>,
    /// hosts.toml roots (`--hosts-dir`, repeatable), searched in order. When non-empty
    /// they replace config.toml's `config_path`.
    pub hosts_dirs: Vec<PathBuf>,
    /// Docker's config.json (`--docker-config`). `None` reads `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`, when it exists; a path given here must exist.
    pub docker_config: Option<PathBuf>,
    /// `--mirror HOST=URL`, in order; HOST `*` applies to every registry. They come before
    /// every endpoint from files.
    pub mirrors: Vec<(String, Url)>,
    /// Reach an implicit upstream over plain HTTP (as `ctr --plain-http`); URLs written in
    /// files keep their scheme.
    pub plain_http: bool,
}

/// A value from a configuration file, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// "file: key" it was read from.
    pub source: String,
}

/// The CRI plugin's pull settings found in config.toml; `None` when not set there
/// (containerd then uses [`DEFAULT_MAX_CONCURRENT_DOWNLOADS`] and
/// [`DEFAULT_IMAGE_PULL_PROGRESS_TIMEOUT`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriSettings {
    /// `max_concurrent_downloads`; 0 means no limit (containerd reads negative values
    /// the same way).
    pub max_concurrent_downloads: Option<Setting<usize>>,
    /// `image_pull_progress_timeout`; zero turns the timeout off.
    pub image_pull_progress_timeout: Option<Setting<Duration>>,
}

/// Something in the configuration that containerd ignores, misreads or does differently
/// from what it looks like, with what to do instead. Not an error: the pull goes ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file concerned; `None` for a command-line flag.
    pub file: Option<PathBuf>,
    /// The dotted key (`plugins."io.containerd.grpc.v1.cri".registry.configs."r".tracking`)
    /// or the flag concerned.
    pub key: String,
    /// What is wrong, as a sentence continuing the key ("is ignored by containerd: …").
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(f, "`{}` {}", self.key, self.message)
    }
}

/// Why configuration could not be read: which file, which key, what is wrong.
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
    /// A configuration file, host directory or certificate file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A config.toml or hosts.toml is not valid TOML.
    #[error("{}: invalid TOML: {source}{}", path.display(), hint.as_deref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column (boxed: it is large, and errors
        /// travel in every `Result` of this module).
        #[source]
        source: Box<toml::de::Error>,
        /// What the mistake probably is, when we recognise it.
        hint: Option<String>,
    },
    /// Docker's config.json is not valid JSON.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The config.json.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A key has a value of the wrong type.
    #[error("{}: `{key}` must be {expected}, found {found}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key, dotted from the top of the file (`host."https://m".ca`).
        key: String,
        /// What the key accepts.
        expected: &'static str,
        /// The TOML type found.
        found: &'static str,
    },
    /// An endpoint URL (hosts.toml `server` or `[host."<url>"]`, a legacy mirror
    /// `endpoint`) is not an http(s) URL with a host.
    #[error("{}: `{key}`: invalid URL {url:?}: {reason}", path.display())]
    InvalidUrl {
        /// The file.
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
        /// The file.
        path: PathBuf,
        /// The header key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value has the right type but cannot be used: a bad duration, base64 `auth`
    /// that does not decode, a certificate without its key.
    #[error("{}: `{key}`: {reason}", path.display())]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// What is wrong, and what containerd does with it. Never contains a secret.
        reason: String,
    },
    /// Two settings that containerd refuses to combine.
    #[error("{}: `{key}` cannot be set together with `{other}`: {reason}", path.display())]
    Conflict {
        /// The file.
        path: PathBuf,
        /// The first key.
        key: String,
        /// The key it conflicts with.
        other: String,
        /// What containerd does, and what to do instead.
        reason: String,
    },
    /// The config.toml `version` is not one containerd reads.
    #[error("{}: `version = {version}` is not supported: containerd reads config versions 1, 2 and 3", path.display())]
    UnsupportedVersion {
        /// The config.toml.
        path: PathBuf,
        /// The version found.
        version: i64,
    },
    /// A `--mirror HOST=URL` cannot be used.
    #[error("--mirror {host}={url}: {reason}")]
    InvalidMirror {
        /// The HOST part.
        host: String,
        /// The URL part.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}
