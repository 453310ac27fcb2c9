//! The stemcells a deploy's VMs boot from, as the CPI knows them. An upload gives the CPI the
//! stemcell (`uploads::import_stemcell`); one recorded by an older director without a CPI id
//! is given to the CPI (`create_stemcell`) the first time a deploy uses it, and its CPI id
//! recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Services;
use crate::blobstore::{BlobId, BlobstoreError};
use director_core::stemcell::StemcellKey;
use director_state::{StateError, Stemcell};

/// The CPI's ids of stemcells, by name and version.
pub type StemcellCids = BTreeMap<StemcellKey, String>;

/// Why a stemcell could not be given to the CPI.
#[derive(Debug, thiserror::Error)]
pub enum StemcellCidError {
    /// A light stemcell (or a broken record) has no image.
    #[error(
        "stemcell {stemcell} has no image to give the CPI (a light stemcell for another IaaS?)"
    )]
    NoImage {
        /// The stemcell.
        stemcell: StemcellKey,
    },
    /// The recorded image blob id is not one.
    #[error("{source}")]
    ImageId {
        /// The stemcell.
        stemcell: StemcellKey,
        /// Why.
        source: BlobstoreError,
    },
    /// The image could not be read from the blobstore.
    #[error("reading the image of stemcell {stemcell}: {source}")]
    ReadImage {
        /// The stemcell.
        stemcell: StemcellKey,
        /// Why.
        source: BlobstoreError,
    },
    /// The CPI's `create_stemcell` failed.
    #[error("the CPI could not take stemcell {stemcell}: {source}")]
    Create {
        /// The stemcell.
        stemcell: StemcellKey,
        /// Why.
        source: cpi::CpiError,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] Box<StateError>),
}

impl From<StateError> for StemcellCidError {
    fn from(error: StateError) -> StemcellCidError {
        StemcellCidError::State(Box::new(error))
    }
}

/// The key of a stemcell row.
pub fn stemcell_key(stemcell: &Stemcell) -> StemcellKey {
    StemcellKey::new(&stemcell.name, &stemcell.version)
}

/// Makes sure the CPI has every stemcell the deploy uses; returns their ids.
pub async fn ensure_stemcells(
    services: &Services,
    stemcells: impl IntoIterator<Item = &Stemcell>,
    staging: &Path,
) -> Result<StemcellCids, StemcellCidError> {
    let mut cids = StemcellCids::new();
    for stemcell in stemcells {
        let key = stemcell_key(stemcell);
        if cids.contains_key(&key) {
            continue;
        }
        let cid = if stemcell.cid.is_empty() {
            let blob =
                stemcell
                    .image_blob_id
                    .as_ref()
                    .ok_or_else(|| StemcellCidError::NoImage {
                        stemcell: key.clone(),
                    })?;
            let id = BlobId::parse(blob).map_err(|source| StemcellCidError::ImageId {
                stemcell: key.clone(),
                source,
            })?;
            let path: PathBuf = staging.join(format!("stemcell-{}", uuid::Uuid::new_v4()));
            services
                .blobstore
                .get_to_file(&id, &path)
                .await
                .map_err(|source| StemcellCidError::ReadImage {
                    stemcell: key.clone(),
                    source,
                })?;
            let (image, properties) = (path.clone(), stemcell.cloud_properties.clone());
            let created = services
                .cpi_call(move |cpi| cpi.create_stemcell(&image, &properties))
                .await;
            let _ = tokio::fs::remove_file(&path).await;
            let cid = created.map_err(|source| StemcellCidError::Create {
                stemcell: key.clone(),
                source,
            })?;
            services
                .state
                .stemcells()
                .set_cid(stemcell.id, &cid)
                .await?;
            cid
        } else {
            stemcell.cid.clone()
        };
        cids.insert(key, cid);
    }
    Ok(cids)
}

/// The CPI ids of every uploaded stemcell the CPI has been given (the day-to-day verbs
/// work from what was applied, whose stemcells a deploy gave the CPI).
pub async fn uploaded_stemcell_cids(services: &Services) -> Result<StemcellCids, StateError> {
    Ok(services
        .state
        .stemcells()
        .list()
        .await?
        .into_iter()
        .map(|s| (stemcell_key(&s), s.cid))
        .collect())
}
