//! The integration tests' world: Debian's `nats-server` on a free port with a user per
//! party, a tiny blob server (GET signed blobs, PUT uploads answering `{"blob_id","size"}`),
//! the real `bosh-agent` binary with a settings file in a temporary root, and a director
//! side that sends requests and follows tasks.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::{
    AgentState, ApplySpec, BlobRef, JobSpec, PROTOCOL_VERSION, PackageSpec, Reply, Request,
    agent_subject,
};
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const AGENT_USER: &str = "agent-1";
pub const AGENT_PASSWORD: &str = "agent-secret-pw";
const DIRECTOR_USER: &str = "director";
const DIRECTOR_PASSWORD: &str = "director-secret-pw";

/// A `nats-server` of its own.
pub struct Nats {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        if Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            panic!(
                "nats-server is not installed: the agent's integration tests need Debian's NATS \
                 server (apt-get install -y nats-server)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "authorization {{\n  users = [\n    {{user: \"{AGENT_USER}\", password: \"{AGENT_PASSWORD}\"}}\n    {{user: \"{DIRECTOR_USER}\", password: \"{DIRECTOR_PASSWORD}\"}}\n  ]\n}}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-c"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("Listening for client connections on ").nth(1)
                    && let Some(sender) = sender.take()
                {
                    let port = rest
                        .trim()
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .parse::<u16>()
                        .unwrap();
                    let _ = sender.send(port);
                }
            }
        });
        let port = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("nats-server did not say where it listens within 10 s");
        Nats {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blobs by id, uploads by name.
#[derive(Clone, Default)]
pub struct BlobStore {
    blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    uploads: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

pub struct Blobs {
    pub base: String,
    store: BlobStore,
}

impl Blobs {
    pub async fn start() -> Blobs {
        use axum::extract::{Path as UrlPath, State};
        use axum::http::StatusCode;
        use axum::routing::{get, put};
        let store = BlobStore::default();
        let app = axum::Router::new()
            .route(
                "/blobs/{id}",
                get(
                    |State(store): State<BlobStore>, UrlPath(id): UrlPath<String>| async move {
                        match store.blobs.lock().unwrap().get(&id) {
                            Some(bytes) => Ok(bytes.clone()),
                            None => Err(StatusCode::NOT_FOUND),
                        }
                    },
                ),
            )
            .route(
                "/uploads/{name}",
                put(
                    |State(store): State<BlobStore>,
                     UrlPath(name): UrlPath<String>,
                     body: axum::body::Bytes| async move {
                        let id = sha256(&body);
                        let size = body.len();
                        store.uploads.lock().unwrap().insert(name, body.to_vec());
                        axum::Json(json!({"blob_id": id, "size": size}))
                    },
                ),
            )
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Blobs { base, store }
    }

    /// Stores `bytes`; a signed-looking URL to them.
    pub fn add(&self, bytes: Vec<u8>) -> BlobRef {
        let id = sha256(&bytes);
        self.store.blobs.lock().unwrap().insert(id.clone(), bytes);
        BlobRef {
            url: format!("{}/blobs/{id}?expires=99&signature=s3cr3t", self.base),
            id,
        }
    }

    pub fn upload_url(&self, name: &str) -> String {
        format!("{}/uploads/{name}?signature=s3cr3t", self.base)
    }

    pub fn uploaded(&self, name: &str) -> Option<Vec<u8>> {
        self.store.uploads.lock().unwrap().get(name).cloned()
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `.tgz` of `(path, content, mode)` entries.
pub fn tgz(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Reads a `.tgz` into `(path, content)`.
pub fn untgz(bytes: &[u8]) -> Vec<(String, String)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().display().to_string();
            let mut content = String::new();
            std::io::Read::read_to_string(&mut entry, &mut content).unwrap();
            files.push((path, content));
        }
    }
    files
}

/// The test's agent and everything around it.
pub struct Harness {
    pub nats: Nats,
    pub blobs: Blobs,
    pub client: async_nats::Client,
    pub agent_id: String,
    pub root: PathBuf,
    pub settings_path: PathBuf,
    pub dir: tempfile::TempDir,
    agent: Option<Child>,
    log: PathBuf,
    /// A command the agent is started through (`unshare …`).
    wrapper: Vec<String>,
    /// Variables for the agent's environment.
    env: Vec<(String, String)>,
}

impl Harness {
    /// Everything started, the agent answering pings; disks are symlinked.
    pub async fn start() -> Harness {
        Harness::start_with(Vec::new(), Some("symlink")).await
    }

    /// As [`Harness::start`], the agent in a mount namespace of its own (`unshare`, which
    /// needs root), choosing its disk strategy itself.
    pub async fn start_in_mount_namespace() -> Harness {
        let allowed = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "true"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            allowed,
            "this test runs the agent in a private mount namespace: it needs `unshare` \
             (util-linux) and root with CAP_SYS_ADMIN"
        );
        let wrapper = ["unshare", "--mount", "--propagation", "private"];
        Harness::start_with(wrapper.iter().map(|s| s.to_string()).collect(), None).await
    }

    /// As [`Harness::start`], the agent's settings naming one network (`default`, at `ip`)
    /// and its environment holding `env`.
    pub async fn start_on_network(ip: &str, env: &[(&str, &str)]) -> Harness {
        let networks = json!({"default": {"type": "manual", "ip": ip, "netmask": "255.255.255.0"}});
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Harness::start_full(Vec::new(), Some("symlink"), networks, env).await
    }

    async fn start_with(wrapper: Vec<String>, disk_strategy: Option<&str>) -> Harness {
        Harness::start_full(wrapper, disk_strategy, json!({}), Vec::new()).await
    }

    async fn start_full(
        wrapper: Vec<String>,
        disk_strategy: Option<&str>,
        networks: Value,
        env: Vec<(String, String)>,
    ) -> Harness {
        let nats = Nats::start();
        let blobs = Blobs::start().await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vcap");
        let settings_path = dir.path().join("settings.json");
        let agent_id = format!("agent-{}", uuid::Uuid::new_v4());
        let settings = json!({
            "agent_id": agent_id,
            "mbus": format!("nats://{AGENT_USER}:{AGENT_PASSWORD}@127.0.0.1:{}", nats.port),
            "blobstore": {"provider": "director", "endpoint": blobs.base},
            "networks": networks,
            "disks": {"persistent": {}},
            "env": {"bosh": {"agent": {"stop_grace_seconds": 1, "disk_strategy": disk_strategy}}},
            "heartbeat_interval": 1
        });
        std::fs::write(
            &settings_path,
            serde_json::to_vec_pretty(&settings).unwrap(),
        )
        .unwrap();
        let client = async_nats::ConnectOptions::new()
            .user_and_password(DIRECTOR_USER.to_string(), DIRECTOR_PASSWORD.to_string())
            .connect(format!("nats://127.0.0.1:{}", nats.port))
            .await
            .expect("the director connects to nats-server");
        let log = dir.path().join("agent.log");
        let mut harness = Harness {
            nats,
            blobs,
            client,
            agent_id,
            root,
            settings_path,
            dir,
            agent: None,
            log,
            wrapper,
            env,
        };
        harness.spawn_agent().await;
        harness
    }

    /// Starts `bosh-agent` and waits until it answers.
    pub async fn spawn_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let agent = env!("CARGO_BIN_EXE_bosh-agent");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(agent);
                command
            }
            None => Command::new(agent),
        };
        let child = command
            .arg("--settings")
            .arg(&self.settings_path)
            .arg("--root")
            .arg(&self.root)
            .env("AGENT_ONLY_SECRET", "must-not-leak")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bosh-agent");
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answer = tokio::time::timeout(
                Duration::from_millis(500),
                self.request_once("ping", vec![]),
            )
            .await;
            if let Ok(Some(Reply::Value(value))) = answer {
                assert_eq!(value, "pong");
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the agent did not answer ping within 15 s\n{}",
                    self.agent_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent's pid.
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent running").id()
    }

    /// `kill -9` the agent (its processes stay behind).
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to the agent; waits until it exits.
    pub fn terminate_agent(&mut self) -> std::process::ExitStatus {
        let mut child = self.agent.take().expect("agent running");
        signal(child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the agent did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn request_once(&self, method: &str, arguments: Vec<Value>) -> Option<Reply> {
        let reply_to = format!("director.test.{}.{}", self.agent_id, uuid::Uuid::new_v4());
        let mut replies = self.client.subscribe(reply_to.clone()).await.ok()?;
        let request = Request {
            protocol: PROTOCOL_VERSION,
            method: method.to_string(),
            arguments,
            reply_to,
        };
        self.client
            .publish(
                agent_subject(&self.agent_id),
                serde_json::to_vec(&request).unwrap().into(),
            )
            .await
            .ok()?;
        self.client.flush().await.ok()?;
        let message = replies.next().await?;
        Some(serde_json::from_slice(&message.payload).expect("replies are JSON"))
    }

    /// One request, one reply (10 s).
    pub async fn request(&self, method: &str, arguments: Vec<Value>) -> Reply {
        match tokio::time::timeout(
            Duration::from_secs(10),
            self.request_once(method, arguments),
        )
        .await
        {
            Ok(Some(reply)) => reply,
            _ => panic!("no answer to {method} within 10 s\n{}", self.agent_log()),
        }
    }

    /// A call as the director makes it: long calls are followed with `get_task` until they
    /// end. `Err` holds an exception's message.
    pub async fn call(&self, method: &str, arguments: Vec<Value>) -> Result<Value, String> {
        let mut reply = self.request(method, arguments).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match reply {
                Reply::Exception(exception) => return Err(exception.message),
                Reply::Value(value) => {
                    let is_task = value.get("agent_task_id").is_some()
                        && value.get("state").and_then(Value::as_str) == Some("running");
                    if !is_task {
                        return Ok(value);
                    }
                    if Instant::now() > deadline {
                        panic!("{method} still running after 30 s\n{}", self.agent_log());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let id = value["agent_task_id"].clone();
                    reply = self.request("get_task", vec![id]).await;
                }
            }
        }
    }

    /// A call that must succeed.
    pub async fn ok(&self, method: &str, arguments: Vec<Value>) -> Value {
        match self.call(method, arguments).await {
            Ok(value) => value,
            Err(message) => panic!("{method} failed: {message}\n{}", self.agent_log()),
        }
    }

    pub async fn state(&self) -> AgentState {
        serde_json::from_value(self.ok("get_state", vec![]).await).expect("an AgentState")
    }

    /// Polls `get_state` until `done` holds (or panics after `within`).
    pub async fn wait_state(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&AgentState) -> bool,
    ) -> AgentState {
        let deadline = Instant::now() + within;
        loop {
            let state = self.state().await;
            if done(&state) {
                return state;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {within:?} for {what}; last state: {}\n{}",
                    serde_json::to_string_pretty(&state).unwrap(),
                    self.agent_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A rendered job from `(path, content, mode)` files.
    pub fn job(&self, name: &str, files: &[(&str, &str, u32)], packages: &[&str]) -> JobSpec {
        JobSpec {
            name: name.to_string(),
            version: format!("{name}-fingerprint"),
            rendered: self.blobs.add(tgz(files)),
            packages: packages.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// A compiled package.
    pub fn package(&self, name: &str, version: &str, files: &[(&str, &str, u32)]) -> PackageSpec {
        PackageSpec {
            name: name.to_string(),
            version: version.to_string(),
            blob: self.blobs.add(tgz(files)),
        }
    }

    /// `config/bpm.yml` running the job's `bin/<script>` as process `name`, with extra YAML
    /// lines for the process.
    pub fn bpm(&self, job: &str, name: &str, script: &str, extra: &str) -> String {
        let executable = self.root.join("jobs").join(job).join("bin").join(script);
        let mut yaml = format!(
            "processes:\n- name: {name}\n  executable: {}\n",
            executable.display()
        );
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml
    }

    pub fn spec(&self, jobs: Vec<JobSpec>, packages: Vec<PackageSpec>) -> ApplySpec {
        ApplySpec {
            deployment: "test".to_string(),
            name: "web".to_string(),
            id: "2d3a1f8e-0000-4000-8000-000000000001".to_string(),
            index: 0,
            jobs,
            packages: packages.into_iter().map(|p| (p.name.clone(), p)).collect(),
            configuration_hash: "hash-1".to_string(),
            persistent_disk: 1024,
            ..ApplySpec::default()
        }
    }

    pub async fn apply(&self, spec: &ApplySpec) {
        let answer = self
            .ok("apply", vec![serde_json::to_value(spec).unwrap()])
            .await;
        assert_eq!(answer, "applied");
    }

    /// The pid of `job/process` once it runs.
    pub async fn running_pid(&self, job: &str, process: &str) -> u32 {
        let state = self
            .wait_state(
                &format!("{job}/{process} running"),
                Duration::from_secs(10),
                |s| {
                    s.processes
                        .iter()
                        .any(|p| p.job == job && p.name == process && p.state == "running")
                },
            )
            .await;
        state
            .processes
            .iter()
            .find(|p| p.job == job && p.name == process)
            .and_then(|p| p.pid)
            .expect("a running process has a pid")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.agent_log());
        }
        if let Some(child) = self.agent.as_ref() {
            signal(child.id(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Some(child) = self.agent.as_mut()
                    && child.try_wait().ok().flatten().is_some()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill_agent();
        // Whatever a killed agent left behind.
        for pid in recorded_pids(&self.root) {
            signal_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Pids in `<root>/sys/run/*/*.pid`.
pub fn recorded_pids(root: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for job in std::fs::read_dir(root.join("sys/run"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for file in std::fs::read_dir(job.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(text) = std::fs::read_to_string(file.path())
                && let Ok(pid) = text.trim().parse()
            {
                pids.push(pid);
            }
        }
    }
    pids
}

pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

pub fn signal_group(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Whether a live (not zombie) process has this pid.
pub fn alive(pid: u32) -> bool {
    agent::supervisor::is_alive(pid)
}

/// Live processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state ppid pgrp …
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

/// Waits until `check` holds, polling (or panics after `within`).
pub async fn eventually(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            panic!("waited {within:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
