//! The director's HTTP API contract.
//!
//! Every route's request and answer is a type here: the server builds its JSON from these
//! types and the CLI (and the cluster broker) decode into them through [`client::Client`];
//! nothing on either side reads fields out of untyped JSON. Errors are one shape,
//! [`ApiError`] (`{code, description, details}`), whose code fixes the HTTP status.
//! [`openapi::document`] is the OpenAPI 3 document of it all, served at `GET /openapi.json`
//! and checked in as `docs/openapi.json`.
//!
//! **Invariant:** the types are serde only; IO lives in [`client`] (feature `client`).

#[cfg(feature = "client")]
pub mod client;
pub mod deployments;
pub mod error;
pub mod info;
pub mod openapi;
pub mod releases;
pub mod tasks;

pub use deployments::{ConfigKind, StateChange};
pub use error::{ApiError, ErrorCode};
pub use info::{ChallengeProof, ChallengeRequest, Info, Message};
pub use tasks::{Task, TaskAccepted, TaskState};
