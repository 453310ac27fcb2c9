//! The director's pure core.
//!
//! The pipeline reads left to right: [`yaml`] turns text into spanned trees, [`interpolate`]
//! applies go-patch ops files and `((variables))`, [`variables`] generates the missing
//! credentials of a vars store, [`manifest`] types and validates deployment manifests, cloud
//! configs and runtime configs, [`diff`] shows what changes between two manifests, with
//! secrets redacted, [`render`] renders job templates and [`deploy`] plans a deploy from
//! what is desired and what is recorded. Everything here is pure: no network, no async
//! runtime, no clock except where a certificate needs one, and file IO only at the edges
//! (`vars_store`, reading inputs).
//!
//! Beside the pipeline, [`release`] reads BOSH release directories, fingerprints and builds
//! their jobs and packages, and checks uploaded release tarballs; [`archive`] reads untrusted
//! `.tgz` files safely and writes reproducible ones; [`stemcell`] reads `stemcell.MF`, orders
//! stemcell versions and checks uploaded stemcell tarballs. They work on files by nature.
//!
//! **Invariant:** no tokio, reqwest, async-nats, sqlx, axum or hyper in this crate's
//! dependency tree (`cargo tree -p director-core -e normal`).

pub mod archive;
pub mod deploy;
pub mod diagnostics;
pub mod diff;
pub mod interpolate;
pub mod manifest;
pub mod release;
pub mod render;
pub mod stemcell;
pub mod template;
pub mod variables;
pub mod yaml;
