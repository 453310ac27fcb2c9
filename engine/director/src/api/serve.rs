//! `director serve`: start-up as a list of named steps (secrets, state, blobstore, listener,
//! bus, CPI, the dev director's defaults and records), then serving until a signal or, for a
//! dev director, `POST /shutdown`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use director_api::ConfigKind;
use tokio_util::sync::CancellationToken;

use super::{
    DEV_CLOUD_CONFIG, DevRecord, Director, Info, ServeError, VERSION, WORKERS, io, router,
};
use crate::blobstore::Blobstore;
use crate::config::{ClientConfig, DirectorConfig};
use crate::tasks::TaskRunner;
use crate::uploads::{UploadContext, remove_unreferenced_blobs};
use director_core::archive::Limits as ArchiveLimits;
use director_state::State;
use secrets::write_private;

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
    keep_private(&data_dir)?;
    let token = secret(&config.token_path(), 32)?;
    let director_id = secret(&data_dir.join("director-id"), 16)?;
    let state = open_state(&config, &director_id).await?;
    let blobstore = open_blobstore(&config, &state).await?;
    let uploads_dir = fresh_directory(&data_dir.join("uploads"))?;
    let staging_dir = fresh_directory(&data_dir.join("staging"))?;
    let (listener, url) = listen(&config, dev).await?;
    let bus = match (&config.mbus, &config.bus_limits) {
        (Some(mbus), None) => director_bus::DirectorBus::start(Some(mbus), &director_id).await,
        (Some(_), Some(_)) => Err(ServeError::Config(
            "bus_limits sets the embedded broker's limits, and with mbus there is none: set nats-server's own (max_connections, max_subscriptions, max_pending) in nats-server.conf".to_string(),
        ))?,
        (None, limits) => {
            let limits = limits.clone().unwrap_or_default();
            director_bus::DirectorBus::start_embedded(&data_dir, &director_id, limits).await
        }
    }?;
    let (cpi, cpi_description) = cloud(&config, &director_id);
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
    // VMs a director that stopped was making, before any task runs (ops::vms::reconcile).
    for outcome in crate::ops::vms::reconcile(&services).await? {
        eprintln!("{outcome}");
    }
    if dev {
        set_default_cloud_config(&state).await?;
    }
    let runner = TaskRunner::new(state.clone(), &director_id, data_dir.join("tasks"), WORKERS);
    let beating = tokio::spawn(heartbeat(state.clone(), director_id.clone()));
    let info = Info {
        name: config.name.clone(),
        version: VERSION.to_string(),
        user_authentication: "token".to_string(),
        state: state.backend().as_str().to_string(),
        // No paths: /info answers without a token.
        blobstore: match config.blobstore() {
            crate::blobstore::BlobstoreConfig::Local { .. } => "local".to_string(),
            crate::blobstore::BlobstoreConfig::S3 { bucket, .. } => format!("s3://{bucket}"),
        },
        bus: match &config.mbus {
            Some(mbus) => format!("nats-server at {}", secrets::redact_urls(&mbus.url)),
            None => format!("embedded at {}", bus.bus.url()),
        },
        cpi: cpi_description,
        dev,
    };
    let shutdown = CancellationToken::new();
    let app = router(Director {
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
            limits: ArchiveLimits {
                max_ratio: config.limits.max_expansion_ratio,
                ..ArchiveLimits::default()
            },
        },
        max_upload_bytes: config.limits.max_upload_bytes,
        shutdown: shutdown.clone(),
        services,
        staging_dir,
    });
    if dev {
        record_dev_director(&data_dir, &url, &token)?;
    }
    eprintln!(
        "director {VERSION} listening on {url} (state: {}, blobstore: {})",
        state.backend().as_str(),
        director_location(&config)
    );
    let served = match &config.tls {
        Some(tls) => serve_tls(listener, app, tls, stopped(shutdown)).await,
        None => axum::serve(listener, app.into_make_service())
            .with_graceful_shutdown(stopped(shutdown))
            .await
            .map_err(io("serving HTTP")),
    };
    runner.shutdown().await;
    beating.abort();
    bus.shutdown().await;
    if dev {
        let _ = std::fs::remove_file(DevRecord::path(&data_dir));
    }
    state.close().await;
    served
}

/// Everything the director writes is its own: a umask of 077 for the process (the state
/// database, blobs, task logs, the CPI's VMs), and the data directory itself 0700 even when
/// an older director created it more open. (Agents set their own umask for their jobs.)
fn keep_private(data_dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("making {} private", data_dir.display())))
}

/// How often a director says it is alive in the state, and how long a silent one's
/// tasks are left running before another director fails them.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
const SILENT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the state database and fails the tasks that no running director runs: those this
/// director's previous run left, and those of directors that stopped beating. Tasks of
/// other directors sharing the database keep running.
async fn open_state(config: &DirectorConfig, director_id: &str) -> Result<Arc<State>, ServeError> {
    let state = Arc::new(State::open(&config.db_url()).await?);
    let failed = state
        .directors()
        .start(director_id, "director restarted", SILENT_FOR)
        .await?;
    if !failed.is_empty() {
        eprintln!(
            "marked {} task(s) of the previous run as failed: director restarted",
            failed.len()
        );
    }
    Ok(state)
}

/// Beats every [`HEARTBEAT`] and fails the tasks of directors silent for [`SILENT_FOR`].
async fn heartbeat(state: Arc<State>, director_id: String) {
    let directors = state.directors();
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(e) = directors.beat(&director_id).await {
            eprintln!("cannot record this director's heartbeat: {e}");
            continue;
        }
        match directors
            .fail_orphaned_tasks("the director running the task stopped", SILENT_FOR)
            .await
        {
            Ok(failed) if !failed.is_empty() => {
                let ids: Vec<String> = failed.iter().map(ToString::to_string).collect();
                eprintln!(
                    "failed task(s) {} of a director that stopped",
                    ids.join(", ")
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("cannot fail the tasks of stopped directors: {e}"),
        }
    }
}

/// Opens the blobstore and removes what interrupted uploads left: staged files, and blobs
/// stored but never recorded (no task runs yet, so an unreferenced blob is garbage).
async fn open_blobstore(config: &DirectorConfig, state: &State) -> Result<Blobstore, ServeError> {
    let signing_key = secret(&config.data_dir.join("blob-signing-key"), 32)?;
    let blobstore = Blobstore::open(&config.blobstore(), signing_key.into_bytes())?;
    blobstore.clean_staging().await?;
    match remove_unreferenced_blobs(state, &blobstore, 0).await {
        Ok(removed) if !removed.is_empty() => eprintln!(
            "removed {} blob(s) left by interrupted uploads",
            removed.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("could not remove blobs left by interrupted uploads: {e}"),
    }
    Ok(blobstore)
}

/// `directory`, emptied (what a previous run left there is garbage).
fn fresh_directory(directory: &Path) -> Result<PathBuf, ServeError> {
    let _ = std::fs::remove_dir_all(directory);
    std::fs::create_dir_all(directory).map_err(io(format!("creating {}", directory.display())))?;
    Ok(directory.to_path_buf())
}

/// Binds the configured address (a dev director whose port is taken takes a free one) and
/// answers the listener with the director's URL.
async fn listen(
    config: &DirectorConfig,
    dev: bool,
) -> Result<(tokio::net::TcpListener, String), ServeError> {
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
    Ok((listener, format!("{scheme}://{address}")))
}

/// The configured CPI and how `/info` describes it (its kind, no paths).
fn cloud(config: &DirectorConfig, director_id: &str) -> (Arc<dyn cpi::Cpi>, String) {
    match &config.cpi {
        // Local VMs do not see the data directory (token, state database, blobs).
        None | Some(crate::config::CpiSettings::Local { root: None }) => {
            let root = config.data_dir.join("cpi");
            let local = cpi::LocalCpi::new(root).hiding(config.data_dir.clone());
            (Arc::new(local), "local".to_string())
        }
        Some(crate::config::CpiSettings::Local { root: Some(root) }) => {
            let local = cpi::LocalCpi::new(root.clone()).hiding(config.data_dir.clone());
            (Arc::new(local), "local".to_string())
        }
        Some(crate::config::CpiSettings::External {
            command,
            args,
            context,
        }) => {
            let context = context.as_object().cloned().unwrap_or_default();
            (
                Arc::new(
                    cpi::ExternalCpi::new(command.clone(), director_id.to_string())
                        .with_arguments(args.clone())
                        .with_context(context),
                ),
                "external".to_string(),
            )
        }
    }
}

/// The embedded default needs no setup: a dev director without a cloud config starts with
/// the local CPI's (`manifests/cloud-config-local.yml`), replaceable as any other.
async fn set_default_cloud_config(state: &State) -> Result<(), ServeError> {
    let configs = state.instances();
    if configs
        .config(ConfigKind::Cloud, crate::ops::prepare::DEFAULT_CONFIG)
        .await?
        .is_none()
    {
        configs
            .set_config(
                ConfigKind::Cloud,
                crate::ops::prepare::DEFAULT_CONFIG,
                DEV_CLOUD_CONFIG,
            )
            .await?;
        eprintln!("set the cloud config to the local CPI's default (see `director cloud-config`)");
    }
    Ok(())
}

/// A dev director records its URL, token and pid for the CLI (`dev.yml`) and targets the
/// CLI config at itself.
fn record_dev_director(data_dir: &Path, url: &str, token: &str) -> Result<(), ServeError> {
    let record = DevRecord {
        url: url.to_string(),
        token: token.to_string(),
        pid: std::process::id(),
    };
    let text = serde_yaml::to_string(&record).map_err(|e| ServeError::Config(e.to_string()))?;
    write_private(&DevRecord::path(data_dir), text.as_bytes()).map_err(io(format!(
        "writing {}",
        DevRecord::path(data_dir).display()
    )))?;
    ClientConfig {
        url: Some(url.to_string()),
        token: Some(secrets::Redacted(token.to_string())),
        ca_cert: None,
        dev: true,
    }
    .save()
    .map_err(ServeError::from)
}

/// Ends on SIGINT, SIGTERM or `shutdown` (a dev director's `POST /shutdown`).
async fn stopped(shutdown: CancellationToken) {
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
        () = shutdown.cancelled() => {}
    }
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
    let listener =
        TlsListener::start(listener, acceptor).map_err(io("reading the listening address"))?;
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(signals)
        .await
        .map_err(io("serving HTTPS"))
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest pause after a failed `accept` (out of file descriptors, say).
const MAX_ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// A listener that hands axum connections whose TLS handshake (OpenSSL) completed. Each
/// handshake runs in a task of its own under [`HANDSHAKE_TIMEOUT`], so a client that
/// connects and sends nothing delays nobody; a failing `accept` is retried with a growing
/// pause instead of spinning.
struct TlsListener {
    connections: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    address: SocketAddr,
}

type TlsStream = tokio_openssl::SslStream<tokio::net::TcpStream>;

impl TlsListener {
    fn start(
        listener: tokio::net::TcpListener,
        acceptor: Arc<openssl::ssl::SslAcceptor>,
    ) -> std::io::Result<TlsListener> {
        let address = listener.local_addr()?;
        let (sender, connections) = tokio::sync::mpsc::channel(64);
        tokio::spawn(accept_tls(listener, acceptor, sender));
        Ok(TlsListener {
            connections,
            address,
        })
    }
}

/// Accepts connections until the listener is dropped; every handshake is a task in a
/// `JoinSet` that ends with this loop.
async fn accept_tls(
    listener: tokio::net::TcpListener,
    acceptor: Arc<openssl::ssl::SslAcceptor>,
    sender: tokio::sync::mpsc::Sender<(TlsStream, SocketAddr)>,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    let mut backoff = std::time::Duration::from_millis(10);
    loop {
        tokio::select! {
            () = sender.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, address)) => {
                    backoff = std::time::Duration::from_millis(10);
                    let acceptor = acceptor.clone();
                    let sender = sender.clone();
                    handshakes.spawn(async move {
                        let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else {
                            return;
                        };
                        let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, stream) else {
                            return;
                        };
                        let handshake = std::pin::Pin::new(&mut tls).accept();
                        if let Ok(Ok(())) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                            let _ = sender.send((tls, address)).await;
                        }
                    });
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            },
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended: nothing will come any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.address)
    }
}
