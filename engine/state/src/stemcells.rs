//! Uploaded stemcells: one row per `name/version`, with the CPI's id for its image.

use serde_json::Value;

use super::sql::{Begin, Columns, Conn, params};
use super::{Object, State, StateError, StemcellId, Violation, names, now, referenced, usage};

/// A stemcell to record, from its `stemcell.MF` and the CPI's `create_stemcell`.
#[derive(Clone, Debug)]
pub struct NewStemcell {
    pub name: String,
    pub operating_system: String,
    pub version: String,
    /// Hex sha256 of the stemcell's `image` file.
    pub sha256: String,
    pub api_version: i64,
    pub cloud_properties: Value,
    /// `stemcell_formats`.
    pub formats: Vec<String>,
    /// What `create_stemcell` returned.
    pub cid: String,
    /// The blob holding the `image` file (a row of `blobs` must exist), `None` for a
    /// light stemcell.
    pub image_blob_id: Option<String>,
}

/// A recorded stemcell.
#[derive(Clone, Debug, PartialEq)]
pub struct Stemcell {
    pub id: StemcellId,
    pub name: String,
    pub operating_system: String,
    pub version: String,
    pub sha256: String,
    pub api_version: i64,
    pub cloud_properties: Value,
    pub formats: Vec<String>,
    pub cid: String,
    pub image_blob_id: Option<String>,
    pub created_at: i64,
    /// Deployments that use this stemcell, sorted.
    pub deployments: Vec<String>,
}

/// Stemcells; see [`State::stemcells`].
#[derive(Clone, Copy, Debug)]
pub struct Stemcells<'a> {
    pub(super) state: &'a State,
}

const COLUMNS: &str = "id, name, operating_system, version, sha256, api_version, \
                       cloud_properties, formats, cid, image_blob_id, created_at";

impl Stemcells<'_> {
    /// Records a stemcell; [`StateError::AlreadyExists`] if `name/version` is recorded.
    pub async fn insert(&self, stemcell: &NewStemcell) -> Result<Stemcell, StateError> {
        let created_at = now();
        let object = || stemcell_object(&stemcell.name, &stemcell.version);
        let cloud_properties = stemcell.cloud_properties.to_string();
        let formats = Value::from(stemcell.formats.clone()).to_string();
        on_pool!(self.state, format!("inserting {}", object()), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .row(
                    "INSERT INTO stemcells (name, operating_system, version, sha256, \
                     api_version, cloud_properties, formats, cid, image_blob_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                    params![
                        &stemcell.name,
                        &stemcell.operating_system,
                        &stemcell.version,
                        &stemcell.sha256,
                        stemcell.api_version,
                        &cloud_properties,
                        &formats,
                        &stemcell.cid,
                        &stemcell.image_blob_id,
                        created_at,
                    ],
                )
                .await
                .exists_as(object)?;
            Ok(Stemcell {
                id: StemcellId(row.int("id")?),
                name: stemcell.name.clone(),
                operating_system: stemcell.operating_system.clone(),
                version: stemcell.version.clone(),
                sha256: stemcell.sha256.clone(),
                api_version: stemcell.api_version,
                cloud_properties: stemcell.cloud_properties.clone(),
                formats: stemcell.formats.clone(),
                cid: stemcell.cid.clone(),
                image_blob_id: stemcell.image_blob_id.clone(),
                created_at,
                deployments: Vec::new(),
            })
        })
    }

    /// The stemcell `name/version`, if recorded.
    pub async fn find(&self, name: &str, version: &str) -> Result<Option<Stemcell>, StateError> {
        on_pool!(
            self.state,
            format!("reading {}", stemcell_object(name, version)),
            |pool| {
                let mut transaction = pool.begin_read().await?;
                let row = transaction
                    .maybe_row(
                        &format!(
                            "SELECT {COLUMNS} FROM stemcells WHERE name = $1 AND version = $2"
                        ),
                        params![name, version],
                    )
                    .await?;
                let found = match row {
                    Some(row) => {
                        let deployments = names(
                            transaction
                                .rows(
                                    "SELECT d.name FROM deployments d \
                                     JOIN deployment_stemcells u ON u.deployment_id = d.id \
                                     WHERE u.stemcell_id = $1 ORDER BY d.name",
                                    params![row.int("id")?],
                                )
                                .await?,
                        )?;
                        Some(stemcell_from_row(&row, deployments)?)
                    }
                    None => None,
                };
                transaction.commit().await?;
                Ok(found)
            }
        )
    }

    /// Every stemcell, by name, then in upload order.
    pub async fn list(&self) -> Result<Vec<Stemcell>, StateError> {
        on_pool!(self.state, "listing stemcells".to_string(), |pool| {
            let mut transaction = pool.begin_read().await?;
            let rows = transaction
                .rows(
                    &format!("SELECT {COLUMNS} FROM stemcells ORDER BY name, id"),
                    params![],
                )
                .await?;
            let mut users = usage(
                &mut *transaction,
                "SELECT u.stemcell_id AS id, d.name FROM deployment_stemcells u \
                 JOIN deployments d ON d.id = u.deployment_id ORDER BY d.name",
            )
            .await?;
            transaction.commit().await?;
            let stemcells = rows
                .iter()
                .map(|row| {
                    let deployments = users.remove(&row.int("id")?).unwrap_or_default();
                    stemcell_from_row(row, deployments)
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok(stemcells)
        })
    }

    /// Records the CPI's id for the stemcell's image (after `create_stemcell`).
    pub async fn set_cid(&self, id: StemcellId, cid: &str) -> Result<(), StateError> {
        self.state
            .execute(
                || format!("recording the CPI id of stemcell {}", id.0),
                "UPDATE stemcells SET cid = $1 WHERE id = $2",
                params![cid, id.0],
            )
            .await
    }

    /// Deletes the stemcell `name/version`; refuses with [`StateError::InUse`] while a
    /// deployment uses it. Deleting the image from the IaaS is the caller's business (after).
    pub async fn delete(&self, name: &str, version: &str) -> Result<(), StateError> {
        let object = || stemcell_object(name, version);
        on_pool!(self.state, format!("deleting {}", object()), |pool| {
            let mut transaction = pool.begin_write().await?;
            let row = transaction
                .maybe_row(
                    "SELECT id FROM stemcells WHERE name = $1 AND version = $2",
                    params![name, version],
                )
                .await?
                .ok_or_else(|| StateError::NotFound { object: object() })?;
            let id = row.int("id")?;
            let deployments = names(
                transaction
                    .rows(
                        "SELECT d.name FROM deployments d \
                         JOIN deployment_stemcells u ON u.deployment_id = d.id \
                         WHERE u.stemcell_id = $1 ORDER BY d.name",
                        params![id],
                    )
                    .await?,
            )?;
            if !deployments.is_empty() {
                return Err(StateError::InUse {
                    object: object(),
                    deployments,
                }
                .into());
            }
            transaction
                .run("DELETE FROM stemcells WHERE id = $1", params![id])
                .await
                .map_err(|error| referenced(error, object()))?;
            transaction.commit().await?;
            Ok(())
        })
    }
}

fn stemcell_object(name: &str, version: &str) -> Object {
    Object::Stemcell {
        name: name.to_string(),
        version: version.to_string(),
    }
}

fn stemcell_from_row(
    row: &impl Columns,
    deployments: Vec<String>,
) -> Result<Stemcell, sqlx::Error> {
    Ok(Stemcell {
        id: StemcellId(row.int("id")?),
        name: row.text("name")?,
        operating_system: row.text("operating_system")?,
        version: row.text("version")?,
        sha256: row.text("sha256")?,
        api_version: row.int("api_version")?,
        cloud_properties: row.json("cloud_properties")?,
        formats: row.json("formats")?,
        cid: row.text("cid")?,
        image_blob_id: row.opt_text("image_blob_id")?,
        created_at: row.int("created_at")?,
        deployments,
    })
}
