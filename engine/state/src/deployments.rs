//! Deployments, the history of their manifests, and the release versions and stemcells
//! they use (which makes those undeletable).

use std::collections::BTreeSet;

use super::sql::{Begin, Columns, Conn, params};
use super::{
    DeploymentId, Failure, Object, ReleaseVersionId, State, StateError, StemcellId, Violation, now,
};

/// A recorded deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub name: String,
    pub created_at: i64,
}

/// One manifest a deployment was deployed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentManifest {
    pub id: i64,
    pub deployment_id: DeploymentId,
    pub created_at: i64,
    pub text: String,
}

/// Deployments; see [`State::deployments`].
#[derive(Clone, Copy, Debug)]
pub struct Deployments<'a> {
    pub(super) state: &'a State,
}

impl Deployments<'_> {
    /// Records a deployment; [`StateError::AlreadyExists`] if the name is taken.
    pub async fn create(&self, name: &str) -> Result<Deployment, StateError> {
        let created_at = now();
        let object = || deployment_object(name);
        on_pool!(self.state, format!("inserting {}", object()), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .row(
                    "INSERT INTO deployments (name, created_at) VALUES ($1, $2) RETURNING id",
                    params![name, created_at],
                )
                .await
                .exists_as(object)?;
            Ok(Deployment {
                id: DeploymentId(row.int("id")?),
                name: name.to_string(),
                created_at,
            })
        })
    }

    /// The deployment called `name`, if recorded.
    pub async fn find(&self, name: &str) -> Result<Option<Deployment>, StateError> {
        on_pool!(
            self.state,
            format!("reading {}", deployment_object(name)),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .maybe_row(
                        "SELECT id, name, created_at FROM deployments WHERE name = $1",
                        params![name],
                    )
                    .await?;
                Ok(row.as_ref().map(deployment_from_row).transpose()?)
            }
        )
    }

    /// Every deployment, by name.
    pub async fn list(&self) -> Result<Vec<Deployment>, StateError> {
        on_pool!(self.state, "listing deployments".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let rows = conn
                .rows(
                    "SELECT id, name, created_at FROM deployments ORDER BY name",
                    params![],
                )
                .await?;
            Ok(rows
                .iter()
                .map(deployment_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// Appends `text` to the deployment's manifest history; it becomes the current one.
    pub async fn add_manifest(
        &self,
        deployment: DeploymentId,
        text: &str,
    ) -> Result<DeploymentManifest, StateError> {
        let created_at = now();
        on_pool!(
            self.state,
            format!("recording a manifest of deployment {deployment}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .row(
                        "INSERT INTO deployment_manifests (deployment_id, created_at, text) \
                         VALUES ($1, $2, $3) RETURNING id",
                        params![deployment.0, created_at, text],
                    )
                    .await
                    .missing_as(|| Object::Row {
                        kind: "deployment",
                        id: deployment.0,
                    })?;
                Ok(DeploymentManifest {
                    id: row.int("id")?,
                    deployment_id: deployment,
                    created_at,
                    text: text.to_string(),
                })
            }
        )
    }

    /// The deployment's manifests, newest first (the first is the current one).
    pub async fn manifests(
        &self,
        deployment: DeploymentId,
    ) -> Result<Vec<DeploymentManifest>, StateError> {
        on_pool!(
            self.state,
            format!("reading the manifests of deployment {deployment}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let rows = conn
                    .rows(
                        "SELECT id, deployment_id, created_at, text FROM deployment_manifests \
                         WHERE deployment_id = $1 ORDER BY id DESC",
                        params![deployment.0],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        Ok(DeploymentManifest {
                            id: row.int("id")?,
                            deployment_id: DeploymentId(row.int("deployment_id")?),
                            created_at: row.int("created_at")?,
                            text: row.text("text")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        )
    }

    /// Records exactly which release versions and stemcells the deployment uses, replacing
    /// what was recorded, in one transaction. While listed here they cannot be deleted.
    pub async fn set_uses(
        &self,
        deployment: DeploymentId,
        release_versions: &[ReleaseVersionId],
        stemcells: &[StemcellId],
    ) -> Result<(), StateError> {
        let release_versions: BTreeSet<ReleaseVersionId> =
            release_versions.iter().copied().collect();
        let stemcells: BTreeSet<StemcellId> = stemcells.iter().copied().collect();
        on_pool!(
            self.state,
            format!("recording what deployment {deployment} uses"),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                set_uses(
                    &mut *transaction,
                    deployment,
                    &release_versions,
                    &stemcells,
                    true,
                )
                .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Adds release versions and stemcells to what the deployment uses, keeping what was
    /// recorded (a deploy in progress uses both the old and the new ones).
    pub async fn add_uses(
        &self,
        deployment: DeploymentId,
        release_versions: &[ReleaseVersionId],
        stemcells: &[StemcellId],
    ) -> Result<(), StateError> {
        let release_versions: BTreeSet<ReleaseVersionId> =
            release_versions.iter().copied().collect();
        let stemcells: BTreeSet<StemcellId> = stemcells.iter().copied().collect();
        on_pool!(
            self.state,
            format!("recording what deployment {deployment} uses"),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                set_uses(
                    &mut *transaction,
                    deployment,
                    &release_versions,
                    &stemcells,
                    false,
                )
                .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }

    /// Deletes a deployment's record (its instances must be gone); what it used becomes
    /// deletable.
    pub async fn delete(&self, deployment: DeploymentId) -> Result<(), StateError> {
        on_pool!(
            self.state,
            format!("deleting deployment {deployment}"),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                set_uses(
                    &mut *transaction,
                    deployment,
                    &BTreeSet::new(),
                    &BTreeSet::new(),
                    true,
                )
                .await?;
                transaction
                    .run(
                        "DELETE FROM ip_reservations WHERE deployment_id = $1",
                        params![deployment.0],
                    )
                    .await?;
                transaction
                    .run(
                        "DELETE FROM deployments WHERE id = $1",
                        params![deployment.0],
                    )
                    .await?;
                transaction.commit().await?;
                Ok(())
            }
        )
    }
}

async fn set_uses<C: Conn>(
    conn: &mut C,
    deployment: DeploymentId,
    release_versions: &BTreeSet<ReleaseVersionId>,
    stemcells: &BTreeSet<StemcellId>,
    replace: bool,
) -> Result<(), Failure> {
    let found = conn
        .maybe_row(
            "SELECT id FROM deployments WHERE id = $1",
            params![deployment.0],
        )
        .await?;
    if found.is_none() {
        return Err(StateError::NotFound {
            object: Object::Row {
                kind: "deployment",
                id: deployment.0,
            },
        }
        .into());
    }
    if replace {
        conn.run(
            "DELETE FROM deployment_release_versions WHERE deployment_id = $1",
            params![deployment.0],
        )
        .await?;
        conn.run(
            "DELETE FROM deployment_stemcells WHERE deployment_id = $1",
            params![deployment.0],
        )
        .await?;
    }
    for release_version in release_versions {
        conn.run(
            "INSERT INTO deployment_release_versions (deployment_id, release_version_id) \
             VALUES ($1, $2) ON CONFLICT DO NOTHING",
            params![deployment.0, release_version.0],
        )
        .await
        .missing_as(|| Object::Row {
            kind: "release version",
            id: release_version.0,
        })?;
    }
    for stemcell in stemcells {
        conn.run(
            "INSERT INTO deployment_stemcells (deployment_id, stemcell_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            params![deployment.0, stemcell.0],
        )
        .await
        .missing_as(|| Object::Row {
            kind: "stemcell",
            id: stemcell.0,
        })?;
    }
    Ok(())
}

fn deployment_object(name: &str) -> Object {
    Object::Deployment {
        name: name.to_string(),
    }
}

fn deployment_from_row(row: &impl Columns) -> Result<Deployment, sqlx::Error> {
    Ok(Deployment {
        id: DeploymentId(row.int("id")?),
        name: row.text("name")?,
        created_at: row.int("created_at")?,
    })
}
