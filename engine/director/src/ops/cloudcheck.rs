//! `director cck` (BOSH's cloud check): a scan compares what the director recorded with
//! what the CPI and the agents say and lists each inconsistency as a [`Problem`] with
//! BOSH's resolutions; a resolve task applies the ones the operator chose.
//!
//! Problems are not stored. A problem's id (`type:subject`, the subject being an instance
//! id, an agent id or a disk CID) is the same in every scan, and resolving scans again
//! first (and again after each resolution that changed something), so a problem that went
//! away meanwhile is closed without action and nothing acts on a stale finding. Both tasks
//! hold the deployment's lock. Nothing the user has is dropped: a disk a resolution takes
//! from an instance is orphaned (kept until `delete-disk` or `clean-up --all`), and a VM
//! whose reference is deleted stays recorded as an unowned VM until it is deleted.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::Services;
use super::vms::{
    Reconciled, VmError, attach_and_mount, delete_vm, forget_agent, reconcile_one,
    unmount_and_detach,
};
use crate::tasks::{LockKey, Stage, TaskContext, TaskError};
use director_api::deployments::{
    Problem, ProblemResolved, ProblemType, Resolution, ResolveRequest,
};
use director_state::{Deployment, Disk, Instance, NewEvent, Vm, VmRecord};

/// How long an agent has to answer the scan (BOSH's scan uses a short timeout too).
const SCAN_TIMEOUT: Duration = Duration::from_secs(5);

/// How many agents and CPI calls a scan runs at once.
const SCAN_PARALLEL: usize = 32;

/// The resolutions of each problem type, the default (`--auto`) first: BOSH's names and
/// plans, with `unowned_vm` ours.
fn resolutions(kind: ProblemType) -> &'static [(&'static str, &'static str)] {
    match kind {
        ProblemType::MissingVm => &[
            (
                "recreate_vm_without_wait",
                "Recreate VM without waiting for processes to start",
            ),
            ("ignore", "Skip for now"),
            ("recreate_vm", "Recreate VM and wait for processes to start"),
            ("delete_vm_reference", "Delete VM reference"),
        ],
        ProblemType::UnresponsiveAgent => &[
            ("ignore", "Skip for now"),
            ("reboot_vm", "Reboot VM"),
            (
                "recreate_vm_without_wait",
                "Recreate VM without waiting for processes to start",
            ),
            ("recreate_vm", "Recreate VM and wait for processes to start"),
            ("delete_vm", "Delete VM"),
            (
                "delete_vm_reference",
                "Delete VM reference (the VM stays, listed as unowned)",
            ),
        ],
        ProblemType::UnownedVm => &[
            ("ignore", "Skip for now"),
            ("delete_vm", "Delete VM"),
            (
                "delete_vm_reference",
                "Delete VM reference (delete the VM in the IaaS yourself)",
            ),
        ],
        ProblemType::MountInfoMismatch => &[
            ("ignore", "Ignore"),
            ("reattach_disk", "Reattach disk to instance"),
            (
                "reattach_disk_and_reboot",
                "Reattach disk and reboot instance",
            ),
        ],
        ProblemType::InactiveDisk => &[
            ("ignore", "Skip for now"),
            (
                "delete_disk",
                "Delete disk (it is orphaned: kept until clean-up)",
            ),
            ("activate_disk", "Activate disk"),
        ],
        ProblemType::MissingDisk => &[
            ("ignore", "Skip for now"),
            ("delete_disk_reference", "Delete disk reference"),
        ],
    }
}

const TYPES: [ProblemType; 6] = [
    ProblemType::MissingVm,
    ProblemType::UnresponsiveAgent,
    ProblemType::UnownedVm,
    ProblemType::InactiveDisk,
    ProblemType::MissingDisk,
    ProblemType::MountInfoMismatch,
];

/// The problem type an id names (`missing_vm:…` → `MissingVm`).
fn type_of(id: &str) -> Option<ProblemType> {
    let prefix = id.split_once(':')?.0;
    TYPES.into_iter().find(|kind| kind.as_str() == prefix)
}

/// Checks a resolve request before any task runs: every id names a problem type and every
/// resolution is one of that type's. The error says what was expected.
pub fn check_request(request: &ResolveRequest) -> Result<(), String> {
    if request.resolutions.is_empty() {
        return Err("no resolutions given: expected problem ids with a resolution each".into());
    }
    for (id, resolution) in &request.resolutions {
        let Some(kind) = type_of(id) else {
            let known: Vec<&str> = TYPES.iter().map(|t| t.as_str()).collect();
            return Err(format!(
                "problem '{id}': expected an id of the form TYPE:SUBJECT with TYPE one of {}",
                known.join(", ")
            ));
        };
        let names: Vec<&str> = resolutions(kind).iter().map(|(name, _)| *name).collect();
        if !names.contains(&resolution.as_str()) {
            return Err(format!(
                "problem '{id}': '{resolution}' is not a resolution of {}; expected one of {}",
                kind.as_str(),
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// What a finding is about.
#[derive(Clone, Debug)]
enum Subject {
    /// An instance and its VM (`missing_vm`, `unresponsive_agent`).
    Vm(Instance, Vm),
    /// A VM record no instance owns and no running task holds.
    Unowned(VmRecord),
    /// A disk of an instance, with the disks its agent shows (`None`: it did not answer).
    Disk {
        instance: Instance,
        disk: Disk,
        shown: Option<Vec<String>>,
    },
}

/// One problem found.
#[derive(Clone, Debug)]
struct Finding {
    kind: ProblemType,
    subject: Subject,
    description: String,
}

impl Finding {
    fn id(&self) -> String {
        let key = match &self.subject {
            Subject::Vm(instance, _) => instance.uuid.as_str(),
            Subject::Unowned(record) => record.agent_id.as_str(),
            Subject::Disk { disk, .. } => disk.cid.as_str(),
        };
        format!("{}:{key}", self.kind.as_str())
    }

    fn instance(&self) -> Option<&Instance> {
        match &self.subject {
            Subject::Vm(instance, _) | Subject::Disk { instance, .. } => Some(instance),
            Subject::Unowned(_) => None,
        }
    }

    fn problem(&self) -> Problem {
        Problem {
            id: self.id(),
            kind: self.kind,
            description: self.description.clone(),
            instance: self.instance().map(Instance::label),
            resolutions: resolutions(self.kind)
                .iter()
                .map(|(name, plan)| Resolution {
                    name: name.to_string(),
                    plan: plan.to_string(),
                })
                .collect(),
        }
    }
}

/// What an agent said to the scan: the disks it shows, or nothing.
async fn shown_disks(services: &Services, agent_id: &str) -> Option<Vec<String>> {
    let answer = services
        .bus
        .request(agent_id, "list_disk", vec![], SCAN_TIMEOUT)
        .await
        .ok()?;
    Some(
        answer
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// One instance's VM as the scan sees it: the disks its agent shows (`None`: silent),
/// and, when silent, whether the CPI has the VM.
async fn check_vm<'a>(
    services: &Services,
    instance: &'a Instance,
    vm: &'a Vm,
) -> (
    &'a Instance,
    &'a Vm,
    Option<Vec<String>>,
    Result<bool, cpi::CpiError>,
) {
    let shown = shown_disks(services, &vm.agent_id).await;
    let has_vm = match shown {
        Some(_) => Ok(true),
        None => {
            let cid = vm.cid.clone();
            services.cpi_call(move |cpi| cpi.has_vm(&cid)).await
        }
    };
    (instance, vm, shown, has_vm)
}

async fn has_disk(services: &Services, cid: String) -> Result<bool, cpi::CpiError> {
    services.cpi_call(move |cpi| cpi.has_disk(&cid)).await
}

/// Scans the deployment: each instance's VM (agent answers? CPI has it?) and disks
/// (CPI has it? active, and shown by the agent?), and the VMs recorded for it that nothing
/// owns. `stages` adds BOSH's scan stages to the task's events.
async fn scan(
    services: &Services,
    context: &TaskContext,
    deployment: &Deployment,
    stages: bool,
) -> Result<Vec<Finding>, TaskError> {
    let state = services.state.instances();
    let instances = state.list(deployment.id).await?;
    let with_vms: Vec<&Instance> = instances.iter().filter(|i| i.vm.is_some()).collect();

    let vm_stage = stages.then(|| {
        context
            .log
            .stage(format!("Scanning {} VMs", with_vms.len()), vec![], 1)
    });
    let step = "Checking VM states";
    if let Some(stage) = &vm_stage {
        stage.started(step, 1);
    }
    let checks: Vec<_> = with_vms
        .iter()
        .filter_map(|instance| Some(check_vm(services, instance, instance.vm.as_ref()?)))
        .collect();
    let checks = futures::stream::iter(checks)
        .buffered(SCAN_PARALLEL)
        .collect::<Vec<_>>()
        .await;
    if let Some(stage) = &vm_stage {
        stage.finished(step, 1);
    }

    let mut vm_findings = Vec::new();
    let mut shown_by: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (instance, vm, shown, has_vm) in checks {
        match (shown, has_vm) {
            (Some(disks), _) => {
                shown_by.insert(instance.uuid.clone(), disks);
            }
            (None, Ok(false)) => vm_findings.push(Finding {
                kind: ProblemType::MissingVm,
                subject: Subject::Vm(instance.clone(), vm.clone()),
                description: format!(
                    "VM for '{}' with cloud ID '{}' missing.",
                    instance.label(),
                    vm.cid
                ),
            }),
            (None, Ok(true)) => vm_findings.push(Finding {
                kind: ProblemType::UnresponsiveAgent,
                subject: Subject::Vm(instance.clone(), vm.clone()),
                description: format!(
                    "VM for '{}' with cloud ID '{}' is not responding.",
                    instance.label(),
                    vm.cid
                ),
            }),
            (None, Err(e)) => vm_findings.push(Finding {
                kind: ProblemType::UnresponsiveAgent,
                subject: Subject::Vm(instance.clone(), vm.clone()),
                description: format!(
                    "VM for '{}' with cloud ID '{}' is not responding (and the CPI could not say whether it exists: {e}).",
                    instance.label(),
                    vm.cid
                ),
            }),
        }
    }

    let unowned: Vec<VmRecord> = services
        .state
        .vm_records()
        .abandoned()
        .await?
        .into_iter()
        .filter(|record| record.deployment == Some(deployment.id))
        .collect();
    let unowned_findings = unowned.into_iter().map(|record| {
        let cid = record
            .cid
            .as_deref()
            .map_or_else(|| "(no cloud ID)".to_string(), |cid| format!("'{cid}'"));
        Finding {
            kind: ProblemType::UnownedVm,
            description: format!(
                "VM {cid} of agent '{}' ({}) is recorded for this deployment, but no instance owns it.",
                record.agent_id, record.label
            ),
            subject: Subject::Unowned(record),
        }
    });

    // Disks: the active one of each instance, then what an interrupted migration left.
    let mut disks: Vec<(Instance, Disk, bool)> = Vec::new();
    for instance in &instances {
        if let Some(disk) = &instance.disk {
            disks.push((instance.clone(), disk.clone(), true));
        }
        for disk in state.inactive_disks(instance.id).await? {
            disks.push((instance.clone(), disk, false));
        }
    }
    let disk_stage = stages.then(|| {
        context.log.stage(
            format!("Scanning {} persistent disks", disks.len()),
            vec![],
            1,
        )
    });
    let step = "Looking for inactive disks";
    if let Some(stage) = &disk_stage {
        stage.started(step, 1);
    }
    let exists: Vec<_> = disks
        .iter()
        .map(|(_, disk, _)| has_disk(services, disk.cid.clone()))
        .collect();
    let exists = futures::stream::iter(exists)
        .buffered(SCAN_PARALLEL)
        .collect::<Vec<_>>()
        .await;
    if let Some(stage) = &disk_stage {
        stage.finished(step, 1);
    }

    let (mut inactive, mut missing, mut mismatched) = (Vec::new(), Vec::new(), Vec::new());
    for ((instance, disk, active), exists) in disks.into_iter().zip(exists) {
        let shown = shown_by.get(&instance.uuid).cloned();
        let on_vm = shown.as_ref().is_some_and(|list| list.contains(&disk.cid));
        let label = format!("'{}' ({}M)", disk.cid, disk.size);
        if let Ok(false) = exists {
            missing.push(Finding {
                kind: ProblemType::MissingDisk,
                description: format!(
                    "Disk {label} {} instance '{}' is missing.",
                    if active { "used by" } else { "recorded for" },
                    instance.label()
                ),
                subject: Subject::Disk {
                    instance,
                    disk,
                    shown,
                },
            });
        } else if !active {
            let mounted = if on_vm {
                " and mounted on its VM: a disk migration stopped after the agent switched to it (activate it)"
            } else {
                " (a disk migration stopped before the agent switched to it)"
            };
            inactive.push(Finding {
                kind: ProblemType::InactiveDisk,
                description: format!(
                    "Disk {label} for instance '{}' is inactive{mounted}.",
                    instance.label()
                ),
                subject: Subject::Disk {
                    instance,
                    disk,
                    shown,
                },
            });
        } else if let (Some(list), Some(vm)) = (&shown, &instance.vm)
            && !on_vm
        {
            let now = if list.is_empty() {
                "not mounted".to_string()
            } else {
                format!("showing {}", list.join(", "))
            };
            mismatched.push(Finding {
                kind: ProblemType::MountInfoMismatch,
                description: format!(
                    "Inconsistent mount information: disk {label} of '{}' should be mounted on VM '{}', but its agent is {now}.",
                    instance.label(),
                    vm.cid
                ),
                subject: Subject::Disk {
                    instance,
                    disk,
                    shown,
                },
            });
        }
    }

    let mut findings = vm_findings;
    findings.extend(unowned_findings);
    findings.extend(inactive);
    findings.extend(missing);
    findings.extend(mismatched);
    Ok(findings)
}

async fn find_deployment(services: &Services, name: &str) -> Result<Deployment, TaskError> {
    services
        .state
        .deployments()
        .find(name)
        .await?
        .ok_or_else(|| TaskError::message(format!("deployment '{name}' not found")))
}

/// The scan task (`POST /deployments/{name}/scans`): its result is the problems, as JSON.
pub async fn scan_task(
    services: &Services,
    context: &TaskContext,
    name: &str,
) -> Result<String, TaskError> {
    context.lock(&LockKey::Deployment(name.to_string())).await?;
    let deployment = find_deployment(services, name).await?;
    let findings = scan(services, context, &deployment, true).await?;
    let problems: Vec<Problem> = findings.iter().map(Finding::problem).collect();
    Ok(serde_json::to_string(&problems).unwrap_or_else(|_| "[]".into()))
}

/// The resolve task (`PUT /deployments/{name}/problems`): scans again, then applies each
/// requested resolution to its problem in the scan's order (VMs before disks), scanning
/// again after each that changed something. Its result is what happened to each problem,
/// as JSON; a resolution that fails is reported there and the others still run.
pub async fn resolve_task(
    services: &Services,
    context: &TaskContext,
    name: &str,
    request: &ResolveRequest,
) -> Result<String, TaskError> {
    check_request(request).map_err(TaskError::message)?;
    context.lock(&LockKey::Deployment(name.to_string())).await?;
    let deployment = find_deployment(services, name).await?;
    let mut findings = scan(services, context, &deployment, false).await?;
    // In the order the scan lists problems (so a VM is fixed before its disks), then
    // those it no longer finds.
    let rank = |id: &str| {
        type_of(id)
            .and_then(|kind| TYPES.iter().position(|t| *t == kind))
            .unwrap_or(TYPES.len())
    };
    let mut order: Vec<(&String, &String)> = request.resolutions.iter().collect();
    order.sort_by_key(|(id, _)| rank(id));

    let stage = context.log.stage(
        "Applying problem resolutions",
        vec![],
        u32::try_from(order.len()).unwrap_or(u32::MAX),
    );
    let mut outcomes = Vec::new();
    let mut stale = false;
    for (n, (id, resolution)) in order.into_iter().enumerate() {
        context.checkpoint()?;
        if stale {
            findings = scan(services, context, &deployment, false).await?;
            stale = false;
        }
        let index = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let Some(finding) = findings.iter().find(|f| f.id() == *id).cloned() else {
            let step = format!("{id}: no longer a problem: close");
            stage.started(&step, index);
            stage.finished(&step, index);
            outcomes.push(ProblemResolved {
                problem: id.clone(),
                description: "no longer a problem".into(),
                resolution: "close".into(),
                error: None,
            });
            continue;
        };
        let plan = resolutions(finding.kind)
            .iter()
            .find(|(name, _)| name == resolution)
            .map_or("", |(_, plan)| *plan);
        let step = format!(
            "{} ({} {}): {plan}",
            finding.description.trim_end_matches('.'),
            finding.kind.as_str(),
            id.split_once(':').map_or("", |(_, s)| s)
        );
        stage.started(&step, index);
        let applied = if resolution == "ignore" {
            Ok(())
        } else {
            stale = true;
            apply(services, context, name, &finding, resolution, &stage, index).await
        };
        let error = match applied {
            Ok(()) => {
                stage.finished(&step, index);
                None
            }
            Err(e) => {
                let message = e.to_string();
                stage.failed(&step, index, &message);
                Some(message)
            }
        };
        if resolution != "ignore" {
            record(
                services,
                context,
                name,
                &finding,
                resolution,
                error.as_deref(),
            )
            .await;
        }
        outcomes.push(ProblemResolved {
            problem: id.clone(),
            description: finding.description.clone(),
            resolution: resolution.clone(),
            error,
        });
    }
    Ok(serde_json::to_string(&outcomes).unwrap_or_else(|_| "[]".into()))
}

/// An event for each resolution applied (user `admin`, as the other verbs).
async fn record(
    services: &Services,
    context: &TaskContext,
    name: &str,
    finding: &Finding,
    resolution: &str,
    error: Option<&str>,
) {
    let (object_type, object_name) = match &finding.subject {
        Subject::Vm(instance, _) => (
            "instance",
            format!("{}/{}", instance.instance_group, instance.uuid),
        ),
        Subject::Unowned(record) => (
            "vm",
            record
                .cid
                .clone()
                .unwrap_or_else(|| record.agent_id.clone()),
        ),
        Subject::Disk { disk, .. } => ("disk", disk.cid.clone()),
    };
    let _ = services
        .state
        .events()
        .insert(&NewEvent {
            user: "admin".to_string(),
            action: resolution.to_string(),
            object_type: object_type.to_string(),
            object_name: Some(object_name),
            deployment: Some(name.to_string()),
            task: Some(context.id),
            context: json!({"problem": finding.id(), "type": finding.kind.as_str()}),
            error: error.map(str::to_string),
        })
        .await;
}

/// Why a resolution could not be applied.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    State(#[from] director_state::StateError),
    #[error("the CPI failed to {what}: {source}")]
    Cpi { what: String, source: cpi::CpiError },
}

async fn apply(
    services: &Services,
    context: &TaskContext,
    name: &str,
    finding: &Finding,
    resolution: &str,
    stage: &Stage,
    index: u32,
) -> Result<(), ResolveError> {
    let instances = services.state.instances();
    match (&finding.subject, resolution) {
        (Subject::Vm(instance, _), "recreate_vm" | "recreate_vm_without_wait") => {
            let wait = resolution == "recreate_vm";
            super::verbs::recreate_instance(services, context, name, instance, stage, index, wait)
                .await?;
            Ok(())
        }
        (Subject::Vm(_, vm), "reboot_vm") => {
            let cid = vm.cid.clone();
            services
                .cpi_call(move |cpi| cpi.reboot_vm(&cid))
                .await
                .map_err(|source| ResolveError::Cpi {
                    what: format!("reboot VM '{}'", vm.cid),
                    source,
                })?;
            services
                .bus
                .wait_until_ready(&vm.agent_id, services.timeouts.agent_wait)
                .await
                .map_err(|e| {
                    ResolveError::Refused(format!(
                        "VM '{}' was rebooted but its agent did not answer: {e}",
                        vm.cid
                    ))
                })
        }
        (Subject::Vm(instance, vm), "delete_vm") => {
            // Fencing first: the disk is detached before the VM goes, so a VM the CPI
            // cannot delete does not keep it.
            if let Some(disk) = &instance.disk {
                unmount_and_detach(services, &vm.cid, &vm.agent_id, &disk.cid, false).await?;
            }
            delete_vm(services, &vm.cid, &vm.agent_id).await?;
            Ok(instances.clear_vm(instance.id).await?)
        }
        (Subject::Vm(instance, vm), "delete_vm_reference") => {
            if finding.kind == ProblemType::MissingVm {
                forget_agent(services, &vm.agent_id).await?;
                Ok(instances.clear_vm(instance.id).await?)
            } else {
                let label = format!("the former VM of {}", instance.label());
                Ok(instances
                    .disown_vm(instance.id, &label, Some(context.id))
                    .await?)
            }
        }
        (Subject::Unowned(record), "delete_vm") => {
            match reconcile_one(services, record.clone()).await? {
                Reconciled::Deleted { .. } | Reconciled::Gone { .. } => Ok(()),
                Reconciled::Kept { reason, .. } => Err(ResolveError::Refused(reason)),
            }
        }
        (Subject::Unowned(record), "delete_vm_reference") => {
            Ok(forget_agent(services, &record.agent_id).await?)
        }
        (Subject::Disk { instance, disk, .. }, "reattach_disk" | "reattach_disk_and_reboot") => {
            let vm = instance
                .vm
                .as_ref()
                .ok_or_else(|| ResolveError::Refused("the instance has no VM".into()))?;
            if resolution == "reattach_disk" {
                return Ok(attach_and_mount(services, &vm.cid, &vm.agent_id, &disk.cid).await?);
            }
            let (vm_cid, disk_cid) = (vm.cid.clone(), disk.cid.clone());
            services
                .cpi_call(move |cpi| {
                    cpi.attach_disk(&vm_cid, &disk_cid)?;
                    cpi.reboot_vm(&vm_cid)
                })
                .await
                .map_err(|source| ResolveError::Cpi {
                    what: format!("attach disk '{}' and reboot VM '{}'", disk.cid, vm.cid),
                    source,
                })?;
            // The agent shows its recorded disk again when it starts; mounting is then a
            // no-op, and mounts the disk when it had no record.
            Ok(attach_and_mount(services, &vm.cid, &vm.agent_id, &disk.cid).await?)
        }
        (
            Subject::Disk {
                instance,
                disk,
                shown,
            },
            "delete_disk",
        ) => {
            if shown.as_ref().is_some_and(|list| list.contains(&disk.cid)) {
                return Err(ResolveError::Refused(format!(
                    "disk '{}' is mounted on the instance's VM, so it may hold the instance's data: activate it instead",
                    disk.cid
                )));
            }
            if let Some(vm) = &instance.vm {
                unmount_and_detach(services, &vm.cid, &vm.agent_id, &disk.cid, false).await?;
            }
            Ok(instances.orphan_disk(&disk.cid).await?)
        }
        (
            Subject::Disk {
                instance,
                disk,
                shown,
            },
            "activate_disk",
        ) => {
            let Some(vm) = &instance.vm else {
                return Err(ResolveError::Refused(
                    "the instance has no VM to show the disk is in use".into(),
                ));
            };
            if !shown.as_ref().is_some_and(|list| list.contains(&disk.cid)) {
                return Err(ResolveError::Refused(format!(
                    "disk '{}' is not mounted on the instance's VM, so the migration to it did not finish: delete it (it is kept as an orphaned disk) and deploy again",
                    disk.cid
                )));
            }
            // The agent switched to this disk after copying the old one's data: it becomes
            // the instance's disk and the old one is orphaned (kept), then detached.
            instances.activate_disk(instance.id, &disk.cid).await?;
            if let Some(old) = &instance.disk {
                unmount_and_detach(services, &vm.cid, &vm.agent_id, &old.cid, false).await?;
                super::vms::agent_back_after_disk_change(services, &vm.agent_id, &old.cid).await?;
            }
            Ok(())
        }
        (
            Subject::Disk {
                instance,
                disk,
                shown,
            },
            "delete_disk_reference",
        ) => {
            if let Some(vm) = &instance.vm {
                let answers = shown.is_some();
                // Best effort: the disk is gone, so unmounting or detaching it may fail.
                let _ =
                    unmount_and_detach(services, &vm.cid, &vm.agent_id, &disk.cid, answers).await;
            }
            instances.delete_disk(&disk.cid).await?;
            // The next deploy gives the instance a new disk.
            Ok(instances.set_update_completed(instance.id, false).await?)
        }
        (_, other) => Err(ResolveError::Refused(format!(
            "'{other}' is not a resolution of {}",
            finding.kind.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn request(pairs: &[(&str, &str)]) -> ResolveRequest {
        ResolveRequest {
            resolutions: pairs
                .iter()
                .map(|(id, r)| (id.to_string(), r.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn requests_name_known_types_and_their_resolutions() {
        assert!(check_request(&request(&[("missing_vm:abc", "recreate_vm")])).is_ok());
        assert!(check_request(&request(&[("inactive_disk:disk-1", "activate_disk")])).is_ok());
        let wrong = check_request(&request(&[("missing_vm:abc", "activate_disk")])).unwrap_err();
        assert!(
            wrong.contains("expected one of recreate_vm_without_wait, ignore"),
            "{wrong}"
        );
        let unknown = check_request(&request(&[("lost_cat:abc", "ignore")])).unwrap_err();
        assert!(unknown.contains("TYPE one of missing_vm"), "{unknown}");
        assert!(check_request(&request(&[])).is_err());
    }

    #[test]
    fn the_default_resolutions_are_boshs() {
        let first = |kind| resolutions(kind)[0].0;
        assert_eq!(first(ProblemType::MissingVm), "recreate_vm_without_wait");
        for kind in &TYPES[1..] {
            assert_eq!(first(*kind), "ignore", "{kind:?}");
            assert_eq!(type_of(&format!("{}:x", kind.as_str())), Some(*kind));
        }
    }
}
