//! Content store: blob info and labels, and the `Content.Write` ingest stream.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction,
    WriteContentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::writeback::Writeback;
use super::{Connection, Error};

/// Largest data payload of one `WRITE` message. containerd's server accepts 16 MiB
/// messages; 1 MiB keeps memory per writer small while the per-message round trip
/// on a unix socket stays negligible next to the transfer itself.
pub const WRITE_CHUNK: usize = 1 << 20;

/// `WRITE` messages sent ahead of their replies.
pub const WRITES_IN_FLIGHT: usize = 8;

/// How long to wait for an ingest ref locked by another writer (another ctrpull, or
/// containerd's own pull of the same blob) before giving up.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(600);

/// containerd's `WriteContentRequest` (`containerd.services.content.v1`, same field
/// numbers), with the payload as [`Bytes`]: a blob's bytes go from the download
/// buffer into the gRPC frame without another copy and a fresh buffer per message,
/// which the generated type's `Vec<u8>` would need.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WriteRequest {
    #[prost(enumeration = "WriteAction", tag = "1")]
    action: i32,
    #[prost(string, tag = "2")]
    r#ref: String,
    #[prost(int64, tag = "3")]
    total: i64,
    #[prost(string, tag = "4")]
    expected: String,
    #[prost(int64, tag = "5")]
    offset: i64,
    #[prost(bytes = "bytes", tag = "6")]
    data: Bytes,
    #[prost(map = "string, string", tag = "7")]
    labels: HashMap<String, String>,
}

/// The content store of one namespace (and lease, if the connection has one).
#[derive(Clone, Debug)]
pub struct ContentStore {
    conn: Connection,
}

/// Result of opening a writer for a blob.
pub enum OpenWriter {
    /// The blob is already in the content store (and now also held by our lease).
    Exists,
    /// A writer positioned at the ingest's current offset (non-zero when a previous
    /// attempt left a partial ingest behind).
    Writer(Box<ContentWriter>),
}

impl ContentStore {
    /// The content store behind `conn`.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Info of a committed blob, `None` when it is absent.
    pub async fn info(&self, digest: &str) -> Result<Option<Info>, Error> {
        let request = self.conn.request(InfoRequest {
            digest: digest.to_string(),
        });
        match self.conn.content_client().info(request).await {
            Ok(reply) => Ok(reply.into_inner().info),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::rpc("Content.Info", digest, status)),
        }
    }

    /// Reads a whole committed blob; for small documents (configs, manifests) only.
    pub async fn read(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let request = self.conn.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        });
        let mut stream = self
            .conn
            .content_client()
            .read(request)
            .await
            .map_err(|status| Error::rpc("Content.Read", digest, status))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(reply) = stream
            .message()
            .await
            .map_err(|status| Error::rpc("Content.Read", digest, status))?
        {
            data.extend_from_slice(&reply.data);
        }
        Ok(data)
    }

    /// Sets `labels` on a committed blob, leaving its other labels alone.
    pub async fn set_labels(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = self.conn.request(UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        self.conn
            .content_client()
            .update(request)
            .await
            .map_err(|status| Error::rpc("Content.Update", digest, status))?;
        Ok(())
    }

    /// Drops a partial ingest, so that bytes we know to be wrong are not resumed.
    pub async fn abort(&self, ref_key: &str) -> Result<(), Error> {
        let request = self.conn.request(AbortRequest {
            r#ref: ref_key.to_string(),
        });
        match self.conn.content_client().abort(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(Error::rpc("Content.Abort", ref_key, status)),
        }
    }

    /// Opens an ingest for the blob `digest` of `size` bytes under `ref_key`.
    ///
    /// containerd answers `AlreadyExists` when the blob is committed (and adds it to
    /// our lease), and `Unavailable` while another client holds the same ref: that
    /// client is downloading the very same blob, so we wait for it with jittered
    /// backoff, as containerd's own `OpenWriter` does, rather than fetch it twice.
    pub async fn open_writer(
        &self,
        ref_key: &str,
        digest: &str,
        size: u64,
    ) -> Result<OpenWriter, Error> {
        self.open_writer_with(ref_key, digest, size, || {}).await
    }

    /// [`open_writer`](Self::open_writer), calling `waiting` each time it finds the
    /// ref locked and backs off: a caller that holds something others may need
    /// (its place in an order, say) can give it up rather than hold it while it
    /// waits for another writer.
    pub async fn open_writer_with(
        &self,
        ref_key: &str,
        digest: &str,
        size: u64,
        mut waiting: impl FnMut(),
    ) -> Result<OpenWriter, Error> {
        let deadline = tokio::time::Instant::now() + DEFAULT_LOCK_WAIT;
        let mut backoff = Duration::from_millis(16);
        loop {
            match self.try_open(ref_key, digest, size).await {
                Err(e) if e.is_already_exists() => return Ok(OpenWriter::Exists),
                Err(e)
                    if e.code() == Some(tonic::Code::Unavailable)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(ref_key, "ingest locked by another writer, waiting");
                    waiting();
                    let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 2);
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(2048));
                }
                other => return other.map(|w| OpenWriter::Writer(Box::new(w))),
            }
        }
    }

    async fn try_open(
        &self,
        ref_key: &str,
        digest: &str,
        size: u64,
    ) -> Result<ContentWriter, Error> {
        let (tx, rx) = mpsc::channel(2);
        let stat = WriteRequest {
            action: WriteAction::Stat as i32,
            r#ref: ref_key.to_string(),
            total: size as i64,
            expected: digest.to_string(),
            ..Default::default()
        };
        tx.send(stat).await.map_err(|_| closed(ref_key))?;
        let request = self.conn.request(ReceiverStream::new(rx));
        let mut responses = self
            .conn
            .content_write(request)
            .await
            .map_err(|status| Error::rpc("Content.Write", ref_key, status))?;
        let reply = next_reply(&mut responses, ref_key).await?;
        let offset = u64::try_from(reply.offset).unwrap_or(0);
        if reply.total > 0 && reply.total as u64 != size {
            return Err(Error::Protocol {
                target: ref_key.to_string(),
                reason: format!(
                    "existing ingest expects {} bytes, the descriptor says {size}",
                    reply.total
                ),
            });
        }
        let writeback = match size >= super::WRITEBACK_STEP {
            true => self.conn.ingest_dir().await,
            false => None,
        }
        .map(|ingests| Writeback::new(ingests, self.conn.namespace(), ref_key));
        Ok(ContentWriter {
            tx,
            responses,
            writeback,
            ref_key: ref_key.to_string(),
            digest: digest.to_string(),
            total: size,
            offset,
            pending: std::collections::VecDeque::new(),
        })
    }
}

/// One open `Content.Write` stream. Data must arrive in order: containerd's ingest
/// is append-only and rejects a write at any offset but the current one.
pub struct ContentWriter {
    tx: mpsc::Sender<WriteRequest>,
    responses: Streaming<WriteContentResponse>,
    ref_key: String,
    digest: String,
    total: u64,
    offset: u64,
    /// Offsets the replies to writes sent but not yet answered must report.
    pending: std::collections::VecDeque<u64>,
    /// Starts writing the ingest file back to the disk as containerd writes it
    /// (blobs of at least a writeback step, when containerd's files are visible).
    writeback: Option<Writeback>,
}

impl ContentWriter {
    /// Where the next write goes: bytes already in the ingest plus those sent since
    /// (containerd answers writes in order; a failed one fails the stream).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Starts the ingest over: the next write goes to offset 0, which makes
    /// containerd truncate what the ingest held.
    pub fn truncate(&mut self) {
        self.offset = 0;
        if let Some(writeback) = &mut self.writeback {
            writeback.restart();
        }
    }

    /// The ingest ref this writer holds.
    pub fn ref_key(&self) -> &str {
        &self.ref_key
    }

    /// Appends `data` at the current offset. The messages sent share `data`'s
    /// buffer; nothing is copied until the gRPC frame is encoded.
    pub async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        if self.offset + data.len() as u64 > self.total {
            return Err(Error::Protocol {
                target: self.ref_key.clone(),
                reason: format!(
                    "{} bytes at offset {} would pass the expected size {}",
                    data.len(),
                    self.offset,
                    self.total
                ),
            });
        }
        let mut start = 0;
        while start < data.len() {
            let chunk = data.slice(start..data.len().min(start + WRITE_CHUNK));
            start += chunk.len();
            // Pipelined: up to WRITES_IN_FLIGHT messages go out before their replies
            // are read, so the socket round trip per message does not cap throughput.
            if self.pending.len() >= WRITES_IN_FLIGHT {
                self.settle_one().await?;
            }
            let len = chunk.len() as u64;
            let message = WriteRequest {
                action: WriteAction::Write as i32,
                r#ref: self.ref_key.clone(),
                offset: self.offset as i64,
                data: chunk,
                ..Default::default()
            };
            self.tx
                .send(message)
                .await
                .map_err(|_| closed(&self.ref_key))?;
            self.offset += len;
            self.pending.push_back(self.offset);
        }
        Ok(())
    }

    /// Reads the reply to the oldest unanswered write and checks the offset it reports.
    async fn settle_one(&mut self) -> Result<(), Error> {
        let Some(expected) = self.pending.pop_front() else {
            return Ok(());
        };
        let reply = next_reply(&mut self.responses, &self.ref_key).await?;
        if reply.offset as u64 != expected {
            return Err(Error::Protocol {
                target: self.ref_key.clone(),
                reason: format!("offset {} after write, expected {expected}", reply.offset),
            });
        }
        if let Some(writeback) = &mut self.writeback {
            writeback.written(expected);
        }
        Ok(())
    }

    /// Commits the ingest: containerd checks size and digest before the blob becomes
    /// visible, so a wrong byte can never be committed under `digest`.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), Error> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        let message = WriteRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.ref_key.clone(),
            total: self.total as i64,
            offset: self.offset as i64,
            expected: self.digest.clone(),
            labels,
            ..Default::default()
        };
        self.tx
            .send(message)
            .await
            .map_err(|_| closed(&self.ref_key))?;
        if let Some(writeback) = self.writeback.as_ref().filter(|w| w.asked() > 0) {
            tracing::debug!(
                ref_key = self.ref_key,
                bytes = writeback.asked(),
                "ingest written back while downloading"
            );
        }
        match next_reply(&mut self.responses, &self.ref_key).await {
            Ok(_) => Ok(()),
            // Someone else committed the same blob between our last write and now.
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn next_reply(
    responses: &mut Streaming<WriteContentResponse>,
    ref_key: &str,
) -> Result<WriteContentResponse, Error> {
    match responses.message().await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(closed(ref_key)),
        Err(status) => Err(Error::rpc("Content.Write", ref_key, status)),
    }
}

fn closed(ref_key: &str) -> Error {
    Error::Protocol {
        target: ref_key.to_string(),
        reason: "the write stream closed early".into(),
    }
}
