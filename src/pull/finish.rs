//! Finishing a pull: unpack into the snapshotter, then the image records.

use std::collections::HashMap;
use std::time::Instant;

use containerd_client::types::Descriptor;

use super::fetch::Fetched;
use super::resolve::Resolved;
use super::tap::Feed;
use super::{AbortOnDrop, Error, PullReport, Puller, LABEL_CRI_MANAGED};
use crate::containerd::{
    self, apply, chain_ids, ContentStore, ImageRecord, Images, Unpacker, LABEL_GC_REF_SNAPSHOT,
    LABEL_UNCOMPRESSED,
};
use crate::reference::Reference;

impl Puller {
    /// Waits for the layer downloads in order and applies each layer as soon as it
    /// and every layer below it are committed, so unpacking overlaps the download
    /// instead of following it; a layer with a live `feed` is unpacked while it
    /// downloads. Layers whose snapshot exists are skipped; layers and config are
    /// labelled as containerd's unpacker labels them.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish_layers(
        &self,
        conn: &containerd::Connection,
        content: &ContentStore,
        layers: &[oci_spec::image::Descriptor],
        diff_ids: &[String],
        config_digest: &str,
        downloads: Vec<AbortOnDrop<Result<Fetched, Error>>>,
        feeds: Vec<Option<Feed>>,
        report: &mut PullReport,
    ) -> Result<(), Error> {
        let unpacker = Unpacker::new(conn.clone(), &self.options.snapshotter);
        let chain = chain_ids(diff_ids);
        // A layer's download is awaited (its blob's commit) and its label set beside
        // the unpack of the ones above, not before it: the next layer needs only this
        // one's snapshot.
        let mut finishing = Vec::new();
        let layers = layers.iter().enumerate().zip(downloads).zip(feeds);
        for (((i, layer), download), feed) in layers {
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
            if !self.options.unpack {
                report.add_blob(downloaded(&descriptor, download).await?, true);
                continue;
            }
            let layer = Layer {
                index: i,
                descriptor: &descriptor,
                diff_id: &diff_ids[i],
                chain_id: &chain[i],
                parent: i.checked_sub(1).map(|p| chain[p].as_str()),
            };
            let (download, unpacked) = match feed.filter(Feed::is_attached) {
                Some(feed) => {
                    self.unpack_downloading(&unpacker, &layer, feed, download)
                        .await?
                }
                None => {
                    let fetched = downloaded(&descriptor, download).await?;
                    (Download::Done(fetched), layer.apply(&unpacker).await?)
                }
            };
            match unpacked {
                Unpacked::Reused => report.layers_reused += 1,
                Unpacked::Applied => report.layers_unpacked += 1,
                Unpacked::WhileDownloading => {
                    report.layers_unpacked += 1;
                    report.layers_unpacked_while_downloading += 1;
                }
            }
            let content = content.clone();
            let labels = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_ids[i].clone())]);
            finishing.push(AbortOnDrop(tokio::spawn(async move {
                let fetched = match download {
                    Download::Done(fetched) => fetched,
                    Download::Committing(download) => downloaded(&descriptor, download).await?,
                };
                content
                    .set_labels(&descriptor.digest, labels)
                    .await
                    .map_err(|e| Error::containerd("labelling a layer", e))?;
                Ok::<_, Error>(fetched)
            })));
        }
        for finished in finishing {
            match finished.await {
                Ok(fetched) => report.add_blob(fetched?, true),
                // Never cancelled: the handle is held until here.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
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

    /// Unpacks `layer` while it downloads: its snapshot is prepared now (every layer
    /// below is unpacked), and the bytes `feed` hands over as they reach the content
    /// store are written straight into it. The snapshot is committed once the last
    /// byte is written into it and the diff ID of what was written is the config's;
    /// the blob's own commit (containerd checks its digest and syncs it) may still be
    /// under way, and is awaited with the layers above. When the snapshot's directory
    /// cannot be written from here, or the feed or the write gives up, containerd
    /// applies the layer once downloaded, as it otherwise would.
    async fn unpack_downloading(
        &self,
        unpacker: &Unpacker,
        layer: &Layer<'_>,
        feed: Feed,
        download: AbortOnDrop<Result<Fetched, Error>>,
    ) -> Result<(Download, Unpacked), Error> {
        let Some(prepared) = unpacker
            .prepare(layer.chain_id, layer.parent)
            .await
            .map_err(unpack_error)?
        else {
            // Nothing to write: the tap stops holding bytes for it at once.
            drop(feed);
            return Ok((Download::Committing(download), Unpacked::Reused));
        };
        let direct = match apply::Target::from_mounts(&prepared.mounts)
            .zip(apply::compression(&layer.descriptor.media_type))
        {
            Some((target, compression)) if unpacker.sees(&prepared, &target.dir).await => {
                Some((target, compression))
            }
            _ => None,
        };
        let Some((target, compression)) = direct else {
            tracing::debug!(layer = layer.index, mounts = ?prepared.mounts, media_type = layer.descriptor.media_type, "the snapshot cannot be written from here: applying the layer once downloaded");
            drop(feed);
            let fetched = match downloaded(layer.descriptor, download).await {
                Ok(fetched) => fetched,
                Err(e) => {
                    unpacker.discard(prepared).await;
                    return Err(e);
                }
            };
            let applying = Instant::now();
            let applied = unpacker
                .apply_prepared(prepared, layer.descriptor, layer.diff_id)
                .await
                .map_err(unpack_error)?;
            tracing::debug!(layer = layer.index, applied, elapsed = ?applying.elapsed(), "layer unpacked");
            return Ok((Download::Done(fetched), Unpacked::applied(applied)));
        };
        let started = Instant::now();
        feed.start();
        let writing =
            tokio::task::spawn_blocking(move || apply::apply_layer(feed, compression, &target));
        // The write ends with the download's bytes: its feed ends cleanly once the
        // last byte is handed over (before the blob's commit) and in an error if the
        // download gives up. It is waited for before the snapshot is committed or
        // removed.
        let written = writing.await;
        let reason = match written {
            Ok(Ok(diff_id)) if diff_id == layer.diff_id => {
                let committed = unpacker.commit(prepared).await.map_err(unpack_error)?;
                tracing::debug!(layer = layer.index, elapsed = ?started.elapsed(), "layer unpacked while downloading");
                let unpacked = match committed {
                    true => Unpacked::WhileDownloading,
                    false => Unpacked::Reused,
                };
                return Ok((Download::Committing(download), unpacked));
            }
            Ok(Ok(diff_id)) => format!(
                "what was written has diff ID {diff_id}, the config says {}",
                layer.diff_id
            ),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the unpack task failed: {e}"),
        };
        unpacker.discard(prepared).await;
        // A download that failed is the error to report.
        let fetched = downloaded(layer.descriptor, download).await?;
        tracing::debug!(
            layer = layer.index,
            digest = layer.descriptor.digest,
            "unpacking while downloading gave up ({reason}); applying the downloaded layer instead"
        );
        Ok((Download::Done(fetched), layer.apply(unpacker).await?))
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

/// One layer to unpack, with where it goes in the chain.
struct Layer<'a> {
    index: usize,
    descriptor: &'a Descriptor,
    diff_id: &'a str,
    chain_id: &'a str,
    parent: Option<&'a str>,
}

impl Layer<'_> {
    /// Applies the downloaded layer with containerd's `Diff.Apply`.
    async fn apply(&self, unpacker: &Unpacker) -> Result<Unpacked, Error> {
        let applying = Instant::now();
        let applied = unpacker
            .apply(self.descriptor, self.diff_id, self.chain_id, self.parent)
            .await
            .map_err(unpack_error)?;
        tracing::debug!(layer = self.index, applied, elapsed = ?applying.elapsed(), "layer unpacked");
        Ok(Unpacked::applied(applied))
    }
}

/// A layer's download, as the unpack leaves it.
enum Download {
    /// Done: the blob is committed.
    Done(Fetched),
    /// The task may still be downloading (a snapshot already there needs none of
    /// its bytes) or committing the blob; it is awaited with the layers above.
    Committing(AbortOnDrop<Result<Fetched, Error>>),
}

/// How a layer came to be in the snapshotter.
enum Unpacked {
    /// Its snapshot was there already.
    Reused,
    /// containerd applied it once downloaded.
    Applied,
    /// Written into its snapshot while it downloaded.
    WhileDownloading,
}

impl Unpacked {
    fn applied(applied: bool) -> Self {
        match applied {
            true => Unpacked::Applied,
            false => Unpacked::Reused,
        }
    }
}

fn unpack_error(e: containerd::Error) -> Error {
    Error::containerd("unpacking a layer", e)
}

/// The outcome of a layer's download task.
async fn downloaded(
    layer: &Descriptor,
    download: AbortOnDrop<Result<Fetched, Error>>,
) -> Result<Fetched, Error> {
    let fetched = download.await.map_err(|e| Error::Transfer {
        digest: layer.digest.clone(),
        url: String::new(),
        reason: format!("the download task failed: {e}"),
    })??;
    tracing::debug!(digest = %layer.digest, bytes = fetched.bytes, "layer committed");
    Ok(fetched)
}
