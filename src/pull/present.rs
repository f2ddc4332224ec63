//! The quick skip: is the image already there, exactly as a pull would leave it?
//!
//! "There" means the records CRI writes point at the digest the reference resolves
//! to, the platform's manifest, config and every layer are in the content store, and
//! (when unpacking) every snapshot of the chain is committed. A tag costs one
//! manifest request; a digest reference costs no registry traffic at all.

use std::time::Instant;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::fetch::Source;
use super::resolve::choose;
use super::{Error, Platform, PullReport, Puller};
use crate::containerd::{self, chain_ids, ContentStore, Images, Unpacker};
use crate::reference::Reference;
use crate::registry::{self, media};

/// What the presence check found.
pub(super) enum Presence {
    /// Nothing to do; the report says so.
    Present(Box<PullReport>),
    /// Something is missing. The manifest or index the check fetched, if it did, so
    /// the pull need not ask again.
    Absent(Option<registry::Manifest>),
}

impl Puller {
    pub(super) async fn check_present(
        &self,
        conn: &containerd::Connection,
        reference: &Reference,
        platform: &Platform,
        source: &Source,
        started: Instant,
    ) -> Result<Presence, Error> {
        let (digest, fetched) = match reference.digest() {
            Some(digest) => (digest.to_string(), None),
            None => {
                let top = self.resolve_top(reference, source).await?;
                (top.digest.clone(), Some(top))
            }
        };
        let found = self
            .find_local(conn, reference, platform, &digest)
            .await
            .map_err(|e| Error::containerd("checking what is already there", e))?;
        let Some(found) = found else {
            return Ok(Presence::Absent(fetched));
        };
        tracing::info!(reference = %reference, digest, "already present");
        let layers = found.layers;
        let total = found.config_size + layers.iter().map(|(_, size)| size).sum::<u64>();
        source.tracker.resolved(&digest, total, layers.len());
        Ok(Presence::Present(Box::new(PullReport {
            reference: reference.to_string(),
            digest,
            manifest_digest: found.manifest_digest,
            image_id: found.config_digest,
            present: true,
            bytes_fetched: fetched.map_or(0, |top| top.bytes.len() as u64),
            blobs_present: layers.len() + 1,
            layers_reused: if self.options.unpack { layers.len() } else { 0 },
            records: found.records,
            elapsed: started.elapsed(),
            ..PullReport::default()
        })))
    }

    /// What the namespace holds of the image `digest` for `platform`; `None` as soon
    /// as one piece is missing.
    async fn find_local(
        &self,
        conn: &containerd::Connection,
        reference: &Reference,
        platform: &Platform,
        digest: &str,
    ) -> Result<Option<Local>, containerd::Error> {
        let images = Images::new(conn.clone());
        let content = ContentStore::new(conn.clone());
        let mut records = Vec::new();
        if let Some(tag) = reference.tag() {
            records.push(format!("{}:{tag}", reference.name()));
        }
        records.push(format!("{}@{digest}", reference.name()));
        let mut media_type = String::new();
        for name in &records {
            let Some(image) = images.get(name).await? else {
                return Ok(None);
            };
            match image.target {
                Some(target) if target.digest == digest => media_type = target.media_type,
                _ => return Ok(None),
            }
        }
        let Some(top) = read(&content, digest).await? else {
            return Ok(None);
        };
        let manifest_digest = match media::kind(&media_type) {
            Some(media::Kind::Manifest) => digest.to_string(),
            Some(media::Kind::Index) => {
                let Ok(index) = ImageIndex::from_reader(&top[..]) else {
                    return Ok(None);
                };
                match choose(reference, &index, platform) {
                    Ok((child, _)) => child,
                    Err(_) => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let manifest = if manifest_digest == digest {
            top
        } else {
            match read(&content, &manifest_digest).await? {
                Some(bytes) => bytes,
                None => return Ok(None),
            }
        };
        let Ok(manifest) = ImageManifest::from_reader(&manifest[..]) else {
            return Ok(None);
        };
        let config_digest = manifest.config().digest().to_string();
        match images.get(&config_digest).await? {
            Some(image) if image.target.as_ref().is_some_and(|t| t.digest == digest) => {}
            _ => return Ok(None),
        }
        records.push(config_digest.clone());
        let Some(config) = read(&content, &config_digest).await? else {
            return Ok(None);
        };
        let Ok(config) = ImageConfiguration::from_reader(&config[..]) else {
            return Ok(None);
        };
        let layers: Vec<(String, u64)> = manifest
            .layers()
            .iter()
            .map(|l| (l.digest().to_string(), l.size()))
            .collect();
        for (layer, _) in &layers {
            if content.info(layer).await?.is_none() {
                return Ok(None);
            }
        }
        if self.options.unpack {
            let diff_ids = config.rootfs().diff_ids();
            if diff_ids.len() != layers.len() {
                return Ok(None);
            }
            let unpacker = Unpacker::new(conn.clone(), &self.options.snapshotter);
            for chain_id in chain_ids(diff_ids) {
                if !unpacker.exists(&chain_id).await? {
                    return Ok(None);
                }
            }
        }
        Ok(Some(Local {
            manifest_digest,
            config_size: manifest.config().size(),
            config_digest,
            layers,
            records,
        }))
    }
}

/// An image found whole in the namespace.
struct Local {
    manifest_digest: String,
    config_digest: String,
    config_size: u64,
    /// Digest and size of each layer.
    layers: Vec<(String, u64)>,
    records: Vec<String>,
}

/// A committed blob's bytes, `None` when it is not in the store.
async fn read(content: &ContentStore, digest: &str) -> Result<Option<Vec<u8>>, containerd::Error> {
    if content.info(digest).await?.is_none() {
        return Ok(None);
    }
    content.read(digest).await.map(Some)
}
