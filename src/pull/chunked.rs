//! Big blobs as parallel Range requests, written back in order into the one
//! append-only ingest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::events::BrokeOff;
use super::fetch::{Source, Turn, MAX_RESUMES};
use super::plan;
use super::scheduler::{Memory, Unplanned};
use super::tap::Tap;
use super::watchdog::Watchdog;
use super::{AbortOnDrop, Error};
use crate::containerd::ContentWriter;

/// How a chunked download ended.
pub(super) enum Chunked {
    /// Every chunk was written; the last one came from `url` (endpoint `endpoint`).
    Done { url: String, endpoint: usize },
    /// No endpoint honours Range requests.
    RangeIgnored,
}

/// Downloads `[writer.offset(), size)` as bounded Range requests in parallel, and
/// writes them in order: containerd's ingest is append-only.
///
/// Chunks run as tasks of their own so they keep downloading while the writer waits
/// on containerd. Each first reserves reorder memory, in order (released once
/// written), and only then is cut from what is left of the blob, so its size
/// reflects the moment it can start rather than when the blob began: at most
/// `source.chunk_size`, at most the memory budget shared out over twice the
/// connections allowed now (memory never leaves connections idle when the tuner
/// raises the limit), and at most the run's unplanned bytes shared out over the
/// connections ([`Scheduler::fair_share`](super::scheduler::Scheduler::fair_share)),
/// so the run ends in small pieces on every connection instead of one big late
/// chunk riding one. Then it waits for a connection slot. Memory stays capped and a
/// slow head chunk holds back only as much as the budget allows. What is written is
/// also handed to `tap`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn download_chunked(
    source: &Source,
    writer: &mut ContentWriter,
    digest: &str,
    size: u64,
    received: &Arc<AtomicU64>,
    unplanned: &mut Unplanned,
    turn: &Turn,
    tap: &mut Tap,
) -> Result<Chunked, Error> {
    // What is left to cut, and the run-wide count of it; only this blob's pipeline
    // touches them, never across an await.
    let left = Mutex::new((plan::ranges(writer.offset(), size), unplanned));
    // Tasks started ahead of the writer: each holds its reorder memory, so the
    // memory budget is what bounds them; this only caps the bookkeeping.
    let ahead = (source.scheduler.memory_limit() as u64 / plan::MIN_CHUNK).max(2) as usize;
    // One slot per chunk, while bytes are left; each reserves memory for the largest
    // the chunk can be, then cuts it and gives back the difference.
    let slots = std::iter::from_fn(|| (!lock(&left).0.is_done()).then_some(()));
    let reserve = |_: &()| {
        let scheduler = &source.scheduler;
        let spread = scheduler.memory_limit() as u64 / (2 * scheduler.connection_limit() as u64);
        let most = source.chunk_size.min(spread).max(plan::MIN_CHUNK);
        // A cut may carry a remainder under half the tail minimum along.
        let memory = scheduler.memory((most + plan::TAIL_CHUNK / 2) as usize);
        let left = &left;
        async move {
            let mut memory = memory.await;
            let (first, last, done) = {
                let mut left = lock(left);
                let (ranges, unplanned) = &mut *left;
                let (first, last) = ranges
                    .cut(most.min(scheduler.fair_share()))
                    .expect("a slot is only made while bytes are left");
                unplanned.take(last - first + 1);
                (first, last, ranges.is_done())
            };
            memory.shrink_to((last - first + 1) as usize);
            if done {
                // Every chunk is cut: the next blob's turn.
                turn.pass();
            }
            (first, last, memory)
        }
    };
    let mut chunks = plan::in_order(slots, ahead, reserve, |(), (first, last, memory)| {
        let source = source.clone();
        let digest = digest.to_string();
        let received = received.clone();
        AbortOnDrop(tokio::spawn(async move {
            fetch_range(&source, &digest, first, last, memory, &received).await
        }))
    });
    let mut done = Chunked::Done {
        url: String::new(),
        endpoint: 0,
    };
    while let Some(joined) = chunks.next().await {
        let data = match joined {
            Ok(Ok(data)) => data,
            Ok(Err(RangeError::Ignored)) => return Ok(Chunked::RangeIgnored),
            Ok(Err(RangeError::Failed(e))) => return Err(e),
            Err(e) => {
                return Err(Error::Transfer {
                    digest: digest.to_string(),
                    url: String::new(),
                    reason: format!("a chunk download task failed: {e}"),
                })
            }
        };
        writer
            .write(&data.bytes)
            .await
            .map_err(|e| Error::containerd("writing a blob", e))?;
        tap.feed(data.bytes.clone()).await;
        done = Chunked::Done {
            url: data.url,
            endpoint: data.endpoint,
        };
        // `data.memory` is released here, letting the next chunk start.
    }
    Ok(done)
}

/// A downloaded chunk, holding its reorder memory until written.
struct RangeData {
    bytes: Bytes,
    url: String,
    endpoint: usize,
    #[allow(dead_code)]
    memory: Memory,
}

enum RangeError {
    /// Every endpoint answered the Range request with the whole blob.
    Ignored,
    Failed(Error),
}

/// Downloads bytes `first..=last` of a blob into memory, resuming what remains on
/// the next healthy endpoint when a response breaks off or stalls.
async fn fetch_range(
    source: &Source,
    digest: &str,
    first: u64,
    last: u64,
    memory: Memory,
    received: &AtomicU64,
) -> Result<RangeData, RangeError> {
    let len = (last - first + 1) as usize;
    let mut buffer = BytesMut::with_capacity(len);
    let mut avoid = None;
    let mut resumes = 0;
    loop {
        let connection = source.scheduler.connection().await;
        let started = std::time::Instant::now();
        let from = first + buffer.len() as u64;
        let blob = match source
            .client
            .blob_range(
                &source.target,
                digest,
                from,
                Some(last),
                &source.endpoints,
                avoid,
            )
            .await
        {
            Ok(blob) => blob,
            Err(e) if e.is_range_ignored() => return Err(RangeError::Ignored),
            Err(e) => {
                return Err(RangeError::Failed(Error::Fetch {
                    digest: digest.to_string(),
                    source: e,
                }))
            }
        };
        source
            .tracker
            .served_blob(&source.endpoints, blob.endpoint, &blob.failed);
        let mut body = blob.response.bytes_stream();
        let mut failure = None;
        let mut watchdog = Watchdog::new();
        while let Some(piece) = body.next().await {
            match piece {
                Ok(piece) => {
                    received.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    source.scheduler.add_bytes(piece.len() as u64);
                    source.tracker.bytes(piece.len() as u64);
                    if buffer.len() + piece.len() > len {
                        failure = Some(BrokeOff::failed(
                            "the response is longer than the range asked for".to_string(),
                        ));
                        break;
                    }
                    buffer.extend_from_slice(&piece);
                    if let Err(reason) =
                        watchdog.progress(piece.len() as u64, source.scheduler.peers().floor())
                    {
                        failure = Some(BrokeOff::stalled(reason));
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(BrokeOff::body(&e));
                    break;
                }
            }
        }
        drop(connection);
        if failure.is_none() && buffer.len() < len {
            failure = Some(BrokeOff::failed(format!(
                "the response ended at byte {} of {first}-{last}",
                first + buffer.len() as u64
            )));
        }
        let Some(why) = failure else {
            tracing::debug!(digest, first, last, elapsed = ?started.elapsed(), "chunk done");
            source
                .scheduler
                .peers()
                .record(watchdog.bytes(), watchdog.elapsed());
            return Ok(RangeData {
                bytes: buffer.freeze(),
                url: blob.url,
                endpoint: blob.endpoint,
                memory,
            });
        };
        source
            .tracker
            .broke_off(&source.endpoints[blob.endpoint], &why);
        let reason = why.reason;
        source
            .client
            .demote(&source.endpoints[blob.endpoint], &reason);
        avoid = Some(blob.endpoint);
        resumes += 1;
        if resumes > MAX_RESUMES {
            return Err(RangeError::Failed(Error::Transfer {
                digest: digest.to_string(),
                url: blob.url,
                reason: format!("{reason} (gave up after {MAX_RESUMES} resumes)"),
            }));
        }
        tracing::warn!(digest, url = %blob.url, offset = first + buffer.len() as u64, "chunk download broke off ({reason}), resuming");
    }
}

/// Locks the state of one blob's pipeline.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
