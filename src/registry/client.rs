//! HTTP client for the registry API: per-endpoint TLS, auth challenges, redirects,
//! and failover across a registry's endpoints with health remembered for the run.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use url::Url;

use super::auth::{parse_challenge, Auth};
use super::endpoint::authority;
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
    /// Nothing (404, bad content): the endpoint works, it just could not serve this.
    None,
    /// Access refused after the challenge was answered: the endpoint works, but not
    /// for this repository with these credentials. It is asked last for this
    /// repository for the rest of the run.
    Refused,
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

    /// A failure from a transport error: the endpoint gave no HTTP answer at all
    /// (refused, timed out, closed the connection), which demotes it.
    pub(crate) fn transport(error: &reqwest::Error) -> Self {
        Failure::new(None, describe(error), Effect::Demote)
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

    /// Endpoint failures (demotions, Retry-After deferrals) seen in the run so far.
    pub fn failures(&self) -> u64 {
        self.health.failures()
    }

    /// True once `endpoint` has answered a Range request with the whole blob in this
    /// run: a part of a blob is better asked of another endpoint, or not at all.
    pub fn ignores_ranges(&self, endpoint: &Endpoint) -> bool {
        self.health.ignores_ranges(endpoint.base.as_str())
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
        // Hosts whose challenge was answered in this request, with which credentials
        // (None: anonymously): a second 401 from the same host is final.
        let mut answered: HashMap<String, Option<&super::Credentials>> = HashMap::new();
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
                if !matches!(current.scheme(), "http" | "https") {
                    return Err(Failure::new(
                        Some(status.as_u16()),
                        format!("redirect to {current}, which is not an http(s) URL"),
                        Effect::None,
                    ));
                }
                tracing::debug!(from = url, to = %current, "following redirect");
                continue;
            }
            if status != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if let Some(used) = answered.get(&host).copied() {
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
                return Err(Failure::new(Some(401), error, Effect::Refused));
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
            answered.insert(host, credentials);
        }
    }

    /// Tries `attempt` on the endpoints with `capability` (`pull` or `resolve`), healthy ones first in
    /// configured order (`avoid` last), until one succeeds. Transient failures (5xx,
    /// 429) earn further rounds with jittered backoff, honouring Retry-After, within
    /// the retry budget. Returns the value, the index of the endpoint that gave it and
    /// the attempts that failed before it (each one a failover to the next endpoint).
    pub(crate) async fn failover<T, F, Fut>(
        &self,
        what: String,
        target: &Target,
        capability: &'static str,
        endpoints: &[Endpoint],
        avoid: Option<usize>,
        mut attempt: F,
    ) -> Result<(T, usize, Vec<Attempt>), Error>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, (String, Failure)>>,
    {
        let started = tokio::time::Instant::now();
        let names: Vec<String> = endpoints.iter().map(|e| e.base.to_string()).collect();
        let mut attempts = Vec::new();
        let repository = target.repository.as_str();
        for round in 0..MAX_ROUNDS {
            let mut order: Vec<usize> = self
                .health
                .order(&names, avoid)
                .into_iter()
                .filter(|&i| match capability {
                    "resolve" => endpoints[i].capabilities.resolve,
                    _ => endpoints[i].capabilities.pull,
                })
                .collect();
            // Those that refused this repository's credentials: a last resort, so
            // they cost a challenge once per run instead of once per blob.
            order.sort_by_key(|&i| self.health.refused(&names[i], repository));
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
                        self.health.served(&names[i], repository);
                        return Ok((value, i, attempts));
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
                            Effect::Refused => self.health.refuse(&names[i], repository),
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
    use super::super::fake::{self, Fake, Gate, Reply, TokenServer, REPO};
    use super::super::{Credentials, Secret};
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

    /// `endpoint` with Basic credentials and a header of its own (hosts.toml `[header]`).
    fn with_basic_and_header(mut endpoint: Endpoint, password: &str) -> Endpoint {
        endpoint.credentials = Some(fake::basic("alice", password));
        endpoint
            .headers
            .push(("X-Meta".into(), "endpoint-only".into()));
        endpoint
    }

    /// A mirror that refuses the configured credentials costs its challenge once per
    /// repository and run, not once per blob: later blobs of that repository go to
    /// the next endpoint first; another repository is asked of it again.
    #[tokio::test]
    async fn an_endpoint_refusing_the_credentials_is_asked_last_for_that_repository() {
        let (refusing, open) = (Fake::start().await, Fake::start().await);
        refusing.gate(Gate::Basic {
            username: "alice".into(),
            password: "right".into(),
        });
        let other = Target {
            registry: "fake.test".into(),
            repository: "team/other".into(),
        };
        let digests: Vec<String> = (0..3)
            .map(|i| {
                let data = format!("layer {i}");
                for repo in [REPO, other.repository.as_str()] {
                    refusing.blob(repo, data.as_bytes());
                    open.blob(repo, data.as_bytes());
                }
                fake::sha256(data.as_bytes())
            })
            .collect();
        let endpoints = [
            with_basic_and_header(refusing.endpoint(), "wrong"),
            open.endpoint(),
        ];
        let client = fake::client();
        for digest in &digests {
            let blob = client
                .blob(&fake::target(), digest, 0, &endpoints, None)
                .await
                .unwrap();
            assert_eq!(blob.endpoint, 1);
        }
        // The first blob: the challenge, then the refusal of the credentials.
        let asked = refusing.requests();
        assert_eq!(asked.len(), 2, "{asked:#?}");
        let blob = client
            .blob(&other, &digests[0], 0, &endpoints, None)
            .await
            .unwrap();
        assert_eq!(blob.endpoint, 1);
        let asked = refusing.requests();
        assert!(
            asked.len() > 2 && asked[2].path.contains("team/other"),
            "{asked:#?}"
        );
    }

    /// A Basic-auth registry whose blob GET answers with this redirect.
    async fn redirecting_home(location: impl FnOnce(&str) -> String) -> (Fake, String, String) {
        let home = Fake::start().await;
        home.gate(Gate::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        });
        let digest = fake::sha256(b"layer");
        let path = fake::blob_path(REPO, &digest);
        home.always(&path, Reply::Redirect(location(&path)));
        (home, digest, path)
    }

    #[tokio::test]
    async fn redirect_to_another_host_carries_no_auth_and_no_endpoint_headers() {
        let storage = Fake::start().await;
        let data = b"layer".repeat(1000);
        let digest = storage.blob(REPO, &data);
        let path = fake::blob_path(REPO, &digest);
        let home = Fake::start().await;
        home.gate(Gate::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        });
        home.always(&path, Reply::Redirect(storage.url(&path)));
        let endpoints = [with_basic_and_header(home.endpoint(), "hunter2")];
        let client = fake::client();
        // Twice: the second time Basic auth is cached and sent up front.
        for _ in 0..2 {
            let blob = client
                .blob(&fake::target(), &digest, 0, &endpoints, None)
                .await
                .unwrap();
            assert_eq!(blob.response.bytes().await.unwrap(), data);
        }
        let at_home = home.requests_to(&path);
        assert_eq!(at_home.len(), 3, "401, then two redirects: {at_home:#?}");
        for seen in &at_home[1..] {
            assert!(seen.header("authorization").unwrap().starts_with("Basic "));
            assert_eq!(seen.header("x-meta"), Some("endpoint-only"));
        }
        let foreign = storage.requests();
        assert_eq!(foreign.len(), 2, "{foreign:#?}");
        for seen in &foreign {
            assert_eq!(seen.header("authorization"), None, "{seen:#?}");
            assert_eq!(seen.header("x-meta"), None, "{seen:#?}");
        }
    }

    #[tokio::test]
    async fn a_foreign_hosts_basic_challenge_gets_none_of_our_credentials() {
        let storage = Fake::start().await;
        // The same user and password: still never sent to another host.
        storage.gate(Gate::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        });
        let (home, digest, _) =
            redirecting_home(|path| storage.url(&format!("/storage{path}"))).await;
        let endpoint = with_basic_and_header(home.endpoint(), "hunter2");
        let error = fake::client()
            .blob(&fake::target(), &digest, 0, &[endpoint], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(&storage.authority()), "{error}");
        let foreign = storage.requests();
        assert!(!foreign.is_empty());
        assert!(foreign.iter().all(|s| s.header("authorization").is_none()));
    }

    /// After the home host's Basic challenge, a redirect target's own Bearer
    /// challenge is answered too, anonymously: challenges are tracked per host.
    #[tokio::test]
    async fn a_foreign_hosts_bearer_challenge_is_answered_anonymously_after_home_auth() {
        let storage = Fake::start().await;
        storage.gate(Gate::Bearer(TokenServer::default()));
        let data = b"layer".repeat(10);
        let digest = storage.blob(REPO, &data);
        let path = fake::blob_path(REPO, &digest);
        let home = Fake::start().await;
        home.gate(Gate::Basic {
            username: "alice".into(),
            password: "hunter2".into(),
        });
        home.always(&path, Reply::Redirect(storage.url(&path)));
        let endpoint = with_basic_and_header(home.endpoint(), "hunter2");
        let blob = fake::client()
            .blob(&fake::target(), &digest, 0, &[endpoint], None)
            .await
            .unwrap();
        assert_eq!(blob.response.bytes().await.unwrap(), data);
        let tokens = storage.token_requests();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].method, "GET");
        assert!(storage.requests().iter().all(|s| !s
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic"))));
    }

    #[tokio::test]
    async fn redirect_on_the_same_host_keeps_auth_and_headers() {
        let (home, digest, path) = redirecting_home(|_| "/storage/layer".into()).await;
        home.put("/storage/layer", "application/octet-stream", "layer");
        let endpoint = with_basic_and_header(home.endpoint(), "hunter2");
        let blob = fake::client()
            .blob(&fake::target(), &digest, 0, &[endpoint], None)
            .await
            .unwrap();
        assert_eq!(blob.url, home.url(&path));
        assert_eq!(&blob.response.bytes().await.unwrap()[..], b"layer");
        let followed = home.requests_to("/storage/layer");
        assert_eq!(followed.len(), 1, "{followed:#?}");
        assert!(followed[0]
            .header("authorization")
            .unwrap()
            .starts_with("Basic "));
        assert_eq!(followed[0].header("x-meta"), Some("endpoint-only"));
    }

    #[tokio::test]
    async fn a_redirect_loop_stops_after_max_redirects() {
        let (home, digest, path) = redirecting_home(str::to_string).await;
        let endpoint = with_basic_and_header(home.endpoint(), "hunter2");
        let error = fake::client()
            .blob(&fake::target(), &digest, 0, &[endpoint], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("more than {MAX_REDIRECTS} redirects")),
            "{error}"
        );
        // The 401, the answered request, then MAX_REDIRECTS redirects followed.
        assert_eq!(home.requests_to(&path).len(), MAX_REDIRECTS + 2);
    }

    /// A `status` (429 or 503) with `Retry-After: <seconds>` and then the blob, on the
    /// only endpoint.
    async fn waits_out_retry_after(status: u16, seconds: u64) {
        let registry = Fake::start().await;
        let digest = registry.blob(REPO, b"layer");
        let path = fake::blob_path(REPO, &digest);
        registry.script(&path, [Reply::RetryAfter(status, seconds.to_string())]);
        let started = tokio::time::Instant::now();
        let blob = fake::client()
            .blob(&fake::target(), &digest, 0, &[registry.endpoint()], None)
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(seconds), "{waited:?}");
        assert_eq!(&blob.response.bytes().await.unwrap()[..], b"layer");
        assert_eq!(registry.requests_to(&path).len(), 2);
    }

    #[tokio::test]
    async fn retry_after_is_waited_out_on_the_only_endpoint() {
        // Real time, and so 1 s rather than 2: see the paused twin below.
        waits_out_retry_after(429, 1).await;
    }

    /// Retry-After deferrals, token expiry and the retry budget all run on tokio's
    /// clock, so a paused clock shows the 2 s wait exactly.
    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_out_in_paused_time() {
        fake::crawl_paused_clock();
        waits_out_retry_after(429, 2).await;
    }

    /// A 503 with Retry-After is a deferral too, not a demotion.
    #[tokio::test(start_paused = true)]
    async fn a_503_with_retry_after_is_waited_out_too() {
        fake::crawl_paused_clock();
        waits_out_retry_after(503, 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_beyond_the_budget_fails_without_waiting() {
        fake::crawl_paused_clock();
        let registry = Fake::start().await;
        let digest = registry.blob(REPO, b"layer");
        let path = fake::blob_path(REPO, &digest);
        registry.always(&path, Reply::RetryAfter(429, "60".into()));
        let started = tokio::time::Instant::now();
        let error = fake::client()
            .blob(&fake::target(), &digest, 0, &[registry.endpoint()], None)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let Error::Exhausted { attempts, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(attempts.0.len(), 1, "{error}");
        assert_eq!(attempts.0[0].status, Some(429));
        let text = error.to_string();
        assert!(
            text.contains("1 attempts")
                && text.contains(&registry.url(&path))
                && text.contains("429"),
            "{text}"
        );
        assert_eq!(registry.requests_to(&path).len(), 1);
    }

    #[tokio::test]
    async fn secrets_never_show_in_debug_or_errors() {
        const PASSWORD: &str = "pa55-SECRET-word";
        const IDENTITY: &str = "identity-SECRET-token";
        let encoded = auth_encoded("alice", PASSWORD);
        let client = fake::client();
        let mut texts = Vec::new();

        // Basic refused by the registry.
        let basic = Fake::start().await;
        basic.gate(Gate::Basic {
            username: "alice".into(),
            password: "another".into(),
        });
        let mut endpoint = basic.endpoint();
        endpoint.credentials = Some(fake::basic("alice", PASSWORD));
        let error = client
            .manifest(&fake::target(), "latest", None, &[endpoint.clone()])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("refused"), "{error}");
        texts.extend([
            format!("{error}"),
            format!("{error:?}"),
            format!("{endpoint:?}"),
        ]);

        // A password refused by a token server (POST, then GET).
        let bearer = Fake::start().await;
        bearer.gate(Gate::Bearer(TokenServer {
            credentials: Some(fake::basic("alice", "another")),
            ..TokenServer::default()
        }));
        let mut endpoint = bearer.endpoint();
        endpoint.credentials = Some(fake::basic("alice", PASSWORD));
        let error = client
            .manifest(&fake::target(), "latest", None, &[endpoint.clone()])
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("credentials were refused"),
            "{error}"
        );
        texts.extend([
            format!("{error}"),
            format!("{error:?}"),
            format!("{endpoint:?}"),
        ]);

        // An identity token that works: the token it buys stays out of Debug too.
        let identity = Fake::start().await;
        identity.gate(Gate::Bearer(TokenServer {
            credentials: Some(Credentials::IdentityToken(Secret::new(IDENTITY))),
            ..TokenServer::default()
        }));
        identity.manifest(
            REPO,
            "latest",
            super::super::media::OCI_INDEX,
            br#"{"manifests":[]}"#,
        );
        let mut endpoint = identity.endpoint();
        endpoint.credentials = Some(Credentials::IdentityToken(Secret::new(IDENTITY)));
        client
            .manifest(&fake::target(), "latest", None, &[endpoint.clone()])
            .await
            .unwrap();
        texts.extend([format!("{endpoint:?}"), format!("{client:?}")]);

        for text in texts {
            for secret in [PASSWORD, encoded.as_str(), IDENTITY, "fake-token-"] {
                assert!(!text.contains(secret), "{secret} shown in: {text}");
            }
        }
    }

    /// The base64 part of a Basic `Authorization` value.
    fn auth_encoded(username: &str, password: &str) -> String {
        let header = super::super::auth::basic_header(username, password);
        header.trim_start_matches("Basic ").to_string()
    }
}
