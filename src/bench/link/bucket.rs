//! Token buckets that pace the link's downstream bytes.

use std::time::Duration;

use tokio::time::Instant;

/// How much sending time a full bucket holds: after an idle spell a connection may
/// send this much of its rate at once. Kept short so the client sees the emulated
/// rate even for small responses, but longer than the ~1 ms granularity of tokio's
/// timer so ordinary timer lateness costs no link time.
pub const BURST_TIME: Duration = Duration::from_millis(10);

/// Most lateness of the emulator itself that is made up for. When a connection
/// sends a slice later than its tokens allowed although it had the bytes in hand
/// (a loaded machine: the timer fired late, or the thread was not scheduled), the
/// link would have sat idle meanwhile and delivered less than its rate; instead
/// the bucket may hold up to this much more than its burst until the connection
/// catches up. Time spent waiting for the upstream to send or the client to read is
/// never made up: a real link idles then too.
pub const MAX_CATCH_UP: Duration = Duration::from_millis(250);

/// Most bytes forwarded in one slice. Every slice takes its tokens separately, so
/// connections sharing the aggregate bucket take turns in slices of at most this
/// size.
pub const MAX_SLICE: usize = 16 * 1024;

/// A token bucket that may go into debt, and that makes up for its takers'
/// lateness.
///
/// [`take`](Bucket::take) always succeeds: it removes the tokens (possibly going
/// below zero) and says when the debt is paid, which is when the bytes may go. So
/// concurrent takers queue in the order they took, each waiting for the bytes
/// reserved before its own — fair without any queue of waiters.
///
/// Refilling stops at the burst, except for tokens earned during lateness that a
/// taker [excused](Bucket::excuse): those are kept (up to [`MAX_CATCH_UP`]) until
/// spent, or until the bucket sits idle for longer than [`BURST_TIME`] after its
/// bytes were due with nobody excusing it.
///
/// Time is passed in (tokio's [`Instant`], so a paused runtime clock works too).
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    tokens: f64,
    /// When tokens were last counted.
    last: Instant,
    /// When the bytes of the last take could go.
    due: Instant,
    /// Lateness excused since the previous take.
    late: Duration,
}

impl Bucket {
    /// A bucket holding `tokens` at `now`.
    pub(super) fn new(tokens: f64, now: Instant) -> Self {
        Self {
            tokens,
            last: now,
            due: now,
            late: Duration::ZERO,
        }
    }

    /// A bucket filled up to the burst of `rate` at `now`.
    pub(super) fn full(rate: u64, now: Instant) -> Self {
        Self::new(burst(rate), now)
    }

    /// Takes `bytes` tokens at `now`, refilling at `rate` bytes/s first; returns when
    /// the bytes may be sent, or `None` if at once.
    ///
    /// The rate is passed on every call so a new rate applies from the next slice.
    pub(super) fn take(&mut self, bytes: usize, rate: u64, now: Instant) -> Option<Instant> {
        debug_assert!(rate > 0, "a zero rate is refused by LinkConfig::validate");
        let rate_f = rate as f64;
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_secs_f64();
            let burst = burst(rate);
            let idle = now
                .saturating_duration_since(self.due)
                .saturating_sub(self.late);
            let cap = if idle > BURST_TIME {
                burst
            } else {
                (burst.max(self.tokens) + self.late.as_secs_f64() * rate_f)
                    .min(burst + MAX_CATCH_UP.as_secs_f64() * rate_f)
            };
            self.tokens = (self.tokens + elapsed * rate_f).min(cap);
            self.last = now;
        }
        self.late = Duration::ZERO;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            self.due = now;
            return None;
        }
        self.due = now + Duration::from_secs_f64(-self.tokens / rate_f);
        Some(self.due)
    }

    /// Excuses `late` of the emulator's own lateness since the previous take: the
    /// tokens earned meanwhile are kept even beyond the burst, up to
    /// [`MAX_CATCH_UP`]. Lateness from several takers since the previous take counts
    /// once, as the longest.
    pub(super) fn excuse(&mut self, late: Duration) {
        self.late = self.late.max(late);
    }
}

/// Tokens a bucket at `rate` holds when full: [`BURST_TIME`] of the rate, at least 1.
fn burst(rate: u64) -> f64 {
    (rate as f64 * BURST_TIME.as_secs_f64()).max(1.0)
}

/// Bytes to forward per slice at `rate`: what the rate sends in [`BURST_TIME`], at
/// least 1 and at most [`MAX_SLICE`], so slow links (a trickle) are paced smoothly
/// and fast ones are not paced in tiny writes.
pub(super) fn slice(rate: u64) -> usize {
    (burst(rate) as usize).clamp(1, MAX_SLICE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Asserts `take` said to wait until `expected`, give or take float rounding.
    #[track_caller]
    fn waits_until(actual: Option<Instant>, expected: Instant) {
        let actual = actual.expect("a wait");
        let error = actual.max(expected) - actual.min(expected);
        assert!(
            error < Duration::from_nanos(10),
            "{actual:?} != {expected:?}"
        );
    }

    #[test]
    fn full_bucket_sends_its_burst_at_once_then_paces() {
        let t0 = Instant::now();
        // 1 MB/s: the burst is 10 kB.
        let mut bucket = Bucket::full(1_000_000, t0);
        assert_eq!(bucket.take(10_000, 1_000_000, t0), None);
        waits_until(bucket.take(1_000, 1_000_000, t0), t0 + ms(1));
        // Debt accumulates: the next taker waits behind the previous one.
        waits_until(bucket.take(2_000, 1_000_000, t0), t0 + ms(3));
    }

    #[test]
    fn oversleeping_is_made_up_by_the_refill() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(0.0, t0);
        waits_until(bucket.take(1_000, 1_000_000, t0), t0 + ms(1));
        // The taker woke 2 ms late: the 2 kB earned meanwhile pay for the next slice.
        assert_eq!(bucket.take(2_000, 1_000_000, t0 + ms(3)), None);
        waits_until(bucket.take(1_000, 1_000_000, t0 + ms(3)), t0 + ms(4));
    }

    #[test]
    fn idle_time_refills_no_more_than_the_burst() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(0.0, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(bucket.take(10_000, 1_000_000, later), None);
        waits_until(
            bucket.take(500, 1_000_000, later),
            later + Duration::from_micros(500),
        );
    }

    #[test]
    fn lateness_of_the_taker_is_made_up() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(0.0, t0);
        waits_until(bucket.take(1_000, 1_000_000, t0), t0 + ms(1));
        // Woke 30 ms late, beyond the 10 ms burst: the 30 kB earned are kept...
        bucket.excuse(ms(30));
        assert_eq!(bucket.take(10_000, 1_000_000, t0 + ms(31)), None);
        // ...until spent, even by takes that excuse nothing.
        assert_eq!(bucket.take(19_000, 1_000_000, t0 + ms(31)), None);
        waits_until(bucket.take(2_000, 1_000_000, t0 + ms(31)), t0 + ms(32));
    }

    #[test]
    fn lateness_credit_is_dropped_when_the_bucket_idles() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(0.0, t0);
        waits_until(bucket.take(1_000, 1_000_000, t0), t0 + ms(1));
        bucket.excuse(ms(30));
        assert_eq!(bucket.take(1_000, 1_000_000, t0 + ms(31)), None);
        // 100 ms without a take that nobody excused: back to the 10 kB burst.
        assert_eq!(bucket.take(9_000, 1_000_000, t0 + ms(131)), None);
        waits_until(bucket.take(2_000, 1_000_000, t0 + ms(131)), t0 + ms(132));
    }

    #[test]
    fn lateness_is_made_up_to_a_limit() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(0.0, t0);
        waits_until(bucket.take(1_000, 1_000_000, t0), t0 + ms(1));
        bucket.excuse(ms(2_000));
        let limit = (MAX_CATCH_UP.as_secs_f64() * 1e6) as usize;
        assert_eq!(bucket.take(limit - 1_000, 1_000_000, t0 + ms(2_001)), None);
        waits_until(
            bucket.take(21_000, 1_000_000, t0 + ms(2_001)),
            t0 + ms(2_011),
        );
    }

    #[test]
    fn waiting_for_the_bucket_is_not_idling() {
        let t0 = Instant::now();
        // Four takers queue 40 ms deep; the last one wakes 20 ms late and excuses it.
        let mut bucket = Bucket::new(0.0, t0);
        for i in 1..=4 {
            waits_until(bucket.take(10_000, 1_000_000, t0), t0 + ms(10 * i));
        }
        bucket.excuse(ms(20));
        assert_eq!(bucket.take(19_000, 1_000_000, t0 + ms(60)), None);
    }

    #[test]
    fn a_new_rate_applies_to_the_next_take() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(0.0, t0);
        waits_until(bucket.take(1_000, 1_000_000, t0), t0 + ms(1));
        // At 100 kB/s the 1 kB debt and 1 kB more take 20 ms.
        waits_until(bucket.take(1_000, 100_000, t0), t0 + ms(20));
    }

    /// Sends 1 MB in slices at 2 MB/s on a simulated clock whose sleeps wake at the
    /// next whole millisecond, as tokio's timer does, and every 50th sleep 40 ms late,
    /// as on a loaded machine: the rate still comes out exact.
    #[test]
    fn paced_takes_send_at_the_rate_despite_late_wakes() {
        let start = Instant::now();
        let rate = 2_000_000;
        let mut bucket = Bucket::new(0.0, start);
        let mut now = start;
        let mut sent = 0;
        let mut sleeps = 0;
        while sent < 1_000_000 {
            let n = slice(rate);
            if let Some(at) = bucket.take(n, rate, now) {
                sleeps += 1;
                let late = if sleeps % 50 == 0 { 40 } else { 0 };
                let wake = (at - start).as_micros().div_ceil(1_000) as u64 + late;
                now = start + ms(wake);
                bucket.excuse(now - at);
            }
            sent += n;
        }
        let elapsed = (now - start).as_secs_f64();
        let expected = sent as f64 / rate as f64;
        assert!(
            (elapsed - expected).abs() < 0.002,
            "{elapsed} s for {expected} s"
        );
    }

    #[rstest]
    #[case(0, 1)]
    #[case(50, 1)]
    #[case(100_000, 1_000)]
    #[case(1_000_000, 10_000)]
    #[case(12_500_000, MAX_SLICE)]
    fn slices(#[case] rate: u64, #[case] bytes: usize) {
        assert_eq!(slice(rate), bytes);
    }
}
