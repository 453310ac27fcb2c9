//! The day-to-day verbs on a deployed deployment: start, stop, restart and recreate
//! instances, run an errand, delete the deployment. Each is a task that takes the
//! deployment's lock and works from what was last applied to each instance.

use std::collections::BTreeMap;
use std::path::Path;

use futures::future::join_all;
use serde_json::{Value as Json, json};

use super::Services;
use super::update::{
    InstanceUpdate, StemcellCids, UpdateOptions, delete_instance, record_vm, recorded_apply_spec,
};
use super::vms::{VmRequest, attach_and_mount, create_vm, delete_vm, unmount_and_detach};
use crate::tasks::{TaskContext, TaskError};
use agent_protocol::{ErrandResult, UploadedBlob};
use director_core::deploy::InstanceSpec;
use director_core::manifest::{Documents, Lifecycle, WatchTime};
use director_state::{Deployment, Instance, NewEvent};

fn failed(message: impl Into<String>) -> TaskError {
    TaskError::Failed(message.into())
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
        .ok_or_else(|| failed(format!("deployment '{name}' not found")))?;
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

async fn stemcell_cids(services: &Services) -> Result<StemcellCids, TaskError> {
    Ok(services
        .state
        .stemcells()
        .list()
        .await?
        .into_iter()
        .map(|s| ((s.name, s.version), s.cid))
        .collect())
}

/// `start`, `stop`, `restart` or `recreate` (`state`) the targeted instances, one at a time.
pub async fn change_state(
    services: &Services,
    context: &TaskContext,
    name: &str,
    state: &str,
    target: Option<&str>,
    skip_drain: bool,
    _staging: &Path,
) -> Result<String, TaskError> {
    context
        .lock(
            &format!("deployment:{name}"),
            &format!("deployment '{name}'"),
        )
        .await?;
    let deployed = deployed(services, name).await?;
    let instances: Vec<Instance> = deployed
        .instances(services, |i| {
            targeted(i, target) && !deployed.errands.contains(&i.instance_group)
        })
        .await?;
    if instances.is_empty() {
        return Err(failed(format!(
            "no instance of deployment '{name}' matches {:?} (expected GROUP or GROUP/ID or GROUP/INDEX)",
            target.unwrap_or("")
        )));
    }
    let cids = stemcell_cids(services).await?;
    let builds = BTreeMap::new();
    let options = UpdateOptions {
        skip_drain,
        fix: false,
    };
    let verb = match state {
        "started" => "Starting instance",
        "stopped" => "Stopping instance",
        "restart" => "Restarting instance",
        _ => "Recreating instance",
    };
    let stage = context.log.stage(verb, vec![], instances.len() as u32);
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
        };
        let watch = deployed
            .watch
            .get(&instance.instance_group)
            .copied()
            .unwrap_or(DEFAULT_WATCH);
        let result = one(services, &update, instance, state, watch).await;
        match &result {
            Ok(()) => stage.finished(&step, index),
            Err(e) => {
                stage.failed(&step, index, e);
                return Err(failed(format!("{step}: {e}")));
            }
        }
    }
    let _ = services
        .state
        .events()
        .insert(&NewEvent {
            user: "admin".to_string(),
            action: match state {
                "started" => "start",
                "stopped" => "stop",
                other => other,
            }
            .to_string(),
            object_type: "instance".to_string(),
            object_name: target.map(str::to_string),
            deployment: Some(name.to_string()),
            task: Some(context.id),
            context: json!({"instances": instances.iter().map(|i| format!("{}/{}", i.instance_group, i.uuid)).collect::<Vec<_>>()}),
            error: None,
        })
        .await;
    Ok(format!(
        "{} {} instance(s) of deployment '{name}'",
        verb.trim_end_matches(" instance").to_lowercase(),
        instances.len()
    ))
}

async fn one(
    services: &Services,
    update: &InstanceUpdate<'_>,
    instance: &Instance,
    state: &str,
    watch: WatchTime,
) -> Result<(), String> {
    let rows = services.state.instances();
    let Some(vm) = &instance.vm else {
        if state == "stopped" {
            return rows
                .set_state(instance.id, "stopped", instance.bootstrap)
                .await
                .map_err(|e| e.to_string());
        }
        return Err("the instance has no VM (deploy again, or recreate it)".to_string());
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
        "stopped" => {
            if alive {
                update.drain_and_stop(vm, "shutdown", None).await?;
            }
            rows.set_state(instance.id, "stopped", instance.bootstrap)
                .await
                .map_err(|e| e.to_string())
        }
        "started" | "restart" => {
            if !alive {
                let explained = super::vms::explain_silent_agent(
                    services,
                    &update.step,
                    &vm.cid,
                    &vm.agent_id,
                    std::time::Duration::from_secs(10),
                )
                .await;
                return Err(format!(
                    "{explained}\n(recreate the instance to replace its VM)"
                ));
            }
            if state == "restart" {
                update.drain_and_stop(vm, "update", None).await?;
            }
            update.start(&vm.agent_id, watch).await?;
            rows.set_state(instance.id, "started", instance.bootstrap)
                .await
                .map_err(|e| e.to_string())
        }
        _ => recreate(services, update, instance, alive, watch).await,
    }
}

async fn recreate(
    services: &Services,
    update: &InstanceUpdate<'_>,
    instance: &Instance,
    alive: bool,
    watch: WatchTime,
) -> Result<(), String> {
    let vm = instance.vm.as_ref().ok_or("the instance has no VM")?;
    let spec: InstanceSpec = instance
        .observed
        .clone()
        .and_then(|o| serde_json::from_value(o).ok())
        .ok_or("nothing was applied to the instance yet: deploy it")?;
    let apply = recorded_apply_spec(services, instance)
        .ok_or("nothing was applied to the instance yet: deploy it")?;
    if alive {
        update.drain_and_stop(vm, "shutdown", None).await?;
    }
    if let Some(disk) = &instance.disk {
        unmount_and_detach(services, &vm.cid, &vm.agent_id, &disk.cid, alive).await?;
    }
    delete_vm(services, &vm.cid, &vm.agent_id).await?;
    services
        .state
        .instances()
        .clear_vm(instance.id)
        .await
        .map_err(|e| e.to_string())?;
    let stemcell_cid = update
        .stemcell_cids
        .get(&(spec.stemcell.name.clone(), spec.stemcell.version.clone()))
        .cloned()
        .ok_or_else(|| {
            format!(
                "stemcell {}/{} is not uploaded any more",
                spec.stemcell.name, spec.stemcell.version
            )
        })?;
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
        },
    )
    .await?;
    record_vm(services, instance.id, &created).await?;
    if let Some(disk) = &instance.disk {
        attach_and_mount(services, &created.cid, &created.agent_id, &disk.cid).await?;
    }
    services
        .bus
        .run_task(
            &created.agent_id,
            "apply",
            vec![serde_json::to_value(&apply).map_err(|e| e.to_string())?],
            std::time::Duration::from_millis(500),
            services.timeouts.agent_task,
        )
        .await
        .map_err(|e| e.to_string())?;
    if instance.state == "started" {
        update.start(&created.agent_id, watch).await?;
    }
    Ok(())
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
    context
        .lock(
            &format!("deployment:{name}"),
            &format!("deployment '{name}'"),
        )
        .await?;
    let deployed = deployed(services, name).await?;
    if !deployed.errands.contains(&errand.to_string()) {
        return Err(failed(format!(
            "deployment '{name}' has no errand '{errand}' (errands: {})",
            if deployed.errands.is_empty() {
                "none".to_string()
            } else {
                deployed.errands.join(", ")
            }
        )));
    }
    let instances: Vec<Instance> = deployed
        .instances(services, |i| i.instance_group == errand)
        .await?;
    let cids = stemcell_cids(services).await?;
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
        match errand_on(services, instance, &cids, &step).await {
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
                stage.failed(&step, index, &e);
                return Err(failed(format!(
                    "errand '{errand}' could not run on {step}: {e}"
                )));
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
) -> Result<ErrandResult, String> {
    let spec: InstanceSpec = instance
        .observed
        .clone()
        .and_then(|o| serde_json::from_value(o).ok())
        .ok_or("the errand was not deployed yet: deploy first")?;
    let apply = recorded_apply_spec(services, instance)
        .ok_or("the errand was not deployed yet: deploy first")?;
    let stemcell_cid = cids
        .get(&(spec.stemcell.name.clone(), spec.stemcell.version.clone()))
        .cloned()
        .ok_or("its stemcell is not uploaded any more")?;
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
        },
    )
    .await?;
    let run = async {
        services
            .bus
            .run_task(
                &created.agent_id,
                "apply",
                vec![serde_json::to_value(&apply).map_err(|e| e.to_string())?],
                std::time::Duration::from_millis(500),
                services.timeouts.agent_task,
            )
            .await
            .map_err(|e| e.to_string())?;
        let run = services
            .bus
            .run_task(
                &created.agent_id,
                "run_errand",
                vec![],
                std::time::Duration::from_millis(500),
                services.timeouts.agent_task,
            )
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_value::<ErrandResult>(run)
            .map_err(|e| format!("the agent's answer to run_errand is not a result: {e}"))
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
    context
        .lock(
            &format!("deployment:{name}"),
            &format!("deployment '{name}'"),
        )
        .await?;
    let deployment = services
        .state
        .deployments()
        .find(name)
        .await?
        .ok_or_else(|| failed(format!("deployment '{name}' not found")))?;
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
        match delete_instance(services, instance, force).await {
            Ok(()) => stage.finished(&step, index),
            Err(e) if force => {
                stage.failed(&step, index, &e);
                problems.push(format!("{step}: {e}"));
                if let Some(disk) = &instance.disk {
                    let _ = services.state.instances().orphan_disk(&disk.cid).await;
                }
                let _ = services.state.instances().clear_vm(instance.id).await;
                let _ = services.state.instances().delete(instance.id).await;
            }
            Err(e) => {
                stage.failed(&step, index, &e);
                return Err(failed(format!(
                    "{step}: {e}\n(delete with --force to go on past instances that cannot be deleted cleanly)"
                )));
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
        return Err(failed(format!(
            "disk '{cid}' is not an orphaned disk (see `director orphaned-disks`; a disk an \
             instance uses is orphaned first, by scaling down or deleting its deployment)"
        )));
    };
    let target = cid.to_string();
    match services.cpi_call(move |cpi| cpi.delete_disk(&target)).await {
        Ok(()) => {}
        Err(e) if e.kind == cpi::ErrorKind::DiskNotFound => {}
        Err(e) => return Err(failed(format!("the CPI could not delete disk {cid}: {e}"))),
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

/// `logs`: every targeted instance that has a VM packs its `/var/vcap/sys/log` and `PUT`s it
/// to a signed URL (the agent's `fetch_logs`); the task's result lists the blobs
/// (`[{"instance", "blob_id", "size"}]`), which nothing refers to: `clean-up` removes them
/// once downloaded.
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
        return Err(failed(format!(
            "no instance of deployment '{name}' with a VM matches {:?} (expected GROUP, GROUP/ID or GROUP/INDEX; errands have no VM between runs)",
            target.unwrap_or("")
        )));
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
                Some(agent_id) => services
                    .bus
                    .run_task(
                        agent_id,
                        "fetch_logs",
                        vec![Json::from(services.upload_url())],
                        std::time::Duration::from_millis(500),
                        services.timeouts.agent_task,
                    )
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|value| {
                        serde_json::from_value::<UploadedBlob>(value)
                            .map_err(|e| format!("the agent's answer is not a blob: {e}"))
                    }),
                None => Err("the instance has no VM".to_string()),
            };
            match &result {
                Ok(_) => stage.finished(&step, index),
                Err(e) => stage.failed(&step, index, e),
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
                .map_err(|e| format!("{step}: {e}"))
        }
    }))
    .await;
    let mut blobs = Vec::new();
    let mut errors = Vec::new();
    for result in fetched {
        match result {
            Ok(blob) => blobs.push(blob),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(failed(format!(
            "fetching logs failed:\n{}",
            errors.join("\n")
        )));
    }
    Ok(Json::from(blobs).to_string())
}
