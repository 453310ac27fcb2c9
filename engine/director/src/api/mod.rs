//! The director's HTTP/JSON API (`director serve`): the only module that knows routes.
//!
//! Every request but `GET /info` needs `Authorization: Bearer <token>`; `GET /blobs/<id>`
//! instead needs a signed, expiring URL (agents fetch blobs with those). Mutating calls
//! answer at once with a queued task (`202 {"task": {...}}`) and the work runs in the
//! background; clients follow it with `GET /tasks/<id>/output?type=event&offset=N`.

mod deployments;
mod exports;
mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State as AxumState};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::blobstore::Blobstore;
use crate::config::{ClientConfig, DirectorConfig};
use crate::tasks::TaskRunner;
use crate::uploads::{UploadContext, remove_unreferenced_blobs};
use director_core::archive::Limits as ArchiveLimits;
use director_state::State;
use secrets::write_private;

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

/// What `/info` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Info {
    /// The director's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `token`.
    pub user_authentication: String,
    /// `sqlite` or `postgres`.
    pub state: String,
    /// Where blobs are.
    pub blobstore: String,
    /// The message bus (arrives with deploy).
    pub bus: String,
    /// The CPI (arrives with deploy).
    pub cpi: String,
    /// Whether this is a dev director (`stop-server` may stop it).
    pub dev: bool,
}

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
    pub info: Info,
    pub token: Arc<String>,
    pub state: Arc<State>,
    pub blobstore: Blobstore,
    pub runner: TaskRunner,
    pub uploads_dir: PathBuf,
    pub upload: UploadContext,
    pub max_upload_bytes: u64,
    pub shutdown: CancellationToken,
    pub services: Arc<crate::ops::Services>,
    pub staging_dir: PathBuf,
}

fn random_hex(bytes: usize) -> Result<String, ServeError> {
    let mut buffer = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut buffer)
        .map_err(|e| ServeError::Config(format!("no randomness: {e}")))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a secret file, or creates it (mode 0600) with `bytes` random bytes as hex.
fn secret(path: &Path, bytes: usize) -> Result<String, ServeError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) | Err(_) => {
            let value = random_hex(bytes)?;
            write_private(path, format!("{value}\n").as_bytes())
                .map_err(io(format!("writing {}", path.display())))?;
            Ok(value)
        }
    }
}

/// Runs the director until SIGINT/SIGTERM or, for a dev director, `POST /shutdown`.
pub async fn serve(config: DirectorConfig, dev: bool) -> Result<(), ServeError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let token = secret(&config.token_path(), 32)?;
    let signing_key = secret(&data_dir.join("blob-signing-key"), 32)?;

    let state = Arc::new(State::open(&config.db_url()).await?);
    let failed = state
        .tasks()
        .fail_running_tasks("director restarted")
        .await?;
    if !failed.is_empty() {
        eprintln!(
            "marked {} task(s) of the previous run as failed: director restarted",
            failed.len()
        );
    }
    let blobstore = Blobstore::open(&config.blobstore(), signing_key.into_bytes())?;
    blobstore.clean_staging().await?;
    let uploads_dir = data_dir.join("uploads");
    let staging_dir = data_dir.join("staging");
    for dir in [&uploads_dir, &staging_dir] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    // Blobs stored by an upload that never got recorded (killed mid-way) go now: no task is
    // running, so an unreferenced blob is garbage.
    match remove_unreferenced_blobs(&state, &blobstore, 0).await {
        Ok(removed) if !removed.is_empty() => eprintln!(
            "removed {} blob(s) left by interrupted uploads",
            removed.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("could not remove blobs left by interrupted uploads: {e}"),
    }

    let listener = match tokio::net::TcpListener::bind(&config.listen).await {
        Ok(listener) => listener,
        Err(e) if dev && e.kind() == std::io::ErrorKind::AddrInUse => {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(io("binding a free port on 127.0.0.1"))?
        }
        Err(e) => return Err(io(format!("listening on {}", config.listen))(e)),
    };
    let address: SocketAddr = listener
        .local_addr()
        .map_err(io("reading the listening address"))?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{address}");

    let director_id = secret(&data_dir.join("director-id"), 16)?;
    let bus = match &config.mbus {
        Some(mbus) => director_bus::DirectorBus::start(Some(mbus), &director_id).await,
        None => director_bus::DirectorBus::start_embedded(&data_dir, &director_id).await,
    }
    .map_err(|e| ServeError::Config(e.to_string()))?;
    let (cpi, cpi_description): (Arc<dyn cpi::Cpi>, String) = match &config.cpi {
        None | Some(crate::config::CpiSettings::Local { root: None }) => {
            let root = data_dir.join("cpi");
            (
                Arc::new(cpi::LocalCpi::new(root.clone())),
                format!("local ({})", root.display()),
            )
        }
        Some(crate::config::CpiSettings::Local { root: Some(root) }) => (
            Arc::new(cpi::LocalCpi::new(root.clone())),
            format!("local ({})", root.display()),
        ),
        Some(crate::config::CpiSettings::External {
            command,
            args,
            context,
        }) => {
            let context = context.as_object().cloned().unwrap_or_default();
            (
                Arc::new(
                    cpi::ExternalCpi::new(command.clone(), director_id.clone())
                        .with_arguments(args.clone())
                        .with_context(context),
                ),
                format!("external ({})", command.display()),
            )
        }
    };
    let services = Arc::new(crate::ops::Services {
        state: state.clone(),
        blobstore: blobstore.clone(),
        cpi,
        bus: bus.bus.clone(),
        accounts: bus.accounts.clone(),
        director_url: url.clone(),
        ca_cert: config
            .tls
            .as_ref()
            .and_then(|tls| std::fs::read_to_string(&tls.certificate).ok()),
        templates: crate::ops::TemplateCache::default(),
        timeouts: crate::ops::Timeouts {
            agent_wait: std::time::Duration::from_secs(config.agent.wait_timeout),
            heartbeat_interval: config.agent.heartbeat_interval,
            ..crate::ops::Timeouts::default()
        },
    });
    if dev
        && state
            .instances()
            .config(
                director_api::ConfigKind::Cloud,
                crate::ops::prepare::DEFAULT_CONFIG,
            )
            .await?
            .is_none()
    {
        // The embedded default needs no setup: a dev director starts with the local CPI's
        // cloud config (manifests/cloud-config-local.yml), replaceable as any other.
        state
            .instances()
            .set_config(
                director_api::ConfigKind::Cloud,
                crate::ops::prepare::DEFAULT_CONFIG,
                DEV_CLOUD_CONFIG,
            )
            .await?;
        eprintln!("set the cloud config to the local CPI's default (see `director cloud-config`)");
    }
    let runner = TaskRunner::new(state.clone(), data_dir.join("tasks"), WORKERS);
    let limits = ArchiveLimits {
        max_ratio: config.limits.max_expansion_ratio,
        ..ArchiveLimits::default()
    };
    let info = Info {
        name: config.name.clone(),
        version: VERSION.to_string(),
        user_authentication: "token".to_string(),
        state: state.backend().as_str().to_string(),
        blobstore: blobstore.location().to_string(),
        bus: match &config.mbus {
            Some(mbus) => format!("nats-server at {}", secrets::redact_urls(&mbus.url)),
            None => format!("embedded at {}", bus.bus.url()),
        },
        cpi: cpi_description,
        dev,
    };
    let shutdown = CancellationToken::new();
    let director = Director {
        info,
        token: Arc::new(token.clone()),
        state: state.clone(),
        blobstore: blobstore.clone(),
        runner: runner.clone(),
        uploads_dir,
        upload: UploadContext {
            state: state.clone(),
            blobstore,
            staging_dir: staging_dir.clone(),
            limits,
        },
        max_upload_bytes: config.limits.max_upload_bytes,
        shutdown: shutdown.clone(),
        services,
        staging_dir,
    };
    let app = router(director);

    if dev {
        let record = DevRecord {
            url: url.clone(),
            token: token.clone(),
            pid: std::process::id(),
        };
        let text = serde_yaml::to_string(&record).map_err(|e| ServeError::Config(e.to_string()))?;
        write_private(&DevRecord::path(&data_dir), text.as_bytes()).map_err(io(format!(
            "writing {}",
            DevRecord::path(&data_dir).display()
        )))?;
        let client = ClientConfig {
            url: Some(url.clone()),
            token: Some(token.clone()),
            ca_cert: None,
            dev: true,
        };
        client.save().map_err(ServeError::Config)?;
    }
    eprintln!(
        "director {VERSION} listening on {url} (state: {}, blobstore: {})",
        state.backend().as_str(),
        director_location(&config)
    );

    let stop = shutdown.clone();
    let signals = async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
            () = stop.cancelled() => {}
        }
    };
    let served = if let Some(tls) = &config.tls {
        serve_tls(listener, app, tls, signals).await
    } else {
        axum::serve(listener, app.into_make_service())
            .with_graceful_shutdown(signals)
            .await
            .map_err(io("serving HTTP"))
    };
    runner.shutdown().await;
    bus.shutdown().await;
    if dev {
        let _ = std::fs::remove_file(DevRecord::path(&data_dir));
    }
    state.close().await;
    served
}

fn director_location(config: &DirectorConfig) -> String {
    match config.blobstore() {
        crate::blobstore::BlobstoreConfig::Local { path } => path.display().to_string(),
        crate::blobstore::BlobstoreConfig::S3 { bucket, .. } => format!("s3://{bucket}"),
    }
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: &crate::config::TlsConfig,
    signals: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .map_err(|e| ServeError::Config(format!("TLS: {e}")))?;
    acceptor
        .set_certificate_chain_file(&tls.certificate)
        .map_err(|e| {
            ServeError::Config(format!(
                "TLS certificate {}: {e}",
                tls.certificate.display()
            ))
        })?;
    acceptor
        .set_private_key_file(&tls.private_key, SslFiletype::PEM)
        .map_err(|e| {
            ServeError::Config(format!(
                "TLS private key {}: {e}",
                tls.private_key.display()
            ))
        })?;
    acceptor.check_private_key().map_err(|e| {
        ServeError::Config(format!("TLS: the key does not match the certificate: {e}"))
    })?;
    let acceptor = Arc::new(acceptor.build());
    let listener = TlsListener {
        inner: listener,
        acceptor,
    };
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(signals)
        .await
        .map_err(io("serving HTTPS"))
}

/// A listener that completes a TLS handshake (OpenSSL) on each accepted connection.
struct TlsListener {
    inner: tokio::net::TcpListener,
    acceptor: Arc<openssl::ssl::SslAcceptor>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_openssl::SslStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.inner.accept().await else {
                continue;
            };
            let Ok(ssl) = openssl::ssl::Ssl::new(self.acceptor.context()) else {
                continue;
            };
            let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, stream) else {
                continue;
            };
            if std::pin::Pin::new(&mut tls).accept().await.is_ok() {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn router(director: Director) -> Router {
    let protected = routes::protected().route_layer(middleware::from_fn_with_state(
        director.clone(),
        authenticate,
    ));
    routes::public().merge(protected).with_state(director)
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
        routes::error(StatusCode::UNAUTHORIZED, "missing or wrong token: log in with the token of this director (DIRECTOR_TOKEN or the CLI config)")
            .into_response()
    }
}
