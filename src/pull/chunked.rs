//! Big blobs as parallel Range requests, written back in order into the one
//! append-only ingest, with the unfetched tails of chunks split across idle
//! connections near the end of a pull.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use super::fetch::{Source, MAX_RESUMES, MIN_SPLIT};
use super::plan;
use super::scheduler::{Connection, Memory};
use super::watchdog::Watchdog;
use super::{AbortOnDrop, Error};
use crate::containerd::ContentWriter;
use crate::registry;

/// How a chunked download ended.
pub(super) enum Chunked {
    /// Every chunk was written; the last one came from `url` (endpoint `endpoint`).
    Done { url: String, endpoint: usize },
    /// No endpoint honours Range requests.
    RangeIgnored,
}

/// A chunk download task: its bytes, or why it stopped.
type RangeTask = AbortOnDrop<Result<RangeData, RangeError>>;

/// Downloads `[writer.offset(), size)` as bounded Range requests of
/// `source.chunk_size` bytes in parallel, and writes them in order: containerd's
/// ingest is append-only. Chunks run as tasks of their own so they keep downloading
/// while the writer waits on containerd; each reserves its size from the run's
/// reorder memory before it starts, in order (released once written), then waits for
/// a connection slot, so memory stays capped and a slow head chunk holds back only as
/// much as the budget allows. Near the end, when connections fall idle, a chunk
/// hands the second half of what it has yet to fetch to one of them (see
/// [`fetch_range`]); those pieces are written right after the chunk they came from.
pub(super) async fn download_chunked(
    source: &Source,
    writer: &mut ContentWriter,
    hasher: &mut Option<Sha256>,
    digest: &str,
    size: u64,
    received: &Arc<AtomicU64>,
) -> Result<Chunked, Error> {
    let ranges = plan::chunk_ranges(writer.offset(), size, source.chunk_size);
    // Tasks started ahead of the writer; the memory and connection budgets bound
    // what they actually do.
    let ahead = (source.scheduler.connection_limit() * 2).max(2);
    let scheduler = source.scheduler.clone();
    let reserve = |&(first, last): &(u64, u64)| scheduler.memory((last - first + 1) as usize);
    let mut chunks = plan::in_order(ranges, ahead, reserve, |(first, last), memory| {
        let source = source.clone();
        let digest = digest.to_string();
        let received = received.clone();
        AbortOnDrop(tokio::spawn(async move {
            let buffer = BytesMut::with_capacity((last - first + 1) as usize);
            fetch_range(source, digest, first, last, received, buffer, None)
                .await
                .map(|mut data| {
                    data.memory = Some(memory);
                    data
                })
        }))
    });
    let mut done = Chunked::Done {
        url: String::new(),
        endpoint: 0,
    };
    while let Some(joined) = chunks.next().await {
        let mut next = Some(joined);
        // The chunk's reorder memory covers the pieces split off it too: held until
        // the last of them is written.
        let mut _memory = None;
        while let Some(joined) = next.take() {
            let mut data = match chunk_result(joined, digest)? {
                Ok(data) => data,
                Err(ignored) => return Ok(ignored),
            };
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&data.bytes);
            }
            writer
                .write(&data.bytes)
                .await
                .map_err(|e| Error::containerd("writing a blob", e))?;
            if data.memory.is_some() {
                _memory = data.memory.take();
            }
            if let Some(rest) = data.rest.take() {
                next = Some(rest.await);
            }
            done = Chunked::Done {
                url: data.url,
                endpoint: data.endpoint,
            };
        }
        // The reorder memory is released here, letting the next chunk start.
    }
    Ok(done)
}

/// Unpacks a chunk task's outcome: its data, `Err(RangeIgnored)` when no endpoint
/// serves ranges, or the error that ends the blob's download.
fn chunk_result(
    joined: Result<Result<RangeData, RangeError>, tokio::task::JoinError>,
    digest: &str,
) -> Result<Result<RangeData, Chunked>, Error> {
    match joined {
        Ok(Ok(data)) => Ok(Ok(data)),
        Ok(Err(RangeError::Ignored)) => Ok(Err(Chunked::RangeIgnored)),
        Ok(Err(RangeError::Failed(e))) => Err(e),
        Err(e) => Err(Error::Transfer {
            digest: digest.to_string(),
            url: String::new(),
            reason: format!("a chunk download task failed: {e}"),
        }),
    }
}

/// A downloaded chunk (or a piece split off one), holding its reorder memory until
/// written.
struct RangeData {
    bytes: Bytes,
    /// The piece split off this one's tail, if one was: it follows these bytes.
    rest: Option<Box<RangeTask>>,
    url: String,
    endpoint: usize,
    memory: Option<Memory>,
}

enum RangeError {
    /// Every endpoint answered the Range request with the whole blob.
    Ignored,
    Failed(Error),
}

/// Downloads bytes `first..=last` of a blob into `buffer` (whose capacity the
/// caller reserved), resuming what remains on the next healthy endpoint when a
/// response breaks off or stalls.
///
/// While bytes arrive, a connection that falls idle (nobody queueing for one) takes
/// over the second half of what this request has yet to deliver, as a Range request
/// of its own, if that half is at least [`MIN_SPLIT`]: this request then stops at
/// the split point. Without it, the end of a pull waits for the last few chunks,
/// each limited to one connection's rate, while the other connections do nothing.
fn fetch_range(
    source: Source,
    digest: String,
    first: u64,
    last: u64,
    received: Arc<AtomicU64>,
    mut buffer: BytesMut,
    mut connection: Option<Connection>,
) -> futures::future::BoxFuture<'static, Result<RangeData, RangeError>> {
    Box::pin(async move {
        // One past the last byte this request is responsible for (moves down when
        // its tail is split off).
        let mut end = last + 1;
        let mut rest = None;
        let mut avoid = None;
        let mut resumes = 0;
        loop {
            let slot = match connection.take() {
                Some(slot) => slot,
                None => source.scheduler.connection().await,
            };
            let from = first + buffer.len() as u64;
            let blob = match source
                .client
                .blob_range(
                    &source.target,
                    &digest,
                    from,
                    Some(end - 1),
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
            let asked_end = end;
            let mut body = blob.response.bytes_stream();
            let mut failure = None;
            let mut watchdog = Watchdog::new();
            while let Some(piece) = body.next().await {
                let piece = match piece {
                    Ok(piece) => piece,
                    Err(e) => {
                        failure = Some(registry::describe(&e));
                        break;
                    }
                };
                received.fetch_add(piece.len() as u64, Ordering::Relaxed);
                source.scheduler.add_bytes(piece.len() as u64);
                source.tracker.bytes(piece.len() as u64);
                let at = first + buffer.len() as u64;
                let wanted = (end - at) as usize;
                if piece.len() > wanted && end == asked_end {
                    failure = Some("the response is longer than the range asked for".to_string());
                    break;
                }
                buffer.extend_from_slice(&piece[..piece.len().min(wanted)]);
                if first + buffer.len() as u64 == end {
                    // Done, possibly before the response is: the rest of it belongs to
                    // a piece split off, and dropping the body closes the connection.
                    break;
                }
                if let Err(reason) =
                    watchdog.progress(piece.len() as u64, source.scheduler.peers().floor())
                {
                    failure = Some(reason);
                    break;
                }
                if rest.is_none() {
                    let at = first + buffer.len() as u64;
                    if end - at >= 2 * MIN_SPLIT {
                        if let Some(idle) = source.scheduler.idle_connection() {
                            let mid = at + (end - at) / 2;
                            let tail = buffer.split_off((mid - first) as usize);
                            tracing::debug!(
                                digest,
                                from = mid,
                                to = end - 1,
                                "splitting a chunk's tail off to an idle connection"
                            );
                            rest = Some(Box::new(AbortOnDrop(tokio::spawn(fetch_range(
                                source.clone(),
                                digest.clone(),
                                mid,
                                end - 1,
                                received.clone(),
                                tail,
                                Some(idle),
                            )))));
                            end = mid;
                        }
                    }
                }
            }
            drop(body);
            drop(slot);
            let at = first + buffer.len() as u64;
            if failure.is_none() && at < end {
                failure = Some(format!(
                    "the response ended at byte {at} of {first}-{}",
                    end - 1
                ));
            }
            let Some(reason) = failure else {
                source
                    .scheduler
                    .peers()
                    .record(watchdog.bytes(), watchdog.elapsed());
                return Ok(RangeData {
                    bytes: buffer.freeze(),
                    rest,
                    url: blob.url,
                    endpoint: blob.endpoint,
                    memory: None,
                });
            };
            source
                .tracker
                .broke_off(&source.endpoints[blob.endpoint], &reason);
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
            tracing::warn!(digest, url = %blob.url, offset = at, "chunk download broke off ({reason}), resuming");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::events::Tracker;
    use crate::pull::scheduler::Scheduler;
    use crate::registry::fake::{self, Fake, REPO};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn source(registry: &Fake, connections: usize) -> Source {
        Source {
            client: Arc::new(fake::client()),
            target: Arc::new(fake::target()),
            endpoints: vec![registry.endpoint()].into(),
            scheduler: Arc::new(Scheduler::new(connections, 64 << 20)),
            chunk_size: DEFAULT_CHUNK,
            tracker: Arc::new(Tracker::new(
                REPO.to_string(),
                tokio::sync::broadcast::channel(16).0,
            )),
        }
    }

    const DEFAULT_CHUNK: u64 = super::super::DEFAULT_CHUNK_SIZE;

    /// Fetches `0..len` as one chunk and returns its bytes, split-off pieces
    /// included, in order.
    async fn fetch_all(source: &Source, digest: &str, len: usize) -> Vec<u8> {
        let received = Arc::new(AtomicU64::new(0));
        let mut next = Some(
            fetch_range(
                source.clone(),
                digest.to_string(),
                0,
                len as u64 - 1,
                received.clone(),
                BytesMut::with_capacity(len),
                None,
            )
            .await,
        );
        let mut out = Vec::new();
        while let Some(result) = next.take() {
            let Ok(mut data) = result else {
                panic!("a piece failed")
            };
            out.extend_from_slice(&data.bytes);
            if let Some(rest) = data.rest.take() {
                next = Some(rest.await.expect("the piece's task"));
            }
        }
        assert!(received.load(Ordering::Relaxed) as usize >= len);
        out
    }

    #[tokio::test]
    async fn an_idle_connection_takes_over_half_of_a_chunks_tail() {
        let registry = Fake::start().await;
        let blob = data(8 << 20);
        let digest = registry.blob(REPO, &blob);
        let source = source(&registry, 4);
        let got = fetch_all(&source, &digest, blob.len()).await;
        assert!(got == blob, "the pieces put together are the blob");
        let ranges: Vec<String> = registry
            .requests_to(&fake::blob_path(REPO, &digest))
            .iter()
            .filter_map(|seen| seen.header("range").map(str::to_string))
            .collect();
        assert!(ranges.len() >= 2, "no split: {ranges:?}");
        assert!(
            ranges.len() <= 4,
            "more requests than connections: {ranges:?}"
        );
        assert_eq!(ranges[0], format!("bytes=0-{}", blob.len() - 1));
        // Each piece asked for the tail of the one before, down to the blob's end.
        for range in &ranges[1..] {
            let (first, last) = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .unwrap();
            let first: u64 = first.parse().unwrap();
            assert!(first >= MIN_SPLIT, "{range}");
            assert_eq!(last, (blob.len() - 1).to_string(), "{range}");
        }
        assert_eq!(source.scheduler.connection_limit(), 4);
    }

    #[tokio::test]
    async fn no_split_without_an_idle_connection_or_for_a_short_tail() {
        let registry = Fake::start().await;
        let blob = data(8 << 20);
        let digest = registry.blob(REPO, &blob);
        let got = fetch_all(&source(&registry, 1), &digest, blob.len()).await;
        assert!(got == blob);
        let short = data((2 * MIN_SPLIT - 1) as usize);
        let short_digest = registry.blob(REPO, &short);
        let got = fetch_all(&source(&registry, 8), &short_digest, short.len()).await;
        assert!(got == short);
        for digest in [digest, short_digest] {
            assert_eq!(
                registry.requests_to(&fake::blob_path(REPO, &digest)).len(),
                1
            );
        }
    }
}
