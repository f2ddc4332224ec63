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
        let header_digest = match response.headers().get("docker-content-digest") {
            None => None,
            Some(value) => Some(header_digest(value).map_err(fail)?),
        };
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
        let media_type = check_document(&header_type, &bytes).map_err(fail)?;
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

/// The `Docker-Content-Digest` header, if it is a valid digest.
fn header_digest(value: &HeaderValue) -> Result<String, String> {
    let text = value
        .to_str()
        .map_err(|_| "the Docker-Content-Digest header is not ASCII text".to_string())?;
    crate::reference::parse_digest(text)
        .map(|digest| digest.to_string())
        .map_err(|e| format!("the Docker-Content-Digest header {text:?} is invalid: {e}"))
}

/// Checks that `body` is a manifest or index ctrpull can pull and that what it is
/// agrees with the `Content-Type` header; returns its media type.
///
/// The media type is the header's when it names a manifest type, else the document's
/// own `mediaType` field (some registries and static file servers answer
/// `application/json` or `application/octet-stream`). The body must be a JSON object;
/// its `mediaType`, when present, must be of the same kind (index or manifest) as the
/// header, and its shape must fit that kind: an index has `manifests` and no `config`
/// or `layers`, a manifest the reverse (containerd's `validateMediaType`).
pub(crate) fn check_document(header: &str, body: &[u8]) -> Result<String, String> {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<serde_json::Value>,
        manifests: Option<IgnoredAny>,
        config: Option<IgnoredAny>,
        layers: Option<IgnoredAny>,
    }
    if media::DOCKER_SCHEMA1.contains(&header) {
        return Err(SCHEMA1.into());
    }
    // A derived struct also reads JSON arrays (field by position): refuse them first.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Err(e) => format!("manifest is not valid JSON: {e}"),
            Ok(_) => "manifest is not a JSON object".to_string(),
        });
    }
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    let schema1 = probe.schema_version.and_then(|v| v.as_i64()) == Some(1);
    let field = probe.media_type.as_deref();
    if schema1 || field.is_some_and(|f| media::DOCKER_SCHEMA1.contains(&f)) {
        return Err(SCHEMA1.into());
    }
    let media_type = if media::kind(header).is_some() {
        header.to_string()
    } else {
        match field {
            Some(field) => field.to_string(),
            // OCI allows an index or manifest without `mediaType`.
            None if probe.manifests.is_some() => media::OCI_INDEX.to_string(),
            None => media::OCI_MANIFEST.to_string(),
        }
    };
    let Some(kind) = media::kind(&media_type) else {
        let shown = if header.is_empty() {
            &media_type
        } else {
            header
        };
        return Err(format!("unsupported manifest media type {shown:?}"));
    };
    if let Some(field) = field {
        if media::kind(field) != Some(kind) {
            return Err(format!(
                "the response says {media_type:?} but the document's mediaType is {field:?}"
            ));
        }
    }
    let shape = match kind {
        media::Kind::Index if probe.config.is_some() || probe.layers.is_some() => {
            Some("an image manifest (it has config or layers)")
        }
        media::Kind::Manifest if probe.manifests.is_some() => Some("an index (it has manifests)"),
        _ => None,
    };
    if let Some(shape) = shape {
        return Err(format!(
            "the response says {media_type:?} but the document is {shape}"
        ));
    }
    Ok(media_type)
}

/// Why Docker schema 1 is refused.
const SCHEMA1: &str =
    "Docker schema 1 manifests are not supported (push the image again with a current client)";

#[cfg(test)]
mod tests {
    use super::super::fake::{self, Fake, Reply, REPO};
    use super::*;

    #[test]
    fn media_type_from_header_or_body() {
        assert_eq!(
            check_document(media::OCI_INDEX, b"{}").unwrap(),
            media::OCI_INDEX
        );
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            check_document("application/json", body).unwrap(),
            media::DOCKER_MANIFEST
        );
        assert_eq!(
            check_document("", br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            media::OCI_INDEX
        );
        let err = check_document("", br#"{"schemaVersion":1,"name":"x"}"#).unwrap_err();
        assert!(err.contains("schema 1"), "{err}");
        let err = check_document("text/html", b"<html>").unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = check_document("", br#"{"mediaType":"application/x-unknown"}"#).unwrap_err();
        assert!(err.contains("application/x-unknown"), "{err}");
    }

    const INDEX_BODY: &str = r#"{"schemaVersion":2,"manifests":[]}"#;
    const MANIFEST_BODY: &str = r#"{"schemaVersion":2,"config":{},"layers":[]}"#;

    #[rstest::rstest]
    #[case::index_as_manifest(media::OCI_MANIFEST, INDEX_BODY, "the response says \"application/vnd.oci.image.manifest.v1+json\" but the document is an index (it has manifests)")]
    #[case::manifest_as_index(
        media::OCI_INDEX,
        MANIFEST_BODY,
        "but the document is an image manifest (it has config or layers)"
    )]
    #[case::manifest_as_docker_list(
        media::DOCKER_MANIFEST_LIST,
        r#"{"layers":[]}"#,
        "is an image manifest"
    )]
    #[case::field_disagrees(media::OCI_INDEX, r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#, "the response says \"application/vnd.oci.image.index.v1+json\" but the document's mediaType is \"application/vnd.oci.image.manifest.v1+json\"")]
    #[case::field_unknown(
        media::OCI_MANIFEST,
        r#"{"mediaType":"text/plain"}"#,
        "the document's mediaType is \"text/plain\""
    )]
    #[case::field_schema1(
        media::OCI_MANIFEST,
        r#"{"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#,
        "schema 1"
    )]
    #[case::header_schema1(
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "{}",
        "schema 1"
    )]
    #[case::html(
        media::OCI_INDEX,
        "<html>",
        "manifest is not valid JSON: expected value at line 1 column 1"
    )]
    #[case::empty(media::OCI_MANIFEST, "", "manifest is not valid JSON: EOF")]
    #[case::array(media::OCI_MANIFEST, "[]", "manifest is not a JSON object")]
    #[case::array_of_five(
        media::OCI_MANIFEST,
        "[null,null,null,null,null]",
        "manifest is not a JSON object"
    )]
    #[case::string("application/json", r#""manifest""#, "manifest is not a JSON object")]
    #[case::trailing(media::OCI_MANIFEST, "{} {}", "trailing characters")]
    #[case::media_type_not_a_string(
        media::OCI_MANIFEST,
        r#"{"mediaType":7}"#,
        "invalid type: integer `7`, expected a string"
    )]
    fn documents_that_disagree_with_their_type(
        #[case] header: &str,
        #[case] body: &str,
        #[case] message: &str,
    ) {
        let error = check_document(header, body.as_bytes()).unwrap_err();
        assert!(error.contains(message), "{error}");
    }

    #[rstest::rstest]
    #[case::docker_list_with_oci_field(
        media::DOCKER_MANIFEST_LIST,
        r#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        media::DOCKER_MANIFEST_LIST
    )]
    #[case::octet_stream_manifest("application/octet-stream", MANIFEST_BODY, media::OCI_MANIFEST)]
    #[case::no_header_index("", INDEX_BODY, media::OCI_INDEX)]
    #[case::schema_version_not_a_number(
        media::OCI_MANIFEST,
        r#"{"schemaVersion":"1"}"#,
        media::OCI_MANIFEST
    )]
    fn documents_that_agree_with_their_type(
        #[case] header: &str,
        #[case] body: &str,
        #[case] media_type: &str,
    ) {
        assert_eq!(check_document(header, body.as_bytes()).unwrap(), media_type);
    }

    #[test]
    fn docker_content_digest_headers() {
        let good = fake::sha256(b"x");
        assert_eq!(
            header_digest(&HeaderValue::from_str(&good).unwrap()).unwrap(),
            good
        );
        for (value, reason) in [
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                "unsupported digest algorithm \"md5\"",
            ),
            ("sha256:abcd", "at least 32 hexadecimal characters"),
            (
                &good[..good.len() - 2],
                "sha256 needs 64 hexadecimal characters, found 62",
            ),
            (
                &good.to_uppercase().replace("SHA256", "sha256"),
                "must be lowercase",
            ),
            (
                &good.replace('a', "z"),
                "at least 32 hexadecimal characters",
            ),
        ] {
            let error = header_digest(&HeaderValue::from_str(value).unwrap()).unwrap_err();
            assert!(
                error.contains(&format!(
                    "the Docker-Content-Digest header {value:?} is invalid: "
                )) && error.contains(reason),
                "{error}"
            );
        }
        let error = header_digest(&HeaderValue::from_bytes(b"sha256:\xff").unwrap()).unwrap_err();
        assert!(error.contains("not ASCII"), "{error}");
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
