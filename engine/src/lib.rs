//! The director engine.
//!
//! The pipeline reads left to right: [`yaml`] turns text into spanned trees, [`interpolate`]
//! applies go-patch ops files and `((variables))`, [`variables`] generates the missing
//! credentials of a vars store, [`manifest`] types and validates deployment manifests, cloud
//! configs and runtime configs, and [`diff`] shows what changes between two manifests, with
//! secrets redacted. Everything here is pure: no network, no clock except where a
//! certificate needs one, and file IO only at the edges (`vars_store`, reading inputs).

pub mod diagnostics;
pub mod diff;
pub mod interpolate;
pub mod manifest;
pub mod template;
pub mod variables;
pub mod yaml;
#[cfg(feature = "server")]
pub mod blobstore;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod tasks;
