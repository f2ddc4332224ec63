//! Media types of manifests, indexes, configs and layers that ctrpull understands.

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (schema 2).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 manifests: never supported.
pub const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The `Accept` header of manifest requests, in containerd's order.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, */*";

/// What a manifest-like document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An index / manifest list: one manifest per platform.
    Index,
    /// A single-platform image manifest.
    Manifest,
}

/// Classifies a manifest media type; `None` for anything ctrpull cannot pull.
pub fn kind(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    }
}

/// True for layer media types containerd's differ can apply (tar, gzip, zstd; OCI
/// and Docker spellings, including non-distributable variants).
pub fn is_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind(OCI_INDEX), Some(Kind::Index));
        assert_eq!(kind(DOCKER_MANIFEST_LIST), Some(Kind::Index));
        assert_eq!(kind(OCI_MANIFEST), Some(Kind::Manifest));
        assert_eq!(kind(DOCKER_MANIFEST), Some(Kind::Manifest));
        assert_eq!(kind(DOCKER_SCHEMA1[1]), None);
        assert_eq!(kind("application/json"), None);
        assert!(is_layer("application/vnd.oci.image.layer.v1.tar+gzip"));
        assert!(is_layer(
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ));
        assert!(!is_layer("application/vnd.oci.image.config.v1+json"));
    }
}
