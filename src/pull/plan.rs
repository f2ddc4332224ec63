//! The plan of a chunked blob download: which Range requests cover the blob, and the
//! pipeline that runs them ahead of the writer and hands their results back in order.

use std::future::Future;

use futures::stream::{self, Stream, StreamExt};

/// The Range requests that fetch bytes `[offset, size)` of a blob.
///
/// Yields `(first, last)` byte positions, inclusive as in `Range: bytes=first-last`, in
/// ascending order, each non-empty and at most `chunk` bytes long (a `chunk` of 0 counts
/// as 1), together covering every byte of `[offset, size)` exactly once. Yields nothing
/// when `offset >= size`. Lazy: a huge blob costs no memory up front.
pub fn chunk_ranges(offset: u64, size: u64, chunk: u64) -> ChunkRanges {
    ChunkRanges {
        next: offset,
        size,
        chunk: chunk.max(1),
    }
}

/// The iterator [`chunk_ranges`] returns.
#[derive(Debug, Clone)]
pub struct ChunkRanges {
    next: u64,
    size: u64,
    chunk: u64,
}

impl Iterator for ChunkRanges {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.next >= self.size {
            return None;
        }
        let first = self.next;
        // `size - 1` cannot underflow (size > first >= 0), and `last + 1 <= size`.
        let last = first.saturating_add(self.chunk - 1).min(self.size - 1);
        self.next = last + 1;
        Some((first, last))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.size.saturating_sub(self.next).div_ceil(self.chunk);
        match usize::try_from(left) {
            Ok(left) => (left, Some(left)),
            Err(_) => (usize::MAX, None),
        }
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

    #[test]
    fn ranges_of_a_small_blob() {
        let ranges: Vec<_> = chunk_ranges(0, 10, 4).collect();
        assert_eq!(ranges, [(0, 3), (4, 7), (8, 9)]);
        let ranges: Vec<_> = chunk_ranges(5, 10, 4).collect();
        assert_eq!(ranges, [(5, 8), (9, 9)]);
        assert_eq!(chunk_ranges(10, 10, 4).count(), 0);
        assert_eq!(chunk_ranges(11, 10, 4).count(), 0);
        let ranges: Vec<_> = chunk_ranges(0, 3, 0).collect();
        assert_eq!(ranges, [(0, 0), (1, 1), (2, 2)]);
        assert_eq!(chunk_ranges(0, 10, 4).len_hint(), 3);
    }

    #[test]
    fn ranges_at_the_top_of_u64() {
        let ranges: Vec<_> = chunk_ranges(u64::MAX - 5, u64::MAX, 4).collect();
        assert_eq!(
            ranges,
            [(u64::MAX - 5, u64::MAX - 2), (u64::MAX - 1, u64::MAX - 1)]
        );
        let ranges: Vec<_> = chunk_ranges(0, u64::MAX, u64::MAX).collect();
        assert_eq!(ranges, [(0, u64::MAX - 1)]);
        // Lazy: a plan of 2^44 ranges costs nothing until walked.
        assert_eq!(chunk_ranges(0, 1 << 63, 1 << 20).size_hint().0, 1 << 43);
    }

    impl ChunkRanges {
        fn len_hint(&self) -> usize {
            self.size_hint().0
        }
    }

    proptest! {
        /// The ranges cover `[offset, size)` exactly once, in order, none empty, none
        /// longer than a chunk, and the size hint is exact.
        #[test]
        fn prop_ranges_cover_exactly_once(
            offset in 0u64..5000,
            length in 0u64..5000,
            chunk in 0u64..700,
            shift in prop_oneof![Just(0u64), Just(u64::MAX - 10_000), 0u64..(1 << 40)],
        ) {
            let (offset, size) = (offset + shift, offset + shift + length);
            let plan = chunk_ranges(offset, size, chunk);
            let hint = plan.len_hint();
            let ranges: Vec<_> = plan.collect();
            prop_assert_eq!(ranges.len(), hint);
            let mut next = offset;
            for &(first, last) in &ranges {
                prop_assert_eq!(first, next, "a gap or an overlap before {}", first);
                prop_assert!(first <= last, "empty range {}-{}", first, last);
                prop_assert!(last - first < chunk.max(1), "{}-{} is longer than {}", first, last, chunk);
                next = last + 1;
            }
            prop_assert_eq!(next, size.max(offset), "the ranges end short of the blob");
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
