//! What one pull did ([`PullReport`]), and the error text reports carry.

use std::collections::BTreeMap;
use std::time::Duration;

use super::events::{Counts, EndpointStats};
use super::fetch::Fetched;

/// What one pull did.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// Digest of what the reference resolved to (index or manifest).
    pub digest: String,
    /// Digest of the platform's manifest.
    pub manifest_digest: String,
    /// The image ID CRI reports: the config digest.
    pub image_id: String,
    /// True when the image was already there (records, blobs and snapshots) and
    /// nothing was pulled.
    pub present: bool,
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
    /// Of those, layers unpacked while they downloaded, written straight into their
    /// snapshot; the others were applied by containerd once downloaded.
    pub layers_unpacked_while_downloading: usize,
    /// Layers whose snapshot already existed.
    pub layers_reused: usize,
    /// Image records written.
    pub records: Vec<String>,
    /// Downloads that broke off and were resumed (stalls included).
    pub retries: u64,
    /// Downloads abandoned for stalling.
    pub stalls: u64,
    /// What each endpoint did, by [`endpoint_label`](super::endpoint_label).
    pub endpoints: BTreeMap<String, EndpointStats>,
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

    pub(super) fn add_blob(&mut self, fetched: Fetched, layer: bool) {
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

    pub(super) fn add_counts(&mut self, counts: &Counts) {
        self.retries = counts.retries;
        self.stalls = counts.stalls;
        self.endpoints = counts.endpoints.clone();
    }
}

/// An error and every cause under it, `a: b: c`, skipping a cause whose text the
/// message already holds: the full reason reports and events give.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(String, #[source] Option<Box<E>>);

    #[test]
    fn the_chain_names_every_cause_once() {
        let root = E("connection refused".into(), None);
        let mid = E("fetching sha256:ab".into(), Some(Box::new(root)));
        let top = E("pulling r/a:1".into(), Some(Box::new(mid)));
        assert_eq!(
            error_chain(&top),
            "pulling r/a:1: fetching sha256:ab: connection refused"
        );
        let repeated = E(
            "resolving: not found".into(),
            Some(Box::new(E("not found".into(), None))),
        );
        assert_eq!(error_chain(&repeated), "resolving: not found");
    }
}
