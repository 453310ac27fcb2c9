//! VMs and disks through the CPI, with their agents: create a VM with a fresh agent account
//! and wait for its agent (explaining what is known when it never answers), delete a VM
//! and its account, attach and mount disks, and reconcile at start-up what a director that
//! died while making VMs left.
//!
//! Every VM is recorded ([`director_state::VmRecords`]) before `create_vm`, with its agent id
//! and what it is for; its CPI id is recorded when `create_vm` answers, and the record goes
//! when the VM is deleted or an instance records it as its VM. [`reconcile`] deletes the VMs
//! of the records no running task holds (a record without a CPI id is looked up by its
//! agent id, [`cpi::Cpi::find_vm_by_agent_id`]) and revokes their agents' bus accounts; a VM
//! the CPI cannot look up stays recorded as unknown, its addresses reserved, and no new VM
//! is given an address it may still use.

use std::time::Duration;

use serde_json::{Value as Json, json};

use super::Services;
use director_bus::BusError;
use director_core::deploy::desired::deep_merge;
use director_state::{
    DeploymentId, Instance, InstanceId, NewVmRecord, StateError, TaskId, VmPurpose, VmRecord,
    VmRecordState,
};

/// Why a VM or a disk could not be made, removed, attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The bus refused an account for the new VM's agent.
    #[error("{label}: cannot make a bus account for its agent: {source}")]
    AgentAccount {
        /// What the VM is for.
        label: String,
        /// Why.
        source: Box<BusError>,
    },
    /// The CPI's `create_vm` failed.
    #[error("{label}: creating its VM failed: {source}")]
    Create {
        /// What the VM is for.
        label: String,
        /// Why.
        source: cpi::CpiError,
    },
    /// The CPI's `set_vm_metadata` failed.
    #[error("{label}: setting the metadata of VM {vm_cid} failed: {source}")]
    Metadata {
        /// What the VM is for.
        label: String,
        /// The VM.
        vm_cid: String,
        /// Why.
        source: cpi::CpiError,
    },
    /// The new VM's agent never answered; the explanation says what is known.
    #[error("{explanation}")]
    AgentSilent {
        /// The VM.
        vm_cid: String,
        /// What the CPI, the bus and the agent's start-up log say.
        explanation: String,
    },
    /// Waiting for the new VM's agent failed otherwise.
    #[error("{label}: {source}")]
    AgentNotReady {
        /// What the VM is for.
        label: String,
        /// Why.
        source: Box<BusError>,
    },
    /// The CPI's `delete_vm` failed.
    #[error("deleting VM {vm_cid} failed: {source}")]
    Delete {
        /// The VM.
        vm_cid: String,
        /// Why.
        source: cpi::CpiError,
    },
    /// The VM could not be recorded, or its record updated or removed.
    #[error("{label}: {source}")]
    Record {
        /// What the VM is for.
        label: String,
        /// Why.
        source: Box<StateError>,
    },
    /// An address the new VM would get may still be used by a VM a director that died
    /// left, which the CPI cannot look up.
    #[error(
        "{label}: address {address} on network '{network}' may still be used by the VM of agent \
         {} ({}), which a director that stopped was creating and the CPI cannot look up by its \
         agent id; it stays recorded (`director vms` lists it) with its addresses reserved",
        holder.agent_id,
        holder.label
    )]
    AddressUncertain {
        /// What the new VM is for.
        label: String,
        /// The network.
        network: String,
        /// The address.
        address: String,
        /// The record of the VM that may hold it.
        holder: Box<VmRecord>,
    },
    /// The CPI's `attach_disk` failed.
    #[error("attaching disk {disk_cid} to VM {vm_cid} failed: {source}")]
    AttachDisk {
        /// The disk.
        disk_cid: String,
        /// The VM.
        vm_cid: String,
        /// Why.
        source: cpi::CpiError,
    },
    /// The agent did not answer again after its VM's disks changed.
    #[error("the agent did not come back after disk {disk_cid} was attached or detached: {source}")]
    AgentGoneAfterDiskChange {
        /// The disk.
        disk_cid: String,
        /// Why.
        source: Box<BusError>,
    },
    /// The agent could not mount a disk.
    #[error("mounting disk {disk_cid}: {source}")]
    MountDisk {
        /// The disk.
        disk_cid: String,
        /// Why.
        source: Box<BusError>,
    },
    /// The agent could not unmount a disk.
    #[error("unmounting disk {disk_cid}: {source}")]
    UnmountDisk {
        /// The disk.
        disk_cid: String,
        /// Why.
        source: Box<BusError>,
    },
    /// The CPI's `detach_disk` failed.
    #[error("detaching disk {disk_cid} from VM {vm_cid} failed: {source}")]
    DetachDisk {
        /// The disk.
        disk_cid: String,
        /// The VM.
        vm_cid: String,
        /// Why.
        source: cpi::CpiError,
    },
}

/// A VM to create.
#[derive(Clone, Debug)]
pub struct VmRequest {
    /// What the VM is for, in messages (`web/6f1c… (0)`, `compilation of ruby`).
    pub label: String,
    /// The stemcell's CPI id.
    pub stemcell_cid: String,
    /// Cloud properties.
    pub cloud_properties: Json,
    /// Networks (name → settings), as `create_vm` takes them.
    pub networks: Json,
    /// The instance group's `env`.
    pub env: Json,
    /// Disks to attach at creation (hints for the CPI).
    pub disk_cids: Vec<String>,
    /// Metadata (tags) for `set_vm_metadata`.
    pub metadata: Json,
    /// Whose VM it is, as recorded until it is deleted or its instance records it.
    pub owner: VmOwner,
}

/// Whose a VM is: what its record says until it is deleted or an instance records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmOwner {
    /// What it is for.
    pub purpose: VmPurpose,
    /// Its deployment.
    pub deployment: Option<DeploymentId>,
    /// Its instance (instance and errand VMs).
    pub instance: Option<InstanceId>,
    /// The task making it.
    pub task: Option<TaskId>,
}

impl VmOwner {
    /// The VM of `instance`, made by `task`.
    pub fn instance(instance: &Instance, task: TaskId) -> VmOwner {
        VmOwner {
            purpose: VmPurpose::Instance,
            deployment: Some(instance.deployment_id),
            instance: Some(instance.id),
            task: Some(task),
        }
    }

    /// A VM running an errand of `instance` once, made by `task`.
    pub fn errand(instance: &Instance, task: TaskId) -> VmOwner {
        VmOwner {
            purpose: VmPurpose::Errand,
            ..VmOwner::instance(instance, task)
        }
    }

    /// A compilation VM of `deployment`, made by `task`; the addresses of its networks are
    /// reservations of the deployment that the VM's record then holds.
    pub fn compilation(deployment: DeploymentId, task: TaskId) -> VmOwner {
        VmOwner {
            purpose: VmPurpose::Compilation,
            deployment: Some(deployment),
            instance: None,
            task: Some(task),
        }
    }
}

/// The addresses of `create_vm`'s networks: `(network, ip)` of each that has one.
fn addresses(networks: &Json) -> Vec<(String, String)> {
    networks
        .as_object()
        .map(|networks| {
            networks
                .iter()
                .filter_map(|(name, settings)| {
                    Some((name.clone(), settings.get("ip")?.as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A VM whose agent answered.
#[derive(Clone, Debug)]
pub struct CreatedVm {
    /// The CPI's id.
    pub cid: String,
    /// The agent's id.
    pub agent_id: String,
    /// The `env` it was created with, without the agent's credentials.
    pub env: Json,
}

/// Tells the CPI a disk or VM is gone already: for deletes, that is success.
fn already_gone(error: &cpi::CpiError) -> bool {
    matches!(
        error.kind,
        cpi::ErrorKind::VmNotFound | cpi::ErrorKind::DiskNotFound
    )
}

fn human(duration: Duration) -> String {
    director_bus::human_duration(duration)
}

/// Why an agent does not answer, in one paragraph with everything the director knows.
pub async fn explain_silent_agent(
    services: &Services,
    label: &str,
    vm_cid: &str,
    agent_id: &str,
    waited: Duration,
) -> String {
    let cid = vm_cid.to_string();
    let exists = services.cpi_call(move |cpi| cpi.has_vm(&cid)).await;
    let cpi_says = match exists {
        Ok(true) => format!("the CPI says VM {vm_cid} exists"),
        Ok(false) => format!("the CPI says VM {vm_cid} does not exist (it stopped or was deleted)"),
        Err(e) => format!("the CPI could not say whether VM {vm_cid} exists: {e}"),
    };
    let contact = match services.bus.last_contact(agent_id) {
        Some(at) => format!(
            "the director last heard from agent {agent_id} {} ago",
            human(at.elapsed())
        ),
        None => format!(
            "the director never heard from agent {agent_id} on the bus ({})",
            services.bus.url()
        ),
    };
    let cid = vm_cid.to_string();
    let tail = services
        .cpi_call(move |cpi| Ok(cpi.agent_log_tail(&cid, 15)))
        .await
        .ok()
        .flatten();
    let log = match tail {
        Some(lines) if !lines.is_empty() => format!(
            "; the agent's start-up log ends with:\n    {}",
            lines.join("\n    ")
        ),
        Some(_) => "; the agent's start-up log is empty".to_string(),
        None => "; the CPI cannot read the agent's start-up log".to_string(),
    };
    format!(
        "the agent of {label} did not answer within {}: {cpi_says}; {contact}{log}",
        human(waited)
    )
}

/// Creates a VM and waits for its agent. On failure nothing is left behind (the VM is
/// deleted, the account removed) and the error says what is known.
pub async fn create_vm(services: &Services, request: &VmRequest) -> Result<CreatedVm, VmError> {
    let agent_id = uuid::Uuid::new_v4().to_string();
    let record_error = |source| VmError::Record {
        label: request.label.clone(),
        source: Box::new(source),
    };
    let addresses = addresses(&request.networks);
    refuse_uncertain_addresses(services, &request.label, &addresses).await?;
    let holds = match request.owner.purpose {
        VmPurpose::Compilation => addresses.clone(),
        VmPurpose::Instance | VmPurpose::Errand => Vec::new(),
    };
    let records = services.state.vm_records();
    records
        .begin(
            &NewVmRecord {
                agent_id: agent_id.clone(),
                purpose: request.owner.purpose,
                label: request.label.clone(),
                deployment: request.owner.deployment,
                instance: request.owner.instance,
                task: request.owner.task,
                addresses,
            },
            &holds,
        )
        .await
        .map_err(record_error)?;
    let credentials = match services.accounts.add_agent(&agent_id).await {
        Ok(credentials) => credentials,
        Err(source) => {
            let _ = records.remove(&agent_id).await;
            return Err(VmError::AgentAccount {
                label: request.label.clone(),
                source: Box::new(source),
            });
        }
    };
    let mut env = request.env.clone();
    if !env.is_object() {
        env = json!({});
    }
    let public_env = env.clone();
    deep_merge(
        &mut env,
        &json!({"bosh": {
            "mbus": credentials.mbus_url(),
            "blobstores": [{"provider": "director", "options": {
                "endpoint": services.agent_url,
                "ca_cert": services.ca_cert,
            }}],
            "heartbeat_interval": services.timeouts.heartbeat_interval,
            // What set_vm_metadata will say, already at creation: a CPI whose VMs cannot
            // change their tags later (Docker's labels) takes them from here.
            "metadata": request.metadata,
        }}),
    );
    let (stemcell, cloud_properties, networks, disks) = (
        request.stemcell_cid.clone(),
        request.cloud_properties.clone(),
        request.networks.clone(),
        request.disk_cids.clone(),
    );
    let id = agent_id.clone();
    let mut tries = 0;
    let created = loop {
        tries += 1;
        let (stemcell, cloud_properties, networks, disks, env, id) = (
            stemcell.clone(),
            cloud_properties.clone(),
            networks.clone(),
            disks.clone(),
            env.clone(),
            id.clone(),
        );
        let result = services
            .cpi_call(move |cpi| {
                cpi.create_vm(&id, &stemcell, &cloud_properties, &networks, &disks, &env)
            })
            .await;
        match result {
            Err(e) if e.ok_to_retry && tries < 5 => continue,
            other => break other,
        }
    };
    let vm_cid = match created {
        Ok((cid, _)) => cid,
        Err(source) => {
            let _ = services.accounts.remove_agent(&agent_id).await;
            let _ = records.remove(&agent_id).await;
            return Err(VmError::Create {
                label: request.label.clone(),
                source,
            });
        }
    };
    if let Err(source) = records.set_cid(&agent_id, &vm_cid).await {
        let _ = delete_vm(services, &vm_cid, &agent_id).await;
        return Err(record_error(source));
    }
    let (cid, metadata) = (vm_cid.clone(), request.metadata.clone());
    if let Err(source) = services
        .cpi_call(move |cpi| cpi.set_vm_metadata(&cid, &metadata))
        .await
    {
        if !matches!(
            source.kind,
            cpi::ErrorKind::NotImplemented | cpi::ErrorKind::NotSupported
        ) {
            let _ = delete_vm(services, &vm_cid, &agent_id).await;
            return Err(VmError::Metadata {
                label: request.label.clone(),
                vm_cid,
                source,
            });
        }
    }
    if let Err(e) = services
        .bus
        .wait_until_ready(&agent_id, services.timeouts.agent_wait)
        .await
    {
        let error = match e {
            BusError::Timeout { .. } => VmError::AgentSilent {
                explanation: explain_silent_agent(
                    services,
                    &request.label,
                    &vm_cid,
                    &agent_id,
                    services.timeouts.agent_wait,
                )
                .await,
                vm_cid: vm_cid.clone(),
            },
            source => VmError::AgentNotReady {
                label: request.label.clone(),
                source: Box::new(source),
            },
        };
        let _ = delete_vm(services, &vm_cid, &agent_id).await;
        return Err(error);
    }
    Ok(CreatedVm {
        cid: vm_cid,
        agent_id,
        env: public_env,
    })
}

/// Refuses addresses that a VM recorded as unknown may still use.
async fn refuse_uncertain_addresses(
    services: &Services,
    label: &str,
    addresses: &[(String, String)],
) -> Result<(), VmError> {
    if addresses.is_empty() {
        return Ok(());
    }
    let records = services
        .state
        .vm_records()
        .list()
        .await
        .map_err(|source| VmError::Record {
            label: label.to_string(),
            source: Box::new(source),
        })?;
    for record in records.iter().filter(|r| r.state == VmRecordState::Unknown) {
        if let Some((network, address)) = record
            .addresses
            .iter()
            .find(|held| addresses.contains(held))
        {
            return Err(VmError::AddressUncertain {
                label: label.to_string(),
                network: network.clone(),
                address: address.clone(),
                holder: Box::new(record.clone()),
            });
        }
    }
    Ok(())
}

/// Deletes a VM (a VM already gone is fine), its agent's account and its record.
pub async fn delete_vm(services: &Services, vm_cid: &str, agent_id: &str) -> Result<(), VmError> {
    let cid = vm_cid.to_string();
    match services.cpi_call(move |cpi| cpi.delete_vm(&cid)).await {
        Ok(()) => {}
        Err(e) if already_gone(&e) => {}
        Err(source) => {
            return Err(VmError::Delete {
                vm_cid: vm_cid.to_string(),
                source,
            });
        }
    }
    forget_agent(services, agent_id)
        .await
        .map_err(|source| VmError::Record {
            label: format!("VM {vm_cid}"),
            source: Box::new(source),
        })
}

/// Revokes an agent's bus account and forgets its VM's record.
pub(crate) async fn forget_agent(services: &Services, agent_id: &str) -> Result<(), StateError> {
    let _ = services.accounts.remove_agent(agent_id).await;
    services.bus.forget_agent(agent_id);
    services.state.vm_records().remove(agent_id).await
}

/// What [`reconcile`] did with one VM a director that stopped left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// Its VM was deleted, its agent's account revoked, its record and addresses released.
    Deleted {
        /// The VM.
        vm_cid: String,
        /// What it was for.
        label: String,
    },
    /// Its VM had never been made (or was gone already); account and record released.
    Gone {
        /// Its agent.
        agent_id: String,
        /// What it was for.
        label: String,
    },
    /// Kept: the CPI cannot say whether it exists or could not delete it.
    Kept {
        /// The record.
        record: VmRecord,
        /// Why it is kept.
        reason: String,
    },
}

impl std::fmt::Display for Reconciled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reconciled::Deleted { vm_cid, label } => write!(
                f,
                "deleted VM {vm_cid} ({label}) that a director that stopped left unrecorded"
            ),
            Reconciled::Gone { agent_id, label } => write!(
                f,
                "forgot the VM of agent {agent_id} ({label}): a director that stopped was creating it and it does not exist"
            ),
            Reconciled::Kept { record, reason } => {
                let addresses: Vec<String> = record
                    .addresses
                    .iter()
                    .map(|(network, address)| format!("{address} on '{network}'"))
                    .collect();
                write!(
                    f,
                    "kept the record of the VM of agent {} ({}): {reason}",
                    record.agent_id, record.label
                )?;
                if !addresses.is_empty() {
                    write!(f, "; its addresses stay reserved: {}", addresses.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// Deletes the VMs of the records no running task holds (what a director that died while
/// making VMs, or a task that could not delete one, left), revokes their agents' bus
/// accounts and releases their addresses. A record without a CPI id is looked up by its
/// agent id; when the CPI cannot do that, the record stays as unknown (its addresses stay
/// reserved, and no new VM gets them). Call at start-up, before tasks run.
pub async fn reconcile(services: &Services) -> Result<Vec<Reconciled>, StateError> {
    let mut outcomes = Vec::new();
    for record in services.state.vm_records().abandoned().await? {
        outcomes.push(reconcile_one(services, record).await?);
    }
    Ok(outcomes)
}

pub(crate) async fn reconcile_one(
    services: &Services,
    record: VmRecord,
) -> Result<Reconciled, StateError> {
    let cid = match &record.cid {
        Some(cid) => Some(cid.clone()),
        None => {
            let agent_id = record.agent_id.clone();
            let found = services
                .cpi_call(move |cpi| cpi.find_vm_by_agent_id(&agent_id))
                .await;
            match found {
                Ok(found) => found,
                Err(e)
                    if matches!(
                        e.kind,
                        cpi::ErrorKind::NotImplemented | cpi::ErrorKind::NotSupported
                    ) =>
                {
                    services
                        .state
                        .vm_records()
                        .set_unknown(&record.agent_id)
                        .await?;
                    let reason = "the CPI cannot look VMs up by agent id, so whether it exists is unknown; delete it in the IaaS if it does".to_string();
                    return Ok(Reconciled::Kept {
                        record: VmRecord {
                            state: VmRecordState::Unknown,
                            ..record
                        },
                        reason,
                    });
                }
                Err(e) => {
                    let reason = format!("looking it up by its agent id failed: {e}");
                    return Ok(Reconciled::Kept { record, reason });
                }
            }
        }
    };
    match cid {
        Some(vm_cid) => match delete_vm(services, &vm_cid, &record.agent_id).await {
            Ok(()) => Ok(Reconciled::Deleted {
                vm_cid,
                label: record.label,
            }),
            Err(e) => {
                let reason = e.to_string();
                Ok(Reconciled::Kept { record, reason })
            }
        },
        None => {
            forget_agent(services, &record.agent_id).await?;
            Ok(Reconciled::Gone {
                agent_id: record.agent_id,
                label: record.label,
            })
        }
    }
}

/// Attaches a disk to a VM and has the agent mount it on `/var/vcap/store`.
pub async fn attach_and_mount(
    services: &Services,
    vm_cid: &str,
    agent_id: &str,
    disk_cid: &str,
) -> Result<(), VmError> {
    let (vm, disk) = (vm_cid.to_string(), disk_cid.to_string());
    services
        .cpi_call(move |cpi| cpi.attach_disk(&vm, &disk))
        .await
        .map_err(|source| VmError::AttachDisk {
            disk_cid: disk_cid.to_string(),
            vm_cid: vm_cid.to_string(),
            source,
        })?;
    agent_back_after_disk_change(services, agent_id, disk_cid).await?;
    services
        .bus
        .run_task(
            agent_id,
            "mount_disk",
            vec![Json::from(disk_cid)],
            Duration::from_secs(1),
            services.timeouts.agent_task,
        )
        .await
        .map_err(|source| VmError::MountDisk {
            disk_cid: disk_cid.to_string(),
            source: Box::new(source),
        })?;
    Ok(())
}

/// Waits until the VM's agent answers again after the CPI attached or detached a disk: a
/// CPI may restart the VM to do it (Docker cannot add a volume to a running container), and
/// a request sent while the agent reconnects would be lost (BOSH waits here too).
pub async fn agent_back_after_disk_change(
    services: &Services,
    agent_id: &str,
    disk_cid: &str,
) -> Result<(), VmError> {
    services
        .bus
        .wait_until_ready(agent_id, services.timeouts.agent_wait)
        .await
        .map_err(|source| VmError::AgentGoneAfterDiskChange {
            disk_cid: disk_cid.to_string(),
            source: Box::new(source),
        })
}

/// Has the agent unmount a disk (when it can still answer) and detaches it from the VM.
pub async fn unmount_and_detach(
    services: &Services,
    vm_cid: &str,
    agent_id: &str,
    disk_cid: &str,
    agent_answers: bool,
) -> Result<(), VmError> {
    if agent_answers {
        services
            .bus
            .run_task(
                agent_id,
                "unmount_disk",
                vec![Json::from(disk_cid)],
                Duration::from_secs(1),
                services.timeouts.agent_task,
            )
            .await
            .map_err(|source| VmError::UnmountDisk {
                disk_cid: disk_cid.to_string(),
                source: Box::new(source),
            })?;
    }
    let (vm, disk) = (vm_cid.to_string(), disk_cid.to_string());
    match services
        .cpi_call(move |cpi| cpi.detach_disk(&vm, &disk))
        .await
    {
        Ok(()) if agent_answers => agent_back_after_disk_change(services, agent_id, disk_cid).await,
        Ok(()) => Ok(()),
        Err(e) if already_gone(&e) || e.kind == cpi::ErrorKind::DiskNotAttached => Ok(()),
        Err(source) => Err(VmError::DetachDisk {
            disk_cid: disk_cid.to_string(),
            vm_cid: vm_cid.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value as Json, json};

    use super::*;
    use crate::blobstore::{Blobstore, BlobstoreConfig};
    use cpi::{CpiError, ErrorKind, Info};

    /// A CPI with BOSH's API only (it cannot look VMs up by agent id); it records what it
    /// is asked to delete and refuses everything else.
    #[derive(Default)]
    struct BoshOnlyCpi {
        deleted: Mutex<Vec<String>>,
    }

    fn refused<T>() -> cpi::Result<T> {
        Err(CpiError::new(ErrorKind::CpiError, "not in this test"))
    }

    impl cpi::Cpi for BoshOnlyCpi {
        fn info(&self) -> cpi::Result<Info> {
            refused()
        }
        fn create_stemcell(&self, _: &std::path::Path, _: &Json) -> cpi::Result<String> {
            refused()
        }
        fn delete_stemcell(&self, _: &str) -> cpi::Result<()> {
            refused()
        }
        fn create_vm(
            &self,
            _: &str,
            _: &str,
            _: &Json,
            _: &Json,
            _: &[String],
            _: &Json,
        ) -> cpi::Result<(String, Json)> {
            refused()
        }
        fn delete_vm(&self, vm_cid: &str) -> cpi::Result<()> {
            self.deleted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(vm_cid.to_string());
            Ok(())
        }
        fn has_vm(&self, _: &str) -> cpi::Result<bool> {
            refused()
        }
        fn reboot_vm(&self, _: &str) -> cpi::Result<()> {
            refused()
        }
        fn set_vm_metadata(&self, _: &str, _: &Json) -> cpi::Result<()> {
            refused()
        }
        fn create_disk(&self, _: u64, _: &Json, _: Option<&str>) -> cpi::Result<String> {
            refused()
        }
        fn delete_disk(&self, _: &str) -> cpi::Result<()> {
            refused()
        }
        fn has_disk(&self, _: &str) -> cpi::Result<bool> {
            refused()
        }
        fn attach_disk(&self, _: &str, _: &str) -> cpi::Result<Json> {
            refused()
        }
        fn detach_disk(&self, _: &str, _: &str) -> cpi::Result<()> {
            refused()
        }
        fn get_disks(&self, _: &str) -> cpi::Result<Vec<String>> {
            refused()
        }
        fn set_disk_metadata(&self, _: &str, _: &Json) -> cpi::Result<()> {
            refused()
        }
    }

    fn record(agent_id: &str, purpose: VmPurpose, deployment: DeploymentId) -> NewVmRecord {
        NewVmRecord {
            agent_id: agent_id.to_string(),
            purpose,
            label: format!("the VM of {agent_id}"),
            deployment: Some(deployment),
            instance: None,
            task: None,
            addresses: vec![("default".to_string(), "10.0.0.5".to_string())],
        }
    }

    #[tokio::test]
    async fn a_vm_the_cpi_cannot_look_up_stays_recorded_with_its_address_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(
            director_state::State::open(&format!("sqlite://{}/state.db", dir.path().display()))
                .await
                .unwrap(),
        );
        let bus = director_bus::DirectorBus::start_embedded(
            dir.path(),
            std::net::Ipv4Addr::LOCALHOST.into(),
            "director-test",
            director_bus::BusLimits::default(),
        )
        .await
        .unwrap();
        let cpi = Arc::new(BoshOnlyCpi::default());
        let services = Services {
            state: state.clone(),
            blobstore: Blobstore::open(
                &BlobstoreConfig::Local {
                    path: dir.path().join("blobs"),
                },
                b"key".to_vec(),
            )
            .unwrap(),
            cpi: cpi.clone(),
            bus: bus.bus.clone(),
            accounts: bus.accounts.clone(),
            agent_url: "http://127.0.0.1:1".to_string(),
            ca_cert: None,
            templates: crate::ops::TemplateCache::default(),
            timeouts: crate::ops::Timeouts::default(),
            health: crate::health::HealthView::new(false),
            dns: crate::dns::DnsChanges::default(),
        };
        let deployment = state.deployments().create("d").await.unwrap().id;
        // What a director killed while compiling leaves: a compilation VM without a CPI id
        // holding its address, and one whose id was recorded.
        state
            .instances()
            .reserve_address(deployment, "default", "10.0.0.5")
            .await
            .unwrap();
        let unknown = record("agent-a", VmPurpose::Compilation, deployment);
        let records = state.vm_records();
        records.begin(&unknown, &unknown.addresses).await.unwrap();
        let known = NewVmRecord {
            addresses: Vec::new(),
            ..record("agent-b", VmPurpose::Instance, deployment)
        };
        records.begin(&known, &[]).await.unwrap();
        records.set_cid("agent-b", "vm-b").await.unwrap();
        for agent in ["agent-a", "agent-b"] {
            services.accounts.add_agent(agent).await.unwrap();
        }

        let outcomes = reconcile(&services).await.unwrap();
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        assert_eq!(
            outcomes[0].to_string(),
            "kept the record of the VM of agent agent-a (the VM of agent-a): the CPI cannot look \
             VMs up by agent id, so whether it exists is unknown; delete it in the IaaS if it \
             does; its addresses stay reserved: 10.0.0.5 on 'default'"
        );
        assert_eq!(
            outcomes[1],
            Reconciled::Deleted {
                vm_cid: "vm-b".to_string(),
                label: "the VM of agent-b".to_string()
            }
        );
        assert_eq!(*cpi.deleted.lock().unwrap(), ["vm-b"]);
        let left = records.list().await.unwrap();
        assert_eq!(
            left.iter()
                .map(|r| (r.agent_id.as_str(), r.state))
                .collect::<Vec<_>>(),
            [("agent-a", VmRecordState::Unknown)]
        );
        let accounts: Json =
            serde_json::from_slice(&std::fs::read(dir.path().join("bus-agents.json")).unwrap())
                .unwrap();
        assert!(accounts.get("agent-a").is_some() && accounts.get("agent-b").is_none());

        // Its address stays taken, and no new VM is given it.
        assert_eq!(
            state.instances().all_addresses().await.unwrap(),
            [("default".to_string(), "10.0.0.5".to_string())]
        );
        let request = VmRequest {
            label: "web/1".to_string(),
            stemcell_cid: "stemcell".to_string(),
            cloud_properties: json!({}),
            networks: json!({"default": {"type": "manual", "ip": "10.0.0.5"}}),
            env: json!({}),
            disk_cids: Vec::new(),
            metadata: json!({}),
            owner: VmOwner {
                purpose: VmPurpose::Instance,
                deployment: Some(deployment),
                instance: None,
                task: None,
            },
        };
        let refused = create_vm(&services, &request).await.unwrap_err();
        assert!(
            matches!(&refused, VmError::AddressUncertain { address, .. } if address == "10.0.0.5"),
            "{refused}"
        );
        assert!(refused.to_string().contains("agent agent-a"), "{refused}");
        assert_eq!(records.list().await.unwrap().len(), 1, "nothing recorded");

        // The next start-up keeps it too.
        assert_eq!(reconcile(&services).await.unwrap().len(), 1);
        assert_eq!(records.list().await.unwrap().len(), 1);
        bus.shutdown().await;
    }
}
