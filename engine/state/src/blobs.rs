//! The index of the blobstore: one row per stored blob, so that clean-up can find the
//! blobs nothing refers to any more.
//!
//! A blob is recorded as soon as it is stored, before anything refers to it. The references
//! are foreign keys (`jobs.blob_id`, `packages.blob_id`, `compiled_packages.blob_id`), so a
//! reference can never dangle, a referenced blob row cannot be deleted, and the reference
//! count is computed, never stored. An upload that fails after storing its blobs leaves them
//! unreferenced; clean-up deletes them once they are older than its grace period.
//!
//! Between "stored" and "recorded" a blob is kept by a slot (`blob_slots`): an upload slot
//! is the record of one signed `PUT` URL (its purpose, size cap and expiry; taken by one
//! `PUT` and filled with the blob that `PUT` stored), a hold keeps a blob the director
//! stored itself or handed out a download link for. A slot's `blob_id` is one more foreign
//! key to `blobs`, so a held blob is referenced like any other until the slot is released or
//! expires ([`Blobs::remove_expired_slots`], which clean-up runs first). Writers record the
//! blob and its slot in one transaction *before* they put the content under its name, and
//! clean-up deletes a row and its content inside one transaction
//! ([`Blobs::delete_with`]): a writer that records a blob clean-up is deleting waits for
//! that deletion to commit and then stores the content again, so no recorded blob loses
//! its content.

use std::future::Future;

use super::sql::{Begin, Columns, Conn, Param, params, placeholders};
use super::{Failure, Object, State, StateError, TaskId, TaskState, now};

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
    ("blob_slots", "blob_id"),
];

/// A slot to record: an upload slot (`max_bytes` set, `blob` `None`) or a hold on a blob
/// (`max_bytes` `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSlot {
    /// 32 lowercase hex characters, random: the slot's name in its URL.
    pub nonce: String,
    /// What it is for (`compiled package`, `logs`…), for messages.
    pub purpose: String,
    /// The task it serves, if any (deleting the task releases it).
    pub task_id: Option<TaskId>,
    /// An upload slot's size cap in bytes.
    pub max_bytes: Option<u64>,
    /// Until when (seconds since the epoch) an upload slot can be taken.
    pub expires_at: i64,
    /// Until when the slot keeps its blob from clean-up (at least `expires_at`).
    pub held_until: i64,
}

/// A recorded slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Its random name.
    pub nonce: String,
    /// What it is for.
    pub purpose: String,
    /// The task it serves.
    pub task_id: Option<TaskId>,
    /// An upload slot's size cap in bytes; `None` for a hold.
    pub max_bytes: Option<u64>,
    /// Until when an upload slot can be taken.
    pub expires_at: i64,
    /// Until when it keeps its blob.
    pub held_until: i64,
    /// When a `PUT` took it.
    pub taken_at: Option<i64>,
    /// The blob it holds (for an upload slot: what its `PUT` stored).
    pub blob_id: Option<String>,
    pub created_at: i64,
}

/// What [`Blobs::take_slot`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// The slot is now taken by the caller.
    Slot(Slot),
    /// No such slot (never made, released, or removed after it expired).
    Unknown,
    /// Another `PUT` took it already.
    AlreadyTaken,
    /// Its time to be taken has passed.
    Expired,
}

/// [`Blobs::delete_with`] failed: the state, or the work run inside the transaction.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError<E: std::error::Error + 'static> {
    /// The state failed ([`StateError::Referenced`]: something refers to the blob).
    #[error(transparent)]
    State(#[from] StateError),
    /// The work run inside the transaction failed; the row was not deleted.
    #[error(transparent)]
    Remove(E),
}

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
        let size = blob_size(blob)?;
        let created_at = now();
        on_pool!(
            self.state,
            format!(
                "recording {}",
                Object::Blob {
                    id: blob.id.clone()
                }
            ),
            |pool| {
                let mut conn = pool.acquire().await?;
                insert_blob(&mut *conn, blob, size, created_at).await
            }
        )
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

impl Blobs<'_> {
    /// Records an upload slot (the director is about to hand out its URL).
    pub async fn open_slot(&self, slot: &NewSlot) -> Result<Slot, StateError> {
        let object = slot_object(&slot.purpose);
        check_slot(slot, &object)?;
        let max_bytes = slot
            .max_bytes
            .map(|max| i64::try_from(max).unwrap_or(i64::MAX));
        let task_id = slot.task_id.map(|id| id.0);
        let created_at = now();
        on_pool!(self.state, format!("recording {object}"), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .row(
                    &format!(
                        "INSERT INTO blob_slots (nonce, purpose, task_id, max_bytes, expires_at, \
                         held_until, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         RETURNING {SLOT_COLUMNS}"
                    ),
                    params![
                        &slot.nonce,
                        &slot.purpose,
                        task_id,
                        max_bytes,
                        slot.expires_at,
                        slot.held_until,
                        created_at
                    ],
                )
                .await?;
            Ok(slot_from_row(&row)?)
        })
    }

    /// Records `blob` and a hold on it, in one transaction: from now on clean-up keeps the
    /// blob until the hold is released or `hold.held_until` passes. Call it *before* putting
    /// the content under its name (see the module's documentation).
    pub async fn hold(&self, blob: &NewBlob, hold: &NewSlot) -> Result<Blob, StateError> {
        let object = slot_object(&hold.purpose);
        check_slot(hold, &object)?;
        let size = blob_size(blob)?;
        let task_id = hold.task_id.map(|id| id.0);
        let created_at = now();
        on_pool!(self.state, format!("recording {object}"), |pool| {
            let mut transaction = pool.begin_write().await?;
            let stored = insert_blob(&mut *transaction, blob, size, created_at).await?;
            transaction
                .run(
                    "INSERT INTO blob_slots (nonce, purpose, task_id, expires_at, held_until, \
                     taken_at, blob_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $6)",
                    params![
                        &hold.nonce,
                        &hold.purpose,
                        task_id,
                        hold.expires_at,
                        hold.held_until,
                        created_at,
                        &blob.id
                    ],
                )
                .await?;
            let stored = transaction
                .row(&select("WHERE b.id = $1"), params![&stored.id])
                .await?;
            transaction.commit().await?;
            Ok(blob_from_row(&stored)?)
        })
    }

    /// Holds a blob that is already recorded (a download link handed out for it); answers
    /// false, holding nothing, when the blob is not recorded.
    pub async fn hold_recorded(&self, id: &str, hold: &NewSlot) -> Result<bool, StateError> {
        let object = slot_object(&hold.purpose);
        check_slot(hold, &object)?;
        let task_id = hold.task_id.map(|id| id.0);
        let created_at = now();
        on_pool!(self.state, format!("recording {object}"), |pool| {
            let mut conn = pool.acquire().await?;
            let changed = conn
                .run(
                    "INSERT INTO blob_slots (nonce, purpose, task_id, expires_at, held_until, \
                     taken_at, blob_id, created_at) SELECT $1, $2, $3, $4, $5, $6, b.id, $6 \
                     FROM blobs b WHERE b.id = $7",
                    params![
                        &hold.nonce,
                        &hold.purpose,
                        task_id,
                        hold.expires_at,
                        hold.held_until,
                        created_at,
                        id
                    ],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    /// Takes an upload slot for one `PUT`, atomically: only one caller ever gets
    /// [`Taken::Slot`] for a nonce (until [`Blobs::give_back_slot`]).
    pub async fn take_slot(&self, nonce: &str) -> Result<Taken, StateError> {
        let at = now();
        on_pool!(self.state, "taking an upload slot".to_string(), |pool| {
            let mut transaction = pool.begin_write().await?;
            let taken = transaction
                .maybe_row(
                    &format!(
                        "UPDATE blob_slots SET taken_at = $2 WHERE nonce = $1 \
                         AND max_bytes IS NOT NULL AND taken_at IS NULL AND expires_at >= $2 \
                         RETURNING {SLOT_COLUMNS}"
                    ),
                    params![nonce, at],
                )
                .await?;
            let outcome = match taken {
                Some(row) => Taken::Slot(slot_from_row(&row)?),
                None => {
                    let existing = transaction
                        .maybe_row(
                            &format!(
                                "SELECT {SLOT_COLUMNS} FROM blob_slots \
                                 WHERE nonce = $1 AND max_bytes IS NOT NULL"
                            ),
                            params![nonce],
                        )
                        .await?;
                    match existing.map(|row| slot_from_row(&row)).transpose()? {
                        None => Taken::Unknown,
                        Some(slot) if slot.taken_at.is_some() => Taken::AlreadyTaken,
                        Some(_) => Taken::Expired,
                    }
                }
            };
            transaction.commit().await?;
            Ok(outcome)
        })
    }

    /// Gives back a taken upload slot whose `PUT` failed before it stored anything, so the
    /// agent may try again with the same URL.
    pub async fn give_back_slot(&self, nonce: &str) -> Result<(), StateError> {
        self.state
            .execute(
                || "giving back an upload slot".to_string(),
                "UPDATE blob_slots SET taken_at = NULL WHERE nonce = $1 AND blob_id IS NULL",
                params![nonce],
            )
            .await
    }

    /// Records `blob`, which the `PUT` that took slot `nonce` stored, and fills the slot with
    /// it, in one transaction (before the content is put under its name). Fails with
    /// [`StateError::NotFound`] if the slot is gone, [`StateError::Invalid`] if it is
    /// filled already.
    pub async fn fill_slot(&self, nonce: &str, blob: &NewBlob) -> Result<Blob, StateError> {
        let size = blob_size(blob)?;
        let created_at = now();
        on_pool!(self.state, "filling an upload slot".to_string(), |pool| {
            let mut transaction = pool.begin_write().await?;
            let stored = insert_blob(&mut *transaction, blob, size, created_at).await?;
            let filled = transaction
                .run(
                    "UPDATE blob_slots SET blob_id = $2 WHERE nonce = $1 \
                     AND taken_at IS NOT NULL AND blob_id IS NULL",
                    params![nonce, &blob.id],
                )
                .await?;
            if filled == 0 {
                return Err(StateError::Invalid {
                    object: slot_object("an upload"),
                    reason: "the upload slot is gone or was filled already".to_string(),
                }
                .into());
            }
            let stored = transaction
                .row(&select("WHERE b.id = $1"), params![&stored.id])
                .await?;
            transaction.commit().await?;
            Ok(blob_from_row(&stored)?)
        })
    }

    /// The slot `nonce`, if it is recorded.
    pub async fn slot(&self, nonce: &str) -> Result<Option<Slot>, StateError> {
        on_pool!(self.state, "reading an upload slot".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .maybe_row(
                    &format!("SELECT {SLOT_COLUMNS} FROM blob_slots WHERE nonce = $1"),
                    params![nonce],
                )
                .await?;
            Ok(row.map(|row| slot_from_row(&row)).transpose()?)
        })
    }

    /// Releases a slot or hold (its blob's real record landed, or it is no longer needed);
    /// answers whether it was there.
    pub async fn release_slot(&self, nonce: &str) -> Result<bool, StateError> {
        on_pool!(self.state, "releasing a blob slot".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let changed = conn
                .run("DELETE FROM blob_slots WHERE nonce = $1", params![nonce])
                .await?;
            Ok(changed > 0)
        })
    }

    /// Removes the slots whose `held_until` is before `now` (seconds since the epoch) and
    /// those of a task that has ended (its records refer to what it kept; a failed task's
    /// blobs are garbage): their blobs are then kept only by real records. Answers how many
    /// went.
    pub async fn remove_expired_slots(&self, now: i64) -> Result<u64, StateError> {
        let running: Vec<&str> = TaskState::RUNNING.iter().map(|s| s.as_str()).collect();
        on_pool!(
            self.state,
            "removing expired blob slots".to_string(),
            |pool| {
                let mut conn = pool.acquire().await?;
                let mut values = vec![Param::from(now)];
                values.extend(running.iter().map(|state| Param::from(*state)));
                Ok(conn
                    .run(
                        &format!(
                            "DELETE FROM blob_slots WHERE held_until < $1 OR task_id IN \
                             (SELECT id FROM tasks WHERE state NOT IN ({}))",
                            placeholders(2, running.len())
                        ),
                        &values,
                    )
                    .await?)
            }
        )
    }

    /// Forgets an unreferenced blob and runs `remove` (deleting its content) inside the same
    /// transaction, committed only when `remove` succeeded. A writer recording the same blob
    /// meanwhile waits for the commit and then stores the content again; see the module's
    /// documentation. Answers whether the blob was recorded; fails with
    /// [`StateError::Referenced`] (nothing deleted, `remove` not run) if anything refers to
    /// it.
    pub async fn delete_with<F, Fut, E>(&self, id: &str, remove: F) -> Result<bool, DeleteError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::error::Error + 'static,
    {
        let object = || Object::Blob { id: id.to_string() };
        let mut removal = None;
        let outcome = on_pool!(self.state, format!("deleting {}", object()), |pool| {
            let mut transaction = pool.begin_write().await?;
            let changed = transaction
                .run("DELETE FROM blobs WHERE id = $1", params![id])
                .await
                .map_err(|error| super::referenced(error, object()))?;
            if changed == 0 {
                return Ok(false);
            }
            if let Err(error) = remove().await {
                removal = Some(error);
                transaction.rollback().await?;
                return Ok(false);
            }
            transaction.commit().await?;
            Ok(true)
        });
        match (outcome, removal) {
            (_, Some(error)) => Err(DeleteError::Remove(error)),
            (outcome, None) => Ok(outcome?),
        }
    }
}

const SLOT_COLUMNS: &str = "nonce, purpose, task_id, max_bytes, expires_at, held_until, \
                            taken_at, blob_id, created_at";

fn slot_object(purpose: &str) -> Object {
    Object::BlobSlot {
        purpose: purpose.to_string(),
    }
}

fn check_slot(slot: &NewSlot, object: &Object) -> Result<(), StateError> {
    let invalid = |reason: &str| StateError::Invalid {
        object: object.clone(),
        reason: reason.to_string(),
    };
    if slot.nonce.len() != 32 || !slot.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("a slot's nonce is 32 hex characters"));
    }
    if slot.held_until < slot.expires_at {
        return Err(invalid(
            "a slot must hold its blob at least until it expires",
        ));
    }
    Ok(())
}

fn blob_size(blob: &NewBlob) -> Result<i64, StateError> {
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
    i64::try_from(blob.size).map_err(|_| StateError::Invalid {
        object: object(),
        reason: format!("size {} is too large", blob.size),
    })
}

/// Inserts a blob row (a no-op when it is there with the same size) and answers it.
async fn insert_blob(
    conn: &mut impl Conn,
    blob: &NewBlob,
    size: i64,
    created_at: i64,
) -> Result<Blob, Failure> {
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
            object: Object::Blob {
                id: blob.id.clone(),
            },
            reason: format!(
                "recorded with size {}, stored again with size {}",
                stored.size, blob.size
            ),
        }
        .into());
    }
    Ok(stored)
}

fn slot_from_row(row: &impl Columns) -> Result<Slot, sqlx::Error> {
    Ok(Slot {
        nonce: row.text("nonce")?,
        purpose: row.text("purpose")?,
        task_id: row.opt_int("task_id")?.map(TaskId),
        max_bytes: row
            .opt_int("max_bytes")?
            .map(|max| u64::try_from(max).unwrap_or(0)),
        expires_at: row.int("expires_at")?,
        held_until: row.int("held_until")?,
        taken_at: row.opt_int("taken_at")?,
        blob_id: row.opt_text("blob_id")?,
        created_at: row.int("created_at")?,
    })
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
