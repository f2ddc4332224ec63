//! Progress events of pulls ([`Event`], [`EventStream`]) and the per-pull counters
//! behind them (retries, stalls, endpoints), which results and metrics are built from.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use crate::registry::{Attempt, Endpoint, Manifest};

/// Events buffered for a subscriber of [`Puller::events`](super::Puller::events) that
/// falls behind; past that it misses the oldest ones.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// Least time between two [`Event::Progress`] events of one image: at most ten a
/// second, whatever the number of chunks in flight.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How one image of a pull or warm ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Fetched (at least in part) and unpacked; records written.
    Pulled,
    /// Already there: records, blobs and snapshots; nothing fetched.
    Present,
    /// The pull failed; the result says why.
    Failed,
    /// Not pulled because the run was stopped (`--fail-fast` after another image
    /// failed, or a signal).
    Cancelled,
}

impl ImageStatus {
    /// Every status, in the order reports list them.
    pub const ALL: [ImageStatus; 4] = [
        ImageStatus::Pulled,
        ImageStatus::Present,
        ImageStatus::Failed,
        ImageStatus::Cancelled,
    ];

    /// True for the statuses that count as success (`pulled`, `present`).
    pub fn is_ok(self) -> bool {
        matches!(self, ImageStatus::Pulled | ImageStatus::Present)
    }

    /// The lowercase name used in reports, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Pulled => "pulled",
            ImageStatus::Present => "present",
            ImageStatus::Failed => "failed",
            ImageStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened during a pull. Serialised (as JSON lines by `--progress
/// json`) with an `event` field naming the variant in snake case; `image` is always the
/// normalised reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The pull of an image began.
    Started {
        /// The image.
        image: String,
        /// The platform asked for, `os/arch[/variant]`.
        platform: String,
    },
    /// The reference resolved; `total_bytes` is what the image's config and layers
    /// weigh (what a pull from scratch fetches).
    Resolved {
        /// The image.
        image: String,
        /// Digest of the index or manifest the reference points at.
        digest: String,
        /// Config and layer bytes.
        total_bytes: u64,
        /// Number of layers.
        layers: usize,
    },
    /// Blob bytes received so far (throttled to [`PROGRESS_INTERVAL`]).
    Progress {
        /// The image.
        image: String,
        /// Blob bytes received from registries.
        fetched_bytes: u64,
        /// Config and layer bytes of the image.
        total_bytes: u64,
    },
    /// A blob (config or layer) is in the content store.
    BlobDone {
        /// The image.
        image: String,
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
        /// Bytes received for it (0 when it was already there).
        fetched_bytes: u64,
        /// True when it was already in the content store.
        present: bool,
    },
    /// A request failed on an endpoint and the next endpoint was tried.
    Failover {
        /// The image.
        image: String,
        /// The endpoint that failed.
        endpoint: String,
        /// What it answered or how it failed.
        reason: String,
    },
    /// A download broke off and resumes from where it stopped, elsewhere if it can.
    Retry {
        /// The image.
        image: String,
        /// The endpoint whose download broke off.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A download stalled (no byte for the progress timeout, or a trickle far below
    /// its peers) and was abandoned; its remaining bytes are fetched elsewhere.
    Stall {
        /// The image.
        image: String,
        /// The endpoint that stalled.
        endpoint: String,
        /// How it stalled.
        reason: String,
    },
    /// The pull of an image ended.
    Finished {
        /// The image.
        image: String,
        /// How it ended.
        status: ImageStatus,
        /// What the reference resolved to, when it got that far.
        digest: Option<String>,
        /// Body bytes received from registries.
        fetched_bytes: u64,
        /// Wall time of the pull.
        seconds: f64,
        /// Why it failed or was cancelled: the error and each of its causes.
        reason: Option<String>,
    },
}

impl Event {
    /// The image the event is about.
    pub fn image(&self) -> &str {
        match self {
            Event::Started { image, .. }
            | Event::Resolved { image, .. }
            | Event::Progress { image, .. }
            | Event::BlobDone { image, .. }
            | Event::Failover { image, .. }
            | Event::Retry { image, .. }
            | Event::Stall { image, .. }
            | Event::Finished { image, .. } => image,
        }
    }
}

/// The events of a [`Puller`](super::Puller) as a [`Stream`]. It ends when the
/// puller and its pulls are gone. A subscriber more than [`DEFAULT_EVENT_CAPACITY`]
/// events behind skips the oldest (logged at debug level); results never depend on
/// events, so nothing else is lost.
#[derive(Debug)]
pub struct EventStream {
    inner: BroadcastStream<Event>,
}

impl EventStream {
    pub(super) fn new(receiver: broadcast::Receiver<Event>) -> Self {
        Self {
            inner: BroadcastStream::new(receiver),
        }
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => return Poll::Ready(Some(event)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    tracing::debug!(missed = n, "a progress subscriber fell behind");
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What one endpoint did for one pull.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EndpointStats {
    /// Requests it answered (manifests, blobs, Range chunks).
    pub requests: u64,
    /// Requests that failed there and went on to the next endpoint.
    pub failovers: u64,
    /// Downloads from it that broke off and were resumed (stalls included).
    pub retries: u64,
    /// Downloads from it abandoned for stalling.
    pub stalls: u64,
}

/// At most one event per interval; the first is always let through.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// True (and the clock restarts) when an event may go out at `now`.
    pub(crate) fn ready(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// Why a download broke off before its end; it is resumed elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokeOff {
    /// What happened, for the log, the events and the error.
    pub reason: String,
    /// It stalled: no byte for the progress timeout (the HTTP client's read
    /// timeout) or a trickle far below its peers (the watchdog).
    pub stall: bool,
}

impl BrokeOff {
    /// The watchdog gave up on a trickling download.
    pub(crate) fn stalled(reason: String) -> Self {
        Self {
            reason,
            stall: true,
        }
    }

    /// The response was wrong: too long, or ended early.
    pub(crate) fn failed(reason: String) -> Self {
        Self {
            reason,
            stall: false,
        }
    }

    /// Reading the body failed; a read timeout is a stall.
    pub(crate) fn body(error: &reqwest::Error) -> Self {
        Self {
            reason: crate::registry::describe(error),
            stall: error.is_timeout(),
        }
    }
}

/// An endpoint as reports show it: its URL without user info, query or the `/v2` API
/// suffix, e.g. `https://mirror.example:5000`.
pub fn endpoint_label(base: &str) -> String {
    let Ok(mut url) = url::Url::parse(base) else {
        return base.to_string();
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    let text = url.to_string();
    let text = text.trim_end_matches('/');
    text.strip_suffix("/v2").unwrap_or(text).to_string()
}

/// Counters and event source of one image's pull; fetch code calls its hooks.
#[derive(Debug)]
pub(crate) struct Tracker {
    image: String,
    events: broadcast::Sender<Event>,
    fetched: AtomicU64,
    total: AtomicU64,
    retries: AtomicU64,
    stalls: AtomicU64,
    digest: Mutex<Option<String>>,
    endpoints: Mutex<BTreeMap<String, EndpointStats>>,
    throttle: Mutex<Throttle>,
}

/// What a [`Tracker`] counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    pub fetched: u64,
    pub retries: u64,
    pub stalls: u64,
    pub digest: Option<String>,
    pub endpoints: BTreeMap<String, EndpointStats>,
}

impl Tracker {
    pub(crate) fn new(image: String, events: broadcast::Sender<Event>) -> Self {
        Self {
            image,
            events,
            fetched: AtomicU64::new(0),
            total: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            digest: Mutex::new(None),
            endpoints: Mutex::new(BTreeMap::new()),
            throttle: Mutex::new(Throttle::new(PROGRESS_INTERVAL)),
        }
    }

    /// The image this tracker is for.
    pub(crate) fn image(&self) -> &str {
        &self.image
    }

    /// Sends an event; nobody listening is fine.
    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub(crate) fn resolved(&self, digest: &str, total_bytes: u64, layers: usize) {
        *self.digest.lock().unwrap() = Some(digest.to_string());
        self.total.store(total_bytes, Ordering::Relaxed);
        self.emit(Event::Resolved {
            image: self.image.clone(),
            digest: digest.to_string(),
            total_bytes,
            layers,
        });
    }

    /// Hook: `n` more body bytes of a blob arrived.
    pub(crate) fn bytes(&self, n: u64) {
        let fetched = self.fetched.fetch_add(n, Ordering::Relaxed) + n;
        // Chunks of one image arrive on many tasks at once: a busy throttle means
        // another one is reporting right now, so this one need not.
        let ready = self
            .throttle
            .try_lock()
            .map(|mut t| t.ready(Instant::now()))
            .unwrap_or(false);
        if ready {
            self.progress(fetched);
        }
    }

    fn progress(&self, fetched: u64) {
        self.emit(Event::Progress {
            image: self.image.clone(),
            fetched_bytes: fetched,
            total_bytes: self.total.load(Ordering::Relaxed),
        });
    }

    /// A last progress event with the final count, whatever the throttle says.
    pub(crate) fn flush_progress(&self) {
        self.progress(self.fetched.load(Ordering::Relaxed));
    }

    pub(crate) fn blob_done(&self, digest: &str, size: u64, fetched: u64, present: bool) {
        self.emit(Event::BlobDone {
            image: self.image.clone(),
            digest: digest.to_string(),
            size,
            fetched_bytes: fetched,
            present,
        });
    }

    /// Hook: endpoint `index` answered a blob request, after the `failed` attempts.
    pub(crate) fn served_blob(&self, endpoints: &[Endpoint], index: usize, failed: &[Attempt]) {
        self.served(endpoints, endpoints[index].base.as_str(), failed);
    }

    /// Hook: a manifest or index was served.
    pub(crate) fn served_manifest(&self, endpoints: &[Endpoint], manifest: &Manifest) {
        self.served(endpoints, &manifest.endpoint, &manifest.failed);
    }

    fn served(&self, endpoints: &[Endpoint], base: &str, failed: &[Attempt]) {
        let mut stats = self.endpoints.lock().unwrap();
        stats.entry(endpoint_label(base)).or_default().requests += 1;
        for attempt in failed {
            // The attempt's URL lies under its endpoint's base.
            let base = endpoints
                .iter()
                .map(|e| e.base.as_str())
                .find(|b| attempt.url.starts_with(b.trim_end_matches('/')))
                .unwrap_or(&attempt.url);
            let endpoint = endpoint_label(base);
            stats.entry(endpoint.clone()).or_default().failovers += 1;
            self.emit(Event::Failover {
                image: self.image.clone(),
                endpoint,
                reason: attempt.error.clone(),
            });
        }
    }

    /// Hook: a download from `endpoint` broke off and will be resumed.
    pub(crate) fn broke_off(&self, endpoint: &Endpoint, why: &BrokeOff) {
        let label = endpoint_label(endpoint.base.as_str());
        let (stall, reason) = (why.stall, why.reason.as_str());
        self.retries.fetch_add(1, Ordering::Relaxed);
        {
            let mut stats = self.endpoints.lock().unwrap();
            let entry = stats.entry(label.clone()).or_default();
            entry.retries += 1;
            if stall {
                entry.stalls += 1;
            }
        }
        let (image, reason) = (self.image.clone(), reason.to_string());
        if stall {
            self.stalls.fetch_add(1, Ordering::Relaxed);
            self.emit(Event::Stall {
                image,
                endpoint: label,
                reason,
            });
        } else {
            self.emit(Event::Retry {
                image,
                endpoint: label,
                reason,
            });
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            fetched: self.fetched.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
            digest: self.digest.lock().unwrap().clone(),
            endpoints: self.endpoints.lock().unwrap().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use url::Url;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::new(Url::parse(url).unwrap(), true, "test")
    }

    fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_throttle_lets_one_event_through_per_interval() {
        let mut throttle = Throttle::new(PROGRESS_INTERVAL);
        let start = Instant::now();
        assert!(throttle.ready(start), "the first event goes out");
        assert!(!throttle.ready(start + Duration::from_millis(50)));
        assert!(!throttle.ready(start + Duration::from_millis(99)));
        assert!(throttle.ready(start + Duration::from_millis(100)));
        assert!(!throttle.ready(start + Duration::from_millis(150)));
    }

    #[tokio::test(start_paused = true)]
    async fn byte_progress_is_throttled_to_ten_a_second() {
        let (tx, mut rx) = broadcast::channel(1024);
        let tracker = Tracker::new("r/a:1".into(), tx);
        tracker.resolved("sha256:ab", 10_000, 2);
        // 1000 body chunks over two seconds.
        for _ in 0..1000 {
            tracker.bytes(10);
            tokio::time::advance(Duration::from_millis(2)).await;
        }
        let progress: Vec<u64> = drain(&mut rx)
            .into_iter()
            .filter_map(|e| match e {
                Event::Progress { fetched_bytes, .. } => Some(fetched_bytes),
                _ => None,
            })
            .collect();
        assert!(
            (19..=21).contains(&progress.len()),
            "{} progress events in 2 s",
            progress.len()
        );
        assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
        tracker.flush_progress();
        assert!(matches!(
            drain(&mut rx).as_slice(),
            [Event::Progress {
                fetched_bytes: 10_000,
                total_bytes: 10_000,
                ..
            }]
        ));
        assert_eq!(tracker.counts().fetched, 10_000);
    }

    #[test]
    fn stalls_and_breaks_are_counted_per_endpoint() {
        let (tx, mut rx) = broadcast::channel(64);
        let tracker = Tracker::new("r/a:1".into(), tx);
        let mirror = endpoint("http://user:secret@mirror:5000/v2");
        tracker.broke_off(
            &mirror,
            &BrokeOff::stalled("timed out: operation timed out".into()),
        );
        tracker.broke_off(
            &mirror,
            &BrokeOff::failed("reading the body failed: connection reset".into()),
        );
        let counts = tracker.counts();
        assert_eq!((counts.retries, counts.stalls), (2, 1));
        let stats = counts.endpoints["http://mirror:5000"];
        assert_eq!((stats.retries, stats.stalls, stats.requests), (2, 1, 0));
        let events = drain(&mut rx);
        assert!(
            matches!(&events[0], Event::Stall { endpoint, .. } if endpoint == "http://mirror:5000")
        );
        assert!(matches!(&events[1], Event::Retry { .. }));
    }

    #[test]
    fn failed_attempts_before_an_answer_are_failovers_of_their_endpoint() {
        let (tx, mut rx) = broadcast::channel(64);
        let tracker = Tracker::new("r/a:1".into(), tx);
        let endpoints = [
            endpoint("http://dead:1/cache/v2"),
            endpoint("http://registry:5000/v2"),
        ];
        let failed = [Attempt {
            url: "http://dead:1/cache/v2/r/a/blobs/sha256:ab?ns=r".into(),
            error: "cannot connect".into(),
            status: None,
        }];
        tracker.served_blob(&endpoints, 1, &failed);
        tracker.served_blob(&endpoints, 1, &[]);
        let counts = tracker.counts();
        assert_eq!(counts.endpoints["http://dead:1/cache"].failovers, 1);
        assert_eq!(counts.endpoints["http://dead:1/cache"].requests, 0);
        assert_eq!(counts.endpoints["http://registry:5000"].requests, 2);
        assert_eq!(
            drain(&mut rx),
            vec![Event::Failover {
                image: "r/a:1".into(),
                endpoint: "http://dead:1/cache".into(),
                reason: "cannot connect".into(),
            }]
        );
    }

    #[rstest]
    #[case::plain("http://127.0.0.1:5000/v2", "http://127.0.0.1:5000")]
    #[case::path("https://m.example/cache/v2/", "https://m.example/cache")]
    #[case::secret("https://u:p@m.example/v2?x=1", "https://m.example")]
    #[case::not_a_url("nonsense", "nonsense")]
    fn endpoint_labels(#[case] base: &str, #[case] label: &str) {
        assert_eq!(endpoint_label(base), label);
    }

    #[test]
    fn events_serialise_with_a_snake_case_tag() {
        let event = Event::Finished {
            image: "r/a:1".into(),
            status: ImageStatus::Present,
            digest: Some("sha256:ab".into()),
            fetched_bytes: 0,
            seconds: 0.5,
            reason: None,
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({
                "event": "finished", "image": "r/a:1", "status": "present",
                "digest": "sha256:ab", "fetched_bytes": 0, "seconds": 0.5, "reason": null
            })
        );
        let blob = Event::BlobDone {
            image: "i".into(),
            digest: "d".into(),
            size: 1,
            fetched_bytes: 1,
            present: false,
        };
        assert_eq!(serde_json::to_value(&blob).unwrap()["event"], "blob_done");
    }
}
