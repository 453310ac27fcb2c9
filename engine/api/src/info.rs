//! `GET /info` and `POST /challenge` (the routes without a token) and `GET /openapi.json`.

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
    /// Where agents connect: the bus and the endpoint they fetch and upload blobs at
    /// (`nats://172.17.0.1:4222, blobs at http://172.17.0.1:25556`). Empty from a director
    /// older than this field.
    #[serde(default)]
    pub agents: String,
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

/// `POST /challenge`: a client's fresh random nonce (hex, 32 to 128 digits), sent without a
/// token, for the director to prove it holds the token before the client sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChallengeRequest {
    /// The nonce.
    pub nonce: String,
}

/// The director's answer to a challenge: hex HMAC-SHA256, keyed with its token, of
/// `director challenge`, its own URL and the nonce, one per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChallengeProof {
    /// The HMAC.
    pub proof: String,
}
