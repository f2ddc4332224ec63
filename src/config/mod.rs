//! containerd and Docker configuration: hosts.toml directories.
//!
//! [`hosts::endpoints`] turns a registry name and containerd's `config_path` directory into
//! the ordered [`Endpoint`](crate::registry::Endpoint)s a pull tries. Invalid configuration
//! is an [`Error`] naming the file, the key and the reason, never a silent fallback.

use std::io;
use std::path::PathBuf;

pub mod hosts;

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
