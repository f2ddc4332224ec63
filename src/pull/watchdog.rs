//! Per-request progress: a request that still trickles bytes, far slower than its
//! peers for a sustained window, counts as stalled (containerd#11650: a lossy link
//! that keeps trickling defeats a no-bytes timeout and holds a pull for an hour).
//! Only that request is abandoned; its remaining range is fetched elsewhere.
//!
//! A request that delivers nothing at all is caught sooner by the HTTP client's
//! read timeout (`--progress-timeout`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a request is watched before it can be judged, and the window its recent
/// rate is measured over.
pub const TRICKLE_WINDOW: Duration = Duration::from_secs(10);
/// A request slower than this fraction of its peers' typical rate over a whole
/// window is abandoned.
pub const TRICKLE_FRACTION: f64 = 0.1;
/// Below this rate (bytes/s) a request is abandoned even with no peers to compare:
/// nothing real is that slow for ten seconds.
pub const TRICKLE_FLOOR: f64 = 1024.0;
/// A request that falls below this fraction of its own best one-second rate for a
/// whole window has degraded (an endpoint that starts trickling mid-transfer), even
/// when every request of the run trickles and there is no faster peer to compare.
pub const SELF_FRACTION: f64 = 0.02;
/// The span the best rate of a request is measured over.
const PEAK_SPAN: Duration = Duration::from_secs(1);

/// Typical per-request rate across the run, learned from finished requests.
#[derive(Debug, Default)]
pub struct PeerRates {
    /// Exponentially weighted mean of finished requests' rates, bytes/s.
    typical: Mutex<Option<f64>>,
}

impl PeerRates {
    /// Records a finished request that moved `bytes` in `elapsed`.
    pub fn record(&self, bytes: u64, elapsed: Duration) {
        // Tiny requests say more about latency than about the link.
        if bytes < 256 << 10 || elapsed.is_zero() {
            return;
        }
        let rate = bytes as f64 / elapsed.as_secs_f64();
        let mut typical = self.typical.lock().unwrap();
        *typical = Some(match *typical {
            None => rate,
            Some(previous) => previous * 0.8 + rate * 0.2,
        });
    }

    /// The typical rate of a finished request so far, bytes/s; `None` before any
    /// big enough to tell.
    pub fn typical(&self) -> Option<f64> {
        *self.typical.lock().unwrap()
    }

    /// The rate below which a request is trickling, bytes/s.
    pub fn floor(&self) -> f64 {
        let typical = *self.typical.lock().unwrap();
        typical.map_or(TRICKLE_FLOOR, |t| (t * TRICKLE_FRACTION).max(TRICKLE_FLOOR))
    }
}

/// Watches one request's body.
#[derive(Debug)]
pub struct Watchdog {
    started: Instant,
    /// Bytes seen at the start of the current window, and when it started.
    window: (u64, Instant),
    /// Bytes seen at the start of the current peak span, and when it started.
    span: (u64, Instant),
    /// The best rate over any peak span so far, bytes/s.
    peak: f64,
    bytes: u64,
}

impl Watchdog {
    /// Starts watching a request now.
    pub fn new() -> Self {
        let now = Instant::now();
        Watchdog {
            started: now,
            window: (0, now),
            span: (0, now),
            peak: 0.0,
            bytes: 0,
        }
    }

    /// Counts `n` more bytes; `Err(reason)` when the request has trickled below
    /// `floor` bytes/s for a whole window.
    pub fn progress(&mut self, n: u64, floor: f64) -> Result<(), String> {
        self.bytes += n;
        let now = Instant::now();
        let (span_bytes, span_start) = self.span;
        if now - span_start >= PEAK_SPAN {
            let rate = (self.bytes - span_bytes) as f64 / (now - span_start).as_secs_f64();
            self.peak = self.peak.max(rate);
            self.span = (self.bytes, now);
        }
        let floor = floor.max(self.peak * SELF_FRACTION);
        let (window_bytes, window_start) = self.window;
        let span = now - window_start;
        if span < TRICKLE_WINDOW {
            return Ok(());
        }
        let rate = (self.bytes - window_bytes) as f64 / span.as_secs_f64();
        self.window = (self.bytes, now);
        if rate < floor {
            return Err(format!(
                "trickling at {rate:.0} B/s for {:.0?}, far below the {floor:.0} B/s it or its peers made",
                span
            ));
        }
        Ok(())
    }

    /// Time since the request started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Bytes seen.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Default for Watchdog {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_caught_after_a_window() {
        let peers = PeerRates::default();
        peers.record(4 << 20, Duration::from_secs(1)); // peers make ~4 MiB/s
        let floor = peers.floor();
        assert!((floor - 0.1 * (4 << 20) as f64).abs() < 1.0);
        let mut dog = Watchdog::new();
        // 10 KB/s for 9 s: not judged yet.
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(dog.progress(10_000, floor).is_ok());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let reason = dog.progress(10_000, floor).unwrap_err();
        assert!(reason.contains("trickling"), "{reason}");
        assert_eq!(dog.bytes(), 100_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_request_is_left_alone() {
        let peers = PeerRates::default();
        peers.record(4 << 20, Duration::from_secs(1));
        let mut dog = Watchdog::new();
        for _ in 0..60 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert!(dog.progress(1 << 20, peers.floor()).is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_peers_only_the_absolute_floor_applies() {
        let peers = PeerRates::default();
        assert_eq!(peers.floor(), TRICKLE_FLOOR);
        let mut dog = Watchdog::new();
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(
                dog.progress(2048, peers.floor()).is_ok(),
                "2 KiB/s is slow but real"
            );
        }
        let mut dog = Watchdog::new();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(dog.progress(100, peers.floor()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_degrades_is_caught_without_peers() {
        let peers = PeerRates::default();
        let mut dog = Watchdog::new();
        // 1 MiB in the first second, then 10 KB/s: every request of the run could
        // look like this, so there is no peer rate; its own start gives it away.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(dog.progress(1 << 20, peers.floor()).is_ok());
        let mut caught = None;
        for second in 2..=25 {
            tokio::time::advance(Duration::from_secs(1)).await;
            if let Err(reason) = dog.progress(10_000, peers.floor()) {
                caught = Some((second, reason));
                break;
            }
        }
        let (second, reason) = caught.expect("the trickle is caught");
        assert!(second <= 20, "caught only after {second} s");
        assert!(reason.contains("trickling"), "{reason}");
    }

    #[tokio::test(start_paused = true)]
    async fn sharing_the_link_with_more_peers_is_not_a_trickle() {
        let peers = PeerRates::default();
        let mut dog = Watchdog::new();
        // Alone at first (12 MB/s), then one of ten sharing the link (1.2 MB/s).
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(dog.progress(12_000_000, peers.floor()).is_ok());
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(dog.progress(1_200_000, peers.floor()).is_ok());
        }
    }

    #[test]
    fn tiny_requests_do_not_teach_the_peer_rate() {
        let peers = PeerRates::default();
        peers.record(1000, Duration::from_millis(1));
        assert_eq!(peers.floor(), TRICKLE_FLOOR);
        peers.record(1 << 20, Duration::from_secs(1));
        peers.record(1 << 20, Duration::from_millis(500));
        let floor = peers.floor();
        assert!(floor > 100_000.0 && floor < 210_000.0, "{floor}");
    }
}
