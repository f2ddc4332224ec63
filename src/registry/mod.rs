//! Registry HTTP API v2 client: endpoints, auth, manifest resolve and blob fetch with
//! ordered failover across mirrors and endpoint health kept for the run.

mod auth;
mod blob;
mod client;
mod endpoint;
mod health;
mod manifest;
pub mod media;

use std::fmt;
use std::time::Duration;

pub(crate) use auth::parse_challenge;
pub use blob::{parse_content_range, Blob, ContentRange};
pub(crate) use client::describe;
pub(crate) use manifest::check_document;

pub use client::{
    Client, ClientConfig, Target, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_RETRY_BUDGET, MAX_REDIRECTS,
};
pub use endpoint::{Capabilities, Credentials, Endpoint, Secret};
pub use health::{DEFAULT_COOL_DOWN, MAX_COOL_DOWN};
pub use manifest::{Manifest, MAX_MANIFEST_SIZE};

/// One failed try against one endpoint, kept for the final error message.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The URL that was requested.
    pub url: String,
    /// What went wrong there.
    pub error: String,
    /// HTTP status, when the endpoint answered.
    pub status: Option<u16>,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.url, self.error)
    }
}

/// The attempts of one operation, printed one per line.
#[derive(Debug, Clone, Default)]
pub struct Attempts(pub Vec<Attempt>);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for attempt in &self.0 {
            write!(f, "\n  - {attempt}")?;
        }
        Ok(())
    }
}

/// Errors from talking to registries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No configured endpoint may be asked for this (e.g. none has `resolve`).
    #[error("no endpoint of {registry} may {capability} (check the hosts.toml capabilities)")]
    NoEndpoint {
        /// The image's registry.
        registry: String,
        /// The capability needed.
        capability: &'static str,
    },
    /// Every endpoint answered that the object does not exist.
    #[error("{what}: not found on any endpoint ({} tried in {:.1?}){attempts}", attempts.0.len(), elapsed)]
    NotFound {
        /// What was asked for.
        what: String,
        /// Each endpoint's answer.
        attempts: Attempts,
        /// Time spent on all attempts.
        elapsed: Duration,
    },
    /// Every endpoint failed.
    #[error("{what}: failed on every endpoint ({} attempts in {:.1?}){attempts}", attempts.0.len(), elapsed)]
    Exhausted {
        /// What was asked for.
        what: String,
        /// Each endpoint's failure.
        attempts: Attempts,
        /// Time spent on all attempts.
        elapsed: Duration,
    },
    /// A TLS setting of an endpoint could not be loaded.
    #[error("TLS settings of endpoint {endpoint} (from {source_of}): {reason}")]
    Tls {
        /// The endpoint URL.
        endpoint: String,
        /// Where the endpoint was configured.
        source_of: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Error {
    /// True when every endpoint answered a Range request with the whole blob.
    pub fn is_range_ignored(&self) -> bool {
        matches!(self, Error::Exhausted { attempts, .. }
            if !attempts.0.is_empty() && attempts.0.iter().all(|a| a.error == blob::RANGE_IGNORED))
    }

    /// True when every endpoint said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod hostile;
