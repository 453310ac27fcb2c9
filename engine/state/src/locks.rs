//! Named locks held by tasks (`lock:deployment:<name>`, `lock:release:<name>`, …), with an
//! expiry so that a lock whose holder stopped renewing it can be taken over.
//!
//! Acquiring is one atomic statement on both backends: an `INSERT … ON CONFLICT (name) DO
//! UPDATE` that takes the row only when it is free, expired, or already the caller's, and
//! returns the holder either way; the primary key on `name` makes concurrent acquirers
//! serialize on the row.

use std::time::Duration;

use super::sql::{Columns, Conn, params};
use super::{Object, State, StateError, TaskId, Violation, now, seconds_ceil};

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub name: String,
    pub task_id: TaskId,
    /// Seconds since the Unix epoch; from then on another task may take the lock.
    pub expires_at: i64,
}

/// Locks; see [`State::locks`].
#[derive(Clone, Copy, Debug)]
pub struct Locks<'a> {
    pub(super) state: &'a State,
}

impl Locks<'_> {
    /// Takes the lock `name` for `task_id` until `ttl` from now, if it is free, expired, or
    /// already held by `task_id` (then its expiry is extended). Fails with
    /// [`StateError::Locked`] naming the holder otherwise, and [`StateError::NotFound`] if
    /// the task is not recorded.
    pub async fn acquire(
        &self,
        name: &str,
        task_id: TaskId,
        ttl: Duration,
    ) -> Result<Lock, StateError> {
        let ttl = seconds_ceil(ttl);
        on_pool!(
            self.state,
            format!("acquiring lock '{name}' for task {task_id}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let time = now();
                let expires_at = time.saturating_add(ttl);
                // On conflict the row is always "updated", to itself when the lock is not
                // ours to take, so that RETURNING names the holder either way.
                let holder = conn
                    .row(
                        "INSERT INTO locks (name, task_id, expires_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO UPDATE SET \
                         task_id = CASE WHEN locks.expires_at <= $4 \
                         OR locks.task_id = excluded.task_id \
                         THEN excluded.task_id ELSE locks.task_id END, \
                         expires_at = CASE WHEN locks.expires_at <= $4 \
                         OR locks.task_id = excluded.task_id \
                         THEN excluded.expires_at ELSE locks.expires_at END \
                         RETURNING task_id",
                        params![name, task_id.0, expires_at, time],
                    )
                    .await
                    .missing_as(|| Object::Task { id: task_id })?
                    .int("task_id")?;
                if holder != task_id.0 {
                    return Err(StateError::Locked {
                        name: name.to_string(),
                        by_task: TaskId(holder),
                    }
                    .into());
                }
                Ok(Lock {
                    name: name.to_string(),
                    task_id,
                    expires_at,
                })
            }
        )
    }

    /// Extends the lock `name` held by `task_id` to `ttl` from now. Fails with
    /// [`StateError::LockLost`] if the task no longer holds it (released, or expired and
    /// taken over by another task); a lock that expired without being taken is renewed.
    pub async fn renew(
        &self,
        name: &str,
        task_id: TaskId,
        ttl: Duration,
    ) -> Result<Lock, StateError> {
        let expires_at = now().saturating_add(seconds_ceil(ttl));
        on_pool!(
            self.state,
            format!("renewing lock '{name}' for task {task_id}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let changed = conn
                    .run(
                        "UPDATE locks SET expires_at = $1 WHERE name = $2 AND task_id = $3",
                        params![expires_at, name, task_id.0],
                    )
                    .await?;
                if changed == 0 {
                    return Err(StateError::LockLost {
                        name: name.to_string(),
                        task_id,
                    }
                    .into());
                }
                Ok(Lock {
                    name: name.to_string(),
                    task_id,
                    expires_at,
                })
            }
        )
    }

    /// Releases the lock `name` if `task_id` holds it; returns whether it did.
    pub async fn release(&self, name: &str, task_id: TaskId) -> Result<bool, StateError> {
        on_pool!(
            self.state,
            format!("releasing lock '{name}' of task {task_id}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let changed = conn
                    .run(
                        "DELETE FROM locks WHERE name = $1 AND task_id = $2",
                        params![name, task_id.0],
                    )
                    .await?;
                Ok(changed > 0)
            }
        )
    }

    /// Releases every lock `task_id` holds; returns how many.
    pub async fn release_all_for_task(&self, task_id: TaskId) -> Result<u64, StateError> {
        on_pool!(
            self.state,
            format!("releasing the locks of task {task_id}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                Ok(conn
                    .run("DELETE FROM locks WHERE task_id = $1", params![task_id.0])
                    .await?)
            }
        )
    }

    /// The locks held now (not expired), by name.
    pub async fn list(&self) -> Result<Vec<Lock>, StateError> {
        let time = now();
        on_pool!(self.state, "listing locks".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let rows = conn
                .rows(
                    "SELECT name, task_id, expires_at FROM locks WHERE expires_at > $1 \
                     ORDER BY name",
                    params![time],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    Ok(Lock {
                        name: row.text("name")?,
                        task_id: TaskId(row.int("task_id")?),
                        expires_at: row.int("expires_at")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }
}
