//! Registry auth from the `WWW-Authenticate` challenge: Basic, and the Bearer token
//! flow (anonymous, password, or identity token), cached per host and scope.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so token expiry follows paused time in tests.
use tokio::time::Instant;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

use super::Credentials;

/// Token lifetime when the token server does not say (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// `bearer` or `basic`, lower-cased.
    pub scheme: String,
    /// Parameters such as `realm`, `service`, `scope`.
    pub params: HashMap<String, String>,
}

/// Parses the first challenge of a `WWW-Authenticate` header:
/// `Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(serde::Deserialize)]
struct TokenReply {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// (host, scope).
type CacheKey = (String, String);
/// An `Authorization` value and when it expires (`None`: Basic, never).
type Cached = (String, Option<Instant>);

/// `client_id` sent to token servers, as the distribution token spec asks.
const CLIENT_ID: &str = "ctrpull";

/// `Authorization` values per (host, scope): Bearer tokens until they expire, and
/// Basic credentials for hosts that asked for Basic (sent up front from then on).
#[derive(Default)]
pub(crate) struct Auth {
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.cache.lock().map(|c| c.len()).unwrap_or_default();
        f.debug_struct("Auth")
            .field("cached", &entries)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// A cached, unexpired `Authorization` value for `host` and `scope`.
    pub fn cached(&self, host: &str, scope: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap();
        let (value, expires) = cache.get(&(host.to_string(), scope.to_string()))?;
        match expires {
            Some(expires) if Instant::now() >= *expires => None,
            _ => Some(value.clone()),
        }
    }

    /// Forgets what was cached for `host` and `scope` (the registry refused it).
    pub fn invalidate(&self, host: &str, scope: &str) {
        self.cache
            .lock()
            .unwrap()
            .remove(&(host.to_string(), scope.to_string()));
    }

    /// Answers `challenge` from `host` for `scope`, with `credentials` if any, and
    /// caches the result. Errors are human-readable and never contain a secret.
    pub async fn answer(
        &self,
        http: &reqwest::Client,
        host: &str,
        challenge: &Challenge,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<String, String> {
        let (value, expires) = match challenge.scheme.as_str() {
            "basic" => match credentials {
                Some(Credentials::Basic { username, password }) => {
                    (basic_header(username, password.expose()), None)
                }
                Some(Credentials::IdentityToken(_)) => {
                    return Err(format!(
                    "{host} asks for Basic auth, and only an identity token is configured for it"
                ))
                }
                None => {
                    return Err(format!(
                        "{host} asks for Basic auth and no credentials are configured for it"
                    ))
                }
            },
            "bearer" => {
                let (token, lifetime) = fetch_token(http, challenge, scope, credentials).await?;
                // Renew a little early so a token never expires between check and use
                // (at most half its life early, so a short-lived token is still used).
                let margin = Duration::from_secs(5).min(lifetime / 2);
                let expires = Instant::now() + lifetime - margin;
                (format!("Bearer {token}"), Some(expires))
            }
            other => return Err(format!("{host} asks for unsupported auth scheme {other:?}")),
        };
        self.cache.lock().unwrap().insert(
            (host.to_string(), scope.to_string()),
            (value.clone(), expires),
        );
        Ok(value)
    }
}

/// `Basic base64(user:password)`.
pub(crate) fn basic_header(username: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {encoded}")
}

/// The distribution token flow: with a password or identity token, POST an OAuth2
/// form to the realm (falling back to GET with Basic auth where the server does not
/// take the POST: 400, 401, 404, 405 — the old Docker token protocol); anonymously, GET.
async fn fetch_token(
    http: &reqwest::Client,
    challenge: &Challenge,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<(String, Duration), String> {
    let realm = challenge
        .params
        .get("realm")
        .ok_or("the Bearer challenge has no realm")?;
    let realm_url = url::Url::parse(realm).map_err(|e| format!("token realm {realm:?}: {e}"))?;
    let service = challenge.params.get("service").map(String::as_str);
    let post_form = |grant: &[(&str, &str)]| {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in grant {
            form.append_pair(k, v);
        }
        if let Some(service) = service {
            form.append_pair("service", service);
        }
        form.append_pair("scope", scope);
        form.append_pair("client_id", CLIENT_ID);
        form.finish()
    };
    let mut get_url = realm_url.clone();
    {
        let mut query = get_url.query_pairs_mut();
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        query.append_pair("scope", scope);
    }
    let response = match credentials {
        None => http.get(get_url).send().await,
        Some(Credentials::Basic { username, password }) => {
            let body = post_form(&[
                ("grant_type", "password"),
                ("username", username),
                ("password", password.expose()),
            ]);
            let posted = post(http, &realm_url, body).await.map_err(|e| token_error(realm, &e))?;
            if matches!(posted.status().as_u16(), 400 | 401 | 404 | 405) {
                tracing::debug!(realm, status = %posted.status(), "token POST not taken, trying GET");
                http.get(get_url)
                    .header(AUTHORIZATION, basic_header(username, password.expose()))
                    .send()
                    .await
            } else {
                Ok(posted)
            }
        }
        Some(Credentials::IdentityToken(token)) => {
            let body = post_form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", token.expose()),
                ("access_type", "offline"),
            ]);
            post(http, &realm_url, body).await
        }
    }
    .map_err(|e| token_error(realm, &e))?;
    let status = response.status();
    if !status.is_success() {
        let hint = match (status.as_u16(), credentials.is_some()) {
            (401 | 403, true) => " (the credentials were refused)",
            (401 | 403, false) => {
                " (pull access denied: the repository may not exist or may need credentials)"
            }
            _ => "",
        };
        return Err(format!("token request to {realm}: {status}{hint}"));
    }
    let reply: TokenReply = response
        .json()
        .await
        .map_err(|e| format!("token reply from {realm}: {e}"))?;
    let token = reply
        .token
        .or(reply.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("token reply from {realm} holds no token"))?;
    let lifetime = reply
        .expires_in
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

async fn post(
    http: &reqwest::Client,
    url: &url::Url,
    body: String,
) -> Result<reqwest::Response, reqwest::Error> {
    http.post(url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
}

/// A token request failure, without the URL's query (which may hold nothing secret,
/// but the form body might: it is never shown).
fn token_error(realm: &str, error: &reqwest::Error) -> String {
    format!(
        "token request to {realm}: {}",
        super::client::describe(error)
    )
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, Fake, Gate, TokenServer, REPO};
    use super::super::{media, Client, Endpoint, Secret};
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/alpine:pull");
    }

    #[test]
    fn parses_basic_and_unquoted() {
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge("Bearer realm=http://a/token, service=reg").unwrap();
        assert_eq!(c.params["realm"], "http://a/token");
        assert_eq!(c.params["service"], "reg");
        let c = parse_challenge(r#"Bearer realm="a\"b""#).unwrap();
        assert_eq!(c.params["realm"], "a\"b");
        assert!(parse_challenge("").is_none());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }

    const INDEX: &[u8] = br#"{"schemaVersion":2,"manifests":[]}"#;
    const SCOPE: &str = "repository:team/app:pull";

    /// A Bearer registry serving `latest` and one blob, with `server` behind `/token`;
    /// its endpoint carries `credentials`.
    async fn bearer(server: TokenServer, credentials: Option<Credentials>) -> (Fake, Endpoint) {
        let registry = Fake::start().await;
        registry.gate(Gate::Bearer(server));
        registry.manifest(REPO, "latest", media::OCI_INDEX, INDEX);
        let mut endpoint = registry.endpoint();
        endpoint.credentials = credentials;
        (registry, endpoint)
    }

    async fn pull_manifest(client: &Client, endpoint: &Endpoint) {
        let manifest = client
            .manifest(
                &fake::target(),
                "latest",
                None,
                std::slice::from_ref(endpoint),
            )
            .await
            .unwrap();
        assert_eq!(&manifest.bytes[..], INDEX);
    }

    #[tokio::test]
    async fn anonymous_token_by_get() {
        let (registry, endpoint) = bearer(TokenServer::default(), None).await;
        pull_manifest(&fake::client(), &endpoint).await;
        let tokens = registry.token_requests();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].method, "GET");
        assert_eq!(tokens[0].header("authorization"), None);
        let query = tokens[0].query_pairs();
        assert_eq!(query["scope"], SCOPE);
        assert_eq!(query["service"], "fake");
        let path = fake::manifest_path(REPO, "latest");
        let asked = registry.requests_to(&path);
        assert_eq!(asked.len(), 2, "the 401, then with the token");
        assert_eq!(
            asked[1].header("authorization"),
            Some("Bearer fake-token-1")
        );
    }

    #[tokio::test]
    async fn password_token_by_post_form() {
        let alice = fake::basic("alice", "hunter2");
        let server = TokenServer {
            credentials: Some(alice.clone()),
            ..TokenServer::default()
        };
        let (registry, endpoint) = bearer(server, Some(alice)).await;
        pull_manifest(&fake::client(), &endpoint).await;
        let tokens = registry.token_requests();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].method, "POST");
        assert_eq!(
            tokens[0].header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let form = tokens[0].form();
        assert_eq!(form["grant_type"], "password");
        assert_eq!(form["username"], "alice");
        assert_eq!(form["password"], "hunter2");
        assert_eq!(form["scope"], SCOPE);
        assert_eq!(form["service"], "fake");
        assert_eq!(form["client_id"], CLIENT_ID);
    }

    #[tokio::test]
    async fn password_falls_back_to_get_with_basic_when_post_is_not_taken() {
        for refused in [404, 405] {
            let alice = fake::basic("alice", "hunter2");
            let server = TokenServer {
                credentials: Some(alice.clone()),
                refuse_post: Some(refused),
                ..TokenServer::default()
            };
            let (registry, endpoint) = bearer(server, Some(alice)).await;
            pull_manifest(&fake::client(), &endpoint).await;
            let tokens = registry.token_requests();
            let methods: Vec<&str> = tokens.iter().map(|t| t.method.as_str()).collect();
            assert_eq!(methods, ["POST", "GET"], "POST refused with {refused}");
            assert_eq!(
                tokens[1].header("authorization"),
                Some(basic_header("alice", "hunter2").as_str())
            );
            assert_eq!(tokens[1].query_pairs()["scope"], SCOPE);
        }
    }

    #[tokio::test]
    async fn identity_token_by_post_refresh_grant() {
        let identity = Credentials::IdentityToken(Secret::new("refresh-me"));
        let server = TokenServer {
            credentials: Some(identity.clone()),
            ..TokenServer::default()
        };
        let (registry, endpoint) = bearer(server, Some(identity)).await;
        pull_manifest(&fake::client(), &endpoint).await;
        let tokens = registry.token_requests();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].method, "POST");
        let form = tokens[0].form();
        assert_eq!(form["grant_type"], "refresh_token");
        assert_eq!(form["refresh_token"], "refresh-me");
        assert_eq!(form["scope"], SCOPE);
        assert_eq!(tokens[0].header("authorization"), None);
    }

    #[tokio::test]
    async fn one_token_serves_many_requests() {
        let (registry, endpoint) = bearer(TokenServer::default(), None).await;
        let digest = registry.blob(REPO, b"layer");
        let client = fake::client();
        for _ in 0..5 {
            pull_manifest(&client, &endpoint).await;
            let blob = client
                .blob(
                    &fake::target(),
                    &digest,
                    0,
                    std::slice::from_ref(&endpoint),
                    None,
                )
                .await
                .unwrap();
            assert_eq!(&blob.response.bytes().await.unwrap()[..], b"layer");
        }
        assert_eq!(registry.token_requests().len(), 1);
        let challenged = registry
            .requests()
            .iter()
            .filter(|s| s.path != "/token" && s.header("authorization").is_none())
            .count();
        assert_eq!(
            challenged, 1,
            "only the first request goes without the token"
        );
    }

    /// A token living `expires_in` seconds is reused until `after` has passed, then
    /// renewed.
    async fn token_renewed_after(expires_in: u64, after: Duration) {
        let server = TokenServer {
            expires_in: Some(expires_in),
            ..TokenServer::default()
        };
        let (registry, endpoint) = bearer(server, None).await;
        let client = fake::client();
        pull_manifest(&client, &endpoint).await;
        pull_manifest(&client, &endpoint).await;
        assert_eq!(registry.token_requests().len(), 1);
        tokio::time::sleep(after).await;
        pull_manifest(&client, &endpoint).await;
        assert_eq!(registry.token_requests().len(), 2);
    }

    /// A token is reused until shortly before `expires_in`, then renewed (paused clock).
    #[tokio::test(start_paused = true)]
    async fn expired_token_is_renewed_in_paused_time() {
        fake::crawl_paused_clock();
        token_renewed_after(300, Duration::from_secs(296)).await;
    }

    #[tokio::test]
    async fn a_refused_token_is_renewed_exactly_once() {
        let (registry, endpoint) = bearer(TokenServer::default(), None).await;
        let client = fake::client();
        pull_manifest(&client, &endpoint).await;
        registry.revoke_tokens();
        pull_manifest(&client, &endpoint).await;
        assert_eq!(registry.token_requests().len(), 2);
        let path = fake::manifest_path(REPO, "latest");
        let asked: Vec<String> = registry
            .requests_to(&path)
            .iter()
            .map(|s| s.header("authorization").unwrap_or("-").to_string())
            .collect();
        assert_eq!(
            asked,
            [
                "-",
                "Bearer fake-token-1",
                "Bearer fake-token-1",
                "Bearer fake-token-2"
            ]
        );
    }
}
