//! A fake registry on 127.0.0.1 for the client's tests: serves what it is given,
//! misbehaves per path as scripted, answers auth challenges, and records every request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

use super::auth::basic_header;
use super::{Client, ClientConfig, Credentials, Endpoint, Secret, Target};

/// The repository every test pulls from.
pub(crate) const REPO: &str = "team/app";

/// [`REPO`] of a registry named `fake.test`.
pub(crate) fn target() -> Target {
    Target {
        registry: "fake.test".into(),
        repository: REPO.into(),
    }
}

/// A client with the default settings.
pub(crate) fn client() -> Client {
    Client::new(ClientConfig::default()).unwrap()
}

/// `Credentials::Basic`.
pub(crate) fn basic(username: &str, password: &str) -> Credentials {
    Credentials::Basic {
        username: username.into(),
        password: Secret::new(password),
    }
}

/// `/v2/<repo>/manifests/<reference>`.
pub(crate) fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

/// `/v2/<repo>/blobs/<digest>`.
pub(crate) fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What the fake answers one request with.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// The content at the path, honouring `Range: bytes=<a>-[<b>]` unless
    /// [`Fake::ignore_ranges`] was called; 404 when there is none.
    Serve,
    /// This status, with a registry-style error body.
    Status(u16),
    /// This status (429, 503) with `Retry-After: <value>`.
    RetryAfter(u16, String),
    /// `307` to this `Location`, sent as given (relative or absolute).
    Redirect(String),
    /// The content's headers (its full `Content-Length`), the first `n` bytes of what
    /// was asked for, then the connection is closed.
    CutAfter(usize),
    /// For a Range request: the bytes asked for, labelled with a `Content-Range`
    /// that starts at this byte instead.
    RangeStart(u64),
    /// The content with chunked encoding: no `Content-Length`.
    Chunked,
    /// The first `n` bytes of what was asked for, then nothing for this long, then
    /// the rest.
    PauseAfter(usize, Duration),
}

/// Auth the fake demands on every path but `/token`.
#[derive(Debug, Clone)]
pub(crate) enum Gate {
    /// `401` with `WWW-Authenticate: Basic` unless these credentials come along.
    Basic {
        /// The one user.
        username: String,
        /// Its password.
        password: String,
    },
    /// `401` with a Bearer challenge whose realm is this fake's `/token`, unless a
    /// token it issued (and did not revoke) comes along.
    Bearer(TokenServer),
}

/// How the fake's `/token` endpoint behaves.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenServer {
    /// What it accepts: `None` issues tokens to anyone (anonymous pulls); Basic
    /// credentials by POST form (`grant_type=password`) or GET with Basic auth; an
    /// identity token by POST form (`grant_type=refresh_token`) only.
    pub credentials: Option<Credentials>,
    /// Answer every POST with this status (404, 405: the old GET-only protocol).
    pub refuse_post: Option<u16>,
    /// `expires_in` of the tokens; left out of the reply when `None`.
    pub expires_in: Option<u64>,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query, if any.
    pub query: Option<String>,
    /// Every request header.
    pub headers: HeaderMap,
    /// The request body (token POST forms).
    pub body: Bytes,
}

impl Seen {
    /// The header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded query parameters.
    pub fn query_pairs(&self) -> HashMap<String, String> {
        let query = self.query.as_deref().unwrap_or("");
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The decoded form body.
    pub fn form(&self) -> HashMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }
}

struct Content {
    bytes: Bytes,
    media_type: String,
}

#[derive(Default)]
struct Inner {
    content: HashMap<String, Content>,
    scripts: HashMap<String, VecDeque<Reply>>,
    always: HashMap<String, Reply>,
    ignore_ranges: bool,
    gate: Option<Gate>,
    tokens: Vec<String>,
    issued: usize,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Inner>>;

/// A fake registry serving HTTP/1.1 on `127.0.0.1:<free port>`; stops when dropped.
pub(crate) struct Fake {
    addr: SocketAddr,
    inner: Shared,
    server: JoinHandle<()>,
}

impl Fake {
    /// Starts an empty fake on the current tokio runtime.
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Shared::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake {
            addr,
            inner,
            server,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An upstream (not mirror) endpoint for this fake: `http://127.0.0.1:<port>/v2`.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(Url::parse(&self.url("/v2")).unwrap(), false, "fake")
    }

    /// Serves `bytes` at `path` with `Content-Type: media_type`.
    pub fn put(&self, path: &str, media_type: &str, bytes: impl Into<Bytes>) {
        let content = Content {
            bytes: bytes.into(),
            media_type: media_type.to_string(),
        };
        self.lock().content.insert(path.to_string(), content);
    }

    /// Serves a manifest of `media_type` as `<repo>:<reference>`.
    pub fn manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let path = manifest_path(repo, reference);
        self.put(&path, media_type, Bytes::copy_from_slice(bytes));
    }

    /// Serves a blob of `repo` under its digest; returns the digest.
    pub fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let path = blob_path(repo, &digest);
        self.put(
            &path,
            "application/octet-stream",
            Bytes::copy_from_slice(bytes),
        );
        digest
    }

    /// Answers the next requests to `path` with `replies`, one each, in order; after
    /// them, what [`Fake::always`] set, or [`Reply::Serve`].
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.lock()
            .scripts
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    /// Answers every request to `path` with `reply` once its script is used up.
    pub fn always(&self, path: &str, reply: Reply) {
        self.lock().always.insert(path.to_string(), reply);
    }

    /// Ignores `Range` everywhere: `200` with the whole body, as some servers do.
    pub fn ignore_ranges(&self) {
        self.lock().ignore_ranges = true;
    }

    /// Demands auth on every path but `/token`.
    pub fn gate(&self, gate: Gate) {
        self.lock().gate = Some(gate);
    }

    /// Forgets every token issued: the next request with one gets a `401`.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// The requests so far to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    /// The requests so far to the token endpoint.
    pub fn token_requests(&self) -> Vec<Seen> {
        self.requests_to("/token")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(State(inner): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    let mut inner = inner.lock().unwrap();
    inner.seen.push(seen.clone());
    if seen.path == "/token" {
        return token(&mut inner, &seen);
    }
    if let Some(challenge) = refuse(&inner, &seen) {
        return challenge;
    }
    let reply = inner
        .scripts
        .get_mut(&seen.path)
        .and_then(VecDeque::pop_front)
        .or_else(|| inner.always.get(&seen.path).cloned())
        .unwrap_or(Reply::Serve);
    match reply {
        Reply::Status(status) => error(status, "UNKNOWN", "injected fault"),
        Reply::RetryAfter(status, after) => {
            let mut response = error(status, "TOOMANYREQUESTS", "injected fault");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, after.parse().unwrap());
            response
        }
        Reply::Redirect(location) => Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, location)
            .body(Body::empty())
            .unwrap(),
        reply => match inner.content.get(&seen.path) {
            Some(content) => serve(content, &reply, &seen, inner.ignore_ranges),
            None => error(404, "BLOB_UNKNOWN", "not in the fake"),
        },
    }
}

/// The `401` for a request without the auth the gate demands, if any.
fn refuse(inner: &Inner, seen: &Seen) -> Option<Response> {
    let given = seen.header("authorization");
    let challenge = match inner.gate.as_ref()? {
        Gate::Basic { username, password } => {
            if given == Some(basic_header(username, password).as_str()) {
                return None;
            }
            r#"Basic realm="fake""#.to_string()
        }
        Gate::Bearer(_) => {
            let token = given.and_then(|g| g.strip_prefix("Bearer "));
            if token.is_some_and(|t| inner.tokens.iter().any(|issued| issued == t)) {
                return None;
            }
            let realm = format!("http://{}/token", seen.header("host").unwrap_or(""));
            format!(r#"Bearer realm="{realm}",service="fake""#)
        }
    };
    let mut response = error(401, "UNAUTHORIZED", "authentication required");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
    Some(response)
}

/// The token endpoint: issues `fake-token-<n>` to whoever [`TokenServer`] accepts.
fn token(inner: &mut Inner, seen: &Seen) -> Response {
    let Some(Gate::Bearer(server)) = inner.gate.clone() else {
        return error(404, "NOT_FOUND", "no token server");
    };
    let accepted = if seen.method == "POST" {
        if let Some(status) = server.refuse_post {
            return error(status, "UNSUPPORTED", "no POST here");
        }
        let form = seen.form();
        let field = |name: &str| form.get(name).map(String::as_str);
        match &server.credentials {
            None => true,
            Some(Credentials::Basic { username, password }) => {
                field("grant_type") == Some("password")
                    && field("username") == Some(username)
                    && field("password") == Some(password.expose())
            }
            Some(Credentials::IdentityToken(token)) => {
                field("grant_type") == Some("refresh_token")
                    && field("refresh_token") == Some(token.expose())
            }
        }
    } else {
        match &server.credentials {
            None => true,
            Some(Credentials::Basic { username, password }) => {
                seen.header("authorization")
                    == Some(basic_header(username, password.expose()).as_str())
            }
            Some(Credentials::IdentityToken(_)) => false,
        }
    };
    if !accepted {
        return error(401, "UNAUTHORIZED", "bad credentials");
    }
    inner.issued += 1;
    let token = format!("fake-token-{}", inner.issued);
    inner.tokens.push(token.clone());
    let mut reply = serde_json::json!({ "token": token });
    if let Some(expires_in) = server.expires_in {
        reply["expires_in"] = expires_in.into();
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(reply.to_string()))
        .unwrap()
}

/// Serves `content` as `reply` says: whole or the range asked for (`bytes=a-` or
/// `bytes=a-b`), cut, mislabelled or chunked.
fn serve(content: &Content, reply: &Reply, seen: &Seen, ignore_ranges: bool) -> Response {
    let total = content.bytes.len() as u64;
    let range = seen
        .header("range")
        .filter(|_| !ignore_ranges)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(first, last)| {
            let first = first.parse::<u64>().ok()?;
            let last = match last {
                "" => total.saturating_sub(1),
                last => last.parse::<u64>().ok()?.min(total.saturating_sub(1)),
            };
            Some((first, last))
        });
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content.media_type.as_str())
        .header("docker-content-digest", sha256(&content.bytes));
    let body = match range {
        Some((first, last)) if first > last || first >= total => {
            return error(416, "RANGE_INVALID", "not satisfiable")
        }
        Some((first, last)) => {
            let start = match reply {
                Reply::RangeStart(start) => *start,
                _ => first,
            };
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{last}/{total}"),
            );
            content.bytes.slice(first as usize..=last as usize)
        }
        None => content.bytes.clone(),
    };
    match reply {
        Reply::CutAfter(n) => {
            let head = body.slice(..(*n).min(body.len()));
            // The pause lets the first bytes go out before the connection is closed.
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(
                futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(std::io::Error::other("cut by the fake"))
                }),
            );
            builder
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from_stream(chunks))
                .unwrap()
        }
        Reply::PauseAfter(n, pause) => {
            let head = body.slice(..(*n).min(body.len()));
            let rest = body.slice(head.len()..);
            let pause = *pause;
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(
                futures::stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Ok(rest)
                }),
            );
            builder
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from_stream(chunks))
                .unwrap()
        }
        Reply::Chunked => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = body
                .chunks(64 << 10)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            builder
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap()
        }
        _ => builder.body(Body::from(body)).unwrap(),
    }
}

/// `status` with a registry error body.
fn error(status: u16, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Accepts connections and never answers: a hung mirror. Counts the connections.
pub(crate) struct BlackHole {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl BlackHole {
    /// Starts listening on the current tokio runtime.
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            // Held, never read: the client waits for its response timeout.
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        BlackHole {
            addr,
            accepted,
            task,
        }
    }

    /// An endpoint for it: `http://127.0.0.1:<port>/v2`.
    pub fn endpoint(&self) -> Endpoint {
        let base = Url::parse(&format!("http://{}/v2", self.addr)).unwrap();
        Endpoint::new(base, false, "black hole")
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An endpoint on a loopback port nothing listens on: connecting is refused at once.
pub(crate) fn closed_port() -> Endpoint {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    Endpoint::new(
        Url::parse(&format!("http://{addr}/v2")).unwrap(),
        false,
        "closed port",
    )
}

/// Keeps a paused clock crawling (1 ms steps) instead of jumping.
///
/// Under `tokio::time::pause()` the runtime moves the clock straight to the next timer
/// whenever it has nothing to run, even while a socket read is pending: the client's
/// response timeout would fire before the fake's answer arrived. With this ticker the
/// next timer is never more than 1 ms away, so a request in flight costs a few virtual
/// milliseconds while a 2 s wait still passes in a blink. Dropped with the runtime.
pub(crate) fn crawl_paused_clock() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}
