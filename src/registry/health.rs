//! Endpoint health for the whole run: an endpoint that refused, timed out or answered
//! 5xx is demoted for a cool-down, so a dead mirror costs its timeout once per run
//! instead of once per blob (containerd#4861, where every blob waits on it again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
}
