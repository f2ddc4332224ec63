//! HTTP client for the registry API: manifest resolve and blob fetch, trying the
//! endpoints of a registry in order.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use sha2::{Digest as _, Sha256, Sha512};

use super::auth::{parse_challenge, Tokens};
use super::media;
use super::{Attempt, Attempts, Endpoint, Error};

/// How long establishing a TCP (and TLS) connection to an endpoint may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest manifest or index accepted, as containerd caps it (4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Settings of the registry client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connect timeout per endpoint; defaults to [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// `User-Agent` of every request.
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
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

/// A manifest or index fetched and checked against its digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Media type, from `Content-Type` or the document's own `mediaType`.
    pub media_type: String,
    /// Digest of `bytes` (`sha256:…`).
    pub digest: String,
    /// The document, byte for byte as served.
    pub bytes: Bytes,
    /// Base URL of the endpoint that served it.
    pub endpoint: String,
}

/// A blob download in progress.
#[derive(Debug)]
pub struct Blob {
    /// The response whose body is the blob from `offset` on.
    pub response: Response,
    /// Index of the endpoint that answered, in the list passed in.
    pub endpoint: usize,
    /// The URL that answered.
    pub url: String,
}

/// Registry client, shared by every pull of a run: connections and tokens are reused.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    default_http: reqwest::Client,
    tls_http: Mutex<HashMap<TlsKey, reqwest::Client>>,
    tokens: Tokens,
}

/// Endpoints with their own TLS settings get their own HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    skip_verify: bool,
    ca_files: Vec<std::path::PathBuf>,
    client_certs: Vec<(std::path::PathBuf, Option<std::path::PathBuf>)>,
}

impl Client {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let default_http = Self::builder(&config).build().map_err(Error::Client)?;
        Ok(Self {
            config,
            default_http,
            tls_http: Mutex::default(),
            tokens: Tokens::default(),
        })
    }

    fn builder(config: &ClientConfig) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .pool_idle_timeout(Duration::from_secs(90))
    }

    fn http_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, Error> {
        if !endpoint.skip_verify && endpoint.ca_files.is_empty() && endpoint.client_certs.is_empty()
        {
            return Ok(self.default_http.clone());
        }
        let key = TlsKey {
            skip_verify: endpoint.skip_verify,
            ca_files: endpoint.ca_files.clone(),
            client_certs: endpoint.client_certs.clone(),
        };
        if let Some(http) = self.tls_http.lock().unwrap().get(&key) {
            return Ok(http.clone());
        }
        let tls_error = |reason: String| Error::Tls {
            endpoint: endpoint.base.to_string(),
            source_of: endpoint.source.clone(),
            reason,
        };
        let mut builder =
            Self::builder(&self.config).danger_accept_invalid_certs(endpoint.skip_verify);
        for ca in &endpoint.ca_files {
            let pem = std::fs::read(ca)
                .map_err(|e| tls_error(format!("CA file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls_error(format!("CA file {}: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = endpoint.client_certs.first() {
            let mut pem = std::fs::read(cert)
                .map_err(|e| tls_error(format!("client certificate {}: {e}", cert.display())))?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(
                    std::fs::read(key)
                        .map_err(|e| tls_error(format!("client key {}: {e}", key.display())))?,
                );
            }
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| tls_error(format!("client certificate {}: {e}", cert.display())))?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(Error::Client)?;
        self.tls_http.lock().unwrap().insert(key, http.clone());
        Ok(http)
    }

    /// Sends one request to `endpoint`, answering a Bearer challenge once.
    async fn send(
        &self,
        endpoint: &Endpoint,
        target: &Target,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, String> {
        let http = self.http_for(endpoint).map_err(|e| e.to_string())?;
        let scope = format!("repository:{}:pull", target.repository);
        let authority = endpoint.authority();
        let build = |token: Option<&str>| {
            let mut request = make(&http);
            for (name, value) in &endpoint.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            if let Some(token) = token {
                request = request.header(AUTHORIZATION, token);
            }
            request
        };
        let cached = self.tokens.cached(&authority, &scope);
        let response = build(cached.as_deref())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return Ok(response);
        };
        let token = self
            .tokens
            .authorize(&http, &authority, &challenge, &scope)
            .await?;
        build(Some(&token)).send().await.map_err(|e| describe(&e))
    }

    /// Fetches the manifest or index `object` (a tag or a digest) of `target`.
    ///
    /// A tag is only asked of endpoints with the `resolve` capability. The body is
    /// capped at [`MAX_MANIFEST_SIZE`], hashed, and checked against `expected` (for
    /// digest references and children of an index) or against the registry's
    /// `Docker-Content-Digest`. Endpoints are tried in order; any failure moves on.
    pub async fn manifest(
        &self,
        target: &Target,
        object: &str,
        expected: Option<&str>,
        endpoints: &[Endpoint],
    ) -> Result<Manifest, Error> {
        let by_digest = expected.is_some();
        let candidates: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| {
                if by_digest {
                    e.capabilities.pull
                } else {
                    e.capabilities.resolve
                }
            })
            .collect();
        if candidates.is_empty() {
            return Err(Error::NoEndpoint {
                registry: target.registry.clone(),
                capability: if by_digest { "pull" } else { "resolve" },
            });
        }
        let what = format!(
            "manifest {}/{}:{}",
            target.registry, target.repository, object
        );
        let started = Instant::now();
        let mut attempts = Vec::new();
        for endpoint in candidates {
            let url = object_url(endpoint, target, "manifests", object);
            match self.try_manifest(endpoint, target, &url, expected).await {
                Ok(mut manifest) => {
                    manifest.endpoint = endpoint.base.to_string();
                    return Ok(manifest);
                }
                Err((status, error)) => {
                    tracing::debug!(%url, error, "manifest request failed, trying next endpoint");
                    attempts.push(Attempt { url, error, status });
                }
            }
        }
        Err(exhausted(what, attempts, started.elapsed()))
    }

    async fn try_manifest(
        &self,
        endpoint: &Endpoint,
        target: &Target,
        url: &str,
        expected: Option<&str>,
    ) -> Result<Manifest, (Option<u16>, String)> {
        let response = self
            .send(endpoint, target, |http| {
                http.get(url).header(ACCEPT, media::MANIFEST_ACCEPT)
            })
            .await
            .map_err(|e| (None, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err((Some(status.as_u16()), status_error(response).await));
        }
        let fail = |e: String| (Some(status.as_u16()), e);
        if let Some(length) = response.content_length() {
            if length > MAX_MANIFEST_SIZE {
                return Err(fail(format!(
                    "manifest is {length} bytes, more than the {MAX_MANIFEST_SIZE} allowed"
                )));
            }
        }
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| fail(format!("reading manifest: {}", describe(&e))))?;
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_SIZE {
                return Err(fail(format!(
                    "manifest is larger than the {MAX_MANIFEST_SIZE} bytes allowed"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let bytes = body.freeze();
        let algorithm = expected
            .or(header_digest.as_deref())
            .and_then(|d| d.split_once(':'))
            .map(|(a, _)| a)
            .unwrap_or("sha256")
            .to_string();
        let algorithm = algorithm.as_str();
        let digest = digest_of(algorithm, &bytes).map_err(fail)?;
        if let Some(expected) = expected {
            if digest != expected {
                return Err(fail(format!(
                    "content has digest {digest}, expected {expected}"
                )));
            }
        } else if let Some(header) = header_digest.filter(|h| h.starts_with(algorithm)) {
            if header != digest {
                return Err(fail(format!(
                    "content has digest {digest}, but Docker-Content-Digest says {header}"
                )));
            }
        }
        let media_type = manifest_media_type(&header_type, &bytes).map_err(fail)?;
        Ok(Manifest {
            media_type,
            digest,
            bytes,
            endpoint: String::new(),
        })
    }

    /// Starts downloading blob `digest` from byte `offset`, trying endpoints in order
    /// beginning at `first` (wrapping around), so a retry after a failure can start
    /// with the endpoint after the one that failed.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &str,
        offset: u64,
        endpoints: &[Endpoint],
        first: usize,
    ) -> Result<Blob, Error> {
        let what = format!("blob {digest} of {}/{}", target.registry, target.repository);
        let started = Instant::now();
        let mut attempts = Vec::new();
        let count = endpoints.len();
        for index in (0..count).map(|i| (first + i) % count) {
            let endpoint = &endpoints[index];
            if !endpoint.capabilities.pull {
                continue;
            }
            let url = object_url(endpoint, target, "blobs", digest);
            let result = self
                .send(endpoint, target, |http| {
                    let request = http.get(&url);
                    if offset > 0 {
                        request.header(RANGE, format!("bytes={offset}-"))
                    } else {
                        request
                    }
                })
                .await;
            let (status, error) = match result {
                Ok(response) if offset > 0 && response.status() == StatusCode::PARTIAL_CONTENT => {
                    match range_start(response.headers()) {
                        Some(start) if start == offset => return Ok(Blob { response, endpoint: index, url }),
                        other => (
                            Some(206),
                            format!("asked for bytes from {offset}, the Content-Range starts at {other:?}"),
                        ),
                    }
                }
                Ok(response) if offset > 0 && response.status() == StatusCode::OK => (
                    Some(200),
                    "ignored the Range request needed to resume".to_string(),
                ),
                Ok(response) if response.status() == StatusCode::OK => {
                    return Ok(Blob { response, endpoint: index, url })
                }
                Ok(response) => (Some(response.status().as_u16()), status_error(response).await),
                Err(e) => (None, e),
            };
            tracing::debug!(%url, error, "blob request failed, trying next endpoint");
            attempts.push(Attempt { url, error, status });
        }
        if attempts.is_empty() {
            return Err(Error::NoEndpoint {
                registry: target.registry.clone(),
                capability: "pull",
            });
        }
        Err(exhausted(what, attempts, started.elapsed()))
    }
}

fn exhausted(what: String, attempts: Vec<Attempt>, elapsed: Duration) -> Error {
    let attempts_all_404 = !attempts.is_empty() && attempts.iter().all(|a| a.status == Some(404));
    let attempts = Attempts(attempts);
    if attempts_all_404 {
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
fn object_url(endpoint: &Endpoint, target: &Target, kind: &str, object: &str) -> String {
    let base = endpoint.base.as_str().trim_end_matches('/');
    let mut url = format!("{base}/{}/{kind}/{object}", target.repository);
    if endpoint.mirror {
        url.push_str("?ns=");
        url.push_str(
            &url::form_urlencoded::byte_serialize(target.registry.as_bytes()).collect::<String>(),
        );
    }
    url
}

/// The first byte position of a `Content-Range: bytes a-b/total` header.
fn range_start(headers: &HeaderMap<HeaderValue>) -> Option<u64> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split(['-', '/']).next()?.trim().parse().ok()
}

/// Hex digest of `bytes` with `algorithm`, in `algorithm:hex` form.
pub(crate) fn digest_of(algorithm: &str, bytes: &[u8]) -> Result<String, String> {
    match algorithm {
        "sha256" => Ok(format!("sha256:{}", hex::encode(Sha256::digest(bytes)))),
        "sha512" => Ok(format!("sha512:{}", hex::encode(Sha512::digest(bytes)))),
        other => Err(format!("unsupported digest algorithm {other:?}")),
    }
}

/// The media type of a manifest: the `Content-Type` header when it names a manifest
/// type, else the document's own `mediaType` field (some registries and static file
/// servers answer `application/json` or `application/octet-stream`).
fn manifest_media_type(header: &str, body: &[u8]) -> Result<String, String> {
    if media::kind(header).is_some() {
        return Ok(header.to_string());
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let media_type = match (probe.media_type, probe.schema_version) {
        (Some(media_type), _) => media_type,
        (None, Some(1)) => media::DOCKER_SCHEMA1[0].to_string(),
        // OCI allows an index or manifest without `mediaType`.
        (None, _) if probe.manifests.is_some() => media::OCI_INDEX.to_string(),
        (None, _) => media::OCI_MANIFEST.to_string(),
    };
    if media::DOCKER_SCHEMA1.contains(&media_type.as_str())
        || media::DOCKER_SCHEMA1.contains(&header)
    {
        return Err("Docker schema 1 manifests are not supported (push the image again with a current client)".into());
    }
    if media::kind(&media_type).is_none() {
        let shown = if header.is_empty() {
            media_type
        } else {
            header.to_string()
        };
        return Err(format!("unsupported manifest media type {shown:?}"));
    }
    Ok(media_type)
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

/// A reqwest error with its causes ("error sending request: connection refused").
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
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
    fn media_type_from_header_or_body() {
        assert_eq!(
            manifest_media_type(media::OCI_INDEX, b"{}").unwrap(),
            media::OCI_INDEX
        );
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            manifest_media_type("application/json", body).unwrap(),
            media::DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type("", br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            media::OCI_INDEX
        );
        let err = manifest_media_type("", br#"{"schemaVersion":1,"name":"x"}"#).unwrap_err();
        assert!(err.contains("schema 1"), "{err}");
        let err = manifest_media_type("text/html", b"<html>").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = manifest_media_type("", br#"{"mediaType":"application/x-unknown"}"#).unwrap_err();
        assert!(err.contains("application/x-unknown"), "{err}");
    }

    #[test]
    fn content_range_start() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/200"),
        );
        assert_eq!(range_start(&headers), Some(100));
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("bytes */200"),
        );
        assert_eq!(range_start(&headers), None);
    }

    #[test]
    fn digests() {
        assert_eq!(
            digest_of("sha256", b"").unwrap(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(digest_of("md5", b"").is_err());
    }
}
