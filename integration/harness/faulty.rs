//! A faulty HTTP reverse proxy in front of a real registry: per-rule status codes
//! (with `Retry-After`), corrupted, truncated or mislabelled bodies, `Range` dropped,
//! authentication refused, requests never answered, and an endpoint that dies after
//! a number of requests.
//!
//! Where the link emulator (`ctrpull::bench::link`) breaks TCP connections, this
//! breaks HTTP: it reads each request, decides by its rules, and either answers by
//! itself or forwards the request to the registry and alters the response on its way
//! back. One request per connection (`Connection: close` both ways), on std threads
//! like the other fake endpoints, so it keeps serving while the test's runtime waits.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::fake::Request;

/// How long a connection may sit idle before the proxy drops it.
const IDLE: Duration = Duration::from_secs(30);
/// Request heads larger than this are refused (ctrpull sends well under 8 KiB).
const MAX_HEAD: usize = 64 << 10;

/// Which requests a [`Rule`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every request.
    Any,
    /// `/v2/<name>/manifests/<reference>`.
    Manifests,
    /// `/v2/<name>/blobs/<digest>`.
    Blobs,
    /// `/v2/<name>/blobs/<digest>` with a `Range` header.
    RangedBlobs,
}

impl Target {
    fn matches(self, request: &Request) -> bool {
        let path = request.path();
        match self {
            Target::Any => true,
            Target::Manifests => path.contains("/manifests/"),
            Target::Blobs => path.contains("/blobs/"),
            Target::RangedBlobs => path.contains("/blobs/") && request.header("range").is_some(),
        }
    }
}

/// What a [`Rule`] does to the requests it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer this status with a registry-style error body; the registry is not asked.
    Status(u16),
    /// Answer this status (429 or 503) with `Retry-After: <seconds>`.
    RetryAfter {
        /// The status code.
        status: u16,
        /// The `Retry-After` value.
        seconds: u64,
    },
    /// Answer 401 with a Basic challenge, whatever credentials came: a mirror whose
    /// credentials are wrong or missing.
    RejectAuth,
    /// Forward, then flip one byte in the middle of the body: the length and headers
    /// are right, the digest is not.
    Corrupt,
    /// Forward with the registry's headers, send the first half of the body, close.
    Truncate,
    /// Forward with `Content-Length` halved (a clean, complete-looking response) and
    /// send that many bytes.
    ShortLength,
    /// Forward without the request's `Range` header, as some caches do: the registry
    /// answers 200 with the whole blob.
    IgnoreRange,
    /// Read the request and never answer: the connection stays open, silent, until
    /// the client gives up (or the proxy's idle limit passes).
    Silent,
}

/// One rule: requests to `target` get `action`, the first `times` of them only when
/// `times` is set. The first rule that selects a request (and has turns left) wins;
/// a request no rule selects is forwarded unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Which requests.
    pub target: Target,
    /// What happens to them.
    pub action: Action,
    /// How many matching requests get the action; `None` is every one.
    pub times: Option<usize>,
}

impl Rule {
    /// A rule for every request to `target`.
    pub fn always(target: Target, action: Action) -> Rule {
        Rule {
            target,
            action,
            times: None,
        }
    }

    /// A rule for the first `times` requests to `target`.
    pub fn first(times: usize, target: Target, action: Action) -> Rule {
        Rule {
            target,
            action,
            times: Some(times),
        }
    }
}

/// One request the proxy answered, with when it arrived and the action it got.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request as read.
    pub request: Request,
    /// When it arrived.
    pub at: Instant,
    /// The action applied, `None` when forwarded unchanged.
    pub action: Option<Action>,
}

struct State {
    upstream: SocketAddr,
    rules: Mutex<Vec<(Rule, usize)>>,
    seen: Mutex<Vec<Seen>>,
    /// After this many requests the proxy stops listening and drops its connections.
    die_after: Option<usize>,
    answered: AtomicUsize,
    dead: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// The proxy; stops when dropped.
pub struct FaultyProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FaultyProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` in front of the registry at
    /// `upstream` ("127.0.0.1:PORT"), applying `rules`.
    pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultyProxy {
        FaultyProxy::spawn(upstream, rules, None)
    }

    /// Starts a proxy that forwards `requests` requests unchanged and then dies: its
    /// listener closes (later connections are refused) and its open connections are
    /// shut down, mid-body or not.
    pub fn dying_after(upstream: &str, requests: usize) -> FaultyProxy {
        FaultyProxy::spawn(upstream, Vec::new(), Some(requests))
    }

    fn spawn(upstream: &str, rules: Vec<Rule>, die_after: Option<usize>) -> FaultyProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream is 127.0.0.1:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let state = Arc::new(State {
            upstream,
            rules: Mutex::new(rules.into_iter().map(|rule| (rule, 0)).collect()),
            seen: Mutex::default(),
            die_after,
            answered: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            open: Mutex::default(),
        });
        let accept = {
            let state = state.clone();
            std::thread::Builder::new()
                .name("harness-faulty".into())
                .spawn(move || {
                    for client in listener.incoming() {
                        // `die` and `Drop` wake us with a connection of their own.
                        if state.dead.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(client) = client else { continue };
                        if let Ok(clone) = client.try_clone() {
                            lock(&state.open).push(clone);
                        }
                        let state = state.clone();
                        std::thread::spawn(move || {
                            let _ = serve(client, &state, addr);
                        });
                    }
                })
                .expect("spawn the faulty proxy's accept thread")
        };
        FaultyProxy {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Every request answered so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    /// Requests that got a fault (not forwarded unchanged).
    pub fn faults(&self) -> usize {
        self.seen().iter().filter(|s| s.action.is_some()).count()
    }

    /// Whether the proxy has died ([`FaultyProxy::dying_after`]).
    pub fn is_dead(&self) -> bool {
        self.state.dead.load(Ordering::SeqCst)
    }

    /// Replaces the rules: `vec![]` makes the proxy transparent from now on.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *lock(&self.state.rules) = rules.into_iter().map(|rule| (rule, 0)).collect();
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        die(&self.state, self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stops listening and shuts down every open connection. Idempotent.
fn die(state: &State, addr: SocketAddr) {
    if state.dead.swap(true, Ordering::SeqCst) {
        return;
    }
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    for stream in lock(&state.open).drain(..) {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// The action for `request`, counting the turn of the rule that gives it.
fn choose(state: &State, request: &Request) -> Option<Action> {
    let mut rules = lock(&state.rules);
    let (rule, used) = rules.iter_mut().find(|(rule, used)| {
        rule.target.matches(request) && rule.times.is_none_or(|n| *used < n)
    })?;
    *used += 1;
    Some(rule.action)
}

/// Serves one client connection: one request, one response, close.
fn serve(client: TcpStream, state: &State, addr: SocketAddr) -> io::Result<()> {
    client.set_read_timeout(Some(IDLE))?;
    client.set_write_timeout(Some(IDLE))?;
    let Some(request) = read_request(&client)? else {
        return Ok(());
    };
    let action = choose(state, &request);
    lock(&state.seen).push(Seen {
        request: request.clone(),
        at: Instant::now(),
        action,
    });
    let mut out = client.try_clone()?;
    let result = match action {
        Some(Action::Status(status)) => answer(&mut out, status, &[]),
        Some(Action::RetryAfter { status, seconds }) => {
            answer(&mut out, status, &[("Retry-After", seconds.to_string())])
        }
        Some(Action::RejectAuth) => answer(
            &mut out,
            401,
            &[(
                "WWW-Authenticate",
                "Basic realm=\"faulty-proxy\"".to_owned(),
            )],
        ),
        Some(Action::Silent) => {
            // Until the client closes (0 bytes), sends more, or the idle limit.
            let _ = (&client).read(&mut [0; 1]);
            Ok(())
        }
        _ => forward(&request, action, state.upstream, &mut out),
    };
    let _ = out.shutdown(Shutdown::Both);
    if let Some(limit) = state.die_after {
        if state.answered.fetch_add(1, Ordering::SeqCst) + 1 >= limit {
            die(state, addr);
        }
    }
    result
}

/// Reads a request head (requests with a body are not expected: pulls only GET and
/// HEAD); `None` when the client closed first.
fn read_request(client: &TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    let mut size = line.len();
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header)?;
        size += n;
        if size > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if n == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    Ok(Some(Request {
        method,
        target,
        headers,
        body: Vec::new(),
    }))
}

/// Answers `status` with a registry-style JSON error body and `extra` headers.
fn answer(out: &mut TcpStream, status: u16, extra: &[(&str, String)]) -> io::Result<()> {
    let body = serde_json::json!({
        "errors": [{"code": "UNKNOWN", "message": format!("injected fault: status {status}")}]
    })
    .to_string();
    let mut head = format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())?;
    out.flush()
}

/// Sends `request` to the registry and relays the response, altered as `action` says.
fn forward(
    request: &Request,
    action: Option<Action>,
    upstream: SocketAddr,
    out: &mut TcpStream,
) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(IDLE))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {upstream}\r\n",
        request.method, request.target
    );
    for (name, value) in &request.headers {
        let dropped = matches!(name.as_str(), "host" | "connection")
            || (name == "range" && action == Some(Action::IgnoreRange));
        if !dropped {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    server.write_all(head.as_bytes())?;

    let mut response = BufReader::new(server);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if response.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        lines.push(line);
    }
    let length = lines.iter().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<u64>().ok())?
    });
    // Only a body of known length can be altered; HEAD responses have none.
    let alter = match (action, length) {
        (Some(a @ (Action::Corrupt | Action::Truncate | Action::ShortLength)), Some(n))
            if request.method == "GET" && n > 1 =>
        {
            Some((a, n))
        }
        _ => None,
    };
    let mut head = String::new();
    for line in &lines {
        let is_length = line
            .split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"));
        match alter {
            Some((Action::ShortLength, n)) if is_length => {
                head.push_str(&format!("Content-Length: {}\r\n", n / 2));
            }
            _ => head.push_str(line),
        }
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    match alter {
        None => {
            io::copy(&mut response, out)?;
        }
        Some((Action::Corrupt, n)) => {
            let mut body = Vec::with_capacity(n as usize);
            response.read_to_end(&mut body)?;
            let middle = body.len() / 2;
            if let Some(byte) = body.get_mut(middle) {
                *byte ^= 0xff;
            }
            out.write_all(&body)?;
        }
        Some((_, n)) => {
            // Truncate and ShortLength both send half; they differ in the header.
            io::copy(&mut response.take(n / 2), out)?;
        }
    }
    out.flush()
}
