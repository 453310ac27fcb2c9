//! The deploy task (reference §7.1): lock the deployment, prepare the plan, record the
//! instances and their addresses, compile, delete what is not needed, create missing VMs,
//! update the groups (canaries first, then a pool of `max_in_flight` per AZ), run post-deploy,
//! and record the manifest, what it uses and what it provides.
//!
//! State is written as each step finishes: a failure leaves a record the next deploy
//! converges from (unfinished instances are redone), and a failing canary stops the deploy
//! before anything else is touched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use futures::future::join_all;
use serde_json::json;

use super::compile::{Builds, compile};
use super::prepare::{PrepareError, PreparedDeploy, prepare_deploy};
use super::stemcells::{StemcellCidError, StemcellCids, ensure_stemcells};
use super::update::{
    InstanceUpdate, UpdateError, UpdateOptions, create_missing_vm, delete_instance,
};
use super::{Services, run_steps};
use crate::tasks::{LockKey, TaskContext, TaskError};
use director_bus::BusError;
use director_core::deploy::{Action, GroupPlan, InstancePlan, PlanOptions};
use director_state::{Deployment, Instance, NewEvent, NewInstance, StateError};

/// Why a deploy failed (besides what compiling and updating instances say).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The manifest is not YAML.
    #[error("{source}")]
    ManifestYaml {
        /// Why.
        source: director_core::diagnostics::Diagnostic,
    },
    /// The manifest names no deployment.
    #[error("the manifest has no 'name' (expected the deployment's name)")]
    NoName,
    /// The deploy could not be prepared.
    #[error(transparent)]
    Prepare(Box<PrepareError>),
    /// A stemcell could not be given to the CPI.
    #[error(transparent)]
    Stemcell(Box<StemcellCidError>),
    /// An address was taken meanwhile.
    #[error(
        "{object} was taken by another deployment while this one was being planned; deploy again"
    )]
    AddressTaken {
        /// The deployment.
        deployment: String,
        /// The address.
        object: director_state::Object,
    },
    /// The deployment record disappeared under the deploy.
    #[error("the deployment vanished")]
    Vanished {
        /// The deployment.
        deployment: String,
    },
    /// The deployment was not recorded before its instances were updated.
    #[error("the deployment was not recorded")]
    NotRecorded {
        /// The deployment.
        deployment: String,
    },
    /// A planned group is not in the desired deployment.
    #[error("group '{group}' is not in the plan")]
    GroupNotPlanned {
        /// The group.
        group: String,
    },
    /// A phase names an instance the group does not plan.
    #[error("instance {instance} is not planned")]
    InstanceNotPlanned {
        /// The instance's uuid.
        instance: String,
    },
    /// A planned instance has no work.
    #[error("no work")]
    NoWork {
        /// The instance.
        instance: String,
    },
    /// A planned instance was not recorded.
    #[error("the instance was not recorded")]
    InstanceNotRecorded {
        /// The instance.
        instance: String,
    },
    /// An instance to run post-deploy on has no VM.
    #[error("no VM")]
    NoVm {
        /// The instance.
        instance: String,
    },
    /// post-deploy failed.
    #[error("post-deploy failed: {source}")]
    PostDeploy {
        /// The instance.
        instance: String,
        /// Why.
        source: Box<BusError>,
    },
    /// Updating (or making, deleting) an instance failed.
    #[error(transparent)]
    Update(#[from] UpdateError),
}

impl From<PrepareError> for DeployError {
    fn from(error: PrepareError) -> DeployError {
        DeployError::Prepare(Box::new(error))
    }
}

impl From<StemcellCidError> for DeployError {
    fn from(error: StemcellCidError) -> DeployError {
        DeployError::Stemcell(Box::new(error))
    }
}

impl From<DeployError> for TaskError {
    fn from(error: DeployError) -> TaskError {
        TaskError::failed(error)
    }
}

impl From<StemcellCidError> for TaskError {
    fn from(error: StemcellCidError) -> TaskError {
        TaskError::failed(error)
    }
}

/// What `POST /deployments` asks for.
#[derive(Clone, Debug, Default)]
pub struct DeployRequest {
    /// The manifest (interpolated by the CLI; the director's variables still placeholders).
    pub manifest_text: String,
    /// Plan options (`--recreate`, `--canaries`, `--max-in-flight`).
    pub plan: PlanOptions,
    /// Update options (`--skip-drain`, `--fix`).
    pub update: UpdateOptions,
}

/// How many VMs are created or deleted at once outside of updates (BOSH's `max_threads`).
const PARALLEL_VMS: usize = 32;

/// The deployment name a manifest declares.
pub fn manifest_name(text: &str) -> Result<String, DeployError> {
    let doc = director_core::yaml::parse(text, "manifest")
        .map_err(|source| DeployError::ManifestYaml { source })?;
    doc.get("name")
        .and_then(director_core::yaml::Node::as_str)
        .map(str::to_string)
        .ok_or(DeployError::NoName)
}

/// Records new instances and every instance's addresses before anything is built, so that
/// no concurrent deploy takes them.
async fn record_instances(
    services: &Services,
    deployment: &Deployment,
    prepared: &PreparedDeploy,
) -> Result<BTreeMap<String, Instance>, TaskError> {
    let state = services.state.instances();
    for work in prepared.prepared.planned.work.values() {
        let placed = &work.placed;
        let id = match prepared.instances.get(&placed.uuid) {
            Some(instance) => {
                if instance.bootstrap != placed.bootstrap {
                    state
                        .set_state(instance.id, &instance.state, placed.bootstrap)
                        .await?;
                }
                instance.id
            }
            None => {
                state
                    .create(&NewInstance {
                        deployment_id: deployment.id,
                        instance_group: work.group.clone(),
                        uuid: placed.uuid.clone(),
                        index: placed.index,
                        az: placed.az.clone(),
                        bootstrap: placed.bootstrap,
                    })
                    .await?
            }
        };
        let mut ips: Vec<(String, String, bool)> = placed
            .networks
            .iter()
            .filter_map(|(network, settings)| {
                Some((
                    network.clone(),
                    settings.ip?.to_string(),
                    settings.is_static,
                ))
            })
            .collect();
        ips.sort();
        // Unchanged addresses need no write (a no-op deploy of thousands of instances
        // would otherwise write each).
        if let Some(instance) = prepared.instances.get(&placed.uuid) {
            let mut recorded = instance.ips.clone();
            recorded.sort();
            if recorded == ips {
                continue;
            }
        }
        state
            .set_ips(deployment.id, id, &ips)
            .await
            .map_err(|e| match e {
                StateError::AlreadyExists { object } => {
                    TaskError::from(DeployError::AddressTaken {
                        deployment: deployment.name.clone(),
                        object,
                    })
                }
                other => other.into(),
            })?;
    }
    Ok(state
        .list(deployment.id)
        .await?
        .into_iter()
        .map(|i| (i.uuid.clone(), i))
        .collect())
}

async fn delete_unneeded(
    services: &Services,
    context: &TaskContext,
    prepared: &PreparedDeploy,
    skip_drain: bool,
) -> Result<(), TaskError> {
    let plan = &prepared.prepared.planned.plan;
    let doomed: Vec<&InstancePlan> = plan
        .deleted_groups
        .iter()
        .chain(plan.groups.iter().flat_map(|g| &g.deleted))
        .collect();
    if doomed.is_empty() {
        return Ok(());
    }
    let stage = context
        .log
        .stage("Deleting unneeded instances", vec![], doomed.len() as u32);
    let steps = doomed
        .iter()
        .map(|plan| {
            let work = move |_| async move {
                match prepared.instances.get(&plan.id) {
                    Some(instance) => {
                        delete_instance(services, context, instance, skip_drain).await
                    }
                    None => Ok(()),
                }
            };
            (plan.label(), work)
        })
        .collect();
    run_steps(context, &stage, steps, PARALLEL_VMS, &AtomicU32::new(0)).await
}

async fn create_missing_vms(
    services: &Services,
    context: &TaskContext,
    prepared: &PreparedDeploy,
    instances: &BTreeMap<String, Instance>,
    cids: &StemcellCids,
) -> Result<(), TaskError> {
    let plan = &prepared.prepared.planned.plan;
    let missing: Vec<&InstancePlan> = plan
        .groups
        .iter()
        .filter(|g| !g.errand)
        .flat_map(|g| &g.instances)
        .filter(|i| i.action == Action::Create)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let stage = context
        .log
        .stage("Creating missing vms", vec![], missing.len() as u32);
    let steps = missing
        .iter()
        .map(|plan| {
            let step = plan.label();
            let label = step.clone();
            let work = move |_| async move {
                match (
                    prepared.prepared.planned.work.get(&plan.id),
                    instances.get(&plan.id),
                ) {
                    (Some(work), Some(instance)) => Ok(create_missing_vm(
                        services,
                        &prepared.name,
                        &step,
                        work,
                        instance,
                        cids,
                        context.id,
                    )
                    .await?),
                    _ => Err(DeployError::InstanceNotRecorded { instance: step }),
                }
            };
            (label, work)
        })
        .collect();
    run_steps(context, &stage, steps, PARALLEL_VMS, &AtomicU32::new(0)).await
}

struct Updater<'a> {
    services: &'a Services,
    context: &'a TaskContext,
    prepared: &'a PreparedDeploy,
    builds: &'a Builds,
    options: &'a UpdateOptions,
    cids: &'a StemcellCids,
}

impl Updater<'_> {
    /// Updates one group phase by phase, each through a pool of its `max_in_flight`
    /// ([`run_steps`]): the first failure starts nothing new; instances already updating
    /// finish, then the group fails with every error seen.
    async fn group(&self, group: &GroupPlan) -> Result<(), TaskError> {
        if group.phases.is_empty() || group.errand {
            return Ok(());
        }
        let desired = self
            .prepared
            .prepared
            .desired
            .groups
            .iter()
            .find(|g| g.name == group.name)
            .ok_or_else(|| DeployError::GroupNotPlanned {
                group: group.name.clone(),
            })?;
        let stage = self.context.log.stage(
            "Updating instance",
            vec![group.name.clone()],
            group.changed() as u32,
        );
        // Instances are read again: creating missing VMs changed them.
        let instances: BTreeMap<String, Instance> = self
            .services
            .state
            .instances()
            .list(self.prepared.deployment_id()?)
            .await?
            .into_iter()
            .map(|i| (i.uuid.clone(), i))
            .collect();
        let started = AtomicU32::new(0);
        for phase in &group.phases {
            self.context.checkpoint()?;
            let watch = if phase.canary {
                desired.rollout.canary_watch
            } else {
                desired.rollout.update_watch
            };
            let mut steps = Vec::new();
            for uuid in &phase.instances {
                let plan = group
                    .instances
                    .iter()
                    .find(|i| &i.id == uuid)
                    .ok_or_else(|| DeployError::InstanceNotPlanned {
                        instance: uuid.clone(),
                    })?;
                let step = if phase.canary {
                    format!("{} (canary)", plan.label())
                } else {
                    plan.label()
                };
                let (stage, instances) = (&stage, &instances);
                let label = step.clone();
                let work = move |index| async move {
                    let work = self
                        .prepared
                        .prepared
                        .planned
                        .work
                        .get(&plan.id)
                        .ok_or_else(|| DeployError::NoWork {
                            instance: plan.label(),
                        })?;
                    let instance = instances.get(&plan.id).ok_or_else(|| {
                        DeployError::InstanceNotRecorded {
                            instance: plan.label(),
                        }
                    })?;
                    let update = InstanceUpdate {
                        services: self.services,
                        deployment: &self.prepared.name,
                        builds: self.builds,
                        options: self.options,
                        stage,
                        index,
                        step,
                        stemcell_cids: self.cids,
                        cancellation: self.context.cancellation(),
                        task: self.context.id,
                    };
                    Ok::<(), DeployError>(update.run(plan, work, instance, watch).await?)
                };
                steps.push((label, work));
            }
            run_steps(self.context, &stage, steps, phase.max_in_flight, &started).await?;
        }
        Ok(())
    }

    /// Groups in order; consecutive groups with `serial: false` update together.
    async fn all(&self) -> Result<(), TaskError> {
        let groups = &self.prepared.prepared.planned.plan.groups;
        let mut i = 0;
        while i < groups.len() {
            if groups[i].serial {
                self.group(&groups[i]).await?;
                i += 1;
                continue;
            }
            let start = i;
            while i < groups.len() && !groups[i].serial {
                i += 1;
            }
            let results = join_all(groups[start..i].iter().map(|g| self.group(g))).await;
            for result in results {
                result?;
            }
        }
        Ok(())
    }
}

impl PreparedDeploy {
    fn deployment_id(&self) -> Result<director_state::DeploymentId, TaskError> {
        self.deployment.as_ref().map(|d| d.id).ok_or_else(|| {
            DeployError::NotRecorded {
                deployment: self.name.clone(),
            }
            .into()
        })
    }
}

/// Errand instances get no VM on deploy; what `run-errand` will apply is recorded now.
async fn record_errands(
    services: &Services,
    prepared: &PreparedDeploy,
    instances: &BTreeMap<String, Instance>,
    builds: &Builds,
    task: director_state::TaskId,
) -> Result<(), TaskError> {
    for group in prepared
        .prepared
        .planned
        .plan
        .groups
        .iter()
        .filter(|g| g.errand)
    {
        for planned in &group.instances {
            let (Some(work), Some(instance)) = (
                prepared.prepared.planned.work.get(&planned.id),
                instances.get(&planned.id),
            ) else {
                continue;
            };
            let unchanged = instance
                .observed
                .as_ref()
                .and_then(|o| {
                    serde_json::from_value::<director_core::deploy::InstanceSpec>(o.clone()).ok()
                })
                .is_some_and(|spec| spec == work.spec);
            if unchanged {
                continue;
            }
            let (spec, rendered) =
                super::update::apply_spec(services, &prepared.name, work, builds, task)
                    .await
                    .map_err(DeployError::from)?;
            let rows = services.state.instances();
            rows.set_rendered(instance.id, &rendered).await?;
            let observed =
                super::update::observed_document(work, &spec).map_err(DeployError::from)?;
            rows.set_observed(instance.id, &observed, true).await?;
        }
    }
    Ok(())
}

async fn post_deploy(
    services: &Services,
    context: &TaskContext,
    deployment: &Deployment,
) -> Result<(), TaskError> {
    let instances = services.state.instances().list(deployment.id).await?;
    let running: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.vm.is_some() && i.state == "started")
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    let stage = context
        .log
        .stage("Running post-deploy", vec![], running.len() as u32);
    // All at once, as BOSH runs post-deploy.
    let steps = running
        .iter()
        .map(|instance| {
            let work = move |_| async move {
                let vm = instance.vm.as_ref().ok_or_else(|| DeployError::NoVm {
                    instance: instance.label(),
                })?;
                services
                    .bus
                    .run_task(
                        &vm.agent_id,
                        "run_script",
                        vec![json!("post-deploy"), json!({})],
                        std::time::Duration::from_millis(500),
                        services.timeouts.agent_task,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|source| DeployError::PostDeploy {
                        instance: instance.label(),
                        source: Box::new(source),
                    })
            };
            (instance.label(), work)
        })
        .collect();
    run_steps(context, &stage, steps, running.len(), &AtomicU32::new(0)).await
}

/// Counts of what a deploy did, for the task's result.
fn summary(prepared: &PreparedDeploy) -> String {
    let plan = &prepared.prepared.planned.plan;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for instance in plan.all_instances() {
        if instance.action != Action::NoOp {
            *counts.entry(instance.action.word()).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return format!(
            "deployment '{}' is up to date: no instance changed",
            prepared.name
        );
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(word, n)| format!("{n} {word}"))
        .collect();
    format!("deployed '{}': {}", prepared.name, parts.join(", "))
}

/// Runs a deploy as a task.
pub async fn run_deploy(
    services: Arc<Services>,
    context: TaskContext,
    request: DeployRequest,
    staging: PathBuf,
) -> Result<String, TaskError> {
    let name = manifest_name(&request.manifest_text)?;
    context.lock(&LockKey::Deployment(name.clone())).await?;
    let preparing = context.log.stage("Preparing deployment", vec![], 1);
    preparing.started("Preparing deployment", 1);
    let mut plan_options = request.plan.clone();
    if request.update.fix {
        plan_options.unresponsive = unresponsive_instances(&services, &name).await?;
    }
    let prepared = prepare_deploy(
        &services.state,
        &services.blobstore,
        &services.templates,
        &request.manifest_text,
        &plan_options,
    )
    .await;
    let mut prepared = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            preparing.failed("Preparing deployment", 1, &e.to_string());
            return Err(DeployError::from(e).into());
        }
    };
    preparing.finished("Preparing deployment", 1);
    context.log.debug(format!(
        "plan: {}",
        serde_json::to_string(&prepared.prepared.planned.plan).unwrap_or_default()
    ));
    let outcome = execute(&services, &context, &request, &staging, &mut prepared).await;
    let deployment = prepared.deployment.clone();
    let _ = services
        .state
        .events()
        .insert(&NewEvent {
            user: "admin".to_string(),
            action: if prepared.instances.is_empty() { "create" } else { "update" }.to_string(),
            object_type: "deployment".to_string(),
            object_name: Some(name.clone()),
            deployment: deployment.map(|d| d.name),
            task: Some(context.id),
            context: json!({"changes": prepared.prepared.planned.plan.all_instances()
                .filter(|i| i.action != Action::NoOp)
                .map(|i| json!({"instance": i.label(), "action": i.action.word(), "reasons": i.reasons}))
                .collect::<Vec<_>>()}),
            error: outcome.as_ref().err().map(ToString::to_string),
        })
        .await;
    outcome.map(|()| summary(&prepared))
}

/// How long `--fix` waits for each agent's answer to `ping`.
const FIX_PING: std::time::Duration = std::time::Duration::from_secs(5);

/// `--fix`: the instances of the deployment that have a VM whose agent does not answer a
/// ping (all asked at once), for the plan to recreate (BOSH's `--fix`).
async fn unresponsive_instances(
    services: &Services,
    deployment: &str,
) -> Result<std::collections::BTreeSet<String>, TaskError> {
    let Some(deployment) = services.state.deployments().find(deployment).await? else {
        return Ok(Default::default());
    };
    let instances = services.state.instances().list(deployment.id).await?;
    let pings = instances.iter().filter_map(|instance| {
        let vm = instance.vm.as_ref()?;
        Some(async move {
            let answered = services
                .bus
                .request(&vm.agent_id, "ping", vec![], FIX_PING)
                .await
                .is_ok();
            (!answered).then(|| instance.uuid.clone())
        })
    });
    Ok(join_all(pings).await.into_iter().flatten().collect())
}

async fn execute(
    services: &Arc<Services>,
    context: &TaskContext,
    request: &DeployRequest,
    staging: &std::path::Path,
    prepared: &mut PreparedDeploy,
) -> Result<(), TaskError> {
    let services = services.as_ref();
    let cids = ensure_stemcells(services, prepared.catalog.stemcells.values(), staging).await?;
    let deployment = match &prepared.deployment {
        Some(d) => d.clone(),
        None => match services.state.deployments().create(&prepared.name).await {
            Ok(d) => d,
            Err(StateError::AlreadyExists { .. }) => services
                .state
                .deployments()
                .find(&prepared.name)
                .await?
                .ok_or_else(|| DeployError::Vanished {
                    deployment: prepared.name.clone(),
                })?,
            Err(e) => return Err(e.into()),
        },
    };
    prepared.deployment = Some(deployment.clone());
    // Compilation VMs of an interrupted deploy held addresses; nothing else can hold them now.
    services
        .state
        .instances()
        .release_unowned_addresses(deployment.id)
        .await?;
    for (name, value) in &prepared.generated {
        services
            .state
            .instances()
            .put_credential(deployment.id, name, value)
            .await?;
    }
    // What the deploy uses cannot be deleted from now on.
    let mut release_ids = prepared.catalog.release_ids();
    let mut stemcell_ids = prepared.catalog.stemcell_ids();
    release_ids.sort();
    stemcell_ids.sort();
    services
        .state
        .deployments()
        .add_uses(deployment.id, &release_ids, &stemcell_ids)
        .await?;
    let instances = record_instances(services, &deployment, prepared).await?;
    context.checkpoint()?;
    let builds = compile(services, context, prepared, deployment.id, &cids).await?;
    context.checkpoint()?;
    delete_unneeded(services, context, prepared, request.update.skip_drain).await?;
    create_missing_vms(services, context, prepared, &instances, &cids).await?;
    let updater = Updater {
        services,
        context,
        prepared,
        builds: &builds,
        options: &request.update,
        cids: &cids,
    };
    updater.all().await?;
    record_errands(services, prepared, &instances, &builds, context.id).await?;
    // post-deploy follows changes; a deploy that changed no instance has nothing to follow.
    if prepared
        .prepared
        .planned
        .plan
        .all_instances()
        .any(|i| i.action != Action::NoOp)
    {
        post_deploy(services, context, &deployment).await?;
    }
    services
        .state
        .deployments()
        .add_manifest(deployment.id, &prepared.manifest_text)
        .await?;
    services
        .state
        .deployments()
        .set_uses(deployment.id, &release_ids, &stemcell_ids)
        .await?;
    let links = serde_json::to_value(&prepared.prepared.links.provided).unwrap_or_default();
    services
        .state
        .instances()
        .set_links(deployment.id, &links)
        .await?;
    Ok(())
}
