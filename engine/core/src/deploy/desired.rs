//! The desired deployment: a validated manifest (with its cloud and runtime configs) joined
//! with the uploaded releases and stemcells it names, every reference resolved and every
//! default filled in. What the placement, links and plan steps work from.

use std::collections::BTreeMap;

use serde_json::{Map as JsonMap, Value as Json};

use super::catalog::{Catalog, ReleaseJob, StemcellFacts};
use crate::manifest::ip::{from_number, to_number};
use crate::manifest::{
    Addon, CloudConfig, Count, InstanceGroup, JobRef, Lifecycle, NetworkKind, Placement,
    ValidatedManifest, WatchTime,
};
use crate::yaml::{Node, Value};

/// How a group rolls out, with BOSH's defaults where the manifest is silent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// `canaries`.
    pub canaries: Count,
    /// `max_in_flight`.
    pub max_in_flight: Count,
    /// `canary_watch_time`.
    pub canary_watch: WatchTime,
    /// `update_watch_time`.
    pub update_watch: WatchTime,
    /// `serial`.
    pub serial: bool,
    /// `initial_deploy_az_update_strategy: parallel`.
    pub initial_parallel: bool,
}

/// A consumer's link as the manifest writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumeSpec {
    /// `consumes: {x: nil}`.
    pub blocked: bool,
    /// `from`: the provider's alias.
    pub from: Option<String>,
    /// `deployment`: a provider in another deployment.
    pub deployment: Option<String>,
    /// `network`: which of the provider's networks to take addresses from.
    pub network: Option<String>,
}

/// A provider's link as the manifest writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvideSpec {
    /// `provides: {x: nil}`.
    pub blocked: bool,
    /// `as`: the alias consumers name.
    pub alias: Option<String>,
    /// `shared`: other deployments may consume it.
    pub shared: bool,
}

/// A job of an instance group.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredJob {
    /// The release's job.
    pub job: ReleaseJob,
    /// The release version it comes from.
    pub release_version: String,
    /// The properties the manifest gives it (job, else group, else global), as JSON.
    pub properties: Json,
    /// `consumes`, by link name.
    pub consumes: BTreeMap<String, ConsumeSpec>,
    /// `provides`, by link name.
    pub provides: BTreeMap<String, ProvideSpec>,
    /// Where the job was written (`instance_groups[0].jobs[1]`, or an addon's job).
    pub path: String,
}

/// A persistent disk a group asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskRequest {
    /// Size in MB.
    pub size: u64,
    /// Cloud properties of its disk type.
    pub cloud_properties: Json,
    /// The disk type's name, if one was named.
    pub disk_type: Option<String>,
}

/// A network of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupNetwork {
    /// Network name.
    pub name: String,
    /// Static IPs, in manifest order (ranges expanded).
    pub static_ips: Vec<std::net::IpAddr>,
    /// `default` (`dns`, `gateway`): which defaults this network provides.
    pub default: Vec<String>,
}

/// An instance group, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredGroup {
    /// Name.
    pub name: String,
    /// `lifecycle`.
    pub lifecycle: Lifecycle,
    /// `instances`.
    pub instances: u32,
    /// `azs` (empty: the group has no AZ).
    pub azs: Vec<String>,
    /// Jobs: the group's, then addons'.
    pub jobs: Vec<DesiredJob>,
    /// The stemcell.
    pub stemcell: StemcellFacts,
    /// `vm_type` (or `vm_resources` as `cpu/ram/disk`).
    pub vm_type: String,
    /// Cloud properties of the VM type merged with its extensions' (AZ ones are per instance).
    pub vm_cloud_properties: Json,
    /// The persistent disk, if any.
    pub persistent_disk: Option<DiskRequest>,
    /// Networks.
    pub networks: Vec<GroupNetwork>,
    /// Rollout settings.
    pub rollout: Rollout,
    /// `env`.
    pub env: Json,
}

/// A deployment, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredDeployment {
    /// Deployment name.
    pub name: String,
    /// Instance groups, in deploy order.
    pub groups: Vec<DesiredGroup>,
    /// `(release, version)` used.
    pub releases: Vec<(String, String)>,
    /// `(name, version)` of stemcells used.
    pub stemcells: Vec<(String, String)>,
    /// `features.use_dns_addresses`: links and `spec.address` give DNS names
    /// ([`super::dns`]) instead of IPs.
    pub use_dns_addresses: bool,
}

/// A problem found while resolving; names where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveError {
    /// YAML path of what is wrong.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Deep-merges `overlay` into `base`: maps merge key by key, anything else is replaced.
pub fn deep_merge(base: &mut Json, overlay: &Json) {
    match (base, overlay) {
        (Json::Object(base), Json::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

fn json_or_empty(node: Option<&Node>) -> Json {
    match node.map(Node::to_json) {
        Some(Json::Null) | None => Json::Object(JsonMap::new()),
        Some(json) => json,
    }
}

const DEFAULT_WATCH: WatchTime = WatchTime {
    min_ms: 1000,
    max_ms: 30000,
};

fn link_specs<T>(
    links: &[(crate::manifest::Spanned<String>, Option<Node>)],
    parse: impl Fn(Option<&Node>) -> T,
) -> BTreeMap<String, T> {
    links
        .iter()
        .map(|(name, spec)| (name.value.clone(), parse(spec.as_ref())))
        .collect()
}

fn text_at(node: &Node, key: &str) -> Option<String> {
    node.get(key).and_then(Node::scalar_text)
}

/// A link entry that is absent or `nil` blocks the link.
fn consume_spec(node: Option<&Node>) -> ConsumeSpec {
    match node.filter(|n| !n.is_null()) {
        None => ConsumeSpec {
            blocked: true,
            ..ConsumeSpec::default()
        },
        Some(node) => ConsumeSpec {
            blocked: false,
            from: text_at(node, "from"),
            deployment: text_at(node, "deployment"),
            network: text_at(node, "network"),
        },
    }
}

fn provide_spec(node: Option<&Node>) -> ProvideSpec {
    match node.filter(|n| !n.is_null()) {
        None => ProvideSpec {
            blocked: true,
            ..ProvideSpec::default()
        },
        Some(node) => ProvideSpec {
            blocked: false,
            alias: text_at(node, "as"),
            shared: node
                .get("shared")
                .is_some_and(|n| matches!(n.value, Value::Bool(true))),
        },
    }
}

struct Resolver<'a> {
    validated: &'a ValidatedManifest,
    cloud: &'a CloudConfig,
    catalog: &'a Catalog,
    errors: Vec<ResolveError>,
}

impl Resolver<'_> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ResolveError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn job(
        &mut self,
        job: &JobRef,
        path: String,
        fallback_properties: Option<&Node>,
    ) -> Option<DesiredJob> {
        let name = job.name.as_ref()?.value.clone();
        let release_name = job.release.as_ref()?.value.clone();
        let Some(release) = self.catalog.releases.get(&release_name) else {
            self.error(
                &path,
                format!("release '{release_name}' is not uploaded to the director"),
            );
            return None;
        };
        let Some(spec) = release.jobs.get(&name) else {
            let known: Vec<&str> = release.jobs.keys().map(String::as_str).collect();
            self.error(
                &path,
                format!(
                    "release '{}/{}' has no job '{name}' (it has: {})",
                    release.name,
                    release.version,
                    known.join(", ")
                ),
            );
            return None;
        };
        for package in &spec.packages {
            if !release.packages.contains_key(package) {
                self.error(
                    &path,
                    format!(
                        "job '{name}' of release '{}/{}' needs package '{package}', which the release does not have",
                        release.name, release.version
                    ),
                );
            }
        }
        let properties = match &job.properties {
            Some(node) => json_or_empty(Some(node)),
            None => json_or_empty(fallback_properties),
        };
        Some(DesiredJob {
            job: spec.clone(),
            release_version: release.version.clone(),
            properties,
            consumes: link_specs(&job.consumes, consume_spec),
            provides: link_specs(&job.provides, provide_spec),
            path,
        })
    }

    fn vm_type(&mut self, group: &InstanceGroup, path: &str) -> (String, Json) {
        let mut cloud_properties = Json::Object(JsonMap::new());
        let name = if let Some(vm_type) = &group.vm_type {
            match self
                .cloud
                .vm_types
                .iter()
                .find(|t| t.name.value == vm_type.value)
            {
                Some(found) => deep_merge(
                    &mut cloud_properties,
                    &json_or_empty(found.cloud_properties.as_ref()),
                ),
                None => self.error(
                    format!("{path}.vm_type"),
                    format!("vm_type '{}' is not in the cloud config", vm_type.value),
                ),
            }
            vm_type.value.clone()
        } else if let Some(resources) = &group.vm_resources {
            format!(
                "cpu={} ram={} ephemeral_disk_size={}",
                resources.cpu.unwrap_or(0),
                resources.ram.unwrap_or(0),
                resources.ephemeral_disk_size.unwrap_or(0)
            )
        } else {
            String::new()
        };
        for extension in &group.vm_extensions {
            match self
                .cloud
                .vm_extensions
                .iter()
                .find(|e| e.name.value == extension.value)
            {
                Some(found) => deep_merge(
                    &mut cloud_properties,
                    &json_or_empty(found.cloud_properties.as_ref()),
                ),
                None => self.error(
                    format!("{path}.vm_extensions"),
                    format!(
                        "vm_extension '{}' is not in the cloud config",
                        extension.value
                    ),
                ),
            }
        }
        (name, cloud_properties)
    }

    fn disk(&mut self, group: &InstanceGroup, path: &str) -> Option<DiskRequest> {
        if let Some(size) = &group.persistent_disk {
            if size.value == 0 {
                return None;
            }
            return Some(DiskRequest {
                size: size.value,
                cloud_properties: Json::Object(JsonMap::new()),
                disk_type: None,
            });
        }
        let name = group.persistent_disk_type.as_ref()?;
        let Some(disk_type) = self
            .cloud
            .disk_types
            .iter()
            .find(|d| d.name.value == name.value)
        else {
            self.error(
                format!("{path}.persistent_disk_type"),
                format!("disk type '{}' is not in the cloud config", name.value),
            );
            return None;
        };
        Some(DiskRequest {
            size: disk_type.disk_size.unwrap_or(0),
            cloud_properties: json_or_empty(disk_type.cloud_properties.as_ref()),
            disk_type: Some(name.value.clone()),
        })
    }

    fn networks(&mut self, group: &InstanceGroup, path: &str) -> Vec<GroupNetwork> {
        let single = group.networks.len() == 1;
        let mut networks = Vec::new();
        for (i, network) in group.networks.iter().enumerate() {
            let Some(name) = &network.name else { continue };
            let Some(cloud) = self.cloud.network(&name.value) else {
                self.error(
                    format!("{path}.networks[{i}]"),
                    format!("network '{}' is not in the cloud config", name.value),
                );
                continue;
            };
            let mut static_ips = Vec::new();
            for entry in &network.static_ips {
                match crate::manifest::ip::parse_ip_entry(&entry.value) {
                    Ok((first, last)) => expand_range(first, last, &mut static_ips),
                    Err(message) => self.error(entry.path.to_string(), message),
                }
            }
            if cloud.kind == NetworkKind::Vip && static_ips.is_empty() {
                self.error(
                    format!("{path}.networks[{i}]"),
                    format!(
                        "network '{}' is a vip network: it needs static_ips",
                        name.value
                    ),
                );
            }
            let default = if single {
                vec!["dns".to_string(), "gateway".to_string()]
            } else {
                network.default.iter().map(|d| d.value.clone()).collect()
            };
            networks.push(GroupNetwork {
                name: name.value.clone(),
                static_ips,
                default,
            });
        }
        networks
    }

    fn group(&mut self, group: &InstanceGroup, addons: &[(&Addon, bool)]) -> Option<DesiredGroup> {
        let manifest = &self.validated.manifest;
        let name = group.name.as_ref()?.value.clone();
        let path = group.path.to_string();
        let group_properties = group.properties.as_ref().or(manifest.properties.as_ref());
        let mut jobs = Vec::new();
        for (j, job) in group.jobs.iter().enumerate() {
            if let Some(job) = self.job(job, format!("{path}.jobs[{j}]"), group_properties) {
                jobs.push(job);
            }
        }
        let stemcell = match group
            .stemcell
            .as_ref()
            .and_then(|alias| self.catalog.stemcells.get(&alias.value))
            .or_else(|| {
                // One stemcell and no alias: BOSH uses it.
                (self.catalog.stemcells.len() == 1)
                    .then(|| self.catalog.stemcells.values().next())
                    .flatten()
            }) {
            Some(stemcell) => stemcell.clone(),
            None => {
                self.error(
                    format!("{path}.stemcell"),
                    "names no uploaded stemcell (expected the alias of a stemcells[] entry)",
                );
                return None;
            }
        };
        let networks = self.networks(group, &path);
        for (addon, from_runtime) in addons {
            if !addon_applies(
                addon,
                *from_runtime,
                &manifest_name(self.validated),
                group,
                &jobs,
                &stemcell,
                &networks,
            ) {
                continue;
            }
            for (j, job) in addon.jobs.iter().enumerate() {
                let addon_name = addon.name.as_ref().map_or("", |n| n.value.as_str());
                let origin = if *from_runtime {
                    "runtime config"
                } else {
                    "manifest"
                };
                let job_path = format!("addon '{addon_name}' ({origin}).jobs[{j}]");
                let Some(desired) = self.job(job, job_path, None) else {
                    continue;
                };
                if jobs
                    .iter()
                    .any(|existing| existing.job.name == desired.job.name)
                {
                    self.error(
                        &desired.path,
                        format!(
                            "instance group '{name}' already has a job '{}'; an addon cannot add it twice",
                            desired.job.name
                        ),
                    );
                    continue;
                }
                jobs.push(desired);
            }
        }
        let (vm_type, vm_cloud_properties) = self.vm_type(group, &path);
        let persistent_disk = self.disk(group, &path);
        let defaults = manifest.update.clone().unwrap_or_default();
        let update = group
            .update
            .as_ref()
            .map(|u| u.merged_over(&defaults))
            .unwrap_or(defaults);
        let rollout = Rollout {
            canaries: update.canaries.unwrap_or(Count::Absolute(1)),
            max_in_flight: update.max_in_flight.unwrap_or(Count::Absolute(1)),
            canary_watch: update.canary_watch_time.unwrap_or(DEFAULT_WATCH),
            update_watch: update.update_watch_time.unwrap_or(DEFAULT_WATCH),
            serial: update.serial.unwrap_or(true),
            initial_parallel: update.initial_deploy_az_update_strategy.as_deref()
                == Some("parallel"),
        };
        Some(DesiredGroup {
            name,
            lifecycle: group.lifecycle,
            instances: group
                .instances
                .as_ref()
                .map_or(0, |n| u32::try_from(n.value).unwrap_or(u32::MAX)),
            azs: group.azs.iter().map(|a| a.value.clone()).collect(),
            jobs,
            stemcell,
            vm_type,
            vm_cloud_properties,
            persistent_disk,
            networks,
            rollout,
            env: json_or_empty(group.env.as_ref()),
        })
    }
}

fn manifest_name(validated: &ValidatedManifest) -> String {
    validated
        .manifest
        .name
        .as_ref()
        .map(|n| n.value.clone())
        .unwrap_or_default()
}

fn expand_range(first: std::net::IpAddr, last: std::net::IpAddr, into: &mut Vec<std::net::IpAddr>) {
    let (a, b) = (to_number(first), to_number(last));
    let v4 = first.is_ipv4();
    // Validation bounds static ranges by their subnets; this guards against absurd ones.
    for n in a..=b.min(a.saturating_add(65_535)) {
        into.push(from_number(n, v4));
    }
}

fn matches_placement(
    rules: &Placement,
    from_runtime: bool,
    deployment: &str,
    group: &InstanceGroup,
    jobs: &[DesiredJob],
    stemcell: &StemcellFacts,
    networks: &[GroupNetwork],
) -> bool {
    let group_name = group.name.as_ref().map_or("", |n| n.value.as_str());
    let mut checks = Vec::new();
    if from_runtime && !rules.deployments.is_empty() {
        checks.push(rules.deployments.iter().any(|d| d.value == deployment));
    }
    if !rules.instance_groups.is_empty() {
        checks.push(rules.instance_groups.iter().any(|g| g.value == group_name));
    }
    if !rules.jobs.is_empty() {
        checks.push(rules.jobs.iter().any(|(name, release)| {
            jobs.iter().any(|job| {
                name.as_ref().is_none_or(|n| n.value == job.job.name)
                    && release.as_ref().is_none_or(|r| r.value == job.job.release)
            })
        }));
    }
    if !rules.stemcell_os.is_empty() {
        checks.push(rules.stemcell_os.iter().any(|os| os.value == stemcell.os));
    }
    if !rules.networks.is_empty() {
        checks.push(
            rules
                .networks
                .iter()
                .any(|n| networks.iter().any(|g| g.name == n.value)),
        );
    }
    if let Some(lifecycle) = rules.lifecycle {
        checks.push(lifecycle == group.lifecycle);
    }
    // BOSH: every kind of rule given must match (an empty rule set matches everything).
    checks.into_iter().all(|ok| ok)
}

fn addon_applies(
    addon: &Addon,
    from_runtime: bool,
    deployment: &str,
    group: &InstanceGroup,
    jobs: &[DesiredJob],
    stemcell: &StemcellFacts,
    networks: &[GroupNetwork],
) -> bool {
    let included = match &addon.include {
        Some(rules) => matches_placement(
            rules,
            from_runtime,
            deployment,
            group,
            jobs,
            stemcell,
            networks,
        ),
        None => true,
    };
    let excluded = match &addon.exclude {
        Some(rules) => {
            let any_rule = !rules.deployments.is_empty()
                || !rules.instance_groups.is_empty()
                || !rules.jobs.is_empty()
                || !rules.stemcell_os.is_empty()
                || !rules.networks.is_empty()
                || rules.lifecycle.is_some();
            any_rule
                && matches_placement(
                    rules,
                    from_runtime,
                    deployment,
                    group,
                    jobs,
                    stemcell,
                    networks,
                )
        }
        None => false,
    };
    included && !excluded
}

/// Resolves a validated manifest against its cloud config and the uploaded releases and
/// stemcells (already resolved to versions in `catalog`). Every problem comes back at once.
pub fn resolve(
    validated: &ValidatedManifest,
    catalog: &Catalog,
) -> Result<DesiredDeployment, Vec<ResolveError>> {
    let empty = CloudConfig::default();
    let cloud = validated.cloud_config.as_ref().unwrap_or(&empty);
    let mut resolver = Resolver {
        validated,
        cloud,
        catalog,
        errors: Vec::new(),
    };
    let mut addons: Vec<(&Addon, bool)> = validated
        .manifest
        .addons
        .iter()
        .map(|addon| (addon, false))
        .collect();
    if let Some(runtime) = &validated.runtime_config {
        addons.extend(runtime.addons.iter().map(|addon| (addon, true)));
    }
    let groups: Vec<DesiredGroup> = validated
        .manifest
        .instance_groups
        .iter()
        .filter_map(|group| resolver.group(group, &addons))
        .collect();
    if !resolver.errors.is_empty() {
        return Err(resolver.errors);
    }
    let mut releases: Vec<(String, String)> = catalog
        .releases
        .values()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    releases.sort();
    let mut stemcells: Vec<(String, String)> = catalog
        .stemcells
        .values()
        .map(|s| (s.name.clone(), s.version.clone()))
        .collect();
    stemcells.sort();
    stemcells.dedup();
    Ok(DesiredDeployment {
        name: manifest_name(validated),
        groups,
        releases,
        stemcells,
        use_dns_addresses: validated.manifest.features.use_dns_addresses == Some(true),
    })
}
