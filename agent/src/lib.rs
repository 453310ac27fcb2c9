//! The on-VM agent and the wire types of its bus API.
//!
//! `protocol` is the contract with the director (the engine depends on it). The agent
//! itself (bus handling, installation, process supervision, hooks) arrives with deploy.

pub mod protocol;
