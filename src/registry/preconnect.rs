//! Connections opened while a pull's manifest is on its way.
//!
//! A pull asks for its manifest first and for its blobs only once it has it, many at
//! once. Each of those blob requests would then open a connection of its own: a TCP
//! round trip (and on HTTPS a TLS handshake, one or two more) after the manifest's.
//! Opened while the manifest is still coming, they are in the pool by the time the
//! blobs are asked for, and those round trips leave the pull's critical path.
//!
//! A connection is opened by the cheapest request the distribution API has:
//! `GET /v2/`, the version check, answered with `200` or `401` and a body of a few
//! bytes, read to the end so the connection goes back to the pool. The answer itself
//! is not used: a failed one costs nothing but the request, and says nothing about
//! the endpoint's health that the pull's own first request will not.

use std::time::Instant;

use futures::future::join_all;

use super::{Client, Endpoint};

/// Most connections opened ahead, whatever the connection limit: beyond this the
/// speculative requests would cost the registry more than their round trips save.
pub const MAX_PRECONNECT: usize = 32;

/// Most of a version check's body read to keep its connection: registries answer
/// with a few bytes; a longer body is not worth draining.
const MAX_PING_BODY: usize = 64 << 10;

impl Client {
    /// Opens up to `connections` (at most [`MAX_PRECONNECT`]) connections to the
    /// endpoint a pull's blob requests will go to first: the first of `endpoints`,
    /// in the order of their health, that may `pull`. Each endpoint is opened to
    /// once per client (the pool keeps idle connections for 90 s). Returns how many
    /// connections were opened and answered; 0 when the endpoint had been opened to
    /// before or none answered.
    pub async fn preconnect(&self, endpoints: &[Endpoint], connections: usize) -> usize {
        let names: Vec<String> = endpoints.iter().map(|e| e.base.to_string()).collect();
        let Some(first) =
            self.health.order(&names, None).into_iter().find(|&i| {
                endpoints[i].capabilities.pull && self.health.wait_for(&names[i]).is_none()
            })
        else {
            return 0;
        };
        let endpoint = &endpoints[first];
        if !self
            .preconnected
            .lock()
            .unwrap()
            .insert(names[first].clone())
        {
            return 0;
        }
        let Ok(http) = self.http_for(endpoint) else {
            // The pull's own requests report what is wrong with the TLS settings.
            return 0;
        };
        let url = format!("{}/", endpoint.base.as_str().trim_end_matches('/'));
        let started = Instant::now();
        let pings = (0..connections.min(MAX_PRECONNECT)).map(|_| {
            let mut request = http.get(&url);
            for (name, value) in &endpoint.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let drained = async move {
                let mut response = request.send().await.ok()?;
                let mut read = 0;
                while let Some(chunk) = response.chunk().await.ok()? {
                    read += chunk.len();
                    if read > MAX_PING_BODY {
                        return None;
                    }
                }
                Some(())
            };
            tokio::time::timeout(self.config().response_timeout, drained)
        });
        let opened = join_all(pings)
            .await
            .into_iter()
            .filter(|answered| matches!(answered, Ok(Some(()))))
            .count();
        tracing::debug!(
            endpoint = %endpoint.base,
            opened,
            elapsed = ?started.elapsed(),
            "connections opened ahead of the blob requests"
        );
        opened
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::join_all;
    use reqwest::header::HeaderMap;

    use super::super::fake::{self, Fake, Reply};
    use super::*;
    use crate::bench::link::{Link, LinkConfig};

    /// An endpoint on `link`'s address instead of the fake's own.
    fn through(link: &Link, fake: &Fake) -> Endpoint {
        let mut endpoint = fake.endpoint();
        endpoint.base = format!("http://{}/v2", link.addr()).parse().unwrap();
        endpoint
    }

    #[tokio::test]
    async fn the_blob_requests_that_follow_use_the_connections_opened_ahead() {
        let fake = Fake::start().await;
        let digest = fake.blob(fake::REPO, b"layer bytes");
        let link = Link::start(fake.authority().parse().unwrap(), LinkConfig::default())
            .await
            .unwrap();
        let endpoint = through(&link, &fake);
        let client = Arc::new(fake::client());

        let opened = client.preconnect(std::slice::from_ref(&endpoint), 4).await;
        assert_eq!(opened, 4);
        assert_eq!(link.stats().connections, 4);
        let pings = fake.requests_to("/v2/");
        assert_eq!(pings.len(), 4, "{pings:?}");

        // Four requests at once find four idle connections: none is opened.
        let target = fake::target();
        let url = format!("{}/{}/blobs/{digest}", endpoint.base, fake::REPO);
        let requests = (0..4).map(|_| {
            let client = client.clone();
            let (endpoint, target, url) = (endpoint.clone(), target.clone(), url.clone());
            async move {
                let response = client
                    .send(&endpoint, &target, &url, HeaderMap::new())
                    .await
                    .unwrap();
                assert_eq!(response.bytes().await.unwrap().as_ref(), b"layer bytes");
            }
        });
        join_all(requests).await;
        assert_eq!(link.stats().connections, 4);
    }

    #[tokio::test]
    async fn an_endpoint_is_opened_to_once_per_client() {
        let fake = Fake::start().await;
        let client = fake::client();
        let endpoints = [fake.endpoint()];
        assert_eq!(client.preconnect(&endpoints, 3).await, 3);
        assert_eq!(client.preconnect(&endpoints, 3).await, 0);
        assert_eq!(fake.requests_to("/v2/").len(), 3);
        // Another client (another run) opens its own.
        assert_eq!(fake::client().preconnect(&endpoints, 2).await, 2);
        assert_eq!(fake.requests_to("/v2/").len(), 5);
    }

    #[tokio::test]
    async fn the_version_check_carries_the_endpoint_headers_and_any_answer_will_do() {
        let fake = Fake::start().await;
        fake.always("/v2/", Reply::Status(401));
        let mut endpoint = fake.endpoint();
        endpoint.headers = vec![("X-Mirror-Token".into(), "abc".into())];
        let client = fake::client();
        assert_eq!(client.preconnect(&[endpoint], 2).await, 2);
        let pings = fake.requests_to("/v2/");
        assert_eq!(pings.len(), 2);
        assert!(pings
            .iter()
            .all(|p| p.header("x-mirror-token") == Some("abc")));
        // A 401 to a version check is how an auth registry says hello: no demotion.
        assert_eq!(client.failures(), 0);
    }

    #[tokio::test]
    async fn the_healthiest_endpoint_that_may_pull_is_the_one_opened_to() {
        let resolver = Fake::start().await;
        let demoted = Fake::start().await;
        let healthy = Fake::start().await;
        let mut resolve_only = resolver.endpoint();
        resolve_only.capabilities.pull = false;
        let client = fake::client();
        client.demote(&demoted.endpoint(), "test");
        let endpoints = [resolve_only, demoted.endpoint(), healthy.endpoint()];
        assert_eq!(client.preconnect(&endpoints, 2).await, 2);
        assert_eq!(resolver.requests_to("/v2/").len(), 0);
        assert_eq!(demoted.requests_to("/v2/").len(), 0);
        assert_eq!(healthy.requests_to("/v2/").len(), 2);
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_no_error() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let endpoint = Endpoint::new(format!("http://{addr}/v2").parse().unwrap(), false, "test");
        let client = fake::client();
        assert_eq!(client.preconnect(&[endpoint], 3).await, 0);
        assert_eq!(client.failures(), 0);
    }

    #[tokio::test]
    async fn never_more_than_the_cap() {
        let fake = Fake::start().await;
        let client = fake::client();
        let opened = client.preconnect(&[fake.endpoint()], 1000).await;
        assert_eq!(opened, MAX_PRECONNECT);
        assert_eq!(fake.requests_to("/v2/").len(), MAX_PRECONNECT);
    }
}
