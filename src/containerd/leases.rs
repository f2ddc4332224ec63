//! Leases: what keeps a pull's blobs and snapshots from being collected midway.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{CreateRequest, DeleteRequest, ListRequest};

use super::{Connection, Error, LABEL_GC_EXPIRE};

/// Leases of one namespace.
#[derive(Clone, Debug)]
pub struct Leases {
    conn: Connection,
}

impl Leases {
    /// The lease service behind `conn`.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Creates a lease that containerd's GC drops by itself after `expire`, so that a
    /// pull killed before it could delete its lease leaves nothing pinned for ever.
    pub async fn create(&self, id: &str, expire: Duration) -> Result<(), Error> {
        let expire_at = humantime::format_rfc3339_seconds(SystemTime::now() + expire);
        let labels = HashMap::from([(LABEL_GC_EXPIRE.to_string(), expire_at.to_string())]);
        let request = self.conn.request(CreateRequest {
            id: id.to_string(),
            labels,
        });
        self.conn
            .leases_client()
            .create(request)
            .await
            .map_err(|status| Error::rpc("Leases.Create", id, status))?;
        Ok(())
    }

    /// Deletes the lease; what it held becomes collectable unless referenced.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let request = self.conn.request(DeleteRequest {
            id: id.to_string(),
            sync: false,
        });
        match self.conn.leases_client().delete(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(Error::rpc("Leases.Delete", id, status)),
        }
    }

    /// IDs of the leases in the namespace.
    pub async fn list(&self) -> Result<Vec<String>, Error> {
        let request = self.conn.request(ListRequest::default());
        let reply = self
            .conn
            .leases_client()
            .list(request)
            .await
            .map_err(|status| Error::rpc("Leases.List", "", status))?;
        Ok(reply
            .into_inner()
            .leases
            .into_iter()
            .map(|l| l.id)
            .collect())
    }
}
