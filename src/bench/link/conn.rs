//! One proxied connection: latency, pacing and faults between a client and the upstream.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};

use super::bucket::{self, Bucket};
use super::{connect_upstream, Counters, Fault, FaultAction, LinkConfig, Shared};

/// Read buffer of a direction that is not paced.
const UNPACED_CHUNK: usize = 64 * 1024;

/// What the faults of a link do to one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Plan {
    refuse: bool,
    black_hole: bool,
    stall_after: Option<u64>,
    reset_after: Option<u64>,
    /// (bytes, rate)
    trickle: Option<(u64, u64)>,
}

impl Plan {
    /// Combines the faults that hit connection `index` as [`Fault`] documents.
    fn new(faults: &[Fault], index: u64) -> Self {
        let mut plan = Plan::default();
        let earliest = |current: Option<u64>, at: u64| Some(current.map_or(at, |c| c.min(at)));
        for fault in faults.iter().filter(|f| f.on.matches(index)) {
            match fault.action {
                FaultAction::RefuseConnection => plan.refuse = true,
                FaultAction::BlackHole => plan.black_hole = true,
                FaultAction::StallAfter(at) => plan.stall_after = earliest(plan.stall_after, at),
                FaultAction::ResetAfter(at) => plan.reset_after = earliest(plan.reset_after, at),
                FaultAction::TrickleAfter { bytes, rate } => {
                    if plan.trickle.is_none_or(|(at, _)| bytes < at) {
                        plan.trickle = Some((bytes, rate));
                    }
                }
            }
        }
        plan
    }
}

/// How the downstream direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownEnd {
    /// The upstream closed; the client was sent FIN.
    Eof,
    /// A stall fault fired.
    Stalled,
    /// A reset fault fired.
    Reset,
}

/// Serves connection number `index` (1-based) with the configuration of its accept.
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    index: u64,
    config: Arc<LinkConfig>,
) {
    let counters = &shared.counters;
    counters.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(counters);
    let plan = Plan::new(&config.faults, index);
    if plan.refuse {
        counters.refusals.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(index, "link refuses connection");
        abort(&client);
        return;
    }
    if let Err(error) = client.set_nodelay(true) {
        tracing::debug!(index, %error, "link: client socket failed");
        return;
    }
    if plan.black_hole {
        counters.black_holes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(index, "link black-holes connection");
        drain(&mut client).await;
        return;
    }
    let (upstream, ()) = tokio::join!(
        connect_upstream(shared.upstream),
        sleep(config.connect_latency)
    );
    let mut upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            counters.upstream_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(index, %error, upstream = %shared.upstream, "link cannot reach upstream");
            abort(&client);
            return;
        }
    };

    // Downstream bytes forwarded so far; the upstream direction watches it to tell
    // when the client starts a new request.
    let sent = AtomicU64::new(0);
    let reset = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let up = forward_up(
            counters,
            config.request_latency,
            client_read,
            upstream_write,
            &sent,
        );
        let down = forward_down(&shared, plan, upstream_read, client_write, &sent);
        tokio::pin!(up, down);
        tokio::select! {
            end = &mut down => match end {
                // The server is done (FIN passed on) or stalled: wait for the client
                // to close its side.
                Ok(DownEnd::Eof | DownEnd::Stalled) => up.await.is_err(),
                Ok(DownEnd::Reset) | Err(_) => true,
            },
            end = &mut up => match end {
                // The client closed its side (FIN passed on): deliver the rest.
                Ok(()) => !matches!(down.await, Ok(DownEnd::Eof | DownEnd::Stalled)),
                Err(_) => true,
            },
        }
    };
    if reset {
        // On a fault, or to pass on an error of either side as a transparent proxy
        // would: RST to the client, and to the upstream too.
        abort(&client);
        abort(&upstream);
    }
    tracing::debug!(
        index,
        reset,
        bytes_down = sent.load(Ordering::Relaxed),
        "link connection closed"
    );
}

/// Forwards client → server, adding the request latency before each request.
async fn forward_up(
    counters: &Counters,
    request_latency: Duration,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    sent: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0; UNPACED_CHUNK];
    // Downstream bytes seen when the previous chunk went up.
    let mut answered_at = None;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        if !request_latency.is_zero() {
            let seen = sent.load(Ordering::Relaxed);
            if answered_at != Some(seen) {
                sleep(request_latency).await;
            }
            answered_at = Some(seen);
        }
        to.write_all(&buf[..n]).await?;
        counters.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Forwards server → client in paced slices, firing the plan's byte-offset faults.
async fn forward_down(
    shared: &Shared,
    plan: Plan,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    sent: &AtomicU64,
) -> io::Result<DownEnd> {
    let counters = &shared.counters;
    let mut buf = vec![0; UNPACED_CHUNK];
    let mut pacer = Pacer::new();
    let mut total = 0u64;
    loop {
        if plan.reset_after == Some(total) {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(total, "link resets connection");
            return Ok(DownEnd::Reset);
        }
        if plan.stall_after == Some(total) {
            counters.stalls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(total, "link stalls connection");
            return Ok(DownEnd::Stalled);
        }
        if let Some((at, rate)) = plan.trickle {
            if at == total {
                counters.trickles.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(total, rate, "link trickles connection");
                pacer.trickle(rate);
            }
        }
        // Never read past the next fault's offset, so it fires exactly there.
        let next_fault = [
            plan.reset_after,
            plan.stall_after,
            plan.trickle.map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .filter(|&at| at > total)
        .min();
        let limit = pacer.slice(shared).min(next_fault.map_or(usize::MAX, |at| {
            usize::try_from(at - total).unwrap_or(usize::MAX)
        }));
        let (read, waited) = timed(from.read(&mut buf[..limit])).await;
        pacer.waited(waited);
        let n = read?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(DownEnd::Eof);
        }
        pacer.pace(shared, n).await;
        let (written, waited) = timed(to.write_all(&buf[..n])).await;
        pacer.waited(waited);
        written?;
        total += n as u64;
        sent.store(total, Ordering::Relaxed);
        counters.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The pacing of one connection's downstream bytes.
struct Pacer {
    /// The connection's own bucket, used while a per-connection rate is set.
    own: Option<Bucket>,
    /// The trickle fault's bucket and rate, once it fired.
    trickle: Option<(Bucket, u64)>,
    /// All the emulator's lateness on this connection so far: oversleeping, and time
    /// between slices not spent waiting for the upstream or the client.
    late: Duration,
    /// `late` when the own, trickle and aggregate buckets were last taken from, if
    /// they were used for the previous slice.
    marks: [Option<Duration>; 3],
    /// When the previous slice was let go.
    released: Option<Instant>,
    /// Time since then spent waiting for the upstream or the client.
    waited: Duration,
}

impl Pacer {
    fn new() -> Self {
        Self {
            own: None,
            trickle: None,
            late: Duration::ZERO,
            marks: [None; 3],
            released: None,
            waited: Duration::ZERO,
        }
    }

    /// Slows the connection to `rate` from now on, without a burst.
    fn trickle(&mut self, rate: u64) {
        self.trickle = Some((Bucket::new(0.0, Instant::now()), rate));
    }

    /// Bytes to read for the next slice: set by the slowest rate in force.
    fn slice(&self, shared: &Shared) -> usize {
        [
            shared.rate(),
            shared.per_connection_rate(),
            self.trickle.as_ref().map(|t| t.1),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(UNPACED_CHUNK, bucket::slice)
    }

    /// Counts time spent waiting for the upstream or the client, which is not the
    /// emulator's lateness.
    fn waited(&mut self, time: Duration) {
        self.waited += time;
    }

    /// Waits until `bytes` may go: first for the connection's own limits, then for
    /// its turn in the aggregate bucket. Taking from the aggregate only once the
    /// connection's own limits let the bytes go keeps the aggregate's reservations
    /// in the order bytes really leave.
    ///
    /// Each bucket is excused the emulator's lateness since it was last taken from
    /// (see [`bucket::MAX_CATCH_UP`]). Waiting for another bucket is not lateness.
    async fn pace(&mut self, shared: &Shared, bytes: usize) {
        if let Some(released) = self.released {
            self.late += released.elapsed().saturating_sub(self.waited);
        }
        self.waited = Duration::ZERO;
        if let Some(rate) = shared.per_connection_rate() {
            let own = self
                .own
                .get_or_insert_with(|| Bucket::full(rate, Instant::now()));
            own.excuse(since(self.late, self.marks[0]));
            let due = own.take(bytes, rate, Instant::now());
            self.marks[0] = Some(self.late);
            self.late += wait(due).await;
        } else {
            self.marks[0] = None;
        }
        if let Some((trickle, rate)) = &mut self.trickle {
            trickle.excuse(since(self.late, self.marks[1]));
            let due = trickle.take(bytes, *rate, Instant::now());
            self.marks[1] = Some(self.late);
            self.late += wait(due).await;
        }
        if let Some(rate) = shared.rate() {
            let due = {
                let mut aggregate = shared.aggregate.lock().unwrap_or_else(|e| e.into_inner());
                aggregate.excuse(since(self.late, self.marks[2]));
                aggregate.take(bytes, rate, Instant::now())
            };
            self.marks[2] = Some(self.late);
            self.late += wait(due).await;
        } else {
            self.marks[2] = None;
        }
        self.released = Some(Instant::now());
    }
}

/// Lateness accrued since `mark`, if the bucket has one.
fn since(late: Duration, mark: Option<Duration>) -> Duration {
    mark.map_or(Duration::ZERO, |mark| late - mark)
}

/// Sleeps until `due`, if any; returns how late it woke.
async fn wait(due: Option<Instant>) -> Duration {
    let Some(due) = due else {
        return Duration::ZERO;
    };
    sleep_until(due).await;
    due.elapsed()
}

/// Runs `future`; returns its output and how long it waited, counted from its first
/// poll that was not ready (so zero for I/O that could complete at once).
async fn timed<F: Future>(future: F) -> (F::Output, Duration) {
    let mut future = pin!(future);
    if let Poll::Ready(output) = futures::poll!(future.as_mut()) {
        return (output, Duration::ZERO);
    }
    let start = Instant::now();
    (future.await, start.elapsed())
}

/// Reads and discards until the client closes: a black hole that still notices
/// when to let go of the socket.
async fn drain(client: &mut TcpStream) {
    let mut buf = vec![0; UNPACED_CHUNK];
    while let Ok(1..) = client.read(&mut buf).await {}
}

/// Makes the next close of `stream` send RST instead of FIN.
fn abort(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        tracing::debug!(%error, "link: cannot set SO_LINGER 0");
    }
}

/// Counts a connection as active while alive.
struct ActiveGuard<'a>(&'a Counters);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::link::FaultTrigger::{self, *};
    use rstest::rstest;

    fn fault(on: FaultTrigger, action: FaultAction) -> Fault {
        Fault { on, action }
    }

    #[rstest]
    #[case(1, Plan::default())]
    #[case(2, Plan { stall_after: Some(100), reset_after: Some(50), ..Plan::default() })]
    #[case(3, Plan { trickle: Some((10, 5)), ..Plan::default() })]
    #[case(4, Plan { reset_after: Some(50), trickle: Some((10, 5)), ..Plan::default() })]
    #[case(6, Plan { refuse: true, black_hole: true, reset_after: Some(50), trickle: Some((10, 5)), ..Plan::default() })]
    fn plans_combine_the_faults_that_hit(#[case] index: u64, #[case] expected: Plan) {
        let faults = [
            fault(NthConnection(2), FaultAction::StallAfter(100)),
            fault(NthConnection(2), FaultAction::StallAfter(200)),
            fault(EveryNthConnection(2), FaultAction::ResetAfter(50)),
            fault(
                EveryNthConnection(3),
                FaultAction::TrickleAfter { bytes: 20, rate: 1 },
            ),
            fault(
                EveryNthConnection(3),
                FaultAction::TrickleAfter { bytes: 10, rate: 5 },
            ),
            fault(
                EveryNthConnection(4),
                FaultAction::TrickleAfter { bytes: 10, rate: 5 },
            ),
            fault(NthConnection(6), FaultAction::BlackHole),
            fault(NthConnection(6), FaultAction::RefuseConnection),
        ];
        assert_eq!(Plan::new(&faults, index), expected);
    }
}
