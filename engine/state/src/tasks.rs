//! Tasks: every mutating operation is one (decision 6). The row holds the state, the times,
//! the result and the paths of the event and debug logs, which are JSON-lines files the
//! task runner writes.
//!
//! States follow BOSH (reference §7.8): `queued → processing → done | error | timeout`,
//! with cancellation through `cancelling → cancelled` (or `queued → cancelled`). A task that
//! reaches a final state holds no lock: the transition and the release of its locks are one
//! transaction, and [`crate::Directors::fail_orphaned_tasks`] does the same for every task a
//! stopped director left behind (each task records the director that runs it).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::sql::{Begin, Columns, Conn, Param, params, placeholders};
use super::{Failure, Object, State, StateError, TaskId, now};

/// Where a task is in its life: the contract's type, stored by its name.
pub use director_api::tasks::{TaskState, UnknownTaskState};

/// The states a task may be in to move to `state`.
fn reachable_from(state: TaskState) -> &'static [TaskState] {
    use TaskState::*;
    match state {
        Queued => &[],
        Processing => &[Queued],
        Cancelling => &[Queued, Processing],
        Done | Timeout => &[Processing, Cancelling],
        Error | Cancelled => &[Queued, Processing, Cancelling],
    }
}

/// A task to queue.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// `create deployment`, `upload release`, …
    pub description: String,
    pub deployment: Option<String>,
    pub user: String,
    /// Free-form context (the client's context id, the manifest's digest, …).
    pub context: Value,
    /// The director that runs it (see [`crate::Directors`]); `None` leaves it to whichever
    /// director fails orphaned tasks next.
    pub director: Option<String>,
}

/// A recorded task.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub state: TaskState,
    pub description: String,
    pub deployment: Option<String>,
    pub user: String,
    pub created_at: i64,
    /// Set when the task starts processing.
    pub started_at: Option<i64>,
    /// Set when the task reaches a final state.
    pub ended_at: Option<i64>,
    /// The result text (`GET /tasks/<id>/output?type=result`) or the reason it failed.
    pub result: Option<String>,
    pub context: Value,
    pub event_log: Option<PathBuf>,
    pub debug_log: Option<PathBuf>,
    /// The director that runs it.
    pub director: Option<String>,
}

/// Which tasks [`Tasks::list`] returns: the newest `limit` ones matching every condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFilter {
    pub limit: u32,
    /// Only the tasks of this deployment.
    pub deployment: Option<String>,
    /// Only the tasks in one of these states (all when empty).
    pub states: Vec<TaskState>,
}

impl TaskFilter {
    /// The newest `limit` tasks.
    pub fn recent(limit: u32) -> TaskFilter {
        TaskFilter {
            limit,
            deployment: None,
            states: Vec::new(),
        }
    }

    /// Only the tasks of `deployment`.
    pub fn deployment(mut self, deployment: &str) -> TaskFilter {
        self.deployment = Some(deployment.to_string());
        self
    }

    /// Only the tasks in one of `states`.
    pub fn states(mut self, states: &[TaskState]) -> TaskFilter {
        self.states = states.to_vec();
        self
    }
}

const COLUMNS: &str = "id, state, description, deployment, username, created_at, started_at, \
                       ended_at, result, context, event_log_path, debug_log_path, director_id";

/// Tasks; see [`State::tasks`].
#[derive(Clone, Copy, Debug)]
pub struct Tasks<'a> {
    pub(super) state: &'a State,
}

impl Tasks<'_> {
    /// Queues a task.
    pub async fn create(&self, task: &NewTask) -> Result<Task, StateError> {
        let created_at = now();
        let context = task.context.to_string();
        on_pool!(
            self.state,
            format!("queueing task '{}'", task.description),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .row(
                        &format!(
                            "INSERT INTO tasks \
                             (state, description, deployment, username, created_at, context, \
                             director_id) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
                        ),
                        params![
                            TaskState::Queued.as_str(),
                            &task.description,
                            &task.deployment,
                            &task.user,
                            created_at,
                            &context,
                            &task.director,
                        ],
                    )
                    .await?;
                Ok(task_from_row(&row)?)
            }
        )
    }

    /// The task `id`, if recorded.
    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, StateError> {
        on_pool!(self.state, format!("reading task {id}"), |pool| {
            let mut conn = pool.acquire().await?;
            let row = conn
                .maybe_row(
                    &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                    params![id.0],
                )
                .await?;
            Ok(row.as_ref().map(task_from_row).transpose()?)
        })
    }

    /// Moves the task to `state`, stamping `started_at` when it starts processing and
    /// `ended_at` when it finishes, and storing `result` when given. A task that finishes
    /// releases its locks in the same transaction.
    ///
    /// Fails with [`StateError::TaskTransition`] if the life cycle does not allow the move
    /// (a finished task never changes again; `done` only comes after `processing` or
    /// `cancelling`), and [`StateError::NotFound`] if there is no such task.
    pub async fn set_state(
        &self,
        id: TaskId,
        state: TaskState,
        result: Option<&str>,
    ) -> Result<Task, StateError> {
        let time = now();
        on_pool!(
            self.state,
            format!("moving task {id} to '{state}'"),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                let task = set_state(&mut *transaction, id, state, result, time).await?;
                transaction.commit().await?;
                Ok(task)
            }
        )
    }

    /// Records where the task runner writes the task's event and debug logs.
    pub async fn set_logs(
        &self,
        id: TaskId,
        event_log: &Path,
        debug_log: &Path,
    ) -> Result<(), StateError> {
        let text = |path: &Path| {
            path.to_str()
                .map(str::to_string)
                .ok_or_else(|| StateError::Invalid {
                    object: Object::Task { id },
                    reason: format!("log path {} is not UTF-8", path.display()),
                })
        };
        let (event_log, debug_log) = (text(event_log)?, text(debug_log)?);
        on_pool!(
            self.state,
            format!("recording the log paths of task {id}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let changed = conn
                    .run(
                        "UPDATE tasks SET event_log_path = $1, debug_log_path = $2 WHERE id = $3",
                        params![&event_log, &debug_log, id.0],
                    )
                    .await?;
                if changed == 0 {
                    return Err(StateError::NotFound {
                        object: Object::Task { id },
                    }
                    .into());
                }
                Ok(())
            }
        )
    }

    /// The newest tasks matching `filter`, newest first.
    pub async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, StateError> {
        let mut conditions = Vec::new();
        let mut values: Vec<Param<'_>> = Vec::new();
        if let Some(deployment) = &filter.deployment {
            values.push(Param::from(deployment));
            conditions.push(format!("deployment = ${}", values.len()));
        }
        if !filter.states.is_empty() {
            let first = values.len() + 1;
            values.extend(
                filter
                    .states
                    .iter()
                    .map(|state| Param::from(state.as_str())),
            );
            conditions.push(format!(
                "state IN ({})",
                placeholders(first, filter.states.len())
            ));
        }
        values.push(Param::from(i64::from(filter.limit)));
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks {} ORDER BY id DESC LIMIT ${}",
            match conditions.is_empty() {
                true => String::new(),
                false => format!("WHERE {}", conditions.join(" AND ")),
            },
            values.len()
        );
        on_pool!(self.state, "listing tasks".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let rows = conn.rows(&sql, &values).await?;
            Ok(rows
                .iter()
                .map(task_from_row)
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }
}

async fn set_state<C: Conn>(
    conn: &mut C,
    id: TaskId,
    state: TaskState,
    result: Option<&str>,
    time: i64,
) -> Result<Task, Failure> {
    let from = reachable_from(state);
    let started_at = (state == TaskState::Processing).then_some(time);
    let ended_at = (!state.is_running()).then_some(time);
    let mut values = vec![
        Param::from(state.as_str()),
        Param::from(started_at),
        Param::from(ended_at),
        Param::from(result),
        Param::from(id.0),
    ];
    values.extend(from.iter().map(|state| Param::from(state.as_str())));
    let row = match from.is_empty() {
        true => None,
        false => {
            conn.maybe_row(
                &format!(
                    "UPDATE tasks SET state = $1, started_at = COALESCE(started_at, $2), \
                     ended_at = COALESCE($3, ended_at), result = COALESCE($4, result) \
                     WHERE id = $5 AND state IN ({}) RETURNING {COLUMNS}",
                    placeholders(6, from.len())
                ),
                &values,
            )
            .await?
        }
    };
    let Some(row) = row else {
        let current = conn
            .maybe_row("SELECT state FROM tasks WHERE id = $1", params![id.0])
            .await?;
        return Err(match current {
            Some(current) => StateError::TaskTransition {
                task_id: id,
                from: current.parsed("state")?,
                to: state,
            },
            None => StateError::NotFound {
                object: Object::Task { id },
            },
        }
        .into());
    };
    if !state.is_running() {
        conn.run("DELETE FROM locks WHERE task_id = $1", params![id.0])
            .await?;
    }
    Ok(task_from_row(&row)?)
}

fn task_from_row(row: &impl Columns) -> Result<Task, sqlx::Error> {
    Ok(Task {
        id: TaskId(row.int("id")?),
        state: row.parsed("state")?,
        description: row.text("description")?,
        deployment: row.opt_text("deployment")?,
        user: row.text("username")?,
        created_at: row.int("created_at")?,
        started_at: row.opt_int("started_at")?,
        ended_at: row.opt_int("ended_at")?,
        result: row.opt_text("result")?,
        context: row.json("context")?,
        event_log: row.opt_text("event_log_path")?.map(PathBuf::from),
        debug_log: row.opt_text("debug_log_path")?.map(PathBuf::from),
        director: row.opt_text("director_id")?,
    })
}
