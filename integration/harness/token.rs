//! A Docker token server (the `realm` of distribution's `auth.token`) that records what
//! it was asked, for tests of the Bearer flow.
//!
//! Tokens are what distribution 2.8 verifies (`registry/auth/token/token.go`): a JWS
//! signed ES256 whose `x5c` header carries the signing certificate, which must chain to
//! the registry's `rootcertbundle` (here the test CA); `iss` must be the configured
//! issuer, `aud` the service, `nbf`/`exp` current (60 s leeway), and `access` must hold
//! `{type: repository, name, actions}` for what the request needs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use super::fake::{Request, Response, Server};
use super::tls::TestCa;
use super::unique;

/// How long issued tokens live (the `expires_in` of the answer).
pub const TOKEN_LIFETIME_SECS: u64 = 60;

/// Signs tokens for one issuer and service. Cheap to clone; registries started with
/// [`RegistryBuilder::token_auth`](super::RegistryBuilder::token_auth) keep one to
/// mint push tokens for the test's own uploads.
#[derive(Clone)]
pub struct Signer {
    issuer: String,
    service: String,
    x5c: String,
    key: Arc<EcdsaKeyPair>,
    root_pem: String,
}

impl Signer {
    /// The `iss` of every token: the registry's `auth.token.issuer`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of every token: the registry's `auth.token.service`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The certificate bundle the registry must trust (`auth.token.rootcertbundle`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A token for `subject` granting `actions` on each repository of `repos`.
    pub fn mint(&self, subject: &str, access: &[(String, Vec<String>)]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs();
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let access: Vec<_> = access
            .iter()
            .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + TOKEN_LIFETIME_SECS,
            "nbf": now,
            "iat": now,
            "jti": unique("jti"),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("ES256 signing");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// Whether a token request carried credentials, and whether they were right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: an anonymous token (with no access) was issued.
    Anonymous,
    /// The configured user's password, or the configured refresh token.
    Valid,
    /// Credentials that do not match: answered 401.
    Invalid,
}

/// One request the token server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `GET` (Basic auth or anonymous) or `POST` (OAuth2 form).
    pub method: String,
    /// The form's `grant_type` (`password`, `refresh_token`); `None` for GET.
    pub grant_type: Option<String>,
    /// The user name sent (form `username` or Basic auth).
    pub username: Option<String>,
    /// Whether credentials came and matched.
    pub credentials: Credentials,
    /// The `service` parameter.
    pub service: Option<String>,
    /// Every `scope` asked for.
    pub scopes: Vec<String>,
    /// The `client_id` parameter.
    pub client_id: Option<String>,
    /// The status answered.
    pub status: u16,
    /// The token issued, if any.
    pub token: Option<String>,
}

struct Accounts {
    username: String,
    password: String,
    refresh_token: String,
}

/// The token server: `http://127.0.0.1:PORT/token`, stopped when dropped.
///
/// - `GET /token?service=..&scope=..`: with Basic auth of the configured user a token
///   for the requested `pull` access; wrong credentials 401; none an anonymous token
///   with no access (as Docker Hub answers for a private repository).
/// - `POST /token` form: `grant_type=password` (username, password) or
///   `grant_type=refresh_token` (refresh_token); wrong ones 401; other grants 400.
///
/// Only `pull` is ever granted: tests push with [`Signer::mint`] tokens instead.
pub struct TokenServer {
    server: Server,
    signer: Signer,
    accounts: Arc<Accounts>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenServer {
    /// Starts a token server accepting `username`/`password` (and a generated refresh
    /// token), signing with a certificate issued by `ca`.
    pub fn start(ca: &TestCa, username: &str, password: &str) -> TokenServer {
        let (cert_der, key) = ca.signing_cert("ctrpull test token signer");
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.serialized_der(), &rng)
                .expect("load the signing key into ring");
        let signer = Signer {
            issuer: "ctrpull-test-issuer".into(),
            service: unique("ctrpull-test-registry"),
            x5c: STANDARD.encode(cert_der),
            key: Arc::new(key),
            root_pem: ca.ca_pem(),
        };
        let accounts = Arc::new(Accounts {
            username: username.into(),
            password: password.into(),
            refresh_token: unique("refresh-token"),
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (signer, accounts, log) = (signer.clone(), accounts.clone(), log.clone());
            Server::serve("token", move |request| {
                let (record, response) = answer(request, &signer, &accounts);
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(record);
                response
            })
        };
        TokenServer {
            server,
            signer,
            accounts,
            log,
        }
    }

    /// `http://127.0.0.1:PORT/token`: the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.addr())
    }

    /// The signer, for the registry's configuration and for minting push tokens.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The refresh token accepted by `grant_type=refresh_token` (an identity token).
    pub fn refresh_token(&self) -> &str {
        &self.accounts.refresh_token
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn answer(request: &Request, signer: &Signer, accounts: &Accounts) -> (TokenRequest, Response) {
    let params = if request.method == "POST" {
        request.form()
    } else {
        request.query()
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let mut record = TokenRequest {
        method: request.method.clone(),
        grant_type: None,
        username: None,
        credentials: Credentials::Anonymous,
        service: param("service"),
        scopes: scopes.clone(),
        client_id: param("client_id"),
        status: 200,
        token: None,
    };
    let error = |record: &mut TokenRequest, status: u16, code: &str, message: &str| {
        record.status = status;
        Response::json(
            status,
            &json!({"errors": [{"code": code, "message": message}], "error": code}),
        )
    };
    if request.path() != "/token" {
        let response = error(&mut record, 404, "NOT_FOUND", "no such endpoint");
        return (record, response);
    }
    match request.method.as_str() {
        "GET" => {
            if let Some((user, password)) = request.header("authorization").and_then(basic) {
                record.credentials = if user == accounts.username && password == accounts.password {
                    Credentials::Valid
                } else {
                    Credentials::Invalid
                };
                record.username = Some(user);
            }
        }
        "POST" => {
            record.grant_type = param("grant_type");
            record.username = param("username");
            record.credentials = match record.grant_type.as_deref() {
                Some("password") => {
                    if record.username.as_deref() == Some(&accounts.username)
                        && param("password").as_deref() == Some(&accounts.password)
                    {
                        Credentials::Valid
                    } else {
                        Credentials::Invalid
                    }
                }
                Some("refresh_token") => {
                    if param("refresh_token").as_deref() == Some(&accounts.refresh_token) {
                        Credentials::Valid
                    } else {
                        Credentials::Invalid
                    }
                }
                _ => {
                    let response = error(
                        &mut record,
                        400,
                        "unsupported_grant_type",
                        "grant_type must be password or refresh_token",
                    );
                    return (record, response);
                }
            };
        }
        _ => {
            let response = error(&mut record, 405, "METHOD_NOT_ALLOWED", "GET or POST");
            return (record, response);
        }
    }
    if record.service.as_deref() != Some(signer.service()) {
        let response = error(&mut record, 400, "invalid_request", "unknown service");
        return (record, response);
    }
    let access = match record.credentials {
        Credentials::Invalid => {
            let response = error(&mut record, 401, "UNAUTHORIZED", "invalid credentials");
            return (record, response);
        }
        Credentials::Anonymous => Vec::new(),
        Credentials::Valid => scopes.iter().filter_map(|s| pull_access(s)).collect(),
    };
    let subject = record.username.clone().unwrap_or_default();
    let token = signer.mint(&subject, &access);
    record.token = Some(token.clone());
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_LIFETIME_SECS,
    });
    if record.grant_type.as_deref() == Some("password") {
        body["refresh_token"] = json!(accounts.refresh_token);
    }
    (record, Response::json(200, &body))
}

/// `repository:<name>:<actions>` → the name and `pull` if it was asked for.
fn pull_access(scope: &str) -> Option<(String, Vec<String>)> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    actions
        .split(',')
        .any(|a| a == "pull")
        .then(|| (name.to_owned(), vec!["pull".to_owned()]))
}

/// `Basic <base64(user:password)>` → (user, password).
fn basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}
