//! How handlers answer: a contract type as JSON, a queued task as `202`, or a [`Failure`]
//! that carries the contract's one error shape ([`ApiError`]) and so its status.
//!
//! Typed errors of the layers below are classified here, once: not found 404, in use or
//! already there 409, locked 409 with the holder, bad digests 400, too large 413, the rest
//! 500.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use director_api::error::LockHolder;
use director_api::{ApiError, ErrorCode, TaskAccepted};
use director_state::{NewTask, StateError, Task};

use super::Director;
use crate::blobstore::BlobstoreError;
use crate::tasks::{RunnerError, TaskContext, TaskError};

/// What a handler answers.
pub(super) type Reply<T> = Result<T, Failure>;

/// An error answer.
#[derive(Debug)]
pub(super) struct Failure(pub ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

impl Failure {
    pub(super) fn new(code: ErrorCode, description: impl Into<String>) -> Failure {
        Failure(ApiError::new(code, description))
    }

    pub(super) fn bad_request(description: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::BadRequest, description)
    }

    pub(super) fn not_found(description: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::NotFound, description)
    }

    pub(super) fn invalid(description: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::Invalid, description)
    }

    pub(super) fn forbidden(description: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::Forbidden, description)
    }

    pub(super) fn internal(error: impl std::fmt::Display) -> Failure {
        Failure::new(ErrorCode::Internal, error.to_string())
    }
}

impl From<StateError> for Failure {
    fn from(error: StateError) -> Failure {
        let code = match &error {
            StateError::NotFound { .. } => ErrorCode::NotFound,
            StateError::AlreadyExists { .. }
            | StateError::InUse { .. }
            | StateError::Referenced { .. } => ErrorCode::Conflict,
            StateError::Locked { name, by_task } => {
                return Failure(ApiError::locked(
                    error.to_string(),
                    LockHolder {
                        name: name.clone(),
                        task: by_task.0,
                    },
                ));
            }
            _ => ErrorCode::Internal,
        };
        Failure::new(code, error.to_string())
    }
}

impl From<BlobstoreError> for Failure {
    fn from(error: BlobstoreError) -> Failure {
        let code = match &error {
            BlobstoreError::NotFound(_) => ErrorCode::NotFound,
            BlobstoreError::InvalidId(_) | BlobstoreError::DigestMismatch { .. } => {
                ErrorCode::BadRequest
            }
            BlobstoreError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::Internal,
        };
        Failure::new(code, error.to_string())
    }
}

impl From<RunnerError> for Failure {
    fn from(error: RunnerError) -> Failure {
        match error {
            RunnerError::State(error) => error.into(),
            other => Failure::internal(other),
        }
    }
}

/// A recorded task as the contract shows it.
pub(super) fn task_view(task: &Task) -> director_api::Task {
    director_api::Task {
        id: task.id.0,
        state: task.state,
        description: task.description.clone(),
        deployment: task.deployment.clone(),
        user: task.user.clone(),
        timestamp: task.created_at,
        started_at: task.started_at,
        ended_at: task.ended_at,
        result: task.result.clone(),
        context: task.context.clone(),
    }
}

/// `202 Accepted` with the queued task: how every mutating call answers.
pub(super) fn accepted(task: &Task) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(TaskAccepted {
            task: task_view(task),
        }),
    )
        .into_response()
}

/// Queues `work` as a task and answers `202` with it.
pub(super) async fn submit<F, Fut>(director: &Director, task: NewTask, work: F) -> Reply<Response>
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, TaskError>> + Send + 'static,
{
    let task = director.runner.submit(task, work).await?;
    Ok(accepted(&task))
}

/// A task for the `admin` user.
pub(super) fn new_task(
    description: &str,
    deployment: Option<String>,
    context: serde_json::Value,
) -> NewTask {
    NewTask {
        description: description.to_string(),
        deployment,
        user: "admin".to_string(),
        context,
        director: None,
    }
}
