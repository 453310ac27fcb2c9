//! The director's HTTP API contract.
//!
//! The server builds every answer from these types and the CLI (and the cluster broker)
//! decode into them; nothing on either side reads fields out of untyped JSON.
//!
//! **Invariant:** serde types only here; no IO.

pub mod deployments;

pub use deployments::{ConfigKind, StateChange};
