//! One pull, from a reference to an unpacked image with the records CRI expects.
//!
//! Steps: endpoints from the hosts configuration → resolve the manifest or index →
//! choose the platform's manifest → fetch config, then layers concurrently, into the
//! content store → store manifest and index with their GC labels → unpack → image
//! records. Everything happens under one expiring lease, deleted at the end, so an
//! interrupted pull leaves nothing pinned and no half-made image record.

mod builder;
mod chunked;
mod events;
mod fetch;
mod finish;
mod options;
mod plan;
mod platform;
mod present;
mod report;
mod resolve;
mod scheduler;
mod tap;
mod tuner;
mod warm;
mod watchdog;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use builder::{Concurrency, PullerBuilder};
pub use events::{
    endpoint_label, EndpointStats, Event, EventStream, ImageStatus, DEFAULT_EVENT_CAPACITY,
    PROGRESS_INTERVAL,
};
pub use fetch::{Fetched, MAX_RESUMES};
pub use options::PullOptions;
pub use plan::MIN_CHUNK;
pub use platform::{ParseError as PlatformParseError, Platform};
pub use report::{error_chain, PullReport};
pub(crate) use resolve::{parse_config, parse_index, parse_manifest};
pub use resolve::{MAX_CONFIG_SIZE, MAX_LAYERS, MAX_LAYER_SIZE};
pub use scheduler::{Scheduler, DEFAULT_REORDER_MEMORY};
pub use tuner::{for_bandwidth, Decision, Tuner, AUTO_MAX, AUTO_START, TUNE_INTERVAL};
pub use warm::{ImageResult, WarmItem, WarmOptions, WarmReport, DEFAULT_IMAGES_IN_FLIGHT};
pub use watchdog::{TRICKLE_FLOOR, TRICKLE_FRACTION, TRICKLE_WINDOW};

use crate::config;
use crate::containerd::{
    self, ContentStore, Leases, LABEL_DISTRIBUTION_SOURCE, LABEL_GC_REF_CONTENT,
};
use crate::reference::Reference;
use crate::registry::{self, Endpoint, Target};
use events::{Counts, Tracker};
use fetch::{fetch_blob, store_document, BlobJob, Source, Turn};
use present::Presence;
use tap::{Feed, Tap};

/// Default containerd socket.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Default namespace: the one CRI (and so kubelet) uses.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
/// Default snapshotter.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// Most requests in flight at once that `--concurrency` accepts.
pub const MAX_CONCURRENCY: usize = 256;
/// Size of the Range requests a big blob is fetched in. Small enough that a window
/// of them in flight stays within [`DEFAULT_REORDER_MEMORY`], big enough that the
/// per-request round trip costs little.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Blobs of one image downloading at once; their requests share the connection budget.
const BLOBS_IN_FLIGHT: usize = 64;
/// Lifetime of a pull's lease should ctrpull die before deleting it (containerd's
/// own client uses the same 24 hours).
pub const DEFAULT_LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Label CRI puts on images it manages; kubelet only lists those.
pub const LABEL_CRI_MANAGED: &str = "io.cri-containerd.image";

/// Errors of a pull.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hosts configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// containerd failed at one step.
    #[error("{step}: {source}")]
    Containerd {
        /// What the pull was doing.
        step: &'static str,
        /// containerd's error.
        #[source]
        source: containerd::Error,
    },
    /// The pull was stopped before it finished (another image failed under
    /// fail-fast, or the caller cancelled the run).
    #[error("pulling {reference} was cancelled")]
    Cancelled {
        /// The reference.
        reference: String,
    },
    /// The pull did not finish within `--timeout`.
    #[error("pulling {reference} did not finish within {}", humantime::format_duration(*limit))]
    Timeout {
        /// The reference.
        reference: String,
        /// The bound.
        limit: Duration,
    },
    /// The registry client could not be set up.
    #[error("setting up the registry client: {source}")]
    Registry {
        /// What failed.
        #[source]
        source: registry::Error,
    },
    /// The reference could not be resolved.
    #[error("resolving {reference}: {source}")]
    Resolve {
        /// The reference.
        reference: String,
        /// What the registries said.
        #[source]
        source: registry::Error,
    },
    /// A manifest, index or config is not what it should be.
    #[error("{what} {digest} is invalid: {reason}")]
    Invalid {
        /// `manifest`, `index` or `config`.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// The index has no manifest for the platform.
    #[error("{reference} has no manifest for {platform}; it has: {}", available.join(", "))]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms the index lists.
        available: Vec<String>,
    },
    /// A blob could not be fetched from any endpoint.
    #[error("fetching {digest}: {source}")]
    Fetch {
        /// The blob.
        digest: String,
        /// What the registries said.
        #[source]
        source: registry::Error,
    },
    /// A blob download kept breaking off.
    #[error("downloading {digest} from {url}: {reason}")]
    Transfer {
        /// The blob.
        digest: String,
        /// The last URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// Every endpoint served bytes that do not match the digest.
    #[error("blob {digest} from {url} has digest {got}; the download was discarded")]
    DigestMismatch {
        /// The expected digest.
        digest: String,
        /// What the bytes hashed to.
        got: String,
        /// Where they came from.
        url: String,
    },
}

impl Error {
    pub(crate) fn containerd(step: &'static str, source: containerd::Error) -> Self {
        Error::Containerd { step, source }
    }
}

/// Pulls images into containerd. One `Puller` can run many pulls; they share the
/// registry client (connections and tokens).
#[derive(Debug)]
pub struct Puller {
    options: PullOptions,
    config: Arc<config::Config>,
    registry: Arc<registry::Client>,
    scheduler: Arc<Scheduler>,
    /// Blobs downloading at once across the run (each holds an open ingest).
    blob_slots: Arc<tokio::sync::Semaphore>,
    /// What layers waiting for their unpack to start may hold across the run.
    tap_budget: Arc<tokio::sync::Semaphore>,
    /// Where layers waiting for their unpack spill what does not fit in
    /// `tap_budget` (the system's temporary directory).
    spill_dir: Arc<std::path::Path>,
    /// The concurrency tuner, started with the first pull when tuning is on.
    tuner: std::sync::Mutex<Option<AbortOnDrop<()>>>,
    /// The containerd connection, made by the first pull and shared by the rest.
    conn: tokio::sync::OnceCell<containerd::Connection>,
    /// Progress events of every pull; subscribers come through [`Puller::events`].
    events: broadcast::Sender<Event>,
}

/// How one image's pull ended, with what was counted on the way.
pub(crate) struct Outcome {
    pub result: Result<PullReport, Error>,
    pub counts: Counts,
    pub elapsed: Duration,
}

impl Puller {
    /// A puller with `options`; reads the configuration files `options.config` names.
    pub fn new(options: PullOptions) -> Result<Self, Error> {
        let config = config::Config::load(&options.config)?;
        Self::with_config(options, Arc::new(config))
    }

    /// A puller with `options` and a configuration already loaded (the CLI loads it
    /// first, to take the CRI plugin's pull settings as defaults).
    pub fn with_config(options: PullOptions, config: Arc<config::Config>) -> Result<Self, Error> {
        let registry = registry::Client::new(options.registry.clone())
            .map_err(|source| Error::Registry { source })?;
        let start = if options.auto_tune {
            AUTO_START.min(options.concurrency)
        } else {
            options.concurrency
        };
        let scheduler = Arc::new(Scheduler::new(start, options.reorder_memory));
        let tap_budget = options
            .unpack_waiting_memory
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Self {
            options,
            config,
            registry: Arc::new(registry),
            scheduler,
            blob_slots: Arc::new(tokio::sync::Semaphore::new(BLOBS_IN_FLIGHT)),
            tap_budget: Arc::new(tokio::sync::Semaphore::new(tap_budget)),
            spill_dir: Arc::from(std::env::temp_dir().as_path()),
            tuner: std::sync::Mutex::new(None),
            conn: tokio::sync::OnceCell::new(),
            events: broadcast::channel(DEFAULT_EVENT_CAPACITY).0,
        })
    }

    /// A builder: every setting with its default, the configuration files read on
    /// [`build`](PullerBuilder::build).
    pub fn builder() -> PullerBuilder {
        PullerBuilder::default()
    }

    /// Progress events of every pull this puller runs from now on. Each call gives an
    /// independent stream; it ends when the puller is dropped and its pulls are done.
    pub fn events(&self) -> EventStream {
        EventStream::new(self.events.subscribe())
    }

    /// Starts the concurrency tuner once (it needs the async runtime, so not in `new`).
    fn start_tuner(&self) {
        if !self.options.auto_tune {
            return;
        }
        let mut tuner = self.tuner.lock().unwrap();
        if tuner.is_none() {
            let registry = self.registry.clone();
            *tuner = Some(tuner::spawn(
                self.scheduler.clone(),
                self.options.concurrency,
                move || registry.failures(),
            ));
        }
    }

    /// Connections currently allowed in flight (moves while the tuner works).
    pub fn connection_limit(&self) -> usize {
        self.scheduler.connection_limit()
    }

    /// The options this puller runs with.
    pub fn options(&self) -> &PullOptions {
        &self.options
    }

    /// Pulls `reference` for the puller's platform: fetch, unpack (unless disabled)
    /// and image records. An image already there (records pointing at what the
    /// reference resolves to, every blob, every snapshot) is not pulled again; its
    /// report says [`present`](PullReport::present).
    pub async fn pull(&self, reference: &Reference) -> Result<PullReport, Error> {
        let platform = self.options.platform.clone();
        self.run_image(reference, &platform, &CancellationToken::new())
            .await
            .result
    }

    /// One image, with its events (started … finished) and counters.
    pub(crate) async fn run_image(
        &self,
        reference: &Reference,
        platform: &Platform,
        cancel: &CancellationToken,
    ) -> Outcome {
        let started = Instant::now();
        let tracker = Arc::new(Tracker::new(reference.to_string(), self.events.clone()));
        tracker.emit(Event::Started {
            image: reference.to_string(),
            platform: platform.to_string(),
        });
        let mut result = self
            .pull_tracked(reference, platform, &tracker, cancel, started)
            .await;
        tracker.flush_progress();
        let counts = tracker.counts();
        let elapsed = started.elapsed();
        if let Ok(report) = &mut result {
            report.add_counts(&counts);
            report.elapsed = elapsed;
        }
        let (status, reason) = match &result {
            Ok(report) if report.present => (ImageStatus::Present, None),
            Ok(_) => (ImageStatus::Pulled, None),
            Err(e @ Error::Cancelled { .. }) => (ImageStatus::Cancelled, Some(error_chain(e))),
            Err(e) => (ImageStatus::Failed, Some(error_chain(e))),
        };
        tracker.emit(Event::Finished {
            image: tracker.image().to_string(),
            status,
            digest: counts.digest.clone(),
            fetched_bytes: result.as_ref().map_or(counts.fetched, |r| r.bytes_fetched),
            seconds: elapsed.as_secs_f64(),
            reason,
        });
        Outcome {
            result,
            counts,
            elapsed,
        }
    }

    async fn pull_tracked(
        &self,
        reference: &Reference,
        platform: &Platform,
        tracker: &Arc<Tracker>,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Result<PullReport, Error> {
        self.start_tuner();
        let deadline = self
            .options
            .timeout
            .map(|limit| (tokio::time::Instant::from_std(started) + limit, limit));
        let endpoints: Arc<[Endpoint]> = self.config.endpoints(reference.registry())?.into();
        let source = Source {
            client: self.registry.clone(),
            target: Arc::new(Target {
                registry: reference.registry().to_string(),
                repository: reference.repository().to_string(),
            }),
            endpoints,
            scheduler: self.scheduler.clone(),
            chunk_size: self.options.chunk_size.max(1 << 20),
            tracker: tracker.clone(),
        };
        // One connection for every pull of this puller (the channel multiplexes).
        let conn = self
            .conn
            .get_or_try_init(|| {
                containerd::Connection::connect(&self.options.address, &self.options.namespace)
            })
            .await
            .map_err(|e| Error::containerd("connecting to containerd", e))?
            .clone();
        let check = self.check_present(&conn, reference, platform, &source, started);
        let top = match bounded(reference, check, deadline, cancel).await? {
            Presence::Present(report) => return Ok(*report),
            Presence::Absent(top) => top,
        };
        let leases = Leases::new(conn.clone());
        let lease = format!("ctrpull-{:016x}", rand::random::<u64>());
        leases
            .create(&lease, self.options.lease_expiry)
            .await
            .map_err(|e| Error::containerd("creating a lease", e))?;
        let leased = conn
            .with_lease(&lease)
            .map_err(|e| Error::containerd("creating a lease", e))?;
        let pull = self.pull_leased(&leased, reference, platform, &source, top, started);
        // Timeout and cancellation stop the pull here, so the lease is still deleted.
        let result = bounded(reference, pull, deadline, cancel).await;
        // The image records (if any) now hold everything; the lease must go either way.
        if let Err(e) = leases.delete(&lease).await {
            tracing::warn!(
                lease,
                "could not delete the pull's lease (it expires by itself): {e}"
            );
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_leased(
        &self,
        conn: &containerd::Connection,
        reference: &Reference,
        platform: &Platform,
        source: &Source,
        top: Option<registry::Manifest>,
        started: Instant,
    ) -> Result<PullReport, Error> {
        let content = ContentStore::new(conn.clone());
        let resolved = self.resolve(reference, source, platform, top).await?;
        let mut report = PullReport {
            reference: reference.to_string(),
            digest: resolved.top.digest.clone(),
            manifest_digest: resolved.manifest.digest.clone(),
            image_id: resolved.parsed.config().digest().to_string(),
            bytes_fetched: resolved.top.bytes.len() as u64,
            ..PullReport::default()
        };
        if resolved.index.is_some() {
            report.bytes_fetched += resolved.manifest.bytes.len() as u64;
        }
        let layers = resolved.parsed.layers();
        let total = resolved.parsed.config().size() + layers.iter().map(|l| l.size()).sum::<u64>();
        source
            .tracker
            .resolved(&resolved.top.digest, total, layers.len());
        tracing::info!(reference = %reference, digest = %resolved.top.digest, endpoint = %resolved.top.endpoint, "resolved");

        let source_label = (
            format!("{LABEL_DISTRIBUTION_SOURCE}.{}", reference.registry()),
            reference.repository().to_string(),
        );
        let with_source = |mut labels: HashMap<String, String>| {
            labels.insert(source_label.0.clone(), source_label.1.clone());
            labels
        };

        // Every layer downloads as a task of its own (the scheduler bounds the
        // requests), so the download goes on while earlier layers are applied.
        // Layers take their blob slots in order too (a second chain of turns, each
        // passed once its slot is held): one waiting for its turn to cut holds a
        // slot, and every layer below it then has one (or is done), so the turn
        // always comes. Each layer's bytes are also handed, as they are written, to
        // its unpack, which starts once the layers below it are unpacked.
        let stream = self.options.unpack && self.options.unpack_while_downloading;
        let (taps, feeds): (Vec<Tap>, Vec<Option<Feed>>) = layers
            .iter()
            .map(|_| match stream {
                true => {
                    let (tap, feed) =
                        tap::tap(self.tap_budget.clone(), Some(self.spill_dir.clone()));
                    (tap, Some(feed))
                }
                false => (Tap::default(), None),
            })
            .unzip();
        let downloads: Vec<AbortOnDrop<Result<Fetched, Error>>> = layers
            .iter()
            .zip(Turn::chain(layers.len()))
            .zip(Turn::chain(layers.len()))
            .zip(taps)
            .map(|(((layer, turn), start), tap)| {
                let source = source.clone();
                let content = content.clone();
                let digest = layer.digest().to_string();
                let size = layer.size();
                let labels = with_source(HashMap::new());
                let slots = self.blob_slots.clone();
                let unplanned = source.scheduler.unplanned(size);
                AbortOnDrop(tokio::spawn(async move {
                    start.wait().await;
                    let _slot = slots.acquire_owned().await.expect("never closed");
                    drop(start);
                    let fetched = fetch_blob(
                        &source,
                        &content,
                        BlobJob {
                            digest: &digest,
                            size,
                            ref_key: format!("layer-{digest}"),
                            labels,
                            turn,
                            unplanned: Some(unplanned),
                            tap,
                        },
                    )
                    .await?;
                    source
                        .tracker
                        .blob_done(&digest, size, fetched.bytes, fetched.present);
                    Ok(fetched)
                }))
            })
            .collect();

        // The config comes alongside the layers, not before them: waiting for it
        // would cost every pull a round trip or two. It is small and rides the
        // small-blob lane, so it arrives first; when it is invalid, returning drops
        // (and so aborts) the layer downloads.
        let config_desc = resolved.parsed.config();
        let config_digest = config_desc.digest().to_string();
        let fetched = fetch_blob(
            source,
            &content,
            BlobJob {
                digest: &config_digest,
                size: config_desc.size(),
                ref_key: format!("config-{config_digest}"),
                labels: with_source(HashMap::new()),
                turn: Turn::default(),
                unplanned: None,
                tap: Tap::default(),
            },
        )
        .await?;
        source.tracker.blob_done(
            &config_digest,
            config_desc.size(),
            fetched.bytes,
            fetched.present,
        );
        report.add_blob(fetched, false);
        let config_bytes = content
            .read(&config_digest)
            .await
            .map_err(|e| Error::containerd("reading the image config", e))?;
        let config = resolve::parse_config(&config_digest, &config_bytes, layers.len())?;
        let diff_ids = config.rootfs().diff_ids().clone();
        self.finish_layers(
            conn,
            &content,
            layers,
            &diff_ids,
            &config_digest,
            downloads,
            feeds,
            &mut report,
        )
        .await?;

        // Parents after children, each with the GC labels that keep its children.
        let mut manifest_labels = HashMap::from([(
            format!("{LABEL_GC_REF_CONTENT}.config"),
            config_digest.clone(),
        )]);
        for (i, layer) in layers.iter().enumerate() {
            manifest_labels.insert(
                format!("{LABEL_GC_REF_CONTENT}.l.{i}"),
                layer.digest().to_string(),
            );
        }
        store_document(
            &content,
            BlobJob {
                digest: &resolved.manifest.digest,
                size: resolved.manifest.bytes.len() as u64,
                ref_key: format!("manifest-{}", resolved.manifest.digest),
                labels: with_source(manifest_labels),
                turn: Turn::default(),
                unplanned: None,
                tap: Tap::default(),
            },
            &resolved.manifest.bytes,
        )
        .await?;
        if let Some(index) = &resolved.index {
            let labels = index
                .manifests()
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    (
                        format!("{LABEL_GC_REF_CONTENT}.m.{i}"),
                        m.digest().to_string(),
                    )
                })
                .collect();
            store_document(
                &content,
                BlobJob {
                    digest: &resolved.top.digest,
                    size: resolved.top.bytes.len() as u64,
                    ref_key: format!("index-{}", resolved.top.digest),
                    labels: with_source(labels),
                    turn: Turn::default(),
                    unplanned: None,
                    tap: Tap::default(),
                },
                &resolved.top.bytes,
            )
            .await?;
        }

        report.records = self
            .write_records(conn, reference, &resolved, &config_digest)
            .await?;
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// Runs `work` until it ends, `deadline` passes (a [`Error::Timeout`]) or `cancel`
/// fires (an [`Error::Cancelled`]).
async fn bounded<T>(
    reference: &Reference,
    work: impl std::future::Future<Output = Result<T, Error>>,
    deadline: Option<(tokio::time::Instant, Duration)>,
    cancel: &CancellationToken,
) -> Result<T, Error> {
    let limited = async {
        match deadline {
            None => work.await,
            Some((at, limit)) => tokio::time::timeout_at(at, work).await.unwrap_or_else(|_| {
                Err(Error::Timeout {
                    reference: reference.to_string(),
                    limit,
                })
            }),
        }
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Cancelled { reference: reference.to_string() }),
        result = limited => result,
    }
}

/// A task handle that cancels the task when dropped, so a failed blob stops its
/// other chunk downloads instead of leaving them running.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
