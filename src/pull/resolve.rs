//! Resolving a reference: the manifest or index, and the platform's manifest.

use oci_spec::image::{ImageIndex, ImageManifest};

use super::fetch::Source;
use super::{Error, Platform, Puller};
use crate::reference::Reference;
use crate::registry::{self, media};

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
                let index =
                    ImageIndex::from_reader(&top.bytes[..]).map_err(|e| Error::Invalid {
                        what: "index",
                        digest: top.digest.clone(),
                        reason: e.to_string(),
                    })?;
                let child = choose(reference, &index, platform)?;
                let manifest = self
                    .registry
                    .manifest(&source.target, &child, Some(&child), &source.endpoints)
                    .await
                    .map_err(|e| Error::Resolve {
                        reference: reference.to_string(),
                        source: e,
                    })?;
                source.tracker.served_manifest(&source.endpoints, &manifest);
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
        let parsed =
            ImageManifest::from_reader(&manifest.bytes[..]).map_err(|e| Error::Invalid {
                what: "manifest",
                digest: manifest.digest.clone(),
                reason: e.to_string(),
            })?;
        validate_manifest(&manifest.digest, &parsed)?;
        Ok(Resolved {
            top,
            manifest,
            parsed,
            index,
        })
    }
}

/// The digest of the index entry that fits `wanted` best (the first of equals).
pub(super) fn choose(
    reference: &Reference,
    index: &ImageIndex,
    wanted: &Platform,
) -> Result<String, Error> {
    let mut best: Option<(u8, String)> = None;
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
                best = Some((score, entry.digest().to_string()));
            }
        }
    }
    best.map(|(_, digest)| digest)
        .ok_or_else(|| Error::NoPlatform {
            reference: reference.to_string(),
            platform: wanted.to_string(),
            available,
        })
}

/// Checks what containerd would reject later, with a clearer message now.
fn validate_manifest(digest: &str, manifest: &ImageManifest) -> Result<(), Error> {
    let invalid = |reason: String| Error::Invalid {
        what: "manifest",
        digest: digest.to_string(),
        reason,
    };
    if manifest.config().size() == 0 {
        return Err(invalid("the config descriptor has size 0".into()));
    }
    for (i, layer) in manifest.layers().iter().enumerate() {
        let media_type = layer.media_type().to_string();
        if !media::is_layer(&media_type) {
            return Err(invalid(format!(
                "layer {i} has unsupported media type {media_type:?}"
            )));
        }
        if layer.size() == 0 {
            return Err(invalid(format!("layer {i} has size 0")));
        }
    }
    Ok(())
}
