//! Concurrency: a fixed number, one sized to a bandwidth tier, or tuned at run time.
//!
//! The tuner starts at [`AUTO_START`] connections and doubles them while the run's
//! total throughput still rises meaningfully, requests are queueing and enough of
//! the run is left for a step to be judged ([`CLIMB_HORIZON`]); it steps back
//! when throughput does not rise by [`MIN_GAIN`] after a step, or when endpoints
//! start failing (429, 5xx, resets). It looks often (every [`TUNE_INTERVAL`])
//! because most pulls are over in seconds: a tuner that needs many seconds to find
//! the link's width only ever helps the biggest images.

use std::sync::Arc;
use std::time::Duration;

use super::scheduler::Scheduler;

/// Connections the tuner starts with: as many as fill a 1 Gbit/s link at a
/// 100 Mbit/s per-flow cap with room for request gaps (14, see [`for_bandwidth`]),
/// rounded to a power of two, and few enough for any registry. Starting lower costs
/// a gigabit pull its first half second below the link: a step is judged only one
/// interval after the interval it was taken in.
pub const AUTO_START: usize = 16;
/// The tuner never goes above this.
pub const AUTO_MAX: usize = 64;
/// How often the tuner looks at throughput. A step is judged one interval after
/// the interval it was taken in, so new connections have had their connect and
/// first-request round trips before they count.
pub const TUNE_INTERVAL: Duration = Duration::from_millis(250);
/// A step up is kept only if throughput rose by at least this fraction; otherwise
/// the limit goes back to where the step started.
pub const MIN_GAIN: f64 = 0.10;
/// No step up when the bytes not yet requested would take less than this at the
/// current throughput: the step could not be judged (that takes two intervals)
/// before the work runs out, and its new connections would only pay their connect
/// and request round trips and cut the run's last bytes into smaller requests.
pub const CLIMB_HORIZON: Duration = TUNE_INTERVAL.saturating_mul(2);

const MBIT: f64 = 1e6 / 8.0;

/// Connections for a link of `rate` bytes/s, with the reason.
///
/// One TCP flow through a WAN or CDN edge rarely gets the whole link: about 25 Mbit/s
/// on 100 Mbit/s links, 100 Mbit/s on gigabit links and 400 Mbit/s on 10 Gbit/s ones
/// (the per-flow caps the benchmark tiers emulate). Enough flows to fill the link at
/// those caps, plus a quarter for the round trip between one Range request and the
/// next on each connection, plus one for the small blobs.
pub fn for_bandwidth(rate: u64) -> (usize, String) {
    let rate = rate as f64;
    let per_flow = if rate <= 200.0 * MBIT {
        25.0 * MBIT
    } else if rate <= 2000.0 * MBIT {
        100.0 * MBIT
    } else {
        400.0 * MBIT
    };
    let flows = (rate / per_flow).ceil().max(1.0);
    let connections = ((flows * 1.25).ceil() as usize + 1).clamp(2, AUTO_MAX);
    let reason = format!(
        "{connections} connections: {:.0} Mbit/s at about {:.0} Mbit/s per flow needs {flows:.0} flows, \
         plus a quarter for request gaps and one for small blobs",
        rate / MBIT,
        per_flow / MBIT
    );
    (connections, reason)
}

/// The tuner's state machine, separate from time and I/O so it can be tested alone.
#[derive(Debug, Clone)]
pub struct Tuner {
    limit: usize,
    max: usize,
    /// Throughput before the last step up, and the limit then.
    before_step: Option<(f64, usize)>,
    /// Stop climbing once a step brought too little.
    settled: bool,
    /// The interval right after a step: new connections are still starting.
    warming: bool,
    last_failures: u64,
}

/// What the tuner decided at a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new connection limit.
    pub limit: usize,
    /// Why, for the log and the report.
    pub reason: String,
}

impl Tuner {
    /// A tuner starting at `start` connections, never above `max`.
    pub fn new(start: usize, max: usize) -> Self {
        Tuner {
            limit: start.max(1),
            max: max.max(1),
            before_step: None,
            settled: false,
            warming: false,
            last_failures: 0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One look at the run: `throughput` in bytes/s over the last interval, whether
    /// requests are queueing for a slot, the count of endpoint failures so far, and
    /// the run's bytes not yet requested.
    pub fn tick(
        &mut self,
        throughput: f64,
        queueing: bool,
        failures: u64,
        unplanned: u64,
    ) -> Option<Decision> {
        if failures > self.last_failures {
            self.last_failures = failures;
            if self.limit > 1 {
                self.limit = (self.limit / 2).max(1);
                self.before_step = None;
                self.settled = true;
                return Some(Decision {
                    limit: self.limit,
                    reason: "endpoints are failing or asking to slow down: halving".into(),
                });
            }
            return None;
        }
        if std::mem::take(&mut self.warming) {
            return None;
        }
        if let Some((previous, previous_limit)) = self.before_step.take() {
            if !queueing {
                // Nothing waits for a connection: the work ran out during the step
                // (the end of a pull), or something else bounds the requests in
                // flight (the reorder memory, held by a slow head chunk). Whatever
                // throughput did says nothing about the step; it stays, but more
                // connections would not be used either: climbing stops.
                self.settled = true;
                return None;
            }
            if throughput < previous * (1.0 + MIN_GAIN) {
                // The step did not pay: back to where it started, and no more
                // climbing. Connections that move no more bytes still cost: the
                // reorder memory is shared out over them (smaller chunks), so the
                // run takes more requests, each with its round trip and the
                // registry's own work, and its last pieces get smaller too.
                self.settled = true;
                self.limit = previous_limit;
                let change = if throughput < previous {
                    "fell"
                } else {
                    "barely rose"
                };
                return Some(Decision {
                    limit: self.limit,
                    reason: format!(
                        "throughput {change} from {:.1} to {:.1} MB/s after the last step: back to {}",
                        previous / 1e6,
                        throughput / 1e6,
                        self.limit
                    ),
                });
            }
            // The step paid off: allowed to climb again.
            self.settled = false;
        }
        if self.settled || !queueing || self.limit >= self.max || throughput <= 0.0 {
            return None;
        }
        if (unplanned as f64) < throughput * CLIMB_HORIZON.as_secs_f64() {
            // Not settled: a run that gets more work (another image) may climb.
            return None;
        }
        let next = (self.limit * 2).min(self.max);
        self.before_step = Some((throughput, self.limit));
        self.warming = true;
        self.limit = next;
        Some(Decision {
            limit: next,
            reason: format!(
                "{:.1} MB/s with requests queueing: trying {next} connections",
                throughput / 1e6
            ),
        })
    }
}

/// Runs the tuner against `scheduler` until the returned handle is dropped.
pub(crate) fn spawn(
    scheduler: Arc<Scheduler>,
    max: usize,
    failures: impl Fn() -> u64 + Send + 'static,
) -> super::AbortOnDrop<()> {
    super::AbortOnDrop(tokio::spawn(async move {
        let mut tuner = Tuner::new(scheduler.connection_limit(), max);
        let mut last_bytes = scheduler.bytes();
        let mut ticker = tokio::time::interval(TUNE_INTERVAL);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let bytes = scheduler.bytes();
            if last_bytes == 0 {
                // Nothing had arrived when this interval began: it holds the resolve
                // and connection set-up, and would make the first step look like a
                // gain whatever the link. Judging starts with the next one.
                last_bytes = bytes;
                continue;
            }
            let throughput = (bytes - last_bytes) as f64 / TUNE_INTERVAL.as_secs_f64();
            last_bytes = bytes;
            let queueing = scheduler.waiting() > 0;
            let look = tuner.tick(
                throughput,
                queueing,
                failures(),
                scheduler.unplanned_bytes(),
            );
            if let Some(decision) = look {
                tracing::info!(
                    connections = decision.limit,
                    "concurrency: {}",
                    decision.reason
                );
                scheduler.set_connection_limit(decision.limit);
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes left to request: more than any test's throughput takes a horizon for.
    const PLENTY: u64 = 1 << 40;

    #[test]
    fn bandwidth_table() {
        assert_eq!(for_bandwidth(12_500_000).0, 6);
        assert_eq!(for_bandwidth(125_000_000).0, 14);
        assert_eq!(for_bandwidth(1_250_000_000).0, 33);
        assert_eq!(for_bandwidth(1_000_000).0, 3);
        assert!(for_bandwidth(12_500_000).1.contains("25 Mbit/s per flow"));
    }

    #[test]
    fn climbs_while_it_pays_and_stops_when_it_does_not() {
        let mut tuner = Tuner::new(4, 64);
        let up = tuner.tick(10e6, true, 0, PLENTY).unwrap();
        assert_eq!(up.limit, 8);
        // The interval after a step is not judged, whatever it shows.
        assert_eq!(tuner.tick(1e6, true, 0, PLENTY), None);
        assert_eq!(tuner.tick(13e6, true, 0, PLENTY).unwrap().limit, 16);
        assert_eq!(tuner.tick(13e6, true, 0, PLENTY), None);
        // +3%: the step did not pay; back to 8, and no more climbing.
        let back = tuner.tick(13.4e6, true, 0, PLENTY).unwrap();
        assert_eq!(back.limit, 8);
        assert!(back.reason.contains("barely rose"), "{}", back.reason);
        assert_eq!(tuner.limit(), 8);
        assert_eq!(tuner.tick(13.4e6, true, 0, PLENTY), None);
        assert_eq!(tuner.tick(20e6, true, 0, PLENTY), None);
    }

    #[test]
    fn steps_back_when_throughput_falls() {
        let mut tuner = Tuner::new(4, 64);
        tuner.tick(10e6, true, 0, PLENTY);
        assert_eq!(tuner.tick(8e6, true, 0, PLENTY), None, "warming up");
        let back = tuner.tick(8e6, true, 0, PLENTY).unwrap();
        assert_eq!(back.limit, 4);
        assert!(back.reason.contains("fell"), "{}", back.reason);
    }

    #[test]
    fn a_step_judged_as_the_work_runs_out_stays() {
        let mut tuner = Tuner::new(8, 64);
        assert_eq!(tuner.tick(90e6, true, 0, PLENTY).unwrap().limit, 16);
        assert_eq!(tuner.tick(90e6, true, 0, PLENTY), None, "warming up");
        // The pull is ending: nothing queues and throughput drops.
        assert_eq!(tuner.tick(45e6, false, 0, PLENTY), None);
        assert_eq!(tuner.limit(), 16);
        // Requests queueing again later do not start another climb: the step that
        // could not be judged is where it stops.
        assert_eq!(tuner.tick(90e6, true, 0, PLENTY), None);
        assert_eq!(tuner.limit(), 16);
    }

    #[test]
    fn does_not_climb_when_the_work_left_ends_before_a_step_could_be_judged() {
        let mut tuner = Tuner::new(16, 64);
        // 125 MB/s with 20 MB left: 0.16 s of work, under the horizon.
        assert_eq!(tuner.tick(125e6, true, 0, 20_000_000), None);
        assert_eq!(tuner.limit(), 16);
        // More work arrives (another image): climbing resumes.
        assert_eq!(tuner.tick(125e6, true, 0, 400_000_000).unwrap().limit, 32);
    }

    #[test]
    fn only_climbs_when_requests_queue() {
        let mut tuner = Tuner::new(4, 64);
        assert_eq!(tuner.tick(10e6, false, 0, PLENTY), None);
        assert_eq!(tuner.tick(0.0, true, 0, PLENTY), None);
        assert_eq!(tuner.limit(), 4);
    }

    #[test]
    fn halves_on_failures_and_respects_the_maximum() {
        let mut tuner = Tuner::new(16, 20);
        assert_eq!(tuner.tick(10e6, true, 0, PLENTY).unwrap().limit, 20);
        let down = tuner.tick(10e6, true, 3, PLENTY).unwrap();
        assert_eq!(down.limit, 10);
        assert!(down.reason.contains("halving"));
        assert_eq!(
            tuner.tick(10e6, true, 3, PLENTY),
            None,
            "settled after failures"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_raises_the_scheduler_limit_while_throughput_grows() {
        let scheduler = Arc::new(Scheduler::new(AUTO_START, 1 << 20));
        let _left = scheduler.unplanned(10 << 30);
        // Requests queue: hold every slot and wait for one more.
        let mut held = Vec::new();
        for _ in 0..AUTO_START {
            held.push(scheduler.connection().await);
        }
        let waiter = {
            let scheduler = scheduler.clone();
            tokio::spawn(async move { scheduler.connection().await })
        };
        tokio::task::yield_now().await;
        let _tuner = spawn(scheduler.clone(), AUTO_MAX, || 0);
        for second in 1..=3u64 {
            scheduler.add_bytes(10_000_000 * second);
            tokio::time::advance(TUNE_INTERVAL).await;
            tokio::task::yield_now().await;
            if second == 1 {
                // The interval in which the first bytes arrived is not judged.
                assert_eq!(scheduler.connection_limit(), AUTO_START);
            }
        }
        assert!(
            scheduler.connection_limit() > AUTO_START,
            "{}",
            scheduler.connection_limit()
        );
        assert!(waiter.await.is_ok());
    }
}
