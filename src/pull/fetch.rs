//! Fetching one blob from the registry into containerd's content store.

use std::collections::HashMap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::time::Instant;

use super::chunked::{download_chunked, Chunked, HandedOff, Handoffs};
use super::events::{BrokeOff, Tracker};
use super::plan;
use super::scheduler::{Scheduler, Unplanned};
use super::tap::Tap;
use super::watchdog::Watchdog;
use super::Error;
use crate::containerd::{ContentStore, ContentWriter, OpenWriter, LABEL_DISTRIBUTION_SOURCE};
use crate::registry::{self, Endpoint, Target};
use tokio::sync::watch;

/// How many times a blob download that breaks off mid-stream is resumed (from the
/// content writer's offset, on the next endpoint) before the pull fails.
pub const MAX_RESUMES: usize = 5;

/// What fetching one blob did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Body bytes received from the registry.
    pub bytes: u64,
    /// True when the blob was already in the content store and nothing was fetched.
    pub present: bool,
}

/// One blob to bring into the content store.
pub(crate) struct BlobJob<'a> {
    pub digest: &'a str,
    pub size: u64,
    pub ref_key: String,
    /// Labels set on commit (or merged in when the blob is already there).
    pub labels: HashMap<String, String>,
    /// When its Range requests may be cut.
    pub turn: Turn,
    /// Its bytes, counted among the run's unplanned bytes from the moment the
    /// manifest listed it (so the first blobs to start are not cut as if they were
    /// all that is left of the run), and recounted once its download knows what
    /// the ingest still lacks. `None`: counted from then on.
    pub unplanned: Option<Unplanned>,
    /// Where the bytes go besides the content store: a layer's unpack that runs
    /// while it downloads.
    pub tap: Tap,
}

/// The order in which blobs cut their Range requests: a layer's chunks are cut (and
/// take their reorder memory) only once every layer below has cut all of its own,
/// so when an image is bigger than the reorder budget, the budget goes to the lower
/// layers first and they tend to complete, and be applied, while the ones above
/// download. It orders cutting, not completion. Blobs that come in one stream (the
/// small ones) do not wait their turn, but a turn passes them only once it has
/// passed every blob below: a small layer between two big ones does not let the
/// upper one cut ahead of the lower.
///
/// A blob's turn passes when it says so ([`Turn::pass`]): once its chunks are all
/// cut, when it needs none, or while it waits for another writer's ingest of the
/// same blob; and when it is dropped, however its download ends. So nothing waits
/// for ever.
#[derive(Debug, Default)]
pub(crate) struct Turn(Option<(Arc<watch::Sender<Vec<bool>>>, usize)>);

impl Turn {
    /// Turns for `count` blobs taken in order: one flag per blob, set once it has
    /// passed.
    pub fn chain(count: usize) -> Vec<Turn> {
        let passed = Arc::new(watch::Sender::new(vec![false; count]));
        (0..count)
            .map(|index| Turn(Some((passed.clone(), index))))
            .collect()
    }

    /// Waits until every blob below this one has passed its turn.
    pub async fn wait(&self) {
        let Some((passed, index)) = &self.0 else {
            return;
        };
        // The sender is shared with this turn, so never closed while it waits.
        let _ = passed
            .subscribe()
            .wait_for(|passed| passed[..*index].iter().all(|p| *p))
            .await;
    }

    /// This blob has cut all its chunks (or needs none): the blob above may cut
    /// its own once every blob below this one has passed too.
    pub fn pass(&self) {
        if let Some((passed, index)) = &self.0 {
            passed.send_if_modified(|passed| !std::mem::replace(&mut passed[*index], true));
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.pass();
    }
}

/// The registry side of a pull: where blobs come from, and the run's budgets.
/// Cheap to clone: chunk downloads run as tasks of their own, each with a copy.
#[derive(Clone)]
pub(crate) struct Source {
    pub client: Arc<registry::Client>,
    pub target: Arc<Target>,
    pub endpoints: Arc<[Endpoint]>,
    pub scheduler: Arc<Scheduler>,
    pub chunk_size: u64,
    /// The pull's counters and progress events.
    pub tracker: Arc<Tracker>,
}

/// Streams a blob into the content store, resuming on the next endpoint when a
/// download breaks off. containerd verifies size and digest on commit, so wrong
/// bytes can never be committed; a refused commit sends the blob to the next
/// endpoint.
pub(crate) async fn fetch_blob(
    source: &Source,
    content: &ContentStore,
    mut job: BlobJob<'_>,
) -> Result<Fetched, Error> {
    let mut unplanned = job
        .unplanned
        .unwrap_or_else(|| source.scheduler.unplanned(0));
    let received = Arc::new(AtomicU64::new(0));
    let digest: Arc<str> = Arc::from(job.digest);
    let endpoint_count = source.endpoints.len().max(1);
    let mut avoid = None;
    let mut mismatch = None;
    let mut no_ranges = false;
    // A mirror that served wrong bytes is skipped and the blob fetched again from the
    // next endpoint; one whole-blob try per endpoint at most (plus one restart when
    // Range requests turn out unsupported).
    for _ in 0..=endpoint_count {
        // A blob another writer holds is not ours to cut while we wait for it, and
        // that writer may be waiting for a turn below this one (two images listing
        // the same layers in a different order): the turn passes on. Its bytes stay
        // counted until the open tells what is left (a wait is not always another
        // writer: containerd's Unavailable covers a broken connection too).
        let mut writer = match content
            .open_writer_with(&job.ref_key, job.digest, job.size, || job.turn.pass())
            .await
            .map_err(|e| Error::containerd("opening a content writer", e))?
        {
            OpenWriter::Exists => {
                let bytes = received.load(Ordering::Relaxed);
                merge_labels(content, job.digest, &job.labels).await?;
                return Ok(Fetched {
                    bytes,
                    present: bytes == 0,
                });
            }
            OpenWriter::Writer(writer) => writer,
        };
        if writer.offset() == job.size {
            tracing::debug!(
                digest = job.digest,
                "already in the store (under another namespace)"
            );
        }
        if writer.offset() > 0 {
            // An unpack fed from here must see the blob from its first byte.
            job.tap.detach();
        }
        if writer.offset() > 0 && writer.offset() < job.size {
            tracing::info!(
                digest = job.digest,
                offset = writer.offset(),
                "resuming a partial download"
            );
        }
        let mut last_url = String::new();
        let mut last_endpoint = 0;
        unplanned.recount(job.size - writer.offset());
        if !no_ranges && job.size - writer.offset() >= 2 * plan::MIN_CHUNK {
            job.turn.wait().await;
            match download_chunked(
                source,
                &mut writer,
                job.digest,
                job.size,
                &received,
                &mut unplanned,
                &job.turn,
                &mut job.tap,
            )
            .await?
            {
                Chunked::Done { url, endpoint } => {
                    last_url = url;
                    last_endpoint = endpoint;
                }
                Chunked::RangeIgnored => {
                    // No endpoint serves ranges: one stream from the start, since a
                    // resumed stream needs a Range too.
                    let why = "no endpoint honours Range requests";
                    start_over(content, &writer, &mut job.tap, job.digest, why).await?;
                    no_ranges = true;
                    continue;
                }
            }
        }
        unplanned.take_all();
        job.turn.pass();
        let mut resumes = 0;
        // While the stream crawls, or near the end of the run, its back may go to
        // idle connections (not once the blob comes without Range requests).
        let mut handoffs = Handoffs::new(job.size);
        while writer.offset() < handoffs.end() {
            // Blobs that come in one stream are the small ones (or ones no endpoint
            // will split): they get a reserved lane so they never queue behind the
            // chunks of a big layer.
            let connection = source.scheduler.small_connection().await;
            let asked = Instant::now();
            let last = (handoffs.end() < job.size).then(|| handoffs.end() - 1);
            let blob = source
                .client
                .blob_range(
                    &source.target,
                    job.digest,
                    writer.offset(),
                    last,
                    &source.endpoints,
                    avoid,
                )
                .await
                .map_err(|e| Error::Fetch {
                    digest: job.digest.to_string(),
                    source: e,
                })?;
            source
                .tracker
                .served_blob(&source.endpoints, blob.endpoint, &blob.failed);
            last_url = blob.url.clone();
            last_endpoint = blob.endpoint;
            let stream = Stream {
                source,
                digest: &digest,
                endpoint: blob.endpoint,
                carries: last.map_or(job.size, |last| last + 1),
                received: &received,
                asked,
                handoffs: (!no_ranges).then_some(&mut handoffs),
            };
            let failure =
                stream_body(blob.response, &mut writer, job.size, stream, &mut job.tap).await?;
            drop(connection);
            let Some(why) = failure else { break };
            source
                .tracker
                .broke_off(&source.endpoints[blob.endpoint], &why);
            let reason = why.reason;
            resumes += 1;
            // Whatever broke the stream (reset, stall, early end) says the endpoint
            // is unwell: the rest comes from the next healthy one, from this offset.
            source
                .client
                .demote(&source.endpoints[blob.endpoint], &reason);
            avoid = Some(blob.endpoint);
            if resumes > MAX_RESUMES {
                return Err(Error::Transfer {
                    digest: job.digest.to_string(),
                    url: blob.url,
                    reason: format!("{reason} (gave up after {MAX_RESUMES} resumes)"),
                });
            }
            tracing::warn!(digest = job.digest, url = %blob.url, offset = writer.offset(), "download broke off ({reason}), resuming");
        }
        if let HandedOff::Unusable(why) = handoffs
            .write(&mut writer, &mut job.tap, job.digest)
            .await?
        {
            start_over(content, &writer, &mut job.tap, job.digest, &why).await?;
            no_ranges = true;
            continue;
        }
        // containerd hashes what it is given and refuses to commit bytes whose digest
        // is not the expected one: that check (not a second hash here) is what keeps
        // a bad mirror's bytes out of the store, resumed ingests included.
        // Every byte is written: an unpack fed from here can finish now, without
        // waiting for the commit's sync (its diff ID vouches for the snapshot).
        job.tap.finished();
        let committing = std::time::Instant::now();
        match writer.commit(job.labels.clone()).await {
            Ok(()) => {}
            Err(e) => {
                let Some(got) = e.wrong_commit_digest().map(str::to_string) else {
                    return Err(Error::containerd("committing a blob", e));
                };
                tracing::warn!(digest = job.digest, url = %last_url, got, "wrong bytes, discarding the download");
                job.tap.detach();
                content
                    .abort(&job.ref_key)
                    .await
                    .map_err(|e| Error::containerd("discarding a corrupt download", e))?;
                source.client.demote(
                    &source.endpoints[last_endpoint],
                    "served bytes with the wrong digest",
                );
                avoid = Some(last_endpoint);
                mismatch = Some((got, last_url));
                continue;
            }
        }
        tracing::debug!(digest = job.digest, elapsed = ?committing.elapsed(), "blob committed");
        return Ok(Fetched {
            bytes: received.load(Ordering::Relaxed),
            present: false,
        });
    }
    let (got, url) = mismatch.unwrap_or_default();
    Err(Error::DigestMismatch {
        digest: job.digest.to_string(),
        got,
        url,
    })
}

/// Discards what `writer`'s ingest holds, for the blob to come in one stream from
/// its start (`why`: Range requests cannot be used for it).
async fn start_over(
    content: &ContentStore,
    writer: &ContentWriter,
    tap: &mut Tap,
    digest: &str,
    why: &str,
) -> Result<(), Error> {
    tracing::info!(digest, "{why}; fetching in one stream");
    tap.detach();
    content
        .abort(writer.ref_key())
        .await
        .map_err(|e| Error::containerd("restarting a download", e))
}

/// One stream of a blob: where it comes from and where its back parts go.
struct Stream<'a> {
    source: &'a Source,
    digest: &'a Arc<str>,
    /// The endpoint answering (an index into the source's endpoints).
    endpoint: usize,
    /// Where the bytes of the response end (what it was asked for).
    carries: u64,
    received: &'a Arc<AtomicU64>,
    /// When the request was sent.
    asked: Instant,
    /// Where the back of the stream may be handed off; `None` once the blob comes
    /// without Range requests.
    handoffs: Option<&'a mut Handoffs>,
}

/// Copies a response body into the writer, up to where the stream's bytes end
/// (the blob's `size`, or where a part handed to an idle connection begins).
/// Returns why when the body broke off before that (the caller resumes), `None`
/// when done.
async fn stream_body(
    response: reqwest::Response,
    writer: &mut ContentWriter,
    size: u64,
    mut stream: Stream<'_>,
    tap: &mut Tap,
) -> Result<Option<BrokeOff>, Error> {
    let scheduler = &stream.source.scheduler;
    let tracker = &stream.source.tracker;
    let peers = scheduler.peers();
    let end = |stream: &Stream| stream.handoffs.as_ref().map_or(size, |h| h.end());
    let mut body = response.bytes_stream();
    let mut buffer = BytesMut::new();
    let mut failure = None;
    let mut watchdog = Watchdog::new();
    // When the first byte came, and the stream's position then.
    let mut first_byte: Option<(Instant, u64)> = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                failure = Some(BrokeOff::body(&e));
                break;
            }
        };
        if let Some(handoffs) = stream.handoffs.as_deref_mut() {
            handoffs.take_back_if_ignored(stream.source, stream.carries);
        }
        let at = writer.offset() + buffer.len() as u64;
        if at + chunk.len() as u64 > size {
            // What is buffered is within the size: keep it.
            failure = Some(BrokeOff::failed(format!(
                "the body is longer than the {size} bytes expected"
            )));
            break;
        }
        // Bytes past where a handed-off part begins are that part's.
        let take = chunk.len().min((end(&stream) - at) as usize);
        stream.received.fetch_add(take as u64, Ordering::Relaxed);
        scheduler.add_bytes(take as u64);
        tracker.bytes(take as u64);
        let (since, from) = *first_byte.get_or_insert((Instant::now(), at));
        if buffer.is_empty() {
            // The last buffer went out with the messages that share it.
            buffer.reserve(crate::containerd::WRITE_CHUNK);
        }
        buffer.extend_from_slice(&chunk[..take]);
        if buffer.len() >= crate::containerd::WRITE_CHUNK {
            write(writer, &mut buffer, tap).await?;
        }
        let judged = watchdog.progress(take as u64, peers.floor());
        let at = writer.offset() + buffer.len() as u64;
        if at >= end(&stream) {
            // Done, however slowly the last bytes came.
            break;
        }
        if let Err(reason) = judged {
            failure = Some(BrokeOff::stalled(reason));
            break;
        }
        if let Some(handoffs) = stream.handoffs.as_deref_mut() {
            let flow = (at - from, since.elapsed(), since - stream.asked);
            let from = (stream.digest, stream.endpoint);
            handoffs.offer(stream.source, from, stream.received, at, flow);
        }
    }
    write(writer, &mut buffer, tap).await?;
    if failure.is_none() {
        peers.record(watchdog.bytes(), watchdog.elapsed());
    }
    if failure.is_none() && writer.offset() < end(&stream) {
        failure = Some(BrokeOff::failed(format!(
            "the body ended at byte {} of {size}",
            writer.offset()
        )));
    }
    Ok(failure)
}

async fn write(
    writer: &mut ContentWriter,
    buffer: &mut BytesMut,
    tap: &mut Tap,
) -> Result<(), Error> {
    if !buffer.is_empty() {
        // The messages sent share this buffer until they are encoded: the next
        // bytes go to a new one, made when they come.
        let data = buffer.split().freeze();
        writer
            .write(data.clone())
            .await
            .map_err(|e| Error::containerd("writing a blob", e))?;
        if tap.is_attached() {
            tap.feed(data).await;
        }
    }
    Ok(())
}

/// Writes a small document we hold in memory (manifest, index).
pub(crate) async fn store_document(
    content: &ContentStore,
    job: BlobJob<'_>,
    data: &[u8],
) -> Result<bool, Error> {
    match content
        .open_writer(&job.ref_key, job.digest, job.size)
        .await
        .map_err(|e| Error::containerd("opening a content writer", e))?
    {
        OpenWriter::Exists => {
            merge_labels(content, job.digest, &job.labels).await?;
            Ok(false)
        }
        OpenWriter::Writer(mut writer) => {
            let offset = writer.offset();
            if offset == job.size {
                // Complete already: in the store under another namespace (containerd
                // shares content and shows it as a full ingest), or left by an earlier
                // run. Committing checks the digest.
            } else {
                if offset > 0 {
                    // Partial bytes from an earlier attempt: a write at offset 0
                    // truncates them.
                    writer.truncate();
                }
                writer
                    .write(Bytes::copy_from_slice(data))
                    .await
                    .map_err(|e| Error::containerd("writing a document", e))?;
            }
            writer
                .commit(job.labels.clone())
                .await
                .map_err(|e| Error::containerd("committing a document", e))?;
            Ok(true)
        }
    }
}

/// Adds our labels to a blob that was already there. The distribution source label
/// is a comma-separated list of repositories, so ours is appended, not replaced.
async fn merge_labels(
    content: &ContentStore,
    digest: &str,
    labels: &HashMap<String, String>,
) -> Result<(), Error> {
    let existing = content
        .info(digest)
        .await
        .map_err(|e| Error::containerd("reading blob labels", e))?
        .map(|info| info.labels)
        .unwrap_or_default();
    let mut update = HashMap::new();
    for (key, value) in labels {
        let merged = match existing.get(key) {
            Some(old) if key.starts_with(LABEL_DISTRIBUTION_SOURCE) => {
                if old.split(',').any(|repo| repo == value) {
                    continue;
                }
                format!("{old},{value}")
            }
            Some(old) if old == value => continue,
            _ => value.clone(),
        };
        update.insert(key.clone(), merged);
    }
    content
        .set_labels(digest, update)
        .await
        .map_err(|e| Error::containerd("labelling a blob", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `turn`'s wait is over, without waiting.
    fn come(turn: &Turn) -> bool {
        use futures::FutureExt;
        turn.wait().now_or_never().is_some()
    }

    #[test]
    fn turns_pass_up_the_chain_in_order_however_a_blob_ends() {
        let mut turns = Turn::chain(4);
        assert!(come(&turns[0]), "the bottom blob waits for nobody");
        assert!(!come(&turns[1]) && !come(&turns[2]) && !come(&turns[3]));
        // The third passes first (a small blob in one stream): nobody above moves
        // while the first two have not passed.
        turns[2].pass();
        assert!(!come(&turns[1]) && !come(&turns[3]));
        // The bottom blob cuts its last chunk: the second's turn only.
        turns[0].pass();
        assert!(come(&turns[1]));
        assert!(!come(&turns[3]), "the second has not passed yet");
        // The second ends without cutting all its chunks (an error): dropping it
        // still passes the turn on, past the third, so nothing waits for ever.
        drop(turns.remove(1));
        assert!(come(&turns[2]), "the fourth blob's turn");
        // Passing twice is harmless; a blob outside any chain never waits.
        turns[0].pass();
        assert!(come(&turns[2]));
        assert!(come(&Turn::default()));
    }
}
