//! Routes for configs, deployments, their instances and VMs, and the verbs that change
//! them. Shapes follow BOSH's director API where one exists.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State as AxumState};
use axum::response::Response;
use axum::routing::{get, post};
use director_api::deployments::{
    Config, ConfigUpdated, DeleteDeploymentQuery, DeployQuery, Deployment, DeploymentManifest,
    Event, EventsQuery, Instance, InstanceHealth, InstanceStemcell, InstancesQuery, LiveAgent,
    LogsRequest, NameVersion, OrphanedDisk, PlanAnswer, RecordedVm, ResolveRequest,
    ResurrectionRequest, StateChangeRequest,
};
use director_api::error::LockHolder;
use director_api::{ApiError, ConfigKind, Message};
use futures::future::join_all;
use serde_json::json;

use super::Director;
use super::reply::{Failure, Reply, new_task, submit};
use crate::ops::deploy::{DeployRequest, manifest_name, run_deploy};
use crate::ops::prepare::{DEFAULT_CONFIG, prepare_deploy};
use crate::ops::update::UpdateOptions;
use director_core::deploy::PlanOptions;
use director_core::manifest::Count;

type Router = axum::Router<Director>;

pub(super) fn routes() -> Router {
    Router::new()
        .route("/configs/{kind}", get(config).put(update_config))
        .route("/deployments", get(deployments).post(deploy))
        .route("/deployments/plan", post(plan))
        .route(
            "/deployments/{name}",
            get(deployment).delete(delete_deployment),
        )
        .route("/deployments/{name}/instances", get(instances))
        .route("/deployments/{name}/vm_records", get(recorded_vms))
        .route("/deployments/{name}/state", post(change_state))
        .route("/deployments/{name}/logs", post(fetch_logs))
        .route(
            "/deployments/{name}/errands/{errand}/runs",
            post(run_errand),
        )
        .route("/deployments/{name}/scans", post(scan))
        .route(
            "/deployments/{name}/problems",
            axum::routing::put(resolve_problems),
        )
        .route("/events", get(events))
        .route("/resurrection", axum::routing::put(update_resurrection))
        .route("/disks", get(disks))
        .route("/disks/{cid}", axum::routing::delete(delete_disk))
}

fn config_kind(kind: &str) -> Reply<ConfigKind> {
    kind.parse()
        .map_err(|e: director_api::deployments::UnknownValue| Failure::not_found(e.to_string()))
}

/// `GET /configs/{cloud|runtime}`.
async fn config(
    AxumState(director): AxumState<Director>,
    Path(kind): Path<String>,
) -> Reply<Json<Config>> {
    let kind = config_kind(&kind)?;
    match director
        .state
        .instances()
        .config(kind, DEFAULT_CONFIG)
        .await?
    {
        Some((id, content)) => Ok(Json(Config {
            id,
            kind,
            name: DEFAULT_CONFIG.to_string(),
            content,
        })),
        None => Err(Failure::not_found(format!(
            "no {kind} config is set (set one with `director update-{kind}-config FILE`)"
        ))),
    }
}

/// `PUT /configs/{cloud|runtime}` with the YAML as the body: checked, then stored when it
/// differs from the current one.
async fn update_config(
    AxumState(director): AxumState<Director>,
    Path(kind): Path<String>,
    body: String,
) -> Reply<Json<ConfigUpdated>> {
    let kind = config_kind(&kind)?;
    let node = director_core::yaml::parse(&body, &format!("{kind} config"))
        .map_err(|d| Failure::invalid(d.to_string()))?;
    let checked = match kind {
        ConfigKind::Cloud => director_core::manifest::validate_cloud_config(&node).map(|_| ()),
        ConfigKind::Runtime => director_core::manifest::validate_runtime_config(&node).map(|_| ()),
        ConfigKind::Resurrection => {
            director_core::manifest::validate_resurrection_config(&node).map(|_| ())
        }
    };
    checked.map_err(|d| Failure::invalid(d.to_string()))?;
    let state = director.state.instances();
    if let Some((id, current)) = state.config(kind, DEFAULT_CONFIG).await?
        && current == body
    {
        return Ok(Json(ConfigUpdated { id, changed: false }));
    }
    let id = state.set_config(kind, DEFAULT_CONFIG, &body).await?;
    Ok(Json(ConfigUpdated { id, changed: true }))
}

fn count(text: Option<&str>, what: &str) -> Reply<Option<Count>> {
    let Some(text) = text else { return Ok(None) };
    let parsed = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse().ok().map(Count::Percent),
        None => text.trim().parse().ok().map(Count::Absolute),
    };
    parsed.map(Some).ok_or_else(|| {
        Failure::bad_request(format!(
            "{what} {text:?}: expected a number or a percentage such as 25%"
        ))
    })
}

fn plan_options(query: &DeployQuery) -> Reply<PlanOptions> {
    Ok(PlanOptions {
        recreate: query.recreate,
        canaries: count(query.canaries.as_deref(), "--canaries")?,
        max_in_flight: count(query.max_in_flight.as_deref(), "--max-in-flight")?,
        unresponsive: Default::default(),
    })
}

/// The manifest a deployment was last deployed with.
async fn last_manifest(
    director: &Director,
    deployment: &director_state::Deployment,
) -> Reply<Option<String>> {
    Ok(director
        .state
        .deployments()
        .manifests(deployment.id)
        .await?
        .into_iter()
        .next()
        .map(|m| m.text))
}

/// `POST /deployments/plan`: prepares a deploy of the manifest in the body and answers its
/// plan, changing nothing (what `deploy` shows before asking, and `--dry-run`).
async fn plan(
    AxumState(director): AxumState<Director>,
    Query(query): Query<DeployQuery>,
    body: String,
) -> Reply<Json<PlanAnswer>> {
    let options = plan_options(&query)?;
    let services = &director.services;
    let prepared = prepare_deploy(
        &services.state,
        &services.blobstore,
        &services.templates,
        &body,
        &options,
    )
    .await
    .map_err(|e| {
        if e.is_invalid_input() {
            Failure::invalid(e.to_string())
        } else {
            Failure::internal(e)
        }
    })?;
    let previous_manifest = match &prepared.deployment {
        Some(deployment) => last_manifest(&director, deployment).await?,
        None => None,
    };
    let plan = prepared.prepared.planned.plan;
    Ok(Json(PlanAnswer {
        deployment: prepared.name,
        previous_manifest,
        changes: plan.has_changes(),
        plan,
    }))
}

/// 409 with the holder when another running task holds the deployment's lock: the new
/// task would only fail on it. A holder being cancelled is no refusal: the new task waits
/// for it to stop.
async fn refuse_if_locked(director: &Director, deployment: &str) -> Reply<()> {
    let name = format!("deployment:{deployment}");
    let locks = director.state.locks().list().await?;
    let Some(lock) = locks.into_iter().find(|lock| lock.name == name) else {
        return Ok(());
    };
    // A task being cancelled is waited for: the new task takes the lock once it has stopped.
    let holder = director.state.tasks().get(lock.task_id).await?;
    if holder.is_some_and(|task| task.state == director_api::tasks::TaskState::Cancelling) {
        return Ok(());
    }
    Err(Failure(ApiError::locked(
        format!(
            "deployment '{deployment}' is locked by task {task}: wait for it to finish, or stop it with `director cancel-task {task}`",
            task = lock.task_id.0
        ),
        LockHolder {
            name,
            task: lock.task_id.0,
        },
    )))
}

/// `POST /deployments`: deploys the manifest in the body, as a task.
async fn deploy(
    AxumState(director): AxumState<Director>,
    Query(query): Query<DeployQuery>,
    body: String,
) -> Reply<Response> {
    let name = manifest_name(&body).map_err(|e| Failure::bad_request(e.to_string()))?;
    refuse_if_locked(&director, &name).await?;
    let request = DeployRequest {
        manifest_text: body,
        plan: plan_options(&query)?,
        update: UpdateOptions {
            skip_drain: query.skip_drain,
            fix: query.fix,
        },
    };
    let services = director.services.clone();
    let staging = director.staging_dir.clone();
    submit(
        &director,
        new_task("create deployment", Some(name), json!({})),
        move |context| run_deploy(services, context, request, staging),
    )
    .await
}

/// `GET /deployments`.
async fn deployments(AxumState(director): AxumState<Director>) -> Reply<Json<Vec<Deployment>>> {
    let list = director.state.deployments().list().await?;
    let releases = director.state.releases().list().await?;
    let stemcells = director.state.stemcells().list().await?;
    let mut out = Vec::new();
    for deployment in &list {
        let instances = director.state.instances().list(deployment.id).await?;
        out.push(Deployment {
            name: deployment.name.clone(),
            releases: releases
                .iter()
                .filter(|r| r.deployments.contains(&deployment.name))
                .map(|r| NameVersion {
                    name: r.name.clone(),
                    version: r.version.clone(),
                })
                .collect(),
            stemcells: stemcells
                .iter()
                .filter(|s| s.deployments.contains(&deployment.name))
                .map(|s| NameVersion {
                    name: s.name.clone(),
                    version: s.version.clone(),
                })
                .collect(),
            instances: instances.len(),
        });
    }
    Ok(Json(out))
}

async fn find(director: &Director, name: &str) -> Reply<director_state::Deployment> {
    director
        .state
        .deployments()
        .find(name)
        .await?
        .ok_or_else(|| {
            Failure::not_found(format!(
                "deployment '{name}' not found (see `director deployments`)"
            ))
        })
}

/// `GET /deployments/{name}`: its current manifest.
async fn deployment(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
) -> Reply<Json<DeploymentManifest>> {
    let deployment = find(&director, &name).await?;
    let manifest = last_manifest(&director, &deployment)
        .await?
        .unwrap_or_default();
    Ok(Json(DeploymentManifest { name, manifest }))
}

fn instance_view(
    instance: &director_state::Instance,
    agent: Option<LiveAgent>,
    health: &crate::health::HealthView,
) -> Instance {
    let applied = instance
        .observed
        .as_ref()
        .and_then(|spec| serde_json::from_value::<AppliedView>(spec.clone()).ok())
        .unwrap_or_default();
    Instance {
        instance_group: instance.instance_group.clone(),
        id: instance.uuid.clone(),
        index: instance.index,
        az: instance.az.clone(),
        bootstrap: instance.bootstrap,
        expects_vm: true,
        state: instance.state.clone(),
        update_completed: instance.update_completed,
        vm_cid: instance.vm.as_ref().map(|v| v.cid.clone()),
        agent_id: instance.vm.as_ref().map(|v| v.agent_id.clone()),
        vm_created_at: instance.vm.as_ref().map(|v| v.created_at),
        ips: instance.ips.iter().map(|(_, ip, _)| ip.clone()).collect(),
        disk_cid: instance.disk.as_ref().map(|d| d.cid.clone()),
        vm_type: applied.vm_type,
        stemcell: applied.stemcell,
        agent,
        health: instance.vm.as_ref().and_then(|vm| {
            let finding = health.finding(instance.id, &vm.agent_id)?;
            Some(InstanceHealth {
                state: finding.health.as_str().to_string(),
                since: finding.since,
            })
        }),
    }
}

/// What the instances listing shows of the spec last applied to an instance.
#[derive(Default, serde::Deserialize)]
struct AppliedView {
    #[serde(default)]
    vm_type: Option<String>,
    #[serde(default)]
    stemcell: Option<InstanceStemcell>,
}

/// Asks an instance's agent for its state (processes, vitals), within five seconds.
async fn live_agent(
    bus: &director_bus::Bus,
    instance: &director_state::Instance,
) -> Option<LiveAgent> {
    let vm = instance.vm.as_ref()?;
    let answer = bus
        .request(&vm.agent_id, "get_state", vec![], Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())
        .and_then(|value| {
            serde_json::from_value::<agent_protocol::AgentState>(value).map_err(|e| e.to_string())
        });
    Some(match answer {
        Ok(state) => LiveAgent {
            job_state: state.job_state,
            processes: state.processes,
            vitals: state.vitals,
            error: None,
        },
        Err(error) => LiveAgent {
            job_state: "unresponsive agent".to_string(),
            error: Some(error),
            ..LiveAgent::default()
        },
    })
}

/// `GET /deployments/{name}/instances[?live=true]`.
async fn instances(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    Query(query): Query<InstancesQuery>,
) -> Reply<Json<Vec<Instance>>> {
    let deployment = find(&director, &name).await?;
    let list = director.state.instances().list(deployment.id).await?;
    let bus = &director.services.bus;
    let agents: Vec<Option<LiveAgent>> = if query.live {
        join_all(list.iter().map(|instance| live_agent(bus, instance))).await
    } else {
        vec![None; list.len()]
    };
    Ok(Json(
        list.iter()
            .zip(agents)
            .map(|(instance, agent)| instance_view(instance, agent, &director.services.health))
            .collect(),
    ))
}

/// `GET /deployments/{name}/vm_records`: the deployment's VMs no instance owns (being made,
/// compilation and errand VMs, and those a director that stopped left unknown).
async fn recorded_vms(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
) -> Reply<Json<Vec<RecordedVm>>> {
    let deployment = find(&director, &name).await?;
    let records = director
        .state
        .vm_records()
        .of_deployment(deployment.id)
        .await?;
    Ok(Json(
        records
            .into_iter()
            .map(|record| RecordedVm {
                agent_id: record.agent_id,
                vm_cid: record.cid,
                state: record.state.as_str().to_string(),
                purpose: record.purpose.as_str().to_string(),
                label: record.label,
                ips: record.addresses.into_iter().map(|(_, ip)| ip).collect(),
                created_at: record.created_at,
            })
            .collect(),
    ))
}

/// `POST /deployments/{name}/state`: start, stop, restart or recreate instances (a task).
async fn change_state(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    change: Result<Json<StateChangeRequest>, axum::extract::rejection::JsonRejection>,
) -> Reply<Response> {
    let Json(change) = change.map_err(|e| {
        Failure::bad_request(format!(
            "expected {{\"state\": started|stopped|restart|recreate, \"target\", \"skip_drain\"}}: {}",
            e.body_text()
        ))
    })?;
    find(&director, &name).await?;
    refuse_if_locked(&director, &name).await?;
    let services = director.services.clone();
    let deployment = name.clone();
    submit(
        &director,
        new_task(
            change.state.description(),
            Some(name),
            json!({"target": change.target}),
        ),
        move |context| async move {
            crate::ops::verbs::change_state(
                &services,
                &context,
                &deployment,
                change.state,
                crate::ops::verbs::Selection::Target(change.target.as_deref()),
                change.skip_drain,
            )
            .await
        },
    )
    .await
}

/// `POST /deployments/{name}/scans`: cck's scan (a task whose result lists the problems).
async fn scan(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
) -> Reply<Response> {
    find(&director, &name).await?;
    refuse_if_locked(&director, &name).await?;
    let services = director.services.clone();
    let deployment = name.clone();
    submit(
        &director,
        new_task("scan cloud", Some(name), json!({})),
        move |context| async move {
            crate::ops::cloudcheck::scan_task(&services, &context, &deployment).await
        },
    )
    .await
}

/// `PUT /deployments/{name}/problems`: applies cck resolutions (a task whose result says
/// what happened to each problem).
async fn resolve_problems(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    request: Result<Json<ResolveRequest>, axum::extract::rejection::JsonRejection>,
) -> Reply<Response> {
    let Json(request) = request.map_err(|e| {
        Failure::bad_request(format!(
            "expected {{\"resolutions\": {{PROBLEM_ID: RESOLUTION, …}}}}: {}",
            e.body_text()
        ))
    })?;
    crate::ops::cloudcheck::check_request(&request).map_err(Failure::bad_request)?;
    find(&director, &name).await?;
    refuse_if_locked(&director, &name).await?;
    let services = director.services.clone();
    let deployment = name.clone();
    submit(
        &director,
        new_task(
            "apply resolutions",
            Some(name),
            json!({"resolutions": request.resolutions}),
        ),
        move |context| async move {
            crate::ops::cloudcheck::resolve_task(&services, &context, &deployment, &request).await
        },
    )
    .await
}

/// `POST /deployments/{name}/errands/{errand}/runs` (a task).
async fn run_errand(
    AxumState(director): AxumState<Director>,
    Path((name, errand)): Path<(String, String)>,
) -> Reply<Response> {
    find(&director, &name).await?;
    refuse_if_locked(&director, &name).await?;
    let services = director.services.clone();
    let staging = director.staging_dir.clone();
    let deployment = name.clone();
    submit(
        &director,
        new_task(
            &format!("run errand {errand}"),
            Some(name),
            json!({"errand": errand}),
        ),
        move |context| async move {
            crate::ops::verbs::run_errand(&services, &context, &deployment, &errand, &staging).await
        },
    )
    .await
}

/// `DELETE /deployments/{name}[?force=true]` (a task).
async fn delete_deployment(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    Query(query): Query<DeleteDeploymentQuery>,
) -> Reply<Response> {
    find(&director, &name).await?;
    refuse_if_locked(&director, &name).await?;
    let services = director.services.clone();
    let deployment = name.clone();
    submit(
        &director,
        new_task(
            "delete deployment",
            Some(name),
            json!({"force": query.force}),
        ),
        move |context| async move {
            crate::ops::verbs::delete_deployment(&services, &context, &deployment, query.force)
                .await
        },
    )
    .await
}

/// `GET /events[?deployment=…]`.
/// `PUT /resurrection`: pauses or resumes the resurrector (an event records who did it).
async fn update_resurrection(
    AxumState(director): AxumState<Director>,
    request: Result<Json<ResurrectionRequest>, axum::extract::rejection::JsonRejection>,
) -> Reply<Json<Message>> {
    let Json(request) = request.map_err(|e| {
        Failure::bad_request(format!(
            "expected {{\"resurrection_paused\": true|false}}: {}",
            e.body_text()
        ))
    })?;
    let paused = request.resurrection_paused;
    director
        .state
        .attributes()
        .set(
            crate::health::RESURRECTION_PAUSED,
            if paused { "true" } else { "false" },
        )
        .await?;
    let _ = director
        .state
        .events()
        .insert(&director_state::NewEvent {
            user: "admin".to_string(),
            action: if paused { "pause" } else { "resume" }.to_string(),
            object_type: "resurrection".to_string(),
            object_name: None,
            deployment: None,
            task: None,
            context: json!({}),
            error: None,
        })
        .await;
    Ok(Json(Message {
        message: if paused {
            "resurrection paused: unresponsive instances are left alone"
        } else {
            "resurrection resumed: meltdown counts only instances that go down from now on"
        }
        .to_string(),
    }))
}

async fn events(
    AxumState(director): AxumState<Director>,
    Query(query): Query<EventsQuery>,
) -> Reply<Json<Vec<Event>>> {
    let list = director
        .state
        .events()
        .list(query.limit.unwrap_or(200).min(10_000))
        .await?;
    Ok(Json(
        list.into_iter()
            .filter(|e| query.deployment.is_none() || e.deployment == query.deployment)
            .map(|e| Event {
                id: e.id,
                time: e.time,
                user: e.user,
                action: e.action,
                object_type: e.object_type,
                object_name: e.object_name,
                deployment: e.deployment,
                task: e.task.map(|t| t.0),
                context: e.context,
                error: e.error,
            })
            .collect(),
    ))
}

/// `POST /deployments/{name}/logs` (`{"target": "GROUP[/ID]"}`): a task whose result lists
/// the log tarballs the agents uploaded.
async fn fetch_logs(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    body: Option<Json<LogsRequest>>,
) -> Reply<Response> {
    find(&director, &name).await?;
    let target = body.and_then(|b| b.0.target);
    let services = director.services.clone();
    let deployment = name.clone();
    submit(
        &director,
        new_task("fetch logs", Some(name), json!({"target": target})),
        move |context| async move {
            crate::ops::verbs::fetch_logs(&services, &context, &deployment, target.as_deref()).await
        },
    )
    .await
}

/// `DELETE /disks/{cid}`: deletes an orphaned disk (a task).
async fn delete_disk(
    AxumState(director): AxumState<Director>,
    Path(cid): Path<String>,
) -> Reply<Response> {
    let services = director.services.clone();
    submit(
        &director,
        new_task(&format!("delete disk {cid}"), None, json!({"disk": cid})),
        move |context| async move {
            context
                .lock(&crate::tasks::LockKey::Disk(cid.clone()))
                .await?;
            crate::ops::verbs::delete_orphaned_disk(&services, &cid).await
        },
    )
    .await
}

/// `GET /disks?orphaned=true`.
async fn disks(AxumState(director): AxumState<Director>) -> Reply<Json<Vec<OrphanedDisk>>> {
    let list = director.state.instances().orphaned_disks().await?;
    Ok(Json(
        list.into_iter()
            .map(|d| OrphanedDisk {
                cid: d.cid,
                size: d.size,
                cloud_properties: d.cloud_properties,
                orphaned_at: d.orphaned_at,
            })
            .collect(),
    ))
}
