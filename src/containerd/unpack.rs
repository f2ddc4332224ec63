//! Unpack: apply layers into the snapshotter as committed snapshots named by chain ID.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
    UsageRequest,
};
use containerd_client::services::v1::{AddResourceRequest, ApplyRequest, Resource};
use containerd_client::types::Descriptor;
use sha2::{Digest, Sha256};

use super::{Connection, Error};

/// Label naming the chain ID a prepared snapshot will be committed as. Snapshotters
/// that can fetch layers themselves answer `AlreadyExists` to a Prepare carrying it.
const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

/// Chain IDs of a layer stack from its diff IDs (OCI image spec, "ChainID"):
/// `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => {
                let hash = Sha256::digest(format!("{parent} {diff_id}").as_bytes());
                format!("sha256:{}", hex::encode(hash))
            }
        };
        chain.push(next);
    }
    chain
}

/// An active snapshot prepared for one layer, not committed yet.
#[derive(Debug)]
pub struct Prepared {
    key: String,
    chain_id: String,
    /// Where the layer goes: the mounts `Snapshots.Prepare` answered.
    pub mounts: Vec<containerd_client::types::Mount>,
}

/// Applies layers into one snapshotter.
#[derive(Clone, Debug)]
pub struct Unpacker {
    conn: Connection,
    snapshotter: String,
    /// Set once [`sees`](Self::sees) has found a snapshot of this snapshotter
    /// written from here shows in containerd's usage of it: the snapshotter's
    /// directories are ours, and later snapshots need only be found empty.
    seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Unpacker {
    /// An unpacker for `snapshotter` (e.g. `overlayfs`).
    pub fn new(conn: Connection, snapshotter: &str) -> Self {
        Self {
            conn,
            snapshotter: snapshotter.to_string(),
            seen: Default::default(),
        }
    }

    /// The snapshotter name.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// True when a snapshot called `chain_id` exists.
    pub async fn exists(&self, chain_id: &str) -> Result<bool, Error> {
        let request = self.conn.request(StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: chain_id.to_string(),
        });
        match self.conn.snapshots_client().stat(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(Error::rpc("Snapshots.Stat", chain_id, status)),
        }
    }

    /// Applies `layer` (a committed blob) on top of `parent` and commits the result
    /// as `chain_id`. Returns false when the snapshot already existed.
    ///
    /// `diff_id` is checked against what `Diff.Apply` computed over the uncompressed
    /// stream, so a layer that does not match its config is never committed.
    pub async fn apply(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        parent: Option<&str>,
    ) -> Result<bool, Error> {
        match self.prepare(chain_id, parent).await? {
            None => Ok(false),
            Some(prepared) => self.apply_prepared(prepared, layer, diff_id).await,
        }
    }

    /// Prepares the active snapshot `chain_id` will be committed from, on top of
    /// `parent`. `None` when `chain_id` exists already (or a snapshotter that fetches
    /// layers itself made it).
    pub async fn prepare(
        &self,
        chain_id: &str,
        parent: Option<&str>,
    ) -> Result<Option<Prepared>, Error> {
        // A snapshot prepared and committed under our lease is in it already; one
        // found committed is held before it is relied on, and looked for again in
        // case it was collected in between.
        if self.exists(chain_id).await? {
            self.hold(chain_id).await?;
            if self.exists(chain_id).await? {
                return Ok(None);
            }
        }
        let key = extract_key(chain_id);
        let request = self.conn.request(PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.clone(),
            parent: parent.unwrap_or_default().to_string(),
            labels: HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain_id.to_string())]),
        });
        match self.conn.snapshots_client().prepare(request).await {
            Ok(reply) => Ok(Some(Prepared {
                key,
                chain_id: chain_id.to_string(),
                mounts: reply.into_inner().mounts,
            })),
            // Committed meanwhile by someone else (or a remote snapshotter).
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                self.hold(chain_id).await?;
                Ok(None)
            }
            Err(status) => Err(Error::rpc("Snapshots.Prepare", chain_id, status)),
        }
    }

    /// Applies `layer` into `prepared` with `Diff.Apply` and commits it, checking
    /// the diff ID containerd computed. The active snapshot is removed if anything
    /// fails. Returns false when someone else committed the same chain meanwhile.
    pub async fn apply_prepared(
        &self,
        prepared: Prepared,
        layer: &Descriptor,
        diff_id: &str,
    ) -> Result<bool, Error> {
        let request = self.conn.request(ApplyRequest {
            diff: Some(layer.clone()),
            mounts: prepared.mounts.clone(),
            ..Default::default()
        });
        let applied = match self.conn.diff_client().apply(request).await {
            Ok(reply) => reply.into_inner().applied.map(|d| d.digest),
            Err(status) => {
                self.discard(prepared).await;
                return Err(Error::rpc("Diff.Apply", &layer.digest, status));
            }
        };
        let applied = applied.unwrap_or_default();
        if applied != diff_id {
            self.discard(prepared).await;
            return Err(Error::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: diff_id.to_string(),
                got: applied,
            });
        }
        self.commit(prepared).await
    }

    /// Commits `prepared` under its chain ID, once its layer is in it. Returns false
    /// when someone else committed the same chain meanwhile; the active snapshot is
    /// removed then, and on errors.
    pub async fn commit(&self, prepared: Prepared) -> Result<bool, Error> {
        let request = self.conn.request(CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: prepared.chain_id.clone(),
            key: prepared.key.clone(),
            labels: HashMap::new(),
        });
        let result = match self.conn.snapshots_client().commit(request).await {
            Ok(_) => return Ok(true),
            // Committed meanwhile by someone else: ours now too.
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                self.hold(&prepared.chain_id).await.map(|()| false)
            }
            Err(status) => Err(Error::rpc("Snapshots.Commit", &prepared.chain_id, status)),
        };
        // Never leave an active snapshot behind: it would pin its parent.
        self.discard(prepared).await;
        result
    }

    /// True when `dir`, where this process sees the directory of `prepared`, is the
    /// one containerd prepared: it is empty, as a snapshot freshly prepared on
    /// overlayfs is, and a file made in it shows in containerd's usage of the
    /// snapshot. A containerd in another mount namespace (a kind node, say, or
    /// ctrpull in a container without the host's directories) whose paths happen to
    /// exist here too is never written into.
    ///
    /// The probe is made once per unpacker: after a snapshot has passed it, a later
    /// one of the same snapshotter need only be empty.
    pub async fn sees(&self, prepared: &Prepared, dir: &std::path::Path) -> bool {
        let empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
        if !empty {
            return false;
        }
        if self.seen.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        let probe = dir.join(".ctrpull-probe");
        if std::fs::write(&probe, b"probe").is_err() {
            return false;
        }
        let request = self.conn.request(UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: prepared.key.clone(),
        });
        // The directory itself and the probe.
        let seen = match self.conn.snapshots_client().usage(request).await {
            Ok(reply) => reply.into_inner().inodes >= 2,
            Err(status) => {
                tracing::debug!(key = prepared.key, "Snapshots.Usage: {}", status.message());
                false
            }
        };
        if let Err(e) = std::fs::remove_file(&probe) {
            tracing::warn!(path = %probe.display(), "could not remove a probe file: {e}");
            return false;
        }
        if seen {
            self.seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        seen
    }

    /// Removes an active snapshot that will not be committed.
    pub async fn discard(&self, prepared: Prepared) {
        self.remove(&prepared.key).await;
    }

    /// Adds snapshot `chain_id` to the connection's lease: a snapshot that is found
    /// committed but that no image refers to yet (left by an interrupted pull whose
    /// lease is gone) would otherwise be collectable until the image record is
    /// written, and the next layer's Prepare would find its parent gone.
    /// `Snapshots.Stat`, unlike `Content.Write` and `Snapshots.Prepare`, adds
    /// nothing to a lease. Each call is a write to containerd's database, so it is
    /// made only for snapshots found.
    async fn hold(&self, chain_id: &str) -> Result<(), Error> {
        let Some(lease) = self.conn.lease() else {
            return Ok(());
        };
        let request = self.conn.request(AddResourceRequest {
            id: lease.to_string(),
            resource: Some(Resource {
                id: chain_id.to_string(),
                r#type: format!("snapshots/{}", self.snapshotter),
            }),
        });
        self.conn
            .leases_client()
            .add_resource(request)
            .await
            .map_err(|status| Error::rpc("Leases.AddResource", chain_id, status))?;
        Ok(())
    }

    async fn remove(&self, key: &str) {
        let request = self.conn.request(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        });
        if let Err(status) = self.conn.snapshots_client().remove(request).await {
            if status.code() != tonic::Code::NotFound {
                tracing::warn!(
                    key,
                    "could not remove active snapshot: {}",
                    status.message()
                );
            }
        }
    }
}

/// A unique key for the active snapshot a layer is extracted into, in containerd's
/// own `extract-<unique> <chainID>` shape so that tools recognise it.
fn extract_key(chain_id: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("extract-{nanos}-{:08x} {chain_id}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expected = Sha256::digest(format!("{a} {b}").as_bytes());
        assert_eq!(chain[1], format!("sha256:{}", hex::encode(expected)));
        assert!(chain_ids(&[]).is_empty());
    }
}
