//! VMs and disks through the CPI, with their agents: create a VM with a fresh agent account
//! and wait for its agent (explaining what is known when it never answers), delete a VM
//! and its account, attach and mount disks.

use std::time::Duration;

use serde_json::{Value as Json, json};

use super::Services;
use director_bus::BusError;
use director_core::deploy::desired::deep_merge;

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
    let credentials = services
        .accounts
        .add_agent(&agent_id)
        .await
        .map_err(|source| VmError::AgentAccount {
            label: request.label.clone(),
            source: Box::new(source),
        })?;
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
                "endpoint": services.director_url,
                "ca_cert": services.ca_cert,
            }}],
            "heartbeat_interval": services.timeouts.heartbeat_interval,
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
            return Err(VmError::Create {
                label: request.label.clone(),
                source,
            });
        }
    };
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

/// Deletes a VM (a VM already gone is fine) and its agent's account.
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
    let _ = services.accounts.remove_agent(agent_id).await;
    services.bus.forget_agent(agent_id);
    Ok(())
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
        Ok(()) => Ok(()),
        Err(e) if already_gone(&e) || e.kind == cpi::ErrorKind::DiskNotAttached => Ok(()),
        Err(source) => Err(VmError::DetachDisk {
            disk_cid: disk_cid.to_string(),
            vm_cid: vm_cid.to_string(),
            source,
        }),
    }
}
