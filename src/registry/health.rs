//! Endpoint health for the whole run: an endpoint that refused, timed out or answered
//! 5xx is demoted for a cool-down, so a dead mirror costs its timeout once per run
//! instead of once per blob (containerd#4861, where every blob waits on it again).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so cool-downs and Retry-After waits follow paused time in tests.
use tokio::time::Instant;

/// First cool-down of a failing endpoint; it doubles with each further failure.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(120);
/// Longest cool-down.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Default, Clone)]
struct State {
    failures: u32,
    demoted_until: Option<Instant>,
    not_before: Option<Instant>,
    last_error: Option<String>,
}

/// Health of every endpoint seen in this run, keyed by base URL.
#[derive(Debug, Default)]
pub struct Health {
    states: Mutex<HashMap<String, State>>,
    /// Demotions and deferrals so far: the tuner backs off when this grows.
    failures: std::sync::atomic::AtomicU64,
    /// Endpoints that answered a Range request with the whole blob: not unwell, but
    /// no use for a part of one.
    ignore_ranges: Mutex<HashSet<String>>,
    /// Per endpoint, the repositories for which it refused the credentials (or
    /// anonymous access) after its challenge was answered.
    refused: Mutex<HashMap<String, HashSet<String>>>,
}

impl Health {
    /// True when `endpoint` is in its cool-down.
    pub fn is_demoted(&self, endpoint: &str) -> bool {
        let states = self.states.lock().unwrap();
        states
            .get(endpoint)
            .and_then(|s| s.demoted_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Records an endpoint failure that says the endpoint itself is unwell (refused,
    /// timed out, 5xx, broke off mid-body). Returns the cool-down applied.
    pub fn demote(&self, endpoint: &str, reason: &str) -> Duration {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut states = self.states.lock().unwrap();
        let state = states.entry(endpoint.to_string()).or_default();
        state.failures = state.failures.saturating_add(1);
        let factor = 1u32 << (state.failures - 1).min(8);
        let cool_down = DEFAULT_COOL_DOWN.saturating_mul(factor).min(MAX_COOL_DOWN);
        state.demoted_until = Some(Instant::now() + cool_down);
        state.last_error = Some(reason.to_string());
        cool_down
    }

    /// Records that the endpoint asked us to come back later (429/503 Retry-After).
    pub fn defer(&self, endpoint: &str, wait: Duration) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut states = self.states.lock().unwrap();
        let state = states.entry(endpoint.to_string()).or_default();
        state.not_before = Some(Instant::now() + wait);
    }

    /// How long to wait before asking `endpoint` again, if it said so.
    pub fn wait_for(&self, endpoint: &str) -> Option<Duration> {
        let states = self.states.lock().unwrap();
        let until = states.get(endpoint)?.not_before?;
        until.checked_duration_since(Instant::now())
    }

    /// Records that `endpoint` refused access to `repository` after its challenge
    /// was answered.
    pub fn refuse(&self, endpoint: &str, repository: &str) {
        let mut refused = self.refused.lock().unwrap();
        let repositories = refused.entry(endpoint.to_string()).or_default();
        repositories.insert(repository.to_string());
    }

    /// Records that `endpoint` served `repository`: it no longer counts as refusing.
    pub fn served(&self, endpoint: &str, repository: &str) {
        if let Some(repositories) = self.refused.lock().unwrap().get_mut(endpoint) {
            repositories.remove(repository);
        }
    }

    /// True when `endpoint` refused access to `repository` earlier in the run.
    pub fn refused(&self, endpoint: &str, repository: &str) -> bool {
        let refused = self.refused.lock().unwrap();
        refused
            .get(endpoint)
            .is_some_and(|r| r.contains(repository))
    }

    /// Records that `endpoint` answered a Range request with the whole blob.
    pub fn ignored_range(&self, endpoint: &str) {
        self.ignore_ranges
            .lock()
            .unwrap()
            .insert(endpoint.to_string());
    }

    /// True once `endpoint` has answered a Range request with the whole blob in
    /// this run.
    pub fn ignores_ranges(&self, endpoint: &str) -> bool {
        self.ignore_ranges.lock().unwrap().contains(endpoint)
    }

    /// Demotions and deferrals recorded so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a success: the endpoint is healthy again.
    pub fn restore(&self, endpoint: &str) {
        let mut states = self.states.lock().unwrap();
        if let Some(state) = states.get_mut(endpoint) {
            if state.failures > 0 || state.demoted_until.is_some() {
                tracing::info!(endpoint, "endpoint healthy again");
            }
            *state = State::default();
        }
    }

    /// The order to try `count` endpoints in: healthy ones in configured order, then
    /// demoted ones (still tried as a last resort), with `avoid` (the endpoint that
    /// just failed this very transfer) moved to the end.
    pub fn order(&self, endpoints: &[String], avoid: Option<usize>) -> Vec<usize> {
        let mut healthy = Vec::new();
        let mut demoted = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            if Some(i) == avoid {
                continue;
            }
            if self.is_demoted(endpoint) {
                demoted.push(i);
            } else {
                healthy.push(i);
            }
        }
        healthy.extend(demoted);
        healthy.extend(avoid.filter(|a| *a < endpoints.len()));
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, BlackHole, Fake, Reply, REPO};
    use super::super::{Client, Endpoint};
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn demoted_endpoints_go_last_until_restored() {
        let health = Health::default();
        assert_eq!(health.order(&names(), None), vec![0, 1, 2]);
        let first = health.demote("a", "refused");
        assert_eq!(first, DEFAULT_COOL_DOWN);
        assert_eq!(health.order(&names(), None), vec![1, 2, 0]);
        assert_eq!(health.demote("a", "refused"), DEFAULT_COOL_DOWN * 2);
        health.restore("a");
        assert_eq!(health.order(&names(), None), vec![0, 1, 2]);
    }

    #[test]
    fn avoided_endpoint_goes_last() {
        let health = Health::default();
        health.demote("c", "timeout");
        assert_eq!(health.order(&names(), Some(0)), vec![1, 2, 0]);
    }

    #[test]
    fn cool_down_is_capped() {
        let health = Health::default();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = health.demote("a", "x");
        }
        assert_eq!(last, MAX_COOL_DOWN);
    }

    #[test]
    fn defer_sets_a_wait() {
        let health = Health::default();
        assert!(health.wait_for("a").is_none());
        health.defer("a", Duration::from_secs(5));
        let wait = health.wait_for("a").unwrap();
        assert!(wait <= Duration::from_secs(5) && wait > Duration::from_secs(4));
    }

    /// Fetches the blob `digest` ten times through `endpoints`; each must come from
    /// the last one.
    async fn ten_fetches(client: &Client, digest: &str, endpoints: &[Endpoint]) {
        for _ in 0..10 {
            let blob = client
                .blob(&fake::target(), digest, 0, endpoints, None)
                .await
                .unwrap();
            assert_eq!(blob.endpoint, endpoints.len() - 1);
            assert_eq!(&blob.response.bytes().await.unwrap()[..], b"layer");
        }
    }

    #[tokio::test]
    async fn an_endpoint_answering_5xx_is_asked_once_per_run() {
        for status in [500, 503] {
            let (broken, good) = (Fake::start().await, Fake::start().await);
            let digest = good.blob(REPO, b"layer");
            broken.always(&fake::blob_path(REPO, &digest), Reply::Status(status));
            let client = fake::client();
            let endpoints = [broken.endpoint(), good.endpoint()];
            ten_fetches(&client, &digest, &endpoints).await;
            assert_eq!(broken.requests().len(), 1, "after {status}");
            assert_eq!(good.requests().len(), 10);
            assert!(client.health.is_demoted(endpoints[0].base.as_str()));
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_tried_once_per_run() {
        let good = Fake::start().await;
        let digest = good.blob(REPO, b"layer");
        let client = fake::client();
        let endpoints = [fake::closed_port(), good.endpoint()];
        ten_fetches(&client, &digest, &endpoints).await;
        assert_eq!(good.requests().len(), 10);
        // Each refused connection is one more failure on record: there was one.
        assert_eq!(failures(&client.health, &endpoints[0]), 1);
        assert!(client.health.is_demoted(endpoints[0].base.as_str()));
        assert!(!client.health.is_demoted(endpoints[1].base.as_str()));
    }

    fn failures(health: &Health, endpoint: &Endpoint) -> u32 {
        let states = health.states.lock().unwrap();
        states.get(endpoint.base.as_str()).map_or(0, |s| s.failures)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_endpoint_costs_its_response_timeout_once_per_run() {
        fake::crawl_paused_clock();
        let (hung, good) = (BlackHole::start().await, Fake::start().await);
        let digest = good.blob(REPO, b"layer");
        let client = fake::client();
        let endpoints = [hung.endpoint(), good.endpoint()];
        let started = tokio::time::Instant::now();
        ten_fetches(&client, &digest, &endpoints).await;
        let elapsed = started.elapsed();
        let timeout = super::super::DEFAULT_RESPONSE_TIMEOUT;
        assert!(
            elapsed >= timeout && elapsed < timeout * 2,
            "{elapsed:?} for ten fetches"
        );
        assert_eq!(hung.accepted(), 1);
        assert_eq!(good.requests().len(), 10);
    }
}
