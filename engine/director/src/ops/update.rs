//! Updating one instance (reference §7.5): drain → stop → (recreate the VM, disk moved
//! over) → apply → pre-start → start → wait until running → post-start; and deleting one.
//!
//! The instance is marked unfinished before anything is touched and finished only after its
//! new spec is recorded, so an interrupted update is redone by the next deploy. A job that
//! does not come up fails with what the agent knows: the job, the process, how it exited
//! and the last lines of its stderr.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;

use super::Services;
use super::compile::{BuildKey, Builds};
use super::drain::{AgentTasks, DrainError, DrainKind, DrainLimits, drain, stop_for_delete};
use super::stemcells::StemcellCids;
use super::vms::{
    CreatedVm, VmError, VmOwner, VmRequest, attach_and_mount, create_vm, delete_vm,
    unmount_and_detach,
};
use crate::blobstore::slots::Purpose;
use crate::blobstore::{BlobId, BlobstoreError, RecordedError};
use crate::tasks::{Stage, TaskContext};
use agent_protocol::{AgentState, ApplySpec, JobSpec, PackageSpec};
use director_bus::BusError;
use director_core::deploy::plan::DiskState;
use director_core::deploy::{Action, InstancePlan, InstanceWork};
use director_core::manifest::WatchTime;
use director_core::stemcell::StemcellKey;
use director_state::{Disk, Instance, InstanceId, StateError, TaskId, Vm};

/// Why updating, starting, stopping or deleting an instance failed. The instance is named
/// by the step that reports the error (`web/0 (6f1c…)`).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The task was cancelled while the update waited (for the agent, or for the jobs to
    /// run); what was started on the agent was asked to stop.
    #[error("the task was cancelled")]
    Cancelled,
    /// A package the instance needs has no compiled build for its stemcell.
    #[error("package '{package}' has no compiled build for {stemcell}")]
    NoBuild {
        /// The package.
        package: String,
        /// The stemcell's OS and version.
        stemcell: StemcellKey,
    },
    /// A recorded blob id is not one.
    #[error("{source}")]
    BlobId {
        /// Why.
        source: BlobstoreError,
    },
    /// A job's rendered templates could not be archived.
    #[error("archiving the rendered templates of job '{job}': {source}")]
    ArchiveRendered {
        /// The job.
        job: String,
        /// Why.
        source: std::io::Error,
    },
    /// A job's rendered templates could not be stored.
    #[error("storing the rendered templates of job '{job}': {source}")]
    StoreRendered {
        /// The job.
        job: String,
        /// Why.
        source: BlobstoreError,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] Box<StateError>),
    /// An agent task failed or timed out.
    #[error("{source}")]
    Agent {
        /// The agent method (`apply`, `start`, `get_state`).
        method: &'static str,
        /// Why.
        source: Box<BusError>,
    },
    /// Creating, deleting or attaching to a VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Draining or stopping the jobs failed.
    #[error(transparent)]
    Drain(#[from] DrainError),
    /// The instance's agent does not answer.
    #[error("{explanation}\n({advice})")]
    SilentAgent {
        /// The VM.
        vm_cid: String,
        /// What the CPI, the bus and the agent's log say.
        explanation: String,
        /// What to do about it.
        advice: &'static str,
    },
    /// The instance has no VM where it needs one.
    #[error("the instance has no VM")]
    NoVm {
        /// The instance (`group/uuid`).
        instance: String,
    },
    /// A lifecycle script failed (`pre-start`, `post-start`).
    #[error("{script} failed: {source}")]
    Script {
        /// The script.
        script: &'static str,
        /// Why.
        source: Box<BusError>,
    },
    /// The agent's `get_state` answer is not a state.
    #[error("the agent's state is not readable: {source}")]
    AgentState {
        /// Why.
        source: serde_json::Error,
    },
    /// The jobs did not reach `running` in the watch time: which job and process, how it
    /// ended and what it printed last.
    #[error("{report}")]
    NotRunning {
        /// The report ([`not_running`]).
        report: String,
    },
    /// The CPI has not been given the instance's stemcell.
    #[error("stemcell {stemcell} is not in the CPI")]
    StemcellNotInCpi {
        /// The stemcell.
        stemcell: StemcellKey,
    },
    /// The CPI's `create_disk` failed.
    #[error("creating a {size} MB disk failed: {source}")]
    CreateDisk {
        /// The size asked for.
        size: u64,
        /// Why.
        source: cpi::CpiError,
    },
    /// The agent could not move a persistent disk's data to a new disk.
    #[error(
        "moving the data of disk {old_cid} ({old_size} MB) to disk {new_cid} ({new_size} MB) failed: {source}"
    )]
    MigrateDisk {
        /// The disk in use.
        old_cid: String,
        /// Its size.
        old_size: u64,
        /// The new disk.
        new_cid: String,
        /// Its size.
        new_size: u64,
        /// Why.
        source: Box<BusError>,
    },
    /// A spec could not be turned into JSON.
    #[error("{source}")]
    Json {
        /// Why.
        source: serde_json::Error,
    },
}

impl From<StateError> for UpdateError {
    fn from(error: StateError) -> UpdateError {
        UpdateError::State(Box::new(error))
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<Json, UpdateError> {
    serde_json::to_value(value).map_err(|source| UpdateError::Json { source })
}

fn blob_id(text: &str) -> Result<BlobId, UpdateError> {
    BlobId::parse(text).map_err(|source| UpdateError::BlobId { source })
}

/// An agent on the bus, for the drain loop; its long calls end (and are cancelled on the
/// agent) when the task is cancelled.
struct BusAgent<'a> {
    services: &'a Services,
    agent_id: &'a str,
    cancellation: &'a CancellationToken,
}

impl AgentTasks for BusAgent<'_> {
    fn run_task(
        &self,
        method: &'static str,
        arguments: Vec<Json>,
    ) -> impl Future<Output = Result<Json, BusError>> + Send {
        self.services.bus.run_task_until(
            self.agent_id,
            method,
            arguments,
            POLL,
            self.services.timeouts.agent_task,
            self.cancellation,
        )
    }
}

/// The drain deadline: the agent task timeout, as the updater has always bounded drains.
fn drain_limits(services: &Services, cancellation: CancellationToken) -> DrainLimits {
    DrainLimits {
        deadline: services.timeouts.agent_task,
        cancellation,
    }
}

/// How a deploy touches instances.
#[derive(Clone, Debug, Default)]
pub struct UpdateOptions {
    /// `--skip-drain`.
    pub skip_drain: bool,
    /// `--fix`: recreate instances whose agents do not answer instead of failing.
    pub fix: bool,
}

/// What updating an instance needs besides the instance.
pub struct InstanceUpdate<'a> {
    /// Services.
    pub services: &'a Services,
    /// Deployment name.
    pub deployment: &'a str,
    /// Compiled packages.
    pub builds: &'a Builds,
    /// Options.
    pub options: &'a UpdateOptions,
    /// The stage to report to, and the step's index in it.
    pub stage: &'a Stage,
    /// Event index.
    pub index: u32,
    /// Event task name.
    pub step: String,
    /// The CPI's ids of the stemcells, by name and version.
    pub stemcell_cids: &'a StemcellCids,
    /// The task's cancellation (drains stop waiting when it fires).
    pub cancellation: CancellationToken,
    /// The task (VMs it makes are recorded as its own until their instance records them).
    pub task: TaskId,
}

const QUICK: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(500);

/// The networks as `create_vm` takes them.
pub fn vm_networks(work: &InstanceWork) -> Json {
    serde_json::to_value(&work.spec.networks).unwrap_or(Json::Null)
}

/// What an instance's VM is tagged with.
pub fn vm_metadata(deployment: &str, work: &InstanceWork) -> Json {
    json!({
        "deployment": deployment,
        "instance_group": work.group,
        "id": work.placed.uuid,
        "index": work.placed.index.to_string(),
        "name": format!("{}/{}", work.group, work.placed.uuid),
        "director": "director",
    })
}

/// Stores the rendered jobs and builds the apply spec.
pub async fn apply_spec(
    services: &Services,
    deployment: &str,
    work: &InstanceWork,
    builds: &Builds,
    task: TaskId,
) -> Result<(ApplySpec, Vec<(String, String)>), UpdateError> {
    let stemcell = StemcellKey::new(&work.spec.stemcell.os, &work.spec.stemcell.version);
    let mut packages = BTreeMap::new();
    for (name, state) in &work.spec.packages {
        let key = BuildKey {
            release: state.release.clone(),
            package: name.clone(),
            stemcell: stemcell.clone(),
        };
        let build = builds.get(&key).ok_or_else(|| UpdateError::NoBuild {
            package: name.clone(),
            stemcell: stemcell.clone(),
        })?;
        let id = blob_id(&build.blob_id)?;
        packages.insert(
            name.clone(),
            PackageSpec {
                name: name.clone(),
                version: build.version.clone(),
                blob: services.blob_ref(&id),
            },
        );
    }
    let mut jobs = Vec::new();
    let mut rendered_blobs = Vec::new();
    for (rendered, job) in work.rendered.iter().zip(&work.spec.jobs) {
        let bytes = rendered
            .archive()
            .map_err(|source| UpdateError::ArchiveRendered {
                job: job.name.clone(),
                source,
            })?;
        // Held (against clean-up) while the task runs (agents fetch it with its signed URL);
        // the instance's rendered_templates record keeps it after that.
        let (stored, _hold) = services
            .blobstore
            .put_bytes_held(
                &services.state,
                bytes.into(),
                Purpose::RenderedTemplates,
                Some(task),
                services.timeouts.blob_url,
            )
            .await
            .map_err(|error| match error {
                RecordedError::Store(source) => UpdateError::StoreRendered {
                    job: job.name.clone(),
                    source,
                },
                RecordedError::Record(error) => error.into(),
            })?;
        rendered_blobs.push((job.name.clone(), stored.id.as_str().to_string()));
        jobs.push(JobSpec {
            name: job.name.clone(),
            version: job.fingerprint.clone(),
            rendered: services.blob_ref(&stored.id),
            packages: job.packages.clone(),
        });
    }
    Ok((
        ApplySpec {
            deployment: deployment.to_string(),
            name: work.group.clone(),
            id: work.placed.uuid.clone(),
            index: work.placed.index,
            az: work.placed.az.clone(),
            bootstrap: work.placed.bootstrap,
            networks: work.spec.networks.clone(),
            jobs,
            packages,
            configuration_hash: work.spec.configuration_hash.clone(),
            persistent_disk: work.spec.persistent_disk.as_ref().map_or(0, |d| d.size),
        },
        rendered_blobs,
    ))
}

impl InstanceUpdate<'_> {
    pub(super) fn status(&self, status: &str) {
        self.stage.status(&self.step, self.index, status, 50);
    }

    async fn agent_task(
        &self,
        agent_id: &str,
        method: &'static str,
        arguments: Vec<Json>,
    ) -> Result<Json, BusError> {
        self.services
            .bus
            .run_task_until(
                agent_id,
                method,
                arguments,
                POLL,
                self.services.timeouts.agent_task,
                &self.cancellation,
            )
            .await
    }

    /// Fails with [`UpdateError::Cancelled`] once the task is cancelled: called between the
    /// update's CPI and agent steps, so that none starts after a cancel (one in flight
    /// finishes: a CPI call is not interrupted, and the task keeps its locks until then).
    fn checkpoint(&self) -> Result<(), UpdateError> {
        match self.cancellation.is_cancelled() {
            true => Err(UpdateError::Cancelled),
            false => Ok(()),
        }
    }

    /// Sleeps `duration`, or fails with [`UpdateError::Cancelled`] when the task is cancelled.
    async fn pause(&self, duration: Duration) -> Result<(), UpdateError> {
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(()),
            () = self.cancellation.cancelled() => Err(UpdateError::Cancelled),
        }
    }

    async fn agent_call(
        &self,
        agent_id: &str,
        method: &'static str,
        arguments: Vec<Json>,
    ) -> Result<Json, UpdateError> {
        self.agent_task(agent_id, method, arguments)
            .await
            .map_err(|source| UpdateError::Agent {
                method,
                source: Box::new(source),
            })
    }

    async fn answers(&self, agent_id: &str) -> bool {
        self.services
            .bus
            .request(agent_id, "ping", vec![], QUICK)
            .await
            .is_ok()
    }

    /// Drain (unless skipped) and stop the jobs of a running VM.
    /// (A drain still running at its deadline fails the update.)
    pub async fn drain_and_stop(
        &self,
        vm: &Vm,
        kind: DrainKind,
        next: Option<&ApplySpec>,
    ) -> Result<(), UpdateError> {
        let agent = BusAgent {
            services: self.services,
            agent_id: &vm.agent_id,
            cancellation: &self.cancellation,
        };
        if !self.options.skip_drain {
            self.status("executing drain");
            let next = match next {
                Some(next) => Some(
                    serde_json::to_value(next).map_err(|source| DrainError::NextSpec { source })?,
                ),
                None => None,
            };
            let limits = drain_limits(self.services, self.cancellation.clone());
            drain(&agent, kind, next, &limits).await?;
        }
        self.status("stopping jobs");
        self.agent_call(&vm.agent_id, "stop", vec![]).await?;
        Ok(())
    }

    /// Replaces (or makes) the instance's VM, moving its persistent disk over.
    async fn recreate_vm(
        &self,
        instance: &Instance,
        work: &InstanceWork,
        alive: bool,
    ) -> Result<CreatedVm, UpdateError> {
        let state = self.services.state.instances();
        if let Some(vm) = &instance.vm {
            self.status("deleting VM");
            if let Some(disk) = &instance.disk {
                unmount_and_detach(self.services, &vm.cid, &vm.agent_id, &disk.cid, alive).await?;
            }
            delete_vm(self.services, &vm.cid, &vm.agent_id).await?;
            state.clear_vm(instance.id).await?;
        }
        self.status("creating VM");
        let created = create_vm(
            self.services,
            &VmRequest {
                label: self.step.clone(),
                stemcell_cid: stemcell_cid(work, self.stemcell_cids)?,
                cloud_properties: work.spec.cloud_properties.clone(),
                networks: vm_networks(work),
                env: work.spec.env.clone(),
                disk_cids: instance.disk.iter().map(|d| d.cid.clone()).collect(),
                metadata: vm_metadata(self.deployment, work),
                owner: VmOwner::instance(instance, self.task),
            },
        )
        .await?;
        record_vm(self.services, instance.id, &created).await?;
        if let Some(disk) = &instance.disk {
            self.status("attaching disk");
            attach_and_mount(self.services, &created.cid, &created.agent_id, &disk.cid).await?;
        }
        Ok(created)
    }

    /// Makes the instance's persistent disk what the spec asks for: add, remove, or move
    /// the data to a new disk of the new size or type.
    async fn converge_disk(
        &self,
        instance: &Instance,
        work: &InstanceWork,
        vm: &CreatedVm,
    ) -> Result<(), UpdateError> {
        let state = self.services.state.instances();
        match (&instance.disk, &work.spec.persistent_disk) {
            (None, Some(wanted)) => {
                let cid = self.create_disk(instance, wanted, vm, true).await?;
                Ok(attach_and_mount(self.services, &vm.cid, &vm.agent_id, &cid).await?)
            }
            (Some(disk), None) => {
                self.status("detaching disk");
                unmount_and_detach(self.services, &vm.cid, &vm.agent_id, &disk.cid, true).await?;
                Ok(state.orphan_disk(&disk.cid).await?)
            }
            (Some(disk), Some(wanted))
                if disk.size != wanted.size || disk.cloud_properties != wanted.cloud_properties =>
            {
                self.migrate_disk(instance, disk, wanted, vm).await
            }
            _ => Ok(()),
        }
    }

    /// Creates a disk for the instance through the CPI and records it: as the one it uses
    /// (`active`), or as the target of a migration.
    async fn create_disk(
        &self,
        instance: &Instance,
        wanted: &DiskState,
        vm: &CreatedVm,
        active: bool,
    ) -> Result<String, UpdateError> {
        self.status("creating disk");
        let (size, properties, vm_cid) =
            (wanted.size, wanted.cloud_properties.clone(), vm.cid.clone());
        let cid = self
            .services
            .cpi_call(move |cpi| cpi.create_disk(size, &properties, Some(&vm_cid)))
            .await
            .map_err(|source| UpdateError::CreateDisk { size, source })?;
        self.services
            .state
            .instances()
            .add_disk(instance.id, &cid, size, &wanted.cloud_properties, active)
            .await?;
        Ok(cid)
    }

    /// BOSH's disk migration: a new disk of the wanted size and type is created and
    /// attached next to the old one, the agent copies the data over and mounts the new disk,
    /// then the old disk is detached and orphaned (kept, with its data, until
    /// `delete-disk` or `clean-up`). Until the agent has switched, the old disk stays the
    /// instance's: a failure orphans the new disk and leaves the instance as it was.
    async fn migrate_disk(
        &self,
        instance: &Instance,
        old: &Disk,
        wanted: &DiskState,
        vm: &CreatedVm,
    ) -> Result<(), UpdateError> {
        let state = self.services.state.instances();
        orphan_inactive_disks(self.services, instance, Some(vm)).await?;
        let cid = self.create_disk(instance, wanted, vm, false).await?;
        self.status("migrating disk");
        let (vm_cid, new_cid) = (vm.cid.clone(), cid.clone());
        let moved = async {
            self.services
                .cpi_call(move |cpi| cpi.attach_disk(&vm_cid, &new_cid))
                .await
                .map_err(|source| VmError::AttachDisk {
                    disk_cid: cid.clone(),
                    vm_cid: vm.cid.clone(),
                    source,
                })?;
            super::vms::agent_back_after_disk_change(self.services, &vm.agent_id, &cid).await?;
            self.agent_task(
                &vm.agent_id,
                "migrate_disk",
                vec![Json::from(old.cid.as_str()), Json::from(cid.as_str())],
            )
            .await
            .map_err(|source| UpdateError::MigrateDisk {
                old_cid: old.cid.clone(),
                old_size: old.size,
                new_cid: cid.clone(),
                new_size: wanted.size,
                source: Box::new(source),
            })
        }
        .await;
        if let Err(e) = moved {
            // The old disk is still mounted and still the instance's; the copy goes.
            let _ = unmount_and_detach(self.services, &vm.cid, &vm.agent_id, &cid, false).await;
            let _ = state.orphan_disk(&cid).await;
            return Err(e);
        }
        state.activate_disk(instance.id, &cid).await?;
        Ok(unmount_and_detach(self.services, &vm.cid, &vm.agent_id, &old.cid, false).await?)
    }

    /// Updates one instance as planned.
    pub async fn run(
        &self,
        plan: &InstancePlan,
        work: &InstanceWork,
        instance: &Instance,
        watch: WatchTime,
    ) -> Result<(), UpdateError> {
        let state = self.services.state.instances();
        state.set_update_completed(instance.id, false).await?;
        let (spec, rendered_blobs) =
            apply_spec(self.services, self.deployment, work, self.builds, self.task).await?;
        let alive = match &instance.vm {
            Some(vm) => self.answers(&vm.agent_id).await,
            None => false,
        };
        let mut recreate = plan.action == Action::Recreate || instance.vm.is_none();
        if let (Some(vm), false) = (&instance.vm, alive) {
            if !recreate && !self.options.fix {
                let cid = vm.cid.clone();
                let explained = super::vms::explain_silent_agent(
                    self.services,
                    &self.step,
                    &cid,
                    &vm.agent_id,
                    QUICK,
                )
                .await;
                return Err(UpdateError::SilentAgent {
                    vm_cid: cid,
                    explanation: explained,
                    advice: "deploy with --fix to recreate instances whose agents do not answer",
                });
            }
            recreate = true;
        }
        if let (Some(vm), true) = (&instance.vm, alive) {
            // BOSH drains with `shutdown` when the VM goes or the persistent disk changes.
            let disk_changes = match (&instance.disk, &work.spec.persistent_disk) {
                (Some(disk), Some(wanted)) => {
                    disk.size != wanted.size || disk.cloud_properties != wanted.cloud_properties
                }
                (had, wants) => had.is_some() != wants.is_some(),
            };
            let kind = if recreate || disk_changes {
                DrainKind::Shutdown
            } else {
                DrainKind::Update
            };
            self.drain_and_stop(vm, kind, Some(&spec)).await?;
        }
        self.checkpoint()?;
        let vm = if recreate {
            self.recreate_vm(instance, work, alive).await?
        } else {
            let vm = instance.vm.as_ref().ok_or_else(|| UpdateError::NoVm {
                instance: format!("{}/{}", instance.instance_group, instance.uuid),
            })?;
            CreatedVm {
                cid: vm.cid.clone(),
                agent_id: vm.agent_id.clone(),
                env: vm.env.clone(),
            }
        };
        self.checkpoint()?;
        self.converge_disk(instance, work, &vm).await?;
        self.checkpoint()?;
        self.status("installing packages and configuring jobs");
        self.agent_call(&vm.agent_id, "apply", vec![to_json(&spec)?])
            .await?;
        state.set_rendered(instance.id, &rendered_blobs).await?;
        if instance.state == "started" {
            self.start(&vm.agent_id, watch).await?;
        }
        Ok(state
            .set_observed(instance.id, &observed_document(work, &spec)?, true)
            .await?)
    }

    /// pre-start, start, wait until running, post-start.
    pub async fn start(&self, agent_id: &str, watch: WatchTime) -> Result<(), UpdateError> {
        self.status("executing pre-start");
        self.run_script(agent_id, "pre-start").await?;
        self.status("starting jobs");
        self.agent_call(agent_id, "start", vec![]).await?;
        self.status("waiting until running");
        self.watch(agent_id, watch).await?;
        self.status("executing post-start");
        self.run_script(agent_id, "post-start").await?;
        Ok(())
    }

    /// pre-start and start, without waiting until the processes run (cck's
    /// `recreate_vm_without_wait`; post-start runs only after a watched start).
    pub async fn start_without_waiting(&self, agent_id: &str) -> Result<(), UpdateError> {
        self.status("executing pre-start");
        self.run_script(agent_id, "pre-start").await?;
        self.status("starting jobs");
        self.agent_call(agent_id, "start", vec![]).await?;
        Ok(())
    }

    async fn run_script(&self, agent_id: &str, script: &'static str) -> Result<(), UpdateError> {
        self.agent_task(agent_id, "run_script", vec![Json::from(script), json!({})])
            .await
            .map_err(|source| UpdateError::Script {
                script,
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Waits until every process runs: first after `min_ms`, then polling until `max_ms`
    /// (after 100 ms, each wait twice the one before, up to a second).
    async fn watch(&self, agent_id: &str, watch: WatchTime) -> Result<(), UpdateError> {
        let started = Instant::now();
        self.pause(Duration::from_millis(watch.min_ms.min(watch.max_ms)))
            .await?;
        let deadline = Duration::from_millis(watch.max_ms.max(watch.min_ms));
        let mut wait = Duration::from_millis(100);
        loop {
            let answer = self
                .services
                .bus
                .request(agent_id, "get_state", vec![], QUICK)
                .await
                .map_err(|source| UpdateError::Agent {
                    method: "get_state",
                    source: Box::new(source),
                })?;
            let state: AgentState = serde_json::from_value(answer)
                .map_err(|source| UpdateError::AgentState { source })?;
            if state.job_state == "running" {
                return Ok(());
            }
            if started.elapsed() >= deadline {
                return Err(UpdateError::NotRunning {
                    report: not_running(&state, started.elapsed()),
                });
            }
            self.pause(wait.min(deadline - started.elapsed())).await?;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }
}

/// What is recorded as applied: the compared spec, and the apply spec (blob ids; URLs are
/// signed again whenever it is used).
pub fn observed_document(work: &InstanceWork, apply: &ApplySpec) -> Result<Json, UpdateError> {
    /// The compared spec's fields, and `apply` beside them.
    #[derive(serde::Serialize)]
    struct Observed<'a> {
        #[serde(flatten)]
        spec: &'a director_core::deploy::InstanceSpec,
        apply: &'a ApplySpec,
    }
    to_json(&Observed {
        spec: &work.spec,
        apply,
    })
}

/// The apply spec last applied to an instance, with its blob URLs signed anew.
pub fn recorded_apply_spec(services: &Services, instance: &Instance) -> Option<ApplySpec> {
    let mut spec: ApplySpec =
        serde_json::from_value(instance.observed.as_ref()?.get("apply")?.clone()).ok()?;
    for package in spec.packages.values_mut() {
        if let Ok(id) = BlobId::parse(&package.blob.id) {
            package.blob = services.blob_ref(&id);
        }
    }
    for job in &mut spec.jobs {
        if let Ok(id) = BlobId::parse(&job.rendered.id) {
            job.rendered = services.blob_ref(&id);
        }
    }
    Some(spec)
}

/// BOSH says "'x/0' is not running after update"; we say which job and process, how it
/// ended, and what it printed last.
pub fn not_running(state: &AgentState, waited: Duration) -> String {
    let mut lines = vec![format!(
        "is not running after update (waited {}; the agent says '{}'):",
        director_bus::human_duration(waited),
        state.job_state
    )];
    let bad: Vec<_> = state
        .processes
        .iter()
        .filter(|p| p.state != "running")
        .collect();
    if bad.is_empty() {
        lines.push("  no process is reported failing; the jobs may have no processes (check config/bpm.yml)".to_string());
    }
    for process in bad {
        let mut line = format!(
            "  job '{}' process '{}' is {}",
            process.job, process.name, process.state
        );
        if let Some(exit) = &process.last_exit {
            line.push_str(&format!(" (last exit: {exit})"));
        }
        if process.restarts > 0 {
            line.push_str(&format!(", restarted {} time(s)", process.restarts));
        }
        lines.push(line);
        if process.last_stderr.is_empty() {
            lines.push("    its stderr is empty".to_string());
        } else {
            lines.push(format!(
                "    last lines of sys/log/{}/{}.stderr.log:",
                process.job, process.name
            ));
            for text in &process.last_stderr {
                lines.push(format!("      {text}"));
            }
        }
    }
    lines.join("\n")
}

fn stemcell_cid(work: &InstanceWork, cids: &StemcellCids) -> Result<String, UpdateError> {
    let stemcell = StemcellKey::new(&work.spec.stemcell.name, &work.spec.stemcell.version);
    match cids.get(&stemcell) {
        Some(cid) => Ok(cid.clone()),
        None => Err(UpdateError::StemcellNotInCpi { stemcell }),
    }
}

/// Records a new VM of an instance.
pub async fn record_vm(
    services: &Services,
    instance: InstanceId,
    vm: &CreatedVm,
) -> Result<(), StateError> {
    services
        .state
        .instances()
        .set_vm(
            instance,
            &Vm {
                cid: vm.cid.clone(),
                agent_id: vm.agent_id.clone(),
                created_at: director_state::now(),
                env: vm.env.clone(),
            },
        )
        .await?;
    // The new agent needs the records, and the others its address.
    services.dns.changed();
    Ok(())
}

/// Creates the VM of a new instance (before its group is updated).
pub async fn create_missing_vm(
    services: &Services,
    deployment: &str,
    label: &str,
    work: &InstanceWork,
    instance: &Instance,
    cids: &StemcellCids,
    task: TaskId,
) -> Result<(), UpdateError> {
    let created = create_vm(
        services,
        &VmRequest {
            label: label.to_string(),
            stemcell_cid: stemcell_cid(work, cids)?,
            cloud_properties: work.spec.cloud_properties.clone(),
            networks: vm_networks(work),
            env: work.spec.env.clone(),
            disk_cids: instance.disk.iter().map(|d| d.cid.clone()).collect(),
            metadata: vm_metadata(deployment, work),
            owner: VmOwner::instance(instance, task),
        },
    )
    .await?;
    Ok(record_vm(services, instance.id, &created).await?)
}

/// Deletes an instance: drain and stop it, delete its VM, orphan its disk, drop its record
/// and addresses. A drain still running at its deadline is a warning of the task: the jobs
/// are stopped anyway, as BOSH does.
pub async fn delete_instance(
    services: &Services,
    context: &TaskContext,
    instance: &Instance,
    skip_drain: bool,
) -> Result<(), UpdateError> {
    let state = services.state.instances();
    if let Some(vm) = &instance.vm {
        let alive = services
            .bus
            .request(&vm.agent_id, "ping", vec![], QUICK)
            .await
            .is_ok();
        if alive {
            let cancellation = context.cancellation();
            let agent = BusAgent {
                services,
                agent_id: &vm.agent_id,
                cancellation: &cancellation,
            };
            let limits = drain_limits(services, cancellation.clone());
            if let Some(warning) = stop_for_delete(&agent, skip_drain, &limits).await? {
                context
                    .log
                    .warning(format!("{}: {warning}", instance.label()));
            }
        }
        if let Some(disk) = &instance.disk {
            unmount_and_detach(services, &vm.cid, &vm.agent_id, &disk.cid, alive).await?;
        }
        delete_vm(services, &vm.cid, &vm.agent_id).await?;
        state.clear_vm(instance.id).await?;
    }
    if let Some(disk) = &instance.disk {
        state.orphan_disk(&disk.cid).await?;
    }
    orphan_inactive_disks(services, instance, None).await?;
    Ok(state.delete(instance.id).await?)
}

/// Orphans the disks recorded for an instance that it does not use (what an interrupted
/// disk migration leaves), detaching them from `vm` first when it is given.
async fn orphan_inactive_disks(
    services: &Services,
    instance: &Instance,
    vm: Option<&CreatedVm>,
) -> Result<(), UpdateError> {
    let state = services.state.instances();
    let leftovers = state.inactive_disks(instance.id).await?;
    for disk in leftovers {
        if let Some(vm) = vm {
            unmount_and_detach(services, &vm.cid, &vm.agent_id, &disk.cid, false).await?;
        }
        state.orphan_disk(&disk.cid).await?;
    }
    Ok(())
}
