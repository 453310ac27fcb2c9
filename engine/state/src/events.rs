//! The audit trail: who did what to which object, when, in which task, and how it ended.

use serde_json::Value;

use super::sql::{Columns, Conn, params};
use super::{State, StateError, TaskId, now};

/// An event to record; its time is when it is recorded.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub user: String,
    /// `create`, `update`, `delete`, `acquire`, …
    pub action: String,
    /// `deployment`, `release`, `stemcell`, `lock`, …
    pub object_type: String,
    pub object_name: Option<String>,
    pub deployment: Option<String>,
    pub task: Option<TaskId>,
    pub context: Value,
    pub error: Option<String>,
}

/// A recorded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: i64,
    pub time: i64,
    pub user: String,
    pub action: String,
    pub object_type: String,
    pub object_name: Option<String>,
    pub deployment: Option<String>,
    pub task: Option<TaskId>,
    pub context: Value,
    pub error: Option<String>,
}

/// The audit trail; see [`State::events`].
#[derive(Clone, Copy, Debug)]
pub struct Events<'a> {
    pub(super) state: &'a State,
}

impl Events<'_> {
    /// Records an event.
    pub async fn insert(&self, event: &NewEvent) -> Result<Event, StateError> {
        let time = now();
        let context = event.context.to_string();
        on_pool!(
            self.state,
            format!("recording a {} {} event", event.action, event.object_type),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .row(
                        "INSERT INTO events (time, username, action, object_type, object_name, \
                         deployment, task_id, context, error) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                        params![
                            time,
                            &event.user,
                            &event.action,
                            &event.object_type,
                            &event.object_name,
                            &event.deployment,
                            event.task.map(|task| task.0),
                            &context,
                            &event.error,
                        ],
                    )
                    .await?;
                Ok(Event {
                    id: row.int("id")?,
                    time,
                    user: event.user.clone(),
                    action: event.action.clone(),
                    object_type: event.object_type.clone(),
                    object_name: event.object_name.clone(),
                    deployment: event.deployment.clone(),
                    task: event.task,
                    context: event.context.clone(),
                    error: event.error.clone(),
                })
            }
        )
    }

    /// The newest `limit` events, newest first.
    pub async fn list(&self, limit: u32) -> Result<Vec<Event>, StateError> {
        on_pool!(self.state, "listing events".to_string(), |pool| {
            let mut conn = pool.acquire().await?;
            let rows = conn
                .rows(
                    "SELECT id, time, username, action, object_type, object_name, deployment, \
                     task_id, context, error FROM events ORDER BY id DESC LIMIT $1",
                    params![i64::from(limit)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    Ok(Event {
                        id: row.int("id")?,
                        time: row.int("time")?,
                        user: row.text("username")?,
                        action: row.text("action")?,
                        object_type: row.text("object_type")?,
                        object_name: row.opt_text("object_name")?,
                        deployment: row.opt_text("deployment")?,
                        task: row.opt_int("task_id")?.map(TaskId),
                        context: row.json("context")?,
                        error: row.opt_text("error")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }
}
