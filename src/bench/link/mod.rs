//! A link emulator: a loopback TCP proxy that adds bandwidth limits, latency and faults.
//!
//! The pull benchmark puts a [`Link`] between ctrpull and a local registry to emulate
//! a bandwidth tier; fault-injection tests use it to stall or reset connections at
//! chosen byte offsets.
//!
//! ```no_run
//! # async fn demo(registry: std::net::SocketAddr) -> std::io::Result<()> {
//! use ctrpull::bench::link::{parse_rate, Link, LinkConfig};
//!
//! let link = Link::start(registry, LinkConfig {
//!     rate: Some(parse_rate("100mbit").unwrap()),
//!     per_connection_rate: Some(parse_rate("25mbit").unwrap()),
//!     ..LinkConfig::default()
//! })
//! .await?;
//! println!("pull through {}", link.addr());
//! # link.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # What is emulated, and how
//!
//! - **Rates** apply to the downstream direction (upstream server → client), where
//!   image bytes flow; the client's requests pass unpaced. Bytes are read from the
//!   upstream in slices of at most [`MAX_SLICE`]; each slice takes tokens from the
//!   connection's bucket, then from the bucket all connections share (see
//!   [`BURST_TIME`]). Taking is a reservation in arrival order, so connections
//!   share the aggregate fairly. Rates count TCP payload: a real 100 Mbit/s wire
//!   carries about 95 Mbit/s of payload after Ethernet, IP and TCP headers, so a
//!   tier of "100mbit" here is ~5% more generous than that wire.
//! - **The emulator's own lateness is made up for** (up to [`MAX_CATCH_UP`]): on a
//!   loaded machine tokio's timer and threads run milliseconds late, and a link
//!   that idled meanwhile would deliver noticeably less than its rate. Time spent
//!   waiting for the upstream or the client is not made up, as on a real link.
//! - The proxy's client sockets have [`SOCKET_BUFFER`]-sized kernel buffers, so a client
//!   that pauses gets little more than that at loopback speed before the pacing
//!   shows again (its own receive buffer is its own, as on a real link).
//! - **Latency**: [`LinkConfig::connect_latency`] once per connection,
//!   [`LinkConfig::request_latency`] once per request/response turn.
//! - **Faults** ([`Fault`]) are chosen per connection when it is accepted.
//!
//! Only loopback: the proxy binds 127.0.0.1 and refuses upstreams that are not
//! loopback addresses.

mod bucket;
mod conn;
mod rate;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use bucket::{BURST_TIME, MAX_CATCH_UP, MAX_SLICE};
pub use rate::{parse_rate, Rate};

use bucket::Bucket;

/// Requested size of the kernel buffers of the proxy's client-facing sockets
/// (Linux doubles it). Small, so paced bytes wait in the emulator rather than in a
/// kernel buffer that would release them to a client in a burst after a pause.
pub const SOCKET_BUFFER: u32 = 64 * 1024;

/// Requested size of the kernel receive buffer of the proxy's upstream sockets. Large,
/// so the next slice is already there when the pacing lets it go: a read that has
/// to wait for the upstream counts as the upstream's slowness, not the emulator's
/// lateness, and on a loaded machine such waits would otherwise cost link time. It
/// only lets the upstream send further ahead; what the client sees is paced after
/// it.
pub const UPSTREAM_BUFFER: u32 = 1024 * 1024;

/// How the link behaves. The default is a transparent proxy: no limits, no latency,
/// no faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkConfig {
    /// Bytes/s of all connections together, downstream (server → client); `None`
    /// (the default) is unlimited. Connections share it in turns of one slice, so
    /// they get equal shares unless their own cap is lower.
    pub rate: Option<u64>,
    /// Bytes/s cap of each connection, downstream: the per-flow limit a WAN path or
    /// a CDN imposes. `None` (the default) is unlimited.
    pub per_connection_rate: Option<u64>,
    /// Added once per connection, after it is accepted and before the first byte is
    /// exchanged: the client's connect succeeds at once (the kernel completes the
    /// handshake) but its first request reaches the upstream this much later, so it
    /// sees the first byte late. Zero by default.
    pub connect_latency: Duration,
    /// Added before forwarding a client → server chunk that starts a new request:
    /// the first chunk of a connection, and every chunk the client sends after it
    /// has received downstream bytes since its previous chunk. That is one delay per
    /// request/response turn of HTTP/1.1 (and per client flight of a TLS
    /// handshake); pipelined requests or HTTP/2 multiplexing get fewer delays than a
    /// real path would give them. A chunk is delayed on its own, without delaying
    /// bytes already flowing downstream. Zero by default.
    pub request_latency: Duration,
    /// Faults to inject; empty by default. See [`Fault`] for how several combine.
    pub faults: Vec<Fault>,
}

impl LinkConfig {
    /// Checks the settings: rates and fault counts must be at least 1.
    pub fn validate(&self) -> io::Result<()> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.rate == Some(0) {
            return invalid("link rate of 0 bytes/s; use None for unlimited".into());
        }
        if self.per_connection_rate == Some(0) {
            return invalid("link per_connection_rate of 0 bytes/s; use None for unlimited".into());
        }
        for (index, fault) in self.faults.iter().enumerate() {
            match fault.on {
                FaultTrigger::NthConnection(0) | FaultTrigger::EveryNthConnection(0) => {
                    return invalid(format!(
                        "link fault #{index} ({fault:?}) counts connections from 1, not 0"
                    ));
                }
                _ => {}
            }
            if let FaultAction::TrickleAfter { rate: 0, .. } = fault.action {
                return invalid(format!(
                    "link fault #{index} ({fault:?}) trickles at 0 bytes/s; use StallAfter"
                ));
            }
        }
        Ok(())
    }
}

/// A fault injected on the connections its trigger selects.
///
/// When several faults select one connection, all apply: a refusal wins over a
/// black hole; of the byte-offset faults the one with the lowest offset fires
/// first (a reset before a stall at the same offset), and after a stall or reset
/// nothing else happens. Of several trickles the one with the lowest offset wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Which connections.
    pub on: FaultTrigger,
    /// What happens to them.
    pub action: FaultAction,
}

/// Which connections a [`Fault`] hits, counted 1, 2, 3… in the order the link
/// accepted them (refused and black-holed connections count too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTrigger {
    /// Every connection.
    EveryConnection,
    /// Only the nth connection (1-based).
    NthConnection(u64),
    /// Connections n, 2n, 3n… (n ≥ 1).
    EveryNthConnection(u64),
}

impl FaultTrigger {
    /// Whether the connection numbered `index` (1-based) is hit.
    pub fn matches(self, index: u64) -> bool {
        match self {
            FaultTrigger::EveryConnection => true,
            FaultTrigger::NthConnection(n) => index == n,
            // n = 0 (refused by validate) matches nothing: connections count from 1.
            FaultTrigger::EveryNthConnection(n) => index.is_multiple_of(n),
        }
    }
}

/// What a [`Fault`] does to a connection. Byte counts are downstream payload bytes
/// forwarded to the client on that connection; the emulator never forwards more
/// than that before the fault fires, whatever the slice size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// After this many bytes, forward nothing more downstream while keeping both
    /// sockets open (client → server bytes still pass), until the client closes.
    /// Closing here includes a client's half-close: a stalled connection has nothing
    /// more to deliver.
    StallAfter(u64),
    /// After this many bytes, close the client socket abruptly: `SO_LINGER` 0, so
    /// the kernel sends RST. A client that kept reading gets exactly these bytes,
    /// then a read fails with [`io::ErrorKind::ConnectionReset`]; bytes it had not
    /// read from its own receive buffer by then are still delivered first on Linux.
    /// The upstream connection is closed too.
    ResetAfter(u64),
    /// After `bytes` bytes, the connection slows to `rate` bytes/s (on top of the
    /// other limits, and without a burst at the switch).
    TrickleAfter {
        /// Bytes forwarded at the normal rate first.
        bytes: u64,
        /// Bytes/s afterwards; at least 1.
        rate: u64,
    },
    /// Accept the connection, then close it at once with RST without connecting
    /// upstream: the client's connect succeeds and its first read fails with
    /// [`io::ErrorKind::ConnectionReset`] (a write may instead fail with
    /// `ConnectionReset` or `BrokenPipe`).
    RefuseConnection,
    /// Accept the connection and never answer: nothing is forwarded, no upstream
    /// connection is made, the socket stays open until the client closes it.
    BlackHole,
}

/// What a [`Link`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections still open.
    pub active: u64,
    /// Payload bytes forwarded to clients.
    pub bytes_down: u64,
    /// Payload bytes forwarded to the upstream.
    pub bytes_up: u64,
    /// Connections whose upstream connect failed (the client got RST).
    pub upstream_errors: u64,
    /// Faults that fired, by kind.
    pub faults: FaultStats,
}

/// Faults that fired on a [`Link`], by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultStats {
    /// Connections stalled ([`FaultAction::StallAfter`]).
    pub stalls: u64,
    /// Connections reset ([`FaultAction::ResetAfter`]).
    pub resets: u64,
    /// Connections slowed ([`FaultAction::TrickleAfter`]).
    pub trickles: u64,
    /// Connections refused ([`FaultAction::RefuseConnection`]).
    pub refusals: u64,
    /// Connections black-holed ([`FaultAction::BlackHole`]).
    pub black_holes: u64,
}

impl FaultStats {
    /// All faults that fired.
    pub fn total(&self) -> u64 {
        self.stalls + self.resets + self.trickles + self.refusals + self.black_holes
    }
}

/// A running link emulator: a proxy on 127.0.0.1 in front of one upstream.
///
/// Dropping it aborts the proxy's tasks, which closes every connection (without
/// waiting); [`shutdown`](Link::shutdown) does the same and waits until they are
/// closed.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Link {
    /// Starts a proxy on 127.0.0.1 (a free port) in front of `upstream`, which must
    /// be a loopback address. Fails on an invalid configuration
    /// ([`LinkConfig::validate`]), a non-loopback upstream (both
    /// [`io::ErrorKind::InvalidInput`]) or when it cannot listen.
    pub async fn start(upstream: SocketAddr, config: LinkConfig) -> io::Result<Link> {
        if !upstream.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("link upstream {upstream} is not a loopback address; the link emulator only proxies on loopback"),
            ));
        }
        config.validate()?;
        let socket = TcpSocket::new_v4()?;
        // Accepted sockets inherit these buffer sizes from the listener.
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(upstream, config));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        tracing::debug!(%addr, %upstream, "link started");
        Ok(Link {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream the link forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The current configuration.
    pub fn config(&self) -> LinkConfig {
        LinkConfig::clone(&self.shared.config())
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.shared.counters.snapshot()
    }

    /// Replaces the configuration. Latency and faults apply to connections accepted
    /// from now on; the two rates apply at once, to open connections too (from
    /// their next slice). Fails, changing nothing, if the configuration is invalid
    /// ([`LinkConfig::validate`]).
    pub fn set_config(&self, config: LinkConfig) -> io::Result<()> {
        config.validate()?;
        self.shared.set_rates(&config);
        *self.shared.config.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Stops listening, closes every connection and waits until they are closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting drops the accept loop's JoinSet, which aborts the connections.
            task.abort();
        }
    }
}

/// State shared by the accept loop, the connections and the [`Link`] handle.
#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    config: Mutex<Arc<LinkConfig>>,
    /// [`LinkConfig::rate`], 0 for unlimited; read on every slice.
    rate: AtomicU64,
    /// [`LinkConfig::per_connection_rate`], 0 for unlimited; read on every slice.
    per_connection_rate: AtomicU64,
    /// The bucket all connections take from when `rate` is set. The lock is only
    /// held to take tokens, never across an await.
    aggregate: Mutex<Bucket>,
    counters: Counters,
}

impl Shared {
    fn new(upstream: SocketAddr, config: LinkConfig) -> Self {
        let shared = Self {
            upstream,
            rate: AtomicU64::new(0),
            per_connection_rate: AtomicU64::new(0),
            aggregate: Mutex::new(Bucket::full(
                config.rate.unwrap_or(1),
                tokio::time::Instant::now(),
            )),
            config: Mutex::new(Arc::new(config)),
            counters: Counters::default(),
        };
        shared.set_rates(&shared.config());
        shared
    }

    fn config(&self) -> Arc<LinkConfig> {
        Arc::clone(&self.config.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_rates(&self, config: &LinkConfig) {
        self.rate.store(config.rate.unwrap_or(0), Ordering::Relaxed);
        self.per_connection_rate
            .store(config.per_connection_rate.unwrap_or(0), Ordering::Relaxed);
    }

    fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }

    fn per_connection_rate(&self) -> Option<u64> {
        Some(self.per_connection_rate.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }
}

/// The atomics behind [`LinkStats`].
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    active: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    upstream_errors: AtomicU64,
    stalls: AtomicU64,
    resets: AtomicU64,
    trickles: AtomicU64,
    refusals: AtomicU64,
    black_holes: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> LinkStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkStats {
            connections: get(&self.connections),
            active: get(&self.active),
            bytes_down: get(&self.bytes_down),
            bytes_up: get(&self.bytes_up),
            upstream_errors: get(&self.upstream_errors),
            faults: FaultStats {
                stalls: get(&self.stalls),
                resets: get(&self.resets),
                trickles: get(&self.trickles),
                refusals: get(&self.refusals),
                black_holes: get(&self.black_holes),
            },
        }
    }
}

/// Accepts connections until told to stop, each served by its own task.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let index = shared.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    let config = shared.config();
                    connections.spawn(conn::serve(Arc::clone(&shared), client, index, config));
                }
                Err(error) => {
                    // Out of descriptors, typically: back off instead of spinning.
                    tracing::warn!(%error, "link accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Connects to the upstream with the proxy's socket buffer sizes ([`UPSTREAM_BUFFER`]).
async fn connect_upstream(upstream: SocketAddr) -> io::Result<TcpStream> {
    let socket = if upstream.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.set_recv_buffer_size(UPSTREAM_BUFFER)?;
    let stream = socket.connect(upstream).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests;
