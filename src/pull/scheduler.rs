//! One scheduler per process: the connection budget every image, blob and chunk of
//! the run shares, and the memory budget of chunks waiting to be written in order.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of downloaded chunks that may wait for their turn to be written, across the
/// run: this caps memory however large the blobs are.
pub const DEFAULT_REORDER_MEMORY: usize = 64 << 20;

/// Budgets shared by all pulls of a [`Puller`](super::Puller).
#[derive(Debug)]
pub struct Scheduler {
    connections: Arc<Semaphore>,
    small: Arc<Semaphore>,
    limit: usize,
    memory: Arc<Semaphore>,
    memory_limit: usize,
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
            limit: connections,
            memory: Arc::new(Semaphore::new(memory / UNIT)),
            memory_limit: memory,
        }
    }

    /// Connections allowed in flight.
    pub fn connection_limit(&self) -> usize {
        self.limit
    }

    /// Waits for a connection slot. The queue is fair (first come, first served), so
    /// a blob's chunks are served in the order they were asked for.
    pub async fn connection(&self) -> Connection {
        let permit = self
            .connections
            .clone()
            .acquire_owned()
            .await
            .expect("the scheduler never closes its semaphore");
        Connection(permit)
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
        let permit = self
            .memory
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the scheduler never closes its semaphore");
        Memory(permit)
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
