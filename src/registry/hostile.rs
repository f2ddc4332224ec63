//! Tests of hostile registry answers: bodies that never end or lie about their
//! length, enormous or countless headers, redirect loops, digests and media types
//! that do not add up. Each must end in a clear error naming what was wrong, in
//! bounded time and memory, and the next endpoint must still be tried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use url::Url;

use super::fake::{self, Fake, Reply, REPO};
use super::{media, Endpoint, MAX_MANIFEST_SIZE, MAX_REDIRECTS};

/// What a [`Raw`] server writes after the request head.
#[derive(Clone)]
enum Answer {
    /// These bytes, then the connection is closed.
    Bytes(Vec<u8>),
    /// This response head, then body bytes for as long as the client reads, framed
    /// as chunks when `chunked`.
    Endless { head: Vec<u8>, chunked: bool },
}

/// A server on 127.0.0.1 that answers every request with raw bytes, lies included,
/// and counts the body bytes it managed to send.
struct Raw {
    addr: std::net::SocketAddr,
    sent: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Raw {
    async fn start(answer: Answer) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer_one(socket, answer.clone(), counter.clone()));
            }
        });
        Raw { addr, sent, task }
    }

    fn endpoint(&self) -> Endpoint {
        let base = Url::parse(&format!("http://{}/v2", self.addr)).unwrap();
        Endpoint::new(base, false, "raw")
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_one(mut socket: TcpStream, answer: Answer, sent: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    match answer {
        Answer::Bytes(bytes) => {
            let _ = socket.write_all(&bytes).await;
            let _ = socket.shutdown().await;
        }
        Answer::Endless { head, chunked } => {
            if socket.write_all(&head).await.is_err() {
                return;
            }
            let mut block = vec![b' '; 64 << 10];
            if chunked {
                block = [format!("{:x}\r\n", block.len()).as_bytes(), &block, b"\r\n"].concat();
            }
            while socket.write_all(&block).await.is_ok() {
                sent.fetch_add(block.len() as u64, Ordering::SeqCst);
            }
        }
    }
}

/// A JSON index body.
const INDEX: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// `HTTP/1.1 200` with `headers` and `body`, closed after.
fn response(headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut bytes = b"HTTP/1.1 200 OK\r\nconnection: close\r\n".to_vec();
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

/// Fetches `latest` from `endpoint` alone; the error text and how long it took.
async fn manifest_error(endpoint: Endpoint) -> (String, Duration) {
    let started = Instant::now();
    let error = fake::client()
        .manifest(&fake::target(), "latest", None, &[endpoint])
        .await
        .unwrap_err();
    (error.to_string(), started.elapsed())
}

/// Fetches `latest` from `hostile`, then a good fake: the good one must serve it.
async fn next_endpoint_serves(hostile: Endpoint) {
    let good = Fake::start().await;
    good.manifest(REPO, "latest", media::OCI_INDEX, INDEX);
    let manifest = fake::client()
        .manifest(&fake::target(), "latest", None, &[hostile, good.endpoint()])
        .await
        .unwrap();
    assert_eq!(&manifest.bytes[..], INDEX);
}

/// A manifest response whose body never ends: refused at the cap, quickly, after
/// which the client hangs up; the next endpoint is asked.
async fn endless(head: &str, chunked: bool) {
    let head = head.replace("TYPE", media::OCI_INDEX).into_bytes();
    let raw = Raw::start(Answer::Endless { head, chunked }).await;
    let (error, took) = manifest_error(raw.endpoint()).await;
    assert!(
        error.contains(&format!(
            "manifest is larger than the {MAX_MANIFEST_SIZE} bytes allowed"
        )),
        "{error}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // What the server got out is the cap plus what socket buffers hold.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = raw.sent();
    assert!(sent < MAX_MANIFEST_SIZE + (32 << 20), "{sent} bytes sent");
    next_endpoint_serves(raw.endpoint()).await;
}

#[tokio::test]
async fn an_endless_chunked_manifest_stops_at_the_cap() {
    endless(
        "HTTP/1.1 200 OK\r\ncontent-type: TYPE\r\ntransfer-encoding: chunked\r\n\r\n",
        true,
    )
    .await;
}

#[tokio::test]
async fn an_endless_manifest_without_a_length_stops_at_the_cap() {
    // No Content-Length, no chunking: the body runs until the connection closes,
    // which this server never does.
    endless(
        "HTTP/1.1 200 OK\r\ncontent-type: TYPE\r\nconnection: close\r\n\r\n",
        false,
    )
    .await;
}

#[tokio::test]
async fn a_content_length_over_the_cap_is_refused_before_reading() {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
        media::OCI_INDEX,
        MAX_MANIFEST_SIZE + 1
    );
    let raw = Raw::start(Answer::Endless {
        head: head.into_bytes(),
        chunked: false,
    })
    .await;
    let (error, _) = manifest_error(raw.endpoint()).await;
    assert!(
        error.contains(&format!(
            "manifest is {} bytes, more than the {MAX_MANIFEST_SIZE} allowed",
            MAX_MANIFEST_SIZE + 1
        )),
        "{error}"
    );
}

#[tokio::test]
async fn a_content_length_shorter_than_the_body_cuts_the_document() {
    let headers = [
        ("content-type", media::OCI_INDEX.to_string()),
        ("content-length", "20".to_string()),
    ];
    let raw = Raw::start(Answer::Bytes(response(&headers, INDEX))).await;
    let (error, _) = manifest_error(raw.endpoint()).await;
    assert!(
        error.contains("manifest is not valid JSON: EOF while parsing"),
        "{error}"
    );
    next_endpoint_serves(raw.endpoint()).await;
}

#[tokio::test]
async fn a_content_length_longer_than_the_body_is_a_cut_body() {
    let headers = [
        ("content-type", media::OCI_INDEX.to_string()),
        ("content-length", (INDEX.len() + 100).to_string()),
    ];
    let raw = Raw::start(Answer::Bytes(response(&headers, INDEX))).await;
    let (error, _) = manifest_error(raw.endpoint()).await;
    assert!(
        error.contains("reading manifest: reading the body failed"),
        "{error}"
    );
}

/// A response head of `headers` must fail fast and cleanly; returns the error.
async fn huge_head(headers: Vec<(&str, String)>) -> String {
    let raw = Raw::start(Answer::Bytes(response(&headers, INDEX))).await;
    let (error, took) = manifest_error(raw.endpoint()).await;
    assert!(took < Duration::from_secs(5), "{took:?}: {error}");
    next_endpoint_serves(raw.endpoint()).await;
    error
}

/// hyper refuses a response head over its buffer limit (about 400 KiB) and more than
/// 100 headers: an error at once, not a hang, and the endpoint is skipped.
#[tokio::test]
async fn a_one_megabyte_header_is_a_clean_error() {
    let error = huge_head(vec![("x-huge", "a".repeat(1 << 20))]).await;
    assert!(
        error.contains("request failed") && error.contains("message head is too large"),
        "{error}"
    );
}

#[tokio::test]
async fn a_thousand_headers_are_a_clean_error() {
    let headers = (0..1000).map(|_| ("x-many", "1".to_string())).collect();
    let error = huge_head(headers).await;
    assert!(
        error.contains("request failed") && error.contains("message head is too large"),
        "{error}"
    );
}

#[tokio::test]
async fn an_invalid_docker_content_digest_moves_on() {
    for (value, reason) in [
        (
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "unsupported digest algorithm",
        ),
        ("sha256:abc", "at least 32 hexadecimal characters"),
        (
            &fake::sha256(INDEX).to_uppercase().replace("SHA", "sha"),
            "must be lowercase",
        ),
    ] {
        let headers = [
            ("content-type", media::OCI_INDEX.to_string()),
            ("docker-content-digest", value.to_string()),
            ("content-length", INDEX.len().to_string()),
        ];
        let raw = Raw::start(Answer::Bytes(response(&headers, INDEX))).await;
        let (error, _) = manifest_error(raw.endpoint()).await;
        assert!(
            error.contains(&format!(
                "the Docker-Content-Digest header {value:?} is invalid: "
            )) && error.contains(reason),
            "{error}"
        );
        next_endpoint_serves(raw.endpoint()).await;
    }
}

#[tokio::test]
async fn a_media_type_that_does_not_match_the_body_moves_on() {
    let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
    let liar = Fake::start().await;
    liar.manifest(REPO, "latest", media::OCI_INDEX, manifest);
    let (error, _) = manifest_error(liar.endpoint()).await;
    assert!(
        error.contains("but the document is an image manifest"),
        "{error}"
    );
    next_endpoint_serves(liar.endpoint()).await;

    let html = Fake::start().await;
    html.manifest(REPO, "latest", media::OCI_MANIFEST, b"<html>busy</html>");
    let (error, _) = manifest_error(html.endpoint()).await;
    assert!(error.contains("manifest is not valid JSON"), "{error}");
    next_endpoint_serves(html.endpoint()).await;
}

#[tokio::test]
async fn a_redirect_loop_between_two_hosts_stops_and_moves_on() {
    let (a, b) = (Fake::start().await, Fake::start().await);
    let path = fake::manifest_path(REPO, "latest");
    a.always(&path, Reply::Redirect(b.url(&path)));
    b.always(&path, Reply::Redirect(a.url(&path)));
    let (error, _) = manifest_error(a.endpoint()).await;
    assert!(
        error.contains(&format!("more than {MAX_REDIRECTS} redirects")),
        "{error}"
    );
    let asked = a.requests_to(&path).len() + b.requests_to(&path).len();
    assert_eq!(
        asked,
        MAX_REDIRECTS + 1,
        "the first request and the redirects followed"
    );
    next_endpoint_serves(a.endpoint()).await;
}

#[tokio::test]
async fn a_redirect_to_a_non_http_scheme_is_a_clean_error() {
    let registry = Fake::start().await;
    let path = fake::manifest_path(REPO, "latest");
    registry.always(&path, Reply::Redirect("file:///etc/passwd".into()));
    let (error, _) = manifest_error(registry.endpoint()).await;
    assert!(
        error.contains("redirect to file:///etc/passwd, which is not an http(s) URL"),
        "{error}"
    );
    next_endpoint_serves(registry.endpoint()).await;
}
