//! `director serve`: start-up as a list of named steps (secrets, state, blobstore, listener,
//! bus, CPI, the dev director's defaults and records), then serving until a signal or, for a
//! dev director, `POST /shutdown`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use director_api::ConfigKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{
    DEV_CLOUD_CONFIG, DevRecord, Director, Info, ServeError, VERSION, WORKERS, agent_router, io,
    router,
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
    let acceptor = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let http_limits = HttpLimits::new(&config.limits);
    let fetch = fetch_client(&config.limits)?;
    let (listener, address, url) = listen(&config, dev).await?;
    let (cpi, cpi_description, cpi_agent_address) = cloud(&config, &director_id).await?;
    let agent_address = config
        .agent
        .address
        .or(cpi_agent_address)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let bus = match (&config.mbus, &config.bus_limits) {
        (Some(mbus), None) => director_bus::DirectorBus::start(Some(mbus), &director_id).await,
        (Some(_), Some(_)) => Err(ServeError::Config(
            "bus_limits sets the embedded broker's limits, and with mbus there is none: set nats-server's own (max_connections, max_subscriptions, max_pending) in nats-server.conf".to_string(),
        ))?,
        (None, limits) => {
            let limits = limits.clone().unwrap_or_default();
            director_bus::DirectorBus::start_embedded(&data_dir, agent_address, &director_id, limits)
                .await
        }
    }?;
    let agents = AgentEndpoint::open(&data_dir, agent_address, address, &url).await?;
    let services = Arc::new(crate::ops::Services {
        state: state.clone(),
        blobstore: blobstore.clone(),
        cpi: cpi.clone(),
        bus: bus.bus.clone(),
        accounts: bus.accounts.clone(),
        agent_url: agents.url.clone(),
        ca_cert: config
            .tls
            .as_ref()
            .and_then(|tls| std::fs::read_to_string(&tls.certificate).ok()),
        templates: crate::ops::TemplateCache::default(),
        timeouts: crate::ops::Timeouts {
            agent_wait: Duration::from_secs(config.agent.wait_timeout),
            heartbeat_interval: config.agent.heartbeat_interval,
            ..crate::ops::Timeouts::default()
        },
        health: crate::health::HealthView::new(config.health_monitor.enabled),
        dns: crate::dns::DnsChanges::default(),
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
        agents: format!(
            "bus at {}, blobs at {}",
            match &config.mbus {
                Some(mbus) => secrets::redact_urls(mbus.agent_url.as_ref().unwrap_or(&mbus.url)),
                None => bus.bus.url().to_string(),
            },
            agents.url
        ),
        cpi: cpi_description,
        dev,
    };
    let shutdown = CancellationToken::new();
    crate::dns::spawn(services.clone(), runner.ended(), shutdown.clone());
    crate::health::spawn(
        services.clone(),
        runner.clone(),
        config.health_monitor,
        shutdown.clone(),
    );
    let director = Director {
        url: url.clone(),
        info,
        token: Arc::new(token.clone()),
        state: state.clone(),
        blobstore: blobstore.clone(),
        runner: runner.clone(),
        uploads_dir,
        upload: UploadContext {
            cpi: cpi.clone(),
            state: state.clone(),
            blobstore,
            staging_dir: staging_dir.clone(),
            limits: ArchiveLimits {
                max_ratio: config.limits.max_expansion_ratio,
                ..ArchiveLimits::default()
            },
        },
        max_upload_bytes: config.limits.max_upload_bytes,
        idle_timeout: http_limits.idle_timeout,
        fetch,
        shutdown: shutdown.clone(),
        services,
        staging_dir,
    };
    let app = router(director.clone());
    if dev {
        record_dev_director(&data_dir, &url, &token)?;
    }
    eprintln!(
        "director {VERSION} listening on {url} (state: {}, blobstore: {})",
        state.backend().as_str(),
        director_location(&config)
    );
    if let Some(own) = agents.listener {
        eprintln!("agents fetch and upload blobs at {}", agents.url);
        let address = agents.address;
        tokio::spawn(serve_listener(
            own,
            address,
            acceptor.clone(),
            agent_router(director),
            http_limits,
            stopped(shutdown.clone()),
        ));
    }
    serve_listener(
        listener,
        address,
        acceptor,
        app,
        http_limits,
        stopped(shutdown),
    )
    .await;
    runner.shutdown().await;
    beating.abort();
    bus.shutdown().await;
    if dev {
        let _ = std::fs::remove_file(DevRecord::path(&data_dir));
    }
    state.close().await;
    Ok(())
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
/// answers the listener with its address and the director's URL.
/// Serves `app` on `listener` (with TLS when there is an acceptor) until `signal`.
async fn serve_listener(
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    acceptor: Option<Arc<openssl::ssl::SslAcceptor>>,
    app: Router,
    http_limits: HttpLimits,
    signal: impl Future<Output = ()>,
) {
    let listener = LimitedListener::new(listener, http_limits);
    match acceptor {
        Some(acceptor) => {
            let listener = TlsListener::start(listener, address, acceptor);
            serve_connections(listener, app, http_limits, signal).await;
        }
        None => serve_connections(listener, app, http_limits, signal).await,
    }
}

/// Where agents fetch and upload blobs (signed URLs): the API's own listener when it
/// listens on the agents' address (or on every address), else a listener of its own on
/// that address serving only the signed blob routes, on the port it had before when that
/// is free (running agents keep the URL they were given).
struct AgentEndpoint {
    /// The URL agents are given.
    url: String,
    /// The endpoint's own listener, when the API's is not reachable at the address.
    listener: Option<tokio::net::TcpListener>,
    /// Where that listener listens.
    address: SocketAddr,
}

impl AgentEndpoint {
    async fn open(
        data_dir: &Path,
        agent_address: IpAddr,
        api: SocketAddr,
        api_url: &str,
    ) -> Result<AgentEndpoint, ServeError> {
        let scheme = api_url
            .split_once("://")
            .map_or("http", |(scheme, _)| scheme);
        if api.ip() == agent_address || api.ip().is_unspecified() {
            let address = SocketAddr::new(agent_address, api.port());
            return Ok(AgentEndpoint {
                url: format!("{scheme}://{address}"),
                listener: None,
                address,
            });
        }
        let port_file = data_dir.join("agents.port");
        let previous = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|port| port.trim().parse::<u16>().ok());
        let listener = match previous {
            Some(port) => {
                match tokio::net::TcpListener::bind(SocketAddr::new(agent_address, port)).await {
                    Ok(listener) => Ok(listener),
                    Err(_) => {
                        tokio::net::TcpListener::bind(SocketAddr::new(agent_address, 0)).await
                    }
                }
            }
            None => tokio::net::TcpListener::bind(SocketAddr::new(agent_address, 0)).await,
        }
        .map_err(|source| ServeError::Io {
            context: format!(
                "listening for agents on {agent_address} (agent: address in director.yml)"
            ),
            source,
        })?;
        let address = listener
            .local_addr()
            .map_err(io("reading the agents' listening address"))?;
        let _ = std::fs::write(&port_file, address.port().to_string());
        Ok(AgentEndpoint {
            url: format!("{scheme}://{address}"),
            listener: Some(listener),
            address,
        })
    }
}

async fn listen(
    config: &DirectorConfig,
    dev: bool,
) -> Result<(tokio::net::TcpListener, SocketAddr, String), ServeError> {
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
    Ok((listener, address, format!("{scheme}://{address}")))
}

/// The configured CPI, how `/info` describes it (its kind, no paths) and where its VMs
/// reach this host when that is not 127.0.0.1 (the Docker CPI's bridge gateway).
async fn cloud(
    config: &DirectorConfig,
    director_id: &str,
) -> Result<(Arc<dyn cpi::Cpi>, String, Option<IpAddr>), ServeError> {
    Ok(match &config.cpi {
        // Local VMs do not see the data directory (token, state database, blobs).
        None | Some(crate::config::CpiSettings::Local { root: None }) => {
            let root = config.data_dir.join("cpi");
            let local = cpi::LocalCpi::new(root).hiding(config.data_dir.clone());
            (Arc::new(local), "local".to_string(), None)
        }
        Some(crate::config::CpiSettings::Local { root: Some(root) }) => {
            let local = cpi::LocalCpi::new(root.clone()).hiding(config.data_dir.clone());
            (Arc::new(local), "local".to_string(), None)
        }
        // The Docker CPI runs its own runtime: made on a blocking thread, not in this task.
        Some(crate::config::CpiSettings::Docker { socket }) => {
            let mut docker = cpi::docker::DockerConfig::local(director_id);
            if let Some(socket) = socket {
                docker.socket = socket.clone();
            }
            let made = tokio::task::spawn_blocking(move || {
                let docker = cpi::docker::DockerCpi::new(docker)?;
                let gateway = docker.agent_address()?;
                Ok::<_, cpi::CpiError>((docker, gateway))
            })
            .await
            .map_err(|error| {
                ServeError::Config(format!("cpi (docker): cannot be started: {error}"))
            })?
            .map_err(|error| ServeError::Config(format!("cpi (docker): {error}")))?;
            let (docker, gateway) = made;
            (
                Arc::new(docker),
                "docker".to_string(),
                Some(IpAddr::V4(gateway)),
            )
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
                None,
            )
        }
    })
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
/// CLI config at itself, unless that names another director.
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
    target_cli(url, token)
}

/// Targets the CLI config at the dev director, unless it names another director (a URL
/// without `dev: true`: the user's production director, with its token and CA) or cannot
/// be read: that stays as it is, and the log says how to reach the dev director instead.
fn target_cli(url: &str, token: &str) -> Result<(), ServeError> {
    const HOW: &str = "left as it is; `director --director dev ...` (or DIRECTOR_URL=dev) talks to this dev director";
    match ClientConfig::load() {
        Ok(saved) => match saved.url {
            Some(other) if !saved.dev => eprintln!(
                "the CLI config {} targets {}: {HOW}",
                ClientConfig::path().display(),
                secrets::redact_urls(&other)
            ),
            _ => {
                return ClientConfig {
                    url: Some(url.to_string()),
                    token: Some(secrets::Redacted(token.to_string())),
                    ca_cert: None,
                    dev: true,
                }
                .save()
                .map_err(ServeError::from);
            }
        },
        Err(e) => eprintln!("{e}: {HOW}"),
    }
    Ok(())
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

/// The API server's limits, from `director.yml`'s `limits`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpLimits {
    /// How long a client may take to send a request's headers (or an idle kept-alive
    /// connection may wait for its next request).
    pub header_read_timeout: Duration,
    /// How long a request body or a response may go without progress.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl HttpLimits {
    pub(crate) fn new(limits: &crate::config::Limits) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(limits.header_read_timeout),
            idle_timeout: Duration::from_secs(limits.idle_timeout),
            max_connections: limits.max_connections,
        }
    }
}

/// The director's own HTTP client for the URLs it downloads (`upload-release URL`): a
/// connect timeout, and a read timeout that is a progress timeout (a large release that
/// keeps arriving is never cut), so a server that stalls cannot hold an upload forever.
fn fetch_client(limits: &crate::config::Limits) -> Result<reqwest::Client, ServeError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(limits.fetch_connect_timeout))
        .read_timeout(Duration::from_secs(limits.fetch_idle_timeout))
        .build()
        .map_err(|e| ServeError::Config(format!("the HTTP client for downloads: {e}")))
}

/// Serves `app` on `listener`'s connections, each with hyper's header read timeout, until
/// `signal`; then stops accepting and lets the requests in flight finish.
async fn serve_connections<L>(
    mut listener: L,
    app: Router,
    limits: HttpLimits,
    signal: impl Future<Output = ()>,
) where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let stopping = CancellationToken::new();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            (io, _address) = listener.accept() => {
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let connection =
                    builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
                let stopping = stopping.clone();
                connections.spawn(async move {
                    tokio::pin!(connection);
                    tokio::select! {
                        // A connection's end (a client gone, a timeout) is no server error.
                        _ = connection.as_mut() => {}
                        () = stopping.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    stopping.cancel();
    while connections.join_next().await.is_some() {}
}

/// The OpenSSL acceptor of `tls`'s certificate and key.
fn tls_acceptor(
    tls: &crate::config::TlsConfig,
) -> Result<Arc<openssl::ssl::SslAcceptor>, ServeError> {
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
    Ok(Arc::new(acceptor.build()))
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest pause after a failed `accept` (out of file descriptors, say).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A TCP listener that holds at most `max_connections` connections open: it accepts only
/// with a permit in hand, so beyond the cap new clients wait in the kernel's backlog (no
/// descriptor of ours) until a connection ends. A failing `accept` is retried with a
/// growing pause instead of spinning.
struct LimitedListener {
    listener: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
    idle_timeout: Duration,
}

impl LimitedListener {
    fn new(listener: tokio::net::TcpListener, limits: HttpLimits) -> LimitedListener {
        LimitedListener {
            listener,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            idle_timeout: limits.idle_timeout,
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Connection<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                // The semaphore is never closed; were it, nothing more would be accepted.
                return std::future::pending().await;
            };
            match self.listener.accept().await {
                Ok((stream, address)) => {
                    return (Connection::new(stream, permit, self.idle_timeout), address);
                }
                Err(_) => {
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An accepted connection: it holds its listener permit until dropped, and a write the
/// client takes no byte of for `idle_timeout` fails (a client that stopped reading a
/// response, a blob download, frees its connection).
struct Connection<S> {
    stream: S,
    _permit: tokio::sync::OwnedSemaphorePermit,
    idle_timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Connection<S> {
    fn new(
        stream: S,
        permit: tokio::sync::OwnedSemaphorePermit,
        idle_timeout: Duration,
    ) -> Connection<S> {
        Connection {
            stream,
            _permit: permit,
            idle_timeout,
            stalled: None,
        }
    }

    /// `poll` of a write or flush: a ready one resets the stall clock, a pending one fails
    /// once it has been pending for `idle_timeout`.
    fn progress<T>(
        &mut self,
        poll: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let idle_timeout = self.idle_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took no data for {} s", idle_timeout.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.progress(poll, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.progress(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.progress(poll, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.progress(poll, cx)
    }
}

/// A listener that hands out connections whose TLS handshake (OpenSSL) completed. Each
/// handshake runs in a task of its own under [`HANDSHAKE_TIMEOUT`], so a client that
/// connects and sends nothing delays nobody; handshakes hold their connection's permit of
/// the [`LimitedListener`] underneath.
struct TlsListener {
    connections: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    address: SocketAddr,
}

type TlsStream = tokio_openssl::SslStream<Connection<tokio::net::TcpStream>>;

impl TlsListener {
    /// Starts the accept loop on `listener`, which listens on `address`.
    fn start(
        listener: LimitedListener,
        address: SocketAddr,
        acceptor: Arc<openssl::ssl::SslAcceptor>,
    ) -> TlsListener {
        let (sender, connections) = tokio::sync::mpsc::channel(64);
        tokio::spawn(accept_tls(listener, acceptor, sender));
        TlsListener {
            connections,
            address,
        }
    }
}

/// Accepts connections until the receiving side is dropped; every handshake is a task in a
/// `JoinSet` that ends with this loop.
async fn accept_tls(
    mut listener: LimitedListener,
    acceptor: Arc<openssl::ssl::SslAcceptor>,
    sender: tokio::sync::mpsc::Sender<(TlsStream, SocketAddr)>,
) {
    use axum::serve::Listener;
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = sender.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            (stream, address) = listener.accept() => {
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                handshakes.spawn(async move {
                    let Ok(ssl) = openssl::ssl::Ssl::new(acceptor.context()) else {
                        return;
                    };
                    let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, stream) else {
                        return;
                    };
                    let handshake = Pin::new(&mut tls).accept();
                    if let Ok(Ok(())) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        let _ = sender.send((tls, address)).await;
                    }
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn connection(
        stream: tokio::io::DuplexStream,
        idle_timeout: Duration,
    ) -> Connection<tokio::io::DuplexStream> {
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .acquire_owned()
            .await
            .unwrap();
        Connection::new(stream, permit, idle_timeout)
    }

    #[tokio::test]
    async fn a_write_the_client_takes_nothing_of_fails_after_the_idle_timeout() {
        let (server, _client) = tokio::io::duplex(64);
        let mut connection = connection(server, Duration::from_secs(1)).await;
        let written =
            tokio::time::timeout(Duration::from_secs(60), connection.write_all(&[0; 4096]))
                .await
                .expect("the write ends long before a minute");
        let error = written.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "the client took no data for 1 s");
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut connection = connection(server, Duration::from_secs(5)).await;
        let reader = tokio::spawn(async move {
            let mut received = 0;
            let mut buffer = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match client.read(&mut buffer).await.unwrap() {
                    0 => return received,
                    n => received += n,
                }
            }
        });
        // 64 reads 0.1 s apart: longer than the idle timeout in all, never idle that long.
        connection.write_all(&[0; 4096]).await.unwrap();
        connection.shutdown().await.unwrap();
        drop(connection);
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
