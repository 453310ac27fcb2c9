//! The OpenAPI 3 document of the director API, generated from the contract types.
//!
//! Each route is declared once here, with its parameters, body and answers; the server
//! serves [`document`] at `GET /openapi.json` and `docs/openapi.json` is the same document
//! checked in (a test fails when they differ). The functions below exist only to carry the
//! route declarations.

#![allow(dead_code)]

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::deployments::{
    Config, ConfigKind, ConfigUpdated, DeleteDeploymentQuery, DeployQuery, Deployment,
    DeploymentManifest, ErrandRun, Event, EventsQuery, Instance, InstanceHealth, InstanceStemcell,
    InstancesQuery, LiveAgent, LogTarball, LogsRequest, NameVersion, OrphanedDisk, PlanAnswer,
    Problem, ProblemResolved, ProblemType, RecordedVm, Resolution, ResolveRequest,
    ResurrectionRequest, StateChange, StateChangeRequest,
};
use crate::error::{ApiError, ErrorCode, ErrorDetails, LockHolder};
use crate::info::{ChallengeProof, ChallengeRequest, Info, Message};
use crate::releases::{
    BlobLink, CleanupRequest, DeleteQuery, ExportRequest, ExportedRelease, Release, ReleaseVersion,
    RemoteUpload, Stemcell, UploadQuery,
};
use crate::tasks::{
    EventData, EventError, EventState, OutputKind, OutputQuery, Task, TaskAccepted, TaskEvent,
    TaskState, TasksQuery,
};

/// The document, as `GET /openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON with a final newline (the form checked into `docs/`).
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "director",
        description = "The director's HTTP API: every mutating call is a task (202 with the task); errors are one shape ({code, description, details}).",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerToken),
    security(("token" = [])),
    paths(
        info, challenge, openapi_json, blob, put_blob,
        tasks, task, cancel_task, task_output,
        releases, upload_release, delete_release,
        stemcells, upload_stemcell, delete_stemcell,
        cleanup, shutdown,
        config, update_config,
        deployments, deploy, plan, deployment, delete_deployment,
        instances, recorded_vms, change_state, fetch_logs, run_errand, scan, resolve_problems,
        events, update_resurrection, disks, delete_disk,
        export_release, export_link, blob_link,
    ),
    components(schemas(
        ApiError, ErrorCode, ErrorDetails, LockHolder, Info, Message, ChallengeRequest,
        ChallengeProof,
        Task, TaskState, TaskAccepted, OutputKind, TaskEvent, EventState, EventError, EventData,
        Release, ReleaseVersion, Stemcell, RemoteUpload, CleanupRequest, ExportRequest,
        ExportedRelease, BlobLink,
        Config, ConfigKind, ConfigUpdated, PlanAnswer, Deployment, NameVersion,
        DeploymentManifest, Instance, InstanceHealth, InstanceStemcell, LiveAgent, StateChange,
        StateChangeRequest, LogsRequest, LogTarball, ErrandRun, Event, OrphanedDisk,
        RecordedVm, ResurrectionRequest, Problem, ProblemType, Resolution, ResolveRequest,
        ProblemResolved,
    ))
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[utoipa::path(get, path = "/info", security(()), tag = "director",
    responses((status = 200, description = "The director", body = Info)))]
fn info() {}

#[utoipa::path(post, path = "/challenge", security(()), tag = "director",
    request_body = ChallengeRequest,
    responses((status = 200, description = "The proof that the director holds the token",
        body = ChallengeProof), (status = 400, body = ApiError)))]
fn challenge() {}

#[utoipa::path(get, path = "/openapi.json", security(()), tag = "director",
    responses((status = 200, description = "This document", content_type = "application/json")))]
fn openapi_json() {}

#[utoipa::path(get, path = "/blobs/{id}", security(()), tag = "blobs",
    params(("id" = String, Path, description = "Blob id (hex sha256)"),
        ("exp" = u64, Query, description = "Expiry (Unix seconds)"),
        ("sig" = String, Query, description = "Signature")),
    responses((status = 200, description = "The blob", content_type = "application/octet-stream"),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
fn blob() {}

#[utoipa::path(put, path = "/blobs/uploads/{nonce}", security(()), tag = "blobs",
    params(("nonce" = String, Path), ("exp" = u64, Query), ("sig" = String, Query)),
    request_body(content_type = "application/octet-stream", description = "The blob"),
    responses((status = 200, description = "The stored blob: {blob_id, size}"),
        (status = 403, body = ApiError), (status = 413, body = ApiError)))]
fn put_blob() {}

#[utoipa::path(get, path = "/tasks", tag = "tasks", params(TasksQuery),
    responses((status = 200, body = Vec<Task>), (status = 400, body = ApiError)))]
fn tasks() {}

#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = Task), (status = 404, body = ApiError)))]
fn task() {}

#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = Message), (status = 404, body = ApiError)))]
fn cancel_task() {}

#[utoipa::path(get, path = "/tasks/{id}/output", tag = "tasks",
    params(("id" = i64, Path), OutputQuery),
    responses((status = 200, description = "Output from offset; x-next-offset and x-task-state headers", content_type = "text/plain"),
        (status = 404, body = ApiError)))]
fn task_output() {}

#[utoipa::path(get, path = "/releases", tag = "releases",
    responses((status = 200, body = Vec<Release>)))]
fn releases() {}

#[utoipa::path(post, path = "/releases", tag = "releases", params(UploadQuery),
    request_body(content(("application/gzip"), (RemoteUpload = "application/json"))),
    responses((status = 202, body = TaskAccepted), (status = 400, body = ApiError),
        (status = 413, body = ApiError), (status = 502, body = ApiError)))]
fn upload_release() {}

#[utoipa::path(delete, path = "/releases/{name}", tag = "releases",
    params(("name" = String, Path), DeleteQuery),
    responses((status = 202, body = TaskAccepted)))]
fn delete_release() {}

#[utoipa::path(get, path = "/stemcells", tag = "stemcells",
    responses((status = 200, body = Vec<Stemcell>)))]
fn stemcells() {}

#[utoipa::path(post, path = "/stemcells", tag = "stemcells", params(UploadQuery),
    request_body(content(("application/gzip"), (RemoteUpload = "application/json"))),
    responses((status = 202, body = TaskAccepted), (status = 400, body = ApiError),
        (status = 413, body = ApiError), (status = 502, body = ApiError)))]
fn upload_stemcell() {}

#[utoipa::path(delete, path = "/stemcells/{name}/{version}", tag = "stemcells",
    params(("name" = String, Path), ("version" = String, Path), DeleteQuery),
    responses((status = 202, body = TaskAccepted)))]
fn delete_stemcell() {}

#[utoipa::path(post, path = "/cleanup", tag = "director", request_body = CleanupRequest,
    responses((status = 202, body = TaskAccepted)))]
fn cleanup() {}

#[utoipa::path(post, path = "/shutdown", tag = "director",
    responses((status = 200, body = Message), (status = 403, body = ApiError)))]
fn shutdown() {}

#[utoipa::path(get, path = "/configs/{kind}", tag = "configs",
    params(("kind" = ConfigKind, Path)),
    responses((status = 200, body = Config), (status = 404, body = ApiError)))]
fn config() {}

#[utoipa::path(put, path = "/configs/{kind}", tag = "configs",
    params(("kind" = ConfigKind, Path)),
    request_body(content_type = "text/yaml", description = "The config"),
    responses((status = 200, body = ConfigUpdated), (status = 404, body = ApiError),
        (status = 422, body = ApiError)))]
fn update_config() {}

#[utoipa::path(get, path = "/deployments", tag = "deployments",
    responses((status = 200, body = Vec<Deployment>)))]
fn deployments() {}

#[utoipa::path(post, path = "/deployments", tag = "deployments", params(DeployQuery),
    request_body(content_type = "text/yaml", description = "The manifest"),
    responses((status = 202, body = TaskAccepted), (status = 400, body = ApiError),
        (status = 409, description = "Another task holds the deployment's lock", body = ApiError)))]
fn deploy() {}

#[utoipa::path(post, path = "/deployments/plan", tag = "deployments", params(DeployQuery),
    request_body(content_type = "text/yaml", description = "The manifest"),
    responses((status = 200, body = PlanAnswer), (status = 422, body = ApiError)))]
fn plan() {}

#[utoipa::path(get, path = "/deployments/{name}", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = DeploymentManifest), (status = 404, body = ApiError)))]
fn deployment() {}

#[utoipa::path(delete, path = "/deployments/{name}", tag = "deployments",
    params(("name" = String, Path), DeleteDeploymentQuery),
    responses((status = 202, body = TaskAccepted), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
fn delete_deployment() {}

#[utoipa::path(get, path = "/deployments/{name}/instances", tag = "deployments",
    params(("name" = String, Path), InstancesQuery),
    responses((status = 200, body = Vec<Instance>), (status = 404, body = ApiError)))]
fn instances() {}

#[utoipa::path(get, path = "/deployments/{name}/vm_records", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 200, body = Vec<RecordedVm>), (status = 404, body = ApiError)))]
fn recorded_vms() {}

#[utoipa::path(post, path = "/deployments/{name}/state", tag = "deployments",
    params(("name" = String, Path)), request_body = StateChangeRequest,
    responses((status = 202, body = TaskAccepted), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
fn change_state() {}

#[utoipa::path(post, path = "/deployments/{name}/logs", tag = "deployments",
    params(("name" = String, Path)), request_body = LogsRequest,
    responses((status = 202, description = "A task whose result is a list of LogTarball", body = TaskAccepted),
        (status = 404, body = ApiError)))]
fn fetch_logs() {}

#[utoipa::path(post, path = "/deployments/{name}/errands/{errand}/runs", tag = "deployments",
    params(("name" = String, Path), ("errand" = String, Path)),
    responses((status = 202, description = "A task whose result is a list of ErrandRun", body = TaskAccepted),
        (status = 404, body = ApiError)))]
fn run_errand() {}

#[utoipa::path(post, path = "/deployments/{name}/scans", tag = "deployments",
    params(("name" = String, Path)),
    responses((status = 202, description = "A task (holding the deployment's lock) whose result is a list of Problem", body = TaskAccepted),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
fn scan() {}

#[utoipa::path(put, path = "/deployments/{name}/problems", tag = "deployments",
    params(("name" = String, Path)), request_body = ResolveRequest,
    responses((status = 202, description = "A task whose result is a list of ProblemResolved", body = TaskAccepted),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
fn resolve_problems() {}

#[utoipa::path(get, path = "/events", tag = "deployments", params(EventsQuery),
    responses((status = 200, body = Vec<Event>)))]
fn events() {}

#[utoipa::path(put, path = "/resurrection", tag = "deployments", request_body = ResurrectionRequest,
    responses((status = 200, body = Message), (status = 400, body = ApiError)))]
fn update_resurrection() {}

#[utoipa::path(get, path = "/disks", tag = "disks",
    params(("orphaned" = Option<bool>, Query, description = "Only orphaned disks (the only kind listed)")),
    responses((status = 200, body = Vec<OrphanedDisk>)))]
fn disks() {}

#[utoipa::path(delete, path = "/disks/{cid}", tag = "disks", params(("cid" = String, Path)),
    responses((status = 202, body = TaskAccepted)))]
fn delete_disk() {}

#[utoipa::path(post, path = "/releases/export", tag = "releases", request_body = ExportRequest,
    responses((status = 202, description = "A task whose result is an ExportedRelease", body = TaskAccepted),
        (status = 400, body = ApiError)))]
fn export_release() {}

#[utoipa::path(get, path = "/releases/exports/{id}", tag = "releases",
    params(("id" = String, Path, description = "Blob id")),
    responses((status = 200, body = BlobLink), (status = 404, body = ApiError)))]
fn export_link() {}

#[utoipa::path(get, path = "/blobs/{id}/link", tag = "blobs",
    params(("id" = String, Path, description = "Blob id")),
    responses((status = 200, body = BlobLink), (status = 404, body = ApiError)))]
fn blob_link() {}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// `docs/openapi.json` is the generated document. After changing the contract, write it
    /// anew with `UPDATE_OPENAPI=1 cargo test -p director-api` and review the diff.
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = super::document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} differs from the contract's document: run UPDATE_OPENAPI=1 cargo test -p director-api and review the diff",
            path.display()
        );
    }

    #[test]
    fn every_route_of_the_contract_is_documented() {
        let document = super::document();
        let paths: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/info",
            "/challenge",
            "/openapi.json",
            "/tasks/{id}/output",
            "/deployments/{name}/errands/{errand}/runs",
            "/releases/export",
            "/blobs/uploads/{nonce}",
            "/deployments/{name}/vm_records",
            "/resurrection",
            "/deployments/{name}/scans",
            "/deployments/{name}/problems",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        assert_eq!(paths.len(), 32, "{paths:?}");
    }
}
