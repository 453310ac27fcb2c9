//! Configs, deployments and the verbs that change their instances.

use agent_protocol::{ProcessState, Vitals};
use director_core::deploy::Plan;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// The kind of a director config (`/configs/{kind}`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ConfigKind {
    /// AZs, VM types, disk types, networks, compilation.
    Cloud,
    /// Releases and addons put on every matching instance group.
    Runtime,
    /// Rules that turn the resurrector off for deployments and instance groups.
    Resurrection,
}

impl ConfigKind {
    /// `cloud`, `runtime` or `resurrection`, as in paths and the state database.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Cloud => "cloud",
            ConfigKind::Runtime => "runtime",
            ConfigKind::Resurrection => "resurrection",
        }
    }
}

impl std::fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConfigKind {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<ConfigKind, UnknownValue> {
        match text {
            "cloud" => Ok(ConfigKind::Cloud),
            "runtime" => Ok(ConfigKind::Runtime),
            "resurrection" => Ok(ConfigKind::Resurrection),
            other => Err(UnknownValue {
                what: "config type",
                given: other.to_string(),
                expected: "cloud, runtime or resurrection",
            }),
        }
    }
}

/// What `POST /deployments/{name}/state` does to the instances it targets (BOSH's
/// `state` parameter of `PUT /deployments/{name}/jobs/…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum StateChange {
    /// `director start`.
    #[serde(rename = "started")]
    Start,
    /// `director stop`.
    #[serde(rename = "stopped")]
    Stop,
    /// `director restart`.
    #[serde(rename = "restart")]
    Restart,
    /// `director recreate`.
    #[serde(rename = "recreate")]
    Recreate,
}

impl StateChange {
    /// The task description: `start instances`, ….
    pub fn description(self) -> &'static str {
        match self {
            StateChange::Start => "start instances",
            StateChange::Stop => "stop instances",
            StateChange::Restart => "restart instances",
            StateChange::Recreate => "recreate instances",
        }
    }
}

/// A value outside an enum of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: expected {expected}")]
pub struct UnknownValue {
    /// What was being read.
    pub what: &'static str,
    /// What was given.
    pub given: String,
    /// What is accepted.
    pub expected: &'static str,
}

/// `GET /configs/{kind}`: the current config of that kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Config {
    /// Its id (a new one each time it changes).
    pub id: i64,
    /// `cloud` or `runtime`.
    #[serde(rename = "type")]
    pub kind: ConfigKind,
    /// `default`.
    pub name: String,
    /// The YAML text.
    pub content: String,
}

/// `PUT /configs/{kind}` (the YAML text as the body): whether it changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigUpdated {
    /// The id of the config now current.
    pub id: i64,
    /// False when the text was the current one.
    pub changed: bool,
}

/// `POST /deployments` and `POST /deployments/plan` parameters (the manifest is the body).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployQuery {
    /// Recreate every VM.
    #[serde(default)]
    pub recreate: bool,
    /// Do not run drain scripts.
    #[serde(default)]
    pub skip_drain: bool,
    /// Recreate instances whose VM is missing or unresponsive.
    #[serde(default)]
    pub fix: bool,
    /// Overrides `update.canaries`: a number or a percentage (`25%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canaries: Option<String>,
    /// Overrides `update.max_in_flight`: a number or a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<String>,
}

/// `POST /deployments/plan`: what a deploy of the manifest would do, changing nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanAnswer {
    /// The manifest's deployment name.
    pub deployment: String,
    /// The manifest it was last deployed with, for the diff.
    pub previous_manifest: Option<String>,
    /// Per instance: what happens, why, and in which batch.
    #[schema(value_type = Object)]
    pub plan: Plan,
    /// Whether anything would change.
    pub changes: bool,
}

/// A release or stemcell by name and version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NameVersion {
    /// The name.
    pub name: String,
    /// The version.
    pub version: String,
}

/// A deployment in `GET /deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    /// Its name.
    pub name: String,
    /// The release versions it uses.
    pub releases: Vec<NameVersion>,
    /// The stemcells it uses.
    pub stemcells: Vec<NameVersion>,
    /// How many instances it has.
    pub instances: usize,
}

/// `GET /deployments/{name}`: the manifest it was last deployed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentManifest {
    /// The deployment.
    pub name: String,
    /// The manifest text (empty before a first deploy finished).
    pub manifest: String,
}

/// `GET /deployments/{name}/instances` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstancesQuery {
    /// Ask every agent for its state (processes, vitals) now.
    #[serde(default)]
    pub live: bool,
}

/// An instance of a deployment, with what its agent says when asked (`live`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// Its instance group.
    pub instance_group: String,
    /// Its id (a UUID).
    pub id: String,
    /// Its index in the group.
    pub index: u32,
    /// Its AZ.
    pub az: Option<String>,
    /// Whether it is its group's bootstrap instance.
    pub bootstrap: bool,
    /// Always true (errand VMs are not listed).
    pub expects_vm: bool,
    /// `started`, `stopped` or `detached`.
    pub state: String,
    /// False while an update is touching it (an interrupted update is redone).
    pub update_completed: bool,
    /// Its VM's CPI id.
    pub vm_cid: Option<String>,
    /// Its agent's id.
    pub agent_id: Option<String>,
    /// When its VM was created (Unix seconds).
    pub vm_created_at: Option<i64>,
    /// Its IP addresses.
    pub ips: Vec<String>,
    /// Its persistent disk's CPI id.
    pub disk_cid: Option<String>,
    /// Its VM type, as last applied.
    pub vm_type: Option<String>,
    /// Its stemcell, as last applied.
    pub stemcell: Option<InstanceStemcell>,
    /// What the agent said, with `live`.
    pub agent: Option<LiveAgent>,
    /// What the health monitor concluded (none while it has not judged the instance yet,
    /// and when it is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<InstanceHealth>,
}

/// The health monitor's judgement of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceHealth {
    /// `healthy`, `unresponsive agent`, `missing vm` or `failing`.
    pub state: String,
    /// Since when (Unix seconds).
    pub since: i64,
}

/// The stemcell an instance runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceStemcell {
    /// Name.
    pub name: String,
    /// Operating system.
    pub os: String,
    /// Version.
    pub version: String,
}

/// What an instance's agent answered just now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LiveAgent {
    /// `running`, `failing`, `starting`, `stopped`, or `unresponsive agent`.
    pub job_state: String,
    /// Every supervised process.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub processes: Vec<ProcessState>,
    /// Load, CPU, memory and disks.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vitals: Vitals,
    /// Why the agent did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /deployments/{name}/state`: start, stop, restart or recreate instances (a task).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateChangeRequest {
    /// What to do.
    pub state: StateChange,
    /// `GROUP` or `GROUP/ID-OR-INDEX`; every instance when absent.
    #[serde(default)]
    pub target: Option<String>,
    /// Do not run drain scripts.
    #[serde(default)]
    pub skip_drain: bool,
}

/// `POST /deployments/{name}/logs`: every targeted instance's logs as a tarball (a task
/// whose result is a list of [`LogTarball`]s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogsRequest {
    /// `GROUP` or `GROUP/ID-OR-INDEX`; every instance when absent.
    #[serde(default)]
    pub target: Option<String>,
}

/// One instance's logs, stored as a blob (download it through `GET /blobs/{id}/link`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogTarball {
    /// `group/id (index)`.
    pub instance: String,
    /// The instance group.
    pub group: String,
    /// The instance id.
    pub id: String,
    /// The instance index.
    pub index: u32,
    /// The tarball's blob id.
    pub blob_id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One instance's run of an errand: the result of `POST
/// /deployments/{name}/errands/{errand}/runs` tasks is a list of these (BOSH's shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrandRun {
    /// `group/id (index)`.
    pub instance: String,
    /// How `bin/run` exited.
    pub exit_code: i64,
    /// The end of its standard output.
    pub stdout: String,
    /// The end of its standard error.
    pub stderr: String,
}

/// A kind of problem `director cck` finds (BOSH's problem types, plus `unowned_vm`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// An instance's agent does not answer and the CPI says its VM is gone.
    MissingVm,
    /// An instance's agent does not answer though the CPI still has its VM.
    UnresponsiveAgent,
    /// A VM the director recorded that no instance owns and no task is using (left by a
    /// failed delete, an interrupted task, or `delete_vm_reference`).
    UnownedVm,
    /// The agent does not show the instance's persistent disk at its store.
    MountInfoMismatch,
    /// A disk recorded for an instance that it does not use (an interrupted disk migration
    /// leaves one).
    InactiveDisk,
    /// A disk the director records that the CPI does not have.
    MissingDisk,
}

impl ProblemType {
    /// The snake_case name, as in problem ids and BOSH's output.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemType::MissingVm => "missing_vm",
            ProblemType::UnresponsiveAgent => "unresponsive_agent",
            ProblemType::UnownedVm => "unowned_vm",
            ProblemType::MountInfoMismatch => "mount_info_mismatch",
            ProblemType::InactiveDisk => "inactive_disk",
            ProblemType::MissingDisk => "missing_disk",
        }
    }
}

/// One way to resolve a problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resolution {
    /// `recreate_vm`, `ignore`, … (BOSH's names).
    pub name: String,
    /// What it does, in words (`Recreate VM and wait for processes to start`).
    pub plan: String,
}

/// A problem found by a scan: the result of `POST /deployments/{name}/scans` tasks is a
/// list of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `<type>:<subject>` (an instance id, a disk CID or an agent id): stable across scans,
    /// so a resolution names the problem it is for.
    pub id: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: ProblemType,
    /// What is wrong, in words.
    pub description: String,
    /// `group/id (index)` of the instance concerned, if any.
    pub instance: Option<String>,
    /// The ways to resolve it; the first is what `--auto` applies.
    pub resolutions: Vec<Resolution>,
}

/// `PUT /deployments/{name}/problems`: the resolution to apply to each problem (by id).
/// Each problem is checked again first: one that is gone is closed without action.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResolveRequest {
    /// Problem id to resolution name.
    pub resolutions: std::collections::BTreeMap<String, String>,
}

/// What resolving one problem did: the result of `PUT /deployments/{name}/problems`
/// tasks is a list of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProblemResolved {
    /// The problem's id.
    pub problem: String,
    /// The problem, in words (as found when resolving it).
    pub description: String,
    /// The resolution applied (`close` when the problem was gone).
    pub resolution: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// `DELETE /deployments/{name}` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteDeploymentQuery {
    /// Go on when a VM or disk cannot be deleted.
    #[serde(default)]
    pub force: bool,
}

/// `PUT /resurrection` (BOSH's): pause or resume the resurrector for every deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResurrectionRequest {
    /// True stops recreating unresponsive instances; false resumes it, and meltdown counts
    /// only instances that went down from then on.
    pub resurrection_paused: bool,
}

/// `GET /events` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// How many of the newest (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// An entry of the audit trail (`GET /events`): what changed when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Its number.
    pub id: i64,
    /// When (Unix seconds).
    pub time: i64,
    /// Who.
    pub user: String,
    /// `create`, `update`, `delete`, `start`, ….
    pub action: String,
    /// `deployment`, `instance`, ….
    pub object_type: String,
    /// Which one.
    pub object_name: Option<String>,
    /// The deployment.
    pub deployment: Option<String>,
    /// The task that did it.
    pub task: Option<i64>,
    /// What changed (per instance: the action and its reasons).
    #[schema(value_type = Object)]
    pub context: Value,
    /// Why it failed.
    pub error: Option<String>,
}

/// A VM of a deployment that no instance owns (`GET /deployments/{name}/vm_records`): one
/// being made, a compilation or errand VM, or one a director that stopped was making and
/// the CPI cannot look up (`unknown`: its addresses stay reserved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordedVm {
    /// Its agent's id.
    pub agent_id: String,
    /// Its CPI id, once `create_vm` answered.
    pub vm_cid: Option<String>,
    /// `creating`, `created` or `unknown`.
    pub state: String,
    /// `instance`, `compilation` or `errand`.
    pub purpose: String,
    /// What it is for (`web/6f1c… (0)`, `the compilation VM for package 'x'`).
    pub label: String,
    /// The addresses it was given.
    pub ips: Vec<String>,
    /// When it was recorded (Unix seconds).
    pub created_at: i64,
}

/// An orphaned persistent disk (`GET /disks?orphaned=true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrphanedDisk {
    /// Its CPI id.
    pub cid: String,
    /// Its size in MiB.
    pub size: u64,
    /// Its cloud properties.
    #[schema(value_type = Object)]
    pub cloud_properties: Value,
    /// When it was orphaned (Unix seconds).
    pub orphaned_at: Option<i64>,
}
