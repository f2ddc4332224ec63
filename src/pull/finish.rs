//! Finishing a pull: unpack into the snapshotter, then the image records.

use std::collections::HashMap;

use containerd_client::types::Descriptor;

use super::fetch::Fetched;
use super::resolve::Resolved;
use super::{AbortOnDrop, Error, PullReport, Puller, LABEL_CRI_MANAGED};
use crate::containerd::{
    self, chain_ids, ContentStore, ImageRecord, Images, Unpacker, LABEL_GC_REF_SNAPSHOT,
    LABEL_UNCOMPRESSED,
};
use crate::reference::Reference;

impl Puller {
    /// Waits for the layer downloads in order and applies each layer as soon as it
    /// and every layer below it are committed, so unpacking overlaps the download
    /// instead of following it. Layers whose snapshot exists are skipped; layers and
    /// config are labelled as containerd's unpacker labels them.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish_layers(
        &self,
        conn: &containerd::Connection,
        content: &ContentStore,
        layers: &[oci_spec::image::Descriptor],
        diff_ids: &[String],
        config_digest: &str,
        downloads: Vec<AbortOnDrop<Result<Fetched, Error>>>,
        report: &mut PullReport,
    ) -> Result<(), Error> {
        let unpacker = Unpacker::new(conn.clone(), &self.options.snapshotter);
        let chain = chain_ids(diff_ids);
        for ((i, layer), download) in layers.iter().enumerate().zip(downloads) {
            let fetched = download.await.map_err(|e| Error::Transfer {
                digest: layer.digest().to_string(),
                url: String::new(),
                reason: format!("the download task failed: {e}"),
            })??;
            report.add_blob(fetched, true);
            tracing::debug!(layer = i, digest = %layer.digest(), bytes = fetched.bytes, "layer committed");
            if !self.options.unpack {
                continue;
            }
            let applying = std::time::Instant::now();
            let descriptor = Descriptor {
                media_type: layer.media_type().to_string(),
                digest: layer.digest().to_string(),
                size: layer.size() as i64,
                annotations: layer
                    .annotations()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            };
            let parent = i.checked_sub(1).map(|p| chain[p].as_str());
            let applied = unpacker
                .apply(&descriptor, &diff_ids[i], &chain[i], parent)
                .await
                .map_err(|e| Error::containerd("unpacking a layer", e))?;
            tracing::debug!(layer = i, applied, elapsed = ?applying.elapsed(), "layer unpacked");
            if applied {
                report.layers_unpacked += 1;
            } else {
                report.layers_reused += 1;
            }
            content
                .set_labels(
                    &descriptor.digest,
                    HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_ids[i].clone())]),
                )
                .await
                .map_err(|e| Error::containerd("labelling a layer", e))?;
        }
        if let Some(top) = chain.last().filter(|_| self.options.unpack) {
            content
                .set_labels(
                    config_digest,
                    HashMap::from([(
                        format!("{LABEL_GC_REF_SNAPSHOT}.{}", self.options.snapshotter),
                        top.clone(),
                    )]),
                )
                .await
                .map_err(|e| Error::containerd("labelling the config", e))?;
        }
        Ok(())
    }

    /// Writes the records CRI writes: `repo:tag`, `repo@digest` and the image ID,
    /// all pointing at the resolved index or manifest. If one fails, the records this
    /// pull created are removed again.
    pub(super) async fn write_records(
        &self,
        conn: &containerd::Connection,
        reference: &Reference,
        resolved: &Resolved,
        config_digest: &str,
    ) -> Result<Vec<String>, Error> {
        let target = Descriptor {
            media_type: resolved.top.media_type.clone(),
            digest: resolved.top.digest.clone(),
            size: resolved.top.bytes.len() as i64,
            annotations: HashMap::new(),
        };
        let mut names = Vec::new();
        if let Some(tag) = reference.tag() {
            names.push(format!("{}:{tag}", reference.name()));
        }
        names.push(format!("{}@{}", reference.name(), resolved.top.digest));
        names.push(config_digest.to_string());
        let images = Images::new(conn.clone());
        let labels = HashMap::from([(LABEL_CRI_MANAGED.to_string(), "managed".to_string())]);
        let mut created = Vec::new();
        for name in &names {
            let record = ImageRecord {
                name: name.clone(),
                target: target.clone(),
                labels: labels.clone(),
            };
            match images.upsert(&record).await {
                Ok(true) => created.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    for name in &created {
                        if let Err(e) = images.delete(name, false).await {
                            tracing::warn!(
                                name,
                                "could not remove a half-written image record: {e}"
                            );
                        }
                    }
                    return Err(Error::containerd("writing image records", e));
                }
            }
        }
        Ok(names)
    }
}
