//! The `wire` reference: what the link gives a client that only downloads.
//!
//! A pull is more than its download: the manifest must come before any layer is
//! known, every connection costs a handshake and every request a round trip, and
//! the bytes go on into containerd. On a link with latency, "% of the link" can
//! never reach 100% even for a perfect client. The `wire` row measures how close
//! the link itself lets a client come, in the same run and through the same link
//! emulator: it GETs the manifest, then fetches the config and every layer as
//! Range requests spread evenly over a fixed number of connections that all start
//! at once and all carry the same number of bytes (so they end together), and
//! discards what it receives. Nothing is written, hashed or unpacked.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use oci_spec::image::ImageManifest;
use reqwest::header::{ACCEPT, RANGE};
use reqwest::StatusCode;

use super::tiers::Tier;
use crate::registry::media::MANIFEST_ACCEPT;

/// How many connections the `wire` client uses on `tier`: twice as many as it
/// takes to fill the link at its per-connection cap (so that the round trip
/// between one connection's requests never leaves the link short), from 4 to 64;
/// 8 on a link without a per-connection cap.
pub fn connections(tier: &Tier) -> usize {
    match (tier.rate, tier.per_connection_rate) {
        (Some(rate), Some(per)) if per > 0 => (2 * rate.div_ceil(per)).clamp(4, 64) as usize,
        _ => 8,
    }
}

/// One Range request of the plan: bytes `first..=last` of blob `blob`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index into the blob list the plan was made from.
    pub blob: usize,
    /// First byte, inclusive.
    pub first: u64,
    /// Last byte, inclusive.
    pub last: u64,
}

/// Cuts the blobs (by size, in order) into `connections` runs of requests that
/// carry the same number of bytes (give or take one): the blobs laid end to end
/// and cut into equal spans, a span crossing a blob boundary being one request per
/// blob it touches. Empty blobs and spans are left out.
pub fn plan(sizes: &[u64], connections: usize) -> Vec<Vec<Piece>> {
    let total: u64 = sizes.iter().sum();
    let connections = connections.max(1) as u64;
    let mut starts = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for size in sizes {
        starts.push(at);
        at += size;
    }
    (0..connections)
        .map(|i| {
            let (from, to) = (total * i / connections, total * (i + 1) / connections);
            sizes
                .iter()
                .zip(&starts)
                .enumerate()
                .filter_map(|(blob, (size, start))| {
                    let first = from.max(*start);
                    let end = to.min(start + size);
                    (first < end).then(|| Piece {
                        blob,
                        first: first - start,
                        last: end - start - 1,
                    })
                })
                .collect::<Vec<_>>()
        })
        .filter(|run| !run.is_empty())
        .collect()
}

/// Fetches the image `repository:tag` from `base` (`http://host:port`) as the
/// module describes, and returns the wall time and the bytes received (manifest
/// included). Any answer other than the bytes asked for is an error.
pub async fn fetch(
    base: &str,
    repository: &str,
    tag: &str,
    connections: usize,
) -> Result<(Duration, u64), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .build()
        .map_err(|e| format!("wire client: {e}"))?;
    let started = Instant::now();
    let url = format!("{base}/v2/{repository}/manifests/{tag}");
    let response = client
        .get(&url)
        .header(ACCEPT, MANIFEST_ACCEPT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("wire: GET {url}: {e}"))?;
    let manifest = response
        .bytes()
        .await
        .map_err(|e| format!("wire: GET {url}: {e}"))?;
    let parsed = ImageManifest::from_reader(&manifest[..])
        .map_err(|e| format!("wire: {url} is not an image manifest: {e}"))?;
    let blobs: Vec<(String, u64)> = std::iter::once(parsed.config())
        .chain(parsed.layers())
        .map(|d| (d.digest().to_string(), d.size()))
        .collect();
    let sizes: Vec<u64> = blobs.iter().map(|(_, size)| *size).collect();
    let runs = plan(&sizes, connections);
    let received = futures::stream::iter(runs)
        .map(|run| {
            let client = &client;
            let blobs = &blobs;
            async move {
                let mut bytes = 0;
                for piece in run {
                    let digest = &blobs[piece.blob].0;
                    bytes += fetch_piece(client, base, repository, digest, &piece).await?;
                }
                Ok::<u64, String>(bytes)
            }
        })
        .buffer_unordered(connections)
        .try_fold(0, |sum, bytes| async move { Ok(sum + bytes) })
        .await?;
    Ok((started.elapsed(), received + manifest.len() as u64))
}

/// One Range request, its body counted and dropped.
async fn fetch_piece(
    client: &reqwest::Client,
    base: &str,
    repository: &str,
    digest: &str,
    piece: &Piece,
) -> Result<u64, String> {
    let url = format!("{base}/v2/{repository}/blobs/{digest}");
    let range = format!("bytes={}-{}", piece.first, piece.last);
    let response = client
        .get(&url)
        .header(RANGE, &range)
        .send()
        .await
        .map_err(|e| format!("wire: GET {url} ({range}): {e}"))?;
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Err(format!(
            "wire: GET {url} ({range}) answered {} instead of 206 Partial Content",
            response.status()
        ));
    }
    let mut body = response.bytes_stream();
    let mut got = 0;
    while let Some(chunk) = body.next().await {
        got += chunk
            .map_err(|e| format!("wire: GET {url} ({range}): {e}"))?
            .len() as u64;
    }
    let asked = piece.last - piece.first + 1;
    if got != asked {
        return Err(format!(
            "wire: GET {url} ({range}) brought {got} bytes instead of {asked}"
        ));
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::fake::{blob_path, Fake, Reply};
    use crate::registry::media::OCI_MANIFEST;

    /// A fake registry serving `repo:tag` with a config and two layers; returns it,
    /// the image's size (manifest included) and the second layer's digest.
    async fn image(repo: &str) -> (Fake, u64, String) {
        let registry = Fake::start().await;
        let blobs: Vec<Vec<u8>> = [300usize, 70_000, 5_000]
            .iter()
            .map(|n| (0..*n).map(|i| (i * 7) as u8).collect())
            .collect();
        let digests: Vec<String> = blobs.iter().map(|b| registry.blob(repo, b)).collect();
        let descriptor = |i: usize, media: &str| serde_json::json!({"mediaType": media, "digest": digests[i], "size": blobs[i].len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(0, "application/vnd.oci.image.config.v1+json"),
            "layers": [
                descriptor(1, "application/vnd.oci.image.layer.v1.tar+gzip"),
                descriptor(2, "application/vnd.oci.image.layer.v1.tar+gzip"),
            ],
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        registry.manifest(repo, "v1", OCI_MANIFEST, &manifest);
        let size = manifest.len() + blobs.iter().map(Vec::len).sum::<usize>();
        (registry, size as u64, digests[1].clone())
    }

    #[tokio::test]
    async fn fetches_every_byte_of_the_image_as_range_requests() {
        let (registry, size, _) = image("wire/ok").await;
        let (_, bytes) = fetch(&registry.url(""), "wire/ok", "v1", 4).await.unwrap();
        assert_eq!(bytes, size);
        // Every blob request asked for a range.
        let blobs: Vec<_> = registry
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/blobs/"))
            .collect();
        assert!(blobs.len() >= 4, "{blobs:?}");
        assert!(blobs.iter().all(|r| r.header("range").is_some()));
    }

    #[tokio::test]
    async fn a_server_ignoring_range_or_cutting_a_body_short_is_an_error() {
        let (registry, _, _) = image("wire/whole").await;
        registry.ignore_ranges();
        let e = fetch(&registry.url(""), "wire/whole", "v1", 4)
            .await
            .unwrap_err();
        assert!(e.contains("200 OK instead of 206"), "{e}");

        let (registry, _, layer) = image("wire/cut").await;
        registry.always(&blob_path("wire/cut", &layer), Reply::CutAfter(1000));
        let e = fetch(&registry.url(""), "wire/cut", "v1", 4)
            .await
            .unwrap_err();
        assert!(e.contains(&layer), "{e}");

        let e = fetch(&registry.url(""), "wire/none", "v1", 4)
            .await
            .unwrap_err();
        assert!(e.contains("404"), "{e}");
    }

    fn tier(rate: Option<u64>, per: Option<u64>) -> Tier {
        Tier {
            name: "t".into(),
            rate,
            per_connection_rate: per,
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn connections_double_what_fills_the_link() {
        let mb = 125_000;
        assert_eq!(connections(&tier(Some(100 * mb), Some(25 * mb))), 8);
        assert_eq!(connections(&tier(Some(1000 * mb), Some(100 * mb))), 20);
        assert_eq!(connections(&tier(Some(10_000 * mb), Some(400 * mb))), 50);
        // Bounds, and links that cap no connection.
        assert_eq!(connections(&tier(Some(100 * mb), Some(100 * mb))), 4);
        assert_eq!(connections(&tier(Some(100_000 * mb), Some(mb))), 64);
        assert_eq!(connections(&tier(Some(100 * mb), None)), 8);
        assert_eq!(connections(&tier(None, None)), 8);
    }

    #[test]
    fn the_plan_covers_every_byte_once_in_equal_runs() {
        let sizes = [10, 0, 25, 5];
        let runs = plan(&sizes, 4);
        assert_eq!(
            runs,
            [
                vec![Piece {
                    blob: 0,
                    first: 0,
                    last: 9
                }],
                vec![Piece {
                    blob: 2,
                    first: 0,
                    last: 9
                }],
                vec![Piece {
                    blob: 2,
                    first: 10,
                    last: 19
                }],
                vec![
                    Piece {
                        blob: 2,
                        first: 20,
                        last: 24
                    },
                    Piece {
                        blob: 3,
                        first: 0,
                        last: 4
                    },
                ],
            ]
        );
        // Uneven totals differ by one byte at most; every byte is asked for once.
        for (sizes, n) in [(vec![7u64, 3, 1], 3), (vec![1000, 1], 7), (vec![5], 9)] {
            let runs = plan(&sizes, n);
            let lens: Vec<u64> = runs
                .iter()
                .map(|run| run.iter().map(|p| p.last - p.first + 1).sum())
                .collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            for (blob, size) in sizes.iter().enumerate() {
                let mut pieces: Vec<&Piece> =
                    runs.iter().flatten().filter(|p| p.blob == blob).collect();
                pieces.sort_by_key(|p| p.first);
                let mut next = 0;
                for piece in pieces {
                    assert_eq!(piece.first, next);
                    next = piece.last + 1;
                }
                assert_eq!(next, *size);
            }
        }
        assert!(plan(&[], 4).is_empty());
        assert!(plan(&[0, 0], 4).is_empty());
    }
}
