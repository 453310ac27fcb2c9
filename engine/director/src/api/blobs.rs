//! Blobs: what agents fetch and store through signed URLs, links for clients to download
//! blobs without their token, and compiled release exports.
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
//! a hold keeps it for an hour after the export, each link holds it while the link is
//! valid, and `clean-up` (or a director restart) removes it after that. `GET /blobs/<id>/link` answers the same
//! for any blob (the log tarballs of `director logs`).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use director_api::releases::{BlobLink, ExportRequest};
use futures::StreamExt;
use serde::Deserialize;

use super::Director;
use super::reply::{Failure, Reply, accepted, new_task};
use crate::blobstore::BlobId;
use crate::blobstore::slots::PutSlotError;
use crate::tasks::TaskContext;
use crate::uploads::export_release;

/// How long a download link for an exported tarball stays valid.
const LINK_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// Routes agents call with signed URLs (no token).
pub(super) fn signed_routes() -> axum::Router<Director> {
    axum::Router::new()
        .route("/blobs/{id}", get(blob))
        .route("/blobs/uploads/{nonce}", axum::routing::put(put_blob))
}

/// Routes for clients (with the token).
pub(super) fn routes() -> axum::Router<Director> {
    axum::Router::new()
        .route("/releases/export", post(export))
        .route("/releases/exports/{id}", get(download_link))
        .route("/blobs/{id}/link", get(download_link))
}

#[derive(Deserialize)]
struct BlobQuery {
    exp: Option<u64>,
    sig: Option<String>,
}

/// `GET /blobs/<id>?exp=…&sig=…`: a blob for an agent, streamed from the store (with its
/// Content-Length) and verified as it goes.
async fn blob(
    AxumState(director): AxumState<Director>,
    Path(id): Path<String>,
    Query(query): Query<BlobQuery>,
) -> Reply<Response> {
    let id = BlobId::parse(&id).map_err(|e| Failure::bad_request(e.to_string()))?;
    let (Some(expires), Some(signature)) = (query.exp, query.sig.as_deref()) else {
        return Err(Failure::forbidden("blob URLs must be signed (exp and sig)"));
    };
    if !director.blobstore.verify_signature(&id, expires, signature) {
        return Err(Failure::forbidden(
            "the blob URL's signature is wrong or has expired",
        ));
    }
    // Streamed chunk by chunk: agents fetch gigabyte stemcell images and packages several at
    // a time. A blob found corrupt ends the body early, short of its Content-Length, so the
    // agent sees a failed download (and checks the digest itself in any case).
    let blob = director.blobstore.get_stream(&id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, blob.size.to_string()),
        ],
        Body::from_stream(blob.chunks),
    )
        .into_response())
}

/// `PUT /blobs/uploads/<nonce>?exp=…&sig=…`: an agent stores a blob (a compiled package,
/// logs) with a URL the director signed for it and recorded as an upload slot: one `PUT`
/// per URL (a second is refused with 409), at most the slot's size; the answer names the
/// stored blob, which the slot keeps until the agent's result is recorded.
async fn put_blob(
    AxumState(director): AxumState<Director>,
    Path(nonce): Path<String>,
    Query(query): Query<BlobQuery>,
    body: Body,
) -> Reply<Response> {
    let (Some(expires), Some(signature)) = (query.exp, query.sig.as_deref()) else {
        return Err(Failure::forbidden(
            "upload URLs must be signed (exp and sig)",
        ));
    };
    if !director
        .blobstore
        .verify_upload_signature(&nonce, expires, signature)
    {
        return Err(Failure::forbidden(
            "the upload URL's signature is wrong or has expired",
        ));
    }
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    let stored = director
        .blobstore
        .put_into_slot(&director.state, &nonce, reader, director.max_upload_bytes)
        .await
        .map_err(|error| match error {
            PutSlotError::AlreadyUsed => {
                Failure::new(director_api::ErrorCode::Conflict, error.to_string())
            }
            PutSlotError::Unknown | PutSlotError::Expired => Failure::forbidden(error.to_string()),
            PutSlotError::Store(error) => Failure::from(error),
            PutSlotError::State(error) => Failure::from(error),
        })?;
    Ok(Json(agent_protocol::UploadedBlob {
        blob_id: stored.id.as_str().to_string(),
        size: stored.size,
    })
    .into_response())
}

/// `POST /releases/export`: queues the export task.
async fn export(
    AxumState(director): AxumState<Director>,
    body: Result<Json<ExportRequest>, axum::extract::rejection::JsonRejection>,
) -> Reply<Response> {
    let Json(request) = body.map_err(|e| {
        Failure::bad_request(format!(
                "expected {{\"release_name\", \"release_version\", \"stemcell_os\", \"stemcell_version\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    for (what, value) in [
        ("release_name", &request.release_name),
        ("release_version", &request.release_version),
        ("stemcell_os", &request.stemcell_os),
        ("stemcell_version", &request.stemcell_version),
    ] {
        if value.is_empty() {
            return Err(Failure::bad_request(format!("{what} must not be empty")));
        }
    }
    let description = format!(
        "export release {}/{} for stemcell {}/{}",
        request.release_name,
        request.release_version,
        request.stemcell_os,
        request.stemcell_version
    );
    let context = serde_json::to_value(&request).map_err(Failure::internal)?;
    let upload = director.upload.clone();
    let task =
        director
            .runner
            .submit(
                new_task(&description, None, context),
                move |context: TaskContext| async move {
                    export_release(&context, &upload, &request).await
                },
            )
            .await?;
    Ok(accepted(&task))
}

/// `GET /releases/exports/<blob id>` and `GET /blobs/<blob id>/link`: where to download the
/// blob from without the token (a signed, expiring path).
async fn download_link(
    AxumState(director): AxumState<Director>,
    Path(id): Path<String>,
) -> Reply<Json<BlobLink>> {
    let id = BlobId::parse(&id).map_err(|e| Failure::bad_request(e.to_string()))?;
    if !director.blobstore.exists(&id).await? {
        return Err(Failure::not_found(format!(
            "blob {id} is not in the blobstore (a clean-up may have removed it): export the release or fetch the logs again"
        )));
    }
    // The link holds the blob while it is valid: clean-up must not take it from under the
    // download (logs and exports are blobs nothing else refers to).
    if !director
        .blobstore
        .hold_for_download(&director.state, &id, LINK_VALIDITY)
        .await?
    {
        return Err(Failure::not_found(format!(
            "blob {id} is not recorded (a clean-up may have removed it): export the release or fetch the logs again"
        )));
    }
    let size = director.blobstore.size(&id).await?;
    Ok(Json(BlobLink {
        blob_id: id.as_str().to_string(),
        sha256: id.digest_string(),
        size,
        path: director.blobstore.signed_path(&id, LINK_VALIDITY),
    }))
}
