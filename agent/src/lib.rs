//! The on-VM agent and the wire types of its bus API.
//!
//! `protocol` is the contract with the director (the engine depends on it). The rest is the
//! agent the `bosh-agent` binary runs on every VM:
//!
//! - pure parts: `bpm` (process definitions), `drain` (the drain script contract),
//!   `state` (process and job states, restart backoff), `vitals` (parsing `/proc`),
//!   `layout` (where things live under the root);
//! - effects: `logs` (rotating log files), `blobs` (HTTP downloads and uploads, archives),
//!   `install` (packages and rendered jobs, BOSH's layout), `supervisor` (processes),
//!   `scripts` (lifecycle scripts and drain), `compile` (`compile_package`), `disks`
//!   (persistent disks), `settings` (the settings file), `tasks` (long calls), `dns` (the
//!   deployments' names, answered from the records `sync_dns` pushes; its resolution is
//!   pure);
//! - `agent` ties them together, `actions` maps bus methods onto it and `bus` is the only
//!   module that knows NATS.

#[macro_use]
pub mod logging;

pub mod actions;
pub mod agent;
pub mod blobs;
pub mod bpm;
pub mod bus;
pub mod compile;
pub mod disks;
pub mod dns;
pub mod drain;
pub mod error;
pub mod install;
pub mod layout;
pub mod logs;
pub mod scripts;
pub mod settings;
pub mod state;
pub mod supervisor;
pub mod tasks;
pub mod vitals;

pub use agent::Agent;
pub use error::Error;
pub use layout::Layout;
