//! The director's HTTP/JSON API (`director serve`): the only module that knows routes.
//!
//! Every answer is a type of the contract crate `director_api`; every error is its
//! `ApiError` (`reply` classifies the typed errors below). Every request but `GET /info`,
//! `POST /challenge` and `GET /openapi.json` needs `Authorization: Bearer <token>`; `GET /blobs/<id>` and
//! `PUT /blobs/uploads/<nonce>` instead need a signed, expiring URL (agents use those).
//! Mutating calls answer at once with a queued task (`202 {"task": {...}}`) and the work
//! runs in the background; clients follow it with `GET /tasks/<id>/output`.
//!
//! The route modules (`tasks`, `releases`, `deployments`, `blobs`) each depend on `reply`
//! only; this file assembles them; `serve` starts it all.

mod blobs;
mod deployments;
mod releases;
mod reply;
mod serve;
mod tasks;

pub use serve::serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State as AxumState};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use director_api::{ChallengeProof, ChallengeRequest, Message};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::blobstore::Blobstore;
use crate::tasks::TaskRunner;
use crate::uploads::UploadContext;
use director_state::State;
use reply::{Failure, Reply};

/// The director's version, as `/info` and `status` show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The cloud config a new dev director starts with.
const DEV_CLOUD_CONFIG: &str = include_str!("../../../../manifests/cloud-config-local.yml");

/// How many tasks run at once (BOSH's `director.workers` default is 3).
const WORKERS: usize = 3;

/// Why the director could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or directory could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state database could not be opened.
    #[error("{0}")]
    State(#[source] Box<director_state::StateError>),
    /// The blobstore could not be opened.
    #[error(transparent)]
    Blobstore(#[from] crate::blobstore::BlobstoreError),
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// The CLI config (a dev director targets the CLI at itself) could not be written.
    #[error(transparent)]
    ClientConfig(#[from] crate::config::ConfigError),
    /// The message bus could not be started.
    #[error(transparent)]
    Bus(#[from] director_bus::BusError),
}

impl From<director_state::StateError> for ServeError {
    fn from(error: director_state::StateError) -> ServeError {
        ServeError::State(Box::new(error))
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let context = context.into();
    move |source| ServeError::Io { context, source }
}

pub use director_api::Info;

/// The record a dev director leaves in its data directory for the CLI.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevRecord {
    /// Its URL.
    pub url: String,
    /// Its token.
    pub token: String,
    /// Its process id.
    pub pid: u32,
}

impl DevRecord {
    /// `<data_dir>/dev.yml`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("dev.yml")
    }

    /// Reads the record, if there is one.
    pub fn load(data_dir: &Path) -> Option<DevRecord> {
        let text = std::fs::read_to_string(DevRecord::path(data_dir)).ok()?;
        serde_yaml::from_str(&text).ok()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Director {
    /// The API's URL (what the CLI targets; bound into `/challenge`'s proof).
    pub url: String,
    pub info: Info,
    pub token: Arc<String>,
    pub state: Arc<State>,
    pub blobstore: Blobstore,
    pub runner: TaskRunner,
    pub uploads_dir: PathBuf,
    pub upload: UploadContext,
    pub max_upload_bytes: u64,
    /// How long a request body may go without a byte arriving.
    pub idle_timeout: std::time::Duration,
    /// The client for URLs the director downloads, with its connect and read timeouts.
    pub fetch: reqwest::Client,
    pub shutdown: CancellationToken,
    pub services: Arc<crate::ops::Services>,
    pub staging_dir: PathBuf,
}

fn router(director: Director) -> Router {
    let protected = Router::new()
        .route("/shutdown", post(shutdown))
        .merge(tasks::routes())
        .merge(releases::routes())
        .merge(deployments::routes())
        .merge(blobs::routes())
        .route_layer(middleware::from_fn_with_state(
            director.clone(),
            authenticate,
        ));
    let idle_timeout = director.idle_timeout;
    Router::new()
        .route("/info", get(info))
        .route("/challenge", post(challenge))
        .route("/openapi.json", get(openapi))
        .merge(blobs::signed_routes())
        .merge(protected)
        .layer(middleware::from_fn(move |request, next| {
            body_idle_timeout(idle_timeout, request, next)
        }))
        .with_state(director)
}

/// What the agents' own listener serves: only the signed blob routes (no token is ever
/// sent there).
fn agent_router(director: Director) -> Router {
    let idle_timeout = director.idle_timeout;
    Router::new()
        .merge(blobs::signed_routes())
        .layer(middleware::from_fn(move |request, next| {
            body_idle_timeout(idle_timeout, request, next)
        }))
        .with_state(director)
}

/// Every request body may go at most `idle_timeout` without a byte arriving: a client that
/// stalls mid-upload frees its connection (the handler reading the body sees an error that
/// says so), while an upload that keeps moving is never cut, however large.
async fn body_idle_timeout(
    idle_timeout: std::time::Duration,
    request: Request,
    next: Next,
) -> Response {
    let request = request.map(|body| axum::body::Body::new(IdleBody::new(body, idle_timeout)));
    next.run(request).await
}

/// A request body whose next frame must arrive within `idle_timeout`.
struct IdleBody {
    body: axum::body::Body,
    idle_timeout: std::time::Duration,
    waiting: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleBody {
    fn new(body: axum::body::Body, idle_timeout: std::time::Duration) -> IdleBody {
        IdleBody {
            body,
            idle_timeout,
            waiting: None,
        }
    }
}

impl hyper::body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if poll.is_ready() {
            this.waiting = None;
            return poll;
        }
        let idle_timeout = this.idle_timeout;
        let waiting = this
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(format!(
                "no data of the request body for {} s",
                idle_timeout.as_secs()
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn info(AxumState(director): AxumState<Director>) -> Json<Info> {
    Json(director.info.clone())
}

/// `POST /challenge`: proves, without sending it, that this director holds its token (the
/// CLI asks before it sends a dev director's token to the port that director recorded).
async fn challenge(
    AxumState(director): AxumState<Director>,
    Json(request): Json<ChallengeRequest>,
) -> Reply<Json<ChallengeProof>> {
    let nonce = &request.nonce;
    if !(32..=128).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::bad_request(
            "the nonce must be 32 to 128 hexadecimal digits",
        ));
    }
    let proof = challenge_proof(&director.token, &director.url, nonce)
        .ok_or_else(|| Failure::internal("the challenge's HMAC could not be computed"))?;
    Ok(Json(ChallengeProof { proof }))
}

/// The answer to a challenge: hex HMAC-SHA256 keyed with `token` of `director challenge`,
/// the director's `url` and the `nonce`, one per line. Binding the URL means a listener on
/// another port cannot relay the challenge to the real director and pass its answer on.
pub fn challenge_proof(token: &str, url: &str, nonce: &str) -> Option<String> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).ok()?;
    mac.update(format!("director challenge\n{url}\n{nonce}").as_bytes());
    Some(
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The contract's OpenAPI document (the same as `docs/openapi.json`).
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        director_api::openapi::document_json(),
    )
        .into_response()
}

/// `POST /shutdown`: stops a dev director.
async fn shutdown(AxumState(director): AxumState<Director>) -> Reply<Json<Message>> {
    if !director.info.dev {
        return Err(Failure::forbidden(
            "this director was not started in dev mode: stop it with the service manager that runs it",
        ));
    }
    director.shutdown.cancel();
    Ok(Json(Message {
        message: "stopping".to_string(),
    }))
}

async fn authenticate(
    AxumState(director): AxumState<Director>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = director.token.as_bytes();
    if given.len() == expected.len() && openssl::memcmp::eq(given.as_bytes(), expected) {
        next.run(request).await
    } else {
        Failure::new(
            director_api::ErrorCode::Unauthorized,
            "missing or wrong token: log in with the token of this director (DIRECTOR_TOKEN or the CLI config)",
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::challenge_proof;

    #[test]
    fn a_challenge_proof_needs_the_token_and_binds_the_url_and_the_nonce() {
        let proof = |token, url, nonce| challenge_proof(token, url, nonce).unwrap();
        let nonce = "00112233445566778899aabbccddeeff";
        let right = proof("token", "http://127.0.0.1:25555", nonce);
        assert_eq!(right.len(), 64);
        assert_eq!(right, proof("token", "http://127.0.0.1:25555", nonce));
        for other in [
            proof("other token", "http://127.0.0.1:25555", nonce),
            proof("token", "http://127.0.0.1:25556", nonce),
            proof(
                "token",
                "http://127.0.0.1:25555",
                "ffeeddccbbaa99887766554433221100",
            ),
        ] {
            assert_ne!(right, other);
        }
    }
}
