//! Planning a deploy: from a validated manifest and what the director knows (uploaded
//! releases and stemcells, recorded instances, addresses in use) to an instance-level plan
//! with everything executing it needs (specs, rendered templates).
//!
//! The steps, each its own module: [`desired`] resolves the manifest against the catalog;
//! [`placement`] decides instances, AZs, indexes and IPs; [`links`] binds consumers to
//! providers; [`plan`] renders templates per instance, compares with what was applied and
//! orders the changes into canaries and batches. [`prepare`] runs them in order.
//!
//! Invariant: pure; no IO, no clock. Same inputs, same plan.

pub mod catalog;
pub mod desired;
pub mod dns;
pub mod links;
pub mod placement;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value as Json;

pub use catalog::{Catalog, LinkDecl, ReleaseFacts, ReleaseJob, ReleasePackage, StemcellFacts};
pub use desired::{DesiredDeployment, DesiredGroup, DesiredJob, resolve};
pub use links::{Links, ProvidedLink, resolve_links};
pub use placement::{ExistingInstance, GroupPlacement, InstanceNetwork, PlacedInstance};
pub use plan::{
    Action, GroupPlan, InstancePlan, InstanceSpec, InstanceWork, ObservedInstance, Phase, Plan,
    PlanInput, PlanOptions, Planned,
};

use crate::manifest::ValidatedManifest;

/// What the director knows about the deployment and its surroundings.
#[derive(Clone, Debug, Default)]
pub struct Surroundings {
    /// Recorded instances of this deployment by group: placement's view.
    pub existing: BTreeMap<String, Vec<ExistingInstance>>,
    /// Recorded instances of this deployment by group: the plan's view.
    pub observed: BTreeMap<String, Vec<ObservedInstance>>,
    /// `(network, ip)` held by other deployments.
    pub taken: BTreeSet<(String, IpAddr)>,
    /// Template sources by job fingerprint: file name under `templates/` → text.
    pub sources: BTreeMap<String, BTreeMap<String, String>>,
    /// What other deployments provide, by deployment name.
    pub external_links: BTreeMap<String, Vec<ProvidedLink>>,
}

/// A prepared deploy: the plan, the placements, the links, and what to apply.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The resolved deployment.
    pub desired: DesiredDeployment,
    /// Placements by group.
    pub placements: BTreeMap<String, GroupPlacement>,
    /// Links.
    pub links: Links,
    /// The plan and the per-instance work.
    pub planned: Planned,
}

/// Resolves, places, links, renders and plans. Every problem found comes back at once, as
/// lines a user can act on.
pub fn prepare(
    validated: &ValidatedManifest,
    catalog: &Catalog,
    surroundings: &Surroundings,
    options: &PlanOptions,
    new_uuid: &mut dyn FnMut() -> String,
) -> Result<Prepared, Vec<String>> {
    let desired = resolve(validated, catalog)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let empty = crate::manifest::CloudConfig::default();
    let cloud = validated.cloud_config.as_ref().unwrap_or(&empty);

    // Groups later in the manifest must not take addresses earlier ones keep, and addresses
    // the deployment's own instances hold stay theirs, so every held address of the
    // deployment is reserved for its holder before anyone allocates.
    let mut placements = BTreeMap::new();
    let mut errors = Vec::new();
    let mut taken = surroundings.taken.clone();
    let own: BTreeMap<String, BTreeSet<(String, IpAddr)>> = surroundings
        .existing
        .iter()
        .map(|(group, list)| {
            (
                group.clone(),
                list.iter()
                    .flat_map(|e| e.ips.iter().map(|(net, (ip, _))| (net.clone(), *ip)))
                    .collect(),
            )
        })
        .collect();
    for (group, held) in &own {
        if !desired.groups.iter().any(|g| &g.name == group) {
            taken.extend(held.iter().cloned()); // until the group's instances are deleted
        }
    }
    for group in &desired.groups {
        let mut others = taken.clone();
        for (name, held) in &own {
            if *name != group.name {
                others.extend(held.iter().cloned());
            }
        }
        let existing = surroundings
            .existing
            .get(&group.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match placement::place_group(group, cloud, existing, &others, new_uuid) {
            Ok(placement) => {
                for instance in &placement.instances {
                    for (net, settings) in &instance.networks {
                        if let Some(ip) = settings.ip {
                            taken.insert((net.clone(), ip));
                        }
                    }
                }
                placements.insert(group.name.clone(), placement);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let links = resolve_links(&desired, &placements, &surroundings.external_links)?;
    let az_cloud_properties: BTreeMap<String, Json> = cloud
        .azs
        .iter()
        .map(|az| {
            (
                az.name.value.clone(),
                az.cloud_properties
                    .as_ref()
                    .map(crate::yaml::Node::to_json)
                    .filter(|j| !j.is_null())
                    .unwrap_or_else(|| Json::Object(serde_json::Map::new())),
            )
        })
        .collect();
    let planned = plan::plan(&plan::PlanInput {
        desired: &desired,
        catalog,
        placements: &placements,
        links: &links,
        observed: &surroundings.observed,
        sources: &surroundings.sources,
        az_cloud_properties: &az_cloud_properties,
        options,
    })
    .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok(Prepared {
        desired,
        placements,
        links,
        planned,
    })
}

#[cfg(test)]
mod tests;
