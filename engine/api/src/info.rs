//! `GET /info` (the only route without a token) and `GET /openapi.json`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `GET /info` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Info {
    /// The director's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `token`.
    pub user_authentication: String,
    /// `sqlite` or `postgres`.
    pub state: String,
    /// Where blobs are.
    pub blobstore: String,
    /// The message bus.
    pub bus: String,
    /// The CPI.
    pub cpi: String,
    /// Whether this is a dev director (`stop-server` may stop it).
    pub dev: bool,
}

/// A plain answer: `{"message": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// What happened.
    pub message: String,
}
