//! The index of the blobstore: one row per stored blob, so that clean-up can find the
//! blobs nothing refers to any more.
//!
//! A blob is recorded as soon as it is stored, before anything refers to it. The references
//! are foreign keys (`jobs.blob_id`, `packages.blob_id`, `compiled_packages.blob_id`), so a
//! reference can never dangle, a referenced blob row cannot be deleted, and the reference
//! count is computed, never stored. An upload that fails after storing its blobs leaves them
//! unreferenced; clean-up deletes them once they are older than its grace period.

use super::sql::{Columns, Conn, params};
use super::{Object, State, StateError, now};

/// A blob to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBlob {
    /// Lowercase hex sha256 of the content.
    pub id: String,
    pub size: u64,
}

/// A recorded blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub id: String,
    pub size: u64,
    pub created_at: i64,
    /// How many rows refer to it (jobs, packages, compiled packages, stemcell images).
    pub references: u64,
}

/// Every reference to a blob, as `(table, column)`: the foreign keys to `blobs`. The unit
/// test below checks this list against the schema.
const REFERENCES: &[(&str, &str)] = &[
    ("jobs", "blob_id"),
    ("packages", "blob_id"),
    ("compiled_packages", "blob_id"),
    ("stemcells", "image_blob_id"),
    ("rendered_templates", "blob_id"),
];

/// Blobs; see [`State::blobs`].
#[derive(Clone, Copy, Debug)]
pub struct Blobs<'a> {
    pub(super) state: &'a State,
}

impl Blobs<'_> {
    /// Records a stored blob; recording it again is a no-op. Fails with
    /// [`StateError::Invalid`] if the id is not a lowercase hex sha256 or the blob is
    /// recorded with another size.
    pub async fn insert(&self, blob: &NewBlob) -> Result<Blob, StateError> {
        let object = || Object::Blob {
            id: blob.id.clone(),
        };
        let is_sha256 = blob.id.len() == 64
            && blob
                .id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_sha256 {
            return Err(StateError::Invalid {
                object: object(),
                reason: "a blob id is the lowercase hex sha256 of its content".to_string(),
            });
        }
        let size = i64::try_from(blob.size).map_err(|_| StateError::Invalid {
            object: object(),
            reason: format!("size {} is too large", blob.size),
        })?;
        let created_at = now();
        on_pool!(self.state, format!("recording {}", object()), |pool| {
            let mut conn = pool.acquire().await?;
            conn.run(
                "INSERT INTO blobs (id, size, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
                params![&blob.id, size, created_at],
            )
            .await?;
            let stored = conn
                .row(&select("WHERE b.id = $1"), params![&blob.id])
                .await?;
            let stored = blob_from_row(&stored)?;
            if stored.size != blob.size {
                return Err(StateError::Invalid {
                    object: object(),
                    reason: format!(
                        "recorded with size {}, stored again with size {}",
                        stored.size, blob.size
                    ),
                }
                .into());
            }
            Ok(stored)
        })
    }

    /// Every recorded blob with its reference count, by id.
    pub async fn list(&self) -> Result<Vec<Blob>, StateError> {
        on_pool!(self.state, "listing blobs".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let rows = conn.rows(&select("ORDER BY b.id"), params![]).await?;
            Ok(rows
                .iter()
                .map(blob_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// The blobs recorded before `created_before` (seconds since the epoch) that nothing
    /// refers to, by id: what clean-up may delete.
    pub async fn unreferenced(&self, created_before: i64) -> Result<Vec<Blob>, StateError> {
        let unreferenced: Vec<String> = REFERENCES
            .iter()
            .map(|(table, column)| {
                format!("NOT EXISTS (SELECT 1 FROM {table} r WHERE r.{column} = b.id)")
            })
            .collect();
        let sql = select(&format!(
            "WHERE b.created_at < $1 AND {} ORDER BY b.id",
            unreferenced.join(" AND ")
        ));
        on_pool!(
            self.state,
            "listing unreferenced blobs".to_string(),
            |pool| {
                let mut conn = pool.acquire().await?;
                let rows = conn.rows(&sql, params![created_before]).await?;
                Ok(rows
                    .iter()
                    .map(blob_from_row)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?)
            }
        )
    }

    /// Forgets a blob (after clean-up deleted it from the blobstore, or before, to claim
    /// it); returns whether it was recorded. Fails with [`StateError::Referenced`] if
    /// something refers to it, which a foreign key decides atomically.
    pub async fn delete(&self, id: &str) -> Result<bool, StateError> {
        let object = || Object::Blob { id: id.to_string() };
        on_pool!(self.state, format!("deleting {}", object()), |pool| {
            let mut conn = pool.acquire().await?;
            let changed = conn
                .run("DELETE FROM blobs WHERE id = $1", params![id])
                .await
                .map_err(|error| super::referenced(error, object()))?;
            Ok(changed > 0)
        })
    }
}

/// `SELECT` of blobs with their reference count, followed by `rest`.
fn select(rest: &str) -> String {
    let count: Vec<String> = REFERENCES
        .iter()
        .map(|(table, column)| format!("(SELECT COUNT(*) FROM {table} r WHERE r.{column} = b.id)"))
        .collect();
    format!(
        "SELECT b.id, b.size, b.created_at, {} AS refs FROM blobs b {rest}",
        count.join(" + ")
    )
}

fn blob_from_row(row: &impl Columns) -> Result<Blob, sqlx::Error> {
    Ok(Blob {
        id: row.text("id")?,
        size: row.size("size")?,
        created_at: row.int("created_at")?,
        references: row.size("refs")?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A new foreign key to `blobs` must join [`REFERENCES`], or clean-up would delete blobs
    /// that are in use (the foreign key would stop the row's deletion, not the file's).
    #[tokio::test]
    async fn references_list_every_foreign_key_to_blobs() {
        let directory = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/state.db", directory.path().display());
        let state = State::open(&url).await.unwrap();
        let super::super::Pool::Sqlite(pool) = &state.pool else {
            unreachable!("a sqlite url opens sqlite");
        };
        let mut conn = pool.acquire().await.unwrap();
        let rows = conn
            .rows(
                "SELECT m.name AS name, f.\"from\" AS column_name FROM sqlite_master m, \
                 pragma_foreign_key_list(m.name) f WHERE m.type = 'table' AND f.\"table\" = 'blobs'",
                params![],
            )
            .await
            .unwrap();
        let in_schema: BTreeSet<(String, String)> = rows
            .iter()
            .map(|row| (row.text("name").unwrap(), row.text("column_name").unwrap()))
            .collect();
        let listed: BTreeSet<(String, String)> = REFERENCES
            .iter()
            .map(|(table, column)| (table.to_string(), column.to_string()))
            .collect();
        assert_eq!(in_schema, listed);
        drop(conn);
        state.close().await;
    }
}
