//! The agent: the applied spec, the supervisor, tasks and settings, and one method per
//! thing the director can ask. `actions` maps bus requests onto these methods; nothing here
//! knows NATS.
//!
//! Lifecycle calls (`apply`, `start`, `stop`, `drain`, disks) take one lock, so they never
//! interleave; downloads (`apply`, `prepare`, `compile_package`) take another. What the
//! jobs should be doing (`running` after `start`, `stopped` after `stop`) is recorded in
//! `<root>/bosh/desired_state`, the applied spec in `<root>/bosh/spec.json`, so a restarted
//! agent ([`Agent::boot`]) stops what its predecessor left running and starts the jobs
//! again when they should run.
//!
//! `sync_dns` records (`<root>/bosh/dns/records.json`) are served by [`dns::Server`] on the
//! settings' network addresses; a restarted agent serves the recorded ones at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::blobs::{self, Http};
use crate::bpm::ShutdownSignal;
use crate::drain::{self, DrainKind};
use crate::error::{Error, Result};
use crate::install::{self, Installer};
use crate::layout::{Layout, check_name};
use crate::scripts;
use crate::settings::{SettingsFile, Tunables};
use crate::state::{self, ProcessStatus};
use crate::supervisor::{self, ProcessSpec, Supervisor};
use crate::tasks::Tasks;
use crate::vitals::Sampler;
use crate::{compile, disks, dns};
use agent_protocol::{AgentState, ApplySpec, BlobRef, CompileRequest, Heartbeat, Settings};

/// How long `sync_dns` may take to download the records: the director waits 10 s for the
/// answer.
const DNS_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(8);
/// The largest records document accepted (BOSH's for thousands of instances is a few MB).
const DNS_RECORDS_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Dynamic drain scripts the director will ask about again.
#[derive(Clone, Debug)]
struct PendingDrain {
    jobs: Vec<String>,
    env: Vec<(String, String)>,
}

/// The agent of one VM.
pub struct Agent {
    layout: Layout,
    settings_file: SettingsFile,
    settings: Mutex<Settings>,
    applied: Mutex<Option<ApplySpec>>,
    wants_running: AtomicBool,
    supervisor: Supervisor,
    tasks: Tasks,
    vitals: Sampler,
    lifecycle: tokio::sync::Mutex<()>,
    installing: tokio::sync::Mutex<()>,
    pending_drain: Mutex<Option<PendingDrain>>,
    heartbeat_requested: Notify,
    dns: dns::Server,
    dns_syncing: tokio::sync::Mutex<()>,
}

impl Agent {
    /// An agent rooted at `layout` with the settings in `settings_file`.
    pub fn new(layout: Layout, settings_file: SettingsFile) -> Result<Arc<Agent>> {
        let settings = settings_file.load()?;
        for dir in [
            layout.bosh(),
            layout.data(),
            layout.tmp(),
            layout.jobs(),
            layout.packages(),
            layout.logs(),
            layout.run(),
        ] {
            std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        }
        if std::fs::symlink_metadata(layout.store()).is_err() {
            let store = layout.store();
            std::fs::create_dir_all(&store).map_err(Error::io("create", &store))?;
        }
        let applied = install::load_spec(&layout)?;
        let wants_running = std::fs::read_to_string(layout.desired_state_file())
            .is_ok_and(|text| text.trim() == "running");
        Ok(Arc::new_cyclic(|agent: &Weak<Agent>| Agent {
            dns: dns::Server::new(own_instance_source(agent.clone())),
            dns_syncing: tokio::sync::Mutex::new(()),
            layout,
            settings_file,
            settings: Mutex::new(settings),
            applied: Mutex::new(applied),
            wants_running: AtomicBool::new(wants_running),
            supervisor: Supervisor::new(),
            tasks: Tasks::new(),
            vitals: Sampler::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            installing: tokio::sync::Mutex::new(()),
            pending_drain: Mutex::new(None),
            heartbeat_requested: Notify::new(),
        }))
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The current settings.
    pub fn settings(&self) -> Settings {
        self.settings.lock().expect("settings lock").clone()
    }

    /// The tasks of long calls.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Notified when a heartbeat should go out now (after `start`).
    pub fn heartbeat_requested(&self) -> &Notify {
        &self.heartbeat_requested
    }

    fn tunables(&self) -> Tunables {
        Tunables::from_settings(&self.settings(), |var| std::env::var(var).ok())
    }

    fn http(&self) -> Result<Http> {
        Http::new(&self.settings().blobstore)
    }

    fn applied(&self) -> Option<ApplySpec> {
        self.applied.lock().expect("spec lock").clone()
    }

    fn set_wants_running(&self, running: bool) -> Result<()> {
        self.wants_running.store(running, Ordering::SeqCst);
        let text = if running { "running\n" } else { "stopped\n" };
        crate::settings::write_atomically(&self.layout.desired_state_file(), text.as_bytes())
    }

    /// Start-up: serves the recorded DNS records, shows the persistent disk again, stops
    /// processes a previous agent left running, and starts the jobs when they should run.
    pub async fn boot(&self) {
        self.serve_recorded_dns().await;
        let _lifecycle = self.lifecycle.lock().await;
        let settings = self.settings();
        let tunables = self.tunables();
        let strategy = disks::strategy(tunables.disk_strategy);
        if let Err(e) = disks::remount(&self.layout, strategy, &settings.disks.persistent).await {
            agent_log!("cannot mount the persistent disk again: {e}");
        }
        let layout = self.layout.clone();
        let signal_of = |job: &str, process: &str| -> ShutdownSignal {
            install::read_bpm(&layout, job)
                .ok()
                .flatten()
                .and_then(|config| config.processes.into_iter().find(|p| p.name == process))
                .map(|p| p.shutdown_signal)
                .unwrap_or_default()
        };
        let stopped = supervisor::stop_recorded(&self.layout, signal_of, tunables.stop_grace).await;
        if !stopped.is_empty() {
            agent_log!(
                "stopped processes left by a previous agent: {}",
                stopped.join(", ")
            );
        }
        if self.wants_running.load(Ordering::SeqCst) {
            match self.start_processes() {
                Ok(count) => agent_log!("jobs should run: started {count} processes"),
                Err(e) => agent_log!("cannot start the jobs: {e}"),
            }
        }
    }

    /// What the processes of the installed jobs need to run.
    fn process_specs(&self, spec: &ApplySpec) -> Result<Vec<ProcessSpec>> {
        let tunables = self.tunables();
        let mut specs = Vec::new();
        for job in &spec.jobs {
            if let Some(config) = install::read_bpm(&self.layout, &job.name)? {
                for process in config.processes {
                    specs.push(ProcessSpec::new(
                        &self.layout,
                        &job.name,
                        process,
                        &tunables,
                    ));
                }
            }
        }
        Ok(specs)
    }

    fn start_processes(&self) -> Result<usize> {
        let spec = self.applied().unwrap_or_default();
        let specs = self.process_specs(&spec)?;
        let count = specs.len();
        self.supervisor.start(specs);
        Ok(count)
    }

    /// The job state `get_state` reports, without sampling anything: cheap.
    pub fn job_state(&self) -> &'static str {
        let statuses = self.supervisor.statuses();
        state::job_state(&statuses, self.wants_running.load(Ordering::SeqCst))
    }

    /// What the DNS server needs to know about this agent's instance (asked per query).
    fn own_instance(&self) -> dns::OwnInstance {
        let instance_id = self
            .applied
            .lock()
            .expect("spec lock")
            .as_ref()
            .map(|spec| spec.id.clone());
        let agent_id = self
            .settings
            .lock()
            .expect("settings lock")
            .agent_id
            .clone();
        dns::OwnInstance {
            instance_id,
            agent_id,
            running: self.job_state() == "running",
        }
    }

    /// `get_state`.
    pub fn state(&self) -> AgentState {
        let processes = self.supervisor.states();
        let statuses: Vec<ProcessStatus> = processes.iter().map(|(_, s)| *s).collect();
        let job_state = state::job_state(&statuses, self.wants_running.load(Ordering::SeqCst));
        let spec = self.applied().unwrap_or_default();
        let persistent = disks::mounted(&self.layout).is_some();
        AgentState {
            agent_id: self.settings().agent_id,
            job_state: job_state.to_string(),
            processes: processes.into_iter().map(|(p, _)| p).collect(),
            vitals: self.vitals.sample(&self.layout, persistent),
            deployment: spec.deployment,
            name: spec.name,
            index: spec.index,
            id: spec.id,
            configuration_hash: spec.configuration_hash,
        }
    }

    /// A heartbeat now.
    pub fn heartbeat(&self) -> Heartbeat {
        let state = self.state();
        Heartbeat {
            deployment: state.deployment,
            job: state.name,
            index: state.index,
            node_id: state.id,
            job_state: state.job_state,
            number_of_processes: state.processes.len() as u32,
            vitals: state.vitals,
            processes: state.processes,
        }
    }

    /// `apply`: installs the spec's packages and jobs, switches to them, removes what it no
    /// longer names and records it. Processes of changed or removed jobs are stopped; when
    /// the jobs should run, the changed ones are started again.
    pub async fn apply(&self, spec: ApplySpec) -> Result<Value> {
        check_spec(&spec)?;
        let _lifecycle = self.lifecycle.lock().await;
        let _installing = self.installing.lock().await;
        let installer = Installer::new(self.layout.clone(), self.http()?);
        download_all(&installer, &spec).await?;

        let current = self.applied().unwrap_or_default();
        let wanted: BTreeSet<&str> = spec.jobs.iter().map(|j| j.name.as_str()).collect();
        let removed: BTreeSet<String> = current
            .jobs
            .iter()
            .filter(|j| !wanted.contains(j.name.as_str()))
            .map(|j| j.name.clone())
            .collect();
        let changed: BTreeSet<String> = spec
            .jobs
            .iter()
            .filter(|j| !drain::job_unchanged(&j.name, &current, &spec))
            .map(|j| j.name.clone())
            .collect();
        let grace = self.tunables().stop_grace;
        self.supervisor
            .stop(|job| removed.contains(job) || changed.contains(job), grace)
            .await;
        self.supervisor.forget(|job| removed.contains(job));

        for package in spec.packages.values() {
            installer.link_package(package)?;
        }
        for job in &spec.jobs {
            installer.switch_job(job, &spec.packages)?;
        }
        installer.remove_unused(&spec)?;
        install::save_spec(&self.layout, &spec)?;
        *self.applied.lock().expect("spec lock") = Some(spec.clone());
        agent_log!(
            "applied {}/{} ({}): jobs {:?}",
            spec.name,
            spec.id,
            spec.deployment,
            spec.jobs.iter().map(|j| &j.name).collect::<Vec<_>>()
        );
        if self.wants_running.load(Ordering::SeqCst) {
            self.start_processes()?;
        }
        Ok(Value::from("applied"))
    }

    /// `prepare`: downloads and unpacks what `apply` of `spec` will need, switching nothing.
    pub async fn prepare(&self, spec: ApplySpec) -> Result<Value> {
        check_spec(&spec)?;
        let _installing = self.installing.lock().await;
        let installer = Installer::new(self.layout.clone(), self.http()?);
        download_all(&installer, &spec).await?;
        Ok(Value::from("prepared"))
    }

    /// `start`: starts every process of every job.
    pub async fn start(&self) -> Result<Value> {
        let _lifecycle = self.lifecycle.lock().await;
        let spec = self.applied().unwrap_or_default();
        let specs = self.process_specs(&spec)?;
        self.set_wants_running(true)?;
        agent_log!("starting {} processes", specs.len());
        self.supervisor.start(specs);
        self.heartbeat_requested.notify_one();
        Ok(Value::from("started"))
    }

    /// `stop`: stops every process (shutdown signal, grace, KILL).
    pub async fn stop(&self) -> Result<Value> {
        let _lifecycle = self.lifecycle.lock().await;
        self.set_wants_running(false)?;
        let grace = self.tunables().stop_grace;
        agent_log!("stopping all processes (grace {grace:?})");
        self.supervisor.stop_all(grace).await;
        self.heartbeat_requested.notify_one();
        Ok(Value::from("stopped"))
    }

    /// The agent itself is going down: stop serving DNS and the processes, keep what
    /// should run recorded.
    pub async fn shutdown(&self) {
        self.dns.stop();
        let grace = self.tunables().stop_grace;
        self.supervisor.stop_all(grace).await;
    }

    /// `drain`: runs the jobs' drain scripts; waits static values and answers `0`, or
    /// answers the dynamic value for the director to come back with `status`.
    pub async fn drain(&self, kind: DrainKind, next: Option<ApplySpec>) -> Result<Value> {
        let _lifecycle = self.lifecycle.lock().await;
        let Some(current) = self.applied() else {
            return Ok(Value::from(0));
        };
        let (jobs, env) = match kind {
            DrainKind::Update | DrainKind::Shutdown => {
                // Processes that drain makes exit must stay down.
                self.supervisor.unmonitor();
                let next_state = match (kind, &next) {
                    (DrainKind::Update, None) => drain::state_env(Some(&current)),
                    _ => drain::state_env(next.as_ref()),
                };
                let env = vec![
                    (
                        "BOSH_JOB_STATE".to_string(),
                        drain::state_env(Some(&current)),
                    ),
                    ("BOSH_JOB_NEXT_STATE".to_string(), next_state),
                ];
                let jobs = current
                    .jobs
                    .iter()
                    .map(|j| {
                        let args = drain::script_args(kind, &j.name, &current, next.as_ref());
                        (j.name.clone(), args)
                    })
                    .collect();
                (jobs, env)
            }
            DrainKind::Status => {
                let pending = self.pending_drain.lock().expect("drain lock").clone();
                let (names, env) = match pending {
                    Some(pending) => (pending.jobs, pending.env),
                    None => (
                        current.jobs.iter().map(|j| j.name.clone()).collect(),
                        vec![
                            (
                                "BOSH_JOB_STATE".to_string(),
                                drain::state_env(Some(&current)),
                            ),
                            (
                                "BOSH_JOB_NEXT_STATE".to_string(),
                                drain::state_env(Some(&current)),
                            ),
                        ],
                    ),
                };
                let args = drain::script_args(kind, "", &current, None);
                (names.into_iter().map(|n| (n, args)).collect(), env)
            }
        };
        let values = scripts::run_drains(&self.layout, jobs, env.clone()).await;
        let values = match values {
            Ok(values) => values,
            Err(e) => {
                *self.pending_drain.lock().expect("drain lock") = None;
                return Err(e);
            }
        };
        let numbers: Vec<i64> = values.iter().map(|(_, v)| *v).collect();
        let (wait, dynamic) = drain::combine(&numbers);
        let pending: Vec<String> = values
            .into_iter()
            .filter(|(_, v)| *v < 0)
            .map(|(job, _)| job)
            .collect();
        *self.pending_drain.lock().expect("drain lock") =
            (!pending.is_empty()).then_some(PendingDrain { jobs: pending, env });
        if wait > 0 {
            agent_log!("drain: waiting {wait} s");
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        Ok(Value::from(dynamic.unwrap_or(0)))
    }

    /// `run_script`: `bin/<name>` of every job that has it, in parallel.
    pub async fn run_script(&self, name: String, env: BTreeMap<String, String>) -> Result<Value> {
        let jobs: Vec<String> = self
            .applied()
            .map(|s| s.jobs.into_iter().map(|j| j.name).collect())
            .unwrap_or_default();
        scripts::run_lifecycle(&self.layout, &jobs, &name, &env).await?;
        Ok(json!({}))
    }

    /// `run_errand`: `bin/run` of the applied jobs (or of job `only`).
    pub async fn run_errand(
        &self,
        only: Option<String>,
        env: BTreeMap<String, String>,
    ) -> Result<Value> {
        let jobs: Vec<String> = self
            .applied()
            .map(|s| s.jobs.into_iter().map(|j| j.name).collect())
            .unwrap_or_default();
        let result = scripts::run_errand(&self.layout, &jobs, only.as_deref(), &env).await?;
        Ok(serde_json::to_value(result).expect("results serialize"))
    }

    /// `compile_package`.
    pub async fn compile_package(&self, request: CompileRequest) -> Result<Value> {
        let _installing = self.installing.lock().await;
        let http = self.http()?;
        let result = compile::compile(&self.layout, &http, &request).await?;
        Ok(serde_json::to_value(result).expect("results serialize"))
    }

    /// `mount_disk`: the hint is read from the settings file as it is now (the CPI may have
    /// added it after we started).
    pub async fn mount_disk(&self, cid: String) -> Result<Value> {
        let _lifecycle = self.lifecycle.lock().await;
        let hint = self.disk_hint(&cid, "mount disk")?;
        let strategy = disks::strategy(self.tunables().disk_strategy);
        disks::mount(&self.layout, strategy, &cid, &hint).await?;
        Ok(Value::from("mounted"))
    }

    /// The CPI's hint for disk `cid`, from the settings file as it is now.
    fn disk_hint(&self, cid: &str, doing: &str) -> Result<Value> {
        let settings = self.reload_settings();
        settings.disks.persistent.get(cid).cloned().ok_or_else(|| {
            Error::Disk(format!("cannot {doing} {cid}: the settings do not name it"))
        })
    }

    /// `unmount_disk`.
    pub async fn unmount_disk(&self, cid: String) -> Result<Value> {
        let _lifecycle = self.lifecycle.lock().await;
        if !disks::unmount(&self.layout, &cid).await? {
            agent_log!("unmount_disk {cid}: it is not mounted");
        }
        Ok(Value::from("unmounted"))
    }

    /// `migrate_disk`: moves the data of the mounted disk `old` to the attached disk `new`
    /// and mounts `new` in its place.
    pub async fn migrate_disk(&self, old: String, new: String) -> Result<Value> {
        let _lifecycle = self.lifecycle.lock().await;
        let hint = self.disk_hint(&new, "migrate to disk")?;
        let strategy = disks::strategy(self.tunables().disk_strategy);
        disks::migrate(&self.layout, strategy, &old, &new, &hint).await?;
        Ok(json!({}))
    }

    /// `list_disk`.
    pub fn list_disk(&self) -> Value {
        Value::from(disks::mounted(&self.layout).into_iter().collect::<Vec<_>>())
    }

    fn reload_settings(&self) -> Settings {
        match self.settings_file.load() {
            Ok(settings) => {
                *self.settings.lock().expect("settings lock") = settings.clone();
                settings
            }
            Err(e) => {
                agent_log!("cannot read the settings again, using what we have: {e}");
                self.settings()
            }
        }
    }

    /// `update_settings`: merges and persists.
    pub fn update_settings(&self, partial: &Value) -> Result<Value> {
        let settings = self.settings_file.update(partial)?;
        *self.settings.lock().expect("settings lock") = settings;
        agent_log!("settings updated");
        Ok(Value::from("updated"))
    }

    /// `sync_dns`: downloads the records of `version` (sha256 `sha256`) from `url` unless the
    /// agent holds that version or a newer one, records them, serves them from now on and
    /// makes sure the DNS server listens. Bad records leave the ones in force as they are.
    pub async fn sync_dns(&self, url: String, sha256: String, version: u64) -> Result<Value> {
        let _syncing = self.dns_syncing.lock().await;
        if self.dns.version().is_some_and(|held| version <= held) {
            self.listen_dns().await;
            return Ok(Value::from("synced"));
        }
        let records = self.download_dns_records(version, url, sha256).await?;
        agent_log!(
            "dns records version {version}: {} records",
            records.instances().len()
        );
        self.dns.replace(records);
        self.listen_dns().await;
        Ok(Value::from("synced"))
    }

    /// Downloads (within [`DNS_DOWNLOAD_TIMEOUT`]), checks and parses the records blob of
    /// `version`, and records it when it is good.
    async fn download_dns_records(
        &self,
        version: u64,
        url: String,
        sha256: String,
    ) -> Result<dns::Records> {
        let what = &format!("version {version}");
        let http = self.http()?;
        let blob = BlobRef { id: sha256, url };
        let label = format!("dns records {what}");
        // A directory of its own, removed whatever happens (a timed out download leaves
        // its partial file behind).
        let dir = self
            .layout
            .tmp()
            .join(format!(".dns-{}", uuid::Uuid::new_v4()));
        let downloaded = async {
            let file =
                tokio::time::timeout(DNS_DOWNLOAD_TIMEOUT, http.download(&label, &blob, &dir))
                    .await
                    .map_err(|_| Error::Download {
                        what: label.clone(),
                        url: secrets::redact_urls(&blob.url),
                        reason: format!("no answer within {} s", DNS_DOWNLOAD_TIMEOUT.as_secs()),
                    })??;
            let size = tokio::fs::metadata(&file)
                .await
                .map_err(Error::io("stat", &file))?
                .len();
            if size > DNS_RECORDS_MAX_BYTES {
                return Err(Error::DnsRecords {
                    what: what.to_string(),
                    reason: format!("{size} bytes, more than the {DNS_RECORDS_MAX_BYTES} accepted"),
                });
            }
            tokio::fs::read(&file)
                .await
                .map_err(Error::io("read", &file))
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let bytes = downloaded?;
        let records = dns::Records::parse(what, &bytes)?;
        if records.version() != version {
            return Err(Error::DnsRecords {
                what: what.to_string(),
                reason: format!(
                    "the document says version {}, sync_dns asked for {version}",
                    records.version()
                ),
            });
        }
        crate::settings::write_atomically(&self.layout.dns_records_file(), &bytes)?;
        Ok(records)
    }

    /// At boot: serves the records a previous agent kept; a corrupt file is logged and
    /// ignored (the next `sync_dns` replaces it).
    async fn serve_recorded_dns(&self) {
        let path = self.layout.dns_records_file();
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                agent_log!("dns: cannot read {}: {e}", path.display());
                return;
            }
        };
        match dns::Records::parse(&path.display().to_string(), &bytes) {
            Ok(records) => {
                agent_log!(
                    "dns records version {} from {}: {} records",
                    records.version(),
                    path.display(),
                    records.instances().len()
                );
                self.dns.replace(records);
                self.listen_dns().await;
            }
            Err(e) => agent_log!("dns: ignoring the recorded records: {e}"),
        }
    }

    /// Makes the DNS server listen on every network address of the settings and, when told
    /// to (`resolv_conf`), the VM's resolver ask it first.
    async fn listen_dns(&self) {
        let tunables = self.tunables();
        let port = tunables.dns_port;
        let settings = self.settings();
        let mut addresses = Vec::new();
        for (network, spec) in &settings.networks {
            if spec.ip.trim().is_empty() {
                continue;
            }
            match spec.ip.trim().parse::<IpAddr>() {
                Ok(ip) => addresses.push(SocketAddr::new(ip, port)),
                Err(_) => agent_log!("dns: network {network}: {:?} is no IP address", spec.ip),
            }
        }
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            agent_log!("dns: no network address to serve on");
        }
        self.dns.listen(&addresses).await;
        let resolver = self.dns.serving().into_iter().find(|a| a.port() == 53);
        if let (Some(path), Some(server)) = (tunables.resolv_conf, resolver) {
            match dns::point_resolver_at(&path, server.ip()).await {
                Ok(true) => agent_log!("dns: {} names {} first", path.display(), server.ip()),
                Ok(false) => {}
                Err(e) => agent_log!(
                    "dns: cannot point {} at {}: {e}",
                    path.display(),
                    server.ip()
                ),
            }
        }
    }

    /// `fetch_logs`: a `.tgz` of `<root>/sys/log` `PUT` to `upload_url`.
    pub async fn fetch_logs(&self, upload_url: String) -> Result<Value> {
        let http = self.http()?;
        let archive = self
            .layout
            .tmp()
            .join(format!(".logs-{}.tgz", uuid::Uuid::new_v4()));
        let (logs, file) = (self.layout.logs(), archive.clone());
        let packed = tokio::task::spawn_blocking(move || blobs::pack_tgz("logs", &logs, &file))
            .await
            .map_err(|e| Error::Archive {
                what: "logs".to_string(),
                reason: e.to_string(),
            })?;
        let uploaded = match packed {
            Ok(_) => http.upload("logs", &upload_url, &archive).await,
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&archive).await;
        Ok(serde_json::to_value(uploaded?).expect("blobs serialize"))
    }
}

/// The DNS server's view of the agent, which it must not keep alive.
fn own_instance_source(agent: Weak<Agent>) -> dns::OwnInstanceSource {
    Arc::new(move || {
        agent
            .upgrade()
            .map(|agent| agent.own_instance())
            .unwrap_or_default()
    })
}

/// Names in the spec must be usable in paths, and every package a job uses listed.
fn check_spec(spec: &ApplySpec) -> Result<()> {
    install::check_packages(&spec.packages)?;
    for job in &spec.jobs {
        check_name("job", &job.name)?;
        for package in &job.packages {
            if !spec.packages.contains_key(package) {
                return Err(Error::Spec(format!(
                    "job '{}' uses package '{package}', which the spec does not list",
                    job.name
                )));
            }
        }
    }
    Ok(())
}

/// Downloads every package and job of `spec` that is not installed yet, in parallel.
async fn download_all(installer: &Installer, spec: &ApplySpec) -> Result<()> {
    let mut downloads = JoinSet::new();
    for package in spec.packages.values() {
        let (installer, package) = (installer.clone(), package.clone());
        downloads.spawn(async move { installer.install_package(&package).await.map(|_| ()) });
    }
    for job in &spec.jobs {
        let (installer, job) = (installer.clone(), job.clone());
        downloads.spawn(async move { installer.install_job(&job).await.map(|_| ()) });
    }
    let mut first_error = None;
    while let Some(joined) = downloads.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(Error::Archive {
                what: "download".to_string(),
                reason: e.to_string(),
            })
        });
        if let Err(e) = result
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
