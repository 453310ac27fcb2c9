//! `GET /tasks`, `GET /tasks/{id}`, `GET /tasks/{id}/output`, `DELETE /tasks/{id}`.

use axum::Json;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use director_api::Message;
use director_api::tasks::{NEXT_OFFSET_HEADER, OutputQuery, TASK_STATE_HEADER, TasksQuery};
use director_state::{Task, TaskFilter, TaskId, TaskState};

use super::Director;
use super::reply::{Failure, Reply, task_view};
use crate::tasks::{CancelOutcome, OutputKind};

pub(super) fn routes() -> axum::Router<Director> {
    axum::Router::new()
        .route("/tasks", get(tasks))
        .route("/tasks/{id}", get(task).delete(cancel_task))
        .route("/tasks/{id}/output", get(task_output))
}

async fn tasks(
    AxumState(director): AxumState<Director>,
    Query(query): Query<TasksQuery>,
) -> Reply<Json<Vec<director_api::Task>>> {
    let mut filter = TaskFilter::recent(query.limit.unwrap_or(30).min(1000));
    if let Some(deployment) = &query.deployment {
        filter = filter.deployment(deployment);
    }
    if let Some(states) = &query.state {
        let parsed: Result<Vec<TaskState>, _> = states.split(',').map(str::parse).collect();
        let parsed = parsed.map_err(|e| Failure::bad_request(e.to_string()))?;
        filter = filter.states(&parsed);
    }
    let list = director.state.tasks().list(&filter).await?;
    Ok(Json(list.iter().map(task_view).collect()))
}

pub(super) async fn find_task(director: &Director, id: i64) -> Reply<Task> {
    director
        .state
        .tasks()
        .get(TaskId(id))
        .await?
        .ok_or_else(|| Failure::not_found(format!("task {id} not found")))
}

async fn task(
    AxumState(director): AxumState<Director>,
    Path(id): Path<i64>,
) -> Reply<Json<director_api::Task>> {
    Ok(Json(task_view(&find_task(&director, id).await?)))
}

async fn task_output(
    AxumState(director): AxumState<Director>,
    Path(id): Path<i64>,
    Query(query): Query<OutputQuery>,
) -> Reply<Response> {
    let task = find_task(&director, id).await?;
    let kind_text = query.kind.as_deref().unwrap_or("event");
    let kind = OutputKind::parse(kind_text).ok_or_else(|| {
        Failure::bad_request(format!(
            "unknown output type {kind_text:?}: expected event, debug or result"
        ))
    })?;
    let (text, next) = director
        .runner
        .files(task.id)
        .read_from(kind, query.offset.unwrap_or(0))
        .map_err(Failure::internal)?;
    let mut response = text.into_response();
    if let Ok(value) = HeaderValue::from_str(&next.to_string()) {
        response.headers_mut().insert(NEXT_OFFSET_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(task.state.as_str()) {
        response.headers_mut().insert(TASK_STATE_HEADER, value);
    }
    Ok(response)
}

async fn cancel_task(
    AxumState(director): AxumState<Director>,
    Path(id): Path<i64>,
) -> Reply<Json<Message>> {
    find_task(&director, id).await?;
    let outcome = director.runner.cancel(TaskId(id)).await?;
    let message = match outcome {
        CancelOutcome::Cancelling => format!("task {id} is cancelling: it stops at its next step"),
        CancelOutcome::AlreadyEnded(state) => {
            format!("task {id} already ended ({})", state.as_str())
        }
    };
    Ok(Json(Message { message }))
}
