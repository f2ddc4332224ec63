//! The plan of a chunked blob download: which Range requests cover the blob, and the
//! pipeline that runs them ahead of the writer and hands their results back in order.

use std::future::Future;

use futures::stream::{self, Stream, StreamExt};

/// The smallest Range request a blob is cut into while much of the run is left:
/// blobs are fetched as ranges from twice this size, and a reorder budget spread
/// over many connections never cuts below it.
pub const MIN_CHUNK: u64 = 1 << 20;

/// The smallest Range request at all: the run's last pieces, once what is left
/// shared out over the connections is under [`MIN_CHUNK`]. Small enough that the
/// last bytes of a run keep every connection busy (at 25 Mbit/s per connection a
/// 1 MiB piece alone takes a third of a second), big enough that a request's round
/// trip stays a fraction of its transfer.
pub const TAIL_CHUNK: u64 = 256 << 10;

/// The least time a Range request's transfer should take at the rate the run's
/// requests get. A request costs more than its bytes: a round trip before its first
/// byte, and the server's own work (a distribution registry spends a few
/// milliseconds of CPU on every blob request whatever its size: 0.9 s for 256
/// requests of 256 KiB, 0.08 s for 16 of 4 MiB, the same 64 MiB). On a fast link
/// the tail's [`TAIL_CHUNK`] pieces last a few milliseconds each and those costs
/// would dominate; see [`smallest_cut`].
pub const PIECE_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// The smallest Range request to cut when requests typically move `typical`
/// bytes/s (`None`: none finished yet): what moves in [`PIECE_TIME`], between
/// [`TAIL_CHUNK`] and [`MIN_CHUNK`]. Only fast links raise it above the tail piece.
pub fn smallest_cut(typical: Option<f64>) -> u64 {
    typical.map_or(TAIL_CHUNK, |rate| {
        ((rate * PIECE_TIME.as_secs_f64()) as u64).clamp(TAIL_CHUNK, MIN_CHUNK)
    })
}

/// The Range requests that fetch bytes `[offset, size)` of a blob, cut one at a
/// time as each can start ([`Ranges::cut`]), so that each is sized by the moment it
/// starts (the caller's rule follows the connection limit, the reorder memory and
/// what is left of the whole run, see
/// [`Scheduler::fair_share`](super::scheduler::Scheduler::fair_share)). A huge blob
/// costs no memory up front.
pub fn ranges(offset: u64, size: u64) -> Ranges {
    Ranges { next: offset, size }
}

/// What is left of a blob to cut into Range requests; see [`ranges`].
#[derive(Debug)]
pub struct Ranges {
    next: u64,
    size: u64,
}

impl Ranges {
    /// True when every byte has been handed out.
    pub fn is_done(&self) -> bool {
        self.next >= self.size
    }

    /// The next request's `(first, last)` byte positions, inclusive as in
    /// `Range: bytes=first-last`: at most `largest` bytes, never under `smallest`
    /// ([`smallest_cut`]) unless less than that is left, and a remainder under half
    /// of `smallest` rides along rather than costing a request of its own. The cuts
    /// cover `[offset, size)` exactly once, in order; `None` once done.
    pub fn cut(&mut self, largest: u64, smallest: u64) -> Option<(u64, u64)> {
        if self.is_done() {
            return None;
        }
        let left = self.size - self.next;
        let mut len = largest.max(smallest).min(left);
        if left - len < smallest / 2 {
            len = left;
        }
        let first = self.next;
        self.next = first + len;
        Some((first, first + len - 1))
    }
}

/// Runs one job per item ahead of the consumer and yields their results in item order.
///
/// For each item, in order, `reserve` is awaited first (the chunk's reorder memory),
/// then `start` launches the job with what it reserved; at most `ahead` jobs run
/// between the one the consumer waits for and the last one started. Reserving in item
/// order is what keeps a shared budget from deadlocking: whatever holds budget is
/// always a prefix of the items not yet consumed, so the head item is never left
/// waiting for budget held by items queued behind it.
pub fn in_order<I, R, RF, S, SF>(
    items: I,
    ahead: usize,
    mut reserve: R,
    mut start: S,
) -> impl Stream<Item = SF::Output>
where
    I: IntoIterator,
    R: FnMut(&I::Item) -> RF,
    RF: Future,
    S: FnMut(I::Item, RF::Output) -> SF,
    SF: Future,
{
    // Boxed so that callers can poll it in place (`then` makes it `!Unpin`).
    Box::pin(
        stream::iter(items)
            .then(move |item| {
                let reserved = reserve(&item);
                async move { (item, reserved.await) }
            })
            .map(move |(item, reserved)| start(item, reserved))
            .buffered(ahead.max(1)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::pull::scheduler::Scheduler;
    use crate::pull::AbortOnDrop;

    /// Every cut of `[offset, size)`, each asked for with the next `largest()`.
    fn tapered_ranges(
        offset: u64,
        size: u64,
        mut largest: impl FnMut() -> u64,
    ) -> impl Iterator<Item = (u64, u64)> {
        let mut left = ranges(offset, size);
        std::iter::from_fn(move || {
            if left.is_done() {
                return None;
            }
            left.cut(largest(), TAIL_CHUNK)
        })
    }

    #[test]
    fn the_smallest_cut_lasts_a_piece_time_at_the_typical_rate_on_fast_links() {
        const MIB: u64 = 1 << 20;
        assert_eq!(smallest_cut(None), TAIL_CHUNK);
        // 2 Mbit/s and 2 MB/s per request: the tail piece already lasts long enough.
        assert_eq!(smallest_cut(Some(250e3)), TAIL_CHUNK);
        assert_eq!(smallest_cut(Some(2e6)), TAIL_CHUNK);
        // 7.8 MB/s per request (1 Gbit/s over 16 connections): 780 kB.
        assert_eq!(smallest_cut(Some(7.8e6)), 780_000);
        assert_eq!(smallest_cut(Some(1e9)), MIB);
        let mut left = ranges(0, 3 * MIB);
        assert_eq!(left.cut(TAIL_CHUNK, MIB), Some((0, MIB - 1)));
        // A remainder under half the smallest rides along.
        let mut left = ranges(0, MIB + 400_000);
        assert_eq!(left.cut(TAIL_CHUNK, MIB), Some((0, MIB + 399_999)));
        assert!(left.is_done());
    }

    #[test]
    fn ranges_follow_the_largest_size_asked_for() {
        const MIB: u64 = 1 << 20;
        let lens = |offset, size, largest| -> Vec<u64> {
            tapered_ranges(offset, size, || largest)
                .map(|(first, last)| (last - first + 1) / MIB)
                .collect()
        };
        assert_eq!(lens(0, 16 * MIB, 4 * MIB), [4, 4, 4, 4]);
        assert_eq!(lens(0, 2 * MIB, 4 * MIB), [2]);
        // Nothing is cut below the tail minimum.
        let kib = |size, largest| -> Vec<u64> {
            tapered_ranges(0, size, || largest)
                .map(|(first, last)| (last - first + 1) >> 10)
                .collect()
        };
        assert_eq!(kib(MIB, 64 << 10), [256, 256, 256, 256]);
        assert_eq!(tapered_ranges(0, 10, || 4).collect::<Vec<_>>(), [(0, 9)]);
        assert_eq!(tapered_ranges(5, 5, || 4).count(), 0);
        // The largest size is read for every piece: a shrinking share tapers the end.
        let mut sizes = [8 * MIB, MIB, 4 * MIB, 2 * MIB].into_iter();
        let got: Vec<u64> = tapered_ranges(0, 16 * MIB, || sizes.next().unwrap_or(MIB))
            .map(|(first, last)| (last - first + 1) / MIB)
            .collect();
        assert_eq!(got, [8, 1, 4, 2, 1]);
        // A remainder under half the minimum rides with the piece before it.
        let tail: Vec<(u64, u64)> = tapered_ranges(0, 2 * MIB + 2048, || MIB).collect();
        assert_eq!(tail, [(0, MIB - 1), (MIB, 2 * MIB + 2047)]);
        assert_eq!(kib(MIB + (200 << 10), MIB), [1024, 200]);
        let mut left = ranges(0, 2 * MIB);
        assert!(!left.is_done());
        while left.cut(MIB, TAIL_CHUNK).is_some() {}
        assert!(left.is_done());
        assert_eq!(left.cut(MIB, TAIL_CHUNK), None);
    }

    proptest! {
        /// The ranges cover `[offset, size)` exactly once, in order, none empty, none
        /// shorter than the minimum unless at the very end, none longer than asked
        /// (but the last, by less than half the minimum).
        #[test]
        fn prop_ranges_cover_exactly_once(
            offset in 0u64..(64 << 20),
            length in 0u64..(64 << 20),
            largest in prop::collection::vec(0u64..(8 << 20), 1..8),
            shift in prop_oneof![Just(0u64), Just(u64::MAX - (128 << 20)), 0u64..(1 << 40)],
        ) {
            let (offset, size) = (offset + shift, offset + shift + length);
            let mut sizes = largest.iter().copied().cycle();
            let mut next = offset;
            for (first, last) in tapered_ranges(offset, size, || sizes.next().unwrap()) {
                prop_assert_eq!(first, next, "a gap or an overlap before {}", first);
                prop_assert!(first <= last);
                let len = last - first + 1;
                let most = largest.iter().max().copied().unwrap_or(0).max(TAIL_CHUNK);
                prop_assert!(len >= TAIL_CHUNK.min(size - first), "{} too short", len);
                prop_assert!(
                    len <= most || (last + 1 == size && len < most + TAIL_CHUNK / 2),
                    "{} longer than any size asked for", len
                );
                next = last + 1;
            }
            prop_assert_eq!(next, size.max(offset));
        }
    }

    /// One chunk of the pipeline test: its reorder memory in KiB, how long its job
    /// takes to reach its reservation, to download, and to be written.
    #[derive(Debug, Clone)]
    struct Chunk {
        kib: usize,
        download_ms: u64,
        write_ms: u64,
    }

    fn chunks() -> impl Strategy<Value = Vec<Chunk>> {
        prop::collection::vec(
            (1usize..=16, 0u64..50, 0u64..20).prop_map(|(kib, download_ms, write_ms)| Chunk {
                kib,
                download_ms,
                write_ms,
            }),
            0..40,
        )
    }

    /// Runs `chunks` through [`in_order`] as `download_chunked` does (each job a task of
    /// its own, memory from the scheduler held until written) with a `budget_kib`
    /// reorder budget and `ahead` jobs ahead; returns the order the writer saw and
    /// the most memory ever held.
    async fn pipeline(chunks: Vec<Chunk>, budget_kib: usize, ahead: usize) -> (Vec<usize>, usize) {
        let scheduler = Arc::new(Scheduler::new(4, budget_kib << 10));
        let held = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let plan = chunks.iter().cloned().enumerate();
        let mut results = in_order(
            plan,
            ahead,
            |(_, chunk)| {
                let (scheduler, held, peak) = (scheduler.clone(), held.clone(), peak.clone());
                let bytes = chunk.kib << 10;
                async move {
                    let memory = scheduler.memory(bytes).await;
                    let now = held.fetch_add(bytes, Ordering::SeqCst) + bytes;
                    peak.fetch_max(now, Ordering::SeqCst);
                    memory
                }
            },
            |(index, chunk), memory| {
                let running = running.clone();
                running.fetch_add(1, Ordering::SeqCst);
                AbortOnDrop(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(chunk.download_ms)).await;
                    (index, chunk, memory)
                }))
            },
        );
        let mut seen = Vec::new();
        while let Some(done) = results.next().await {
            let (index, chunk, memory) = done.unwrap();
            assert!(
                running.load(Ordering::SeqCst) <= ahead.max(1),
                "more than {ahead} jobs started ahead of the writer"
            );
            running.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(chunk.write_ms)).await;
            held.fetch_sub(chunk.kib << 10, Ordering::SeqCst);
            drop(memory);
            seen.push(index);
        }
        (seen, peak.load(Ordering::SeqCst))
    }

    proptest! {
        /// Whatever order downloads finish in, the writer gets the chunks in plan order,
        /// the reorder memory held never exceeds the budget, no more than `ahead` jobs
        /// run ahead, and every chunk is served (the run ends: nothing deadlocks).
        #[test]
        fn prop_chunks_come_out_in_order(
            chunks in chunks(),
            budget_kib in 16usize..64,
            ahead in 0usize..24,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let count = chunks.len();
            let (seen, peak) = runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(3600),
                    pipeline(chunks, budget_kib, ahead),
                )
                .await
                .expect("the pipeline stalled: a chunk never got its memory")
            });
            prop_assert_eq!(seen, (0..count).collect::<Vec<_>>());
            prop_assert!(peak <= budget_kib << 10, "held {} bytes of a {} KiB budget", peak, budget_kib);
        }
    }
}
