//! Manifest and index fetch: size cap, digest check, media type.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use sha2::{Digest as _, Sha256, Sha512};

use super::client::{describe, object_url, Effect, Failure};
use super::{media, Attempt, Client, Endpoint, Error, Target};

/// Largest manifest or index accepted, as containerd caps it (4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// A manifest or index fetched and checked against its digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Media type, from `Content-Type` or the document's own `mediaType`.
    pub media_type: String,
    /// Digest of `bytes` (`sha256:…`).
    pub digest: String,
    /// The document, byte for byte as served.
    pub bytes: Bytes,
    /// Base URL of the endpoint that served it.
    pub endpoint: String,
    /// Attempts on other endpoints that failed before this one answered.
    pub failed: Vec<Attempt>,
}

impl Client {
    /// Fetches the manifest or index `object` (a tag or a digest) of `target`.
    ///
    /// A tag is only asked of endpoints with the `resolve` capability. The body is
    /// capped at [`MAX_MANIFEST_SIZE`], hashed, and checked against `expected` (for
    /// digest references and children of an index) or against the registry's
    /// `Docker-Content-Digest`. Endpoints are tried in order; any failure moves on.
    pub async fn manifest(
        &self,
        target: &Target,
        object: &str,
        expected: Option<&str>,
        endpoints: &[Endpoint],
    ) -> Result<Manifest, Error> {
        let by_digest = expected.is_some();
        let separator = if object.contains(':') { '@' } else { ':' };
        let what = format!(
            "manifest {}/{}{separator}{object}",
            target.registry, target.repository
        );
        let (mut manifest, index, failed) = self
            .failover(
                what,
                target,
                if by_digest { "pull" } else { "resolve" },
                endpoints,
                None,
                |i| {
                    let url = object_url(&endpoints[i], target, "manifests", object);
                    async move {
                        self.try_manifest(&endpoints[i], target, &url, expected)
                            .await
                            .map_err(|f| (url, f))
                    }
                },
            )
            .await?;
        manifest.endpoint = endpoints[index].base.to_string();
        manifest.failed = failed;
        Ok(manifest)
    }

    async fn try_manifest(
        &self,
        endpoint: &Endpoint,
        target: &Target,
        url: &str,
        expected: Option<&str>,
    ) -> Result<Manifest, Failure> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(media::MANIFEST_ACCEPT));
        let response = self.send(endpoint, target, url, headers).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::status(response).await);
        }
        // The endpoint answered but what it served is wrong: not its health's fault.
        let fail = |e: String| Failure::new(Some(status.as_u16()), e, Effect::None);
        if let Some(length) = response.content_length() {
            if length > MAX_MANIFEST_SIZE {
                return Err(fail(format!(
                    "manifest is {length} bytes, more than the {MAX_MANIFEST_SIZE} allowed"
                )));
            }
        }
        let header_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::new(
                    Some(status.as_u16()),
                    format!("reading manifest: {}", describe(&e)),
                    Effect::Demote,
                )
            })?;
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_SIZE {
                return Err(fail(format!(
                    "manifest is larger than the {MAX_MANIFEST_SIZE} bytes allowed"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let bytes = body.freeze();
        let algorithm = expected
            .or(header_digest.as_deref())
            .and_then(|d| d.split_once(':'))
            .map_or("sha256", |(a, _)| a)
            .to_string();
        let digest = digest_of(&algorithm, &bytes).map_err(fail)?;
        if let Some(expected) = expected {
            if digest != expected {
                return Err(fail(format!(
                    "content has digest {digest}, expected {expected}"
                )));
            }
        } else if let Some(header) = header_digest.filter(|h| h.starts_with(&algorithm)) {
            if header != digest {
                return Err(fail(format!(
                    "content has digest {digest}, but Docker-Content-Digest says {header}"
                )));
            }
        }
        let media_type = manifest_media_type(&header_type, &bytes).map_err(fail)?;
        Ok(Manifest {
            media_type,
            digest,
            bytes,
            endpoint: String::new(),
            failed: Vec::new(),
        })
    }
}

/// Hex digest of `bytes` with `algorithm`, in `algorithm:hex` form.
pub(crate) fn digest_of(algorithm: &str, bytes: &[u8]) -> Result<String, String> {
    match algorithm {
        "sha256" => Ok(format!("sha256:{}", hex::encode(Sha256::digest(bytes)))),
        "sha512" => Ok(format!("sha512:{}", hex::encode(Sha512::digest(bytes)))),
        other => Err(format!("unsupported digest algorithm {other:?}")),
    }
}

/// The media type of a manifest: the `Content-Type` header when it names a manifest
/// type, else the document's own `mediaType` field (some registries and static file
/// servers answer `application/json` or `application/octet-stream`).
fn manifest_media_type(header: &str, body: &[u8]) -> Result<String, String> {
    if media::kind(header).is_some() {
        return Ok(header.to_string());
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let media_type = match (probe.media_type, probe.schema_version) {
        (Some(media_type), _) => media_type,
        (None, Some(1)) => media::DOCKER_SCHEMA1[0].to_string(),
        // OCI allows an index or manifest without `mediaType`.
        (None, _) if probe.manifests.is_some() => media::OCI_INDEX.to_string(),
        (None, _) => media::OCI_MANIFEST.to_string(),
    };
    if media::DOCKER_SCHEMA1.contains(&media_type.as_str())
        || media::DOCKER_SCHEMA1.contains(&header)
    {
        return Err("Docker schema 1 manifests are not supported (push the image again with a current client)".into());
    }
    if media::kind(&media_type).is_none() {
        let shown = if header.is_empty() {
            media_type
        } else {
            header.to_string()
        };
        return Err(format!("unsupported manifest media type {shown:?}"));
    }
    Ok(media_type)
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, Fake, Reply, REPO};
    use super::*;

    #[test]
    fn media_type_from_header_or_body() {
        assert_eq!(
            manifest_media_type(media::OCI_INDEX, b"{}").unwrap(),
            media::OCI_INDEX
        );
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            manifest_media_type("application/json", body).unwrap(),
            media::DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type("", br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            media::OCI_INDEX
        );
        let err = manifest_media_type("", br#"{"schemaVersion":1,"name":"x"}"#).unwrap_err();
        assert!(err.contains("schema 1"), "{err}");
        let err = manifest_media_type("text/html", b"<html>").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = manifest_media_type("", br#"{"mediaType":"application/x-unknown"}"#).unwrap_err();
        assert!(err.contains("application/x-unknown"), "{err}");
    }

    #[test]
    fn digests() {
        assert_eq!(
            digest_of("sha256", b"").unwrap(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(digest_of("md5", b"").is_err());
    }

    const GOOD: &[u8] = br#"{"schemaVersion":2,"manifests":[]}"#;

    #[tokio::test]
    async fn wrong_digest_moves_on_to_the_next_endpoint() {
        let (wrong, right) = (Fake::start().await, Fake::start().await);
        let digest = fake::sha256(GOOD);
        let other = br#"{"schemaVersion":2,"manifests":[{}]}"#;
        wrong.manifest(REPO, &digest, media::OCI_INDEX, other);
        right.manifest(REPO, &digest, media::OCI_INDEX, GOOD);
        let endpoints = [wrong.endpoint(), right.endpoint()];
        let manifest = fake::client()
            .manifest(&fake::target(), &digest, Some(&digest), &endpoints)
            .await
            .unwrap();
        assert_eq!(manifest.endpoint, endpoints[1].base.as_str());
        assert_eq!(manifest.digest, digest);
        assert_eq!(&manifest.bytes[..], GOOD);
        assert_eq!(manifest.media_type, media::OCI_INDEX);
        assert_eq!(wrong.requests().len(), 1);

        // Alone, the wrong one is an error that says what it got.
        let error = fake::client()
            .manifest(&fake::target(), &digest, Some(&digest), &endpoints[..1])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!(
                "content has digest {}, expected {digest}",
                fake::sha256(other)
            )),
            "{error}"
        );
    }

    /// The error of fetching `latest`, served as `reply` with `bytes`, from one endpoint.
    async fn fails(media_type: &str, bytes: Vec<u8>, reply: Reply) -> String {
        let registry = Fake::start().await;
        registry.manifest(REPO, "latest", media_type, &bytes);
        registry.always(&fake::manifest_path(REPO, "latest"), reply);
        fake::client()
            .manifest(&fake::target(), "latest", None, &[registry.endpoint()])
            .await
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn over_size_manifest_is_refused() {
        let big = vec![b' '; MAX_MANIFEST_SIZE as usize + 1];
        let error = fails(media::OCI_MANIFEST, big.clone(), Reply::Serve).await;
        assert!(
            error.contains(&format!(
                "manifest is {} bytes, more than the {MAX_MANIFEST_SIZE} allowed",
                big.len()
            )),
            "{error}"
        );
        // Without a Content-Length the cap holds while reading.
        let error = fails(media::OCI_MANIFEST, big, Reply::Chunked).await;
        assert!(
            error.contains(&format!(
                "manifest is larger than the {MAX_MANIFEST_SIZE} bytes allowed"
            )),
            "{error}"
        );
    }

    #[tokio::test]
    async fn unknown_media_type_is_a_clear_error() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/x-unknown"}"#.to_vec();
        let error = fails("application/x-unknown", body, Reply::Serve).await;
        assert!(
            error.contains(r#"unsupported manifest media type "application/x-unknown""#),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_manifest_cut_short_moves_on_and_demotes() {
        let (cut, whole) = (Fake::start().await, Fake::start().await);
        for registry in [&cut, &whole] {
            registry.manifest(REPO, "latest", media::OCI_INDEX, GOOD);
        }
        cut.always(&fake::manifest_path(REPO, "latest"), Reply::CutAfter(10));
        let endpoints = [cut.endpoint(), whole.endpoint()];
        let client = fake::client();
        let manifest = client
            .manifest(&fake::target(), "latest", None, &endpoints)
            .await
            .unwrap();
        assert_eq!(manifest.endpoint, endpoints[1].base.as_str());
        assert_eq!(&manifest.bytes[..], GOOD);
        assert!(client.health.is_demoted(endpoints[0].base.as_str()));
    }
}
