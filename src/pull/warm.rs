//! [`Puller::warm`]: a list of images pulled under the puller's one budget, with a
//! result per image whatever happens to the others.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{EndpointStats, Error, ImageStatus, Outcome, Platform, PullReport, Puller};
use crate::reference::Reference;

/// Images pulled at once by [`Puller::warm`] unless [`WarmOptions::images_in_flight`]
/// says otherwise. Their blobs and chunks share one connection budget whatever this
/// is; it bounds the manifests resolved and leases held at a time.
pub const DEFAULT_IMAGES_IN_FLIGHT: usize = 8;

/// One image to warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmItem {
    /// The image.
    pub reference: Reference,
    /// Its platform; `None` for the puller's.
    pub platform: Option<Platform>,
}

impl WarmItem {
    /// An item for the puller's platform.
    pub fn new(reference: Reference) -> Self {
        Self {
            reference,
            platform: None,
        }
    }
}

/// How [`Puller::warm`] runs.
#[derive(Debug, Clone)]
pub struct WarmOptions {
    /// Stop at the first failure: pulls in flight are cancelled (their leases
    /// deleted) and the images not started are reported `cancelled`. Off by default
    /// (keep going).
    pub fail_fast: bool,
    /// Images pulled at once; defaults to [`DEFAULT_IMAGES_IN_FLIGHT`].
    pub images_in_flight: usize,
    /// Cancels the whole run from outside (e.g. on SIGTERM).
    pub cancel: CancellationToken,
}

impl Default for WarmOptions {
    fn default() -> Self {
        Self {
            fail_fast: false,
            images_in_flight: DEFAULT_IMAGES_IN_FLIGHT,
            cancel: CancellationToken::new(),
        }
    }
}

/// How one image of a warm ended.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    /// The normalised reference.
    pub reference: String,
    /// The platform pulled.
    pub platform: String,
    /// `pulled`, `present`, `failed` or `cancelled`.
    pub status: ImageStatus,
    /// What the reference resolved to, when it got that far.
    pub digest: Option<String>,
    /// Body bytes received from registries (manifests, config, layers).
    pub bytes_fetched: u64,
    /// Wall time.
    pub seconds: f64,
    /// Endpoints that answered requests for this image (URLs without credentials).
    pub endpoints: Vec<String>,
    /// Downloads that broke off and were resumed (stalls included).
    pub retries: u64,
    /// Downloads abandoned for stalling.
    pub stalls: u64,
    /// Per endpoint: requests answered, failovers, retries and stalls.
    pub endpoint_stats: BTreeMap<String, EndpointStats>,
    /// Why it failed or was cancelled: the error and each of its causes.
    pub reason: Option<String>,
    /// The pull's report when it succeeded.
    #[serde(skip)]
    pub report: Option<PullReport>,
    /// The error when it failed, to match on its kind.
    #[serde(skip)]
    pub error: Option<Arc<Error>>,
}

impl ImageResult {
    fn from_outcome(reference: &Reference, platform: &Platform, outcome: Outcome) -> Self {
        let counts = outcome.counts;
        let endpoints = counts
            .endpoints
            .iter()
            .filter(|(_, stats)| stats.requests > 0)
            .map(|(endpoint, _)| endpoint.clone())
            .collect();
        let mut result = ImageResult {
            reference: reference.to_string(),
            platform: platform.to_string(),
            status: ImageStatus::Pulled,
            digest: counts.digest.clone(),
            bytes_fetched: counts.fetched,
            seconds: outcome.elapsed.as_secs_f64(),
            endpoints,
            retries: counts.retries,
            stalls: counts.stalls,
            endpoint_stats: counts.endpoints,
            reason: None,
            report: None,
            error: None,
        };
        match outcome.result {
            Ok(report) => {
                result.status = if report.present {
                    ImageStatus::Present
                } else {
                    ImageStatus::Pulled
                };
                result.digest = Some(report.digest.clone());
                result.bytes_fetched = report.bytes_fetched;
                result.report = Some(report);
            }
            Err(error) => {
                result.status = match error {
                    Error::Cancelled { .. } => ImageStatus::Cancelled,
                    _ => ImageStatus::Failed,
                };
                result.reason = Some(super::error_chain(&error));
                result.error = Some(Arc::new(error));
            }
        }
        result
    }

    /// An image that was never started.
    fn not_started(reference: &Reference, platform: &Platform, reason: String) -> Self {
        ImageResult {
            reference: reference.to_string(),
            platform: platform.to_string(),
            status: ImageStatus::Cancelled,
            digest: None,
            bytes_fetched: 0,
            seconds: 0.0,
            endpoints: Vec::new(),
            retries: 0,
            stalls: 0,
            endpoint_stats: BTreeMap::new(),
            reason: Some(reason),
            report: None,
            error: None,
        }
    }
}

/// What [`Puller::warm`] did: one result per distinct image, in list order.
#[derive(Debug, Clone, Serialize)]
pub struct WarmReport {
    /// When the run started.
    #[serde(serialize_with = "rfc3339")]
    pub started_at: SystemTime,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// One result per image, in list order.
    pub images: Vec<ImageResult>,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
}

impl WarmReport {
    /// Images with `status`.
    pub fn count(&self, status: ImageStatus) -> usize {
        self.images.iter().filter(|i| i.status == status).count()
    }

    /// True when every image was pulled or already present.
    pub fn all_ok(&self) -> bool {
        self.images.iter().all(|i| i.status.is_ok())
    }

    /// Body bytes received for all images.
    pub fn bytes_fetched(&self) -> u64 {
        self.images.iter().map(|i| i.bytes_fetched).sum()
    }
}

impl Puller {
    /// Pulls every item under this puller's one budget (blobs shared between images
    /// are fetched once), [`images_in_flight`](WarmOptions::images_in_flight) images
    /// at a time. An item listed twice (same reference and platform) is pulled once.
    /// Never fails as a whole: each image has its result.
    pub async fn warm(&self, items: Vec<WarmItem>, options: WarmOptions) -> WarmReport {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let mut seen = HashSet::new();
        let items: Vec<(Reference, Platform)> = items
            .into_iter()
            .map(|item| {
                let platform = item
                    .platform
                    .unwrap_or_else(|| self.options.platform.clone());
                (item.reference, platform)
            })
            .filter(|(reference, platform)| {
                seen.insert((reference.to_string(), platform.to_string()))
            })
            .collect();
        // Cancelling the run (fail-fast, or the caller) cancels every pull in it.
        let cancel = options.cancel.child_token();
        let mut results: Vec<Option<ImageResult>> = vec![None; items.len()];
        let mut first_failure: Option<String> = None;
        {
            let mut pulls = futures::stream::iter(items.iter().enumerate())
                .map(|(i, (reference, platform))| {
                    let cancel = cancel.clone();
                    async move {
                        // Once cancelled, images not started yet never start.
                        if cancel.is_cancelled() {
                            return (i, None);
                        }
                        (i, Some(self.run_image(reference, platform, &cancel).await))
                    }
                })
                .buffer_unordered(options.images_in_flight.max(1));
            while let Some((i, outcome)) = pulls.next().await {
                let Some(outcome) = outcome else { continue };
                let (reference, platform) = &items[i];
                let result = ImageResult::from_outcome(reference, platform, outcome);
                if result.status == ImageStatus::Failed && first_failure.is_none() {
                    first_failure = Some(result.reference.clone());
                    if options.fail_fast {
                        cancel.cancel();
                    }
                }
                results[i] = Some(result);
            }
        }
        let reason = match (&first_failure, options.fail_fast) {
            (Some(failed), true) => format!("not started: {failed} failed and fail-fast is set"),
            _ => "not started: the run was cancelled".to_string(),
        };
        let images = results
            .into_iter()
            .zip(&items)
            .map(|(result, (reference, platform))| {
                result.unwrap_or_else(|| {
                    ImageResult::not_started(reference, platform, reason.clone())
                })
            })
            .collect();
        WarmReport {
            started_at,
            seconds: started.elapsed().as_secs_f64(),
            images,
        }
    }
}
