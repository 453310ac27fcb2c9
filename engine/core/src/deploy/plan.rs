//! The instance-level plan: for every instance, what the deploy will do (create, delete,
//! recreate, update, restart, nothing), why, and in which phase and batch.
//!
//! Each instance gets a desired [`InstanceSpec`] (stemcell, VM settings, networks, jobs,
//! packages, rendered template digests, disk). The director stores the spec it last applied
//! as the instance's observed spec; comparing the two names every difference (reference
//! §7.6), and the differences decide the least disruptive action:
//! - **recreate** the VM for stemcell, VM type or cloud properties, env or network changes,
//!   `--recreate`, or a VM that is gone;
//! - **update** in place (drain, stop, apply, start) for job, package or disk changes, or an
//!   update that did not finish;
//! - **restart** (the same steps) when only rendered templates changed;
//! - nothing otherwise.
//!
//! The order follows BOSH (§7.4): per group, changed instances grouped by AZ in the group's
//! AZ order, one [`Phase`] per step: in the first AZ the canaries go first, then each AZ's
//! remaining instances run through a pool of `max_in_flight` (a slot frees, the next
//! instance starts; no waiting for a whole batch). The `batch` label an instance gets is
//! the wave it starts in when every instance takes as long: `canary`, `batch 2`, ….
//!
//! Invariant: pure; rendering happens here too, so a dry run renders exactly what a deploy
//! would apply.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::catalog::Catalog;
use super::desired::{DesiredDeployment, DesiredGroup};
use super::links::Links;
use super::placement::{GroupPlacement, PlacedInstance};
use crate::manifest::{Count, Lifecycle};
use crate::render::{CompiledJob, InstanceContext, JobTemplates, RenderedJob};

/// The stemcell of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StemcellSpec {
    /// Name.
    pub name: String,
    /// Operating system.
    pub os: String,
    /// Version.
    pub version: String,
}

/// A network of an instance, as compared between deploys: exactly what the agent's apply
/// spec carries, so the director sends what it compared.
pub type NetworkState = agent_protocol::NetworkSpec;

/// A job of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// Job name.
    pub name: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub release_version: String,
    /// The job's fingerprint.
    pub fingerprint: String,
    /// Packages it uses.
    pub packages: Vec<String>,
}

/// A package an instance needs, identified by source (compiled builds follow from it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageState {
    /// Release it comes from.
    pub release: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// Dependency key.
    pub dependency_key: String,
}

/// A persistent disk of an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskState {
    /// Size in MB.
    pub size: u64,
    /// Cloud properties.
    pub cloud_properties: Json,
}

/// Everything about an instance that a change to requires action: what the director
/// applies, and later compares against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Stemcell.
    pub stemcell: StemcellSpec,
    /// VM type name (or resources).
    pub vm_type: String,
    /// Cloud properties of the VM (AZ, VM type, extensions merged).
    pub cloud_properties: Json,
    /// `env`.
    pub env: Json,
    /// Networks.
    pub networks: BTreeMap<String, NetworkState>,
    /// Jobs, in order.
    pub jobs: Vec<JobState>,
    /// Packages, by name.
    pub packages: BTreeMap<String, PackageState>,
    /// Rendered files' digests: job → path → sha256.
    pub templates: BTreeMap<String, BTreeMap<String, String>>,
    /// Digest of everything rendered.
    pub configuration_hash: String,
    /// Persistent disk.
    pub persistent_disk: Option<DiskState>,
}

/// What the director knows about an existing instance.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedInstance {
    /// Its id.
    pub uuid: String,
    /// Its index.
    pub index: u32,
    /// Its AZ.
    pub az: Option<String>,
    /// The spec last applied (`None`: never applied).
    pub spec: Option<InstanceSpec>,
    /// Whether it has a VM.
    pub has_vm: bool,
    /// Whether its last update finished.
    pub update_completed: bool,
    /// `started` or `stopped` (as `director stop` left it).
    pub state: String,
    /// Its persistent disk size, when it has one.
    pub disk_size: Option<u64>,
}

/// The action for an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new instance: create its VM, then apply and start.
    Create,
    /// Delete the instance (its VM; its disk is orphaned).
    Delete,
    /// Replace the VM (disks re-attached), then apply and start.
    Recreate,
    /// Drain, stop, apply new jobs/packages/disk, start.
    Update,
    /// Drain, stop, apply new configuration, start.
    Restart,
    /// Nothing to do.
    NoOp,
}

impl Action {
    /// The word the plan prints.
    pub fn word(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Recreate => "recreate",
            Action::Update => "update",
            Action::Restart => "restart",
            Action::NoOp => "no change",
        }
    }
}

/// The plan for one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstancePlan {
    /// Group name.
    pub group: String,
    /// Instance id.
    pub id: String,
    /// Index.
    pub index: u32,
    /// AZ.
    pub az: Option<String>,
    /// Bootstrap.
    pub bootstrap: bool,
    /// Action.
    pub action: Action,
    /// Why (empty for no-ops).
    pub reasons: Vec<String>,
    /// `canary`, `batch 2`, …; `None` for no-ops and deletes.
    pub batch: Option<String>,
}

impl InstancePlan {
    /// `group/id (index)`, as task events name instances.
    pub fn label(&self) -> String {
        format!("{}/{} ({})", self.group, self.id, self.index)
    }
}

/// The plan for one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupPlan {
    /// Name.
    pub name: String,
    /// Whether the group updates on its own (`serial`), or alongside the groups next to it
    /// that are not serial either.
    pub serial: bool,
    /// `lifecycle: errand`.
    pub errand: bool,
    /// Canaries, resolved.
    pub canaries: u64,
    /// Every instance the group will have, by index.
    pub instances: Vec<InstancePlan>,
    /// Instances to delete.
    pub deleted: Vec<InstancePlan>,
    /// Phases in order; the first is the canaries when there are any.
    pub phases: Vec<Phase>,
}

impl GroupPlan {
    /// How many instances the group's update touches.
    pub fn changed(&self) -> usize {
        self.phases.iter().map(|p| p.instances.len()).sum()
    }
}

/// Instances that update through one pool: at most `max_in_flight` at a time, the next one
/// starting as soon as a slot frees. A phase ends when all of its instances have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// Whether these are the canaries.
    pub canary: bool,
    /// The pool's size.
    pub max_in_flight: usize,
    /// Instance ids, in the order they start.
    pub instances: Vec<String>,
}

/// A deploy's plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Deployment name.
    pub deployment: String,
    /// Groups, in deploy order.
    pub groups: Vec<GroupPlan>,
    /// Instances of groups the manifest no longer has.
    pub deleted_groups: Vec<InstancePlan>,
    /// Variables the director will generate.
    pub variables_to_generate: Vec<String>,
    /// Whether the manifest text differs from the deployed one.
    pub manifest_changed: bool,
}

impl Plan {
    /// Whether the deploy would change anything.
    pub fn has_changes(&self) -> bool {
        self.manifest_changed
            || !self.variables_to_generate.is_empty()
            || !self.deleted_groups.is_empty()
            || self.groups.iter().any(|g| {
                !g.deleted.is_empty() || g.instances.iter().any(|i| i.action != Action::NoOp)
            })
    }

    /// Every instance plan of every group (deletes included).
    pub fn all_instances(&self) -> impl Iterator<Item = &InstancePlan> {
        self.groups
            .iter()
            .flat_map(|g| g.instances.iter().chain(&g.deleted))
            .chain(&self.deleted_groups)
    }
}

/// Options of `deploy` that change the plan.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// `--recreate`.
    pub recreate: bool,
    /// `--canaries`.
    pub canaries: Option<Count>,
    /// `--max-in-flight`.
    pub max_in_flight: Option<Count>,
    /// With `--fix`: the ids of instances whose agents do not answer (their VMs died or
    /// were killed); they are recreated even when nothing else changed.
    pub unresponsive: std::collections::BTreeSet<String>,
}

/// What rendering one instance produced.
#[derive(Clone, Debug)]
pub struct InstanceWork {
    /// Group name.
    pub group: String,
    /// The placed instance.
    pub placed: PlacedInstance,
    /// Its desired spec.
    pub spec: InstanceSpec,
    /// Its rendered jobs, in job order.
    pub rendered: Vec<RenderedJob>,
}

/// A plan and what executing it needs.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The plan.
    pub plan: Plan,
    /// Per instance id: spec and rendered jobs (groups with VMs only).
    pub work: BTreeMap<String, InstanceWork>,
}

/// A problem found while planning.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn network_states(placed: &PlacedInstance) -> BTreeMap<String, NetworkState> {
    placed
        .networks
        .iter()
        .map(|(name, n)| {
            (
                name.clone(),
                NetworkState {
                    kind: n.kind.clone(),
                    ip: n.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    netmask: n.netmask.clone(),
                    gateway: n.gateway.clone(),
                    dns: n.dns.clone(),
                    default: n.default.clone(),
                    cloud_properties: n.cloud_properties.clone(),
                },
            )
        })
        .collect()
}

/// The `spec` a template of `job_release` sees for an instance.
fn template_spec(
    desired: &DesiredDeployment,
    group: &DesiredGroup,
    placed: &PlacedInstance,
    release: (&str, &str),
    job: &str,
) -> Json {
    let networks: serde_json::Map<String, Json> = placed
        .networks
        .iter()
        .map(|(name, n)| {
            (
                name.clone(),
                json!({
                    "type": n.kind,
                    "ip": n.ip.map(|ip| ip.to_string()),
                    "netmask": n.netmask,
                    "gateway": n.gateway,
                    "dns": n.dns,
                    "default": n.default,
                    "cloud_properties": n.cloud_properties,
                }),
            )
        })
        .collect();
    let deployment = desired.name.as_str();
    let ip = placed.address();
    // With `use_dns_addresses` the address is the instance's DNS name (BOSH's rule).
    let address = match super::dns::address_network(placed) {
        Some(network) if desired.use_dns_addresses => {
            super::dns::instance_name(&placed.uuid, &group.name, network, deployment)
        }
        _ => ip.clone(),
    };
    json!({
        "name": group.name,
        "id": placed.uuid,
        "index": placed.index,
        "az": placed.az,
        "ip": if ip.is_empty() { Json::Null } else { Json::String(ip) },
        "address": address,
        "dns_domain_name": super::dns::DOMAIN,
        "deployment": deployment,
        "bootstrap": placed.bootstrap,
        "networks": networks,
        "persistent_disk": group.persistent_disk.as_ref().map_or(0, |d| d.size),
        "release": {"name": release.0, "version": release.1},
        "job": {"name": job},
    })
}

fn cloud_properties_for(
    group: &DesiredGroup,
    az_properties: &BTreeMap<String, Json>,
    az: Option<&str>,
) -> Json {
    let mut merged = json!({});
    if let Some(props) = az.and_then(|az| az_properties.get(az)) {
        super::desired::deep_merge(&mut merged, props);
    }
    super::desired::deep_merge(&mut merged, &group.vm_cloud_properties);
    merged
}

fn packages_for(
    group: &DesiredGroup,
    catalog: &Catalog,
) -> Result<BTreeMap<String, PackageState>, PlanError> {
    let mut packages: BTreeMap<String, PackageState> = BTreeMap::new();
    for job in &group.jobs {
        let Some(release) = catalog.releases.get(&job.job.release) else {
            continue;
        };
        for name in release.closure(&job.job.packages) {
            let Some(package) = release.packages.get(&name) else {
                continue;
            };
            let state = PackageState {
                release: release.name.clone(),
                fingerprint: package.fingerprint.clone(),
                dependency_key: release.dependency_key(&name),
            };
            match packages.get(&name) {
                Some(existing) if existing.fingerprint != state.fingerprint => {
                    return Err(PlanError(format!(
                        "instance group '{}': package '{name}' comes from release '{}' and from release '{}' with different contents; both would install to /var/vcap/packages/{name}",
                        group.name, existing.release, state.release
                    )));
                }
                Some(_) => {}
                None => {
                    packages.insert(name, state);
                }
            }
        }
    }
    Ok(packages)
}

fn describe_ip(state: Option<&NetworkState>) -> String {
    match state {
        Some(s) if !s.ip.is_empty() => s.ip.clone(),
        Some(_) => "dynamic".to_string(),
        None => "none".to_string(),
    }
}

fn short(text: &str) -> &str {
    text.get(..12).unwrap_or(text)
}

/// Every difference between what was applied and what is desired, as reasons; and whether
/// any of them needs a new VM.
fn changes(observed: &InstanceSpec, desired: &InstanceSpec) -> (Vec<String>, bool, bool) {
    let mut reasons = Vec::new();
    let mut recreate = false;
    let mut update = false;
    if observed.stemcell != desired.stemcell {
        recreate = true;
        reasons.push(format!(
            "stemcell changed ({}/{} → {}/{})",
            observed.stemcell.name,
            observed.stemcell.version,
            desired.stemcell.name,
            desired.stemcell.version
        ));
    }
    if observed.vm_type != desired.vm_type {
        recreate = true;
        reasons.push(format!(
            "vm_type changed ({} → {})",
            observed.vm_type, desired.vm_type
        ));
    } else if observed.cloud_properties != desired.cloud_properties {
        recreate = true;
        reasons.push("cloud properties changed".to_string());
    }
    if observed.env != desired.env {
        recreate = true;
        reasons.push("env changed".to_string());
    }
    let names: BTreeSet<&String> = observed
        .networks
        .keys()
        .chain(desired.networks.keys())
        .collect();
    for name in names {
        let (before, after) = (observed.networks.get(name), desired.networks.get(name));
        if before == after {
            continue;
        }
        recreate = true;
        match (before, after) {
            (Some(b), Some(a)) if b.ip != a.ip => reasons.push(format!(
                "network '{name}' changed (IP {} → {})",
                describe_ip(before),
                describe_ip(after)
            )),
            (Some(_), Some(_)) => reasons.push(format!("network '{name}' settings changed")),
            (None, Some(_)) => reasons.push(format!("network '{name}' added")),
            (Some(_), None) => reasons.push(format!("network '{name}' removed")),
            (None, None) => {}
        }
    }
    let before: BTreeMap<&str, &JobState> =
        observed.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    let after: BTreeMap<&str, &JobState> =
        desired.jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    for (name, job) in &after {
        match before.get(name) {
            None => {
                update = true;
                reasons.push(format!("job '{name}' added"));
            }
            Some(old) if old.fingerprint != job.fingerprint => {
                update = true;
                reasons.push(format!(
                    "job '{name}' changed (release {} {} → {})",
                    job.release, old.release_version, job.release_version
                ));
            }
            Some(_) => {}
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        update = true;
        reasons.push(format!("job '{name}' removed"));
    }
    let package_names: BTreeSet<&String> = observed
        .packages
        .keys()
        .chain(desired.packages.keys())
        .collect();
    let mut changed_packages = Vec::new();
    for name in package_names {
        match (observed.packages.get(name), desired.packages.get(name)) {
            (Some(b), Some(a)) if b == a => {}
            (Some(b), Some(a)) if b.fingerprint == a.fingerprint => {
                changed_packages.push(format!("{name} (dependencies)"));
            }
            (Some(b), Some(a)) => changed_packages.push(format!(
                "{name} ({} → {})",
                short(&b.fingerprint),
                short(&a.fingerprint)
            )),
            (None, Some(_)) => changed_packages.push(format!("+{name}")),
            (Some(_), None) => changed_packages.push(format!("-{name}")),
            (None, None) => {}
        }
    }
    if !changed_packages.is_empty() {
        update = true;
        reasons.push(format!("packages changed: {}", changed_packages.join(", ")));
    }
    if observed.persistent_disk != desired.persistent_disk {
        update = true;
        reasons.push(
            match (&observed.persistent_disk, &desired.persistent_disk) {
                (None, Some(d)) => format!("persistent disk added ({} MB)", d.size),
                (Some(_), None) => "persistent disk removed (it will be orphaned)".to_string(),
                (Some(b), Some(a)) if b.size != a.size => format!(
                    "persistent disk size changed ({} MB → {} MB; the data moves to a new disk, \
                     the old one is orphaned)",
                    b.size, a.size
                ),
                _ => "persistent disk cloud properties changed (the data moves to a new disk, \
                      the old one is orphaned)"
                    .to_string(),
            },
        );
    }
    let mut changed_templates = Vec::new();
    for (job, files) in &desired.templates {
        let old = observed.templates.get(job);
        if old == Some(files) {
            continue;
        }
        if !before.contains_key(job.as_str()) {
            continue; // reported as an added job
        }
        let mut paths: Vec<&str> = files
            .iter()
            .filter(|(path, digest)| old.and_then(|o| o.get(*path)) != Some(*digest))
            .map(|(path, _)| path.as_str())
            .collect();
        if let Some(old) = old {
            paths.extend(
                old.keys()
                    .filter(|p| !files.contains_key(*p))
                    .map(String::as_str),
            );
        }
        changed_templates.push(format!("{job} ({})", paths.join(", ")));
    }
    if !changed_templates.is_empty() {
        reasons.push(format!(
            "rendered templates changed: {}",
            changed_templates.join("; ")
        ));
    }
    (reasons, recreate, update)
}

/// Everything a deploy's plan is a function of.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The deployment the manifest asks for, resolved against the catalog.
    pub desired: &'a DesiredDeployment,
    /// The uploaded releases and stemcells.
    pub catalog: &'a Catalog,
    /// Where each instance goes, by group.
    pub placements: &'a BTreeMap<String, GroupPlacement>,
    /// Consumers bound to providers.
    pub links: &'a Links,
    /// Every recorded instance of the deployment, by group (groups no longer in the
    /// manifest too).
    pub observed: &'a BTreeMap<String, Vec<ObservedInstance>>,
    /// Template sources by job fingerprint: file name under `templates/` → text.
    pub sources: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// The cloud config's AZ cloud properties, by AZ name.
    pub az_cloud_properties: &'a BTreeMap<String, Json>,
    /// The options of `deploy` that change the plan.
    pub options: &'a PlanOptions,
}

/// Plans the deploy: parses every job's templates once, then for each group renders and
/// specs its instances, decides their actions and orders the changes into phases, and
/// deletes the instances of groups the manifest no longer has. Every problem comes back at
/// once.
pub fn plan(input: &PlanInput<'_>) -> Result<Planned, Vec<PlanError>> {
    let compiled = compile_job_templates(input.desired, input.sources)?;
    let mut errors = Vec::new();
    let mut work = BTreeMap::new();
    let mut groups = Vec::new();
    for group in &input.desired.groups {
        let Some(placement) = input.placements.get(&group.name) else {
            continue;
        };
        if let Some(group_plan) =
            plan_group(input, &compiled, group, placement, &mut work, &mut errors)
        {
            groups.push(group_plan);
        }
    }
    let deleted_groups = deleted_group_instances(input.desired, input.observed);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Planned {
        plan: Plan {
            deployment: input.desired.name.clone(),
            groups,
            deleted_groups,
            variables_to_generate: Vec::new(),
            manifest_changed: false,
        },
        work,
    })
}

/// Parses the templates of every job of the deployment, once per job fingerprint.
fn compile_job_templates(
    desired: &DesiredDeployment,
    sources: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<BTreeMap<String, CompiledJob>, Vec<PlanError>> {
    let mut errors = Vec::new();
    let mut compiled: BTreeMap<String, CompiledJob> = BTreeMap::new();
    for group in &desired.groups {
        for job in &group.jobs {
            if compiled.contains_key(&job.job.fingerprint) {
                continue;
            }
            let templates = JobTemplates {
                name: job.job.name.clone(),
                templates: job.job.templates.clone(),
                properties: job.job.properties.clone(),
                sources: sources
                    .get(&job.job.fingerprint)
                    .cloned()
                    .unwrap_or_default(),
            };
            match CompiledJob::compile(&templates) {
                Ok(c) => {
                    compiled.insert(job.job.fingerprint.clone(), c);
                }
                Err(e) => errors.push(PlanError(format!("release '{}': {e}", job.job.release))),
            }
        }
    }
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(errors)
    }
}

/// The plan of one group: each placed instance rendered, specced and given its action
/// (its work recorded in `work`), the obsolete ones deleted, the changes in phases. `None`
/// when its packages conflict; problems go to `errors`.
fn plan_group(
    input: &PlanInput<'_>,
    compiled: &BTreeMap<String, CompiledJob>,
    group: &DesiredGroup,
    placement: &GroupPlacement,
    work: &mut BTreeMap<String, InstanceWork>,
    errors: &mut Vec<PlanError>,
) -> Option<GroupPlan> {
    let previous: BTreeMap<&str, &ObservedInstance> = input
        .observed
        .get(&group.name)
        .map(|list| list.iter().map(|o| (o.uuid.as_str(), o)).collect())
        .unwrap_or_default();
    let errand = group.lifecycle == Lifecycle::Errand;
    let packages = match packages_for(group, input.catalog) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let mut instances = Vec::new();
    for placed in &placement.instances {
        let old = previous.get(placed.uuid.as_str()).copied();
        let (instance, instance_work) =
            plan_instance(input, compiled, group, &packages, placed, old, errors);
        instances.push(instance);
        work.insert(placed.uuid.clone(), instance_work);
    }
    let deleted = obsolete_instances(group, placement, &previous);
    let first_deploy = previous.is_empty();
    let (phases, canaries) = group_phases(input.options, group, &mut instances, first_deploy);
    Some(GroupPlan {
        name: group.name.clone(),
        serial: group.rollout.serial,
        errand,
        canaries,
        instances,
        deleted,
        phases,
    })
}

/// The plan of one placed instance and what executing it needs: its jobs rendered, its
/// desired spec, and its action against `old`, what was applied to it before (an errand's
/// instances are only ever run, never updated).
fn plan_instance(
    input: &PlanInput<'_>,
    compiled: &BTreeMap<String, CompiledJob>,
    group: &DesiredGroup,
    packages: &BTreeMap<String, PackageState>,
    placed: &PlacedInstance,
    old: Option<&ObservedInstance>,
    errors: &mut Vec<PlanError>,
) -> (InstancePlan, InstanceWork) {
    let (templates, rendered) = render_instance_jobs(input, compiled, group, placed, errors);
    let spec = instance_spec(input, group, placed, packages, templates, &rendered);
    let (action, reasons) = match old {
        _ if group.lifecycle == Lifecycle::Errand => (Action::NoOp, Vec::new()),
        None => (Action::Create, vec!["new instance".to_string()]),
        Some(old) => decide(old, &spec, input.options),
    };
    let instance = InstancePlan {
        group: group.name.clone(),
        id: placed.uuid.clone(),
        index: placed.index,
        az: placed.az.clone(),
        bootstrap: placed.bootstrap,
        action,
        reasons,
        batch: None,
    };
    let work = InstanceWork {
        group: group.name.clone(),
        placed: placed.clone(),
        spec,
        rendered,
    };
    (instance, work)
}

/// The phases of a group's changes (and its canary count), with `deploy`'s overrides of
/// its canaries and `max_in_flight`; a first deploy may update all AZs at once.
fn group_phases(
    options: &PlanOptions,
    group: &DesiredGroup,
    instances: &mut [InstancePlan],
    first_deploy: bool,
) -> (Vec<Phase>, u64) {
    let canaries_setting = options.canaries.unwrap_or(group.rollout.canaries);
    let max_in_flight = options.max_in_flight.unwrap_or(group.rollout.max_in_flight);
    phases(
        instances,
        &group.azs,
        canaries_setting,
        max_in_flight,
        first_deploy && group.rollout.initial_parallel,
    )
}

/// Renders the jobs of one instance: the digests of their files (job → path → sha256) and
/// the rendered jobs, in job order. A job that does not render is left out and its problem
/// goes to `errors`.
fn render_instance_jobs(
    input: &PlanInput<'_>,
    compiled: &BTreeMap<String, CompiledJob>,
    group: &DesiredGroup,
    placed: &PlacedInstance,
    errors: &mut Vec<PlanError>,
) -> (BTreeMap<String, BTreeMap<String, String>>, Vec<RenderedJob>) {
    let mut rendered = Vec::new();
    let mut templates = BTreeMap::new();
    for job in &group.jobs {
        let Some(compiled_job) = compiled.get(&job.job.fingerprint) else {
            continue;
        };
        let context = InstanceContext {
            spec: template_spec(
                input.desired,
                group,
                placed,
                (&job.job.release, &job.release_version),
                &job.job.name,
            ),
            properties: job.properties.clone(),
            links: input
                .links
                .consumed
                .get(&(group.name.clone(), job.job.name.clone()))
                .cloned()
                .unwrap_or_default(),
        };
        match compiled_job.render(&context) {
            Ok(job_rendered) => {
                templates.insert(
                    job.job.name.clone(),
                    job_rendered
                        .files
                        .iter()
                        .map(|(path, content)| (path.clone(), sha256_hex(content)))
                        .collect(),
                );
                rendered.push(job_rendered);
            }
            Err(e) => errors.push(PlanError(format!(
                "instance {}/{} ({}): {e}",
                group.name, placed.uuid, placed.index
            ))),
        }
    }
    (templates, rendered)
}

/// The digest of everything rendered for an instance: each job's name and digest, in order.
fn configuration_hash(rendered: &[RenderedJob]) -> String {
    let mut hasher = Sha256::new();
    for job in rendered {
        hasher.update(job.name.as_bytes());
        hasher.update([0]);
        hasher.update(job.digest.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The desired spec of one placed instance of `group`.
fn instance_spec(
    input: &PlanInput<'_>,
    group: &DesiredGroup,
    placed: &PlacedInstance,
    packages: &BTreeMap<String, PackageState>,
    templates: BTreeMap<String, BTreeMap<String, String>>,
    rendered: &[RenderedJob],
) -> InstanceSpec {
    InstanceSpec {
        stemcell: StemcellSpec {
            name: group.stemcell.name.clone(),
            os: group.stemcell.os.clone(),
            version: group.stemcell.version.clone(),
        },
        vm_type: group.vm_type.clone(),
        cloud_properties: cloud_properties_for(
            group,
            input.az_cloud_properties,
            placed.az.as_deref(),
        ),
        env: group.env.clone(),
        networks: network_states(placed),
        jobs: job_states(group),
        packages: packages.clone(),
        templates,
        configuration_hash: configuration_hash(rendered),
        persistent_disk: group.persistent_disk.as_ref().map(|d| DiskState {
            size: d.size,
            cloud_properties: d.cloud_properties.clone(),
        }),
    }
}

fn job_states(group: &DesiredGroup) -> Vec<JobState> {
    group
        .jobs
        .iter()
        .map(|j| JobState {
            name: j.job.name.clone(),
            release: j.job.release.clone(),
            release_version: j.release_version.clone(),
            fingerprint: j.job.fingerprint.clone(),
            packages: j.job.packages.clone(),
        })
        .collect()
}

/// The recorded instances of `group` its placement no longer keeps, to delete.
fn obsolete_instances(
    group: &DesiredGroup,
    placement: &GroupPlacement,
    previous: &BTreeMap<&str, &ObservedInstance>,
) -> Vec<InstancePlan> {
    placement
        .obsolete
        .iter()
        .filter_map(|uuid| previous.get(uuid.as_str()))
        .map(|old| InstancePlan {
            group: group.name.clone(),
            id: old.uuid.clone(),
            index: old.index,
            az: old.az.clone(),
            bootstrap: false,
            action: Action::Delete,
            reasons: vec![format!(
                "not needed any more (instances: {} → {})",
                previous.len(),
                group.instances
            )],
            batch: None,
        })
        .collect()
}

/// The recorded instances of groups the manifest no longer has, to delete.
fn deleted_group_instances(
    desired: &DesiredDeployment,
    observed: &BTreeMap<String, Vec<ObservedInstance>>,
) -> Vec<InstancePlan> {
    let wanted: BTreeSet<&str> = desired.groups.iter().map(|g| g.name.as_str()).collect();
    observed
        .iter()
        .filter(|(name, _)| !wanted.contains(name.as_str()))
        .flat_map(|(name, list)| {
            list.iter().map(move |old| InstancePlan {
                group: name.clone(),
                id: old.uuid.clone(),
                index: old.index,
                az: old.az.clone(),
                bootstrap: false,
                action: Action::Delete,
                reasons: vec![format!(
                    "instance group '{name}' is no longer in the manifest"
                )],
                batch: None,
            })
        })
        .collect()
}

fn decide(
    old: &ObservedInstance,
    spec: &InstanceSpec,
    options: &PlanOptions,
) -> (Action, Vec<String>) {
    let Some(applied) = &old.spec else {
        let action = if old.has_vm {
            Action::Recreate
        } else {
            Action::Create
        };
        return (
            action,
            vec!["the instance was never set up (a previous deploy stopped before it)".to_string()],
        );
    };
    let (mut reasons, mut recreate, update) = changes(applied, spec);
    if !old.has_vm {
        recreate = true;
        reasons.insert(0, "its VM is missing".to_string());
    }
    if options.recreate {
        recreate = true;
        reasons.insert(0, "--recreate".to_string());
    }
    if options.unresponsive.contains(&old.uuid) {
        recreate = true;
        reasons.insert(0, "its agent does not answer (--fix)".to_string());
    }
    if !old.update_completed {
        reasons.push("its previous update did not finish".to_string());
    }
    let action = if recreate {
        Action::Recreate
    } else if update || !old.update_completed {
        Action::Update
    } else if !reasons.is_empty() {
        Action::Restart
    } else {
        Action::NoOp
    };
    (action, reasons)
}

/// Orders the changed instances of a group into phases (BOSH §7.4) and labels each instance
/// with its nominal batch. Returns the phases and the number of canaries.
pub(super) fn phases(
    instances: &mut [InstancePlan],
    azs: &[String],
    canaries: Count,
    max_in_flight: Count,
    parallel_azs: bool,
) -> (Vec<Phase>, u64) {
    let changed: Vec<usize> = (0..instances.len())
        .filter(|&i| instances[i].action != Action::NoOp)
        .collect();
    if changed.is_empty() {
        return (Vec::new(), 0);
    }
    // Group by AZ in the group's AZ order (instances without an AZ first).
    let mut by_az: Vec<Vec<usize>> = Vec::new();
    if parallel_azs {
        by_az.push(changed.clone());
    } else {
        let mut order: Vec<Option<&str>> = vec![None];
        order.extend(azs.iter().map(|a| Some(a.as_str())));
        for az in order {
            let members: Vec<usize> = changed
                .iter()
                .copied()
                .filter(|&i| instances[i].az.as_deref() == az)
                .collect();
            if !members.is_empty() {
                by_az.push(members);
            }
        }
        // Instances in AZs the group no longer lists cannot be changed, but never drop one.
        let placed: BTreeSet<usize> = by_az.iter().flatten().copied().collect();
        let rest: Vec<usize> = changed
            .iter()
            .copied()
            .filter(|i| !placed.contains(i))
            .collect();
        if !rest.is_empty() {
            by_az.push(rest);
        }
    }
    let total = changed.len() as u64;
    let canary_count = canaries.of(total).min(by_az[0].len() as u64) as usize;
    // (canary, pool size, members)
    let mut pools: Vec<(bool, usize, &[usize])> = Vec::new();
    for (a, members) in by_az.iter().enumerate() {
        // The pool is sized by the AZ's changed instances, canaries included (as BOSH does).
        let size = (max_in_flight.of(members.len() as u64).max(1)) as usize;
        let mut rest = members.as_slice();
        if a == 0 && canary_count > 0 {
            pools.push((true, size.min(canary_count), &rest[..canary_count]));
            rest = &rest[canary_count..];
        }
        if !rest.is_empty() {
            pools.push((false, size.min(rest.len()), rest));
        }
    }
    let mut wave = 0;
    for &(canary, size, members) in &pools {
        for chunk in members.chunks(if canary { members.len() } else { size.max(1) }) {
            wave += 1;
            let label = if canary {
                "canary".to_string()
            } else {
                format!("batch {wave}")
            };
            for &i in chunk {
                instances[i].batch = Some(label.clone());
            }
        }
    }
    let phases = pools
        .into_iter()
        .map(|(canary, max_in_flight, members)| Phase {
            canary,
            max_in_flight,
            instances: members.iter().map(|&i| instances[i].id.clone()).collect(),
        })
        .collect();
    (phases, canary_count as u64)
}
