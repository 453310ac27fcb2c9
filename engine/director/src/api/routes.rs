//! Routes and handlers. JSON shapes follow BOSH's director API where one exists.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Director;
use crate::blobstore::BlobId;
use crate::tasks::{CancelOutcome, OutputKind, TaskContext, TaskError};
use crate::uploads::{import_release, import_stemcell, remove_unreferenced_blobs};
use director_state::{NewTask, Task, TaskFilter, TaskId, TaskState};

type Router = axum::Router<Director>;

/// `{"error": message}` with a status.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> (StatusCode, Json<Json_>) {
    (status, Json(json!({ "error": message.into() })))
}

fn internal(e: impl std::fmt::Display) -> (StatusCode, Json<Json_>) {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

type Reply = Result<Response, (StatusCode, Json<Json_>)>;

pub(super) fn public() -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/blobs/{id}", get(blob))
        .route("/blobs/uploads/{nonce}", axum::routing::put(put_blob))
}

pub(super) fn protected() -> Router {
    Router::new()
        .route("/tasks", get(tasks))
        .route("/tasks/{id}", get(task).delete(cancel_task))
        .route("/tasks/{id}/output", get(task_output))
        .route("/releases", get(releases).post(upload_release))
        .route("/releases/{name}", delete(delete_release))
        .route("/stemcells", get(stemcells).post(upload_stemcell))
        .route("/stemcells/{name}/{version}", delete(delete_stemcell))
        .route("/cleanup", post(cleanup))
        .route("/shutdown", post(shutdown))
        .merge(super::deployments::routes())
        .merge(super::exports::routes())
}

async fn info(AxumState(director): AxumState<Director>) -> Json<super::Info> {
    Json(director.info.clone())
}

pub(crate) fn task_json(task: &Task) -> Json_ {
    json!({
        "id": task.id.0,
        "state": task.state.as_str(),
        "description": task.description,
        "deployment": task.deployment,
        "user": task.user,
        "timestamp": task.created_at,
        "started_at": task.started_at,
        "ended_at": task.ended_at,
        "result": task.result,
        "context": task.context,
    })
}

/// `202 Accepted` with `{"task": …}`: how every mutating call answers.
pub(super) fn accepted(task: &Task) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "task": task_json(task) })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TasksQuery {
    limit: Option<u32>,
    deployment: Option<String>,
    state: Option<String>,
}

async fn tasks(AxumState(director): AxumState<Director>, Query(query): Query<TasksQuery>) -> Reply {
    let mut filter = TaskFilter::recent(query.limit.unwrap_or(30).min(1000));
    if let Some(deployment) = &query.deployment {
        filter = filter.deployment(deployment);
    }
    if let Some(states) = &query.state {
        let parsed: Result<Vec<TaskState>, _> = states.split(',').map(str::parse).collect();
        let parsed = parsed.map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        filter = filter.states(&parsed);
    }
    let list = director
        .state
        .tasks()
        .list(&filter)
        .await
        .map_err(internal)?;
    Ok(Json(list.iter().map(task_json).collect::<Vec<_>>()).into_response())
}

async fn find_task(director: &Director, id: i64) -> Result<Task, (StatusCode, Json<Json_>)> {
    director
        .state
        .tasks()
        .get(TaskId(id))
        .await
        .map_err(internal)?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("task {id} not found")))
}

async fn task(AxumState(director): AxumState<Director>, Path(id): Path<i64>) -> Reply {
    Ok(Json(task_json(&find_task(&director, id).await?)).into_response())
}

#[derive(Deserialize)]
struct OutputQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    offset: Option<u64>,
}

async fn task_output(
    AxumState(director): AxumState<Director>,
    Path(id): Path<i64>,
    Query(query): Query<OutputQuery>,
) -> Reply {
    let task = find_task(&director, id).await?;
    let kind_text = query.kind.as_deref().unwrap_or("event");
    let kind = OutputKind::parse(kind_text).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            format!("unknown output type {kind_text:?}: expected event, debug or result"),
        )
    })?;
    let (text, next) = director
        .runner
        .files(task.id)
        .read_from(kind, query.offset.unwrap_or(0))
        .map_err(internal)?;
    let mut response = text.into_response();
    if let Ok(value) = HeaderValue::from_str(&next.to_string()) {
        response.headers_mut().insert("x-next-offset", value);
    }
    if let Ok(value) = HeaderValue::from_str(task.state.as_str()) {
        response.headers_mut().insert("x-task-state", value);
    }
    Ok(response)
}

async fn cancel_task(AxumState(director): AxumState<Director>, Path(id): Path<i64>) -> Reply {
    find_task(&director, id).await?;
    let outcome = director.runner.cancel(TaskId(id)).await.map_err(internal)?;
    let message = match outcome {
        CancelOutcome::Cancelling => format!("task {id} is cancelling: it stops at its next step"),
        CancelOutcome::AlreadyEnded(state) => {
            format!("task {id} already ended ({})", state.as_str())
        }
    };
    Ok(Json(json!({ "message": message })).into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    sha256: Option<String>,
    #[serde(default)]
    fix: bool,
}

/// Receives an upload into `<data_dir>/uploads/<uuid>`, checking the size limit and the
/// digest the client sent. Nothing else is written until a task takes the file over.
async fn receive(
    director: &Director,
    body: Body,
    expected: Option<&str>,
) -> Result<PathBuf, (StatusCode, Json<Json_>)> {
    let expected = expected
        .map(|d| BlobId::parse(d).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string())))
        .transpose()?;
    let path = director.uploads_dir.join(uuid::Uuid::new_v4().to_string());
    let mut file = tokio::fs::File::create(&path).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let outcome: Result<(), (StatusCode, Json<Json_>)> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("the upload was interrupted: {e}"),
                )
            })?;
            size += chunk.len() as u64;
            if size > director.max_upload_bytes {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the upload is larger than the director's limit of {} bytes",
                        director.max_upload_bytes
                    ),
                ));
            }
            // Hash only when there is something to check: uploads are large.
            if expected.is_some() {
                hasher.update(&chunk);
            }
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.flush().await.map_err(internal)?;
        if let Some(expected) = &expected {
            let actual = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            if expected.as_str() != actual {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "sha256 mismatch: expected {}, got sha256:{actual}",
                        expected.digest_string()
                    ),
                ));
            }
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            Err(e)
        }
    }
}

/// Queues `work` as a task and answers `202` with it.
pub(super) async fn submit<F, Fut>(director: &Director, task: NewTask, work: F) -> Reply
where
    F: FnOnce(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<String, crate::tasks::TaskError>> + Send + 'static,
{
    let task = director.runner.submit(task, work).await.map_err(internal)?;
    Ok(accepted(&task))
}

pub(super) fn new_task(description: &str, deployment: Option<String>, context: Json_) -> NewTask {
    NewTask {
        description: description.to_string(),
        deployment,
        user: "admin".to_string(),
        context,
    }
}

/// `POST /releases`: a tarball body, or JSON `{"location": url, "sha256": …}` for a release
/// the director downloads itself.
async fn upload_release(
    AxumState(director): AxumState<Director>,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Reply {
    let (staged, context) = receive_or_fetch(&director, request, query.sha256.as_deref()).await?;
    let upload = director.upload.clone();
    let fix = query.fix;
    let task = director
        .runner
        .submit(
            new_task("upload release", None, context),
            move |context: TaskContext| async move {
                let result = import_release(&context, &upload, &staged.path, fix).await;
                staged.done().await;
                result
            },
        )
        .await
        .map_err(internal)?;
    Ok(accepted(&task))
}

/// `POST /stemcells`: as `POST /releases`, for stemcells.
async fn upload_stemcell(
    AxumState(director): AxumState<Director>,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Reply {
    let (staged, context) = receive_or_fetch(&director, request, query.sha256.as_deref()).await?;
    let upload = director.upload.clone();
    let fix = query.fix;
    let task = director
        .runner
        .submit(
            new_task("upload stemcell", None, context),
            move |context: TaskContext| async move {
                let result = import_stemcell(&context, &upload, &staged.path, fix).await;
                staged.done().await;
                result
            },
        )
        .await
        .map_err(internal)?;
    Ok(accepted(&task))
}

#[derive(Deserialize)]
struct Remote {
    location: String,
    sha256: Option<String>,
}

/// An upload on the director's disk: staged by it (`owned`, removed after the task) or the
/// user's own file (a dev director reading it in place).
struct Staged {
    path: PathBuf,
    owned: bool,
}

impl Staged {
    async fn done(self) {
        if self.owned {
            let _ = tokio::fs::remove_file(&self.path).await;
        }
    }
}

async fn receive_or_fetch(
    director: &Director,
    request: Request,
    sha256: Option<&str>,
) -> Result<(Staged, Json_), (StatusCode, Json<Json_>)> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        let path = receive(director, request.into_body(), sha256).await?;
        return Ok((Staged { path, owned: true }, json!({ "source": "upload" })));
    }
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let remote: Remote = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"location\": URL}}: {e}"),
        )
    })?;
    if let Some(local) = remote.location.strip_prefix("file://") {
        // Only a dev director, which runs as the user on the user's machine, reads the
        // user's files in place (saving a copy of a gigabyte stemcell); the upload task then
        // leaves the file where it is.
        if !director.info.dev {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: only a dev director reads local files; upload the file instead",
                    remote.location
                ),
            ));
        }
        let path = PathBuf::from(local);
        if !path.is_file() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("{}: no such file", path.display()),
            ));
        }
        if let Some(expected) = remote.sha256.as_deref().or(sha256) {
            let expected = BlobId::parse(expected)
                .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
            let actual = crate::blobstore::sha256_file(&path)
                .await
                .map_err(internal)?;
            if actual != expected {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "sha256 mismatch: expected {}, got {}",
                        expected.digest_string(),
                        actual.digest_string()
                    ),
                ));
            }
        }
        return Ok((
            Staged { path, owned: false },
            json!({ "source": remote.location }),
        ));
    }
    if !(remote.location.starts_with("http://") || remote.location.starts_with("https://")) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: the director downloads http(s) URLs; upload local files from the CLI",
                remote.location
            ),
        ));
    }
    let response = reqwest::get(&remote.location)
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                format!("downloading {}: {e}", remote.location),
            )
        })?;
    let body = Body::from_stream(response.bytes_stream());
    let digest = remote.sha256.as_deref().or(sha256);
    let path = receive(director, body, digest).await?;
    Ok((
        Staged { path, owned: true },
        json!({ "source": remote.location }),
    ))
}

async fn releases(AxumState(director): AxumState<Director>) -> Reply {
    let list = director.state.releases().list().await.map_err(internal)?;
    let mut by_name: BTreeMap<String, Vec<Json_>> = BTreeMap::new();
    for version in &list {
        by_name
            .entry(version.name.clone())
            .or_default()
            .push(json!({
                "version": version.version,
                "commit_hash": version.commit_hash,
                "uncommitted_changes": version.uncommitted_changes,
                "currently_deployed": !version.deployments.is_empty(),
                "deployments": version.deployments,
                "created_at": version.created_at,
            }));
    }
    let body: Vec<Json_> = by_name
        .into_iter()
        .map(|(name, versions)| json!({ "name": name, "release_versions": versions }))
        .collect();
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    version: Option<String>,
    #[serde(default)]
    force: bool,
}

async fn delete_release(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Reply {
    let state = director.state.clone();
    let blobstore = director.blobstore.clone();
    let description = match &query.version {
        Some(version) => format!("delete release {name}/{version}"),
        None => format!("delete release {name}"),
    };
    let force = query.force;
    let task = director
        .runner
        .submit(
            new_task(
                &description,
                None,
                json!({ "release": name, "version": query.version }),
            ),
            move |context: TaskContext| async move {
                context
                    .lock(&crate::tasks::LockKey::Release(name.clone()))
                    .await?;
                let versions: Vec<String> = match &query.version {
                    Some(version) => vec![version.clone()],
                    None => state
                        .releases()
                        .list()
                        .await?
                        .into_iter()
                        .filter(|v| v.name == name)
                        .map(|v| v.version)
                        .collect(),
                };
                if versions.is_empty() {
                    return Err(TaskError::message(format!(
                        "release '{name}' is not uploaded"
                    )));
                }
                let stage = context
                    .log
                    .stage("Deleting release", vec![], versions.len() as u32);
                for (i, version) in versions.iter().enumerate() {
                    context.checkpoint()?;
                    let step = format!("{name}/{version}");
                    let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
                    stage.started(&step, index);
                    match state.releases().delete(&name, version).await {
                        Ok(()) => stage.finished(&step, index),
                        Err(director_state::StateError::NotFound { .. }) if force => {
                            stage.finished(&step, index)
                        }
                        Err(e) => {
                            stage.failed(&step, index, &e.to_string());
                            return Err(e.into());
                        }
                    }
                }
                let removed = sweep_blobs(&state, &blobstore, &context).await?;
                Ok(format!(
                    "deleted release {} ({removed})",
                    versions
                        .iter()
                        .map(|v| format!("{name}/{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            },
        )
        .await
        .map_err(internal)?;
    Ok(accepted(&task))
}

/// Removes unreferenced blobs unless an upload is running (its blobs are not referenced
/// until it commits); says what happened.
async fn sweep_blobs(
    state: &director_state::State,
    blobstore: &crate::blobstore::Blobstore,
    context: &TaskContext,
) -> Result<String, TaskError> {
    let running = state
        .tasks()
        .list(&TaskFilter::recent(1000).states(&[
            TaskState::Queued,
            TaskState::Processing,
            TaskState::Cancelling,
        ]))
        .await?;
    if running
        .iter()
        .any(|t| t.id != context.id && t.description.starts_with("upload"))
    {
        return Ok(
            "blobs are kept while an upload runs; `director clean-up` removes them later"
                .to_string(),
        );
    }
    let removed = remove_unreferenced_blobs(state, blobstore, 0).await?;
    Ok(format!("{} blob(s) removed", removed.len()))
}

async fn stemcells(AxumState(director): AxumState<Director>) -> Reply {
    let list = director.state.stemcells().list().await.map_err(internal)?;
    let body: Vec<Json_> = list
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "operating_system": s.operating_system,
                "version": s.version,
                "sha256": s.sha256,
                "api_version": s.api_version,
                "formats": s.formats,
                "cid": s.cid,
                "deployments": s.deployments,
                "created_at": s.created_at,
            })
        })
        .collect();
    Ok(Json(body).into_response())
}

async fn delete_stemcell(
    AxumState(director): AxumState<Director>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> Reply {
    let state = director.state.clone();
    let blobstore = director.blobstore.clone();
    let services = director.services.clone();
    let force = query.force;
    let task = director
        .runner
        .submit(
            new_task(
                &format!("delete stemcell {name}/{version}"),
                None,
                json!({ "stemcell": name, "version": version }),
            ),
            move |context: TaskContext| async move {
                let label = format!("{name}/{version}");
                context
                    .lock(&crate::tasks::LockKey::Stemcell(
                        director_core::stemcell::StemcellKey::new(&name, &version),
                    ))
                    .await?;
                let cid = state
                    .stemcells()
                    .find(&name, &version)
                    .await?
                    .map(|s| s.cid)
                    .unwrap_or_default();
                // The record first: it refuses while a deployment uses the stemcell, and
                // the IaaS image must outlive any use.
                match state.stemcells().delete(&name, &version).await {
                    Ok(()) => {}
                    Err(director_state::StateError::NotFound { .. }) if force => {}
                    Err(e) => return Err(e.into()),
                }
                let warning =
                    crate::ops::verbs::delete_stemcell_image(&services, &label, &cid).await;
                let removed = sweep_blobs(&state, &blobstore, &context).await?;
                Ok(match warning {
                    None => format!("deleted stemcell {label} ({removed})"),
                    Some(warning) => format!("deleted stemcell {label} ({removed}); {warning}"),
                })
            },
        )
        .await
        .map_err(internal)?;
    Ok(accepted(&task))
}

#[derive(Deserialize)]
struct CleanupBody {
    #[serde(default)]
    all: bool,
}

async fn cleanup(
    AxumState(director): AxumState<Director>,
    body: Option<Json<CleanupBody>>,
) -> Reply {
    let all = body.is_some_and(|b| b.all);
    let state = director.state.clone();
    let blobstore = director.blobstore.clone();
    let services = director.services.clone();
    let task = director
        .runner
        .submit(
            new_task("clean up", None, json!({ "all": all })),
            move |context: TaskContext| async move {
                context.lock(&crate::tasks::LockKey::Cleanup).await?;
                let mut removed = Vec::new();
                // Unused release versions: all with --all, else all but the two newest of each release.
                let mut releases: BTreeMap<String, Vec<director_state::ReleaseVersionSummary>> =
                    BTreeMap::new();
                for version in state.releases().list().await? {
                    releases
                        .entry(version.name.clone())
                        .or_default()
                        .push(version);
                }
                for (name, mut versions) in releases {
                    versions.sort_by_key(|v| v.created_at);
                    let keep = if all { 0 } else { 2 };
                    let unused: Vec<_> = versions
                        .iter()
                        .filter(|v| v.deployments.is_empty())
                        .collect();
                    let removable = unused.len().saturating_sub(keep);
                    for version in unused.into_iter().take(removable) {
                        context.checkpoint()?;
                        state.releases().delete(&name, &version.version).await?;
                        removed.push(format!("release {name}/{}", version.version));
                    }
                }
                let mut stemcells: BTreeMap<String, Vec<director_state::Stemcell>> =
                    BTreeMap::new();
                for stemcell in state.stemcells().list().await? {
                    stemcells
                        .entry(stemcell.name.clone())
                        .or_default()
                        .push(stemcell);
                }
                for (name, mut list) in stemcells {
                    list.sort_by_key(|s| s.created_at);
                    let keep = if all { 0 } else { 2 };
                    let unused: Vec<_> = list.iter().filter(|s| s.deployments.is_empty()).collect();
                    let removable = unused.len().saturating_sub(keep);
                    for stemcell in unused.into_iter().take(removable) {
                        context.checkpoint()?;
                        state.stemcells().delete(&name, &stemcell.version).await?;
                        let label = format!("{name}/{}", stemcell.version);
                        if let Some(warning) = crate::ops::verbs::delete_stemcell_image(
                            &services,
                            &label,
                            &stemcell.cid,
                        )
                        .await
                        {
                            context.log.debug(warning.clone());
                            removed.push(format!("stemcell {label} ({warning})"));
                        } else {
                            removed.push(format!("stemcell {label}"));
                        }
                    }
                }
                // Orphaned disks only with --all, as BOSH: they hold data.
                if all {
                    for disk in state.instances().orphaned_disks().await? {
                        context.checkpoint()?;
                        crate::ops::verbs::delete_orphaned_disk(&services, &disk.cid).await?;
                        removed.push(format!("orphaned disk {}", disk.cid));
                    }
                }
                let blobs = sweep_blobs(&state, &blobstore, &context).await?;
                for line in &removed {
                    context.log.debug(format!("removed {line}"));
                }
                Ok(if removed.is_empty() {
                    format!("nothing to remove; {blobs}")
                } else {
                    format!("removed {}; {blobs}", removed.join(", "))
                })
            },
        )
        .await
        .map_err(internal)?;
    Ok(accepted(&task))
}

async fn shutdown(AxumState(director): AxumState<Director>) -> Reply {
    if !director.info.dev {
        return Err(error(
            StatusCode::FORBIDDEN,
            "this director was not started in dev mode: stop it with the service manager that runs it",
        ));
    }
    director.shutdown.cancel();
    Ok(Json(json!({ "message": "stopping" })).into_response())
}

#[derive(Deserialize)]
struct BlobQuery {
    exp: Option<u64>,
    sig: Option<String>,
}

/// `GET /blobs/<id>?exp=…&sig=…`: a blob for an agent, streamed and verified.
async fn blob(
    AxumState(director): AxumState<Director>,
    Path(id): Path<String>,
    Query(query): Query<BlobQuery>,
) -> Reply {
    let id = BlobId::parse(&id).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let (Some(expires), Some(signature)) = (query.exp, query.sig.as_deref()) else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "blob URLs must be signed (exp and sig)",
        ));
    };
    if !director.blobstore.verify_signature(&id, expires, signature) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the blob URL's signature is wrong or has expired",
        ));
    }
    let content = director
        .blobstore
        .get_bytes(&id)
        .await
        .map_err(|e| match e {
            crate::blobstore::BlobstoreError::NotFound(_) => {
                error(StatusCode::NOT_FOUND, e.to_string())
            }
            other => internal(other),
        })?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        content,
    )
        .into_response())
}

/// `PUT /blobs/uploads/<nonce>?exp=…&sig=…`: an agent stores a blob (a compiled package,
/// logs) with a URL the director signed for it; the answer names the stored blob.
async fn put_blob(
    AxumState(director): AxumState<Director>,
    Path(nonce): Path<String>,
    Query(query): Query<BlobQuery>,
    body: Body,
) -> Reply {
    let (Some(expires), Some(signature)) = (query.exp, query.sig.as_deref()) else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "upload URLs must be signed (exp and sig)",
        ));
    };
    if !director
        .blobstore
        .verify_upload_signature(&nonce, expires, signature)
    {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the upload URL's signature is wrong or has expired",
        ));
    }
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    let stored = director
        .blobstore
        .put_reader(reader, None, Some(director.max_upload_bytes))
        .await
        .map_err(|e| match e {
            crate::blobstore::BlobstoreError::TooLarge { .. } => {
                error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            other => internal(other),
        })?;
    director
        .state
        .blobs()
        .insert(&director_state::NewBlob::from(&stored))
        .await
        .map_err(internal)?;
    Ok(Json(agent_protocol::UploadedBlob {
        blob_id: stored.id.as_str().to_string(),
        size: stored.size,
    })
    .into_response())
}
