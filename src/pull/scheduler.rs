//! One scheduler per process: the connection budget every image, blob and chunk of
//! the run shares, and the memory budget of chunks waiting to be written in order.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::watchdog::PeerRates;

/// Bytes of downloaded chunks that may wait for their turn to be written, across the
/// run: this caps memory however large the blobs are.
pub const DEFAULT_REORDER_MEMORY: usize = 64 << 20;

/// Budgets shared by all pulls of a [`Puller`](super::Puller).
#[derive(Debug)]
pub struct Scheduler {
    connections: Arc<Semaphore>,
    small: Arc<Semaphore>,
    limit: AtomicUsize,
    /// Requests waiting for a connection slot right now: demand beyond the limit.
    waiting: AtomicUsize,
    /// Body bytes received by every request of the run.
    bytes: AtomicU64,
    memory: Arc<Semaphore>,
    memory_limit: usize,
    /// Bytes of the blobs downloading now that no request has been cut for yet.
    unplanned: Arc<AtomicU64>,
    peers: PeerRates,
}

/// A held connection slot; released when dropped.
#[derive(Debug)]
pub struct Connection(#[allow(dead_code)] OwnedSemaphorePermit);

/// Reserved reorder memory; released when dropped (after the chunk is written).
#[derive(Debug)]
pub struct Memory(#[allow(dead_code)] OwnedSemaphorePermit);

/// Extra connections reserved for blobs that come in one stream (manifests, configs,
/// small layers), so they never wait behind a big layer's chunks.
pub const SMALL_LANE: usize = 2;

/// Memory is counted in KiB so that a permit count fits in `u32`.
const UNIT: usize = 1024;

impl Scheduler {
    /// A scheduler allowing `connections` requests in flight and `memory` bytes of
    /// chunks waiting to be written.
    pub fn new(connections: usize, memory: usize) -> Self {
        let connections = connections.max(1);
        let memory = memory.max(UNIT);
        Scheduler {
            connections: Arc::new(Semaphore::new(connections)),
            small: Arc::new(Semaphore::new(SMALL_LANE)),
            limit: AtomicUsize::new(connections),
            waiting: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            memory: Arc::new(Semaphore::new(memory / UNIT)),
            memory_limit: memory,
            unplanned: Arc::new(AtomicU64::new(0)),
            peers: PeerRates::default(),
        }
    }

    /// The typical per-request rate of the run, which slow trickles are judged by.
    pub fn peers(&self) -> &PeerRates {
        &self.peers
    }

    /// Connections allowed in flight.
    pub fn connection_limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the number of connections allowed in flight (the tuner's knob). A
    /// lower limit takes effect as requests finish: the surplus slots are taken back
    /// as they are released.
    pub fn set_connection_limit(&self, limit: usize) {
        let limit = limit.max(1);
        let old = self.limit.swap(limit, Ordering::Relaxed);
        if limit > old {
            self.connections.add_permits(limit - old);
        } else if limit < old {
            let surplus = (old - limit) as u32;
            let connections = self.connections.clone();
            tokio::spawn(async move {
                if let Ok(permits) = connections.acquire_many_owned(surplus).await {
                    permits.forget();
                }
            });
        }
    }

    /// Requests waiting for a connection slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Counts body bytes received (for the tuner's throughput).
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Body bytes received so far in the run.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits for a connection slot. The queue is fair (first come, first served), so
    /// a blob's chunks are served in the order they were asked for.
    pub async fn connection(&self) -> Connection {
        let _waiting = Waiting::new(&self.waiting);
        let permit = self.connections.clone().acquire_owned().await;
        Connection(permit.expect("the scheduler never closes its semaphore"))
    }

    /// True when a connection slot is free and no request waits for one.
    pub fn has_spare_connection(&self) -> bool {
        self.waiting() == 0 && self.connections.available_permits() > 0
    }

    /// A free connection slot that no request is waiting for, if there is one now:
    /// for taking over part of a running request (see
    /// [`has_spare_connection`](Self::has_spare_connection)).
    pub fn spare_connection(&self) -> Option<Connection> {
        if self.waiting() > 0 {
            return None;
        }
        self.connections
            .clone()
            .try_acquire_owned()
            .ok()
            .map(Connection)
    }

    /// Bytes of reorder memory the run may hold.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// A connection slot for a small, single-stream blob: from the shared budget
    /// when one is free, else from the small lane, whichever comes first.
    pub async fn small_connection(&self) -> Connection {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Connection(permit);
        }
        let permit = tokio::select! {
            permit = self.connections.clone().acquire_owned() => permit,
            permit = self.small.clone().acquire_owned() => permit,
        };
        Connection(permit.expect("the scheduler never closes its semaphore"))
    }

    /// Waits until `bytes` of reorder memory are free and reserves them (at most the
    /// whole budget, so one oversized request cannot wait for ever).
    pub async fn memory(&self, bytes: usize) -> Memory {
        let units = bytes.min(self.memory_limit).div_ceil(UNIT).max(1) as u32;
        let permit = self.memory.clone().acquire_many_owned(units).await;
        Memory(permit.expect("the scheduler never closes its semaphore"))
    }
}

impl Scheduler {
    /// Reserves `bytes` of reorder memory if that much is free now.
    pub fn try_memory(&self, bytes: usize) -> Option<Memory> {
        let units = bytes.min(self.memory_limit).div_ceil(UNIT).max(1) as u32;
        self.memory
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(Memory)
    }
}

impl Memory {
    /// Gives back what is reserved beyond `bytes` (a chunk cut smaller than the
    /// reservation made for it).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(UNIT).max(1);
        let held = self.0.num_permits();
        if held > keep {
            drop(self.0.split(held - keep));
        }
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.0.num_permits() * UNIT
    }
}

/// A blob's bytes that no request has been cut for yet, counted in the run's total
/// until they are taken or the guard is dropped (the download ended, one way or
/// another).
#[derive(Debug)]
pub struct Unplanned {
    total: Arc<AtomicU64>,
    left: u64,
}

impl Unplanned {
    /// Counts `n` bytes as planned: a request now covers them.
    pub fn take(&mut self, n: u64) {
        let n = n.min(self.left);
        self.left -= n;
        self.total.fetch_sub(n, Ordering::Relaxed);
    }

    /// Counts every byte left as planned (a blob that comes in one stream).
    pub fn take_all(&mut self) {
        self.take(self.left);
    }

    /// Counts `left` bytes as unplanned from now on, whatever was counted before: a
    /// download that found part of the blob already in its ingest, or starts it over.
    pub fn recount(&mut self, left: u64) {
        if left > self.left {
            self.total.fetch_add(left - self.left, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(self.left - left, Ordering::Relaxed);
        }
        self.left = left;
    }
}

impl Drop for Unplanned {
    fn drop(&mut self) {
        self.total.fetch_sub(self.left, Ordering::Relaxed);
    }
}

impl Scheduler {
    /// Counts `bytes` of a blob about to download as not yet planned, until the
    /// returned guard takes them or is dropped.
    pub fn unplanned(&self, bytes: u64) -> Unplanned {
        self.unplanned.fetch_add(bytes, Ordering::Relaxed);
        Unplanned {
            total: self.unplanned.clone(),
            left: bytes,
        }
    }

    /// The run's bytes not yet cut into requests.
    pub fn unplanned_bytes(&self) -> u64 {
        self.unplanned.load(Ordering::Relaxed)
    }

    /// What is left to cut into requests, shared out over the connections allowed:
    /// near the end of a run, the most a chunk should be so that every connection
    /// finishes at about the same time instead of one big last request riding one
    /// (rate-capped) connection while the others sit idle.
    pub fn fair_share(&self) -> u64 {
        self.unplanned.load(Ordering::Relaxed) / self.connection_limit() as u64
    }
}

/// Counts a waiter for as long as it waits, however the wait ends (a download
/// task aborted mid-wait included).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn connections_are_limited_and_released() {
        let scheduler = Scheduler::new(2, 1 << 20);
        let a = scheduler.connection().await;
        let _b = scheduler.connection().await;
        let third = tokio::time::timeout(Duration::from_millis(20), scheduler.connection()).await;
        assert!(third.is_err(), "a third connection must wait");
        drop(a);
        let third = tokio::time::timeout(Duration::from_millis(200), scheduler.connection()).await;
        assert!(third.is_ok());
        assert_eq!(scheduler.connection_limit(), 2);
    }

    #[tokio::test]
    async fn small_blobs_have_a_lane_of_their_own() {
        let scheduler = Scheduler::new(1, 1 << 20);
        let _busy = scheduler.connection().await;
        let mut small = Vec::new();
        for _ in 0..SMALL_LANE {
            let lane =
                tokio::time::timeout(Duration::from_millis(200), scheduler.small_connection())
                    .await;
            small.push(lane.expect("the small lane is free"));
        }
        let blocked =
            tokio::time::timeout(Duration::from_millis(20), scheduler.small_connection()).await;
        assert!(blocked.is_err(), "the lane is full too");
    }

    #[tokio::test]
    async fn the_limit_can_grow_and_shrink() {
        let scheduler = Scheduler::new(1, 1 << 20);
        let first = scheduler.connection().await;
        scheduler.set_connection_limit(2);
        let second = tokio::time::timeout(Duration::from_millis(200), scheduler.connection()).await;
        assert!(second.is_ok(), "a raised limit frees a slot at once");
        scheduler.set_connection_limit(1);
        drop(first);
        drop(second);
        tokio::task::yield_now().await;
        let one = tokio::time::timeout(Duration::from_millis(200), scheduler.connection()).await;
        assert!(one.is_ok());
        let two = tokio::time::timeout(Duration::from_millis(50), scheduler.connection()).await;
        assert!(two.is_err(), "the lowered limit holds");
        assert_eq!(scheduler.connection_limit(), 1);
    }

    #[tokio::test]
    async fn unplanned_bytes_are_shared_out_and_given_back() {
        let scheduler = Scheduler::new(4, 1 << 20);
        let mut a = scheduler.unplanned(40 << 20);
        let b = scheduler.unplanned(8 << 20);
        assert_eq!(scheduler.fair_share(), 12 << 20);
        a.take(16 << 20);
        assert_eq!(scheduler.fair_share(), 8 << 20);
        // Taking more than is left takes what is left.
        a.take(u64::MAX);
        assert_eq!(scheduler.fair_share(), 2 << 20);
        drop(b);
        assert_eq!(scheduler.fair_share(), 0);
        let mut c = scheduler.unplanned(4 << 20);
        c.take_all();
        drop(c);
        drop(a);
        assert_eq!(scheduler.fair_share(), 0, "nothing counted twice");
        // A count set again replaces what it held.
        let mut e = scheduler.unplanned(8 << 20);
        e.recount(2 << 20);
        assert_eq!(scheduler.fair_share(), (2 << 20) / 4);
        e.take_all();
        e.recount(6 << 20);
        assert_eq!(scheduler.fair_share(), (6 << 20) / 4);
        drop(e);
        assert_eq!(scheduler.fair_share(), 0, "nothing left behind");
        scheduler.set_connection_limit(2);
        let _d = scheduler.unplanned(4 << 20);
        assert_eq!(
            scheduler.fair_share(),
            2 << 20,
            "follows the connection limit"
        );
    }

    #[tokio::test]
    async fn memory_can_shrink() {
        let scheduler = Scheduler::new(1, 8 << 20);
        let mut first = scheduler.memory(8 << 20).await;
        first.shrink_to(3 << 20);
        assert_eq!(first.bytes(), 3 << 20);
        let rest =
            tokio::time::timeout(Duration::from_millis(200), scheduler.memory(5 << 20)).await;
        assert!(rest.is_ok(), "what was given back is free");
        first.shrink_to(8 << 20);
        assert_eq!(first.bytes(), 3 << 20, "shrinking never grows");
    }

    #[tokio::test]
    async fn memory_is_capped() {
        let scheduler = Scheduler::new(1, 8 << 20);
        let first = scheduler.memory(6 << 20).await;
        let blocked =
            tokio::time::timeout(Duration::from_millis(20), scheduler.memory(4 << 20)).await;
        assert!(blocked.is_err(), "over the budget must wait");
        drop(first);
        let later =
            tokio::time::timeout(Duration::from_millis(200), scheduler.memory(4 << 20)).await;
        assert!(later.is_ok());
        // Larger than the whole budget: clamped, not stuck.
        drop(later);
        let huge =
            tokio::time::timeout(Duration::from_millis(200), scheduler.memory(64 << 20)).await;
        assert!(huge.is_ok());
    }
}
