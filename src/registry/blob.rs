//! Blob download: ranged resume, failover, and the checks on what came back.

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_RANGE, RANGE};
use reqwest::{Response, StatusCode};

use super::client::{object_url, Effect, Failure};
use super::{Attempt, Client, Endpoint, Error, Target};

/// A blob download in progress.
#[derive(Debug)]
pub struct Blob {
    /// The response whose body is the blob from the requested offset on.
    pub response: Response,
    /// Index of the endpoint that answered, in the list passed in.
    pub endpoint: usize,
    /// The URL that answered.
    pub url: String,
    /// Attempts on other endpoints that failed before this one answered.
    pub failed: Vec<Attempt>,
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
        self.blob_range(target, digest, offset, None, endpoints, avoid)
            .await
    }

    /// Starts downloading bytes `start..=end` of blob `digest` (`end` `None`: to the
    /// end) with a bounded `Range` request. An endpoint that ignores the Range (200
    /// for a partial request) or answers another range is skipped: its failure says
    /// "ignored the Range request" so callers can fall back to one stream.
    pub async fn blob_range(
        &self,
        target: &Target,
        digest: &str,
        start: u64,
        end: Option<u64>,
        endpoints: &[Endpoint],
        avoid: Option<usize>,
    ) -> Result<Blob, Error> {
        let what = match end {
            Some(end) => format!(
                "bytes {start}-{end} of blob {digest} of {}/{}",
                target.registry, target.repository
            ),
            None => format!("blob {digest} of {}/{}", target.registry, target.repository),
        };
        let (response, index, failed) = self
            .failover(what, target, "pull", endpoints, avoid, |i| {
                let url = object_url(&endpoints[i], target, "blobs", digest);
                async move {
                    self.try_blob(&endpoints[i], target, &url, start, end)
                        .await
                        .map_err(|f| (url, f))
                }
            })
            .await?;
        Ok(Blob {
            url: object_url(&endpoints[index], target, "blobs", digest),
            response,
            endpoint: index,
            failed,
        })
    }

    async fn try_blob(
        &self,
        endpoint: &Endpoint,
        target: &Target,
        url: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<Response, Failure> {
        let partial = start > 0 || end.is_some();
        let mut headers = HeaderMap::new();
        if partial {
            let end_text = end.map(|e| e.to_string()).unwrap_or_default();
            let range = HeaderValue::from_str(&format!("bytes={start}-{end_text}")).expect("ASCII");
            headers.insert(RANGE, range);
        }
        let response = self.send(endpoint, target, url, headers).await?;
        match response.status() {
            StatusCode::OK if !partial => Ok(response),
            StatusCode::PARTIAL_CONTENT if partial => match content_range(response.headers()) {
                Some((first, last)) if first == start && end.is_none_or(|end| last == end) => {
                    Ok(response)
                }
                other => Err(Failure::new(
                    Some(206),
                    format!(
                        "asked for bytes {start}-{}, the Content-Range is {}",
                        end.map(|e| e.to_string()).unwrap_or_default(),
                        other.map_or("missing or malformed".to_string(), |(a, b)| format!(
                            "{a}-{b}"
                        ))
                    ),
                    Effect::None,
                )),
            },
            StatusCode::OK => {
                self.health.ignored_range(endpoint.base.as_str());
                Err(Failure::new(Some(200), RANGE_IGNORED, Effect::None))
            }
            status if status.is_success() => Err(Failure::new(
                Some(status.as_u16()),
                format!("unexpected {status} for a blob"),
                Effect::None,
            )),
            _ => Err(Failure::status(response).await),
        }
    }
}

/// The failure of an endpoint that answered a Range request with the whole blob.
pub(crate) const RANGE_IGNORED: &str = "ignored the Range request";

/// A `Content-Range: bytes <first>-<last>/<total>` header, checked for sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// Position of the first byte sent.
    pub first: u64,
    /// Position of the last byte sent (inclusive): `first <= last`.
    pub last: u64,
    /// Length of the whole blob, `None` for `*` (unknown); when known, `last < total`.
    pub total: Option<u64>,
}

/// Parses a `Content-Range` value of a 206 answer (RFC 9110 §14.4). `None` for
/// anything else, including the unsatisfied form `bytes */<total>`, a range whose end
/// comes before its start, or a range that reaches past the stated total.
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let range = value.trim().strip_prefix("bytes")?;
    // The unit is followed by at least one space: `bytes1-2/3` is not a range.
    if !range.starts_with([' ', '\t']) {
        return None;
    }
    let (span, total) = range.trim_start().split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        // `u64::from_str` takes a leading '+'; the grammar is digits only.
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let (first, last) = (number(first)?, number(last)?);
    let total = match total.trim() {
        "*" => None,
        total => Some(number(total)?),
    };
    if first > last || total.is_some_and(|total| last >= total) {
        return None;
    }
    Some(ContentRange { first, last, total })
}

/// `(first, last)` byte positions of the `Content-Range` header, if it is valid.
fn content_range(headers: &HeaderMap<HeaderValue>) -> Option<(u64, u64)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    parse_content_range(value).map(|range| (range.first, range.last))
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, Fake, Reply, REPO};
    use super::*;

    #[test]
    fn content_ranges() {
        let parse = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_RANGE, HeaderValue::from_static(value));
            content_range(&headers)
        };
        assert_eq!(parse("bytes 100-199/200"), Some((100, 199)));
        assert_eq!(parse("bytes 0-0/*"), Some((0, 0)));
        assert_eq!(parse("bytes */200"), None);
        assert_eq!(parse("bytes 5-/200"), None);
        assert_eq!(parse("items 1-2/3"), None);
        assert_eq!(content_range(&HeaderMap::new()), None);
    }

    #[rstest::rstest]
    #[case::whole("bytes 0-99/100", Some((0, 99, Some(100))))]
    #[case::unknown_total("bytes 5-9/*", Some((5, 9, None)))]
    #[case::spaces("  bytes   7-7/8 ", Some((7, 7, Some(8))))]
    #[case::largest("bytes 0-18446744073709551614/18446744073709551615", Some((0, u64::MAX - 1, Some(u64::MAX))))]
    #[case::end_before_start("bytes 9-5/100", None)]
    #[case::past_the_total("bytes 0-100/100", None)]
    #[case::empty_total("bytes 0-1/0", None)]
    #[case::unsatisfied("bytes */100", None)]
    #[case::no_space("bytes0-1/2", None)]
    #[case::plus_sign("bytes +1-2/3", None)]
    #[case::negative("bytes -1-2/3", None)]
    #[case::overflow("bytes 0-18446744073709551616/*", None)]
    #[case::no_total("bytes 0-1", None)]
    #[case::empty_total_field("bytes 0-1/", None)]
    #[case::not_bytes("items 1-2/3", None)]
    fn content_range_values(
        #[case] value: &str,
        #[case] expected: Option<(u64, u64, Option<u64>)>,
    ) {
        let parsed = parse_content_range(value).map(|r| (r.first, r.last, r.total));
        assert_eq!(parsed, expected, "{value:?}");
    }

    proptest::proptest! {
        /// Every well-formed range reads back as written.
        #[test]
        fn prop_content_range_round_trip(first in 0u64..u64::MAX, len in 0u64..1 << 40, extra in 1u64..1 << 40, known in proptest::bool::ANY) {
            let last = first.saturating_add(len);
            let total = last.checked_add(extra);
            let text = match total.filter(|_| known) {
                Some(total) => format!("bytes {first}-{last}/{total}"),
                None => format!("bytes {first}-{last}/*"),
            };
            let parsed = parse_content_range(&text).unwrap();
            proptest::prop_assert_eq!((parsed.first, parsed.last), (first, last));
            proptest::prop_assert_eq!(parsed.total, total.filter(|_| known));
        }

        /// Whatever the text, an accepted range is in bounds.
        #[test]
        fn prop_content_range_in_bounds(text in "bytes[ 0-9*/-]{0,40}|.{0,40}") {
            if let Some(range) = parse_content_range(&text) {
                proptest::prop_assert!(range.first <= range.last);
                if let Some(total) = range.total {
                    proptest::prop_assert!(range.last < total);
                }
            }
        }
    }

    /// 1000 bytes that differ at every offset that matters here.
    fn data() -> Vec<u8> {
        (0..1000u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn resume_sends_a_range_and_takes_the_206() {
        let registry = Fake::start().await;
        let digest = registry.blob(REPO, &data());
        let client = fake::client();
        let endpoints = [registry.endpoint()];
        let whole = client
            .blob(&fake::target(), &digest, 0, &endpoints, None)
            .await
            .unwrap();
        assert_eq!(whole.response.bytes().await.unwrap(), data());
        let rest = client
            .blob(&fake::target(), &digest, 100, &endpoints, None)
            .await
            .unwrap();
        assert_eq!(rest.response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(rest.response.bytes().await.unwrap(), data()[100..]);
        let chunk = client
            .blob_range(&fake::target(), &digest, 100, Some(199), &endpoints, None)
            .await
            .unwrap();
        assert_eq!(chunk.response.bytes().await.unwrap(), data()[100..200]);
        let ranges: Vec<Option<String>> = registry
            .requests()
            .iter()
            .map(|s| s.header("range").map(str::to_string))
            .collect();
        assert_eq!(
            ranges,
            [
                None,
                Some("bytes=100-".into()),
                Some("bytes=100-199".into())
            ]
        );
    }

    /// Resumes at byte 100 from a first endpoint that misbehaves as set up by `spoil`
    /// and a second that does not; returns the error of the first one alone.
    async fn second_endpoint_resumes(spoil: impl Fn(&Fake, &str)) -> String {
        let (spoilt, good) = (Fake::start().await, Fake::start().await);
        let digest = spoilt.blob(REPO, &data());
        good.blob(REPO, &data());
        spoil(&spoilt, &fake::blob_path(REPO, &digest));
        let endpoints = [spoilt.endpoint(), good.endpoint()];
        let client = fake::client();
        let blob = client
            .blob(&fake::target(), &digest, 100, &endpoints, None)
            .await
            .unwrap();
        assert_eq!(blob.endpoint, 1);
        assert_eq!(blob.response.bytes().await.unwrap(), data()[100..]);
        // The endpoint works, it just cannot resume: not demoted.
        assert!(!client.health.is_demoted(endpoints[0].base.as_str()));
        client
            .blob(&fake::target(), &digest, 100, &endpoints[..1], None)
            .await
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn a_200_to_a_range_moves_on_to_the_next_endpoint() {
        let error = second_endpoint_resumes(|fake, _| fake.ignore_ranges()).await;
        assert!(error.contains("ignored the Range"), "{error}");
    }

    #[tokio::test]
    async fn an_endpoint_that_ignores_a_range_is_remembered_for_the_run() {
        let (ignoring, honouring) = (Fake::start().await, Fake::start().await);
        let digest = ignoring.blob(REPO, &data());
        honouring.blob(REPO, &data());
        ignoring.ignore_ranges();
        let endpoints = [ignoring.endpoint(), honouring.endpoint()];
        let client = fake::client();
        // A request for the whole blob says nothing about ranges.
        let target = fake::target();
        let whole = client.blob(&target, &digest, 0, &endpoints[..1], None);
        assert_eq!(whole.await.unwrap().endpoint, 0);
        assert!(!client.ignores_ranges(&endpoints[0]));
        let part = client
            .blob_range(&target, &digest, 100, Some(199), &endpoints, None)
            .await
            .unwrap();
        assert_eq!(part.endpoint, 1);
        assert!(client.ignores_ranges(&endpoints[0]));
        assert!(!client.ignores_ranges(&endpoints[1]));
    }

    #[tokio::test]
    async fn a_wrong_content_range_moves_on_to_the_next_endpoint() {
        let error =
            second_endpoint_resumes(|fake, path| fake.always(path, Reply::RangeStart(0))).await;
        assert!(
            error.contains("asked for bytes 100-") && error.contains("Content-Range is 0-999"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_after_the_bytes_sent() {
        let registry = Fake::start().await;
        let digest = registry.blob(REPO, &data());
        registry.always(&fake::blob_path(REPO, &digest), Reply::CutAfter(300));
        let blob = fake::client()
            .blob(&fake::target(), &digest, 0, &[registry.endpoint()], None)
            .await
            .unwrap();
        let mut body = blob.response.bytes_stream();
        let mut received = Vec::new();
        let error = loop {
            match futures::StreamExt::next(&mut body).await {
                Some(Ok(chunk)) => received.extend_from_slice(&chunk),
                Some(Err(error)) => break error,
                None => panic!("the body ended cleanly after {} bytes", received.len()),
            }
        };
        assert_eq!(received, data()[..300], "{error}");
    }
}
