//! [`PullOptions`]: every setting of a [`Puller`](super::Puller), with its default.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    Platform, AUTO_MAX, DEFAULT_ADDRESS, DEFAULT_CHUNK_SIZE, DEFAULT_LEASE_EXPIRY,
    DEFAULT_NAMESPACE, DEFAULT_REORDER_MEMORY, DEFAULT_SNAPSHOTTER,
};
use crate::{config, registry};

/// Settings of a [`Puller`](super::Puller).
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
    /// Unpack a layer while it downloads, writing it straight into the snapshot's
    /// directory, when that is possible: overlayfs, ctrpull as root and seeing
    /// containerd's own directories (checked with a probe file), a layer
    /// [`crate::containerd::apply`] can write exactly as containerd would. A layer
    /// whose unpack waits for the layers below it keeps up to 16 MiB (shared by the
    /// run) in memory and the rest in an unlinked file in the temporary directory.
    /// Default on; off, or when that is not possible, layers are applied by
    /// containerd's `Diff.Apply` once downloaded.
    pub unpack_while_downloading: bool,
    /// Bytes held in memory, across the run, for layers whose unpack has not
    /// started yet (the layers below are still unpacking); what does not fit goes
    /// to a temporary file of each layer's own. Defaults to 16 MiB.
    pub unpack_waiting_memory: usize,
    /// Requests in flight at once across every image, blob and chunk of the run; with
    /// [`auto_tune`](Self::auto_tune) (the default), the most the tuner may reach.
    /// Defaults to [`AUTO_MAX`].
    pub concurrency: usize,
    /// Tune the concurrency at run time: start at [`AUTO_START`](super::AUTO_START) and add
    /// connections while throughput still rises (default). Off, `concurrency` is fixed.
    pub auto_tune: bool,
    /// Largest Range request for big blobs; defaults to [`DEFAULT_CHUNK_SIZE`].
    /// Blobs smaller than twice [`MIN_CHUNK`](super::MIN_CHUNK) come in one stream;
    /// bigger ones as Range requests of at most this, smaller when the reorder
    /// memory is shared by many connections, halving towards each blob's end.
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
            unpack_while_downloading: true,
            unpack_waiting_memory: super::tap::WAITING_BUDGET,
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
