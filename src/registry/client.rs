//! HTTP client for the registry API: per-endpoint TLS, auth challenges, redirects,
//! and failover across a registry's endpoints with health remembered for the run.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use url::Url;

use super::auth::{parse_challenge, Auth};
use super::health::Health;
use super::{Attempt, Attempts, Endpoint, Error};

/// How long establishing a TCP (and TLS) connection to an endpoint may take, unless
/// its hosts.toml sets `dial_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an endpoint may take to answer a request with its status line. A mirror
/// that accepts connections and never answers costs this, once per run.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response body may go without delivering a byte before the download
/// is abandoned and resumed elsewhere.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Total time one operation may spend waiting out 429/503 answers and backing off
/// between rounds over all endpoints.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);
/// Redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;
/// Rounds over all endpoints when failures look transient (5xx, 429).
const MAX_ROUNDS: usize = 4;

/// Settings of the registry client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connect timeout per endpoint; defaults to [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Time to the response status line; defaults to [`DEFAULT_RESPONSE_TIMEOUT`].
    pub response_timeout: Duration,
    /// Longest gap between body bytes; defaults to [`DEFAULT_READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// Waiting budget per operation; defaults to [`DEFAULT_RETRY_BUDGET`].
    pub retry_budget: Duration,
    /// `User-Agent` of every request.
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            retry_budget: DEFAULT_RETRY_BUDGET,
            user_agent: concat!("ctrpull/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// The repository a request is about.
#[derive(Debug, Clone)]
pub struct Target {
    /// The image's registry as named in the reference (`docker.io`, `127.0.0.1:5000`);
    /// sent to mirrors as `?ns=`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
}

/// Registry client, shared by every pull of a run: connections, tokens and endpoint
/// health are kept for the whole run.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    http: Mutex<HashMap<ClientKey, reqwest::Client>>,
    pub(super) auth: Auth,
    pub(super) health: Health,
}

/// Endpoints with their own TLS settings or dial timeout get their own HTTP client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct ClientKey {
    skip_verify: bool,
    ca_files: Vec<std::path::PathBuf>,
    client_certs: Vec<(std::path::PathBuf, Option<std::path::PathBuf>)>,
    dial_timeout: Option<Duration>,
}

/// One failed try, with what it says about the endpoint.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: Option<u16>,
    pub error: String,
    pub effect: Effect,
}

/// What a failure does to the endpoint's standing for the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing (404, auth refused, bad content): the endpoint works, it just could
    /// not serve this.
    None,
    /// Refused, timed out, 5xx: demoted for a cool-down.
    Demote,
    /// 429 or 503 with Retry-After: ask again after this long.
    Defer(Duration),
}

impl Failure {
    pub(crate) fn new(status: Option<u16>, error: impl Into<String>, effect: Effect) -> Self {
        Failure {
            status,
            error: error.into(),
            effect,
        }
    }

    /// A failure from a transport error.
    pub(crate) fn transport(error: &reqwest::Error) -> Self {
        let effect = if error.is_connect() || error.is_timeout() {
            Effect::Demote
        } else {
            Effect::None
        };
        Failure::new(None, describe(error), effect)
    }

    /// A failure from an error status; reads the registry's error body.
    pub(crate) async fn status(response: Response) -> Self {
        let status = response.status();
        let effect = match (status.as_u16(), retry_after(response.headers())) {
            (429, wait) => Effect::Defer(wait.unwrap_or(Duration::from_secs(1))),
            (503, Some(wait)) => Effect::Defer(wait),
            (500 | 502 | 503 | 504, _) => Effect::Demote,
            _ => Effect::None,
        };
        Failure::new(Some(status.as_u16()), status_error(response).await, effect)
    }

    fn is_transient(&self) -> bool {
        matches!(self.effect, Effect::Defer(_))
            || matches!(self.status, Some(500 | 502 | 503 | 504))
    }
}

impl Client {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let client = Self {
            config,
            http: Mutex::default(),
            auth: Auth::default(),
            health: Health::default(),
        };
        // Build the plain client now so a broken TLS backend fails early.
        client.client_for(ClientKey::default(), "default")?;
        Ok(client)
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Marks `endpoint` unwell for a cool-down (used when a body breaks off mid-way).
    pub fn demote(&self, endpoint: &Endpoint, reason: &str) {
        let cool_down = self.health.demote(endpoint.base.as_str(), reason);
        tracing::warn!(endpoint = %endpoint.base, ?cool_down, "endpoint demoted: {reason}");
    }

    fn http_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, Error> {
        let key = ClientKey {
            skip_verify: endpoint.skip_verify,
            ca_files: endpoint.ca_files.clone(),
            client_certs: endpoint.client_certs.clone(),
            dial_timeout: endpoint.dial_timeout,
        };
        self.client_for(key, &endpoint.source).map_err(|e| match e {
            Error::Tls { reason, .. } => Error::Tls {
                endpoint: endpoint.base.to_string(),
                source_of: endpoint.source.clone(),
                reason,
            },
            other => other,
        })
    }

    fn client_for(&self, key: ClientKey, source: &str) -> Result<reqwest::Client, Error> {
        if let Some(http) = self.http.lock().unwrap().get(&key) {
            return Ok(http.clone());
        }
        let tls_error = |reason: String| Error::Tls {
            endpoint: String::new(),
            source_of: source.to_string(),
            reason,
        };
        // Redirects are followed by hand (see `send`): auth is answered per host and
        // never carried to another host.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(key.dial_timeout.unwrap_or(self.config.connect_timeout))
            .read_timeout(self.config.read_timeout)
            .user_agent(self.config.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .danger_accept_invalid_certs(key.skip_verify);
        for ca in &key.ca_files {
            let pem = std::fs::read(ca)
                .map_err(|e| tls_error(format!("CA file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls_error(format!("CA file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(tls_error(format!(
                    "CA file {} holds no PEM certificate",
                    ca.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key_file)) = key.client_certs.first() {
            let mut pem = std::fs::read(cert)
                .map_err(|e| tls_error(format!("client certificate {}: {e}", cert.display())))?;
            if let Some(key_file) = key_file {
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key_file).map_err(|e| {
                        tls_error(format!("client key {}: {e}", key_file.display()))
                    })?,
                );
            }
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| tls_error(format!("client certificate {}: {e}", cert.display())))?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(Error::Client)?;
        self.http.lock().unwrap().insert(key, http.clone());
        Ok(http)
    }

    /// Sends a GET to `url` on `endpoint`: endpoint headers and auth on the
    /// endpoint's own host, challenges answered once, redirects followed by hand
    /// (Authorization and endpoint headers never go to another host; a foreign host's
    /// own challenge is answered anonymously), and a timeout on the status line.
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        target: &Target,
        url: &str,
        headers: HeaderMap,
    ) -> Result<Response, Failure> {
        let http = self
            .http_for(endpoint)
            .map_err(|e| Failure::new(None, e.to_string(), Effect::None))?;
        let scope = format!("repository:{}:pull", target.repository);
        let home = endpoint.authority();
        let mut current = Url::parse(url)
            .map_err(|e| Failure::new(None, format!("bad URL {url}: {e}"), Effect::None))?;
        let mut redirects = 0;
        // Set once a challenge was answered: with which credentials (None: anonymous).
        let mut answered: Option<Option<&super::Credentials>> = None;
        loop {
            let host = authority(&current);
            let at_home = host == home;
            let mut request = http.get(current.clone()).headers(headers.clone());
            if at_home {
                for (name, value) in &endpoint.headers {
                    request = request.header(name.as_str(), value.as_str());
                }
            }
            if let Some(value) = self.auth.cached(&host, &scope) {
                request = request.header(AUTHORIZATION, value);
            }
            let response = match tokio::time::timeout(self.config.response_timeout, request.send())
                .await
            {
                Err(_) => {
                    return Err(Failure::new(
                        None,
                        format!("no response within {:?}", self.config.response_timeout),
                        Effect::Demote,
                    ))
                }
                Ok(Err(e)) => {
                    let mut failure = Failure::transport(&e);
                    // A server that demands a client certificate we do not have
                    // closes the connection right after the TLS 1.3 handshake; the
                    // HTTP client only sees it closed. Say what is likely missing.
                    let closed_early = !e.is_connect() && !e.is_timeout() && e.is_request();
                    if closed_early
                        && current.scheme() == "https"
                        && endpoint.client_certs.is_empty()
                    {
                        failure.error.push_str(
                                " (if this registry requires a client certificate (mTLS), configure one: \
                                 hosts.toml `client`, or config.toml `tls.cert_file` and `key_file`)",
                            );
                    }
                    return Err(failure);
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_redirection() {
                let Some(location) = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                else {
                    return Ok(response);
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(Failure::new(
                        Some(status.as_u16()),
                        format!("more than {MAX_REDIRECTS} redirects (last to {location})"),
                        Effect::None,
                    ));
                }
                current = current.join(location).map_err(|e| {
                    Failure::new(
                        Some(status.as_u16()),
                        format!("bad redirect {location:?}: {e}"),
                        Effect::None,
                    )
                })?;
                tracing::debug!(from = url, to = %current, "following redirect");
                continue;
            }
            if status != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if let Some(used) = answered {
                self.auth.invalidate(&host, &scope);
                let error = match used {
                    Some(credentials) => format!(
                        "401 Unauthorized: {host} refused the configured {} credentials (from {})",
                        credentials.kind(),
                        endpoint.credentials_source.as_deref().unwrap_or("configuration")
                    ),
                    None => format!(
                        "401 Unauthorized: {host} refused anonymous access: the repository may not exist, or it needs \
                         credentials and none are configured for {host} (config.toml \
                         `configs.\"{host}\".auth`, or Docker's config.json)"
                    ),
                };
                return Err(Failure::new(Some(401), error, Effect::None));
            }
            let Some(challenge) = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
            else {
                return Ok(response);
            };
            let credentials = if at_home {
                endpoint.credentials.as_ref()
            } else {
                None
            };
            self.auth
                .answer(&http, &host, &challenge, &scope, credentials)
                .await
                .map_err(|e| Failure::new(Some(401), e, Effect::None))?;
            answered = Some(credentials);
        }
    }

    /// Tries `attempt` on the endpoints with `capability` (`pull` or `resolve`), healthy ones first in
    /// configured order (`avoid` last), until one succeeds. Transient failures (5xx,
    /// 429) earn further rounds with jittered backoff, honouring Retry-After, within
    /// the retry budget. Returns the value and the index of the endpoint that gave it.
    pub(crate) async fn failover<T, F, Fut>(
        &self,
        what: String,
        target: &Target,
        capability: &'static str,
        endpoints: &[Endpoint],
        avoid: Option<usize>,
        mut attempt: F,
    ) -> Result<(T, usize), Error>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, (String, Failure)>>,
    {
        let started = Instant::now();
        let names: Vec<String> = endpoints.iter().map(|e| e.base.to_string()).collect();
        let mut attempts = Vec::new();
        for round in 0..MAX_ROUNDS {
            let order: Vec<usize> = self
                .health
                .order(&names, avoid)
                .into_iter()
                .filter(|&i| match capability {
                    "resolve" => endpoints[i].capabilities.resolve,
                    _ => endpoints[i].capabilities.pull,
                })
                .collect();
            if order.is_empty() {
                return Err(Error::NoEndpoint {
                    registry: target.registry.clone(),
                    capability,
                });
            }
            let mut transient = false;
            let mut earliest: Option<Duration> = None;
            for i in order {
                if let Some(wait) = self.health.wait_for(&names[i]) {
                    earliest = Some(earliest.map_or(wait, |e| e.min(wait)));
                    transient = true;
                    continue;
                }
                match attempt(i).await {
                    Ok(value) => {
                        self.health.restore(&names[i]);
                        return Ok((value, i));
                    }
                    Err((url, failure)) => {
                        match failure.effect {
                            Effect::Demote => {
                                let cool_down = self.health.demote(&names[i], &failure.error);
                                tracing::warn!(%url, ?cool_down, "endpoint demoted: {}", failure.error);
                            }
                            Effect::Defer(wait) => {
                                self.health.defer(&names[i], wait);
                                earliest = Some(earliest.map_or(wait, |e| e.min(wait)));
                            }
                            Effect::None => {}
                        }
                        transient |= failure.is_transient();
                        tracing::debug!(%url, error = failure.error, "failed, trying the next endpoint");
                        attempts.push(Attempt {
                            url,
                            error: failure.error,
                            status: failure.status,
                        });
                    }
                }
            }
            if !transient || round + 1 == MAX_ROUNDS {
                break;
            }
            let backoff = Duration::from_millis(200 << round);
            let wait = earliest.unwrap_or(backoff).max(Duration::from_millis(50));
            let wait =
                wait + Duration::from_millis(rand::random_range(0..=wait.as_millis() as u64 / 4));
            if started.elapsed() + wait > self.config.retry_budget {
                tracing::debug!(?wait, "retry budget spent");
                break;
            }
            tracing::info!(
                ?wait,
                round = round + 1,
                "all endpoints failed transiently, retrying"
            );
            tokio::time::sleep(wait).await;
        }
        Err(exhausted(what, attempts, started.elapsed()))
    }
}

/// `host[:port]` of a URL, in the same form as [`Endpoint::authority`].
fn authority(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_string(),
    }
}

/// `Retry-After` as a duration: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn exhausted(what: String, attempts: Vec<Attempt>, elapsed: Duration) -> Error {
    let all_404 = !attempts.is_empty() && attempts.iter().all(|a| a.status == Some(404));
    let attempts = Attempts(attempts);
    if all_404 {
        Error::NotFound {
            what,
            attempts,
            elapsed,
        }
    } else {
        Error::Exhausted {
            what,
            attempts,
            elapsed,
        }
    }
}

/// `<base>/<repo>/<kind>/<object>`, plus `?ns=<registry>` on mirrors as containerd does.
pub(crate) fn object_url(endpoint: &Endpoint, target: &Target, kind: &str, object: &str) -> String {
    let base = endpoint.base.as_str().trim_end_matches('/');
    let mut url = format!("{base}/{}/{kind}/{object}", target.repository);
    if endpoint.mirror {
        url.push_str("?ns=");
        url.extend(url::form_urlencoded::byte_serialize(
            target.registry.as_bytes(),
        ));
    }
    url
}

/// `404 Not Found (MANIFEST_UNKNOWN: manifest unknown)` from a failed response.
async fn status_error(response: Response) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<RegistryError>,
    }
    #[derive(serde::Deserialize)]
    struct RegistryError {
        code: Option<String>,
        message: Option<String>,
    }
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let detail = serde_json::from_slice::<Errors>(&body[..body.len().min(64 << 10)])
        .ok()
        .map(|e| {
            e.errors
                .into_iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.code.unwrap_or_default(),
                        e.message.unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|d| !d.is_empty());
    match detail {
        Some(detail) => format!("{status} ({detail})"),
        None => status.to_string(),
    }
}

/// A reqwest error with its causes ("cannot connect: … Connection refused").
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else if error.is_body() || error.is_decode() {
        "reading the body failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        headers.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn mirrors_get_the_ns_parameter() {
        let target = Target {
            registry: "docker.io".into(),
            repository: "library/busybox".into(),
        };
        let mirror = Endpoint::new(Url::parse("http://m:5000/v2").unwrap(), true, "test");
        assert_eq!(
            object_url(&mirror, &target, "blobs", "sha256:ab"),
            "http://m:5000/v2/library/busybox/blobs/sha256:ab?ns=docker.io"
        );
        let upstream = Endpoint::new(
            Url::parse("https://registry-1.docker.io/v2").unwrap(),
            false,
            "test",
        );
        assert_eq!(
            object_url(&upstream, &target, "manifests", "latest"),
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
    }
}
