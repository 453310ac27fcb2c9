//! Releases and stemcells: listing, uploading (a tarball body, or a URL the director fetches),
//! deleting, and `clean-up`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State as AxumState};
use axum::http::header;
use axum::response::Response;
use axum::routing::{delete, get, post};
use director_api::releases::{
    CleanupRequest, DeleteQuery, Release, ReleaseVersion, RemoteUpload, Stemcell, UploadQuery,
};
use futures::StreamExt;
use serde_json::{Value as Json_, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use director_api::ErrorCode;

use super::Director;
use super::reply::{Failure, Reply, accepted, new_task};
use crate::blobstore::BlobId;
use crate::tasks::{TaskContext, TaskError};
use crate::uploads::{import_release, import_stemcell, remove_unreferenced_blobs};
use director_state::{TaskFilter, TaskState};

pub(super) fn routes() -> axum::Router<Director> {
    axum::Router::new()
        .route("/releases", get(releases).post(upload_release))
        .route("/releases/{name}", delete(delete_release))
        .route("/stemcells", get(stemcells).post(upload_stemcell))
        .route("/stemcells/{name}/{version}", delete(delete_stemcell))
        .route("/cleanup", post(cleanup))
}

/// Receives an upload into `<data_dir>/uploads/<uuid>`, checking the size limit and the
/// digest the client sent. Nothing else is written until a task takes the file over.
async fn receive(director: &Director, body: Body, expected: Option<&str>) -> Reply<PathBuf> {
    let expected = expected
        .map(|d| BlobId::parse(d).map_err(|e| Failure::bad_request(e.to_string())))
        .transpose()?;
    let path = director.uploads_dir.join(uuid::Uuid::new_v4().to_string());
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(Failure::internal)?;
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let outcome: Reply<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| Failure::bad_request(format!("the upload was interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > director.max_upload_bytes {
                return Err(Failure::new(
                    ErrorCode::PayloadTooLarge,
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
            file.write_all(&chunk).await.map_err(Failure::internal)?;
        }
        file.flush().await.map_err(Failure::internal)?;
        if let Some(expected) = &expected {
            let actual = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            if expected.as_str() != actual {
                return Err(Failure::bad_request(format!(
                    "sha256 mismatch: expected {}, got sha256:{actual}",
                    expected.digest_string()
                )));
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

/// `POST /releases`: a tarball body, or JSON `{"location": url, "sha256": …}` for a release
/// the director downloads itself.
async fn upload_release(
    AxumState(director): AxumState<Director>,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Reply<Response> {
    upload(&director, UploadKind::Release, query, request).await
}

/// `POST /stemcells`: as `POST /releases`, for stemcells.
async fn upload_stemcell(
    AxumState(director): AxumState<Director>,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Reply<Response> {
    upload(&director, UploadKind::Stemcell, query, request).await
}

/// What an upload brings in.
#[derive(Clone, Copy)]
enum UploadKind {
    Release,
    Stemcell,
}

/// Stages the upload (received, fetched or named in place), then imports it as a task.
async fn upload(
    director: &Director,
    kind: UploadKind,
    query: UploadQuery,
    request: Request,
) -> Reply<Response> {
    let (staged, context) = receive_or_fetch(director, request, query.sha256.as_deref()).await?;
    let upload = director.upload.clone();
    let fix = query.fix;
    let description = match kind {
        UploadKind::Release => "upload release",
        UploadKind::Stemcell => "upload stemcell",
    };
    let task = director
        .runner
        .submit(
            new_task(description, None, context),
            move |context: TaskContext| async move {
                let result = match kind {
                    UploadKind::Release => {
                        import_release(&context, &upload, &staged.path, fix).await
                    }
                    UploadKind::Stemcell => {
                        import_stemcell(&context, &upload, &staged.path, fix).await
                    }
                };
                staged.done().await;
                result
            },
        )
        .await?;
    Ok(accepted(&task))
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
) -> Reply<(Staged, Json_)> {
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
        .map_err(|e| Failure::bad_request(e.to_string()))?;
    let remote: RemoteUpload = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::bad_request(format!("expected {{\"location\": URL}}: {e}")))?;
    if let Some(local) = remote.location.strip_prefix("file://") {
        // Only a dev director, which runs as the user on the user's machine, reads the
        // user's files in place (saving a copy of a gigabyte stemcell); the upload task then
        // leaves the file where it is.
        if !director.info.dev {
            return Err(Failure::bad_request(format!(
                "{}: only a dev director reads local files; upload the file instead",
                remote.location
            )));
        }
        let path = PathBuf::from(local);
        if !path.is_file() {
            return Err(Failure::bad_request(format!(
                "{}: no such file",
                path.display()
            )));
        }
        if let Some(expected) = remote.sha256.as_deref().or(sha256) {
            let expected =
                BlobId::parse(expected).map_err(|e| Failure::bad_request(e.to_string()))?;
            let actual = crate::blobstore::sha256_file(&path)
                .await
                .map_err(Failure::internal)?;
            if actual != expected {
                return Err(Failure::bad_request(format!(
                    "sha256 mismatch: expected {}, got {}",
                    expected.digest_string(),
                    actual.digest_string()
                )));
            }
        }
        return Ok((
            Staged { path, owned: false },
            json!({ "source": remote.location }),
        ));
    }
    if !(remote.location.starts_with("http://") || remote.location.starts_with("https://")) {
        return Err(Failure::bad_request(format!(
            "{}: the director downloads http(s) URLs; upload local files from the CLI",
            remote.location
        )));
    }
    let response = director
        .fetch
        .get(&remote.location)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| {
            Failure::new(
                ErrorCode::BadGateway,
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

async fn releases(AxumState(director): AxumState<Director>) -> Reply<Json<Vec<Release>>> {
    let list = director.state.releases().list().await?;
    let mut by_name: BTreeMap<String, Vec<ReleaseVersion>> = BTreeMap::new();
    for version in list {
        by_name
            .entry(version.name.clone())
            .or_default()
            .push(ReleaseVersion {
                currently_deployed: !version.deployments.is_empty(),
                version: version.version,
                commit_hash: version.commit_hash,
                uncommitted_changes: version.uncommitted_changes,
                deployments: version.deployments,
                created_at: version.created_at,
            });
    }
    Ok(Json(
        by_name
            .into_iter()
            .map(|(name, release_versions)| Release {
                name,
                release_versions,
            })
            .collect(),
    ))
}

async fn delete_release(
    AxumState(director): AxumState<Director>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Reply<Response> {
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
        .map_err(Failure::internal)?;
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

async fn stemcells(AxumState(director): AxumState<Director>) -> Reply<Json<Vec<Stemcell>>> {
    let list = director.state.stemcells().list().await?;
    Ok(Json(
        list.into_iter()
            .map(|s| Stemcell {
                name: s.name,
                operating_system: s.operating_system,
                version: s.version,
                sha256: s.sha256,
                api_version: s.api_version,
                formats: s.formats,
                cid: s.cid,
                deployments: s.deployments,
                created_at: s.created_at,
            })
            .collect(),
    ))
}

async fn delete_stemcell(
    AxumState(director): AxumState<Director>,
    Path((name, version)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> Reply<Response> {
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
        .map_err(Failure::internal)?;
    Ok(accepted(&task))
}

async fn cleanup(
    AxumState(director): AxumState<Director>,
    body: Option<Json<CleanupRequest>>,
) -> Reply<Response> {
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
        .map_err(Failure::internal)?;
    Ok(accepted(&task))
}
