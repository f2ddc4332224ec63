//! Accuracy tests of the link emulator with real loopback TCP servers and clients.
//!
//! These check the emulator itself, not ctrpull: rates are measured at the client
//! over the steady-state window (after the first [`WARM_UP`] of the bytes), which
//! leaves out the initial burst and connection set-up. The rate tests take a lock so
//! they do not compete with each other for the machine's two cores.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::*;

/// Tolerance of the rate tests.
const TOLERANCE: f64 = 0.05;
/// Tolerance of one connection's share of a contended aggregate. Looser: under load
/// a connection whose task runs late leaves its turns to the others (the aggregate
/// stays exact); on a quiet machine the shares are within ~2%.
const FAIRNESS: f64 = 0.15;
/// Share of a transfer left out of the rate measurement at its start.
const WARM_UP: f64 = 0.1;
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// Kernel buffer of the test servers' sends and the test clients' receives: large,
/// so a test server or client that the loaded machine schedules late neither lets
/// the emulator run dry nor blocks its writes.
const TEST_BUFFER: u32 = 4 << 20;
/// Read buffer of the test clients: more than their kernel buffer can hold, so one
/// read drains it.
const READ_BUFFER: usize = 2 * TEST_BUFFER as usize;

/// Serialises the timing-sensitive tests.
static SERIAL: Mutex<()> = Mutex::const_new(());

const MBIT: u64 = 1_000_000 / 8;

/// Period of the byte pattern of every test stream (a prime, so it never lines up
/// with slice or buffer sizes).
const PERIOD: usize = 251;
/// Longest write of the test servers.
const CHUNK: usize = 64 * 1024;

/// The stream's bytes from any offset up to [`READ_BUFFER`] long:
/// `PATTERN[offset % PERIOD..]`. Slices of it are written and compared whole, so
/// the test's own servers and clients use little CPU (they share two cores with the
/// emulator).
static PATTERN: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let period: Vec<u8> = (0..PERIOD as u8).collect();
    let mut pattern = period.repeat(READ_BUFFER / PERIOD + 2);
    pattern.truncate(READ_BUFFER + PERIOD);
    pattern
});

/// `len` bytes of the stream from `offset`.
fn pattern(offset: u64, len: usize) -> &'static [u8] {
    let start = (offset % PERIOD as u64) as usize;
    &PATTERN[start..start + len]
}

/// A local TCP server; counts the connections it accepted.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// A server that sends `size` pattern bytes as fast as it can on every
    /// connection, then closes its side.
    async fn source(size: u64) -> Server {
        Self::start(move |mut stream| async move {
            let mut offset = 0;
            while offset < size {
                let n = (size - offset).min(CHUNK as u64) as usize;
                if stream.write_all(pattern(offset, n)).await.is_err() {
                    return;
                }
                offset += n as u64;
            }
            let _ = stream.shutdown().await;
            // Read until the client closes, so closing never turns into RST.
            let mut buf = vec![0; CHUNK];
            while let Ok(1..) = stream.read(&mut buf).await {}
        })
        .await
    }

    /// A server that answers every request (any chunk it reads) with `answer`
    /// bytes, and once the client half-closes, with `answer` bytes and its own FIN.
    async fn responder(answer: usize) -> Server {
        Self::start(move |mut stream| async move {
            let mut buf = vec![0; CHUNK];
            let reply = vec![b'r'; answer];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => {
                        let _ = stream.write_all(&reply).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                    Ok(_) => {
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        })
        .await
    }

    async fn start<F, Fut>(serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(TEST_BUFFER).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve(stream));
            }
        });
        Server {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// What a client received on one connection.
#[derive(Debug)]
struct Reception {
    /// When the client began to connect.
    start: Instant,
    /// (when, bytes received so far) after every read.
    samples: Vec<(Instant, u64)>,
    /// How the stream ended: EOF, an error, or `TimedOut` if nothing came for
    /// [`QUIET`] with `quiet` set.
    end: io::Result<()>,
}

impl Reception {
    fn total(&self) -> u64 {
        self.samples.last().map_or(0, |s| s.1)
    }

    fn first_byte(&self) -> Instant {
        self.samples[0].0
    }

    /// When the last byte came.
    fn last_byte(&self) -> Instant {
        self.samples.last().unwrap().0
    }

    /// The samples taken while the transfer was under way: all but the last. A read
    /// drains all that arrived, so each of these lies on the curve of bytes arrived
    /// over time even when the client was scheduled late; the last one may come
    /// after the transfer ended, so it is left out.
    fn during(&self) -> &[(Instant, u64)] {
        &self.samples[..self.samples.len().saturating_sub(1)]
    }

    /// The first sample (while under way) at or past `bytes`.
    fn reached(&self, bytes: u64) -> (Instant, u64) {
        *self
            .during()
            .iter()
            .find(|s| s.1 >= bytes)
            .unwrap_or_else(|| panic!("no read under way at or past byte {bytes}"))
    }

    /// Bytes arrived by `when`, interpolated between the samples under way.
    fn bytes_at(&self, when: Instant) -> f64 {
        let during = self.during();
        let after = during.partition_point(|s| s.0 <= when);
        match (after.checked_sub(1).map(|i| during[i]), during.get(after)) {
            (Some((t0, b0)), Some(&(t1, b1))) => {
                let share = (when - t0).as_secs_f64() / (t1 - t0).as_secs_f64();
                b0 as f64 + (b1 - b0) as f64 * share
            }
            (Some((_, b)), None) | (None, Some(&(_, b))) => b as f64,
            (None, None) => 0.0,
        }
    }

    /// Bytes/s from the first sample at or past `bytes` to the last under way.
    fn rate_from(&self, bytes: u64) -> f64 {
        let (t0, b0) = self.reached(bytes);
        let (t1, b1) = *self.during().last().unwrap();
        assert!(t1 > t0, "no reads under way after byte {bytes}");
        (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
    }

    /// Bytes/s after the warm-up share.
    fn steady_rate(&self) -> f64 {
        self.rate_from((self.total() as f64 * WARM_UP) as u64)
    }
}

/// Connects to `addr`, optionally sends `request`, and reads until EOF, an error or,
/// with `quiet`, [`QUIET`] without data; checks the bytes against the pattern.
async fn receive(addr: SocketAddr, request: &[u8], quiet: bool) -> Reception {
    let start = Instant::now();
    let mut samples = Vec::new();
    let end = async {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(TEST_BUFFER)?;
        let mut stream = socket.connect(addr).await?;
        if !request.is_empty() {
            stream.write_all(request).await?;
        }
        let mut buf = vec![0; READ_BUFFER];
        let mut total = 0u64;
        loop {
            let read = stream.read(&mut buf);
            let n = if quiet {
                timeout(QUIET, read)
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??
            } else {
                read.await?
            };
            if n == 0 {
                return Ok(());
            }
            assert!(
                buf[..n] == *pattern(total, n),
                "bytes {total}..{} differ from the stream sent",
                total + n as u64
            );
            total += n as u64;
            samples.push((Instant::now(), total));
        }
    }
    .await;
    Reception {
        start,
        samples,
        end,
    }
}

/// Bytes/s of several concurrent receptions together, over the window in which all
/// of them were past their warm-up and none had finished.
fn aggregate_rate(receptions: &[Reception]) -> f64 {
    let from = receptions
        .iter()
        .map(|r| r.reached((r.total() as f64 * WARM_UP) as u64).0)
        .max()
        .unwrap();
    let to = receptions
        .iter()
        .map(|r| r.during().last().unwrap().0)
        .min()
        .unwrap();
    assert!(to > from, "the transfers did not overlap");
    let bytes: f64 = receptions
        .iter()
        .map(|r| r.bytes_at(to) - r.bytes_at(from))
        .sum();
    bytes / (to - from).as_secs_f64()
}

#[track_caller]
fn assert_rate(what: &str, measured: f64, expected: u64) {
    assert_rate_within(what, measured, expected, TOLERANCE);
}

#[track_caller]
fn assert_rate_within(what: &str, measured: f64, expected: u64, tolerance: f64) {
    let error = measured / expected as f64 - 1.0;
    eprintln!(
        "{what}: {} for {} ({:+.2}%)",
        Rate(measured as u64),
        Rate(expected),
        error * 100.0
    );
    assert!(
        error.abs() <= tolerance,
        "{what}: measured {} for {}",
        Rate(measured as u64),
        Rate(expected)
    );
}

fn fault(on: FaultTrigger, action: FaultAction) -> LinkConfig {
    LinkConfig {
        faults: vec![Fault { on, action }],
        ..LinkConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_gets_the_rate() {
    let _serial = SERIAL.lock().await;
    let rate = 100 * MBIT;
    let server = Server::source(15_000_000).await;
    let config = LinkConfig {
        rate: Some(rate),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_eq!(reception.total(), 15_000_000);
    assert_rate("one stream at 100 Mbit/s", reception.steady_rate(), rate);
    assert_eq!(link.stats().bytes_down, 15_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_at_their_cap_fill_the_aggregate() {
    let _serial = SERIAL.lock().await;
    let (rate, per_connection) = (100 * MBIT, 25 * MBIT);
    let server = Server::source(4_000_000).await;
    let config = LinkConfig {
        rate: Some(rate),
        per_connection_rate: Some(per_connection),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let receptions =
        futures::future::join_all((0..4).map(|_| receive(link.addr(), b"", false))).await;
    for (i, reception) in receptions.iter().enumerate() {
        reception.end.as_ref().unwrap();
        assert_eq!(reception.total(), 4_000_000);
        let measured = reception.steady_rate();
        eprintln!("stream {i}: {}", Rate(measured as u64));
        assert!(
            measured <= per_connection as f64 * (1.0 + TOLERANCE),
            "stream {i} at {} over its cap",
            Rate(measured as u64)
        );
    }
    assert_rate(
        "four streams capped at 25 Mbit/s",
        aggregate_rate(&receptions),
        rate,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_gets_its_connection_cap() {
    let _serial = SERIAL.lock().await;
    let per_connection = 25 * MBIT;
    let server = Server::source(4_000_000).await;
    let config = LinkConfig {
        rate: Some(100 * MBIT),
        per_connection_rate: Some(per_connection),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_rate(
        "one stream capped at 25 Mbit/s",
        reception.steady_rate(),
        per_connection,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_share_the_aggregate_equally() {
    let _serial = SERIAL.lock().await;
    let rate = 100 * MBIT;
    let server = Server::source(3_000_000).await;
    let config = LinkConfig {
        rate: Some(rate),
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let receptions =
        futures::future::join_all((0..4).map(|_| receive(link.addr(), b"", false))).await;
    for (i, reception) in receptions.iter().enumerate() {
        reception.end.as_ref().unwrap();
        assert_rate_within(
            &format!("stream {i} of 4 sharing 100 Mbit/s"),
            reception.steady_rate(),
            rate / 4,
            FAIRNESS,
        );
    }
    assert_rate(
        "four streams sharing 100 Mbit/s",
        aggregate_rate(&receptions),
        rate,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_link_passes_everything() {
    // Serialised too: it is the one test that keeps both cores busy.
    let _serial = SERIAL.lock().await;
    let server = Server::source(50_000_000).await;
    let link = Link::start(server.addr, LinkConfig::default())
        .await
        .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_eq!(reception.total(), 50_000_000);
    let elapsed = reception.last_byte() - reception.first_byte();
    eprintln!(
        "unlimited: {}",
        Rate((50_000_000.0 / elapsed.as_secs_f64()) as u64)
    );
    let stats = link.stats();
    assert_eq!((stats.connections, stats.bytes_down), (1, 50_000_000));
}

#[tokio::test]
async fn connect_latency_delays_the_first_byte() {
    let latency = Duration::from_millis(40);
    let server = Server::source(1_000).await;
    let config = LinkConfig {
        connect_latency: latency,
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    let first = reception.first_byte() - reception.start;
    eprintln!("first byte after {first:?} with {latency:?} connect latency");
    assert!(first >= latency, "{first:?}");
    // A loose sanity bound: a loaded machine may add a lot.
    assert!(first < latency + Duration::from_secs(1), "{first:?}");
}

#[tokio::test]
async fn request_latency_delays_every_request() {
    let latency = Duration::from_millis(30);
    let server = Server::responder(100).await;
    let config = LinkConfig {
        request_latency: latency,
        ..LinkConfig::default()
    };
    let link = Link::start(server.addr, config).await.unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    let mut answer = [0; 100];
    for request in 0..3 {
        let sent = Instant::now();
        stream.write_all(b"GET").await.unwrap();
        stream.read_exact(&mut answer).await.unwrap();
        let took = sent.elapsed();
        eprintln!("request {request}: {took:?} with {latency:?} request latency");
        assert!(took >= latency, "request {request}: {took:?}");
        assert!(
            took < latency + Duration::from_secs(1),
            "request {request}: {took:?}"
        );
    }
    // The half-close passes through: the server answers it and closes.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len(), 100);
    assert_eq!(link.stats().bytes_up, 9);
}

#[tokio::test]
async fn stall_delivers_exactly_n_bytes_then_nothing() {
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::StallAfter(100_000),
        ),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", true).await;
    assert_eq!(reception.total(), 100_000);
    assert_eq!(reception.end.unwrap_err().kind(), io::ErrorKind::TimedOut);
    let stats = link.stats();
    assert_eq!((stats.faults.stalls, stats.faults.total()), (1, 1));
}

#[tokio::test]
async fn stall_at_zero_sends_nothing_and_keeps_the_socket_open() {
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::StallAfter(0)),
    )
    .await
    .unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    let mut buf = [0; 1];
    let read = timeout(QUIET, stream.read(&mut buf)).await;
    assert!(read.is_err(), "{read:?}");
    assert_eq!(link.stats().active, 1);
    // Closing the client ends the stalled connection.
    drop(stream);
    timeout(Duration::from_secs(5), async {
        while link.stats().active > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn reset_delivers_exactly_n_bytes_then_connection_reset() {
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::ResetAfter(123_456),
        ),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 123_456);
    assert_eq!(
        reception.end.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(link.stats().faults.resets, 1);
}

#[tokio::test]
async fn reset_reaches_a_client_that_reads_late_after_its_bytes() {
    // Small enough to sit in the client's receive buffer when the RST comes.
    let server = Server::source(1_000_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::ResetAfter(50_000),
        ),
    )
    .await
    .unwrap();
    let mut stream = TcpStream::connect(link.addr()).await.unwrap();
    while link.stats().faults.resets == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut received = Vec::new();
    let error = stream.read_to_end(&mut received).await.unwrap_err();
    assert_eq!(received.len(), 50_000);
    assert!(received == *pattern(0, 50_000));
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn refused_connection_is_reset_without_reaching_upstream() {
    let server = Server::source(1_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::RefuseConnection),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 0);
    assert_eq!(
        reception.end.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(server.accepted(), 0);
    assert_eq!(link.stats().faults.refusals, 1);
}

#[tokio::test]
async fn black_hole_never_answers_nor_reaches_upstream() {
    let server = Server::responder(10).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::BlackHole),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"GET / HTTP/1.1\r\n\r\n", true).await;
    assert_eq!(reception.total(), 0);
    assert_eq!(reception.end.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert_eq!(server.accepted(), 0);
    let stats = link.stats();
    assert_eq!((stats.faults.black_holes, stats.bytes_up), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_slows_the_connection_after_n_bytes() {
    let _serial = SERIAL.lock().await;
    let (bytes, rate) = (200_000, 100_000);
    let server = Server::source(300_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::TrickleAfter { bytes, rate },
        ),
    )
    .await
    .unwrap();
    let reception = receive(link.addr(), b"", false).await;
    reception.end.as_ref().unwrap();
    assert_eq!(reception.total(), 300_000);
    let fast = reception.reached(bytes).0 - reception.start;
    assert!(
        fast < Duration::from_secs(1),
        "first {bytes} bytes in {fast:?}"
    );
    // Measured from the first trickled slice, which is itself paced.
    assert_rate("trickle", reception.rate_from(bytes + 1), rate);
    assert_eq!(link.stats().faults.trickles, 1);
}

#[tokio::test]
async fn nth_connection_fault_hits_only_that_connection() {
    let server = Server::source(20_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::NthConnection(2),
            FaultAction::ResetAfter(1_000),
        ),
    )
    .await
    .unwrap();
    for index in 1..=3 {
        let reception = receive(link.addr(), b"", false).await;
        if index == 2 {
            assert_eq!(reception.total(), 1_000);
            assert!(reception.end.is_err());
        } else {
            assert_eq!(reception.total(), 20_000, "connection {index}");
            reception.end.unwrap();
        }
    }
    let stats = link.stats();
    assert_eq!((stats.connections, stats.faults.total()), (3, 1));
}

#[tokio::test]
async fn every_nth_connection_fault_hits_every_nth() {
    let server = Server::source(5_000).await;
    let link = Link::start(
        server.addr,
        fault(
            FaultTrigger::EveryNthConnection(2),
            FaultAction::RefuseConnection,
        ),
    )
    .await
    .unwrap();
    for index in 1..=5 {
        let reception = receive(link.addr(), b"", false).await;
        let expected = if index % 2 == 0 { 0 } else { 5_000 };
        assert_eq!(reception.total(), expected, "connection {index}");
    }
    assert_eq!(server.accepted(), 3);
    assert_eq!(link.stats().faults.refusals, 2);
}

#[tokio::test]
async fn new_config_applies_to_new_connections() {
    let server = Server::source(5_000).await;
    let link = Link::start(server.addr, LinkConfig::default())
        .await
        .unwrap();
    let mut open = TcpStream::connect(link.addr()).await.unwrap();
    let mut first = [0; 5_000];
    open.read_exact(&mut first).await.unwrap();
    let refuse = fault(FaultTrigger::EveryConnection, FaultAction::RefuseConnection);
    link.set_config(refuse.clone()).unwrap();
    assert_eq!(link.config(), refuse);
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 0);
    // The connection opened before is untouched.
    assert_eq!(open.read(&mut first).await.unwrap(), 0);
    assert_eq!(link.stats().faults.refusals, 1);
}

#[tokio::test]
async fn invalid_configs_are_refused() {
    let server = Server::source(1).await;
    let invalid = [
        LinkConfig {
            rate: Some(0),
            ..LinkConfig::default()
        },
        LinkConfig {
            per_connection_rate: Some(0),
            ..LinkConfig::default()
        },
        fault(FaultTrigger::NthConnection(0), FaultAction::BlackHole),
        fault(FaultTrigger::EveryNthConnection(0), FaultAction::BlackHole),
        fault(
            FaultTrigger::EveryConnection,
            FaultAction::TrickleAfter { bytes: 1, rate: 0 },
        ),
    ];
    let link = Link::start(server.addr, LinkConfig::default())
        .await
        .unwrap();
    for config in invalid {
        let error = Link::start(server.addr, config.clone()).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{config:?}");
        let error = link.set_config(config.clone()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{config:?}");
    }
    assert_eq!(link.config(), LinkConfig::default());
}

#[tokio::test]
async fn only_loopback_upstreams() {
    // TEST-NET-1: refused before any socket is made, so nothing is sent there.
    let error = Link::start("192.0.2.1:80".parse().unwrap(), LinkConfig::default())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("192.0.2.1:80"), "{error}");
    let link = Link::start("[::1]:9".parse().unwrap(), LinkConfig::default())
        .await
        .unwrap();
    assert!(link.addr().ip().is_loopback());
}

#[tokio::test]
async fn unreachable_upstream_resets_the_client() {
    // A port that was free a moment ago: nothing listens there.
    let vacant = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let link = Link::start(vacant, LinkConfig::default()).await.unwrap();
    let reception = receive(link.addr(), b"", false).await;
    assert_eq!(reception.total(), 0);
    assert_eq!(
        reception.end.unwrap_err().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(link.stats().upstream_errors, 1);
}

#[tokio::test]
async fn shutdown_closes_listener_and_connections() {
    let server = Server::source(1_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::BlackHole),
    )
    .await
    .unwrap();
    let addr = link.addr();
    let mut open = TcpStream::connect(addr).await.unwrap();
    while link.stats().active == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    link.shutdown().await;
    let mut buf = [0; 1];
    let read = timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drop_closes_connections() {
    let server = Server::source(1_000).await;
    let link = Link::start(
        server.addr,
        fault(FaultTrigger::EveryConnection, FaultAction::BlackHole),
    )
    .await
    .unwrap();
    let mut open = TcpStream::connect(link.addr()).await.unwrap();
    while link.stats().active == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(link);
    let mut buf = [0; 1];
    let read = timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
