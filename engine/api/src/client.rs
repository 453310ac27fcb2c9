//! The typed client of the director API: one method per route, answers decoded into the
//! contract types, errors decoded into [`ApiError`]. The CLI and the cluster broker use it;
//! finding (or starting) a director is theirs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::deployments::{
    Config, ConfigKind, ConfigUpdated, DeleteDeploymentQuery, DeployQuery, Deployment,
    DeploymentManifest, Event, EventsQuery, Instance, InstancesQuery, LogsRequest, OrphanedDisk,
    PlanAnswer, RecordedVm, ResolveRequest, ResurrectionRequest, StateChangeRequest,
};
use crate::error::{ApiError, ErrorCode};
use crate::info::{ChallengeProof, ChallengeRequest, Info, Message};
use crate::releases::{
    BlobLink, CleanupRequest, DeleteQuery, ExportRequest, Release, RemoteUpload, Stemcell,
    UploadQuery,
};
use crate::tasks::{
    NEXT_OFFSET_HEADER, OutputKind, OutputQuery, TASK_STATE_HEADER, Task, TaskAccepted, TaskState,
    TasksQuery,
};

/// Why a call failed; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the target.
    #[error("cannot reach the director at {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The director answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The director answered something that is not the expected type.
    #[error("unexpected answer from the director for {what}: {detail}")]
    Unexpected {
        /// The call (`GET /tasks/12`) or the task result being read.
        what: String,
        /// What did not fit.
        detail: String,
    },
    /// A local file could not be used.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client cannot be set up (a CA certificate that is not PEM).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The API error's code, when the director answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(error) => Some(error.code),
            _ => None,
        }
    }
}

/// What to upload: a release or a stemcell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadKind {
    /// `POST /releases`.
    Release,
    /// `POST /stemcells`.
    Stemcell,
}

impl UploadKind {
    fn path(self) -> &'static str {
        match self {
            UploadKind::Release => "/releases",
            UploadKind::Stemcell => "/stemcells",
        }
    }
}

/// Called with the number of bytes sent so far while a file uploads.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A chunk of a task's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputChunk {
    /// The text from the offset asked for.
    pub text: String,
    /// The offset to ask for next.
    pub next_offset: u64,
    /// The task's state when the chunk was read.
    pub state: Option<TaskState>,
}

/// A client of one director.
#[derive(Clone, Debug)]
pub struct Client {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
    reads_local_files: bool,
}

impl Client {
    /// A client for `url` with `token`; `ca_cert` is a PEM certificate, or a path to one, that
    /// the director's TLS certificate must chain to.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_cert: Option<&str>,
    ) -> Result<Client, ClientError> {
        Ok(Client {
            url: url.trim_end_matches('/').to_string(),
            token,
            http: http_client(ca_cert)?,
            reads_local_files: false,
        })
    }

    /// Marks the director as a dev director on this host, running as this user: uploads
    /// then name local files instead of sending them.
    pub fn reading_local_files(mut self) -> Client {
        self.reads_local_files = true;
        self
    }

    /// Whether uploads name local files (see [`Client::reading_local_files`]).
    pub fn reads_local_files(&self) -> bool {
        self.reads_local_files
    }

    /// The director's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = builder.send().await.map_err(|e| ClientError::Unreachable {
            url: self.url.clone(),
            detail: error_chain(&e.without_url()),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Err(ClientError::Api(
            serde_json::from_str::<ApiError>(&body).unwrap_or_else(|_| {
                ApiError::new(
                    ErrorCode::from_status(status.as_u16()),
                    format!("HTTP {status}: {}", body.trim()),
                )
            }),
        ))
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        builder: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(builder).await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.url.clone(),
                detail: error_chain(&e.without_url()),
            })?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Unexpected {
            what: what.to_string(),
            detail: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.decode(
            &format!("GET {path}"),
            self.request(reqwest::Method::GET, path),
        )
        .await
    }

    async fn get_with<T: DeserializeOwned, Q: Serialize>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        self.decode(
            &format!("GET {path}"),
            self.request(reqwest::Method::GET, path).query(query),
        )
        .await
    }

    async fn submit(
        &self,
        what: &str,
        builder: reqwest::RequestBuilder,
    ) -> Result<Task, ClientError> {
        self.decode::<TaskAccepted>(what, builder)
            .await
            .map(|accepted| accepted.task)
    }

    /// `GET /info` within `timeout`.
    pub async fn info_within(&self, timeout: Duration) -> Result<Info, ClientError> {
        self.decode(
            "GET /info",
            self.request(reqwest::Method::GET, "/info").timeout(timeout),
        )
        .await
    }

    /// `GET /info`.
    pub async fn info(&self) -> Result<Info, ClientError> {
        self.info_within(Duration::from_secs(10)).await
    }

    /// `POST /challenge` within `timeout`, always without the token (this is how a client
    /// checks that a listener holds the token before sending it).
    pub async fn challenge(
        &self,
        request: &ChallengeRequest,
        timeout: Duration,
    ) -> Result<ChallengeProof, ClientError> {
        self.decode(
            "POST /challenge",
            self.http
                .post(format!("{}/challenge", self.url))
                .json(request)
                .timeout(timeout),
        )
        .await
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/openapi.json").await
    }

    /// `GET /tasks`.
    pub async fn tasks(&self, query: &TasksQuery) -> Result<Vec<Task>, ClientError> {
        self.get_with("/tasks", query).await
    }

    /// `GET /tasks/{id}`.
    pub async fn task(&self, id: i64) -> Result<Task, ClientError> {
        self.get(&format!("/tasks/{id}")).await
    }

    /// `DELETE /tasks/{id}`: asks the task to stop.
    pub async fn cancel_task(&self, id: i64) -> Result<Message, ClientError> {
        let path = format!("/tasks/{id}");
        self.decode(
            &format!("DELETE {path}"),
            self.request(reqwest::Method::DELETE, &path),
        )
        .await
    }

    /// `GET /tasks/{id}/output`: one chunk of output `kind` from `offset`.
    pub async fn task_output(
        &self,
        id: i64,
        kind: OutputKind,
        offset: u64,
    ) -> Result<OutputChunk, ClientError> {
        let query = OutputQuery {
            kind: Some(kind.as_str().to_string()),
            offset: Some(offset),
        };
        let response = self
            .send(
                self.request(reqwest::Method::GET, &format!("/tasks/{id}/output"))
                    .query(&query),
            )
            .await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let next_offset = header(NEXT_OFFSET_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let state = header(TASK_STATE_HEADER)
            .and_then(|v| serde_json::from_value(serde_json::Value::String(v)).ok());
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.url.clone(),
                detail: error_chain(&e.without_url()),
            })?;
        Ok(OutputChunk {
            text,
            next_offset,
            state,
        })
    }

    /// Follows task `id` until it ends, handing each new chunk of output `kind` to `sink`;
    /// answers the ended task.
    pub async fn follow(
        &self,
        id: i64,
        kind: OutputKind,
        sink: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Task, ClientError> {
        let mut offset = 0;
        loop {
            let chunk = self.task_output(id, kind, offset).await?;
            if !chunk.text.is_empty() {
                sink(&chunk.text);
            }
            offset = chunk.next_offset;
            if !chunk.state.is_some_and(TaskState::is_running) {
                let rest = self.task_output(id, kind, offset).await?;
                if !rest.text.is_empty() {
                    sink(&rest.text);
                }
                return self.task(id).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `GET /releases`.
    pub async fn releases(&self) -> Result<Vec<Release>, ClientError> {
        self.get("/releases").await
    }

    /// `GET /stemcells`.
    pub async fn stemcells(&self) -> Result<Vec<Stemcell>, ClientError> {
        self.get("/stemcells").await
    }

    /// `POST /releases` or `POST /stemcells` with `file`: a director reading local files
    /// gets its path; any other gets it streamed (`progress` hears how far it got).
    pub async fn upload(
        &self,
        kind: UploadKind,
        file: &Path,
        sha256: Option<&str>,
        fix: bool,
        progress: Option<Progress>,
    ) -> Result<Task, ClientError> {
        if self.reads_local_files {
            let absolute = std::fs::canonicalize(file).map_err(|source| ClientError::Io {
                context: format!("reading {}", file.display()),
                source,
            })?;
            let location = format!("file://{}", absolute.display());
            return self.upload_remote(kind, &location, sha256, fix).await;
        }
        let size = std::fs::metadata(file)
            .map_err(|source| ClientError::Io {
                context: format!("reading {}", file.display()),
                source,
            })?
            .len();
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::Io {
                context: format!("opening {}", file.display()),
                source,
            })?;
        let mut sent = 0u64;
        let stream = file_chunks(handle).inspect(move |chunk| {
            if let (Some(progress), Ok(chunk)) = (&progress, chunk) {
                sent += chunk.len() as u64;
                progress(sent);
            }
        });
        let query = UploadQuery {
            sha256: sha256.map(str::to_string),
            fix,
        };
        let path = kind.path();
        self.submit(
            &format!("POST {path}"),
            self.request(reqwest::Method::POST, path)
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                .header(reqwest::header::CONTENT_LENGTH, size)
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await
    }

    /// `POST /releases` or `POST /stemcells` naming `location` for the director to fetch.
    pub async fn upload_remote(
        &self,
        kind: UploadKind,
        location: &str,
        sha256: Option<&str>,
        fix: bool,
    ) -> Result<Task, ClientError> {
        let path = kind.path();
        let query = UploadQuery { sha256: None, fix };
        self.submit(
            &format!("POST {path}"),
            self.request(reqwest::Method::POST, path)
                .query(&query)
                .json(&RemoteUpload {
                    location: location.to_string(),
                    sha256: sha256.map(str::to_string),
                }),
        )
        .await
    }

    /// `DELETE /releases/{name}[?version=…]`.
    pub async fn delete_release(
        &self,
        name: &str,
        version: Option<&str>,
        force: bool,
    ) -> Result<Task, ClientError> {
        let path = format!("/releases/{}", encode(name));
        let query = DeleteQuery {
            version: version.map(str::to_string),
            force,
        };
        self.submit(
            &format!("DELETE {path}"),
            self.request(reqwest::Method::DELETE, &path).query(&query),
        )
        .await
    }

    /// `DELETE /stemcells/{name}/{version}`.
    pub async fn delete_stemcell(
        &self,
        name: &str,
        version: &str,
        force: bool,
    ) -> Result<Task, ClientError> {
        let path = format!("/stemcells/{}/{}", encode(name), encode(version));
        let query = DeleteQuery {
            version: None,
            force,
        };
        self.submit(
            &format!("DELETE {path}"),
            self.request(reqwest::Method::DELETE, &path).query(&query),
        )
        .await
    }

    /// `POST /cleanup`.
    pub async fn cleanup(&self, request: &CleanupRequest) -> Result<Task, ClientError> {
        self.submit(
            "POST /cleanup",
            self.request(reqwest::Method::POST, "/cleanup")
                .json(request),
        )
        .await
    }

    /// `POST /shutdown` (dev directors only).
    pub async fn shutdown(&self) -> Result<Message, ClientError> {
        self.decode(
            "POST /shutdown",
            self.request(reqwest::Method::POST, "/shutdown"),
        )
        .await
    }

    /// `GET /configs/{kind}`; `None` when none is set.
    pub async fn config(&self, kind: ConfigKind) -> Result<Option<Config>, ClientError> {
        match self.required_config(kind).await {
            Ok(config) => Ok(Some(config)),
            Err(ClientError::Api(error)) if error.code == ErrorCode::NotFound => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// `GET /configs/{kind}`; none set is the director's 404 (it says how to set one).
    pub async fn required_config(&self, kind: ConfigKind) -> Result<Config, ClientError> {
        self.get(&format!("/configs/{kind}")).await
    }

    /// `PUT /configs/{kind}` with the YAML `text`.
    pub async fn update_config(
        &self,
        kind: ConfigKind,
        text: &str,
    ) -> Result<ConfigUpdated, ClientError> {
        let path = format!("/configs/{kind}");
        self.decode(
            &format!("PUT {path}"),
            self.request(reqwest::Method::PUT, &path)
                .header(reqwest::header::CONTENT_TYPE, "text/yaml")
                .body(text.to_string()),
        )
        .await
    }

    /// `GET /deployments`.
    pub async fn deployments(&self) -> Result<Vec<Deployment>, ClientError> {
        self.get("/deployments").await
    }

    /// `GET /deployments/{name}`: its manifest.
    pub async fn deployment(&self, name: &str) -> Result<DeploymentManifest, ClientError> {
        self.get(&format!("/deployments/{}", encode(name))).await
    }

    /// `POST /deployments/plan`: what deploying `manifest` would do.
    pub async fn plan(
        &self,
        manifest: &str,
        query: &DeployQuery,
    ) -> Result<PlanAnswer, ClientError> {
        self.decode(
            "POST /deployments/plan",
            self.request(reqwest::Method::POST, "/deployments/plan")
                .query(query)
                .header(reqwest::header::CONTENT_TYPE, "text/yaml")
                .body(manifest.to_string()),
        )
        .await
    }

    /// `POST /deployments`: deploys `manifest`.
    pub async fn deploy(&self, manifest: &str, query: &DeployQuery) -> Result<Task, ClientError> {
        self.submit(
            "POST /deployments",
            self.request(reqwest::Method::POST, "/deployments")
                .query(query)
                .header(reqwest::header::CONTENT_TYPE, "text/yaml")
                .body(manifest.to_string()),
        )
        .await
    }

    /// `DELETE /deployments/{name}`.
    pub async fn delete_deployment(&self, name: &str, force: bool) -> Result<Task, ClientError> {
        let path = format!("/deployments/{}", encode(name));
        self.submit(
            &format!("DELETE {path}"),
            self.request(reqwest::Method::DELETE, &path)
                .query(&DeleteDeploymentQuery { force }),
        )
        .await
    }

    /// `GET /deployments/{name}/instances` (`live`: with what each agent says now).
    pub async fn instances(&self, name: &str, live: bool) -> Result<Vec<Instance>, ClientError> {
        self.get_with(
            &format!("/deployments/{}/instances", encode(name)),
            &InstancesQuery { live },
        )
        .await
    }

    /// `GET /deployments/{name}/vm_records`: the deployment's VMs no instance owns.
    pub async fn recorded_vms(&self, name: &str) -> Result<Vec<RecordedVm>, ClientError> {
        self.get(&format!("/deployments/{}/vm_records", encode(name)))
            .await
    }

    /// `POST /deployments/{name}/state`.
    pub async fn change_state(
        &self,
        name: &str,
        request: &StateChangeRequest,
    ) -> Result<Task, ClientError> {
        let path = format!("/deployments/{}/state", encode(name));
        self.submit(
            &format!("POST {path}"),
            self.request(reqwest::Method::POST, &path).json(request),
        )
        .await
    }

    /// `POST /deployments/{name}/logs`.
    pub async fn fetch_logs(&self, name: &str, request: &LogsRequest) -> Result<Task, ClientError> {
        let path = format!("/deployments/{}/logs", encode(name));
        self.submit(
            &format!("POST {path}"),
            self.request(reqwest::Method::POST, &path).json(request),
        )
        .await
    }

    /// `POST /deployments/{name}/errands/{errand}/runs`.
    pub async fn run_errand(&self, name: &str, errand: &str) -> Result<Task, ClientError> {
        let path = format!(
            "/deployments/{}/errands/{}/runs",
            encode(name),
            encode(errand)
        );
        self.submit(
            &format!("POST {path}"),
            self.request(reqwest::Method::POST, &path),
        )
        .await
    }

    /// `POST /deployments/{name}/scans`: a task whose result lists the problems found.
    pub async fn scan(&self, name: &str) -> Result<Task, ClientError> {
        let path = format!("/deployments/{}/scans", encode(name));
        self.submit(
            &format!("POST {path}"),
            self.request(reqwest::Method::POST, &path),
        )
        .await
    }

    /// `PUT /deployments/{name}/problems`: a task applying `request`'s resolutions.
    pub async fn resolve_problems(
        &self,
        name: &str,
        request: &ResolveRequest,
    ) -> Result<Task, ClientError> {
        let path = format!("/deployments/{}/problems", encode(name));
        self.submit(
            &format!("PUT {path}"),
            self.request(reqwest::Method::PUT, &path).json(request),
        )
        .await
    }

    /// `GET /events`.
    pub async fn events(&self, query: &EventsQuery) -> Result<Vec<Event>, ClientError> {
        self.get_with("/events", query).await
    }

    /// `PUT /resurrection`.
    pub async fn update_resurrection(&self, paused: bool) -> Result<Message, ClientError> {
        self.decode(
            "PUT /resurrection",
            self.request(reqwest::Method::PUT, "/resurrection")
                .json(&ResurrectionRequest {
                    resurrection_paused: paused,
                }),
        )
        .await
    }

    /// `GET /disks?orphaned=true`.
    pub async fn orphaned_disks(&self) -> Result<Vec<OrphanedDisk>, ClientError> {
        self.get_with("/disks", &[("orphaned", "true")]).await
    }

    /// `DELETE /disks/{cid}`.
    pub async fn delete_disk(&self, cid: &str) -> Result<Task, ClientError> {
        let path = format!("/disks/{}", encode(cid));
        self.submit(
            &format!("DELETE {path}"),
            self.request(reqwest::Method::DELETE, &path),
        )
        .await
    }

    /// `POST /releases/export`.
    pub async fn export_release(&self, request: &ExportRequest) -> Result<Task, ClientError> {
        self.submit(
            "POST /releases/export",
            self.request(reqwest::Method::POST, "/releases/export")
                .json(request),
        )
        .await
    }

    /// `GET /blobs/{id}/link`: a signed path to download blob `id` from.
    pub async fn blob_link(&self, id: &str) -> Result<BlobLink, ClientError> {
        self.get(&format!("/blobs/{}/link", encode(id))).await
    }

    /// `GET` a signed path (from a [`BlobLink`]) without the token; the caller streams the
    /// body.
    pub async fn download(&self, signed_path: &str) -> Result<reqwest::Response, ClientError> {
        self.send(self.http.get(format!("{}{signed_path}", self.url)))
            .await
    }
}

/// Decodes the JSON result text of an ended task into `T`.
pub fn task_result<T: DeserializeOwned>(task: &Task) -> Result<T, ClientError> {
    let text = task.result.as_deref().unwrap_or_default();
    serde_json::from_str(text).map_err(|e| ClientError::Unexpected {
        what: format!("the result of task {}", task.id),
        detail: format!("{e}: {text}"),
    })
}

/// A path segment, percent-encoded.
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn http_client(ca_cert: Option<&str>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(ca) = ca_cert {
        let pem = if ca.contains("-----BEGIN") {
            ca.as_bytes().to_vec()
        } else {
            std::fs::read(ca).map_err(|source| ClientError::Io {
                context: format!("reading the CA certificate {ca}"),
                source,
            })?
        };
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            ClientError::Config(format!("the director CA certificate is not PEM: {e}"))
        })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// A file as a stream of 1 MiB chunks.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; 1 << 20];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(bytes::Bytes::from(buffer)), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
