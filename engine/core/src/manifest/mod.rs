//! Typed deployment manifests, cloud configs and runtime configs, and their validation.
//!
//! Reading happens in two steps. Decoding turns a [`Node`] tree into typed values and
//! reports every type error (wrong kind of value, missing required key, unknown key as a
//! warning with a suggestion). Validation then checks what spans the document: references
//! (releases, stemcells, AZs, VM types, networks, disk types), uniqueness, update settings,
//! static IPs against subnets. All problems of all files come back together, sorted by place.
//! A [`ValidatedManifest`] exists only when there was no error.
//!
//! Invariant: pure; no IO.

mod cloud;
pub(crate) mod decode;
mod deployment;
pub mod ip;
mod resurrection;
mod validate;

pub use cloud::{
    CloudConfig, Compilation, DiskType, Named, Network, NetworkKind, RuntimeConfig, Subnet,
};
pub use decode::Spanned;
pub use deployment::{
    Addon, Count, DeploymentManifest, Features, InstanceGroup, JobRef, Lifecycle, NetworkRef,
    Placement, ReleaseRef, StemcellRef, UpdatePolicy, VariableDecl, VmResources, WatchTime,
};
pub use resurrection::{Filter, ResurrectionConfig, ResurrectionRule};

use crate::diagnostics::Diagnostics;
use crate::yaml::Node;

/// A manifest that passed validation, with the configs it was checked against and the
/// warnings found on the way.
#[derive(Clone, Debug)]
pub struct ValidatedManifest {
    /// The typed manifest.
    pub manifest: DeploymentManifest,
    /// The cloud config it was checked against.
    pub cloud_config: Option<CloudConfig>,
    /// The runtime config it was checked against.
    pub runtime_config: Option<RuntimeConfig>,
    /// Problems that do not stop a deploy.
    pub warnings: Diagnostics,
}

/// The documents to validate together (already interpolated).
#[derive(Clone, Copy, Debug, Default)]
pub struct Documents<'a> {
    /// The deployment manifest.
    pub manifest: Option<&'a Node>,
    /// The cloud config.
    pub cloud_config: Option<&'a Node>,
    /// The runtime config.
    pub runtime_config: Option<&'a Node>,
}

/// Decodes and validates the documents together; `Err` holds every diagnostic (errors and
/// warnings) when there is at least one error.
pub fn validate(documents: Documents<'_>) -> Result<ValidatedManifest, Diagnostics> {
    let mut cx = decode::Cx::default();
    let cloud_config = documents
        .cloud_config
        .and_then(|doc| cloud::decode_cloud(&mut cx, doc));
    let runtime_config = documents
        .runtime_config
        .and_then(|doc| cloud::decode_runtime(&mut cx, doc));
    let manifest = documents
        .manifest
        .and_then(|doc| deployment::decode(&mut cx, doc));
    if let Some(manifest) = &manifest {
        validate::check_manifest(&mut cx, manifest);
        if let Some(cloud) = &cloud_config {
            validate::check_against_cloud(&mut cx, manifest, cloud);
        }
    }
    let diagnostics = cx.diagnostics.sorted();
    match (manifest, diagnostics.has_errors()) {
        (Some(manifest), false) => Ok(ValidatedManifest {
            manifest,
            cloud_config,
            runtime_config,
            warnings: diagnostics,
        }),
        _ => Err(diagnostics),
    }
}

/// Decodes and checks a resurrection config.
pub fn validate_resurrection_config(
    doc: &Node,
) -> Result<(ResurrectionConfig, Diagnostics), Diagnostics> {
    let mut cx = decode::Cx::default();
    let config = resurrection::decode_resurrection(&mut cx, doc);
    let diagnostics = cx.diagnostics.sorted();
    match (config, diagnostics.has_errors()) {
        (Some(config), false) => Ok((config, diagnostics)),
        _ => Err(diagnostics),
    }
}

/// Decodes and checks a cloud config on its own.
pub fn validate_cloud_config(doc: &Node) -> Result<(CloudConfig, Diagnostics), Diagnostics> {
    let mut cx = decode::Cx::default();
    let config = cloud::decode_cloud(&mut cx, doc);
    let diagnostics = cx.diagnostics.sorted();
    match (config, diagnostics.has_errors()) {
        (Some(config), false) => Ok((config, diagnostics)),
        _ => Err(diagnostics),
    }
}

/// Decodes and checks a runtime config on its own.
pub fn validate_runtime_config(doc: &Node) -> Result<(RuntimeConfig, Diagnostics), Diagnostics> {
    let mut cx = decode::Cx::default();
    let config = cloud::decode_runtime(&mut cx, doc);
    let diagnostics = cx.diagnostics.sorted();
    match (config, diagnostics.has_errors()) {
        (Some(config), false) => Ok((config, diagnostics)),
        _ => Err(diagnostics),
    }
}
