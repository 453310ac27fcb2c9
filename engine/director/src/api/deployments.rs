//! Routes for configs, deployments, their instances and VMs, and the verbs that change
//! them. Shapes follow BOSH's director API where one exists.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::join_all;
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use super::Director;
use super::routes::{error, new_task, submit};
use crate::ops::deploy::{DeployRequest, manifest_name, run_deploy};
use crate::ops::prepare::{DEFAULT_CONFIG, prepare_deploy};
use crate::ops::update::UpdateOptions;
use director_core::deploy::PlanOptions;
use director_core::manifest::Count;
use director_state::Instance;

type Reply = Result<Response, (StatusCode, Json<Json_>)>;
type Router = axum::Router<Director>;

fn internal(e: impl std::fmt::Display) -> (StatusCode, Json<Json_>) {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

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
        .route("/deployments/{name}/state", post(change_state))
        .route("/deployments/{name}/logs", post(fetch_logs))
        .route(
            "/deployments/{name}/errands/{errand}/runs",
            post(run_errand),
        )
        .route("/events", get(events))
        .route("/disks", get(disks))
        .route("/disks/{cid}", axum::routing::delete(delete_disk))
}

fn check_kind(kind: &str) -> Result<(), (StatusCode, Json<Json_>)> {
    match kind {
        "cloud" | "runtime" => Ok(()),
        other => Err(error(
            StatusCode::NOT_FOUND,
            format!("unknown config type {other:?}: expected cloud or runtime"),
        )),
    }
}

/// `GET /configs/{cloud|runtime}`.
async fn config(AxumState(director): AxumState<Director>, Path(kind): Path<String>) -> Reply {
    check_kind(&kind)?;
    let config_kind: director_api::ConfigKind = kind.parse().map_err(internal)?;
    match director
        .state
        .instances()
        .config(config_kind, DEFAULT_CONFIG)
        .await
        .map_err(internal)?
    {
        Some((id, content)) => Ok(Json(
            json!({"id": id, "type": kind, "name": DEFAULT_CONFIG, "content": content}),
        )
        .into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no {kind} config is set (set one with `director update-{kind}-config FILE`)"),
        )),
    }
}

/// `PUT /configs/{cloud|runtime}` with the YAML as the body: checked, then stored when it
/// differs from the current one.
async fn update_config(
    AxumState(director): AxumState<Director>,
    Path(kind): Path<String>,
    body: String,
) -> Reply {
    check_kind(&kind)?;
    let config_kind: director_api::ConfigKind = kind.parse().map_err(internal)?;
    let node = director_core::yaml::parse(&body, &format!("{kind} config"))
        .map_err(|d| error(StatusCode::UNPROCESSABLE_ENTITY, d.to_string()))?;
    let checked = match kind.as_str() {
        "cloud" => director_core::manifest::validate_cloud_config(&node).map(|_| ()),
        _ => director_core::manifest::validate_runtime_config(&node).map(|_| ()),
    };
    checked.map_err(|d| error(StatusCode::UNPROCESSABLE_ENTITY, d.to_string()))?;
    let state = director.state.instances();
    if let Some((id, current)) = state
        .config(config_kind, DEFAULT_CONFIG)
        .await
        .map_err(internal)?
    {
        if current == body {
            return Ok(Json(json!({"id": id, "changed": false})).into_response());
        }
    }
    let id = state
        .set_config(config_kind, DEFAULT_CONFIG, &body)
        .await
        .map_err(internal)?;
    Ok(Json(json!({"id": id, "changed": true})).into_response())
}

#[derive(Deserialize, Default)]
struct DeployQuery {
    #[serde(default)]
    recreate: bool,
    #[serde(default)]
    skip_drain: bool,
    #[serde(default)]
    fix: bool,
    canaries: Option<String>,
    max_in_flight: Option<String>,
}

fn count(text: Option<&str>, what: &str) -> Result<Option<Count>, (StatusCode, Json<Json_>)> {
    let Some(text) = text else { return Ok(None) };
    let parsed = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse().ok().map(Count::Percent),
        None => text.trim().parse().ok().map(Count::Absolute),
    };
    parsed.map(Some).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{what} {text:?}: expected a number or a percentage such as 25%"),
        )
    })
}

fn plan_options(query: &DeployQuery) -> Result<PlanOptions, (StatusCode, Json<Json_>)> {
    Ok(PlanOptions {
        recreate: query.recreate,
        canaries: count(query.canaries.as_deref(), "--canaries")?,
        max_in_flight: count(query.max_in_flight.as_deref(), "--max-in-flight")?,
    })
}

/// `POST /deployments/plan`: prepares a deploy of the manifest in the body and answers its
/// plan, changing nothing (what `deploy` shows before asking, and `--dry-run`).
async fn plan(
    AxumState(director): AxumState<Director>,
    Query(query): Query<DeployQuery>,
    body: String,
) -> Reply {
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
    .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let previous = match &prepared.deployment {
        Some(d) => director
            .state
            .deployments()
            .manifests(d.id)
            .await
            .map_err(internal)?
            .into_iter()
            .next()
            .map(|m| m.text),
        None => None,
    };
    let plan = &prepared.prepared.planned.plan;
    Ok(Json(json!({
        "deployment": prepared.name,
        "previous_manifest": previous,
        "plan": plan,
        "changes": plan.has_changes(),
    }))
    .into_response())
}

/// `POST /deployments`: deploys the manifest in the body, as a task.
async fn deploy(
    AxumState(director): AxumState<Director>,
    Query(query): Query<DeployQuery>,
    body: String,
) -> Reply {
    let name = manifest_name(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
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
async fn deployments(AxumState(director): AxumState<Director>) -> Reply {
    let list = director
        .state
        .deployments()
        .list()
        .await
        .map_err(internal)?;
    let releases = director.state.releases().list().await.map_err(internal)?;
    let stemcells = director.state.stemcells().list().await.map_err(internal)?;
    let mut out = Vec::new();
    for deployment in &list {
        let instances = director
            .state
            .instances()
            .list(deployment.id)
            .await
            .map_err(internal)?;
        out.push(json!({
            "name": deployment.name,
            "releases": releases.iter().filter(|r| r.deployments.contains(&deployment.name))
                .map(|r| json!({"name": r.name, "version": r.version})).collect::<Vec<_>>(),
            "stemcells": stemcells.iter().filter(|s| s.deployments.contains(&deployment.name))
                .map(|s| json!({"name": s.name, "version": s.version})).collect::<Vec<_>>(),
            "instances": instances.len(),
        }));
    }
    Ok(Json(out).into_response())
}

async fn find(
    director: &Director,
    name: &str,
) -> Result<director_state::Deployment, (StatusCode, Json<Json_>)> {
    director
        .state
        .deployments()
        .find(name)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("deployment '{name}' not found (see `director deployments`)"),
            )
        })
}

/// `GET /deployments/{name}`: its current manifest.
async fn deployment(AxumState(director): AxumState<Director>, Path(name): Path<String>) -> Reply {
    let deployment = find(&director, &name).await?;
    let manifest = director
        .state
        .deployments()
        .manifests(deployment.id)
        .await
        .map_err(internal)?
        .into_iter()
        .next()
        .map(|m| m.text)
        .unwrap_or_default();
    Ok(Json(json!({"name": name, "manifest": manifest})).into_response())
}

#[derive(Deserialize, Default)]
struct InstancesQuery {
    /// Ask every agent for its state (processes, vitals).
    #[serde(default)]
    live: bool,
}

fn instance_json(instance: &Instance, live: Option<&Json_>) -> Json_ {
    let spec = instance.observed.as_ref();
    json!({
        "instance_group": instance.instance_group,
        "id": instance.uuid,
        "index": instance.index,
        "az": instance.az,
        "bootstrap": instance.bootstrap,
        "expects_vm": true,
        "state": instance.state,
        "update_completed": instance.update_completed,
        "vm_cid": instance.vm.as_ref().map(|v| v.cid.clone()),
        "agent_id": instance.vm.as_ref().map(|v| v.agent_id.clone()),
        "vm_created_at": instance.vm.as_ref().map(|v| v.created_at),
        "ips": instance.ips.iter().map(|(_, ip, _)| ip.clone()).collect::<Vec<_>>(),
        "disk_cid": instance.disk.as_ref().map(|d| d.cid.clone()),
        "vm_type": spec.and_then(|s| s.get("vm_type")).cloned(),
        "stemcell": spec.and_then(|s| s.get("stemcell")).cloned(),
        "agent": live.cloned(),
    })
}

/// `GET /deployments/{name}/instances[?live=true]`.
async fn instances(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    Query(query): Query<InstancesQuery>,
) -> Reply {
    let deployment = find(&director, &name).await?;
    let list = director
        .state
        .instances()
        .list(deployment.id)
        .await
        .map_err(internal)?;
    let bus = &director.services.bus;
    let live: Vec<Option<Json_>> = if query.live {
        join_all(list.iter().map(|instance| async move {
            let vm = instance.vm.as_ref()?;
            Some(
                match bus
                    .request(&vm.agent_id, "get_state", vec![], Duration::from_secs(5))
                    .await
                {
                    Ok(state) => state,
                    Err(e) => json!({"job_state": "unresponsive agent", "error": e.to_string()}),
                },
            )
        }))
        .await
    } else {
        vec![None; list.len()]
    };
    let out: Vec<Json_> = list
        .iter()
        .zip(&live)
        .map(|(instance, live)| instance_json(instance, live.as_ref()))
        .collect();
    Ok(Json(out).into_response())
}

#[derive(Deserialize)]
struct StateChange {
    /// `started`, `stopped`, `restart`, `recreate`.
    state: String,
    /// `group` or `group/id-or-index`; none: every instance.
    target: Option<String>,
    #[serde(default)]
    skip_drain: bool,
}

/// `POST /deployments/{name}/state`: start, stop, restart or recreate instances (a task).
async fn change_state(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    Json(change): Json<StateChange>,
) -> Reply {
    let state_change: director_api::StateChange =
        serde_json::from_value(Json_::String(change.state.clone())).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown state {:?}: expected started, stopped, restart or recreate",
                    change.state
                ),
            )
        })?;
    find(&director, &name).await?;
    let services = director.services.clone();
    let staging = director.staging_dir.clone();
    let description = state_change.description();
    let deployment = name.clone();
    submit(
        &director,
        new_task(description, Some(name), json!({"target": change.target})),
        move |context| async move {
            crate::ops::verbs::change_state(
                &services,
                &context,
                &deployment,
                state_change,
                change.target.as_deref(),
                change.skip_drain,
                &staging,
            )
            .await
        },
    )
    .await
}

/// `POST /deployments/{name}/errands/{errand}/runs` (a task).
async fn run_errand(
    AxumState(director): AxumState<Director>,
    Path((name, errand)): Path<(String, String)>,
) -> Reply {
    find(&director, &name).await?;
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

#[derive(Deserialize, Default)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /deployments/{name}[?force=true]` (a task).
async fn delete_deployment(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Reply {
    find(&director, &name).await?;
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

#[derive(Deserialize, Default)]
struct EventsQuery {
    deployment: Option<String>,
    limit: Option<u32>,
}

/// `GET /events[?deployment=…]`.
async fn events(
    AxumState(director): AxumState<Director>,
    Query(query): Query<EventsQuery>,
) -> Reply {
    let list = director
        .state
        .events()
        .list(query.limit.unwrap_or(200).min(10_000))
        .await
        .map_err(internal)?;
    let out: Vec<Json_> = list
        .iter()
        .filter(|e| query.deployment.is_none() || e.deployment == query.deployment)
        .map(|e| {
            json!({
                "id": e.id, "time": e.time, "user": e.user, "action": e.action,
                "object_type": e.object_type, "object_name": e.object_name,
                "deployment": e.deployment, "task": e.task.map(|t| t.0),
                "context": e.context, "error": e.error,
            })
        })
        .collect();
    Ok(Json(out).into_response())
}

#[derive(Deserialize, Default)]
struct LogsRequest {
    #[serde(default)]
    target: Option<String>,
}

/// `POST /deployments/{name}/logs` (`{"target": "GROUP[/ID]"}`): a task whose result lists
/// the log tarballs the agents uploaded.
async fn fetch_logs(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    body: Option<Json<LogsRequest>>,
) -> Reply {
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
async fn delete_disk(AxumState(director): AxumState<Director>, Path(cid): Path<String>) -> Reply {
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
async fn disks(AxumState(director): AxumState<Director>) -> Reply {
    let list = director
        .state
        .instances()
        .orphaned_disks()
        .await
        .map_err(internal)?;
    let out: Vec<Json_> = list
        .iter()
        .map(|d| json!({"cid": d.cid, "size": d.size, "cloud_properties": d.cloud_properties, "orphaned_at": d.orphaned_at}))
        .collect();
    Ok(Json(out).into_response())
}
