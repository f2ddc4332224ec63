//! The fault matrix: every fault ctrpull claims to survive, run against the real
//! containerd 1.6 and 1.7 and the real docker-registry, with the same checks for each
//! row, and printed as a table (row, containerd version, outcome, seconds).
//!
//! A row pushes a fresh image (so no other test put its blobs into containerd's
//! shared content store), pulls it with the fault in place, and then checks:
//!
//! - the pull succeeded through another endpoint, or failed with a message naming
//!   the cause (asserted on the text);
//! - the image record points at the pushed digest, and the image runs: the random
//!   layer's file, read inside a container, has the digest it was built with;
//! - no wrong bytes were committed: every blob in the namespace, read back with
//!   `ctr content get`, hashes to its digest; no ingest is left active;
//! - no lease is left;
//! - the next run, with the fault lifted where it is a transient one, works.
//!
//! The rows run on a few worker threads, each with its own tokio runtime (the link
//! emulator lives on it); [`fault_matrix`] prints the table to stderr, uncaptured,
//! and then fails if any row failed. The deeper checks of single faults (bytes
//! fetched once, Range offsets of resumed chunks, timings) live in `faults.rs`.

mod rows;

use std::collections::VecDeque;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ctrpull::builder::{self, BuiltImage, Compression, LayerSource};

use crate::harness::{self, Containerd, Registry, Version};
use crate::pull::{busybox_with, fresh_seed, leases, records};

/// Rows running at once. Most of a row's time is spent waiting (timeouts, a paced
/// link, containerd); three keep two cores busy without starving the link.
const WORKERS: usize = 3;

/// One fault of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Row {
    DeadEndpoint,
    SilentEndpoint,
    DiesMidRun,
    Status500,
    Status502,
    Status503,
    NotFoundOnOneMirror,
    TooManyRequests,
    ResetMidBody,
    Stall,
    Trickle,
    WrongBytesOnMirror,
    WrongBytesOnlyEndpoint,
    TruncatedBody,
    WrongContentLength,
    RangeIgnored,
    AuthFailureOnOneMirror,
    ContainerdRestarted,
    KilledThenRerun,
    TwoCtrpulls,
    CriPullAtOnce,
}

/// Every row, slowest first so the workers finish together.
const ROWS: [Row; 21] = [
    Row::Trickle,
    Row::KilledThenRerun,
    Row::ContainerdRestarted,
    Row::Stall,
    Row::SilentEndpoint,
    Row::CriPullAtOnce,
    Row::TwoCtrpulls,
    Row::TooManyRequests,
    Row::ResetMidBody,
    Row::DeadEndpoint,
    Row::DiesMidRun,
    Row::Status500,
    Row::Status502,
    Row::Status503,
    Row::NotFoundOnOneMirror,
    Row::WrongBytesOnMirror,
    Row::WrongBytesOnlyEndpoint,
    Row::TruncatedBody,
    Row::WrongContentLength,
    Row::RangeIgnored,
    Row::AuthFailureOnOneMirror,
];

impl Row {
    /// The row's name in the table.
    fn label(self) -> &'static str {
        match self {
            Row::DeadEndpoint => "dead endpoint (connection refused)",
            Row::SilentEndpoint => "silent endpoint (never answers)",
            Row::DiesMidRun => "endpoint dies mid-run",
            Row::Status500 => "500 on blobs",
            Row::Status502 => "502 on blobs",
            Row::Status503 => "503 (no Retry-After)",
            Row::NotFoundOnOneMirror => "404 on one mirror",
            Row::TooManyRequests => "429 with Retry-After",
            Row::ResetMidBody => "reset mid-body",
            Row::Stall => "stall mid-body",
            Row::Trickle => "slow trickle",
            Row::WrongBytesOnMirror => "wrong bytes on a mirror",
            Row::WrongBytesOnlyEndpoint => "wrong bytes, only endpoint",
            Row::TruncatedBody => "truncated body",
            Row::WrongContentLength => "wrong Content-Length",
            Row::RangeIgnored => "Range ignored",
            Row::AuthFailureOnOneMirror => "auth failure on one mirror",
            Row::ContainerdRestarted => "containerd restarted mid-pull",
            Row::KilledThenRerun => "ctrpull SIGKILLed, run again",
            Row::TwoCtrpulls => "two ctrpulls at once",
            Row::CriPullAtOnce => "CRI PullImage at the same time",
        }
    }
}

/// One cell of the table.
struct Cell {
    row: Row,
    version: Version,
    outcome: Result<String, String>,
    seconds: f64,
}

/// Runs every row on both containerd versions, prints the table, and fails when a row
/// failed (each failure's message follows the table). `$CTRPULL_MATRIX_ROWS`, a
/// comma-separated list of words, runs only the rows whose label holds one of them
/// (`CTRPULL_MATRIX_ROWS=trickle,stall`), for working on a few rows.
#[test]
fn fault_matrix() {
    let wanted = std::env::var("CTRPULL_MATRIX_ROWS").unwrap_or_default();
    let wanted: Vec<&str> = wanted
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    let queue: VecDeque<Row> = ROWS
        .into_iter()
        .filter(|row| wanted.is_empty() || wanted.iter().any(|w| row.label().contains(w)))
        .collect();
    assert!(
        !queue.is_empty(),
        "CTRPULL_MATRIX_ROWS={wanted:?} matches no row of the fault matrix"
    );
    let queue = Arc::new(Mutex::new(queue));
    let cells = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let (queue, cells) = (queue.clone(), cells.clone());
            std::thread::Builder::new()
                .name(format!("fault-matrix-{n}"))
                .spawn(move || worker(&queue, &cells))
                .expect("spawn a fault-matrix worker")
        })
        .collect();
    for worker in workers {
        worker.join().expect("a fault-matrix worker died");
    }
    let mut cells = std::mem::take(&mut *lock(&cells));
    let position = |row: Row| ROWS.iter().position(|&r| r == row);
    cells.sort_by_key(|c| (position(c.row), c.version.major_minor()));
    let table = render(&cells, started.elapsed());
    // Straight to the process's stderr: libtest captures print!/eprint!, and the table
    // is the point of the suite.
    let _ = std::io::stderr().write_all(table.as_bytes());
    let failed: Vec<String> = cells
        .iter()
        .filter_map(|c| {
            let why = c.outcome.as_ref().err()?;
            Some(format!("{} on {}: {why}", c.row.label(), c.version))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failed.len(),
        cells.len(),
        failed.join("\n\n")
    );
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes rows off `queue` until it is empty, each on this thread's runtime: builds
/// the row's image once and runs the row on containerd 1.6, then 1.7 (separate
/// daemons, so separate content stores), a panic becoming that cell's failure.
fn worker(queue: &Mutex<VecDeque<Row>>, cells: &Mutex<Vec<Cell>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    loop {
        let Some(row) = lock(queue).pop_front() else {
            return;
        };
        let built = Built::new(rows::layer_size(row));
        for version in [Version::V1_6, Version::V1_7] {
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                runtime.block_on(rows::run(row, version, &built))
            }))
            .map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned())
            });
            lock(cells).push(Cell {
                row,
                version,
                outcome,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
}

/// A row's image, built once: busybox and one random layer of a fresh seed, so no
/// other test put its blobs into a content store. Uncompressed, which changes nothing
/// on the wire and keeps building cheap in a debug build.
pub(crate) struct Built {
    image: BuiltImage,
    /// Path of the random file inside the image.
    file: String,
    /// Its sha256, hex.
    file_sha256: String,
    _dir: tempfile::TempDir,
}

impl Built {
    fn new(random: u64) -> Built {
        let seed = fresh_seed();
        let mut spec = busybox_with(vec![LayerSource::Random { size: random, seed }]);
        spec.compression = Compression::Uncompressed;
        let dir = tempfile::tempdir().expect("a build directory");
        let image = builder::build(&spec, dir.path()).expect("build the row's image");
        let file = format!("random-{seed}.bin");
        let file_sha256 = sha256sum(
            Command::new("tar")
                .arg("-xOf")
                .arg(&image.layers[1].path)
                .arg(&file),
        )
        .expect("tar reads the layer it just built");
        Built {
            image,
            file: format!("/{file}"),
            file_sha256,
            _dir: dir,
        }
    }

    /// Pushes the image as `<unique test/prefix>:latest` to `registry`.
    pub(crate) async fn push(&self, registry: &Registry, prefix: &str) -> Image<'_> {
        let repo = harness::unique(&format!("test/{prefix}"));
        let descriptor = builder::push(
            &registry.push_client(&repo),
            &registry.url(),
            &repo,
            "latest",
            &self.image,
        )
        .await
        .expect("push the row's image");
        Image {
            repo,
            digest: descriptor.digest().to_string(),
            built: self,
        }
    }
}

/// A [`Built`] image as pushed to one repository.
pub(crate) struct Image<'a> {
    /// The repository, `test/<prefix>-…`.
    pub(crate) repo: String,
    /// The manifest digest.
    pub(crate) digest: String,
    built: &'a Built,
}

impl Image<'_> {
    /// Manifest, config and layer digests.
    pub(crate) fn blobs(&self) -> Vec<String> {
        let image = &self.built.image;
        let mut blobs: Vec<String> = image
            .layers
            .iter()
            .map(|l| l.descriptor.digest().to_string())
            .collect();
        blobs.push(image.config_descriptor.digest().to_string());
        blobs.push(self.digest.clone());
        blobs
    }

    /// The random layer's digest.
    pub(crate) fn big_layer(&self) -> String {
        self.built.image.layers[1].descriptor.digest().to_string()
    }

    /// The config digest: the image ID CRI reports.
    pub(crate) fn config(&self) -> String {
        self.built.image.config_descriptor.digest().to_string()
    }
}

/// The sha256 (hex) of what `producer` writes to stdout, by `sha256sum`: a debug
/// build hashes tens of megabytes far slower than coreutils.
fn sha256sum(producer: &mut Command) -> Option<String> {
    let mut child = producer
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {producer:?}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let hashed = Command::new("sha256sum")
        .stdin(stdout)
        .output()
        .expect("run sha256sum");
    let status = child.wait().expect("wait for the producer");
    if !status.success() {
        return None;
    }
    let out = String::from_utf8_lossy(&hashed.stdout);
    Some(
        out.split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("sha256sum printed nothing"))
            .to_owned(),
    )
}

/// The table, as Markdown.
fn render(cells: &[Cell], total: Duration) -> String {
    let mut out = format!(
        "\nfault matrix ({} rows, {:.0} s wall time)\n\n| row | containerd | outcome | s |\n| :-- | :-- | :-- | --: |\n",
        cells.len(),
        total.as_secs_f64()
    );
    for cell in cells {
        let outcome = match &cell.outcome {
            Ok(outcome) => outcome.clone(),
            Err(why) => format!(
                "FAILED: {}",
                why.lines().next().unwrap_or_default().replace('|', "/")
            ),
        };
        out.push_str(&format!(
            "| {} | {} | {outcome} | {:.1} |\n",
            cell.row.label(),
            cell.version.major_minor(),
            cell.seconds
        ));
    }
    out.push('\n');
    out
}

/// Asserts what every successful row leaves: `name` recorded in `namespace` at the
/// pushed digest, every blob of the image present, and the image runs, its random
/// file reading back with the digest it was built with. Looks at nothing else in the
/// namespace (see [`assert_clean`] for that).
pub(crate) fn assert_image(containerd: &Containerd, namespace: &str, name: &str, image: &Image) {
    let records = records(containerd, namespace);
    let (target, _) = records
        .get(name)
        .unwrap_or_else(|| panic!("no image record {name}: {records:?}"));
    assert_eq!(target, &image.digest, "record {name}");
    let content = containerd.ctr_ok(&["-n", namespace, "content", "ls", "-q"]);
    for digest in image.blobs() {
        assert!(
            content.lines().any(|line| line.trim() == digest),
            "{digest} is not in the content store of {namespace}"
        );
    }
    let file = &image.built.file;
    let out = containerd.run_busybox(namespace, name, &["sha256sum", file]);
    assert_eq!(
        out.split_whitespace().next(),
        Some(image.built.file_sha256.as_str()),
        "{file} inside {name} is not the file that was pushed: {out}"
    );
}

/// Asserts that `digests` (every blob of `namespace` when `None`) are committed with
/// bytes that hash to their digests: nothing wrong was committed.
pub(crate) fn assert_verified(
    containerd: &Containerd,
    namespace: &str,
    digests: Option<&[String]>,
) {
    let all;
    let digests = match digests {
        Some(digests) => digests,
        None => {
            all = containerd
                .ctr_ok(&["-n", namespace, "content", "ls", "-q"])
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>();
            &all
        }
    };
    for digest in digests {
        let Some(actual) = sha256sum(
            containerd
                .ctr_command()
                .args(["-n", namespace, "content", "get", digest]),
        ) else {
            // A blob that nothing holds any more (a failed pull's, once its lease is
            // gone) may be collected between the listing and the read: fine when it
            // is gone from the namespace; unreadable while listed is not.
            let listed = containerd.ctr_ok(&["-n", namespace, "content", "ls", "-q"]);
            assert!(
                !listed.lines().any(|l| l.trim() == digest),
                "committed blob {digest} is listed but cannot be read"
            );
            continue;
        };
        assert_eq!(
            format!("sha256:{actual}"),
            *digest,
            "committed blob {digest} holds other bytes"
        );
    }
}

/// Asserts that every blob in `namespace` verifies ([`assert_verified`]) and that no
/// ingest and no lease is left.
pub(crate) fn assert_clean(containerd: &Containerd, namespace: &str) {
    assert_verified(containerd, namespace, None);
    // A failed pull's half-written ingests go with its lease: containerd's collector
    // removes them when it next runs, shortly after the pull has ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let active = containerd.ctr_ok(&["-n", namespace, "content", "active"]);
        let ingests: Vec<&str> = active.lines().skip(1).collect();
        if ingests.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ingests left active for 10 s: {ingests:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let left = leases(containerd, namespace);
    assert!(left.is_empty(), "leases left behind: {left:?}");
}
