//! Whether the kubelet would find images: CRI `ImageStatus` for each normalised reference.
//!
//! The kubelet decides whether to pull by asking the runtime's CRI ImageService
//! for the image named in the pod spec (`ImageStatus`); containerd answers from
//! the namespace its CRI plugin is configured for (`k8s.io`), whatever namespace
//! a pull wrote to. [`verify`] asks the same question for a list of references,
//! so a pre-pull job or a CI warmer can tell that its work is visible where it
//! matters.

use std::path::{Path, PathBuf};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{proto, Error, ImageService};
use crate::reference::Reference;

/// What CRI reports about an image it holds (the fields of CRI's `Image` a person or
/// a script checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriImage {
    /// The image ID, for containerd the config digest (`sha256:…`).
    pub id: String,
    /// Size in bytes as the runtime counts it (containerd: manifest, config and
    /// compressed layers of the platform it unpacked).
    pub size: u64,
    /// Tagged names of the image (`host/repo:tag`).
    pub repo_tags: Vec<String>,
    /// Digested names of the image (`host/repo@sha256:…`).
    pub repo_digests: Vec<String>,
    /// Whether the runtime keeps the image out of the kubelet's image garbage collection.
    pub pinned: bool,
}

impl From<proto::Image> for CriImage {
    fn from(image: proto::Image) -> Self {
        Self {
            id: image.id,
            size: image.size,
            repo_tags: image.repo_tags,
            repo_digests: image.repo_digests,
            pinned: image.pinned,
        }
    }
}

/// The answer for one reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCheck {
    /// The reference asked about, normalised as CRI normalises it
    /// (`busybox` → `docker.io/library/busybox:latest`).
    pub reference: Reference,
    /// The image CRI holds under that reference, or `None` when the kubelet would
    /// have to pull it.
    pub image: Option<CriImage>,
}

impl ImageCheck {
    /// Whether CRI has the image.
    pub fn is_present(&self) -> bool {
        self.image.is_some()
    }
}

/// One flat JSON object per image: `reference`, `present`, and, when present, `id`,
/// `size`, `repo_tags`, `repo_digests` and `pinned` — easy to filter with `jq`.
impl Serialize for ImageCheck {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = if self.image.is_some() { 7 } else { 2 };
        let mut map = serializer.serialize_map(Some(fields))?;
        map.serialize_entry("reference", &self.reference.to_string())?;
        map.serialize_entry("present", &self.is_present())?;
        if let Some(image) = &self.image {
            map.serialize_entry("id", &image.id)?;
            map.serialize_entry("size", &image.size)?;
            map.serialize_entry("repo_tags", &image.repo_tags)?;
            map.serialize_entry("repo_digests", &image.repo_digests)?;
            map.serialize_entry("pinned", &image.pinned)?;
        }
        map.end()
    }
}

/// The answers for every reference of one [`verify`] call, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// The runtime socket that answered.
    pub address: PathBuf,
    /// True when every image is present.
    pub all_present: bool,
    /// One answer per reference, in the order given.
    pub images: Vec<ImageCheck>,
}

impl Verification {
    /// Collects the answers; `all_present` follows from them.
    pub fn new(address: PathBuf, images: Vec<ImageCheck>) -> Self {
        let all_present = images.iter().all(ImageCheck::is_present);
        Self {
            address,
            all_present,
            images,
        }
    }

    /// The references CRI does not have, in the order given.
    pub fn missing(&self) -> impl Iterator<Item = &Reference> {
        self.images
            .iter()
            .filter(|check| !check.is_present())
            .map(|check| &check.reference)
    }
}

/// Asks `service` for each reference (`ImageStatus` by the normalised name, as the
/// kubelet asks) and collects the answers. An image that is not there is an answer,
/// not an error; an RPC that fails (CRI disabled, daemon gone) is an error naming the
/// image it was about.
pub async fn verify(
    service: &mut ImageService,
    references: &[Reference],
) -> Result<Verification, Error> {
    let mut images = Vec::with_capacity(references.len());
    for reference in references {
        let status = service.image_status(&reference.to_string()).await?;
        images.push(ImageCheck {
            reference: reference.clone(),
            image: status.map(CriImage::from),
        });
    }
    Ok(Verification::new(service.address().to_path_buf(), images))
}

/// Connects to the CRI socket at `address` (containerd's main socket) and runs
/// [`verify`].
pub async fn verify_at(address: &Path, references: &[Reference]) -> Result<Verification, Error> {
    let mut service = ImageService::connect(address).await?;
    verify(&mut service, references).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reference(text: &str) -> Reference {
        Reference::parse(text).unwrap()
    }

    fn image() -> CriImage {
        CriImage::from(proto::Image {
            id: "sha256:aa".into(),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec!["docker.io/library/busybox@sha256:bb".into()],
            size: 2_212_345,
            uid: Some(proto::Int64Value { value: 0 }),
            username: String::new(),
            spec: None,
            pinned: false,
        })
    }

    #[test]
    fn present_image_serialises_flat_with_its_details() {
        let check = ImageCheck {
            reference: reference("busybox"),
            image: Some(image()),
        };
        assert_eq!(
            serde_json::to_value(&check).unwrap(),
            json!({
                "reference": "docker.io/library/busybox:latest",
                "present": true,
                "id": "sha256:aa",
                "size": 2_212_345,
                "repo_tags": ["docker.io/library/busybox:latest"],
                "repo_digests": ["docker.io/library/busybox@sha256:bb"],
                "pinned": false,
            })
        );
    }

    #[test]
    fn missing_image_serialises_as_reference_and_present_false() {
        let check = ImageCheck {
            reference: reference("127.0.0.1:5000/team/app:1.2"),
            image: None,
        };
        assert_eq!(
            serde_json::to_value(&check).unwrap(),
            json!({"reference": "127.0.0.1:5000/team/app:1.2", "present": false})
        );
    }

    #[test]
    fn verification_lists_what_is_missing_in_order() {
        let images = vec![
            ImageCheck {
                reference: reference("a"),
                image: None,
            },
            ImageCheck {
                reference: reference("busybox"),
                image: Some(image()),
            },
            ImageCheck {
                reference: reference("c:1"),
                image: None,
            },
        ];
        let verification = Verification::new("/run/containerd/containerd.sock".into(), images);
        assert!(!verification.all_present);
        let missing: Vec<String> = verification.missing().map(|r| r.to_string()).collect();
        assert_eq!(
            missing,
            ["docker.io/library/a:latest", "docker.io/library/c:1"]
        );
        let value = serde_json::to_value(&verification).unwrap();
        assert_eq!(value["address"], "/run/containerd/containerd.sock");
        assert_eq!(value["all_present"], false);
        assert_eq!(value["images"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn verification_of_present_images_is_all_present() {
        let verification = Verification::new(
            "/s".into(),
            vec![ImageCheck {
                reference: reference("busybox"),
                image: Some(image()),
            }],
        );
        assert!(verification.all_present);
        assert_eq!(verification.missing().count(), 0);
    }

    #[tokio::test]
    async fn verify_at_a_missing_socket_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let err = verify_at(&path, &[reference("busybox")]).await.unwrap_err();
        assert!(matches!(err, Error::SocketMissing { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    /// A gRPC server without the ImageService, as containerd is when its cri plugin
    /// is disabled: every CRI call answers `Unimplemented`.
    #[tokio::test]
    async fn verify_against_a_runtime_without_cri_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-cri.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(incoming),
        );
        let err = verify_at(&path, &[reference("busybox")]).await.unwrap_err();
        server.abort();
        assert!(
            matches!(
                err,
                Error::Unimplemented {
                    operation: super::super::Operation::ImageStatus,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("cri plugin disabled"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}
