//! Blob download: ranged resume, failover, and the checks on what came back.

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_RANGE, RANGE};
use reqwest::{Response, StatusCode};

use super::client::{object_url, Effect, Failure};
use super::{Client, Endpoint, Error, Target};

/// A blob download in progress.
#[derive(Debug)]
pub struct Blob {
    /// The response whose body is the blob from the requested offset on.
    pub response: Response,
    /// Index of the endpoint that answered, in the list passed in.
    pub endpoint: usize,
    /// The URL that answered.
    pub url: String,
}

impl Client {
    /// Starts downloading blob `digest` from byte `offset` (with `Range:
    /// bytes=<offset>-` when non-zero), trying healthy endpoints in configured order
    /// and `avoid` (the endpoint whose download just broke off) last.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &str,
        offset: u64,
        endpoints: &[Endpoint],
        avoid: Option<usize>,
    ) -> Result<Blob, Error> {
        let what = format!("blob {digest} of {}/{}", target.registry, target.repository);
        let (response, index) = self
            .failover(what, target, "pull", endpoints, avoid, |i| {
                let url = object_url(&endpoints[i], target, "blobs", digest);
                async move {
                    self.try_blob(&endpoints[i], target, &url, offset)
                        .await
                        .map_err(|f| (url, f))
                }
            })
            .await?;
        Ok(Blob {
            url: object_url(&endpoints[index], target, "blobs", digest),
            response,
            endpoint: index,
        })
    }

    async fn try_blob(
        &self,
        endpoint: &Endpoint,
        target: &Target,
        url: &str,
        offset: u64,
    ) -> Result<Response, Failure> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-")).expect("ASCII");
            headers.insert(RANGE, range);
        }
        let response = self.send(endpoint, target, url, headers).await?;
        match response.status() {
            StatusCode::OK if offset == 0 => Ok(response),
            StatusCode::PARTIAL_CONTENT if offset > 0 => match range_start(response.headers()) {
                Some(start) if start == offset => Ok(response),
                other => Err(Failure::new(
                    Some(206),
                    format!("asked for bytes from {offset}, the Content-Range starts at {other:?}"),
                    Effect::None,
                )),
            },
            StatusCode::OK => Err(Failure::new(
                Some(200),
                "ignored the Range request needed to resume",
                Effect::None,
            )),
            status if status.is_success() => Err(Failure::new(
                Some(status.as_u16()),
                format!("unexpected {status} for a blob"),
                Effect::None,
            )),
            _ => Err(Failure::status(response).await),
        }
    }
}

/// The first byte position of a `Content-Range: bytes a-b/total` header.
fn range_start(headers: &HeaderMap<HeaderValue>) -> Option<u64> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split(['-', '/']).next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/200"),
        );
        assert_eq!(range_start(&headers), Some(100));
        headers.insert(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_static("bytes */200"),
        );
        assert_eq!(range_start(&headers), None);
    }
}
