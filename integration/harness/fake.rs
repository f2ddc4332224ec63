//! Fake endpoints on loopback for failover tests (a closed port, a black hole, a server
//! answering one status to everything), a static file server standing in for a
//! registry's redirect target, and the tiny HTTP/1.1 responder behind them and the
//! token server.
//!
//! Hand-rolled on std threads rather than a web framework: each needs a few lines of
//! HTTP, a black hole must hold sockets without ever reading them, and none may run on
//! the test's tokio runtime, which sits blocked while `ctrpull` runs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use url::Url;

/// How long a connection of the responder may sit idle before it is dropped.
const IDLE: Duration = Duration::from_secs(5);
/// Request heads and bodies larger than this are refused (tests send a few hundred bytes).
const MAX_REQUEST: usize = 1 << 20;

/// One HTTP request as the responder read it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The decoded query parameters, in order.
    pub fn query(&self) -> Vec<(String, String)> {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The decoded `application/x-www-form-urlencoded` body, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }
}

/// What the responder sends back.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (`Content-Length` and `Connection: close` are added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

enum Mode {
    /// Accept and keep the socket open, never reading or writing.
    Hold,
    /// Answer each connection's one request with the handler.
    Serve(Handler),
}

/// A listener on `127.0.0.1:<free port>` with its accept thread; stopped when dropped.
pub(super) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    requests: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(name: &str, mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, accepted, held, requests) = (
                stop.clone(),
                accepted.clone(),
                held.clone(),
                requests.clone(),
            );
            std::thread::Builder::new()
                .name(format!("harness-{name}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        // `Drop` wakes us with a connection of its own after setting `stop`.
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        accepted.fetch_add(1, Ordering::SeqCst);
                        match &mode {
                            Mode::Hold => lock(&held).push(stream),
                            Mode::Serve(handler) => {
                                let (handler, requests) = (handler.clone(), requests.clone());
                                std::thread::spawn(move || {
                                    let _ = serve_one(stream, &handler, &requests);
                                });
                            }
                        }
                    }
                })
                .expect("spawn an accept thread")
        };
        Server {
            addr,
            stop,
            accepted,
            held,
            requests,
            thread: Some(thread),
        }
    }

    /// Starts a responder answering every request with `handler`.
    pub(super) fn serve(
        name: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Server {
        Server::start(name, Mode::Serve(Arc::new(handler)))
    }

    pub(super) fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub(super) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(super) fn requests(&self) -> Vec<Request> {
        lock(&self.requests).clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        lock(&self.held).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads one request from `stream`, records it, answers it and closes.
fn serve_one(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    let mut head_size = line.len();
    loop {
        let mut header = String::new();
        let n = reader.read_line(&mut header)?;
        head_size += n;
        if n == 0 || header == "\r\n" || header == "\n" || head_size > MAX_REQUEST {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let request = Request {
        method,
        target,
        headers,
        body,
    };
    let response = handler(&request);
    lock(log).push(request);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut stream = stream;
    stream.write_all(out.as_bytes())?;
    stream.write_all(&response.body)?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A loopback port nothing listens on: bound, read and closed again, so connecting is
/// refused at once. (Another process could take the port later; on loopback with the
/// kernel's ephemeral range that is rare enough for a test.)
#[derive(Debug)]
pub struct ClosedPort {
    addr: String,
}

impl ClosedPort {
    /// Finds a port and closes it.
    pub fn new() -> ClosedPort {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address").to_string();
        drop(listener);
        ClosedPort { addr }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        loopback_url(&self.addr)
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts TCP connections and never answers: a mirror whose process hangs. Connecting
/// succeeds; every request waits for the client's response timeout.
pub struct BlackHole {
    server: Server,
}

impl BlackHole {
    /// Starts listening.
    pub fn start() -> BlackHole {
        BlackHole {
            server: Server::start("black-hole", Mode::Hold),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        loopback_url(&self.server.addr())
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.server.accepted()
    }
}

/// Answers every request with one status (500 by default) and a registry-style error
/// body, recording what it was asked.
pub struct StatusServer {
    server: Server,
}

impl StatusServer {
    /// Starts a server answering `status` to everything.
    pub fn start(status: u16) -> StatusServer {
        let body = serde_json::json!({
            "errors": [{"code": "UNKNOWN", "message": format!("injected fault: status {status}")}]
        });
        StatusServer {
            server: Server::serve("status", move |_| Response::json(status, &body)),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        loopback_url(&self.server.addr())
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.server.accepted()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

/// Answers every request with what its handler returns: a registry stand-in serving
/// whatever a test needs, hostile answers included. Records what it was asked.
pub struct Responder {
    server: Server,
}

impl Responder {
    /// Starts a server answering each request with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Responder {
        Responder {
            server: Server::serve("responder", handler),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

pub(super) fn loopback_url(addr: &str) -> Url {
    Url::parse(&format!("http://{addr}/")).expect("a loopback address makes a valid URL")
}

/// A static file server over a directory, recording every request: the storage backend
/// that a registry with distribution's `redirect` storage middleware sends blob GETs to
/// (see [`RegistryBuilder::redirect`](super::RegistryBuilder::redirect)). Answers
/// `Range: bytes=a-[b]` with 206, like the object stores it stands in for.
pub struct FileServer {
    server: Server,
    root: Arc<Mutex<Option<PathBuf>>>,
}

impl FileServer {
    /// Starts serving; everything is 404 until [`FileServer::serve`] names a directory.
    /// (A registry's directory exists only once it runs, and it needs this server's URL
    /// to start.)
    pub fn start() -> FileServer {
        let root: Arc<Mutex<Option<PathBuf>>> = Arc::default();
        let served = root.clone();
        let server = Server::serve("files", move |request| {
            let root = lock(&served).clone();
            match root.and_then(|root| read_under(&root, request.path())) {
                Some(data) => file_response(request, data),
                None => Response::json(404, &serde_json::json!({"error": "no such file"})),
            }
        });
        FileServer { server, root }
    }

    /// Serves the files under `root` from now on.
    pub fn serve(&self, root: &Path) {
        *lock(&self.root) = Some(root.to_owned());
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> Url {
        loopback_url(&self.server.addr())
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

/// The file at URL path `path` under `root`; `None` for a missing file or a path that
/// would leave `root`.
fn read_under(root: &Path, path: &str) -> Option<Vec<u8>> {
    let relative = Path::new(path.trim_start_matches('/'));
    let inside = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return None;
    }
    std::fs::read(root.join(relative)).ok()
}

/// 200 with the file, or 206 with the part a `Range: bytes=a-[b]` asks for.
fn file_response(request: &Request, data: Vec<u8>) -> Response {
    let total = data.len();
    let range = request
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(first, last)| {
            let first: usize = first.parse().ok()?;
            let last = match last {
                "" => total.checked_sub(1)?,
                last => last.parse::<usize>().ok()?.min(total.checked_sub(1)?),
            };
            (first <= last).then_some((first, last))
        });
    let octets = (
        "Content-Type".to_owned(),
        "application/octet-stream".to_owned(),
    );
    match range {
        Some((first, last)) => Response {
            status: 206,
            headers: vec![
                octets,
                (
                    "Content-Range".into(),
                    format!("bytes {first}-{last}/{total}"),
                ),
            ],
            body: data[first..=last].to_vec(),
        },
        None => Response {
            status: 200,
            headers: vec![octets],
            body: data,
        },
    }
}
