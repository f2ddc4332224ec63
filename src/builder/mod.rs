//! Builds OCI images on disk and pushes them to a registry (tests, quickstart, benchmarks).
//!
//! [`build`] turns an [`ImageSpec`] into a [`BuiltImage`]: each layer is
//! streamed into a tar file in a work directory (compressed and hashed in the
//! same pass, so a 1 GiB layer never sits in memory), then the config and
//! manifest JSON are made with `oci-spec`. [`push`] and [`push_index`] upload
//! the result with the registry v2 API (`push` module).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ctrpull::builder::Error> {
//! use ctrpull::builder::{self, ImageSpec, LayerSource};
//! let workdir = std::path::Path::new("/tmp/images");
//! let spec = ImageSpec {
//!     layers: vec![LayerSource::Random { size: 64 << 20, seed: 1 }],
//!     ..ImageSpec::default()
//! };
//! let image = builder::build(&spec, workdir)?;
//! let registry = url::Url::parse("http://127.0.0.1:5000").unwrap();
//! builder::push(&reqwest::Client::new(), &registry, "bench/random", "latest", &image).await?;
//! # Ok(()) }
//! ```

mod layer;
mod push;
mod spec;

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, ImageConfigurationBuilder, ImageManifestBuilder,
    MediaType, Os, RootFsBuilder,
};
use oci_spec::OciSpecError;
use sha2::{Digest as _, Sha256};

pub use self::push::{push, push_index};
pub use self::spec::{
    busybox_image, Compression, FileContent, FileEntry, ImageSpec, LayerSource, Platform,
    DEFAULT_GZIP_LEVEL, DEFAULT_PATH_ENV,
};

/// Errors of building and pushing images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file could not be read or written.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What we were doing, e.g. "write layer".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// `oci-spec` refused to build a document.
    #[error("cannot build the image {what}")]
    Spec {
        /// Which document: "config", "manifest", "index", "platform".
        what: &'static str,
        /// The failure.
        #[source]
        source: OciSpecError,
    },
    /// A document could not be serialized.
    #[error("cannot serialize the image {what}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The failure.
        #[source]
        source: serde_json::Error,
    },
    /// The registry URL and repository do not make a valid URL.
    #[error("invalid registry URL {url}")]
    Url {
        /// The URL we tried to build.
        url: String,
        /// The failure.
        #[source]
        source: url::ParseError,
    },
    /// A request got no response.
    #[error("{method} {url} failed")]
    Http {
        /// The request method.
        method: reqwest::Method,
        /// The request URL.
        url: String,
        /// The failure.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with a status the upload protocol does not allow there.
    #[error("{method} {url}: unexpected status {status}: {body}")]
    Status {
        /// The request method.
        method: reqwest::Method,
        /// The request URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the response body.
        body: String,
    },
    /// An upload was started but the registry sent no usable `Location`.
    #[error("POST {url}: the registry sent no usable Location header ({location:?})")]
    Location {
        /// The upload-start URL.
        url: String,
        /// The header value, if there was one.
        location: Option<String>,
    },
    /// The registry stored something else than what we sent.
    #[error("{url}: the registry reports digest {actual}, we sent {expected}")]
    DigestMismatch {
        /// The request URL.
        url: String,
        /// Our digest.
        expected: String,
        /// The registry's `Docker-Content-Digest`.
        actual: String,
    },
}

impl Error {
    /// Whether trying again may succeed: no response, a server error, or
    /// rate limiting.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Http { source, .. } => {
                source.is_connect() || source.is_timeout() || source.is_request()
            }
            Self::Status { status, .. } => {
                status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// A built image: JSON documents in memory, layers as files.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The platform it was built for.
    pub platform: Platform,
    /// The manifest JSON, exactly as pushed.
    pub manifest: Bytes,
    /// Descriptor of [`manifest`](Self::manifest) (no platform).
    pub manifest_descriptor: Descriptor,
    /// The config JSON, exactly as pushed.
    pub config: Bytes,
    /// Descriptor of [`config`](Self::config).
    pub config_descriptor: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<BuiltLayer>,
}

/// One layer blob of a [`BuiltImage`].
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    /// The blob file, `sha256-<hex>.tar[.gz]` in the work directory.
    pub path: PathBuf,
    /// Media type, digest and size of the blob (compressed).
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar, as listed in the config's `rootfs`.
    pub diff_id: Digest,
}

/// Builds `spec`, writing layer blobs into `workdir` (created if missing).
///
/// Blocking and CPU-heavy for big layers: from async code, call it through
/// `tokio::task::spawn_blocking`. The caller owns `workdir` and the files in
/// it, which the returned image refers to.
pub fn build(spec: &ImageSpec, workdir: &Path) -> Result<BuiltImage, Error> {
    fs::create_dir_all(workdir).map_err(|source| Error::Io {
        action: "create",
        path: workdir.to_path_buf(),
        source,
    })?;
    let layers = spec
        .layers
        .iter()
        .map(|source| {
            let written = layer::write(source, spec.compression, workdir)?;
            Ok(BuiltLayer {
                descriptor: Descriptor::new(written.media_type, written.size, written.digest),
                path: written.path,
                diff_id: written.diff_id,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;

    let config = image_config(spec, &layers)?;
    let config_descriptor = Descriptor::new(
        MediaType::ImageConfig,
        config.len() as u64,
        digest_of(&config),
    );

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_descriptor.clone())
        .layers(
            layers
                .iter()
                .map(|layer| layer.descriptor.clone())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(|source| Error::Spec {
            what: "manifest",
            source,
        })?;
    let manifest = to_json("manifest", &manifest)?;
    let manifest_descriptor = Descriptor::new(
        MediaType::ImageManifest,
        manifest.len() as u64,
        digest_of(&manifest),
    );

    Ok(BuiltImage {
        platform: spec.platform.clone(),
        manifest,
        manifest_descriptor,
        config,
        config_descriptor,
        layers,
    })
}

fn image_config(spec: &ImageSpec, layers: &[BuiltLayer]) -> Result<Bytes, Error> {
    let spec_error = |source| Error::Spec {
        what: "config",
        source,
    };
    let mut runtime = ConfigBuilder::default();
    if !spec.env.is_empty() {
        runtime = runtime.env(spec.env.clone());
    }
    if !spec.entrypoint.is_empty() {
        runtime = runtime.entrypoint(spec.entrypoint.clone());
    }
    if !spec.cmd.is_empty() {
        runtime = runtime.cmd(spec.cmd.clone());
    }
    if let Some(dir) = &spec.working_dir {
        runtime = runtime.working_dir(dir.clone());
    }
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(
            layers
                .iter()
                .map(|layer| layer.diff_id.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(spec_error)?;
    // No `created` time: the same spec must always give the same digest.
    let mut config = ImageConfigurationBuilder::default()
        .os(Os::from(spec.platform.os.as_str()))
        .architecture(Arch::from(spec.platform.architecture.as_str()))
        .config(runtime.build().map_err(spec_error)?)
        .rootfs(rootfs);
    if !spec.platform.variant.is_empty() {
        config = config.variant(spec.platform.variant.clone());
    }
    to_json("config", &config.build().map_err(spec_error)?)
}

fn to_json(what: &'static str, value: &impl serde::Serialize) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| Error::Json { what, source })
}

fn digest_of(data: &[u8]) -> Digest {
    layer::sha256_digest(&Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;
    use oci_spec::image::{ImageConfiguration, ImageManifest};

    use super::*;

    fn sha256_of(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    /// Reads a built layer back: (compressed bytes, uncompressed tar).
    fn read_layer(layer: &BuiltLayer) -> (Vec<u8>, Vec<u8>) {
        let blob = fs::read(&layer.path).unwrap();
        let tar = match layer.descriptor.media_type() {
            MediaType::ImageLayerGzip => {
                let mut tar = Vec::new();
                GzDecoder::new(&blob[..]).read_to_end(&mut tar).unwrap();
                tar
            }
            MediaType::ImageLayer => blob.clone(),
            other => panic!("unexpected layer media type {other}"),
        };
        (blob, tar)
    }

    fn files_spec(compression: Compression) -> ImageSpec {
        ImageSpec {
            layers: vec![LayerSource::Files(vec![
                FileEntry::dir("/etc", 0o755),
                FileEntry::file("/etc/hello.txt", "hello, world\n", 0o644),
                FileEntry::symlink("etc/greeting", "hello.txt"),
            ])],
            platform: Platform::new("linux", "arm64", "v8"),
            env: vec![DEFAULT_PATH_ENV.to_owned()],
            cmd: vec!["/bin/sh".to_owned()],
            compression,
            ..ImageSpec::default()
        }
    }

    #[test]
    fn layer_digests_match_the_blob_and_diff_id_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let image = build(&files_spec(Compression::default()), dir.path()).unwrap();
        let layer = &image.layers[0];
        let (blob, tar) = read_layer(layer);

        assert_eq!(layer.descriptor.media_type(), &MediaType::ImageLayerGzip);
        assert_eq!(layer.descriptor.size(), blob.len() as u64);
        assert_eq!(layer.descriptor.digest().to_string(), sha256_of(&blob));
        assert_eq!(layer.diff_id.to_string(), sha256_of(&tar));
        assert_ne!(layer.diff_id, *layer.descriptor.digest());
        assert_eq!(
            layer.path.file_name().unwrap().to_str().unwrap(),
            format!("sha256-{}.tar.gz", layer.descriptor.digest().digest())
        );

        let mut archive = tar::Archive::new(&tar[..]);
        type Entry = (String, u32, tar::EntryType, Vec<u8>, Option<String>);
        let entries: Vec<Entry> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                let link = entry
                    .link_name()
                    .unwrap()
                    .map(|link| link.to_string_lossy().into_owned());
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.mode().unwrap(),
                    header.entry_type(),
                    data,
                    link,
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("etc".into(), 0o755, tar::EntryType::Directory, vec![], None),
                (
                    "etc/hello.txt".into(),
                    0o644,
                    tar::EntryType::Regular,
                    b"hello, world\n".to_vec(),
                    None
                ),
                (
                    "etc/greeting".into(),
                    0o777,
                    tar::EntryType::Symlink,
                    vec![],
                    Some("hello.txt".into())
                ),
            ]
        );
    }

    #[test]
    fn config_and_manifest_describe_the_layers() {
        let dir = tempfile::tempdir().unwrap();
        let image = build(&files_spec(Compression::default()), dir.path()).unwrap();

        assert_eq!(
            image.config_descriptor.digest().to_string(),
            sha256_of(&image.config)
        );
        assert_eq!(image.config_descriptor.size(), image.config.len() as u64);
        assert_eq!(
            image.manifest_descriptor.digest().to_string(),
            sha256_of(&image.manifest)
        );

        let config = ImageConfiguration::from_reader(&image.config[..]).unwrap();
        assert_eq!(config.os(), &Os::Linux);
        assert_eq!(config.architecture(), &Arch::ARM64);
        assert_eq!(config.variant().as_deref(), Some("v8"));
        assert_eq!(
            config.rootfs().diff_ids(),
            &vec![image.layers[0].diff_id.to_string()]
        );
        let runtime = config.config().as_ref().unwrap();
        assert_eq!(runtime.cmd().as_deref(), Some(&["/bin/sh".to_owned()][..]));
        assert_eq!(runtime.entrypoint(), &None);

        let manifest = ImageManifest::from_reader(&image.manifest[..]).unwrap();
        assert_eq!(manifest.schema_version(), 2);
        assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
        assert_eq!(manifest.config(), &image.config_descriptor);
        assert_eq!(manifest.layers(), &vec![image.layers[0].descriptor.clone()]);
    }

    #[test]
    fn uncompressed_layers_have_digest_equal_to_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let image = build(&files_spec(Compression::Uncompressed), dir.path()).unwrap();
        let layer = &image.layers[0];
        let (blob, _) = read_layer(layer);
        assert_eq!(layer.descriptor.media_type(), &MediaType::ImageLayer);
        assert_eq!(*layer.descriptor.digest(), layer.diff_id);
        assert_eq!(layer.diff_id.to_string(), sha256_of(&blob));
    }

    #[test]
    fn random_layers_are_deterministic_per_seed() {
        let spec = |seed| ImageSpec {
            layers: vec![LayerSource::Random {
                size: 300_001,
                seed,
            }],
            platform: Platform::new("linux", "amd64", ""),
            ..ImageSpec::default()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = build(&spec(1), a.path()).unwrap();
        let again = build(&spec(1), b.path()).unwrap();
        let other = build(&spec(2), b.path()).unwrap();

        assert_eq!(first.manifest, again.manifest);
        assert_eq!(first.layers[0].diff_id, again.layers[0].diff_id);
        assert_ne!(first.layers[0].diff_id, other.layers[0].diff_id);
        assert_ne!(
            first.layers[0].descriptor.digest(),
            other.layers[0].descriptor.digest()
        );

        // One file of exactly `size` bytes, and random data does not compress.
        let (blob, tar) = read_layer(&first.layers[0]);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("random-1.bin"));
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        assert_eq!(data.len(), 300_001);
        drop(entry);
        assert!(entries.next().is_none());
        assert!(blob.len() > 300_000, "{} bytes", blob.len());
    }

    #[test]
    fn missing_host_file_is_reported_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-busybox");
        let err = build(&busybox_image(&missing), &dir.path().join("work")).unwrap_err();
        assert!(
            err.to_string().contains("no-such-busybox"),
            "{err}: {err:?}"
        );
        // The partial layer file is cleaned up.
        let left: Vec<_> = fs::read_dir(dir.path().join("work")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn busybox_image_carries_the_host_binary() {
        let busybox = Path::new("/bin/busybox");
        let dir = tempfile::tempdir().unwrap();
        let image = build(&busybox_image(busybox), dir.path()).unwrap();
        assert_eq!(image.platform, Platform::host());
        let (_, tar) = read_layer(&image.layers[0]);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut found = false;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("bin/busybox") {
                assert_eq!(entry.header().mode().unwrap(), 0o755);
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                assert_eq!(data, fs::read(busybox).unwrap());
                found = true;
            }
        }
        assert!(found, "bin/busybox is not in the layer");
        let config = ImageConfiguration::from_reader(&image.config[..]).unwrap();
        let runtime = config.config().as_ref().unwrap();
        assert_eq!(
            runtime.cmd().as_deref(),
            Some(&["/bin/busybox".to_owned(), "sh".to_owned()][..])
        );
        assert_eq!(
            runtime.env().as_deref(),
            Some(&[DEFAULT_PATH_ENV.to_owned()][..])
        );
    }
}
