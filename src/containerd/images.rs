//! Image records: the names that point at a manifest or index.

use std::collections::HashMap;

use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use containerd_client::types::Descriptor;

use super::{Connection, Error};

/// One image record to write.
#[derive(Clone, Debug)]
pub struct ImageRecord {
    /// The record's name, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// What it points at: the resolved index or manifest.
    pub target: Descriptor,
    /// Labels to set (other labels on an existing record are kept).
    pub labels: HashMap<String, String>,
}

/// Image records of one namespace.
#[derive(Clone, Debug)]
pub struct Images {
    conn: Connection,
}

impl Images {
    /// The image service behind `conn`.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// The record called `name`, `None` when absent.
    pub async fn get(&self, name: &str) -> Result<Option<Image>, Error> {
        let request = self.conn.request(GetImageRequest {
            name: name.to_string(),
        });
        match self.conn.images_client().get(request).await {
            Ok(reply) => Ok(reply.into_inner().image),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::rpc("Images.Get", name, status)),
        }
    }

    /// Creates the record, or updates its target and our labels when it exists, as
    /// CRI does. Returns true when the record was newly created.
    pub async fn upsert(&self, record: &ImageRecord) -> Result<bool, Error> {
        let image = Image {
            name: record.name.clone(),
            labels: record.labels.clone(),
            target: Some(record.target.clone()),
            ..Default::default()
        };
        let request = self.conn.request(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        });
        match self.conn.images_client().create(request).await {
            Ok(_) => return Ok(true),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => return Err(Error::rpc("Images.Create", &record.name, status)),
        }
        let mut paths = vec!["target".to_string()];
        paths.extend(record.labels.keys().map(|k| format!("labels.{k}")));
        let request = self.conn.request(UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask { paths }),
            source_date_epoch: None,
        });
        self.conn
            .images_client()
            .update(request)
            .await
            .map_err(|status| Error::rpc("Images.Update", &record.name, status))?;
        Ok(false)
    }

    /// Deletes the record called `name`; absent is fine. With `sync`, containerd
    /// also collects garbage before answering, so what only this record held is gone.
    pub async fn delete(&self, name: &str, sync: bool) -> Result<(), Error> {
        let request = self.conn.request(DeleteImageRequest {
            name: name.to_string(),
            sync,
            target: None,
        });
        match self.conn.images_client().delete(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(Error::rpc("Images.Delete", name, status)),
        }
    }
}
