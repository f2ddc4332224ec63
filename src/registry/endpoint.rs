//! One place a registry's content can be fetched from: a mirror or the upstream.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

/// What an endpoint may be asked to do, as in containerd's hosts.toml `capabilities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Resolve a tag to a digest. An endpoint without it is never asked for a tag.
    pub resolve: bool,
    /// Push content (never used by ctrpull, kept so `hosts` can show it).
    pub push: bool,
}

impl Capabilities {
    /// `pull`, `resolve` and `push`: containerd's default for a host entry and the upstream.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::ALL
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.pull, "pull"),
            (self.resolve, "resolve"),
            (self.push, "push"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// A secret string (password, token). Never printed: `Debug` and `Display` show
/// `<redacted>`; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for building a request. Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for one endpoint, from containerd's `registry.configs."<host>".auth`
/// or Docker's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (also what a base64 `auth` field decodes to). Sent
    /// as Basic auth when the registry asks for Basic, and as `grant_type=password`
    /// to a Bearer token server.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// An identity token (OAuth2 refresh token): sent to the token server as
    /// `grant_type=refresh_token`.
    IdentityToken(Secret),
}

impl Credentials {
    /// What kind of credentials these are, for display (`basic`, `identitytoken`).
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::Basic { .. } => "basic",
            Credentials::IdentityToken(_) => "identitytoken",
        }
    }
}

/// A registry endpoint with everything needed to talk to it.
///
/// `base` is the URL that `/<repo>/manifests/<ref>` and `/<repo>/blobs/<digest>` are
/// appended to: normally `<scheme>://<host>/v2`, or the configured path when the
/// hosts.toml entry sets `override_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, without a trailing slash.
    pub base: Url,
    /// What this endpoint may be asked to do.
    pub capabilities: Capabilities,
    /// Skip TLS certificate verification (hosts.toml `skip_verify`).
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files) trusted for this endpoint.
    pub ca_files: Vec<PathBuf>,
    /// Client certificate and key files (the key may be inside the certificate file).
    pub client_certs: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra request headers (hosts.toml `[header]`).
    pub headers: Vec<(String, String)>,
    /// True when this endpoint is a mirror of the image's registry rather than the
    /// registry itself: such requests carry `?ns=<registry>` as containerd sends them.
    pub mirror: bool,
    /// Where this endpoint came from, for messages (a file path, a flag, or "default").
    pub source: String,
    /// Credentials to answer auth challenges with; `None` means anonymous.
    pub credentials: Option<Credentials>,
    /// Where [`credentials`](Self::credentials) came from (file and key), for `ctrpull hosts`.
    pub credentials_source: Option<String>,
    /// Connect timeout for this endpoint (hosts.toml `dial_timeout`); `None` uses
    /// the client's default.
    pub dial_timeout: Option<Duration>,
}

impl Endpoint {
    /// An endpoint with containerd's defaults for `base`: all capabilities, no TLS
    /// settings, no extra headers.
    pub fn new(base: Url, mirror: bool, source: impl Into<String>) -> Self {
        Self {
            base,
            capabilities: Capabilities::ALL,
            skip_verify: false,
            ca_files: Vec::new(),
            client_certs: Vec::new(),
            headers: Vec::new(),
            mirror,
            source: source.into(),
            credentials: None,
            credentials_source: None,
            dial_timeout: None,
        }
    }

    /// `host[:port]` of the endpoint, for messages and health bookkeeping.
    pub fn authority(&self) -> String {
        authority(&self.base)
    }
}

/// `host[:port]` of a URL: how endpoints, auth caches and redirect checks name a host.
pub(crate) fn authority(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_string(),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base.as_str())
    }
}
