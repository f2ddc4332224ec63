//! One pull, from a reference to an unpacked image with the records CRI expects.
//!
//! Steps: endpoints from the hosts configuration → resolve the manifest or index →
//! choose the platform's manifest → fetch config, then layers concurrently, into the
//! content store → store manifest and index with their GC labels → unpack → image
//! records. Everything happens under one expiring lease, deleted at the end, so an
//! interrupted pull leaves nothing pinned and no half-made image record.

mod fetch;
mod finish;
mod plan;
mod platform;
mod resolve;
mod scheduler;
mod tuner;
mod watchdog;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use fetch::{Fetched, MAX_RESUMES};
pub use platform::{ParseError as PlatformParseError, Platform};
pub(crate) use resolve::{parse_config, parse_index, parse_manifest};
pub use resolve::{MAX_CONFIG_SIZE, MAX_LAYERS, MAX_LAYER_SIZE};
pub use scheduler::{Scheduler, DEFAULT_REORDER_MEMORY};
pub use tuner::{for_bandwidth, Decision, Tuner, AUTO_MAX, AUTO_START, TUNE_INTERVAL};
pub use watchdog::{TRICKLE_FLOOR, TRICKLE_FRACTION, TRICKLE_WINDOW};

use crate::config;
use crate::containerd::{
    self, ContentStore, Leases, LABEL_DISTRIBUTION_SOURCE, LABEL_GC_REF_CONTENT,
};
use crate::reference::Reference;
use crate::registry::{self, Endpoint, Target};
use fetch::{fetch_blob, store_document, BlobJob, Source};

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

/// Settings of a [`Puller`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// containerd socket; defaults to [`DEFAULT_ADDRESS`].
    pub address: PathBuf,
    /// containerd namespace; defaults to [`DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// Platform whose manifest is chosen from an index; defaults to the host's.
    pub platform: Platform,
    /// Snapshotter to unpack into; defaults to [`DEFAULT_SNAPSHOTTER`].
    pub snapshotter: String,
    /// Where endpoints, TLS settings and credentials come from: containerd's
    /// config.toml and hosts.toml directories, Docker's config.json, `--mirror`.
    pub config: config::Sources,
    /// Unpack layers into the snapshotter after fetching.
    pub unpack: bool,
    /// Requests in flight at once across every image, blob and chunk of the run; with
    /// [`auto_tune`](Self::auto_tune) (the default), the most the tuner may reach.
    /// Defaults to [`AUTO_MAX`].
    pub concurrency: usize,
    /// Tune the concurrency at run time: start at [`AUTO_START`] and add
    /// connections while throughput still rises (default). Off, `concurrency` is fixed.
    pub auto_tune: bool,
    /// Range request size for big blobs; defaults to [`DEFAULT_CHUNK_SIZE`]. Blobs
    /// smaller than two chunks come in one stream.
    pub chunk_size: u64,
    /// Memory for chunks waiting to be written in order; defaults to
    /// [`DEFAULT_REORDER_MEMORY`].
    pub reorder_memory: usize,
    /// Expiry of the pull's lease; defaults to [`DEFAULT_LEASE_EXPIRY`].
    pub lease_expiry: Duration,
    /// Registry client settings (timeouts among them).
    pub registry: registry::ClientConfig,
    /// Bound on one whole pull (fetch, unpack, records); `None` for no bound.
    pub timeout: Option<Duration>,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            address: PathBuf::from(DEFAULT_ADDRESS),
            namespace: DEFAULT_NAMESPACE.to_string(),
            platform: Platform::host(),
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            config: config::Sources::default(),
            unpack: true,
            concurrency: AUTO_MAX,
            auto_tune: true,
            chunk_size: DEFAULT_CHUNK_SIZE,
            reorder_memory: DEFAULT_REORDER_MEMORY,
            lease_expiry: DEFAULT_LEASE_EXPIRY,
            registry: registry::ClientConfig::default(),
            timeout: None,
        }
    }
}

/// What one pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// Digest of what the reference resolved to (index or manifest).
    pub digest: String,
    /// Digest of the platform's manifest.
    pub manifest_digest: String,
    /// The image ID CRI reports: the config digest.
    pub image_id: String,
    /// All body bytes received from registries (manifests, config, layers).
    pub bytes_fetched: u64,
    /// Layer bytes received from registries.
    pub layer_bytes_fetched: u64,
    /// Blobs (config and layers) downloaded.
    pub blobs_fetched: usize,
    /// Blobs already in the content store.
    pub blobs_present: usize,
    /// Layers applied into the snapshotter.
    pub layers_unpacked: usize,
    /// Layers whose snapshot already existed.
    pub layers_reused: usize,
    /// Image records written.
    pub records: Vec<String>,
    /// Wall time of the pull.
    pub elapsed: Duration,
}

impl PullReport {
    /// Fetched megabytes (10^6 bytes) per second over the whole pull.
    pub fn megabytes_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes_fetched as f64 / 1e6 / secs
        } else {
            0.0
        }
    }
}

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
    /// The concurrency tuner, started with the first pull when tuning is on.
    tuner: std::sync::Mutex<Option<AbortOnDrop<()>>>,
    /// The containerd connection, made by the first pull and shared by the rest.
    conn: tokio::sync::OnceCell<containerd::Connection>,
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
        Ok(Self {
            options,
            config,
            registry: Arc::new(registry),
            scheduler,
            blob_slots: Arc::new(tokio::sync::Semaphore::new(BLOBS_IN_FLIGHT)),
            tuner: std::sync::Mutex::new(None),
            conn: tokio::sync::OnceCell::new(),
        })
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

    /// Pulls `reference`: fetch, unpack (unless disabled) and image records.
    pub async fn pull(&self, reference: &Reference) -> Result<PullReport, Error> {
        let started = Instant::now();
        self.start_tuner();
        let endpoints = self.config.endpoints(reference.registry())?;
        // One connection for every pull of this puller (the channel multiplexes).
        let conn = self
            .conn
            .get_or_try_init(|| {
                containerd::Connection::connect(&self.options.address, &self.options.namespace)
            })
            .await
            .map_err(|e| Error::containerd("connecting to containerd", e))?
            .clone();
        let leases = Leases::new(conn.clone());
        let lease = format!("ctrpull-{:016x}", rand::random::<u64>());
        leases
            .create(&lease, self.options.lease_expiry)
            .await
            .map_err(|e| Error::containerd("creating a lease", e))?;
        let leased = conn
            .with_lease(&lease)
            .map_err(|e| Error::containerd("creating a lease", e))?;
        let pull = self.pull_leased(&leased, reference, endpoints.into(), started);
        let result = match self.options.timeout {
            None => pull.await,
            Some(limit) => tokio::time::timeout(limit, pull).await.unwrap_or_else(|_| {
                Err(Error::Timeout {
                    reference: reference.to_string(),
                    limit,
                })
            }),
        };
        // The image records (if any) now hold everything; the lease must go either way.
        if let Err(e) = leases.delete(&lease).await {
            tracing::warn!(
                lease,
                "could not delete the pull's lease (it expires by itself): {e}"
            );
        }
        result
    }

    async fn pull_leased(
        &self,
        conn: &containerd::Connection,
        reference: &Reference,
        endpoints: Arc<[Endpoint]>,
        started: Instant,
    ) -> Result<PullReport, Error> {
        let target = Target {
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
        };
        let source = Source {
            client: self.registry.clone(),
            target: Arc::new(target),
            endpoints,
            scheduler: self.scheduler.clone(),
            chunk_size: self.options.chunk_size.max(1 << 20),
        };
        let content = ContentStore::new(conn.clone());
        let resolved = self.resolve(reference, &source).await?;
        let mut report = PullReport {
            reference: reference.to_string(),
            digest: resolved.top.digest.clone(),
            manifest_digest: resolved.manifest.digest.clone(),
            image_id: resolved.parsed.config().digest().to_string(),
            bytes_fetched: resolved.top.bytes.len() as u64,
            layer_bytes_fetched: 0,
            blobs_fetched: 0,
            blobs_present: 0,
            layers_unpacked: 0,
            layers_reused: 0,
            records: Vec::new(),
            elapsed: Duration::ZERO,
        };
        if resolved.index.is_some() {
            report.bytes_fetched += resolved.manifest.bytes.len() as u64;
        }
        tracing::info!(reference = %reference, digest = %resolved.top.digest, endpoint = %resolved.top.endpoint, "resolved");

        let source_label = (
            format!("{LABEL_DISTRIBUTION_SOURCE}.{}", reference.registry()),
            reference.repository().to_string(),
        );
        let with_source = |mut labels: HashMap<String, String>| {
            labels.insert(source_label.0.clone(), source_label.1.clone());
            labels
        };

        // The config first: it is small, and it must be valid before gigabytes of
        // layers are worth fetching.
        let config_desc = resolved.parsed.config();
        let config_digest = config_desc.digest().to_string();
        let fetched = fetch_blob(
            &source,
            &content,
            BlobJob {
                digest: &config_digest,
                size: config_desc.size(),
                ref_key: format!("config-{config_digest}"),
                labels: with_source(HashMap::new()),
            },
        )
        .await?;
        report.add_blob(fetched, false);
        let config_bytes = content
            .read(&config_digest)
            .await
            .map_err(|e| Error::containerd("reading the image config", e))?;
        let layers = resolved.parsed.layers();
        let config = resolve::parse_config(&config_digest, &config_bytes, layers.len())?;
        let diff_ids = config.rootfs().diff_ids().clone();

        // Every layer downloads as a task of its own (the scheduler bounds the
        // requests), so the download goes on while earlier layers are applied.
        let downloads: Vec<AbortOnDrop<Result<Fetched, Error>>> = layers
            .iter()
            .map(|layer| {
                let source = source.clone();
                let content = content.clone();
                let digest = layer.digest().to_string();
                let size = layer.size();
                let labels = with_source(HashMap::new());
                let slots = self.blob_slots.clone();
                AbortOnDrop(tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await.expect("never closed");
                    fetch_blob(
                        &source,
                        &content,
                        BlobJob {
                            digest: &digest,
                            size,
                            ref_key: format!("layer-{digest}"),
                            labels,
                        },
                    )
                    .await
                }))
            })
            .collect();
        self.finish_layers(
            conn,
            &content,
            layers,
            &diff_ids,
            &config_digest,
            downloads,
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

impl PullReport {
    fn add_blob(&mut self, fetched: Fetched, layer: bool) {
        self.bytes_fetched += fetched.bytes;
        if layer {
            self.layer_bytes_fetched += fetched.bytes;
        }
        if fetched.present {
            self.blobs_present += 1;
        } else {
            self.blobs_fetched += 1;
        }
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
