//! Links: which provider each consumer gets (BOSH's rules, reference §3.6).
//!
//! 1. Explicit (`consumes: {x: {from: alias}}`): the provider whose alias (`as`, else the
//!    link name) is `from` and whose type is the consumer's; with `deployment: other`, a
//!    `shared` provider of that deployment.
//! 2. Implicit (the manifest does not mention the link): the only provider of that type in
//!    the deployment; none is an error unless the link is optional, several are an error.
//! 3. `provides: {x: nil}` blocks a provider; `consumes: {x: nil}` blocks an optional consumer.
//!
//! A link's value is the provider group's instances (with addresses), and the provider job's
//! properties that its `provides` exports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::desired::{DesiredDeployment, DesiredGroup, DesiredJob};
use super::dns;
use super::placement::{GroupPlacement, PlacedInstance};
use crate::render::{LinkInstance, LinkValue, effective_properties, link_properties};

/// A link a deployment provides, as other deployments see it (stored after each deploy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProvidedLink {
    /// The alias consumers name (`as`, else the link's name).
    pub alias: String,
    /// The link type.
    #[serde(rename = "type")]
    pub link_type: String,
    /// Whether other deployments may consume it.
    pub shared: bool,
    /// Providing instance group.
    pub instance_group: String,
    /// Providing job.
    pub job: String,
    /// What consumers get.
    pub value: StoredLinkValue,
}

/// [`LinkValue`] in a form that survives a round trip through the database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredLinkValue {
    /// Address of the group.
    pub address: String,
    /// Instances: `(name, id, index, az, address, bootstrap)`.
    pub instances: Vec<(String, String, u32, Option<String>, String, bool)>,
    /// Exported properties.
    pub properties: serde_json::Value,
    /// Providing deployment.
    pub deployment_name: String,
}

impl StoredLinkValue {
    fn from_value(value: &LinkValue) -> StoredLinkValue {
        StoredLinkValue {
            address: value.address.clone(),
            instances: value
                .instances
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        i.id.clone(),
                        i.index,
                        i.az.clone(),
                        i.address.clone(),
                        i.bootstrap,
                    )
                })
                .collect(),
            properties: value.properties.clone(),
            deployment_name: value.deployment_name.clone(),
        }
    }

    fn to_value(&self, instance_group: &str) -> LinkValue {
        LinkValue {
            address: self.address.clone(),
            instances: self
                .instances
                .iter()
                .map(|(name, id, index, az, address, bootstrap)| LinkInstance {
                    name: name.clone(),
                    id: id.clone(),
                    index: *index,
                    az: az.clone(),
                    address: address.clone(),
                    bootstrap: *bootstrap,
                })
                .collect(),
            properties: self.properties.clone(),
            deployment_name: self.deployment_name.clone(),
            instance_group: instance_group.to_string(),
        }
    }
}

/// The links every job of every group consumes: `(group, job)` → link name → value.
pub type ResolvedLinks = BTreeMap<(String, String), BTreeMap<String, LinkValue>>;

/// What link resolution yields.
#[derive(Clone, Debug, Default)]
pub struct Links {
    /// Consumed links.
    pub consumed: ResolvedLinks,
    /// Everything this deployment provides (to store for other deployments).
    pub provided: Vec<ProvidedLink>,
}

struct Provider<'a> {
    group: &'a DesiredGroup,
    job: &'a DesiredJob,
    alias: String,
    link_type: String,
    value: LinkValue,
    shared: bool,
}

/// The instances of a link and the group's address: IPs on `network` (else each instance's
/// address), or with `use_dns_addresses` their DNS names and the group's health-aware query
/// name.
fn link_addresses(
    desired: &DesiredDeployment,
    group: &DesiredGroup,
    instances: &[PlacedInstance],
    network: Option<&str>,
) -> (Vec<LinkInstance>, String) {
    let dns_network = |instance: &PlacedInstance| -> String {
        network
            .or_else(|| dns::address_network(instance))
            .unwrap_or_default()
            .to_string()
    };
    let link_instances: Vec<LinkInstance> = instances
        .iter()
        .map(|instance| LinkInstance {
            name: group.name.clone(),
            id: instance.uuid.clone(),
            index: instance.index,
            az: instance.az.clone(),
            address: if desired.use_dns_addresses {
                dns::instance_name(
                    &instance.uuid,
                    &group.name,
                    &dns_network(instance),
                    &desired.name,
                )
            } else {
                match network {
                    Some(network) => instance
                        .networks
                        .get(network)
                        .and_then(|n| n.ip)
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                    None => instance.address(),
                }
            },
            bootstrap: instance.bootstrap,
        })
        .collect();
    let address = if desired.use_dns_addresses {
        instances
            .first()
            .map(|first| dns::group_query(&group.name, &dns_network(first), &desired.name))
            .unwrap_or_default()
    } else {
        link_instances
            .iter()
            .find(|i| i.bootstrap)
            .or_else(|| link_instances.first())
            .map(|i| i.address.clone())
            .unwrap_or_default()
    };
    (link_instances, address)
}

fn describe_consumer(name: &str, alias: &str, link_type: &str, job: &str, group: &str) -> String {
    format!(
        "Failed to resolve link '{name}' with alias '{alias}' and type '{link_type}' from job '{job}' in instance group '{group}'. Details below:"
    )
}

/// Resolves every link of the deployment. `placements` are by group name; `external`
/// holds what other deployments provide, by deployment name.
pub fn resolve_links(
    desired: &DesiredDeployment,
    placements: &BTreeMap<String, GroupPlacement>,
    external: &BTreeMap<String, Vec<ProvidedLink>>,
) -> Result<Links, Vec<String>> {
    let mut providers: Vec<Provider<'_>> = Vec::new();
    for group in &desired.groups {
        let instances = placements
            .get(&group.name)
            .map(|p| p.instances.as_slice())
            .unwrap_or_default();
        for job in &group.jobs {
            for decl in &job.job.provides {
                let spec = job.provides.get(&decl.name).cloned().unwrap_or_default();
                if spec.blocked {
                    continue;
                }
                let effective = effective_properties(&job.job.properties, &job.properties);
                let (link_instances, address) = link_addresses(desired, group, instances, None);
                providers.push(Provider {
                    group,
                    job,
                    alias: spec.alias.clone().unwrap_or_else(|| decl.name.clone()),
                    link_type: decl.link_type.clone(),
                    value: LinkValue {
                        address,
                        instances: link_instances,
                        properties: link_properties(&decl.properties, &effective),
                        deployment_name: desired.name.clone(),
                        instance_group: group.name.clone(),
                    },
                    shared: spec.shared,
                });
            }
        }
    }

    let mut errors = Vec::new();
    let mut consumed: ResolvedLinks = BTreeMap::new();
    for group in &desired.groups {
        for job in &group.jobs {
            let mut links = BTreeMap::new();
            for decl in &job.job.consumes {
                let spec = job.consumes.get(&decl.name);
                let alias = spec
                    .and_then(|s| s.from.clone())
                    .unwrap_or_else(|| decl.name.clone());
                let header = describe_consumer(
                    &decl.name,
                    &alias,
                    &decl.link_type,
                    &job.job.name,
                    &group.name,
                );
                if spec.is_some_and(|s| s.blocked) {
                    if !decl.optional {
                        errors.push(format!(
                            "{header}\n  - the manifest blocks it (consumes: {{{}: nil}}) but the job spec does not mark it optional",
                            decl.name
                        ));
                    }
                    continue;
                }
                let network = spec.and_then(|s| s.network.clone());
                let other_deployment = spec
                    .and_then(|s| s.deployment.clone())
                    .filter(|d| *d != desired.name);
                if let Some(deployment) = other_deployment {
                    let found = external.get(&deployment).and_then(|links| {
                        links
                            .iter()
                            .find(|l| l.alias == alias && l.link_type == decl.link_type)
                    });
                    match found {
                        Some(link) if link.shared => {
                            links.insert(decl.name.clone(), link.value.to_value(&link.instance_group));
                        }
                        Some(_) => errors.push(format!(
                            "{header}\n  - deployment '{deployment}' provides '{alias}' but does not share it (provides: {{{alias}: {{shared: true}}}})"
                        )),
                        None if decl.optional => {}
                        None => errors.push(format!(
                            "{header}\n  - deployment '{deployment}' provides no shared link '{alias}' of type '{}'",
                            decl.link_type
                        )),
                    }
                    continue;
                }
                let explicit = spec.is_some_and(|s| s.from.is_some());
                let candidates: Vec<&Provider<'_>> = providers
                    .iter()
                    .filter(|p| p.link_type == decl.link_type && (!explicit || p.alias == alias))
                    .collect();
                match candidates.as_slice() {
                    [provider] => {
                        let mut value = provider.value.clone();
                        if let Some(network) = &network {
                            let instances = placements
                                .get(&provider.group.name)
                                .map(|p| p.instances.as_slice())
                                .unwrap_or_default();
                            (value.instances, value.address) =
                                link_addresses(desired, provider.group, instances, Some(network));
                        }
                        links.insert(decl.name.clone(), value);
                    }
                    [] if decl.optional => {}
                    [] => errors.push(format!("{header}\n  - No link providers found")),
                    several => errors.push(format!(
                        "{header}\n  - Multiple link providers found:\n{}",
                        several
                            .iter()
                            .map(|p| format!(
                                "    - link provider '{}' from job '{}' in instance group '{}'",
                                p.alias, p.job.job.name, p.group.name
                            ))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )),
                }
            }
            consumed.insert((group.name.clone(), job.job.name.clone()), links);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let provided = providers
        .iter()
        .map(|p| ProvidedLink {
            alias: p.alias.clone(),
            link_type: p.link_type.clone(),
            shared: p.shared,
            instance_group: p.group.name.clone(),
            job: p.job.job.name.clone(),
            value: StoredLinkValue::from_value(&p.value),
        })
        .collect();
    Ok(Links { consumed, provided })
}
