//! Resolving a reference: the manifest or index, and the platform's manifest.

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::fetch::Source;
use super::{Error, Platform, Puller};
use crate::reference::{parse_digest, Reference};
use crate::registry::{self, media};

/// Most layers an image may have. The kernel's overlayfs stacks at most 500 lower
/// layers (`OVL_MAX_STACK`), so an image with more could never be mounted by the
/// default snapshotter; a manifest listing more is refused before anything is fetched.
pub const MAX_LAYERS: usize = 500;

/// Largest image config accepted (16 MiB). The config is read into memory whole to
/// check it; real ones weigh a few KiB to a few hundred KiB.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Largest layer accepted (1 TiB): far beyond any real layer, and small enough that
/// offsets and totals over an image's layers can never overflow.
pub const MAX_LAYER_SIZE: u64 = 1 << 40;

/// The platform manifest chosen for a pull and what it refers to.
pub(super) struct Resolved {
    pub top: registry::Manifest,
    pub manifest: registry::Manifest,
    pub parsed: ImageManifest,
    pub index: Option<ImageIndex>,
}

impl Puller {
    /// Fetches the manifest or index the reference names.
    pub(super) async fn resolve_top(
        &self,
        reference: &Reference,
        source: &Source,
    ) -> Result<registry::Manifest, Error> {
        let expected = reference.digest().map(|d| d.to_string());
        let top = self
            .registry
            .manifest(
                &source.target,
                &reference.object(),
                expected.as_deref(),
                &source.endpoints,
            )
            .await
            .map_err(|e| Error::Resolve {
                reference: reference.to_string(),
                source: e,
            })?;
        source.tracker.served_manifest(&source.endpoints, &top);
        Ok(top)
    }

    /// Resolves the reference (unless `top` already holds what it names) and, for an
    /// index, fetches `platform`'s manifest.
    pub(super) async fn resolve(
        &self,
        reference: &Reference,
        source: &Source,
        platform: &Platform,
        top: Option<registry::Manifest>,
    ) -> Result<Resolved, Error> {
        let top = match top {
            Some(top) => top,
            None => self.resolve_top(reference, source).await?,
        };
        let (manifest, index) = match media::kind(&top.media_type) {
            Some(media::Kind::Manifest) => (top.clone(), None),
            Some(media::Kind::Index) => {
                let index = parse_index(&top.digest, &top.bytes)?;
                let (child, child_size) = choose(reference, &index, platform)?;
                check_index_entry(&top.digest, &child, child_size)?;
                let manifest = self
                    .registry
                    .manifest(&source.target, &child, Some(&child), &source.endpoints)
                    .await
                    .map_err(|e| Error::Resolve {
                        reference: reference.to_string(),
                        source: e,
                    })?;
                source.tracker.served_manifest(&source.endpoints, &manifest);
                if manifest.bytes.len() as u64 != child_size {
                    return Err(Error::Invalid {
                        what: "index",
                        digest: top.digest.clone(),
                        reason: format!(
                            "entry {child} has size {child_size}, but the manifest is {} bytes",
                            manifest.bytes.len()
                        ),
                    });
                }
                if media::kind(&manifest.media_type) != Some(media::Kind::Manifest) {
                    return Err(Error::Invalid {
                        what: "index",
                        digest: top.digest.clone(),
                        reason: format!(
                            "entry {child} is a {}, not an image manifest",
                            manifest.media_type
                        ),
                    });
                }
                (manifest, Some(index))
            }
            None => unreachable!("the registry client only returns manifest kinds"),
        };
        let parsed = parse_manifest(&manifest.digest, &manifest.bytes)?;
        Ok(Resolved {
            top,
            manifest,
            parsed,
            index,
        })
    }
}

/// The digest and size of the index entry that fits `wanted` best (the first of
/// equals).
pub(super) fn choose(
    reference: &Reference,
    index: &ImageIndex,
    wanted: &Platform,
) -> Result<(String, u64), Error> {
    let mut best: Option<(u8, (String, u64))> = None;
    let mut available = Vec::new();
    for entry in index.manifests() {
        if media::kind(entry.media_type().as_ref()) != Some(media::Kind::Manifest) {
            continue;
        }
        let Some(p) = entry.platform() else { continue };
        let platform = Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref().unwrap_or(""),
        );
        available.push(platform.to_string());
        if let Some(score) = wanted.score(&platform) {
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, (entry.digest().to_string(), entry.size())));
            }
        }
    }
    best.map(|(_, entry)| entry)
        .ok_or_else(|| Error::NoPlatform {
            reference: reference.to_string(),
            platform: wanted.to_string(),
            available,
        })
}

/// What is wrong with a document oci-spec could not read: its serde error (oci-spec's
/// own message is only "serde failed"), with line and column.
fn unreadable(error: &oci_spec::OciSpecError) -> String {
    match error {
        oci_spec::OciSpecError::SerDe(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Parses the index `digest` (its media type already checked).
pub(crate) fn parse_index(digest: &str, bytes: &[u8]) -> Result<ImageIndex, Error> {
    ImageIndex::from_reader(bytes).map_err(|e| Error::Invalid {
        what: "index",
        digest: digest.to_string(),
        reason: unreadable(&e),
    })
}

/// Parses the image manifest `digest` (its media type already checked) and checks it
/// with [`validate_manifest`].
pub(crate) fn parse_manifest(digest: &str, bytes: &[u8]) -> Result<ImageManifest, Error> {
    let manifest = ImageManifest::from_reader(bytes).map_err(|e| Error::Invalid {
        what: "manifest",
        digest: digest.to_string(),
        reason: unreadable(&e),
    })?;
    validate_manifest(digest, &manifest)?;
    Ok(manifest)
}

/// Parses the image config `digest` of an image with `layers` layers: one diff ID
/// per layer.
pub(crate) fn parse_config(
    digest: &str,
    bytes: &[u8],
    layers: usize,
) -> Result<ImageConfiguration, Error> {
    let invalid = |reason: String| Error::Invalid {
        what: "config",
        digest: digest.to_string(),
        reason,
    };
    let config = ImageConfiguration::from_reader(bytes).map_err(|e| invalid(unreadable(&e)))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(invalid(format!(
            "{} diff IDs for {layers} layers",
            diff_ids.len()
        )));
    }
    for (i, diff_id) in diff_ids.iter().enumerate() {
        parse_digest(diff_id).map_err(|e| invalid(format!("diff ID {i} {diff_id:?}: {e}")))?;
    }
    Ok(config)
}

/// Checks the index entry chosen for the platform before it is fetched: a valid
/// digest, and a size a manifest can have.
fn check_index_entry(index: &str, digest: &str, size: u64) -> Result<(), Error> {
    let invalid = |reason: String| Error::Invalid {
        what: "index",
        digest: index.to_string(),
        reason,
    };
    parse_digest(digest).map_err(|e| invalid(format!("entry {digest:?}: {e}")))?;
    if size == 0 || size > registry::MAX_MANIFEST_SIZE {
        return Err(invalid(format!(
            "entry {digest} has size {size}, outside 1 to {} bytes",
            registry::MAX_MANIFEST_SIZE
        )));
    }
    Ok(())
}

/// Checks what containerd would reject later (or what no node could use), with a
/// clearer message now: digests, sizes, layer media types and the layer count.
fn validate_manifest(digest: &str, manifest: &ImageManifest) -> Result<(), Error> {
    let invalid = |reason: String| Error::Invalid {
        what: "manifest",
        digest: digest.to_string(),
        reason,
    };
    let layers = manifest.layers();
    if layers.len() > MAX_LAYERS {
        return Err(invalid(format!(
            "it lists {} layers, more than the {MAX_LAYERS} an overlay filesystem can stack",
            layers.len()
        )));
    }
    let config = manifest.config();
    parse_digest(config.digest().as_ref()).map_err(|e| {
        invalid(format!(
            "the config digest {:?}: {e}",
            config.digest().as_ref()
        ))
    })?;
    if config.size() == 0 {
        return Err(invalid("the config descriptor has size 0".into()));
    }
    if config.size() > MAX_CONFIG_SIZE {
        return Err(invalid(format!(
            "the config descriptor has size {}, more than the {MAX_CONFIG_SIZE} bytes allowed",
            config.size()
        )));
    }
    for (i, layer) in layers.iter().enumerate() {
        let media_type = layer.media_type().to_string();
        if !media::is_layer(&media_type) {
            return Err(invalid(format!(
                "layer {i} has unsupported media type {media_type:?}"
            )));
        }
        parse_digest(layer.digest().as_ref()).map_err(|e| {
            invalid(format!(
                "layer {i} digest {:?}: {e}",
                layer.digest().as_ref()
            ))
        })?;
        if layer.size() == 0 {
            return Err(invalid(format!("layer {i} has size 0")));
        }
        if layer.size() > MAX_LAYER_SIZE {
            return Err(invalid(format!(
                "layer {i} has size {}, more than the {MAX_LAYER_SIZE} bytes allowed",
                layer.size()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rstest::rstest;
    use serde_json::{json, Value};

    use super::*;

    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn sha(byte: char) -> String {
        format!("sha256:{}", byte.to_string().repeat(64))
    }

    fn descriptor(media_type: &str, digest: &str, size: Value) -> Value {
        json!({"mediaType": media_type, "digest": digest, "size": size})
    }

    /// A manifest with a 100-byte config and `layers`.
    fn manifest(layers: Vec<Value>) -> Vec<u8> {
        json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &sha('c'), json!(100)),
            "layers": layers,
        })
        .to_string()
        .into_bytes()
    }

    fn layer(size: Value) -> Value {
        descriptor(GZIP, &sha('a'), size)
    }

    fn check(bytes: &[u8]) -> Result<ImageManifest, String> {
        parse_manifest("sha256:m", bytes).map_err(|e| e.to_string())
    }

    #[test]
    fn a_sane_manifest_passes() {
        let layers = vec![layer(json!(1)); MAX_LAYERS];
        assert_eq!(check(&manifest(layers)).unwrap().layers().len(), MAX_LAYERS);
        let big = layer(json!(MAX_LAYER_SIZE));
        assert!(check(&manifest(vec![big])).is_ok());
    }

    #[rstest]
    #[case::too_many_layers(manifest(vec![layer(json!(1)); MAX_LAYERS + 1]), "it lists 501 layers, more than the 500")]
    #[case::empty_layer(manifest(vec![layer(json!(0))]), "layer 0 has size 0")]
    #[case::huge_layer(manifest(vec![layer(json!(MAX_LAYER_SIZE + 1))]), "layer 0 has size 1099511627777, more than the 1099511627776 bytes allowed")]
    #[case::negative_size(manifest(vec![layer(json!(-1))]), "invalid value: integer `-1`, expected u64")]
    #[case::fractional_size(manifest(vec![layer(json!(1.5))]), "invalid type: floating point `1.5`, expected u64")]
    #[case::size_beyond_u64(br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":18446744073709551616},"layers":[]}"#.to_vec(), "expected u64")]
    #[case::unknown_algorithm(manifest(vec![descriptor(GZIP, "md5:d41d8cd98f00b204e9800998ecf8427e", json!(1))]), "layer 0 digest \"md5:d41d8cd98f00b204e9800998ecf8427e\": unsupported digest algorithm \"md5\"")]
    #[case::short_digest(manifest(vec![descriptor(GZIP, "sha256:abc", json!(1))]), "Invalid digest length 3 expected 64")]
    #[case::uppercase_digest(manifest(vec![descriptor(GZIP, &sha('A'), json!(1))]), "Invalid non-hexadecimal character")]
    #[case::not_hex(manifest(vec![descriptor(GZIP, &sha('z'), json!(1))]), "Invalid non-hexadecimal character")]
    #[case::slash_in_digest(manifest(vec![descriptor(GZIP, "sha256:../../etc", json!(1))]), "Invalid encoded value")]
    #[case::not_a_layer(manifest(vec![descriptor("text/plain", &sha('a'), json!(1))]), "layer 0 has unsupported media type \"text/plain\"")]
    #[case::not_json(b"<html>".to_vec(), "manifest sha256:m is invalid: expected value")]
    fn hostile_manifests(#[case] bytes: Vec<u8>, #[case] message: &str) {
        let error = check(&bytes).unwrap_err();
        assert!(
            error.starts_with("manifest sha256:m is invalid: "),
            "{error}"
        );
        assert!(error.contains(message), "{error}");
    }

    #[test]
    fn config_descriptor_sizes() {
        let with_config = |size: Value| {
            json!({"schemaVersion": 2, "config": descriptor("a", &sha('c'), size), "layers": []})
                .to_string()
        };
        let error = check(with_config(json!(0)).as_bytes()).unwrap_err();
        assert!(
            error.contains("the config descriptor has size 0"),
            "{error}"
        );
        let error = check(with_config(json!(MAX_CONFIG_SIZE + 1)).as_bytes()).unwrap_err();
        assert!(
            error.contains(
                "the config descriptor has size 16777217, more than the 16777216 bytes allowed"
            ),
            "{error}"
        );
        assert!(check(with_config(json!(MAX_CONFIG_SIZE)).as_bytes()).is_ok());
        let bad = json!({"schemaVersion": 2, "config": descriptor("a", "sha1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", json!(1)), "layers": []});
        let error = check(bad.to_string().as_bytes()).unwrap_err();
        assert!(error.contains("the config digest \"sha1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\": unsupported digest algorithm \"sha1\""), "{error}");
    }

    #[test]
    fn index_entries() {
        let good = sha('b');
        assert!(check_index_entry("sha256:i", &good, 500).is_ok());
        let error = check_index_entry("sha256:i", &good, 0)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("index sha256:i is invalid: entry sha256:bbbb"),
            "{error}"
        );
        assert!(
            error.contains("has size 0, outside 1 to 4194304 bytes"),
            "{error}"
        );
        let error = check_index_entry("sha256:i", &good, u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(error.contains("has size 18446744073709551615"), "{error}");
        let error = check_index_entry("sha256:i", "sha999:abc", 5)
            .unwrap_err()
            .to_string();
        assert!(error.contains("entry \"sha999:abc\""), "{error}");
        let error = parse_index("sha256:i", br#"{"schemaVersion":2,"manifests":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("index sha256:i is invalid: invalid type: map"),
            "{error}"
        );
    }

    fn config(diff_ids: &[&str]) -> Vec<u8> {
        json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn configs() {
        let a = sha('a');
        assert!(parse_config("sha256:c", &config(&[&a, &a]), 2).is_ok());
        let error = parse_config("sha256:c", &config(&[&a]), 2)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "config sha256:c is invalid: 1 diff IDs for 2 layers");
        let error = parse_config("sha256:c", &config(&["sha256:ABC"]), 1)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("diff ID 0 \"sha256:ABC\": the encoded part must be at least 32"),
            "{error}"
        );
        let error = parse_config("sha256:c", b"[1,2]", 0)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config sha256:c is invalid: "), "{error}");
    }
}
