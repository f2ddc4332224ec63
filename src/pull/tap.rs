//! A layer's bytes handed over as they are written to the content store, so the
//! layer can be unpacked while it downloads instead of after.
//!
//! The writer side ([`Tap`]) sees the blob from its first byte to its last, in
//! order; the reading side ([`Feed`]) is a blocking [`Read`](std::io::Read) for the
//! applier's thread. It only ever yields the bytes written to containerd, and it
//! ends cleanly only once the writer has handed over the blob's last byte, just
//! before it asks containerd to commit them: anything else (a download that starts
//! over, a resume from an earlier run's partial ingest, a failure) detaches the tap
//! and the reader gets an error, so an unpack fed this way never finishes on part
//! of a blob. It does not wait for containerd's check of the blob's digest: the
//! unpack's diff ID, checked against the image config before the snapshot is
//! committed, vouches for what the snapshot holds, and the next layer's unpack
//! need not wait for the commit's sync.
//!
//! Memory: until its applier starts (the layers below it are still being unpacked),
//! a tap holds what it is handed in memory against a budget shared by the whole
//! run ([`WAITING_BUDGET`]); beyond that it writes the pieces to a temporary file
//! of its own (unlinked, in the spill directory: the system's temporary directory)
//! and the feed reads them back from there, in order, when the applier gets to
//! them. Only when that file cannot be made or written does the tap detach, and the
//! layer is applied after its download, the usual way. Once the applier runs, a
//! tap holds at most [`RUNNING_BUFFER`] and the writer waits for the applier beyond
//! that.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes a run holds in memory for layers whose unpack has not started yet; more
/// goes to each layer's spill file.
pub const WAITING_BUDGET: usize = 16 << 20;
/// Bytes one tap holds ahead of its running applier.
pub const RUNNING_BUFFER: usize = 8 << 20;
/// Largest piece handed over at once (so a piece always fits in the buffers above).
const PIECE: usize = 1 << 20;

const ATTACHED: u8 = 0;
const STARTED: u8 = 1;
const DETACHED: u8 = 2;

enum Message {
    Data(Bytes, OwnedSemaphorePermit),
    /// The next `len` bytes are in the spill file at `offset`.
    Spilled {
        offset: u64,
        len: usize,
    },
    /// Every byte of the blob has been handed over.
    End,
}

struct Shared {
    state: AtomicU8,
    running: Arc<Semaphore>,
    /// The spill file, made with the first piece that does not fit in memory.
    spill: OnceLock<File>,
}

/// A tap and its feed, holding bytes against `waiting` until the feed starts and
/// spilling the rest into a file in `spill_dir` (none: detach instead).
pub(crate) fn tap(waiting: Arc<Semaphore>, spill_dir: Option<Arc<Path>>) -> (Tap, Feed) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        state: AtomicU8::new(ATTACHED),
        running: Arc::new(Semaphore::new(RUNNING_BUFFER)),
        spill: OnceLock::new(),
    });
    (
        Tap {
            tx: Some(tx),
            shared: shared.clone(),
            waiting,
            spill_dir,
            spilled: 0,
        },
        Feed {
            rx,
            shared,
            current: Bytes::new(),
            permit: None,
            spilled: None,
            done: false,
        },
    )
}

/// The writer's end: hands each written piece on, in order.
pub(crate) struct Tap {
    tx: Option<mpsc::UnboundedSender<Message>>,
    shared: Arc<Shared>,
    waiting: Arc<Semaphore>,
    spill_dir: Option<Arc<Path>>,
    /// Bytes written to the spill file so far.
    spilled: u64,
}

/// A tap that hands nothing on (blobs that are not layers, or no unpack).
impl Default for Tap {
    fn default() -> Self {
        let (mut tap, _) = tap(Arc::new(Semaphore::new(0)), None);
        tap.detach();
        tap
    }
}

impl Tap {
    /// Hands on `data`, written to the content store just now. Waits while the
    /// running applier is [`RUNNING_BUFFER`] behind; spills to a file when the
    /// applier has not started and the run's waiting budget is spent; detaches when
    /// that fails too, or when the feed is gone.
    pub async fn feed(&mut self, data: Bytes) {
        let mut offset = 0;
        while offset < data.len() && self.tx.is_some() {
            let piece = data.slice(offset..(offset + PIECE).min(data.len()));
            offset += piece.len();
            let size = piece.len() as u32;
            let message = if self.shared.state.load(Ordering::Acquire) == STARTED {
                self.shared
                    .running
                    .clone()
                    .acquire_many_owned(size)
                    .await
                    .ok()
                    .map(|permit| Message::Data(piece, permit))
            } else {
                match self.waiting.clone().try_acquire_many_owned(size) {
                    Ok(permit) => Some(Message::Data(piece, permit)),
                    Err(_) => {
                        // The rest of `data` goes to the file in one write.
                        let rest = data.slice(offset - piece.len()..);
                        offset = data.len();
                        self.spill(rest).await
                    }
                }
            };
            let sent = match (message, &self.tx) {
                (Some(message), Some(tx)) => tx.send(message).is_ok(),
                _ => false,
            };
            if !sent {
                self.detach();
            }
        }
    }

    /// Appends `bytes` to the spill file (made on first use); `None` when there is
    /// no spill directory or the file cannot be made or written.
    async fn spill(&mut self, bytes: Bytes) -> Option<Message> {
        let dir = self.spill_dir.clone()?;
        let shared = self.shared.clone();
        let offset = self.spilled;
        let len = bytes.len();
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let file = match shared.spill.get() {
                Some(file) => file,
                None => {
                    let _ = shared.spill.set(tempfile::tempfile_in(&dir)?);
                    shared.spill.get().expect("just set")
                }
            };
            file.write_all_at(&bytes, offset)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                if offset == 0 {
                    tracing::debug!("a layer waiting for its unpack spills to a temporary file");
                }
                self.spilled += len as u64;
                Some(Message::Spilled { offset, len })
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot spill a waiting layer's bytes to a file");
                None
            }
            Err(_) => None,
        }
    }

    /// The bytes handed on will not make the blob (the download starts over, or
    /// resumes an ingest whose start was never seen): the feed ends in an error.
    pub fn detach(&mut self) {
        if self.tx.take().is_some() {
            self.shared.state.store(DETACHED, Ordering::Release);
        }
    }

    /// False once detached (or finished): what is written goes nowhere else.
    pub fn is_attached(&self) -> bool {
        self.tx.is_some()
    }

    /// Every byte of the blob has been handed over: the feed ends cleanly after the
    /// last one.
    pub fn finished(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Message::End);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The applier's end: the blob's bytes as a blocking reader.
pub(crate) struct Feed {
    rx: mpsc::UnboundedReceiver<Message>,
    shared: Arc<Shared>,
    current: Bytes,
    /// The buffer space `current` holds, given back as it is replaced.
    permit: Option<OwnedSemaphorePermit>,
    /// Where the rest of the current spilled piece is, and how long it is.
    spilled: Option<(u64, usize)>,
    done: bool,
}

impl Feed {
    /// False once the tap has detached: reading would only end in an error.
    pub fn is_attached(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) != DETACHED
    }

    /// The applier runs: from now on the writer waits for it rather than spill.
    pub fn start(&self) {
        let _ = self.shared.state.compare_exchange(
            ATTACHED,
            STARTED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

impl io::Read for Feed {
    /// Blocks (for the applier's own thread, never a runtime worker) until bytes
    /// come, the last byte has been handed over (end of stream) or the tap detaches
    /// (an error).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current[..n]);
                let _ = self.current.split_to(n);
                return Ok(n);
            }
            if let Some((offset, left)) = self.spilled {
                let file = self
                    .shared
                    .spill
                    .get()
                    .expect("made before it is announced");
                let want = buf.len().min(left);
                let n = file.read_at(&mut buf[..want], offset)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spill file is shorter than what was written to it",
                    ));
                }
                self.spilled = (n < left).then_some((offset + n as u64, left - n));
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Message::Data(bytes, permit)) => {
                    self.current = bytes;
                    self.permit = Some(permit);
                }
                Some(Message::Spilled { offset, len }) => {
                    self.permit = None;
                    self.spilled = Some((offset, len));
                }
                Some(Message::End) => {
                    self.done = true;
                    self.permit = None;
                }
                None => {
                    return Err(io::Error::other(
                        "the download stopped feeding this unpack (it started over, \
                         resumed an earlier ingest, failed, or its bytes could not be \
                         held until the unpack started)",
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_all(mut feed: Feed) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        feed.read_to_end(&mut out)?;
        Ok(out)
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_and_end_only_once_all_are_handed_over() {
        let waiting = Arc::new(Semaphore::new(WAITING_BUDGET));
        let (mut tap, feed) = tap(waiting.clone(), None);
        let data: Vec<u8> = (0..3 * PIECE + 17).map(|i| (i % 251) as u8).collect();
        tap.feed(Bytes::copy_from_slice(&data[..PIECE + 5])).await;
        tap.feed(Bytes::copy_from_slice(&data[PIECE + 5..])).await;
        assert!(
            waiting.available_permits() < WAITING_BUDGET,
            "bytes held before the applier starts count against the run's budget"
        );
        tap.finished();
        let got = tokio::task::spawn_blocking(move || read_all(feed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, data);
        assert_eq!(
            waiting.available_permits(),
            WAITING_BUDGET,
            "all given back"
        );
    }

    #[tokio::test]
    async fn a_detached_or_dropped_tap_ends_the_feed_in_an_error() {
        let waiting = Arc::new(Semaphore::new(WAITING_BUDGET));
        let (mut tap, feed) = tap(waiting.clone(), None);
        tap.feed(Bytes::from_static(b"partial")).await;
        tap.detach();
        assert!(!feed.is_attached());
        // Committing after a detach hands nothing on.
        tap.finished();
        let read = tokio::task::spawn_blocking(move || read_all(feed))
            .await
            .unwrap();
        assert!(
            read.is_err(),
            "a detached tap must not read as a whole blob"
        );

        let (mut tap, feed) = super::tap(waiting.clone(), None);
        tap.feed(Bytes::from_static(b"partial")).await;
        drop(tap);
        let read = tokio::task::spawn_blocking(move || read_all(feed))
            .await
            .unwrap();
        assert!(
            read.is_err(),
            "a failed download must not read as a whole blob"
        );
        assert_eq!(waiting.available_permits(), WAITING_BUDGET);
    }

    #[tokio::test]
    async fn a_tap_spills_to_a_file_when_the_waiting_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let waiting = Arc::new(Semaphore::new(2 * PIECE));
        let (mut tap, feed) = tap(waiting.clone(), Some(Arc::from(dir.path())));
        let data: Vec<u8> = (0..5 * PIECE + 300).map(|i| (i % 253) as u8).collect();
        // Two pieces fit in memory, the next three and a bit go to the file.
        tap.feed(Bytes::copy_from_slice(&data[..4 * PIECE + 100]))
            .await;
        assert!(feed.is_attached(), "spilling is not giving up");
        assert_eq!(waiting.available_permits(), 0);
        // The applier starts: what comes next waits in memory again, behind the
        // spilled pieces.
        feed.start();
        tap.feed(Bytes::copy_from_slice(&data[4 * PIECE + 100..]))
            .await;
        tap.finished();
        let got = tokio::task::spawn_blocking(move || read_all(feed))
            .await
            .unwrap()
            .unwrap();
        assert!(got == data, "the bytes came back out of order or changed");
        assert_eq!(waiting.available_permits(), 2 * PIECE, "all given back");
        // The file is unlinked from the start: nothing is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_tap_detaches_when_its_bytes_cannot_be_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let missing: Arc<Path> = Arc::from(dir.path().join("missing").as_path());
        let waiting = Arc::new(Semaphore::new(PIECE));
        let (mut tap, feed) = tap(waiting.clone(), Some(missing));
        tap.feed(Bytes::from(vec![3u8; 2 * PIECE])).await;
        assert!(
            !feed.is_attached(),
            "no file, no room: the layer is left to containerd"
        );
        let read = tokio::task::spawn_blocking(move || read_all(feed))
            .await
            .unwrap();
        assert!(read.is_err());
        assert_eq!(waiting.available_permits(), PIECE);
    }

    #[tokio::test]
    async fn without_a_spill_directory_a_tap_detaches_when_the_waiting_budget_is_spent() {
        let waiting = Arc::new(Semaphore::new(2 * PIECE));
        let (mut first, first_feed) = tap(waiting.clone(), None);
        let (mut second, second_feed) = tap(waiting.clone(), None);
        first.feed(Bytes::from(vec![1u8; 2 * PIECE])).await;
        assert!(first_feed.is_attached());
        second.feed(Bytes::from(vec![2u8; 10])).await;
        assert!(
            !second_feed.is_attached(),
            "no budget left: the second tap gives up rather than wait"
        );
        // The first tap's applier starts and drains: its bytes leave the budget.
        first_feed.start();
        first.finished();
        let got = tokio::task::spawn_blocking(move || read_all(first_feed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2 * PIECE);
        assert_eq!(waiting.available_permits(), 2 * PIECE);
    }

    #[tokio::test]
    async fn a_started_feed_holds_the_writer_back_instead_of_detaching() {
        let waiting = Arc::new(Semaphore::new(0));
        let (mut tap, feed) = tap(waiting, None);
        feed.start();
        let total = RUNNING_BUFFER + 3 * PIECE;
        let writer = tokio::spawn(async move {
            tap.feed(Bytes::from(vec![7u8; total])).await;
            tap.finished();
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !writer.is_finished(),
            "more than the running buffer cannot be handed on before the applier reads"
        );
        let got = tokio::task::spawn_blocking(move || read_all(feed))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), total);
    }
}
