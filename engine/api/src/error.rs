//! The one error shape of the API: every non-2xx answer is an [`ApiError`].
//!
//! `{"code": "not_found", "description": "deployment 'x' not found (see `director
//! deployments`)"}`, plus `details` when there is something a client can act on (the task
//! holding a lock). The HTTP status follows from the code ([`ErrorCode::status`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What kind of failure, which fixes the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request itself is malformed (a query parameter, a digest, a body shape).
    BadRequest,
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 403: not allowed (a blob URL without a valid signature, `/shutdown` of a
    /// production director).
    Forbidden,
    /// 404: the deployment, release, stemcell, task, disk or config does not exist.
    NotFound,
    /// 409: the request conflicts with what exists (a release in use).
    Conflict,
    /// 409: another task holds the lock (`details.lock`).
    Locked,
    /// 413: the upload is larger than the director takes.
    PayloadTooLarge,
    /// 422: the manifest or config is well-formed but wrong (`description` lists every
    /// problem with its file, line and YAML path).
    Invalid,
    /// 500: the director failed.
    Internal,
    /// 502: something the director fetched failed (an upload URL).
    BadGateway,
}

impl ErrorCode {
    /// The HTTP status of answers with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::Locked => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Invalid => 422,
            ErrorCode::Internal => 500,
            ErrorCode::BadGateway => 502,
        }
    }

    /// The code for an HTTP status, for answers that did not come as an [`ApiError`].
    pub fn from_status(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            422 => ErrorCode::Invalid,
            502 => ErrorCode::BadGateway,
            _ => ErrorCode::Internal,
        }
    }
}

/// Every error answer of the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{description}")]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong and what to do, for the user (secrets redacted).
    pub description: String,
    /// What a client can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
}

/// Details of an [`ApiError`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetails {
    /// The lock another task holds (with [`ErrorCode::Locked`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockHolder>,
}

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockHolder {
    /// The lock (`deployment:quickstart`).
    pub name: String,
    /// The task holding it.
    pub task: i64,
}

impl ApiError {
    /// An error with `code` and `description`.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> ApiError {
        ApiError {
            code,
            description: description.into(),
            details: None,
        }
    }

    /// [`ErrorCode::NotFound`].
    pub fn not_found(description: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, description)
    }

    /// [`ErrorCode::BadRequest`].
    pub fn bad_request(description: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, description)
    }

    /// [`ErrorCode::Invalid`].
    pub fn invalid(description: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Invalid, description)
    }

    /// [`ErrorCode::Internal`].
    pub fn internal(description: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, description)
    }

    /// [`ErrorCode::Locked`], naming the holder.
    pub fn locked(description: impl Into<String>, lock: LockHolder) -> ApiError {
        ApiError {
            code: ErrorCode::Locked,
            description: description.into(),
            details: Some(ErrorDetails { lock: Some(lock) }),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}
