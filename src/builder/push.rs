//! Pushes built images with the registry v2 upload API (HEAD, POST, PUT blob; PUT manifest).

use bytes::{Bytes, BytesMut};
use futures::stream;
use oci_spec::image::{Descriptor, ImageIndexBuilder, MediaType};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Client, Method, Response, StatusCode};
use tokio::io::AsyncReadExt;
use url::Url;

use super::{digest_of, to_json, BuiltImage, Error};

/// Read size when streaming a layer file into an upload.
const UPLOAD_CHUNK: usize = 1 << 20;

/// How much of an error response body goes into [`Error::Status`].
const BODY_SNIPPET: usize = 512;

/// Pushes `image` (layers, config, then the manifest under `tag`) to
/// `repository` on `registry` (a base URL such as `http://127.0.0.1:5000`).
/// Blobs the registry already has are skipped. Returns the descriptor of the
/// manifest the tag now points at.
pub async fn push(
    client: &Client,
    registry: &Url,
    repository: &str,
    tag: &str,
    image: &BuiltImage,
) -> Result<Descriptor, Error> {
    let registry = Registry::new(client, registry, repository);
    registry.push_image(image, tag).await?;
    Ok(image.manifest_descriptor.clone())
}

/// Pushes each of `images` by digest, then an OCI image index listing them
/// with their platforms under `tag`. Returns the index's descriptor.
pub async fn push_index(
    client: &Client,
    registry: &Url,
    repository: &str,
    tag: &str,
    images: &[BuiltImage],
) -> Result<Descriptor, Error> {
    let registry = Registry::new(client, registry, repository);
    let mut manifests = Vec::with_capacity(images.len());
    for image in images {
        let digest = image.manifest_descriptor.digest().to_string();
        registry.push_image(image, &digest).await?;
        let mut descriptor = image.manifest_descriptor.clone();
        descriptor.set_platform(Some(super::spec::to_oci(&image.platform)?));
        manifests.push(descriptor);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|source| Error::Spec {
            what: "index",
            source,
        })?;
    let index = to_json("index", &index)?;
    let descriptor = Descriptor::new(MediaType::ImageIndex, index.len() as u64, digest_of(&index));
    registry.put_manifest(tag, &descriptor, index).await?;
    Ok(descriptor)
}

/// One repository on one registry.
struct Registry<'a> {
    client: &'a Client,
    /// `<registry>/v2/<repository>`, without a trailing slash.
    base: String,
}

/// Where an upload's bytes come from.
enum Blob<'a> {
    Memory(&'a Bytes),
    File(&'a std::path::Path),
}

impl<'a> Registry<'a> {
    fn new(client: &'a Client, registry: &Url, repository: &str) -> Self {
        // Built as a string rather than with `Url::join`, which would drop the
        // last path segment of a registry URL that has a path but no trailing slash.
        let base = format!(
            "{}/v2/{}",
            registry.as_str().trim_end_matches('/'),
            repository.trim_matches('/')
        );
        Self { client, base }
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        let url = format!("{}/{path}", self.base);
        Url::parse(&url).map_err(|source| Error::Url { url, source })
    }

    async fn push_image(&self, image: &BuiltImage, reference: &str) -> Result<(), Error> {
        for layer in &image.layers {
            self.push_blob(&layer.descriptor, Blob::File(&layer.path))
                .await?;
        }
        self.push_blob(&image.config_descriptor, Blob::Memory(&image.config))
            .await?;
        self.put_manifest(
            reference,
            &image.manifest_descriptor,
            image.manifest.clone(),
        )
        .await
    }

    /// Uploads one blob unless the registry already has it.
    async fn push_blob(&self, descriptor: &Descriptor, blob: Blob<'_>) -> Result<(), Error> {
        let digest = descriptor.digest().to_string();
        let url = self.url(&format!("blobs/{digest}"))?;
        let response = self.send(Method::HEAD, url.clone(), |r| r).await?;
        match response.status() {
            StatusCode::OK => return Ok(()),
            StatusCode::NOT_FOUND => {}
            _ => return Err(status_error(Method::HEAD, url, response).await),
        }

        // Monolithic upload: POST opens a session, PUT sends all bytes and closes it.
        let start = self.url("blobs/uploads/")?;
        let response = self
            .send(Method::POST, start.clone(), |r| r.header(CONTENT_LENGTH, 0))
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(status_error(Method::POST, start, response).await);
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // The spec allows a relative Location; resolving against the request
        // URL handles both forms.
        let mut upload = match location.as_deref().map(|location| start.join(location)) {
            Some(Ok(upload)) => upload,
            _ => {
                return Err(Error::Location {
                    url: start.into(),
                    location,
                })
            }
        };
        // Appended, not set: the Location usually carries the session state
        // in its query already.
        upload.query_pairs_mut().append_pair("digest", &digest);

        let size = descriptor.size();
        let body = match blob {
            Blob::Memory(bytes) => reqwest::Body::from(bytes.clone()),
            Blob::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|source| Error::Io {
                        action: "open layer",
                        path: path.to_path_buf(),
                        source,
                    })?;
                file_body(file)
            }
        };
        let response = self
            .send(Method::PUT, upload.clone(), |r| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(body)
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error(Method::PUT, upload, response).await);
        }
        check_digest(&upload, &response, &digest)
    }

    /// PUTs a manifest or index under `reference` (a tag or its digest).
    async fn put_manifest(
        &self,
        reference: &str,
        descriptor: &Descriptor,
        body: Bytes,
    ) -> Result<(), Error> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let media_type = descriptor.media_type().to_string();
        let response = self
            .send(Method::PUT, url.clone(), |r| {
                r.header(CONTENT_TYPE, media_type).body(body)
            })
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error(Method::PUT, url, response).await);
        }
        check_digest(&url, &response, descriptor.digest().as_ref())
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Response, Error> {
        build(self.client.request(method.clone(), url.clone()))
            .send()
            .await
            .map_err(|source| Error::Http {
                method,
                url: url.into(),
                source,
            })
    }
}

/// Streams `file` as a request body in [`UPLOAD_CHUNK`] pieces, so that a
/// big layer is never held in memory.
fn file_body(file: tokio::fs::File) -> reqwest::Body {
    let chunks = stream::try_unfold(file, |mut file| async move {
        let mut chunk = BytesMut::with_capacity(UPLOAD_CHUNK);
        while chunk.len() < UPLOAD_CHUNK {
            if file.read_buf(&mut chunk).await? == 0 {
                break;
            }
        }
        if chunk.is_empty() {
            Ok::<_, std::io::Error>(None)
        } else {
            Ok(Some((chunk.freeze(), file)))
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

/// Checks the registry's `Docker-Content-Digest`, when it sends one.
fn check_digest(url: &Url, response: &Response, expected: &str) -> Result<(), Error> {
    let actual = response
        .headers()
        .get("docker-content-digest")
        .and_then(|value| value.to_str().ok());
    match actual {
        Some(actual) if actual != expected => Err(Error::DigestMismatch {
            url: url.to_string(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        }),
        _ => Ok(()),
    }
}

async fn status_error(method: Method, url: Url, response: Response) -> Error {
    let status = response.status();
    let mut body = response.text().await.unwrap_or_default();
    if body.len() > BODY_SNIPPET {
        let mut end = BODY_SNIPPET;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
        body.push('…');
    }
    Error::Status {
        method,
        url: url.into(),
        status,
        body: body.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use oci_spec::image::{ImageIndex, ImageManifest};
    use reqwest::header::HeaderMap;
    use sha2::{Digest as _, Sha256};

    use super::super::{build, busybox_image, ImageSpec, LayerSource, Platform};
    use super::*;

    /// A `docker-registry` on a free loopback port with storage in a temp
    /// directory; killed (by PID) when dropped, so a failing test does not
    /// leave it running.
    struct TestRegistry {
        child: Child,
        url: Url,
        dir: tempfile::TempDir,
    }

    impl TestRegistry {
        async fn start(client: &Client) -> Self {
            let dir = tempfile::tempdir().unwrap();
            // Port 0 lets the kernel pick a free port; released just before the
            // registry binds it, which is racy only against other binders.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start /usr/bin/docker-registry (apt-get install docker-registry)");
            let registry = Self {
                child,
                url: Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
                dir,
            };
            let ping = registry.url.join("/v2/").unwrap();
            for _ in 0..200 {
                if let Ok(response) = client.get(ping.clone()).send().await {
                    if response.status() == StatusCode::OK {
                        return registry;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "docker-registry did not answer on {ping} within 10 s; log:\n{}",
                std::fs::read_to_string(registry.dir.path().join("registry.log")).unwrap()
            );
        }

        /// GETs `path`, asserting 200; returns the headers and body.
        async fn get(&self, client: &Client, path: &str, accept: &str) -> (HeaderMap, Bytes) {
            let url = self.url.join(path).unwrap();
            let response = client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, accept)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "GET {url}");
            let headers = response.headers().clone();
            (headers, response.bytes().await.unwrap())
        }
    }

    impl Drop for TestRegistry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn loopback_client() -> Client {
        // No proxy: the registry is on loopback, whatever the environment says.
        Client::builder().no_proxy().build().unwrap()
    }

    fn sha256(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    /// Fetches a manifest by `reference` and checks it is byte for byte what
    /// we built, with the registry agreeing on its digest and media type.
    async fn assert_manifest(
        registry: &TestRegistry,
        client: &Client,
        repository: &str,
        reference: &str,
        descriptor: &Descriptor,
        expected: &[u8],
    ) {
        let media_type = descriptor.media_type().to_string();
        let (headers, body) = registry
            .get(
                client,
                &format!("/v2/{repository}/manifests/{reference}"),
                &media_type,
            )
            .await;
        assert_eq!(body, expected);
        assert_eq!(sha256(&body), descriptor.digest().to_string());
        assert_eq!(body.len() as u64, descriptor.size());
        assert_eq!(headers[CONTENT_TYPE].to_str().unwrap(), media_type);
        assert_eq!(
            headers["docker-content-digest"].to_str().unwrap(),
            descriptor.digest().to_string()
        );
    }

    /// Fetches every blob of `image` and checks digest and size.
    async fn assert_blobs(
        registry: &TestRegistry,
        client: &Client,
        repository: &str,
        image: &BuiltImage,
    ) {
        let manifest = ImageManifest::from_reader(&image.manifest[..]).unwrap();
        let mut descriptors = vec![manifest.config().clone()];
        descriptors.extend(manifest.layers().iter().cloned());
        for descriptor in descriptors {
            let (_, body) = registry
                .get(
                    client,
                    &format!("/v2/{repository}/blobs/{}", descriptor.digest()),
                    "*/*",
                )
                .await;
            assert_eq!(sha256(&body), descriptor.digest().to_string());
            assert_eq!(body.len() as u64, descriptor.size());
        }
    }

    #[tokio::test]
    async fn pushes_images_and_an_index_to_a_real_registry() {
        let client = loopback_client();
        let registry = TestRegistry::start(&client).await;
        let work = tempfile::tempdir().unwrap();

        // A runnable busybox image.
        let busybox = build(&busybox_image(Path::new("/bin/busybox")), work.path()).unwrap();
        let pushed = push(&client, &registry.url, "test/busybox", "latest", &busybox)
            .await
            .unwrap();
        assert_eq!(pushed, busybox.manifest_descriptor);
        assert_manifest(
            &registry,
            &client,
            "test/busybox",
            "latest",
            &pushed,
            &busybox.manifest,
        )
        .await;
        assert_blobs(&registry, &client, "test/busybox", &busybox).await;

        // Two random layers; pushing again finds every blob already there.
        let random = build(
            &ImageSpec {
                layers: vec![
                    LayerSource::Random {
                        size: 3 << 20,
                        seed: 1,
                    },
                    LayerSource::Random {
                        size: (1 << 20) + 17,
                        seed: 2,
                    },
                ],
                ..ImageSpec::default()
            },
            work.path(),
        )
        .unwrap();
        for _ in 0..2 {
            let pushed = push(&client, &registry.url, "test/random", "v1", &random)
                .await
                .unwrap();
            assert_manifest(
                &registry,
                &client,
                "test/random",
                "v1",
                &pushed,
                &random.manifest,
            )
            .await;
        }
        assert_eq!(random.layers.len(), 2);
        assert_blobs(&registry, &client, "test/random", &random).await;

        // A two-platform index over two busybox-layer images.
        let images: Vec<BuiltImage> = [
            Platform::new("linux", "amd64", ""),
            Platform::new("linux", "arm64", "v8"),
        ]
        .into_iter()
        .map(|platform| {
            let spec = ImageSpec {
                platform,
                ..busybox_image(Path::new("/bin/busybox"))
            };
            build(&spec, work.path()).unwrap()
        })
        .collect();
        let index_descriptor = push_index(&client, &registry.url, "test/multi", "latest", &images)
            .await
            .unwrap();
        assert_eq!(index_descriptor.media_type(), &MediaType::ImageIndex);
        let (headers, body) = registry
            .get(
                &client,
                "/v2/test/multi/manifests/latest",
                "application/vnd.oci.image.index.v1+json",
            )
            .await;
        assert_eq!(sha256(&body), index_descriptor.digest().to_string());
        assert_eq!(body.len() as u64, index_descriptor.size());
        assert_eq!(
            headers[CONTENT_TYPE].to_str().unwrap(),
            "application/vnd.oci.image.index.v1+json"
        );
        let index = ImageIndex::from_reader(&body[..]).unwrap();
        assert_eq!(index.manifests().len(), 2);
        for (entry, image) in index.manifests().iter().zip(&images) {
            assert_eq!(entry.digest(), image.manifest_descriptor.digest());
            assert_eq!(entry.size(), image.manifest_descriptor.size());
            assert_eq!(entry.media_type(), &MediaType::ImageManifest);
            let platform = entry.platform().as_ref().unwrap();
            assert_eq!(
                platform.architecture().to_string(),
                image.platform.architecture
            );
            assert_eq!(platform.os().to_string(), image.platform.os);
            assert_eq!(
                platform.variant().clone().unwrap_or_default(),
                image.platform.variant
            );
            assert_manifest(
                &registry,
                &client,
                "test/multi",
                entry.digest().as_ref(),
                &image.manifest_descriptor,
                &image.manifest,
            )
            .await;
            assert_blobs(&registry, &client, "test/multi", image).await;
        }
    }

    #[tokio::test]
    async fn registry_errors_carry_url_status_and_body() {
        let client = loopback_client();
        let registry = TestRegistry::start(&client).await;
        let work = tempfile::tempdir().unwrap();
        let image = build(
            &ImageSpec {
                layers: vec![LayerSource::Random { size: 10, seed: 3 }],
                ..ImageSpec::default()
            },
            work.path(),
        )
        .unwrap();
        // A manifest whose blobs were never pushed is refused with a 400 and a
        // JSON error body naming the reason.
        let err = Registry::new(&client, &registry.url, "test/orphan")
            .put_manifest("latest", &image.manifest_descriptor, image.manifest.clone())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(
                err,
                Error::Status {
                    status: StatusCode::BAD_REQUEST,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(message.starts_with("PUT http://127.0.0.1:"), "{message}");
        assert!(
            message.contains("/v2/test/orphan/manifests/latest"),
            "{message}"
        );
        assert!(message.contains("MANIFEST_BLOB_UNKNOWN"), "{message}");
        assert!(!err.is_retryable());
    }
}
