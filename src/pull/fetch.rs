//! Fetching one blob from the registry into containerd's content store.

use std::collections::HashMap;

use bytes::BytesMut;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use super::Error;
use crate::containerd::{ContentStore, OpenWriter, LABEL_DISTRIBUTION_SOURCE};
use crate::registry::{self, Endpoint, Target};

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
}

/// The registry side of a pull: where blobs come from.
pub(crate) struct Source<'a> {
    pub client: &'a registry::Client,
    pub target: &'a Target,
    pub endpoints: &'a [Endpoint],
}

/// Streams a blob into the content store, resuming on the next endpoint when a
/// download breaks off, and checking its sha256 while streaming.
///
/// The digest check here only makes a bad mirror fail fast: containerd verifies
/// size and digest again on commit, so wrong bytes can never be committed.
pub(crate) async fn fetch_blob(
    source: &Source<'_>,
    content: &ContentStore,
    job: BlobJob<'_>,
) -> Result<Fetched, Error> {
    let mut fetched = Fetched::default();
    let endpoint_count = source.endpoints.len().max(1);
    let mut avoid = None;
    let mut mismatch = None;
    // A mirror that served wrong bytes is skipped and the blob fetched again from the
    // next endpoint; one whole-blob try per endpoint at most.
    for _ in 0..endpoint_count {
        let mut writer = match content
            .open_writer(&job.ref_key, job.digest, job.size)
            .await
            .map_err(|e| Error::containerd("opening a content writer", e))?
        {
            OpenWriter::Exists => {
                fetched.present = fetched.bytes == 0;
                merge_labels(content, job.digest, &job.labels).await?;
                return Ok(fetched);
            }
            OpenWriter::Writer(writer) => writer,
        };
        if writer.offset() > 0 {
            tracing::info!(
                digest = job.digest,
                offset = writer.offset(),
                "resuming a partial download"
            );
        }
        // Bytes left in the ingest by an earlier run cannot be re-hashed through the
        // API; containerd's commit check covers them.
        let mut hasher =
            (writer.offset() == 0 && job.digest.starts_with("sha256:")).then(Sha256::new);
        let mut resumes = 0;
        let mut last_url = String::new();
        let mut last_endpoint = 0;
        while writer.offset() < job.size {
            let blob = source
                .client
                .blob(
                    source.target,
                    job.digest,
                    writer.offset(),
                    source.endpoints,
                    avoid,
                )
                .await
                .map_err(|e| Error::Fetch {
                    digest: job.digest.to_string(),
                    source: e,
                })?;
            last_url = blob.url.clone();
            last_endpoint = blob.endpoint;
            let failure = stream_body(
                blob.response,
                &mut writer,
                &mut hasher,
                job.size,
                &mut fetched.bytes,
            )
            .await?;
            let Some(reason) = failure else { break };
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
        if let Some(hasher) = hasher {
            let got = format!("sha256:{}", hex::encode(hasher.finalize()));
            if got != job.digest {
                tracing::warn!(digest = job.digest, url = %last_url, got, "wrong bytes, discarding the download");
                content
                    .abort(writer.ref_key())
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
        writer
            .commit(job.labels.clone())
            .await
            .map_err(|e| Error::containerd("committing a blob", e))?;
        return Ok(fetched);
    }
    let (got, url) = mismatch.unwrap_or_default();
    Err(Error::DigestMismatch {
        digest: job.digest.to_string(),
        got,
        url,
    })
}

/// Copies a response body into the writer. Returns `Some(reason)` when the body
/// broke off before the blob was complete (the caller resumes), `None` when done.
async fn stream_body(
    response: reqwest::Response,
    writer: &mut crate::containerd::ContentWriter,
    hasher: &mut Option<Sha256>,
    size: u64,
    received: &mut u64,
) -> Result<Option<String>, Error> {
    let mut body = response.bytes_stream();
    let mut buffer = BytesMut::with_capacity(crate::containerd::WRITE_CHUNK);
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                failure = Some(registry::describe(&e));
                break;
            }
        };
        *received += chunk.len() as u64;
        if writer.offset() + (buffer.len() + chunk.len()) as u64 > size {
            failure = Some(format!("the body is longer than the {size} bytes expected"));
            buffer.clear();
            break;
        }
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&chunk);
        }
        buffer.extend_from_slice(&chunk);
        if buffer.len() >= crate::containerd::WRITE_CHUNK {
            write(writer, &mut buffer).await?;
        }
    }
    write(writer, &mut buffer).await?;
    if failure.is_none() && writer.offset() < size {
        failure = Some(format!(
            "the body ended at byte {} of {size}",
            writer.offset()
        ));
    }
    Ok(failure)
}

async fn write(
    writer: &mut crate::containerd::ContentWriter,
    buffer: &mut BytesMut,
) -> Result<(), Error> {
    if !buffer.is_empty() {
        writer
            .write(buffer)
            .await
            .map_err(|e| Error::containerd("writing a blob", e))?;
        buffer.clear();
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
            // Whatever a previous attempt left in the ingest is rewritten from 0:
            // a write at offset 0 truncates it.
            let offset = writer.offset() as usize;
            if offset > 0 {
                content
                    .abort(writer.ref_key())
                    .await
                    .map_err(|e| Error::containerd("discarding a partial document", e))?;
                return Box::pin(store_document(content, job, data)).await;
            }
            writer
                .write(data)
                .await
                .map_err(|e| Error::containerd("writing a document", e))?;
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
