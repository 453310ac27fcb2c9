//! Routes for compiled release exports.
//!
//! `POST /releases/export` (BOSH's route; a JSON body with `release_name`,
//! `release_version`, `stemcell_os` and `stemcell_version`, BOSH's `deployment_name` is
//! accepted and not needed) queues a task that writes the compiled release tarball into the
//! blobstore; its result is the JSON of a [`crate::uploads::ExportedRelease`] naming the
//! blob.
//!
//! `GET /releases/exports/<blob id>` answers a signed, expiring path to that blob
//! (`/blobs/<id>?exp=…&sig=…`, the route agents fetch packages from), so the CLI downloads
//! the tarball without sending its token along. The tarball is a blob nothing refers to:
//! `clean-up` (and a director restart) removes it. `GET /blobs/<id>/link` answers the same
//! for any blob (the log tarballs of `director logs`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

use super::Director;
use super::routes::{accepted, error};
use crate::blobstore::BlobId;
use crate::tasks::TaskContext;
use crate::uploads::{ExportRequest, export_release};
use director_state::NewTask;

type Reply = Result<Response, (StatusCode, Json<Json_>)>;
type Router = axum::Router<Director>;

/// How long a download link for an exported tarball stays valid.
const LINK_VALIDITY: Duration = Duration::from_secs(15 * 60);

fn internal(e: impl std::fmt::Display) -> (StatusCode, Json<Json_>) {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub(super) fn routes() -> Router {
    Router::new()
        .route("/releases/export", post(export))
        .route("/releases/exports/{id}", get(download_link))
        .route("/blobs/{id}/link", get(download_link))
}

/// The body of `POST /releases/export`.
#[derive(Deserialize)]
struct ExportBody {
    release_name: String,
    release_version: String,
    stemcell_os: String,
    stemcell_version: String,
}

/// `POST /releases/export`: queues the export task.
async fn export(AxumState(director): AxumState<Director>, body: Json<Json_>) -> Reply {
    let body: ExportBody = serde_json::from_value(body.0).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "expected {{\"release_name\", \"release_version\", \"stemcell_os\", \"stemcell_version\"}}: {e}"
            ),
        )
    })?;
    let request = ExportRequest {
        release_name: body.release_name,
        release_version: body.release_version,
        stemcell_os: body.stemcell_os,
        stemcell_version: body.stemcell_version,
    };
    for (what, value) in [
        ("release_name", &request.release_name),
        ("release_version", &request.release_version),
        ("stemcell_os", &request.stemcell_os),
        ("stemcell_version", &request.stemcell_version),
    ] {
        if value.is_empty() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("{what} must not be empty"),
            ));
        }
    }
    let description = format!(
        "export release {}/{} for stemcell {}/{}",
        request.release_name,
        request.release_version,
        request.stemcell_os,
        request.stemcell_version
    );
    let context = serde_json::to_value(&request).map_err(internal)?;
    let upload = director.upload.clone();
    let task =
        director
            .runner
            .submit(
                NewTask {
                    description,
                    deployment: None,
                    user: "admin".to_string(),
                    context,
                },
                move |context: TaskContext| async move {
                    export_release(&context, &upload, &request).await
                },
            )
            .await
            .map_err(internal)?;
    Ok(accepted(&task))
}

/// `GET /releases/exports/<blob id>` and `GET /blobs/<blob id>/link`:
/// `{"blob_id", "sha256", "size", "path"}` where `path` is the signed path to download the
/// blob from.
async fn download_link(AxumState(director): AxumState<Director>, Path(id): Path<String>) -> Reply {
    let id = BlobId::parse(&id).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    if !director.blobstore.exists(&id).await.map_err(internal)? {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "blob {id} is not in the blobstore (a clean-up may have removed it): export the release or fetch the logs again"
            ),
        ));
    }
    let size = director.blobstore.size(&id).await.map_err(internal)?;
    Ok(Json(json!({
        "blob_id": id.as_str(),
        "sha256": id.digest_string(),
        "size": size,
        "path": director.blobstore.signed_path(&id, LINK_VALIDITY),
    }))
    .into_response())
}
