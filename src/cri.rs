//! Our wire-compatible subset of the CRI ImageService (runtime.v1), and a small client for it.
//!
//! containerd serves the CRI API on its main socket (unless its `cri` plugin is
//! disabled). We use it to see images the way the kubelet sees them: an image
//! that ctrpull pulled is only useful to Kubernetes if `ImageStatus` finds it.
//! The messages are generated from `proto/runtime/v1/api.proto`, a subset of
//! upstream `k8s.io/cri-api` with identical field numbers. [`verify`] asks it
//! whether a list of images is there, as `ctrpull verify` does.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::transport::Channel;
use tonic::Code;

use self::proto::image_service_client::ImageServiceClient;

pub mod verify;

/// Messages and the client generated from `proto/runtime/v1/api.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

/// Prints credentials as `<redacted>` so that a logged request never leaks them
/// (the derived Debug is turned off for this message in `build.rs`).
impl fmt::Debug for proto::AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redact(secret: &str) -> &'static str {
            if secret.is_empty() {
                ""
            } else {
                "<redacted>"
            }
        }
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("auth", &redact(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &redact(&self.identity_token))
            .field("registry_token", &redact(&self.registry_token))
            .finish()
    }
}

/// A CRI ImageService RPC, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `ListImages`.
    ListImages,
    /// `ImageStatus`.
    ImageStatus,
    /// `PullImage`.
    PullImage,
    /// `RemoveImage`.
    RemoveImage,
    /// `ImageFsInfo`.
    ImageFsInfo,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ListImages => "ListImages",
            Self::ImageStatus => "ImageStatus",
            Self::PullImage => "PullImage",
            Self::RemoveImage => "RemoveImage",
            Self::ImageFsInfo => "ImageFsInfo",
        })
    }
}

/// Errors of the CRI client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing exists at the socket path.
    #[error("CRI socket {} does not exist (is containerd running, and is this its address?)", .path.display())]
    SocketMissing {
        /// The socket path we were given.
        path: PathBuf,
    },
    /// The socket exists but connecting to it failed.
    #[error("cannot connect to the CRI socket {}", .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The transport failure.
        #[source]
        source: tonic::transport::Error,
    },
    /// The daemon answered that it has no `runtime.v1.ImageService`: for
    /// containerd, its `cri` plugin is disabled or failed to load.
    #[error(
        "CRI {operation} is not served at {} (is containerd's cri plugin disabled?): {}",
        .path.display(), .status.message()
    )]
    Unimplemented {
        /// The socket path.
        path: PathBuf,
        /// The RPC that was refused.
        operation: Operation,
        /// The daemon's answer.
        #[source]
        status: tonic::Status,
    },
    /// An RPC failed.
    #[error("CRI {operation}{} failed: {}: {}", image_suffix(.image), .status.code(), .status.message())]
    Rpc {
        /// The RPC.
        operation: Operation,
        /// The image it was about, if any.
        image: Option<String>,
        /// The daemon's answer.
        #[source]
        status: tonic::Status,
    },
}

fn image_suffix(image: &Option<String>) -> String {
    image
        .as_deref()
        .map(|image| format!(" of {image}"))
        .unwrap_or_default()
}

impl Error {
    /// Whether trying again later may succeed: the daemon was unreachable or
    /// overloaded, or the call was cut short.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } => true,
            Self::Rpc { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::DeadlineExceeded
            ),
            Self::SocketMissing { .. } | Self::Unimplemented { .. } => false,
        }
    }

    /// Whether the daemon said the image (or another named object) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Rpc { status, .. } if status.code() == Code::NotFound)
    }

    /// The gRPC status the daemon answered with, if it answered.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Rpc { status, .. } | Self::Unimplemented { status, .. } => Some(status),
            Self::SocketMissing { .. } | Self::Connect { .. } => None,
        }
    }
}

/// A client for the CRI ImageService of a runtime (containerd's socket).
///
/// Unlike containerd's own API, CRI needs no namespace header: containerd's
/// CRI plugin always works in its `k8s.io` namespace.
#[derive(Debug, Clone)]
pub struct ImageService {
    client: ImageServiceClient<Channel>,
    path: PathBuf,
}

impl ImageService {
    /// Connects to the CRI socket at `address` (for containerd, its main
    /// socket, e.g. `/run/containerd/containerd.sock`).
    pub async fn connect(address: &Path) -> Result<Self, Error> {
        // Checked first because tonic's error for a missing unix socket is a
        // bare "transport error" that does not say which path it tried.
        if tokio::fs::symlink_metadata(address).await.is_err() {
            return Err(Error::SocketMissing {
                path: address.to_path_buf(),
            });
        }
        let channel = containerd_client::connect(address)
            .await
            .map_err(|source| Error::Connect {
                path: address.to_path_buf(),
                source,
            })?;
        Ok(Self {
            client: ImageServiceClient::new(channel),
            path: address.to_path_buf(),
        })
    }

    /// The socket path this client talks to.
    pub fn address(&self) -> &Path {
        &self.path
    }

    /// The runtime's view of `image` (a reference or image ID), or `None` if
    /// it does not have it.
    pub async fn image_status(&mut self, image: &str) -> Result<Option<proto::Image>, Error> {
        let request = proto::ImageStatusRequest {
            image: Some(spec(image)),
            verbose: false,
        };
        let response = self
            .client
            .image_status(request)
            .await
            .map_err(|status| self.error(Operation::ImageStatus, Some(image), status))?;
        Ok(response.into_inner().image)
    }

    /// All images the runtime knows.
    pub async fn list_images(&mut self) -> Result<Vec<proto::Image>, Error> {
        let response = self
            .client
            .list_images(proto::ListImagesRequest { filter: None })
            .await
            .map_err(|status| self.error(Operation::ListImages, None, status))?;
        Ok(response.into_inner().images)
    }

    /// Has the runtime pull `image` itself, without credentials; returns the
    /// image reference it reports (containerd: the config digest, the image ID).
    pub async fn pull_image(&mut self, image: &str) -> Result<String, Error> {
        let request = proto::PullImageRequest {
            image: Some(spec(image)),
            auth: None,
        };
        let response = self
            .client
            .pull_image(request)
            .await
            .map_err(|status| self.error(Operation::PullImage, Some(image), status))?;
        Ok(response.into_inner().image_ref)
    }

    /// Removes `image`; removing an image that is not there succeeds.
    pub async fn remove_image(&mut self, image: &str) -> Result<(), Error> {
        let request = proto::RemoveImageRequest {
            image: Some(spec(image)),
        };
        self.client
            .remove_image(request)
            .await
            .map_err(|status| self.error(Operation::RemoveImage, Some(image), status))?;
        Ok(())
    }

    /// Usage of the filesystems that hold images.
    pub async fn image_fs_info(&mut self) -> Result<proto::ImageFsInfoResponse, Error> {
        let response = self
            .client
            .image_fs_info(proto::ImageFsInfoRequest {})
            .await
            .map_err(|status| self.error(Operation::ImageFsInfo, None, status))?;
        Ok(response.into_inner())
    }

    fn error(&self, operation: Operation, image: Option<&str>, status: tonic::Status) -> Error {
        if status.code() == Code::Unimplemented {
            return Error::Unimplemented {
                path: self.path.clone(),
                operation,
                status,
            };
        }
        Error::Rpc {
            operation,
            image: image.map(str::to_owned),
            status,
        }
    }
}

fn spec(image: &str) -> proto::ImageSpec {
    proto::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Field numbers and wire types are what make us compatible with upstream
    /// cri-api, so pin the encoded bytes (tag = number << 3 | wire type).
    #[test]
    fn image_spec_uses_upstream_field_numbers() {
        let spec = proto::ImageSpec {
            image: "a".into(),
            annotations: [("k".to_owned(), "v".to_owned())].into(),
            user_specified_image: "b".into(),
            runtime_handler: "c".into(),
            image_ref: "d".into(),
        };
        let bytes = spec.encode_to_vec();
        #[rustfmt::skip]
        let expected = [
            0x0a, 1, b'a',                                  // 1: image
            0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v',          // 2: annotations entry
            0x92, 0x01, 1, b'b',                            // 18: user_specified_image
            0x9a, 0x01, 1, b'c',                            // 19: runtime_handler
            0xa2, 0x01, 1, b'd',                            // 20: image_ref
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn image_uses_upstream_field_numbers() {
        let image = proto::Image {
            id: "i".into(),
            repo_tags: vec!["t".into()],
            repo_digests: vec!["d".into()],
            size: 5,
            uid: Some(proto::Int64Value { value: 7 }),
            username: "u".into(),
            spec: None,
            pinned: true,
        };
        #[rustfmt::skip]
        let expected = [
            0x0a, 1, b'i',       // 1: id
            0x12, 1, b't',       // 2: repo_tags
            0x1a, 1, b'd',       // 3: repo_digests
            0x20, 5,             // 4: size (varint)
            0x2a, 2, 0x08, 7,    // 5: uid { 1: value }
            0x32, 1, b'u',       // 6: username
            0x40, 1,             // 8: pinned
        ];
        assert_eq!(image.encode_to_vec(), expected);
    }

    /// Upstream's field 3 (`sandbox_config`) is not in our subset; a request
    /// carrying it must still decode, with the known fields intact.
    #[test]
    fn pull_request_skips_unknown_sandbox_config() {
        let mut bytes = proto::PullImageRequest {
            image: Some(spec("docker.io/library/busybox:latest")),
            auth: Some(proto::AuthConfig {
                username: "me".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        // 3: sandbox_config { 2: hostname = "h" }
        bytes.extend_from_slice(&[0x1a, 3, 0x12, 1, b'h']);
        let decoded = proto::PullImageRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            decoded.image.unwrap().image,
            "docker.io/library/busybox:latest"
        );
        assert_eq!(decoded.auth.unwrap().username, "me");
    }

    #[test]
    fn auth_config_debug_redacts_secrets() {
        let auth = proto::AuthConfig {
            username: "me".into(),
            password: "hunter2".into(),
            auth: "bWU6aHVudGVyMg==".into(),
            server_address: "registry.example".into(),
            identity_token: String::new(),
            registry_token: "tok".into(),
        };
        let printed = format!("{auth:?}");
        assert!(printed.contains("me") && printed.contains("registry.example"));
        for secret in ["hunter2", "bWU6aHVudGVyMg==", "tok\""] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("<redacted>"));
    }

    #[tokio::test]
    async fn connect_to_missing_socket_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let err = ImageService::connect(&path).await.unwrap_err();
        assert!(matches!(err, Error::SocketMissing { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn rpc_errors_are_classified_by_code() {
        let rpc = |code, image: Option<&str>| Error::Rpc {
            operation: Operation::PullImage,
            image: image.map(str::to_owned),
            status: tonic::Status::new(code, "boom"),
        };
        assert!(rpc(Code::NotFound, Some("x")).is_not_found());
        assert!(!rpc(Code::NotFound, None).is_retryable());
        assert!(rpc(Code::Unavailable, None).is_retryable());
        assert_eq!(
            rpc(Code::Internal, Some("busybox:1")).to_string(),
            "CRI PullImage of busybox:1 failed: Internal error: boom"
        );
        assert_eq!(
            rpc(Code::Internal, None).to_string(),
            "CRI PullImage failed: Internal error: boom"
        );
    }
}
