//! The director engine.
//!
//! The pipeline reads left to right: [`yaml`] turns text into spanned trees, [`interpolate`]
//! applies go-patch ops files and `((variables))`, [`variables`] generates the missing
//! credentials of a vars store, [`manifest`] types and validates deployment manifests, cloud
//! configs and runtime configs, and [`diff`] shows what changes between two manifests, with
//! secrets redacted. Everything here is pure: no network, no clock except where a
//! certificate needs one, and file IO only at the edges (`vars_store`, reading inputs).
//!
//! Beside the pipeline, [`release`] reads BOSH release directories, fingerprints and builds
//! their jobs and packages, and checks uploaded release tarballs; [`archive`] reads untrusted
//! `.tgz` files safely and writes reproducible ones; [`stemcell`] reads `stemcell.MF`, orders
//! stemcell versions and checks uploaded stemcell tarballs. They work on files by nature.

#[cfg(feature = "server")]
pub mod api;
pub mod archive;
#[cfg(feature = "server")]
pub mod blobstore;
#[cfg(feature = "server")]
pub mod bus;
#[cfg(feature = "server")]
pub mod client;
#[cfg(feature = "server")]
pub mod config;
pub mod deploy;
pub mod diagnostics;
pub mod diff;
#[cfg(feature = "server")]
pub mod director;
pub mod interpolate;
pub mod manifest;
pub mod release;
pub mod render;
#[cfg(feature = "server")]
pub mod state;
pub mod stemcell;
#[cfg(feature = "server")]
pub mod tasks;
pub mod template;
#[cfg(feature = "server")]
pub mod uploads;
pub mod variables;
pub mod yaml;
