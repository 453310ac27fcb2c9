//! The day-to-day verbs on a deployed deployment: start, stop, restart and recreate
//! instances, run an errand, delete the deployment. Each is a task that takes the
//! deployment's lock and works from what was last applied to each instance.

use std::collections::BTreeMap;
use std::path::Path;

use futures::future::join_all;
use serde_json::{Value as Json, json};

use super::drain::DrainKind;
use super::stemcells::{StemcellCids, uploaded_stemcell_cids};
use super::update::{
    InstanceUpdate, UpdateError, UpdateOptions, delete_instance, record_vm, recorded_apply_spec,
};
use super::vms::{
    VmError, VmOwner, VmRequest, attach_and_mount, create_vm, delete_vm, unmount_and_detach,
};
use super::{Services, StepFailure, StepsFailed};
use crate::blobstore::slots::{Purpose, SlotError};
use crate::tasks::{LockKey, Stage, TaskContext, TaskError};
use agent_protocol::{ErrandResult, UploadedBlob};
use director_api::StateChange;
use director_bus::BusError;
use director_core::deploy::InstanceSpec;
use director_core::manifest::{Documents, Lifecycle, WatchTime};
use director_core::stemcell::StemcellKey;
use director_state::{Deployment, Instance, NewEvent, StateError, TaskId};

/// Why a day-to-day verb failed. Per-instance errors are named by their instance
/// ([`VerbError::Instance`]).
#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    /// The deployment is not recorded.
    #[error("deployment '{deployment}' not found")]
    DeploymentNotFound {
        /// The deployment.
        deployment: String,
    },
    /// The target names no instance.
    #[error(
        "no instance of deployment '{deployment}' matches {target:?} (expected GROUP or GROUP/ID or GROUP/INDEX)"
    )]
    NoInstanceMatches {
        /// The deployment.
        deployment: String,
        /// The target as given.
        target: String,
    },
    /// The target names no instance that has a VM.
    #[error(
        "no instance of deployment '{deployment}' with a VM matches {target:?} (expected GROUP, GROUP/ID or GROUP/INDEX; errands have no VM between runs)"
    )]
    NoInstanceWithVmMatches {
        /// The deployment.
        deployment: String,
        /// The target as given.
        target: String,
    },
    /// One instance failed.
    #[error("{instance}: {source}")]
    Instance {
        /// The instance (`web/0 (6f1c…)`).
        instance: String,
        /// Why.
        source: Box<VerbError>,
    },
    /// An instance to start or restart has no VM.
    #[error("the instance has no VM (deploy again, or recreate it)")]
    NoVmToStart {
        /// The instance.
        instance: String,
    },
    /// An instance to recreate has no VM.
    #[error("the instance has no VM")]
    NoVm {
        /// The instance.
        instance: String,
    },
    /// Nothing was applied to the instance yet.
    #[error("nothing was applied to the instance yet: deploy it")]
    NothingApplied {
        /// The instance.
        instance: String,
    },
    /// The instance's stemcell was deleted.
    #[error("stemcell {stemcell} is not uploaded any more")]
    StemcellGone {
        /// The stemcell.
        stemcell: StemcellKey,
    },
    /// The deployment has no such errand.
    #[error(
        "deployment '{deployment}' has no errand '{errand}' (errands: {})",
        if errands.is_empty() { "none".to_string() } else { errands.join(", ") }
    )]
    NoErrand {
        /// The deployment.
        deployment: String,
        /// The errand asked for.
        errand: String,
        /// The errands it has.
        errands: Vec<String>,
    },
    /// An errand could not run on one of its instances.
    #[error("errand '{errand}' could not run on {instance}: {source}")]
    Errand {
        /// The errand.
        errand: String,
        /// The instance.
        instance: String,
        /// Why.
        source: Box<VerbError>,
    },
    /// The errand's instance was never deployed.
    #[error("the errand was not deployed yet: deploy first")]
    ErrandNotDeployed {
        /// The instance.
        instance: String,
    },
    /// The errand's stemcell was deleted.
    #[error("its stemcell is not uploaded any more")]
    ErrandStemcellGone {
        /// The stemcell.
        stemcell: StemcellKey,
    },
    /// The agent's `run_errand` answer is not a result.
    #[error("the agent's answer to run_errand is not a result: {source}")]
    NotAnErrandResult {
        /// Why.
        source: serde_json::Error,
    },
    /// The agent's `fetch_logs` answer is not a blob.
    #[error("the agent's answer is not a blob: {source}")]
    NotABlob {
        /// Why.
        source: serde_json::Error,
    },
    /// The blob an agent reported is not what its upload URL received.
    #[error(transparent)]
    Upload {
        /// Why.
        source: SlotError,
    },
    /// Fetching the logs of some instances failed.
    #[error("fetching logs failed:\n{source}")]
    FetchLogs {
        /// Every instance that failed.
        source: StepsFailed,
    },
    /// An instance could not be deleted cleanly.
    #[error(
        "{instance}: {source}\n(delete with --force to go on past instances that cannot be deleted cleanly)"
    )]
    Delete {
        /// The instance.
        instance: String,
        /// Why.
        source: Box<UpdateError>,
    },
    /// The disk is not an orphaned disk.
    #[error(
        "disk '{disk_cid}' is not an orphaned disk (see `director orphaned-disks`; a disk an \
         instance uses is orphaned first, by scaling down or deleting its deployment)"
    )]
    NotOrphaned {
        /// The disk.
        disk_cid: String,
    },
    /// The CPI's `delete_disk` failed.
    #[error("the CPI could not delete disk {disk_cid}: {source}")]
    DeleteDisk {
        /// The disk.
        disk_cid: String,
        /// Why.
        source: cpi::CpiError,
    },
    /// An agent task failed.
    #[error("{source}")]
    Agent {
        /// The agent method.
        method: &'static str,
        /// Why.
        source: Box<BusError>,
    },
    /// A spec could not be turned into JSON.
    #[error("{source}")]
    Json {
        /// Why.
        source: serde_json::Error,
    },
    /// Updating, starting or stopping the instance failed.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// Making or deleting a VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] Box<StateError>),
}

impl From<StateError> for VerbError {
    fn from(error: StateError) -> VerbError {
        VerbError::State(Box::new(error))
    }
}

impl From<VerbError> for TaskError {
    fn from(error: VerbError) -> TaskError {
        TaskError::failed(error)
    }
}

/// Runs agent task `method` on `agent_id`.
async fn agent_task(
    services: &Services,
    agent_id: &str,
    method: &'static str,
    arguments: Vec<Json>,
) -> Result<Json, VerbError> {
    services
        .bus
        .run_task(
            agent_id,
            method,
            arguments,
            std::time::Duration::from_millis(500),
            services.timeouts.agent_task,
        )
        .await
        .map_err(|source| VerbError::Agent {
            method,
            source: Box::new(source),
        })
}

fn instance_name(instance: &Instance) -> String {
    format!("{}/{}", instance.instance_group, instance.uuid)
}

const DEFAULT_WATCH: WatchTime = WatchTime {
    min_ms: 1000,
    max_ms: 60_000,
};

/// The deployment and its current manifest's watch times and lifecycles, by group.
struct Deployed {
    deployment: Deployment,
    watch: BTreeMap<String, WatchTime>,
    errands: Vec<String>,
}

async fn deployed(services: &Services, name: &str) -> Result<Deployed, TaskError> {
    let deployment = services
        .state
        .deployments()
        .find(name)
        .await?
        .ok_or_else(|| VerbError::DeploymentNotFound {
            deployment: name.to_string(),
        })?;
    let text = services
        .state
        .deployments()
        .manifests(deployment.id)
        .await?
        .into_iter()
        .next()
        .map(|m| m.text)
        .unwrap_or_default();
    let mut watch = BTreeMap::new();
    let mut errands = Vec::new();
    if let Ok(doc) = director_core::yaml::parse(&text, "manifest") {
        if let Ok(validated) = director_core::manifest::validate(Documents {
            manifest: Some(&doc),
            ..Documents::default()
        }) {
            let defaults = validated.manifest.update.clone().unwrap_or_default();
            for group in &validated.manifest.instance_groups {
                let Some(name) = &group.name else { continue };
                let update = group
                    .update
                    .as_ref()
                    .map(|u| u.merged_over(&defaults))
                    .unwrap_or_else(|| defaults.clone());
                watch.insert(
                    name.value.clone(),
                    update.update_watch_time.unwrap_or(DEFAULT_WATCH),
                );
                if group.lifecycle == Lifecycle::Errand {
                    errands.push(name.value.clone());
                }
            }
        }
    }
    Ok(Deployed {
        deployment,
        watch,
        errands,
    })
}

/// Whether `instance` is what `target` (`group`, `group/id`, `group/index`) names.
fn targeted(instance: &Instance, target: Option<&str>) -> bool {
    match target.map(|t| t.split_once('/').unwrap_or((t, ""))) {
        None => true,
        Some((group, "")) => instance.instance_group == group,
        Some((group, which)) => {
            instance.instance_group == group
                && (instance.uuid == which || instance.index.to_string() == which)
        }
    }
}

impl Deployed {
    /// The deployment's instances that `keep` keeps.
    async fn instances(
        &self,
        services: &Services,
        keep: impl Fn(&Instance) -> bool,
    ) -> Result<Vec<Instance>, TaskError> {
        let all = services.state.instances().list(self.deployment.id).await?;
        Ok(all.into_iter().filter(|i| keep(i)).collect())
    }
}

/// Which instances a verb works on.
#[derive(Clone, Copy, Debug)]
pub enum Selection<'a> {
    /// `group`, `group/id` or `group/index`; every instance when `None` (the operator's).
    Target(Option<&'a str>),
    /// These instances (by id), each only if its agent still does not answer a ping: the
    /// resurrector's `scan and fix`, always a recreate.
    Unresponsive(&'a [String]),
}

/// How long the resurrector's last ping before a recreate waits.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// `start`, `stop`, `restart` or `recreate` (`state`) the selected instances, one at a time.
pub async fn change_state(
    services: &Services,
    context: &TaskContext,
    name: &str,
    state: StateChange,
    selection: Selection<'_>,
    skip_drain: bool,
) -> Result<String, TaskError> {
    context.lock(&LockKey::Deployment(name.to_string())).await?;
    let deployed = deployed(services, name).await?;
    let instances: Vec<Instance> = deployed
        .instances(services, |i| match selection {
            Selection::Target(target) => {
                targeted(i, target) && !deployed.errands.contains(&i.instance_group)
            }
            Selection::Unresponsive(ids) => i.vm.is_some() && ids.contains(&i.uuid),
        })
        .await?;
    let target = match selection {
        Selection::Target(target) => target,
        Selection::Unresponsive(_) => None,
    };
    if instances.is_empty() {
        if let Selection::Unresponsive(_) = selection {
            return Ok(format!("no instance of deployment '{name}' to fix"));
        }
        return Err(VerbError::NoInstanceMatches {
            deployment: name.to_string(),
            target: target.unwrap_or("").to_string(),
        }
        .into());
    }
    let cids = uploaded_stemcell_cids(services).await?;
    let builds = BTreeMap::new();
    let options = UpdateOptions {
        skip_drain,
        fix: false,
    };
    let verb = match state {
        StateChange::Start => "Starting instance",
        StateChange::Stop => "Stopping instance",
        StateChange::Restart => "Restarting instance",
        StateChange::Recreate => "Recreating instance",
    };
    let stage = context.log.stage(verb, vec![], instances.len() as u32);
    // The instances acted on (the resurrector leaves those whose agents answer again).
    let mut acted: Vec<String> = Vec::new();
    for (n, instance) in instances.iter().enumerate() {
        context.checkpoint()?;
        let step = instance.label();
        let index = n as u32 + 1;
        stage.started(&step, index);
        let update = InstanceUpdate {
            services,
            deployment: name,
            builds: &builds,
            options: &options,
            stage: &stage,
            index,
            step: step.clone(),
            stemcell_cids: &cids,
            cancellation: context.cancellation(),
            task: context.id,
        };
        let watch = deployed
            .watch
            .get(&instance.instance_group)
            .copied()
            .unwrap_or(DEFAULT_WATCH);
        let result = match selection {
            Selection::Target(_) => one(services, &update, instance, state, watch).await,
            Selection::Unresponsive(_) => {
                let agent_id = instance.vm.as_ref().map(|vm| vm.agent_id.as_str());
                let answers = match agent_id {
                    Some(agent_id) => services
                        .bus
                        .request(agent_id, "ping", vec![], RECHECK)
                        .await
                        .is_ok(),
                    None => false,
                };
                if answers {
                    update.status("its agent answers again: left alone");
                    stage.finished(&step, index);
                    continue;
                }
                recreate(services, &update, instance, false, watch, true).await
            }
        };
        match result {
            Ok(()) => {
                stage.finished(&step, index);
                acted.push(format!("{}/{}", instance.instance_group, instance.uuid));
            }
            Err(e) => {
                stage.failed(&step, index, &e.to_string());
                return Err(VerbError::Instance {
                    instance: step,
                    source: Box::new(e),
                }
                .into());
            }
        }
    }
    let (user, reason) = match selection {
        Selection::Target(_) => ("admin", None),
        Selection::Unresponsive(_) => (crate::health::USER, Some("its agent stopped answering")),
    };
    if !acted.is_empty() {
        let _ = services
            .state
            .events()
            .insert(&NewEvent {
                user: user.to_string(),
                action: match state {
                    StateChange::Start => "start",
                    StateChange::Stop => "stop",
                    StateChange::Restart => "restart",
                    StateChange::Recreate => "recreate",
                }
                .to_string(),
                object_type: "instance".to_string(),
                object_name: target.map(str::to_string),
                deployment: Some(name.to_string()),
                task: Some(context.id),
                context: json!({
                    "instances": acted,
                    "reason": reason,
                }),
                error: None,
            })
            .await;
    }
    Ok(format!(
        "{} {} instance(s) of deployment '{name}'",
        verb.trim_end_matches(" instance").to_lowercase(),
        acted.len()
    ))
}

async fn one(
    services: &Services,
    update: &InstanceUpdate<'_>,
    instance: &Instance,
    state: StateChange,
    watch: WatchTime,
) -> Result<(), VerbError> {
    let rows = services.state.instances();
    let Some(vm) = &instance.vm else {
        if state == StateChange::Stop {
            return Ok(rows
                .set_state(instance.id, "stopped", instance.bootstrap)
                .await?);
        }
        return Err(VerbError::NoVmToStart {
            instance: instance_name(instance),
        });
    };
    let alive = services
        .bus
        .request(
            &vm.agent_id,
            "ping",
            vec![],
            std::time::Duration::from_secs(10),
        )
        .await
        .is_ok();
    match state {
        StateChange::Stop => {
            if alive {
                update.drain_and_stop(vm, DrainKind::Shutdown, None).await?;
            }
            Ok(rows
                .set_state(instance.id, "stopped", instance.bootstrap)
                .await?)
        }
        StateChange::Start | StateChange::Restart => {
            if !alive {
                let explained = super::vms::explain_silent_agent(
                    services,
                    &update.step,
                    &vm.cid,
                    &vm.agent_id,
                    std::time::Duration::from_secs(10),
                )
                .await;
                return Err(UpdateError::SilentAgent {
                    vm_cid: vm.cid.clone(),
                    explanation: explained,
                    advice: "recreate the instance to replace its VM",
                }
                .into());
            }
            if state == StateChange::Restart {
                update.drain_and_stop(vm, DrainKind::Update, None).await?;
            }
            update.start(&vm.agent_id, watch).await?;
            Ok(rows
                .set_state(instance.id, "started", instance.bootstrap)
                .await?)
        }
        StateChange::Recreate => recreate(services, update, instance, alive, watch, true).await,
    }
}

/// Recreates one instance's VM from what was last applied to it (cck's `recreate_vm`, and
/// `recreate_vm_without_wait` when `wait` is false: its jobs are started but not watched),
/// reporting on step `index` of `stage`. The caller holds the deployment's lock.
pub async fn recreate_instance(
    services: &Services,
    context: &TaskContext,
    name: &str,
    instance: &Instance,
    stage: &Stage,
    index: u32,
    wait: bool,
) -> Result<(), TaskError> {
    let deployed = deployed(services, name).await?;
    let cids = uploaded_stemcell_cids(services).await?;
    let builds = BTreeMap::new();
    let options = UpdateOptions {
        skip_drain: false,
        fix: false,
    };
    let update = InstanceUpdate {
        services,
        deployment: name,
        builds: &builds,
        options: &options,
        stage,
        index,
        step: instance.label(),
        stemcell_cids: &cids,
        cancellation: context.cancellation(),
        task: context.id,
    };
    let watch = deployed
        .watch
        .get(&instance.instance_group)
        .copied()
        .unwrap_or(DEFAULT_WATCH);
    let alive = match &instance.vm {
        Some(vm) => services
            .bus
            .request(&vm.agent_id, "ping", vec![], RECHECK)
            .await
            .is_ok(),
        None => false,
    };
    recreate(services, &update, instance, alive, watch, wait)
        .await
        .map_err(|e| {
            VerbError::Instance {
                instance: instance.label(),
                source: Box::new(e),
            }
            .into()
        })
}

async fn recreate(
    services: &Services,
    update: &InstanceUpdate<'_>,
    instance: &Instance,
    alive: bool,
    watch: WatchTime,
    wait: bool,
) -> Result<(), VerbError> {
    let vm = instance.vm.as_ref().ok_or_else(|| VerbError::NoVm {
        instance: instance_name(instance),
    })?;
    let nothing_applied = || VerbError::NothingApplied {
        instance: instance_name(instance),
    };
    let spec: InstanceSpec = instance
        .observed
        .clone()
        .and_then(|o| serde_json::from_value(o).ok())
        .ok_or_else(nothing_applied)?;
    let apply = recorded_apply_spec(services, instance).ok_or_else(nothing_applied)?;
    if alive {
        update.drain_and_stop(vm, DrainKind::Shutdown, None).await?;
    }
    if let Some(disk) = &instance.disk {
        unmount_and_detach(services, &vm.cid, &vm.agent_id, &disk.cid, alive).await?;
    }
    delete_vm(services, &vm.cid, &vm.agent_id).await?;
    services.state.instances().clear_vm(instance.id).await?;
    let stemcell = StemcellKey::new(&spec.stemcell.name, &spec.stemcell.version);
    let stemcell_cid = match update.stemcell_cids.get(&stemcell) {
        Some(cid) => cid.clone(),
        None => return Err(VerbError::StemcellGone { stemcell }),
    };
    let created = create_vm(
        services,
        &VmRequest {
            label: update.step.clone(),
            stemcell_cid,
            cloud_properties: spec.cloud_properties.clone(),
            networks: serde_json::to_value(&apply.networks).unwrap_or(Json::Null),
            env: spec.env.clone(),
            disk_cids: instance.disk.iter().map(|d| d.cid.clone()).collect(),
            metadata: json!({"deployment": apply.deployment, "instance_group": apply.name, "id": apply.id, "index": apply.index.to_string()}),
            owner: VmOwner::instance(instance, update.task),
        },
    )
    .await?;
    record_vm(services, instance.id, &created).await?;
    if let Some(disk) = &instance.disk {
        attach_and_mount(services, &created.cid, &created.agent_id, &disk.cid).await?;
    }
    agent_task(services, &created.agent_id, "apply", vec![to_json(&apply)?]).await?;
    if instance.state == "started" {
        if wait {
            update.start(&created.agent_id, watch).await?;
        } else {
            update.start_without_waiting(&created.agent_id).await?;
        }
    }
    Ok(())
}

fn to_json(value: &impl serde::Serialize) -> Result<Json, VerbError> {
    serde_json::to_value(value).map_err(|source| VerbError::Json { source })
}

/// Runs errand `errand`: for each instance of that errand group, a VM is made, the errand's
/// jobs applied, their `bin/run` run, and the VM deleted.
pub async fn run_errand(
    services: &Services,
    context: &TaskContext,
    name: &str,
    errand: &str,
    _staging: &Path,
) -> Result<String, TaskError> {
    context.lock(&LockKey::Deployment(name.to_string())).await?;
    let deployed = deployed(services, name).await?;
    if !deployed.errands.contains(&errand.to_string()) {
        return Err(VerbError::NoErrand {
            deployment: name.to_string(),
            errand: errand.to_string(),
            errands: deployed.errands.clone(),
        }
        .into());
    }
    let instances: Vec<Instance> = deployed
        .instances(services, |i| i.instance_group == errand)
        .await?;
    let cids = uploaded_stemcell_cids(services).await?;
    let stage = context.log.stage(
        "Running errand",
        vec![errand.to_string()],
        instances.len() as u32,
    );
    let mut runs = Vec::new();
    for (n, instance) in instances.iter().enumerate() {
        context.checkpoint()?;
        let step = instance.label();
        let index = n as u32 + 1;
        stage.started(&step, index);
        match errand_on(services, instance, &cids, &step, context.id).await {
            Ok(run) => {
                if run.exit_code == 0 {
                    stage.finished(&step, index);
                } else {
                    stage.failed(&step, index, &format!("exit code {}", run.exit_code));
                }
                runs.push(json!({
                    "instance": step,
                    "exit_code": run.exit_code,
                    "stdout": run.stdout,
                    "stderr": run.stderr,
                }));
            }
            Err(e) => {
                stage.failed(&step, index, &e.to_string());
                return Err(VerbError::Errand {
                    errand: errand.to_string(),
                    instance: step,
                    source: Box::new(e),
                }
                .into());
            }
        }
    }
    // The runs are the task's result, as BOSH's errand tasks answer them; a non-zero exit
    // is the errand's outcome (the CLI reports it), not a failure of the task.
    Ok(Json::from(runs).to_string())
}

async fn errand_on(
    services: &Services,
    instance: &Instance,
    cids: &StemcellCids,
    step: &str,
    task: TaskId,
) -> Result<ErrandResult, VerbError> {
    let not_deployed = || VerbError::ErrandNotDeployed {
        instance: instance_name(instance),
    };
    let spec: InstanceSpec = instance
        .observed
        .clone()
        .and_then(|o| serde_json::from_value(o).ok())
        .ok_or_else(not_deployed)?;
    let apply = recorded_apply_spec(services, instance).ok_or_else(not_deployed)?;
    let stemcell = StemcellKey::new(&spec.stemcell.name, &spec.stemcell.version);
    let stemcell_cid = match cids.get(&stemcell) {
        Some(cid) => cid.clone(),
        None => return Err(VerbError::ErrandStemcellGone { stemcell }),
    };
    let created = create_vm(
        services,
        &VmRequest {
            label: step.to_string(),
            stemcell_cid,
            cloud_properties: spec.cloud_properties.clone(),
            networks: serde_json::to_value(&apply.networks).unwrap_or(Json::Null),
            env: spec.env.clone(),
            disk_cids: Vec::new(),
            metadata: json!({"deployment": apply.deployment, "instance_group": apply.name, "errand": true}),
            owner: VmOwner::errand(instance, task),
        },
    )
    .await?;
    let run = async {
        agent_task(services, &created.agent_id, "apply", vec![to_json(&apply)?]).await?;
        let run = agent_task(services, &created.agent_id, "run_errand", vec![]).await?;
        serde_json::from_value::<ErrandResult>(run)
            .map_err(|source| VerbError::NotAnErrandResult { source })
    };
    let outcome = run.await;
    delete_vm(services, &created.cid, &created.agent_id).await?;
    outcome
}

/// Deletes a deployment: every instance (VMs deleted, disks orphaned, addresses released),
/// then its record. `force` goes on past instances that cannot be deleted cleanly.
pub async fn delete_deployment(
    services: &Services,
    context: &TaskContext,
    name: &str,
    force: bool,
) -> Result<String, TaskError> {
    context.lock(&LockKey::Deployment(name.to_string())).await?;
    let deployment = services
        .state
        .deployments()
        .find(name)
        .await?
        .ok_or_else(|| VerbError::DeploymentNotFound {
            deployment: name.to_string(),
        })?;
    let instances = services.state.instances().list(deployment.id).await?;
    let stage = context
        .log
        .stage("Deleting instances", vec![], instances.len() as u32);
    let mut problems = Vec::new();
    for (n, instance) in instances.iter().enumerate() {
        context.checkpoint()?;
        let step = instance.label();
        let index = n as u32 + 1;
        stage.started(&step, index);
        match delete_instance(services, context, instance, force).await {
            Ok(()) => stage.finished(&step, index),
            Err(e) if force => {
                stage.failed(&step, index, &e.to_string());
                problems.push(format!("{step}: {e}"));
                if let Some(disk) = &instance.disk {
                    let _ = services.state.instances().orphan_disk(&disk.cid).await;
                }
                let _ = services.state.instances().clear_vm(instance.id).await;
                let _ = services.state.instances().delete(instance.id).await;
            }
            Err(e) => {
                stage.failed(&step, index, &e.to_string());
                return Err(VerbError::Delete {
                    instance: step,
                    source: Box::new(e),
                }
                .into());
            }
        }
    }
    services.state.deployments().delete(deployment.id).await?;
    let _ = services
        .state
        .events()
        .insert(&NewEvent {
            user: "admin".to_string(),
            action: "delete".to_string(),
            object_type: "deployment".to_string(),
            object_name: Some(name.to_string()),
            deployment: Some(name.to_string()),
            task: Some(context.id),
            context: json!({"instances": instances.len(), "problems": problems}),
            error: None,
        })
        .await;
    Ok(if problems.is_empty() {
        format!(
            "deleted deployment '{name}' ({} instance(s); their disks are orphaned)",
            instances.len()
        )
    } else {
        format!(
            "deleted deployment '{name}'; left behind:\n{}",
            problems.join("\n")
        )
    })
}

/// Deletes an orphaned disk: from the IaaS, then from the state. A disk an instance uses is
/// refused (it is orphaned by scaling down, removing `persistent_disk` or deleting the
/// deployment first).
pub async fn delete_orphaned_disk(services: &Services, cid: &str) -> Result<String, TaskError> {
    let orphaned = services.state.instances().orphaned_disks().await?;
    let Some(disk) = orphaned.iter().find(|d| d.cid == cid) else {
        return Err(VerbError::NotOrphaned {
            disk_cid: cid.to_string(),
        }
        .into());
    };
    let target = cid.to_string();
    match services.cpi_call(move |cpi| cpi.delete_disk(&target)).await {
        Ok(()) => {}
        Err(e) if e.kind == cpi::ErrorKind::DiskNotFound => {}
        Err(source) => {
            return Err(VerbError::DeleteDisk {
                disk_cid: cid.to_string(),
                source,
            }
            .into());
        }
    }
    services.state.instances().delete_disk(cid).await?;
    Ok(format!("deleted orphaned disk {cid} ({} MB)", disk.size))
}

/// Removes a stemcell's image from the IaaS after its record went (`cid` empty: the CPI
/// never had it). A failure is a warning: the record is gone, the image only leaks.
pub async fn delete_stemcell_image(services: &Services, label: &str, cid: &str) -> Option<String> {
    if cid.is_empty() {
        return None;
    }
    let target = cid.to_string();
    match services
        .cpi_call(move |cpi| cpi.delete_stemcell(&target))
        .await
    {
        Ok(()) => None,
        Err(e) => Some(format!(
            "the CPI could not delete the image {cid} of stemcell {label} (delete it by hand): {e}"
        )),
    }
}

/// One agent's `fetch_logs`, into an upload URL made for it: the blob it reports must be
/// the one that URL received. The URL's slot keeps holding the tarball (nothing records
/// it) until the CLI fetched its link or the slot expired.
async fn fetch_logs_from(services: &Services, agent_id: &str) -> Result<UploadedBlob, VerbError> {
    let upload = services.upload_url(Purpose::Logs, None).await?;
    let answer = agent_task(
        services,
        agent_id,
        "fetch_logs",
        vec![Json::from(upload.url.clone())],
    )
    .await?;
    let blob: UploadedBlob =
        serde_json::from_value(answer).map_err(|source| VerbError::NotABlob { source })?;
    services
        .blobstore
        .accept_upload(&services.state, &upload, &blob.blob_id)
        .await
        .map_err(|source| VerbError::Upload { source })?;
    Ok(blob)
}

/// `logs`: every targeted instance that has a VM packs its `/var/vcap/sys/log` and `PUT`s it
/// to a signed URL (the agent's `fetch_logs`); the task's result lists the blobs
/// (`[{"instance", "blob_id", "size"}]`), which nothing refers to: `clean-up` removes them
/// once their upload slots (and the links the CLI fetched) have expired.
pub async fn fetch_logs(
    services: &Services,
    context: &TaskContext,
    name: &str,
    target: Option<&str>,
) -> Result<String, TaskError> {
    let deployed = deployed(services, name).await?;
    let instances: Vec<Instance> = deployed
        .instances(services, |i| targeted(i, target) && i.vm.is_some())
        .await?;
    if instances.is_empty() {
        return Err(VerbError::NoInstanceWithVmMatches {
            deployment: name.to_string(),
            target: target.unwrap_or("").to_string(),
        }
        .into());
    }
    let stage = context
        .log
        .stage("Fetching logs", vec![], instances.len() as u32);
    let fetched = join_all(instances.iter().enumerate().map(|(n, instance)| {
        let stage = &stage;
        async move {
            let step = instance.label();
            let index = n as u32 + 1;
            stage.started(&step, index);
            let agent_id = instance.vm.as_ref().map(|vm| vm.agent_id.as_str());
            let result = match agent_id {
                Some(agent_id) => fetch_logs_from(services, agent_id).await,
                None => Err(VerbError::NoVm {
                    instance: instance_name(instance),
                }),
            };
            match &result {
                Ok(_) => stage.finished(&step, index),
                Err(e) => stage.failed(&step, index, &e.to_string()),
            }
            result
                .map(|blob| {
                    json!({
                        "instance": step,
                        "group": instance.instance_group,
                        "id": instance.uuid,
                        "index": instance.index,
                        "blob_id": blob.blob_id,
                        "size": blob.size,
                    })
                })
                .map_err(|e| StepFailure {
                    label: step,
                    source: Box::new(e),
                })
        }
    }))
    .await;
    let mut blobs = Vec::new();
    let mut failures = Vec::new();
    for result in fetched {
        match result {
            Ok(blob) => blobs.push(blob),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        return Err(VerbError::FetchLogs {
            source: StepsFailed { failures },
        }
        .into());
    }
    Ok(Json::from(blobs).to_string())
}
