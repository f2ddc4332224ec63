//! Anonymous Bearer token auth from the `WWW-Authenticate` challenge, tokens cached
//! per endpoint and scope until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Bearer tokens per (endpoint, scope).
#[derive(Default, Debug)]
pub(crate) struct Tokens {
    cache: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Tokens {
    /// A cached, unexpired `Authorization` value.
    pub fn cached(&self, authority: &str, scope: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap();
        cache
            .get(&(authority.to_string(), scope.to_string()))
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(value, _)| value.clone())
    }

    /// Answers a challenge anonymously and caches the token. The error is a
    /// human-readable reason.
    pub async fn authorize(
        &self,
        http: &reqwest::Client,
        authority: &str,
        challenge: &Challenge,
        scope: &str,
    ) -> Result<String, String> {
        if challenge.scheme != "bearer" {
            return Err(format!(
                "the registry asks for {} authentication and no credentials are configured",
                challenge.scheme
            ));
        }
        let realm = challenge
            .params
            .get("realm")
            .ok_or("the Bearer challenge has no realm")?;
        let mut url = url::Url::parse(realm).map_err(|e| format!("token realm {realm:?}: {e}"))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let reply = http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("token request to {realm}: {e}"))?;
        if !reply.status().is_success() {
            return Err(format!(
                "token request to {realm}: {} (pull access denied, or the repository does not exist)",
                reply.status()
            ));
        }
        let reply: TokenReply = reply
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
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        // Renew a little early so a token never expires between check and use.
        let expires = Instant::now() + lifetime.saturating_sub(Duration::from_secs(5));
        let value = format!("Bearer {token}");
        self.cache.lock().unwrap().insert(
            (authority.to_string(), scope.to_string()),
            (value.clone(), expires),
        );
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
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
}
