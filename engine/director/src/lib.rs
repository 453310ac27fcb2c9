//! The director: the server behind `director serve` and the client side of the `director`
//! CLI.
//!
//! The pure work (manifests, interpolation, releases, planning) is `director_core`; the state
//! database is `director_state`; the bus to the agents is `director_bus`. This crate puts
//! them to work: [`api`] is the HTTP API (the only module that knows routes), [`tasks`] runs
//! every mutating call as a task with locks and an event log, [`uploads`] takes releases and
//! stemcells in, [`ops`] deploys and runs the day-to-day verbs (compilation, the rolling
//! updater, VMs, errands, logs) against a CPI, [`blobstore`] keeps content-addressed blobs,
//! [`config`] reads `director.yml` and the CLI's config, and [`client`] is the CLI's side of
//! the API.

pub mod api;
pub mod blobstore;
pub mod client;
pub mod config;
pub mod dns;
pub mod health;
pub mod ops;
pub mod tasks;
pub mod uploads;
