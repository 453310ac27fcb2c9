//! The directors that use this database, each with a heartbeat, and the tasks each runs.
//!
//! Several directors may share one database (PostgreSQL). Each registers itself under a
//! id when it starts ([`Directors::start`]; the id is kept in the director's data
//! directory, so a restarted director knows its previous run), stamps every task it queues
//! with that id, and beats ([`Directors::beat`]) while it runs. A task is orphaned when its
//! director has not beaten for longer than a staleness bound, when it has no director (tasks
//! queued before directors were recorded), or, for a director starting, when it is its own
//! previous run's: [`Directors::start`] and [`Directors::fail_orphaned_tasks`] fail exactly
//! those, so a director starting next to a running one never fails the other's work.

use std::time::Duration;

use super::sql::{Begin, Columns, Conn, Param, params, placeholders};
use super::{State, StateError, TaskId, TaskState, now, seconds_ceil};

/// Directors; see [`State::directors`].
#[derive(Clone, Copy, Debug)]
pub struct Directors<'a> {
    pub(super) state: &'a State,
}

impl Directors<'_> {
    /// Records director `id` as alive now.
    pub async fn register(&self, id: &str) -> Result<(), StateError> {
        let time = now();
        on_pool!(self.state, format!("registering director {id}"), |pool| {
            let mut conn = pool.acquire().await?;
            conn.run(
                "INSERT INTO directors (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                params![id, time],
            )
            .await?;
            Ok(())
        })
    }

    /// Says director `id` is still alive (registering it again if its row was removed).
    pub async fn beat(&self, id: &str) -> Result<(), StateError> {
        self.register(id).await
    }

    /// Director `id` starts: fails (with `reason`) the tasks its previous run left running
    /// and those of directors silent for `stale_after`, then registers it. Returns the failed
    /// tasks, in order.
    pub async fn start(
        &self,
        id: &str,
        reason: &str,
        stale_after: Duration,
    ) -> Result<Vec<TaskId>, StateError> {
        let failed = self.fail_tasks(reason, stale_after, Some(id)).await?;
        self.register(id).await?;
        Ok(failed)
    }

    /// Marks as `error` (with `reason` as result) every task still queued, processing or
    /// cancelling whose director has not beaten for `stale_after` (or that has no director),
    /// releases the locks of tasks that are no longer running, and forgets directors silent
    /// for that long; one transaction. Returns the failed tasks, in order.
    pub async fn fail_orphaned_tasks(
        &self,
        reason: &str,
        stale_after: Duration,
    ) -> Result<Vec<TaskId>, StateError> {
        self.fail_tasks(reason, stale_after, None).await
    }

    async fn fail_tasks(
        &self,
        reason: &str,
        stale_after: Duration,
        previous_run_of: Option<&str>,
    ) -> Result<Vec<TaskId>, StateError> {
        let time = now();
        let alive_since = time.saturating_sub(seconds_ceil(stale_after));
        let running: Vec<&str> = TaskState::RUNNING.iter().map(|s| s.as_str()).collect();
        on_pool!(
            self.state,
            "failing the tasks of stopped directors".to_string(),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                let mut values = vec![
                    Param::from(TaskState::Error.as_str()),
                    Param::from(time),
                    Param::from(reason),
                    Param::from(alive_since),
                    Param::from(previous_run_of),
                ];
                values.extend(running.iter().map(|state| Param::from(*state)));
                let rows = transaction
                    .rows(
                        &format!(
                            "UPDATE tasks SET state = $1, ended_at = $2, result = $3 \
                             WHERE state IN ({}) AND (director_id IS NULL OR director_id = $5 \
                             OR director_id NOT IN \
                             (SELECT id FROM directors WHERE heartbeat_at >= $4)) RETURNING id",
                            placeholders(6, running.len())
                        ),
                        &values,
                    )
                    .await?;
                let values: Vec<Param<'_>> =
                    running.iter().map(|state| Param::from(*state)).collect();
                transaction
                    .run(
                        &format!(
                            "DELETE FROM locks WHERE task_id IN \
                             (SELECT id FROM tasks WHERE state NOT IN ({}))",
                            placeholders(1, running.len())
                        ),
                        &values,
                    )
                    .await?;
                transaction
                    .run(
                        "DELETE FROM directors WHERE heartbeat_at < $1",
                        params![alive_since],
                    )
                    .await?;
                transaction.commit().await?;
                let mut ids = rows
                    .iter()
                    .map(|row| row.int("id").map(TaskId))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                ids.sort();
                Ok(ids)
            }
        )
    }
}
