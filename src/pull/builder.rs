//! [`PullerBuilder`]: a [`Puller`] from named settings, with the node's containerd
//! configuration (the CRI plugin's pull settings) as defaults under them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::{for_bandwidth, Error, Platform, PullOptions, Puller, AUTO_MAX};
use crate::config::{self, Config};

/// How many requests a puller keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Exactly this many (at most [`MAX_CONCURRENCY`](super::MAX_CONCURRENCY)).
    Fixed(usize),
    /// Tuned while pulling, up to the CRI plugin's `max_concurrent_downloads` when
    /// config.toml sets it, else [`AUTO_MAX`].
    Auto,
    /// Sized to a link of this many bits per second ([`for_bandwidth`]).
    Bandwidth(u64),
}

/// Builds a [`Puller`]. Every setting has the default [`PullOptions::default`] gives;
/// the configuration files are read by [`build`](Self::build).
///
/// ```no_run
/// # async fn demo() -> Result<(), ctrpull::Error> {
/// use ctrpull::{Concurrency, Puller};
///
/// let puller = Puller::builder()
///     .address("/run/containerd/containerd.sock")
///     .namespace("k8s.io")
///     .hosts_dir("/etc/containerd/certs.d")
///     .concurrency(Concurrency::Fixed(8))
///     .timeout(std::time::Duration::from_secs(600))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PullerBuilder {
    options: PullOptions,
    concurrency: Option<Concurrency>,
    progress_timeout: Option<Duration>,
}

impl PullerBuilder {
    /// containerd's socket.
    pub fn address(mut self, address: impl Into<PathBuf>) -> Self {
        self.options.address = address.into();
        self
    }

    /// The containerd namespace (`k8s.io` is the one kubelet sees).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.options.namespace = namespace.into();
        self
    }

    /// The platform chosen from multi-platform indexes.
    pub fn platform(mut self, platform: Platform) -> Self {
        self.options.platform = platform;
        self
    }

    /// The snapshotter layers are unpacked into.
    pub fn snapshotter(mut self, snapshotter: impl Into<String>) -> Self {
        self.options.snapshotter = snapshotter.into();
        self
    }

    /// All configuration sources at once (replaces what the methods below set).
    pub fn sources(mut self, sources: config::Sources) -> Self {
        self.options.config = sources;
        self
    }

    /// containerd's config.toml (registry mirrors, auth, TLS, `config_path`, the CRI
    /// plugin's pull settings).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.config.config_toml = Some(path.into());
        self
    }

    /// A hosts.toml directory such as `/etc/containerd/certs.d`; repeat for more,
    /// searched in order.
    pub fn hosts_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.config.hosts_dirs.push(dir.into());
        self
    }

    /// Try `url` first for `host`'s images (`*`: every registry); repeat for more.
    pub fn mirror(mut self, host: impl Into<String>, url: Url) -> Self {
        self.options.config.mirrors.push((host.into(), url));
        self
    }

    /// Reach registries no file gives a scheme for over plain HTTP.
    pub fn plain_http(mut self, on: bool) -> Self {
        self.options.config.plain_http = on;
        self
    }

    /// Docker's config.json, for credentials no containerd file gives.
    pub fn docker_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.config.docker_config = Some(path.into());
        self
    }

    /// Requests in flight across every image, blob and chunk.
    pub fn concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// A request with no byte for this long is abandoned and resumed elsewhere
    /// (default: the CRI plugin's `image_pull_progress_timeout`, else
    /// [`DEFAULT_READ_TIMEOUT`](crate::registry::DEFAULT_READ_TIMEOUT)).
    pub fn progress_timeout(mut self, timeout: Duration) -> Self {
        self.progress_timeout = Some(timeout);
        self
    }

    /// Give up on one image not pulled within this long (default: no bound).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Unpack into the snapshotter (default) or only fetch into the content store.
    pub fn unpack(mut self, unpack: bool) -> Self {
        self.options.unpack = unpack;
        self
    }

    /// Unpack each layer while it downloads when the snapshotter allows it
    /// (default), or only after (containerd's `Diff.Apply`).
    pub fn unpack_while_downloading(mut self, on: bool) -> Self {
        self.options.unpack_while_downloading = on;
        self
    }

    /// Largest Range request a big blob is fetched in (default
    /// [`DEFAULT_CHUNK_SIZE`](super::DEFAULT_CHUNK_SIZE)); see
    /// [`PullOptions::chunk_size`](super::PullOptions::chunk_size).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.options.chunk_size = bytes;
        self
    }

    /// Bytes held in memory for layers waiting for their unpack to start, across
    /// the run (default 16 MiB); the rest waits in temporary files.
    pub fn unpack_waiting_memory(mut self, bytes: usize) -> Self {
        self.options.unpack_waiting_memory = bytes;
        self
    }

    /// Reads the configuration files and makes the puller. An invalid file is an
    /// error naming the file, the key and the reason.
    pub fn build(self) -> Result<Puller, Error> {
        let config = Config::load(&self.options.config)?;
        self.build_with(Arc::new(config))
    }

    /// Makes the puller with a configuration already loaded.
    pub fn build_with(self, config: Arc<Config>) -> Result<Puller, Error> {
        let mut options = self.options;
        let cri = config.cri();
        let (concurrency, auto_tune, reason) =
            match (self.concurrency, &cri.max_concurrent_downloads) {
                (Some(Concurrency::Fixed(n)), _) => (n, false, "fixed".to_string()),
                (Some(Concurrency::Bandwidth(rate)), _) => {
                    let (n, reason) = for_bandwidth(rate);
                    (n, false, format!("bandwidth: {reason}"))
                }
                // 0 means "no limit" to containerd.
                (_, Some(setting)) if setting.value > 0 => (
                    setting.value.min(AUTO_MAX),
                    true,
                    format!("tuned, at most {} from {}", setting.value, setting.source),
                ),
                _ => (AUTO_MAX, true, "tuned while pulling".to_string()),
            };
        tracing::info!(concurrency, auto_tune, "connections: {reason}");
        options.concurrency = concurrency;
        options.auto_tune = auto_tune;
        // containerd's progress timeout cancels the whole pull; ours abandons one
        // stalled response and resumes it elsewhere. Zero (containerd: off) keeps ours.
        let from_config = cri
            .image_pull_progress_timeout
            .as_ref()
            .map(|setting| setting.value)
            .filter(|value| !value.is_zero());
        if let Some(timeout) = self.progress_timeout.or(from_config) {
            options.registry.read_timeout = timeout;
        }
        Puller::with_config(options, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn config_with(toml: &str) -> (tempfile::TempDir, PullerBuilder) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml).unwrap();
        let builder = Puller::builder()
            .config_file(&path)
            .docker_config(dir.path().join("none.json"));
        (dir, builder)
    }

    const CRI: &str = r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
max_concurrent_downloads = 6
image_pull_progress_timeout = "45s"
"#;

    #[rstest]
    #[case::cri_ceiling(None, 6, true)]
    #[case::fixed(Some(Concurrency::Fixed(3)), 3, false)]
    #[case::bandwidth(Some(Concurrency::Bandwidth(1 << 30)), for_bandwidth(1 << 30).0, false)]
    #[case::auto(Some(Concurrency::Auto), 6, true)]
    fn concurrency_from_flags_over_config(
        #[case] asked: Option<Concurrency>,
        #[case] concurrency: usize,
        #[case] auto_tune: bool,
    ) {
        let (dir, mut builder) = config_with(CRI);
        if let Some(asked) = asked {
            builder = builder.concurrency(asked);
        }
        let docker = dir.path().join("none.json");
        std::fs::write(&docker, "{}").unwrap();
        let puller = builder.build().unwrap();
        assert_eq!(puller.options().concurrency, concurrency);
        assert_eq!(puller.options().auto_tune, auto_tune);
    }

    #[test]
    fn progress_timeout_from_config_unless_set() {
        let (dir, builder) = config_with(CRI);
        std::fs::write(dir.path().join("none.json"), "{}").unwrap();
        let puller = builder.clone().build().unwrap();
        assert_eq!(
            puller.options().registry.read_timeout,
            Duration::from_secs(45)
        );
        let puller = builder
            .progress_timeout(Duration::from_secs(7))
            .timeout(Duration::from_secs(60))
            .unpack(false)
            .namespace("ns")
            .build()
            .unwrap();
        assert_eq!(
            puller.options().registry.read_timeout,
            Duration::from_secs(7)
        );
        assert_eq!(puller.options().timeout, Some(Duration::from_secs(60)));
        assert!(!puller.options().unpack);
        assert_eq!(puller.options().namespace, "ns");
    }

    #[test]
    fn a_missing_config_file_is_an_error_naming_it() {
        let err = Puller::builder()
            .config_file("/nonexistent/ctrpull/config.toml")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ctrpull/config.toml"), "{err}");
    }
}
