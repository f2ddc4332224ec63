//! containerd gRPC client: connection, content store, leases, images and unpack.
//!
//! Every call carries the `containerd-namespace` header and, inside a pull, the
//! `containerd-lease` header, exactly as containerd's own Go client sends them: the
//! lease is what keeps freshly written blobs and snapshots safe from the garbage
//! collector until the image record that references them exists.

pub mod apply;
mod content;
mod images;
mod leases;
mod unpack;
mod writeback;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    introspection_client::IntrospectionClient, leases_client::LeasesClient,
    namespaces_client::NamespacesClient, snapshots::snapshots_client::SnapshotsClient,
    version_client::VersionClient, ListNamespacesRequest, PluginsRequest,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub use content::{ContentStore, ContentWriter, OpenWriter, DEFAULT_LOCK_WAIT, WRITE_CHUNK};
pub use images::{ImageRecord, Images};
pub use leases::Leases;
pub use unpack::{chain_ids, Prepared, Unpacker};
pub use writeback::STEP as WRITEBACK_STEP;

/// The type of containerd's content store plugin, which exports its `root`.
const CONTENT_PLUGIN: &str = "io.containerd.content.v1";

/// How long connecting to the socket may take before we give up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Label containerd puts on every blob: where it was pulled from.
pub const LABEL_DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";
/// Label on a layer blob naming its uncompressed digest (diff ID).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// Prefix of the GC reference labels from a parent blob to its children.
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Prefix of the GC reference label from a config blob to its unpacked snapshot.
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
/// Lease label holding the time after which containerd may collect the lease.
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

/// Errors from talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens at the configured address.
    #[error("no containerd socket at {}: is containerd running, and is --address right?", address.display())]
    NoSocket {
        /// The socket path that was tried.
        address: PathBuf,
    },
    /// The socket exists but the gRPC connection failed.
    #[error("cannot connect to containerd at {}: {source}", address.display())]
    Connect {
        /// The socket path that was tried.
        address: PathBuf,
        /// What the transport said.
        #[source]
        source: tonic::transport::Error,
    },
    /// A containerd call failed.
    #[error("containerd {op} {target}: {}: {}", status.code(), status.message())]
    Rpc {
        /// The call, e.g. `Content.Write`.
        op: &'static str,
        /// What it was about: a digest, a ref, an image name.
        target: String,
        /// The status containerd returned.
        status: tonic::Status,
    },
    /// A write stream ended or answered out of protocol.
    #[error("containerd Content.Write {target}: {reason}")]
    Protocol {
        /// The ingest ref.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// `Diff.Apply` produced a different uncompressed digest than the config's diff ID.
    #[error(
        "layer {layer} unpacked to {got}, but the image config says its diff ID is {expected}"
    )]
    DiffIdMismatch {
        /// The layer blob digest.
        layer: String,
        /// The diff ID from the image config.
        expected: String,
        /// The digest containerd computed while applying.
        got: String,
    },
}

impl Error {
    pub(crate) fn rpc(op: &'static str, target: impl Into<String>, status: tonic::Status) -> Self {
        Error::Rpc {
            op,
            target: target.into(),
            status,
        }
    }

    /// The gRPC status code, when containerd answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The digest the bytes really have, when containerd refused a commit because
    /// they do not hash to the expected digest ("unexpected commit digest D, expected
    /// E", FailedPrecondition): the check that keeps wrong bytes out of the store.
    pub fn wrong_commit_digest(&self) -> Option<&str> {
        let Error::Rpc { status, .. } = self else {
            return None;
        };
        if status.code() != tonic::Code::FailedPrecondition {
            return None;
        }
        let rest = status.message().split("unexpected commit digest ").nth(1)?;
        rest.split([',', ' ']).next().filter(|d| !d.is_empty())
    }

    /// True when the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }

    /// True when the object already exists.
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(tonic::Code::AlreadyExists)
    }

    /// True when trying again later may succeed (ingest locked by another writer,
    /// daemon briefly unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code(),
            Some(tonic::Code::Unavailable | tonic::Code::Aborted)
        )
    }
}

/// HTTP/2 flow-control windows of the gRPC connection. The defaults (64 KiB) make a
/// blob write wait on window updates every few messages; a large window lets the
/// pipelined `Content.Write` stream run at the socket's speed.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

/// A gRPC channel over containerd's unix socket, with large flow-control windows.
async fn connect_channel(address: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = address.to_owned();
    tonic::transport::Endpoint::from_static("http://containerd")
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// The `containerd-namespace` header value for `namespace`.
fn namespace_header(namespace: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, Error> {
    namespace.parse().map_err(|_| Error::Protocol {
        target: namespace.to_string(),
        reason: "namespace is not valid header text".into(),
    })
}

/// A connection to containerd, bound to one namespace and optionally one lease.
///
/// Cheap to clone: the underlying channel is shared.
#[derive(Clone, Debug)]
pub struct Connection {
    channel: Channel,
    address: PathBuf,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    lease: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// containerd's ingest directory, when this process can see it: looked up once
    /// per connection (and its clones), for [`writeback`].
    ingests: Arc<tokio::sync::OnceCell<Option<Arc<Path>>>>,
}

impl Connection {
    /// Connects to the containerd socket at `address` and checks that it answers.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Self, Error> {
        if !address.exists() {
            return Err(Error::NoSocket {
                address: address.to_owned(),
            });
        }
        let namespace = namespace_header(namespace)?;
        let channel = tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, connect_channel(address))
            .await
            .map_err(|_| Error::NoSocket {
                address: address.to_owned(),
            })?
            .map_err(|source| Error::Connect {
                address: address.to_owned(),
                source,
            })?;
        let conn = Connection {
            channel,
            address: address.to_owned(),
            namespace,
            lease: None,
            ingests: Arc::default(),
        };
        conn.version().await?;
        Ok(conn)
    }

    /// The daemon's version string, e.g. `1.7.24~ds1`.
    pub async fn version(&self) -> Result<String, Error> {
        let reply = VersionClient::new(self.channel.clone())
            .version(self.request(()))
            .await
            .map_err(|status| Error::rpc("Version", self.address.display().to_string(), status))?;
        Ok(reply.into_inner().version)
    }

    /// Names of every namespace in the daemon.
    pub async fn namespaces(&self) -> Result<Vec<String>, Error> {
        let reply = NamespacesClient::new(self.channel.clone())
            .list(self.request(ListNamespacesRequest::default()))
            .await
            .map_err(|status| Error::rpc("Namespaces.List", "", status))?;
        Ok(reply
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// The same connection in another namespace (and without a lease).
    pub fn with_namespace(&self, namespace: &str) -> Result<Self, Error> {
        let namespace = namespace_header(namespace)?;
        Ok(Connection {
            namespace,
            lease: None,
            ..self.clone()
        })
    }

    /// The underlying gRPC channel, for services this module does not wrap.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The same connection, with every call made under `lease`.
    pub fn with_lease(&self, lease: &str) -> Result<Self, Error> {
        let value = lease.parse().map_err(|_| Error::Protocol {
            target: lease.to_string(),
            reason: "lease id is not valid header text".into(),
        })?;
        Ok(Connection {
            lease: Some(value),
            ..self.clone()
        })
    }

    /// The lease every call is made under, if any.
    pub fn lease(&self) -> Option<&str> {
        self.lease.as_ref().and_then(|lease| lease.to_str().ok())
    }

    /// The namespace every call is made in.
    pub fn namespace(&self) -> &str {
        self.namespace.to_str().unwrap_or_default()
    }

    /// containerd's ingest directory (`<content root>/ingest`, the root as the
    /// content plugin exports it), if it is a directory this process can see.
    /// Asked of containerd once per connection.
    pub(crate) async fn ingest_dir(&self) -> Option<Arc<Path>> {
        self.ingests
            .get_or_init(|| async {
                let request = self.request(PluginsRequest {
                    filters: vec![format!("type=={CONTENT_PLUGIN}")],
                });
                let plugins = match IntrospectionClient::new(self.channel.clone())
                    .plugins(request)
                    .await
                {
                    Ok(reply) => reply.into_inner().plugins,
                    Err(status) => {
                        tracing::debug!(%status, "cannot ask containerd where its content store is");
                        return None;
                    }
                };
                let root = plugins
                    .iter()
                    .filter(|plugin| plugin.r#type == CONTENT_PLUGIN)
                    .find_map(|plugin| plugin.exports.get("root"))?;
                let ingests = Path::new(root).join("ingest");
                if ingests.is_dir() {
                    Some(Arc::from(ingests))
                } else {
                    tracing::debug!(ingests = %ingests.display(), "containerd's ingest directory is not visible here: ingests are flushed by their commit only");
                    None
                }
            })
            .await
            .clone()
    }

    /// The socket path this connection was made to.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Wraps `message` with the namespace and lease headers.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("containerd-namespace", self.namespace.clone());
        if let Some(lease) = &self.lease {
            metadata.insert("containerd-lease", lease.clone());
        }
        request
    }

    pub(crate) fn content_client(&self) -> ContentClient<Channel> {
        // Blobs are written through `content_write`; what this client reads back
        // (documents) comes in messages containerd may make up to its own limit.
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// Opens a `Content.Write` stream. The generated client cannot be used: it sends
    /// the generated request type, whose payload is a `Vec<u8>`.
    pub(crate) async fn content_write<S>(
        &self,
        request: tonic::Request<S>,
    ) -> Result<
        tonic::Streaming<containerd_client::services::v1::WriteContentResponse>,
        tonic::Status,
    >
    where
        S: futures::Stream<Item = content::WriteRequest> + Send + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("containerd is not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/containerd.services.content.v1.Content/Write",
        );
        let codec = tonic_prost::ProstCodec::default();
        Ok(grpc.streaming(request, path, codec).await?.into_inner())
    }

    pub(crate) fn images_client(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    pub(crate) fn leases_client(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    pub(crate) fn snapshots_client(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    pub(crate) fn diff_client(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_commit_names_the_digest_the_bytes_have() {
        let refused = |code, message: &str| {
            Error::rpc(
                "Content.Write",
                "layer-x",
                tonic::Status::new(code, message),
            )
        };
        let got = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let e = refused(
            tonic::Code::FailedPrecondition,
            &format!("unexpected commit digest {got}, expected sha256:2222: failed precondition"),
        );
        assert_eq!(e.wrong_commit_digest(), Some(got));
        // Another refusal, or the same words under another code, is not a digest verdict.
        let size = refused(
            tonic::Code::FailedPrecondition,
            "unexpected commit size 3, expected 4: failed precondition",
        );
        assert_eq!(size.wrong_commit_digest(), None);
        let other = refused(
            tonic::Code::Unknown,
            &format!("unexpected commit digest {got}"),
        );
        assert_eq!(other.wrong_commit_digest(), None);
        let closed = Error::Protocol {
            target: "layer-x".into(),
            reason: "closed".into(),
        };
        assert_eq!(closed.wrong_commit_digest(), None);
    }
}
