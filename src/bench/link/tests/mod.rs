//! Tests of the link emulator with real loopback TCP servers and clients: the harness.
//!
//! These check the emulator itself, not ctrpull: rates are measured at the client
//! over the steady-state window (after the first [`WARM_UP`] of the bytes), which
//! leaves out the initial burst and connection set-up. The rate tests take a lock so
//! they do not compete with each other for the machine's two cores.

mod faults;
mod rates;

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
