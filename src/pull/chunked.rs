//! Big blobs as parallel Range requests, written back in order into the one
//! append-only ingest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::time::{Duration, Instant};

use super::events::BrokeOff;
use super::fetch::{Source, Turn, MAX_RESUMES};
use super::plan;
use super::scheduler::{Connection, Memory, Unplanned};
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
        let smallest = plan::smallest_cut(scheduler.peers().typical());
        // A cut may carry a remainder under half the smallest along.
        let memory = scheduler.memory((most + smallest / 2) as usize);
        let left = &left;
        async move {
            let mut memory = memory.await;
            let (first, last, done) = {
                let mut left = lock(left);
                let (ranges, unplanned) = &mut *left;
                let (first, last) = ranges
                    .cut(most.min(scheduler.fair_share()), smallest)
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
    let shared_digest: Arc<str> = Arc::from(digest);
    let mut chunks = plan::in_order(slots, ahead, reserve, |(), (first, last, memory)| {
        AbortOnDrop(tokio::spawn(fetch_range(
            source.clone(),
            shared_digest.clone(),
            first,
            last,
            memory,
            received.clone(),
        )))
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
            Err(e) => return Err(task_failed(digest, e)),
        };
        writer
            .write(data.bytes.clone())
            .await
            .map_err(|e| Error::containerd("writing a blob", e))?;
        tap.feed(data.bytes).await;
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

/// Downloads bytes `first..=last` of a blob into memory (see [`fill`]).
async fn fetch_range(
    source: Source,
    digest: Arc<str>,
    first: u64,
    last: u64,
    memory: Memory,
    received: Arc<AtomicU64>,
) -> Result<RangeData, RangeError> {
    let len = (last - first + 1) as usize;
    let part = fill(
        source,
        digest,
        first,
        len,
        BytesMut::with_capacity(len),
        received,
        None,
    )
    .await?;
    Ok(RangeData {
        bytes: part.bytes.freeze(),
        url: part.url,
        endpoint: part.endpoint,
        memory,
    })
}

/// A range filled by [`fill`]: its bytes, and where the last of them came from.
struct Part {
    bytes: BytesMut,
    url: String,
    endpoint: usize,
}

/// A back part of a range handed to a request of its own.
type Split = AbortOnDrop<Result<Part, RangeError>>;

/// Fills `buffer` (empty, with room for `len`) with the blob's bytes `first` to
/// `first + len - 1`, resuming what remains on the next healthy endpoint when a
/// response breaks off or stalls. `connection` is a slot already held for the
/// first request.
///
/// While the response crawls far below the run's other requests, a connection slot
/// that nothing waits for (the run's last pieces, or the rest of the run held back
/// behind this chunk by the reorder memory) takes over the back part of what is
/// left ([`split_len`]): a task of its own fills that part of the same buffer, and
/// this request stops where it begins. So a slow connection holds the run up for
/// no longer than its own share, instead of until the watchdog judges it.
fn fill(
    source: Source,
    digest: Arc<str>,
    first: u64,
    len: usize,
    mut buffer: BytesMut,
    received: Arc<AtomicU64>,
    mut connection: Option<Connection>,
) -> BoxFuture<'static, Result<Part, RangeError>> {
    Box::pin(async move {
        let digest_text: &str = &digest;
        // This task's own bytes: `buffer[..end]`; what lies beyond was handed to
        // the splits, the latest (nearest) last.
        let mut end = len;
        let mut splits: Vec<Split> = Vec::new();
        let mut avoid = None;
        let mut resumes = 0;
        let (url, endpoint) = loop {
            let connection = match connection.take() {
                Some(held) => held,
                None => source.scheduler.connection().await,
            };
            let started = Instant::now();
            let from = first + buffer.len() as u64;
            let asked = end;
            let last = first + asked as u64 - 1;
            let blob = match source
                .client
                .blob_range(
                    &source.target,
                    digest_text,
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
            // When the first byte came, and the buffer's length then.
            let mut first_byte: Option<(Instant, usize)> = None;
            while buffer.len() < end {
                let Some(piece) = body.next().await else {
                    break;
                };
                let piece = match piece {
                    Ok(piece) => piece,
                    Err(e) => {
                        failure = Some(BrokeOff::body(&e));
                        break;
                    }
                };
                if buffer.len() + piece.len() > asked {
                    failure = Some(BrokeOff::failed(
                        "the response is longer than the range asked for".to_string(),
                    ));
                    break;
                }
                // Bytes past a split point belong to the split's own request.
                let take = piece.len().min(end - buffer.len());
                let (at, at_len) = *first_byte.get_or_insert((Instant::now(), buffer.len()));
                buffer.extend_from_slice(&piece[..take]);
                received.fetch_add(take as u64, Ordering::Relaxed);
                source.scheduler.add_bytes(take as u64);
                source.tracker.bytes(take as u64);
                match watchdog.progress(take as u64, source.scheduler.peers().floor()) {
                    Err(reason) if buffer.len() < end => {
                        failure = Some(BrokeOff::stalled(reason));
                        break;
                    }
                    // Judged slow on the piece that completes its range: done (a
                    // resume would ask for an empty range).
                    _ => {}
                }
                if buffer.len() >= end || !source.scheduler.has_spare_connection() {
                    continue;
                }
                let Some(back) = split_len(
                    (end - buffer.len()) as u64,
                    (buffer.len() - at_len) as u64,
                    at.elapsed(),
                    at - started,
                    source.scheduler.peers().typical(),
                    source.scheduler.unplanned_bytes() == 0,
                ) else {
                    continue;
                };
                let Some(spare) = source.scheduler.spare_connection() else {
                    continue;
                };
                let cut = end - back as usize;
                // The back of the buffer's free space, same allocation: joined
                // again without a copy.
                let rest = buffer.split_off(cut);
                tracing::debug!(
                    digest = digest_text,
                    first = first + cut as u64,
                    last = first + end as u64 - 1,
                    "chunk split off to an idle connection"
                );
                splits.push(AbortOnDrop(tokio::spawn(fill(
                    source.clone(),
                    digest.clone(),
                    first + cut as u64,
                    end - cut,
                    rest,
                    received.clone(),
                    Some(spare),
                ))));
                end = cut;
            }
            drop(body);
            drop(connection);
            if failure.is_none() && buffer.len() < end {
                failure = Some(BrokeOff::failed(format!(
                    "the response ended at byte {} of {from}-{last}",
                    first + buffer.len() as u64
                )));
            }
            let Some(why) = failure else {
                tracing::debug!(
                    digest = digest_text,
                    first,
                    last = first + end as u64 - 1,
                    elapsed = ?started.elapsed(),
                    "chunk done"
                );
                source
                    .scheduler
                    .peers()
                    .record(watchdog.bytes(), watchdog.elapsed());
                break (blob.url, blob.endpoint);
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
            tracing::warn!(digest = digest_text, url = %blob.url, offset = first + buffer.len() as u64, "chunk download broke off ({reason}), resuming");
        };
        let mut part = Part {
            bytes: buffer,
            url,
            endpoint,
        };
        // Nearest split first: each begins where the bytes so far end.
        while let Some(split) = splits.pop() {
            let filled = match split.await {
                Ok(filled) => filled?,
                Err(e) => return Err(RangeError::Failed(task_failed(&digest, e))),
            };
            part.bytes.unsplit(filled.bytes);
            part.url = filled.url;
            part.endpoint = filled.endpoint;
        }
        Ok(part)
    })
}

/// Back parts of a blob coming in one stream, handed to idle connections under the
/// rule that splits a chunk ([`split_len`]: while the stream crawls, or at the end
/// of the run): the stream stops where the nearest begins, and the parts are
/// written after it, in order. Each holds reorder memory for its bytes until
/// written; a part is only handed off when that memory is free.
pub(super) struct Handoffs {
    /// Where the stream's own bytes end: the start of the nearest part.
    end: u64,
    /// Where the farthest part ends: the blob's size.
    size: u64,
    /// The parts, farthest first.
    parts: Vec<(Split, Memory)>,
}

/// What writing the handed-off parts came to.
pub(super) enum HandedOff {
    /// Every part was written.
    Written,
    /// A part could not be had with Range requests (no endpoint honours them, or
    /// every endpoint failed them), and the stream stopped where it began: the blob
    /// has to come in one stream from the start. Says why.
    Unusable(String),
}

impl Handoffs {
    /// None yet: the stream runs to `size`.
    pub fn new(size: u64) -> Self {
        Handoffs {
            end: size,
            size,
            parts: Vec::new(),
        }
    }

    /// Takes every part back when every endpoint has been found to ignore Range
    /// requests (so each part comes back whole, of no use) and the stream's own
    /// response, which runs to `carried`, still holds their bytes: the stream then
    /// carries on to the blob's end instead of starting over.
    pub fn take_back_if_ignored(&mut self, source: &Source, carried: u64) {
        if self.parts.is_empty()
            || carried < self.size
            || !source
                .endpoints
                .iter()
                .all(|e| source.client.ignores_ranges(e))
        {
            return;
        }
        tracing::debug!("Range requests are ignored: the stream carries on to the end");
        // Dropping a part stops its request and frees its memory.
        self.parts.clear();
        self.end = self.size;
    }

    /// Where the stream's own bytes end.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Hands the back of `[at, end)` to an idle connection if that ends the blob
    /// clearly sooner: the stream, from endpoint `endpoint`, has moved `got` bytes in
    /// `since` since its first byte, which took `wait` from asking. Not when that
    /// endpoint is known to ignore Range requests: the part would come back whole
    /// and the blob start over.
    pub fn offer(
        &mut self,
        source: &Source,
        (digest, endpoint): (&Arc<str>, usize),
        received: &Arc<AtomicU64>,
        at: u64,
        (got, since, wait): (u64, Duration, Duration),
    ) {
        let scheduler = &source.scheduler;
        if at >= self.end
            || !scheduler.has_spare_connection()
            || source.client.ignores_ranges(&source.endpoints[endpoint])
        {
            return;
        }
        let Some(back) = split_len(
            self.end - at,
            got,
            since,
            wait,
            scheduler.peers().typical(),
            scheduler.unplanned_bytes() == 0,
        ) else {
            return;
        };
        let Some(memory) = scheduler.try_memory(back as usize) else {
            return;
        };
        let Some(spare) = scheduler.spare_connection() else {
            return;
        };
        let cut = self.end - back;
        tracing::debug!(
            digest = &**digest,
            first = cut,
            last = self.end - 1,
            "the back of a stream handed to an idle connection"
        );
        let part = fill(
            source.clone(),
            digest.clone(),
            cut,
            back as usize,
            BytesMut::with_capacity(back as usize),
            received.clone(),
            Some(spare),
        );
        self.parts.push((AbortOnDrop(tokio::spawn(part)), memory));
        self.end = cut;
    }

    /// Writes the parts after the stream's own bytes, nearest first.
    pub async fn write(
        &mut self,
        writer: &mut ContentWriter,
        tap: &mut Tap,
        digest: &str,
    ) -> Result<HandedOff, Error> {
        while let Some((part, memory)) = self.parts.pop() {
            let part = match part.await {
                Ok(Ok(part)) => part,
                Ok(Err(RangeError::Ignored)) => {
                    return Ok(HandedOff::Unusable(
                        "no endpoint honours Range requests".into(),
                    ))
                }
                // The stream alone got these bytes before: a mirror that fails Range
                // requests must not fail a blob that needs none.
                Ok(Err(RangeError::Failed(e))) => {
                    return Ok(HandedOff::Unusable(format!(
                        "a part handed to an idle connection failed ({e})"
                    )))
                }
                Err(e) => return Err(task_failed(digest, e)),
            };
            let bytes = part.bytes.freeze();
            writer
                .write(bytes.clone())
                .await
                .map_err(|e| Error::containerd("writing a blob", e))?;
            tap.feed(bytes).await;
            drop(memory);
        }
        Ok(HandedOff::Written)
    }
}

/// The smallest back part a running request hands to an idle connection.
pub const MIN_SPLIT: u64 = 32 << 10;

/// While the run still has bytes to cut into requests, a request is split only
/// while it runs below this fraction of the run's typical rate per request.
/// Splitting costs the bytes already on their way down the request's connection,
/// which is dropped at the cut: on a healthy connection that can be more than the
/// time saved is worth (the idle connection would soon get a request of its own),
/// on a crawling one it is next to nothing. In the run's tail, when nothing is left
/// to cut, an idle connection gets no other work, and a request keeping pace with
/// its peers is split too: on a link that caps each connection, the last requests
/// of a run otherwise ride a few connections while the rest of the link idles.
pub const SPLIT_BELOW: f64 = 0.25;

/// A request's rate is judged for a split only once its bytes have flowed this
/// long: shorter, a scheduling hiccup looks like a crawl.
pub const SPLIT_AFTER: Duration = Duration::from_millis(250);

/// A split must bring the range's end at least this much sooner (and by a third).
pub const SPLIT_SAVES: Duration = Duration::from_millis(250);

/// How many bytes at the back of a running request's `left` bytes to hand to a new
/// request on an idle connection, if that ends the range clearly sooner.
///
/// The request has moved `got` bytes in `since` since its first byte, which took
/// `wait` from asking; a new request costs about as much before its own first byte,
/// and then runs at the run's typical rate per request (`peers`, bytes/s; in the
/// tail with none finished yet, at this request's own rate). Unless
/// this is the run's `tail` (nothing left to cut into requests), only a request
/// crawling below [`SPLIT_BELOW`] of that rate is split. The cut makes both
/// parts end together, so a crawling request keeps little more than what it moves
/// while the new one waits. Worth it only when the rate has been measured over
/// [`SPLIT_AFTER`], that end comes at least a third and [`SPLIT_SAVES`] sooner than
/// this request alone would get there, and the back part is at least [`MIN_SPLIT`].
pub fn split_len(
    left: u64,
    got: u64,
    since: Duration,
    wait: Duration,
    peers: Option<f64>,
    tail: bool,
) -> Option<u64> {
    // Too little seen yet to know the rate.
    if got < MIN_SPLIT || since < SPLIT_AFTER {
        return None;
    }
    let own = got as f64 / since.as_secs_f64();
    // No finished request to compare with: in the tail a new request is taken to
    // go as fast as this one; before it, nothing can be judged crawling.
    let peers = match peers {
        Some(peers) => peers,
        None if tail => own,
        None => return None,
    };
    if !tail && own >= peers * SPLIT_BELOW {
        return None;
    }
    let wait = wait.as_secs_f64();
    let left = left as f64;
    // Keep `x`: x / own = wait + (left - x) / peers.
    let keep = (wait + left / peers) / (1.0 / own + 1.0 / peers);
    let together = keep / own;
    let alone = left / own;
    if together > alone * (2.0 / 3.0) || alone - together < SPLIT_SAVES.as_secs_f64() {
        return None;
    }
    let back = (left - keep) as u64;
    (back >= MIN_SPLIT).then_some(back)
}

/// A chunk's download task panicked or was cancelled.
fn task_failed(digest: &str, e: tokio::task::JoinError) -> Error {
    Error::Transfer {
        digest: digest.to_string(),
        url: String::new(),
        reason: format!("a chunk download task failed: {e}"),
    }
}

/// Locks the state of one blob's pipeline.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::events::Tracker;
    use crate::pull::scheduler::Scheduler;
    use crate::pull::TRICKLE_WINDOW;
    use crate::registry::fake::{self, Fake, Reply, REPO};

    /// A range whose last piece comes after a pause longer than the watchdog's
    /// window is judged slow on that piece, which completes it: it is done, not
    /// resumed (a resume would ask for no bytes at all, which a registry refuses).
    #[tokio::test(start_paused = true)]
    async fn a_range_judged_slow_on_the_piece_that_completes_it_is_done() {
        fake::crawl_paused_clock();
        let registry = Fake::start().await;
        let bytes: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let digest = registry.blob(REPO, &bytes);
        let path = fake::blob_path(REPO, &digest);
        // 1000 bytes in 11 s: far below the floor when the last 900 come.
        registry.always(&path, Reply::PauseAfter(100, TRICKLE_WINDOW + SECOND));
        let (events, _) = tokio::sync::broadcast::channel(16);
        let source = Source {
            client: Arc::new(fake::client()),
            target: Arc::new(fake::target()),
            endpoints: Arc::from([registry.endpoint()]),
            scheduler: Arc::new(Scheduler::new(4, 1 << 20)),
            chunk_size: 1 << 20,
            tracker: Arc::new(Tracker::new("image".into(), events)),
        };
        let len = bytes.len();
        let filled = fill(
            source,
            Arc::from(digest.as_str()),
            0,
            len,
            BytesMut::with_capacity(len),
            Arc::new(AtomicU64::new(0)),
            None,
        )
        .await;
        let part = match filled {
            Ok(part) => part,
            Err(RangeError::Ignored) => panic!("the fake honours ranges"),
            Err(RangeError::Failed(e)) => panic!("{e}"),
        };
        assert_eq!(part.bytes, bytes);
        let asked = registry.requests_to(&path).len();
        assert_eq!(asked, 1, "the range was asked for again");
    }

    const MS: Duration = Duration::from_millis(1);
    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_crawling_request_hands_over_nearly_everything() {
        // 50 kB/s while its peers make 5 MB/s, 1 ms round trips: of 300 kB left it
        // keeps about 3 kB, what it moves in the 61 ms the new request needs for
        // the rest.
        let back = split_len(300_000, 50_000, SECOND, MS, Some(5e6), false).unwrap();
        assert!((296_900..297_100).contains(&back), "{back}");
    }

    #[test]
    fn a_request_keeping_up_with_its_peers_is_left_alone() {
        // 1 MB/s with peers at 2 MB/s: half their rate, not crawling.
        assert_eq!(
            split_len(10_000_000, 1_000_000, SECOND, MS, Some(2e6), false),
            None
        );
        // Just under a quarter of theirs: split.
        assert!(split_len(10_000_000, 490_000, SECOND, MS, Some(2e6), false).is_some());
        // No finished request to compare with yet.
        assert_eq!(split_len(10_000_000, 1000, SECOND, MS, None, false), None);
    }

    #[test]
    fn no_split_when_the_wait_eats_the_gain() {
        // 100 kB/s against peers at 1 MB/s, a new request waits 500 ms before its
        // first byte: of 60 kB left (600 ms) it would keep 50 kB, ending at 500 ms.
        assert_eq!(
            split_len(60_000, 100_000, SECOND, 500 * MS, Some(1e6), false),
            None
        );
        // 600 kB left (6 s) is worth it: together they end in under a second.
        let back = split_len(600_000, 100_000, SECOND, 500 * MS, Some(1e6), false).unwrap();
        assert!((499_000..=500_000).contains(&back), "{back}");
    }

    #[test]
    fn in_the_tail_a_request_keeping_pace_is_split_too() {
        // 250 kB/s like its peers (a link capping each connection at 2 Mbit/s),
        // 1.2 MB left (4.8 s), 300 ms before a new request's first byte.
        let pace = |tail| split_len(1_200_000, 250_000, SECOND, 300 * MS, Some(250e3), tail);
        assert_eq!(
            pace(false),
            None,
            "bytes left to cut: the idle slot gets work"
        );
        // Keeps what it moves while the new request waits plus half the rest:
        // 637.5 kB, both ending 2.55 s from now instead of 4.8 s.
        let back = pace(true).unwrap();
        assert!((562_000..=563_000).contains(&back), "{back}");
        // No request has finished yet: the new one is taken to keep this pace.
        let unknown = |tail| split_len(1_200_000, 250_000, SECOND, 300 * MS, None, tail);
        assert_eq!(unknown(false), None);
        assert_eq!(unknown(true), Some(back));
        // On a fast link the last requests are short: not worth a new one.
        assert_eq!(
            split_len(200_000, 1_000_000, SECOND, 20 * MS, Some(1e6), true),
            None
        );
        // One request that has the whole link to itself gains nothing from a
        // second one judged at its peers' (shared) rate.
        assert_eq!(
            split_len(3_000_000, 6_000_000, SECOND, 20 * MS, Some(5e5), true),
            None
        );
    }

    #[test]
    fn too_little_seen_or_too_little_left() {
        // Under MIN_SPLIT seen: the rate is not known yet.
        assert_eq!(
            split_len(10_000_000, 1000, SECOND, MS, Some(1e9), false),
            None
        );
        // A slow first 100 ms is not a crawl yet; the same rate for a second is.
        assert_eq!(
            split_len(10_000_000, 100_000, 100 * MS, MS, Some(1e9), false),
            None
        );
        assert!(split_len(10_000_000, 1_000_000, SECOND, MS, Some(1e9), false).is_some());
        // Under SPLIT_SAVES sooner: 1 MB/s with peers at 100 MB/s, 200 kB left
        // (200 ms) would end after 12 ms, a third sooner but not 250 ms.
        assert_eq!(
            split_len(200_000, 1_000_000, SECOND, 10 * MS, Some(1e8), false),
            None
        );
        // A back part under MIN_SPLIT is not worth a request, however slow.
        assert_eq!(
            split_len(
                MIN_SPLIT,
                1 << 20,
                Duration::from_secs(100),
                MS,
                Some(1e9),
                false
            ),
            None
        );
    }
}
