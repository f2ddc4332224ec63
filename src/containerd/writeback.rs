//! Early writeback of a blob's ingest file, so containerd's commit has little left
//! to flush.
//!
//! containerd fsyncs an ingest's data file when it commits the blob. The kernel
//! writes a file's dirty pages back only when told to or when memory fills, so
//! without help a big blob goes to the disk all at once, after its last byte came:
//! the commit of a 400 MB layer then takes 150–180 ms on a fast disk (2 s at 200
//! MB/s), with the link idle. When ctrpull runs on containerd's host it asks
//! the kernel to start writing each [`STEP`] of an ingest back as soon as containerd
//! reports it written (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`: it starts the
//! writes, waits for none and changes nothing), so the disk works while the
//! download goes on.
//!
//! The file is found as containerd's local content store lays it out: the content
//! plugin exports its root (Introspection), and each ingest is a directory under
//! `<root>/ingest` whose `ref` file holds `<namespace>/<sequence>/<ref>` (the key
//! containerd's metadata store gives it). When that root cannot be seen from here
//! (ctrpull in a container without the host path, a socket forwarded from another
//! machine) or no ingest names the ref, nothing is done: the commit flushes it all,
//! as it otherwise would.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of an ingest written between two writeback requests: large enough that a
/// request is cheap next to what it covers, small enough that a commit finds at
/// most this much (plus what the disk has not finished) still to flush.
pub const STEP: u64 = 8 << 20;

/// The writeback of one open ingest.
#[derive(Debug)]
pub(crate) struct Writeback {
    shared: Arc<Shared>,
    /// Bytes asked to be written back so far.
    asked: u64,
}

#[derive(Debug)]
struct Shared {
    ingests: Arc<Path>,
    namespace: String,
    ref_key: String,
    /// The ingest's data file, once found.
    file: Mutex<Option<File>>,
    /// Set while a request runs: one at a time, the next write asks again.
    busy: AtomicBool,
    /// Set for good when the file cannot be found or written back.
    off: AtomicBool,
}

impl Writeback {
    /// The writeback of the ingest `ref_key` of `namespace`, whose directory is
    /// among those in `ingests` (containerd's `<content root>/ingest`).
    pub(crate) fn new(ingests: Arc<Path>, namespace: &str, ref_key: &str) -> Self {
        Writeback {
            shared: Arc::new(Shared {
                ingests,
                namespace: namespace.to_string(),
                ref_key: ref_key.to_string(),
                file: Mutex::new(None),
                busy: AtomicBool::new(false),
                off: AtomicBool::new(false),
            }),
            asked: 0,
        }
    }

    /// containerd reports the ingest written up to `offset`: once a [`STEP`] has
    /// gathered since the last request, asks the kernel (on a blocking thread) to
    /// start writing it back.
    pub(crate) fn written(&mut self, offset: u64) {
        if offset < self.asked + STEP || self.shared.off.load(Ordering::Relaxed) {
            return;
        }
        if self.shared.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let (from, to) = (self.asked, offset);
        self.asked = offset;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            shared.write_back(from, to);
            shared.busy.store(false, Ordering::Release);
        });
    }

    /// The ingest starts over from its first byte.
    pub(crate) fn restart(&mut self) {
        self.asked = 0;
    }

    /// Bytes asked to be written back so far.
    pub(crate) fn asked(&self) -> u64 {
        self.asked
    }
}

impl Shared {
    fn write_back(&self, from: u64, to: u64) {
        let mut found = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let file = match &mut *found {
            Some(file) => file,
            missing @ None => match find(&self.ingests, &self.namespace, &self.ref_key) {
                Ok(Some(file)) => missing.insert(file),
                Ok(None) => {
                    tracing::debug!(
                        ref_key = self.ref_key,
                        ingests = %self.ingests.display(),
                        "no ingest file names this ref: its bytes are left for the commit to flush"
                    );
                    self.off.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::debug!(ref_key = self.ref_key, ingests = %self.ingests.display(), error = %e, "cannot look for the ingest file");
                    self.off.store(true, Ordering::Relaxed);
                    return;
                }
            },
        };
        if let Err(e) = start_writeback(file, from, to - from) {
            tracing::debug!(ref_key = self.ref_key, error = %e, "cannot start the ingest's writeback");
            self.off.store(true, Ordering::Relaxed);
        }
    }
}

/// Starts writing `len` bytes of `file` from `offset` back to the disk, waiting
/// for none of it.
fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let to_off = |n: u64| {
        libc::off64_t::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: the descriptor belongs to `file`, which outlives the call; the call
    // reads no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The data file of the ingest `ref_key` of `namespace`, among the ingest
/// directories in `ingests`.
fn find(ingests: &Path, namespace: &str, ref_key: &str) -> io::Result<Option<File>> {
    for entry in fs::read_dir(ingests)? {
        let dir = entry?.path();
        // An ingest committed or aborted meanwhile is gone: not ours anyway.
        let Ok(held) = fs::read_to_string(dir.join("ref")) else {
            continue;
        };
        if names(&held, namespace, ref_key) {
            return File::open(dir.join("data")).map(Some);
        }
    }
    Ok(None)
}

/// True when an ingest's `ref` file, holding `held`, is the ingest `ref_key` of
/// `namespace`: containerd's metadata store keys it `<namespace>/<sequence>/<ref>`.
fn names(held: &str, namespace: &str, ref_key: &str) -> bool {
    held.strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(sequence, rest)| {
            !sequence.is_empty() && sequence.bytes().all(|b| b.is_ascii_digit()) && rest == ref_key
        })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::ours("k8s.io/12/layer-sha256:ab", true)]
    #[case::other_namespace("default/12/layer-sha256:ab", false)]
    #[case::namespace_prefix("k8s.io.x/12/layer-sha256:ab", false)]
    #[case::other_ref("k8s.io/12/layer-sha256:abc", false)]
    #[case::no_sequence("k8s.io//layer-sha256:ab", false)]
    #[case::sequence_not_a_number("k8s.io/x1/layer-sha256:ab", false)]
    #[case::bare_ref("layer-sha256:ab", false)]
    fn an_ingest_is_known_by_namespace_sequence_and_ref(#[case] held: &str, #[case] ours: bool) {
        assert_eq!(names(held, "k8s.io", "layer-sha256:ab"), ours);
    }

    /// Lays out ingest directories as containerd's local content store does.
    fn ingest(root: &Path, name: &str, held: &str, data: &[u8]) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("ref"), held).unwrap();
        fs::write(dir.join("data"), data).unwrap();
    }

    #[test]
    fn the_ingest_file_is_found_by_its_ref() {
        let root = tempfile::tempdir().unwrap();
        ingest(
            root.path(),
            "aa",
            "default/3/layer-sha256:ab",
            b"other namespace",
        );
        ingest(root.path(), "bb", "k8s.io/4/layer-sha256:ab", b"ours");
        fs::create_dir_all(root.path().join("cc")).unwrap(); // being made: no ref yet
        let mut found = find(root.path(), "k8s.io", "layer-sha256:ab")
            .unwrap()
            .unwrap();
        let mut text = String::new();
        io::Read::read_to_string(&mut found, &mut text).unwrap();
        assert_eq!(text, "ours");
        assert!(find(root.path(), "k8s.io", "layer-sha256:cd")
            .unwrap()
            .is_none());
        assert!(find(&root.path().join("missing"), "k8s.io", "layer-sha256:ab").is_err());
    }

    /// Waits until no writeback request runs.
    async fn settled(writeback: &Writeback) {
        while writeback.shared.busy.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_step_of_written_bytes_is_written_back_and_a_missing_ingest_turns_it_off() {
        let root = tempfile::tempdir().unwrap();
        let ingests: Arc<Path> = Arc::from(root.path());
        ingest(root.path(), "bb", "ns/1/ours", b"");
        let mut data = fs::OpenOptions::new()
            .append(true)
            .open(root.path().join("bb/data"))
            .unwrap();
        data.write_all(&vec![7u8; (STEP + 10) as usize]).unwrap();

        let mut writeback = Writeback::new(ingests.clone(), "ns", "ours");
        writeback.written(STEP - 1);
        assert_eq!(writeback.asked(), 0, "less than a step: nothing asked");
        writeback.written(STEP + 10);
        assert_eq!(writeback.asked(), STEP + 10);
        settled(&writeback).await;
        assert!(
            writeback.shared.file.lock().unwrap().is_some(),
            "the file was found"
        );
        assert!(
            !writeback.shared.off.load(Ordering::Relaxed),
            "the writeback was started"
        );
        writeback.restart();
        assert_eq!(writeback.asked(), 0);

        let mut missing = Writeback::new(ingests, "ns", "not there");
        missing.written(STEP);
        settled(&missing).await;
        assert!(missing.shared.off.load(Ordering::Relaxed));
        missing.written(3 * STEP);
        assert_eq!(missing.asked(), STEP, "turned off: nothing more is asked");
    }
}
