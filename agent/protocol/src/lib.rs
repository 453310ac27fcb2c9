//! The wire types of the agent's bus API: what the director sends on `agent.<agent_id>`, what
//! the agent answers, its heartbeats, and the settings file the CPI writes for it.
//!
//! Shapes follow BOSH's agent protocol (`protocol: 3`): a request carries `method`,
//! positional `arguments` and a `reply_to` subject; the answer is `{"value": …}` or
//! `{"exception": {"message": …}}`. Long calls (`apply`, `prepare`, `drain`, `stop`,
//! `run_script`, `compile_package`, `fetch_logs`, `mount_disk`, `unmount_disk`,
//! `migrate_disk`, `run_errand`) answer at
//! once with `{"value": {"agent_task_id": …, "state": "running"}}` and the director polls
//! `get_task` until a plain value (or an exception) comes back; a director should treat any
//! value of that shape as a task to poll, as BOSH's does. The agent owns these types; the
//! engine depends on them.
//!
//! Answers: `ping` → `"pong"`; `get_state` → [`AgentState`]; `apply` → `"applied"`;
//! `prepare` → `"prepared"`; `drain` → an integer (`0` once static waits are over, which
//! the agent waits itself; negative: call `drain ["status"]` after that many seconds);
//! `stop` → `"stopped"`; `start` → `"started"`; `run_script` → `{}`; `compile_package` →
//! [`CompileResult`]; `fetch_logs [upload_url]` → [`UploadedBlob`]; `mount_disk` →
//! `"mounted"`; `unmount_disk` → `"unmounted"`; `migrate_disk [old, new]` → `{}`;
//! `run_errand [job?]` → [`ErrandResult`];
//! `list_disk` → CIDs; `update_settings` →
//! `"updated"`; `cancel_task` → `"canceled"`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version in every request.
pub const PROTOCOL_VERSION: u32 = 3;

/// The subject an agent listens on.
pub fn agent_subject(agent_id: &str) -> String {
    format!("agent.{agent_id}")
}

/// The subject an agent sends heartbeats to.
pub fn heartbeat_subject(agent_id: &str) -> String {
    format!("hm.agent.heartbeat.{agent_id}")
}

/// The subject an agent sends alerts to.
pub fn alert_subject(agent_id: &str) -> String {
    format!("hm.agent.alert.{agent_id}")
}

/// A request to an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Always [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// `ping`, `get_state`, `apply`, …
    pub method: String,
    /// Positional arguments, as BOSH sends them.
    #[serde(default)]
    pub arguments: Vec<Value>,
    /// `director.<director_id>.<agent_id>.<request_id>`.
    pub reply_to: String,
}

/// An agent's answer: `{"value": …}` or `{"exception": {"message": …}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The result.
    Value(Value),
    /// What went wrong.
    Exception(Exception),
}

/// The body of an exception reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    /// What went wrong, for the user.
    pub message: String,
}

impl Reply {
    /// An exception reply.
    pub fn exception(message: impl Into<String>) -> Reply {
        Reply::Exception(Exception {
            message: message.into(),
        })
    }
}

/// What a long call answers at first, and what `get_task` answers while it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHandle {
    /// The agent's task id.
    pub agent_task_id: String,
    /// `running`.
    pub state: String,
}

/// A blob the agent fetches from (or puts to) the director: its id (sha256 hex) and a
/// signed, expiring URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lowercase hex sha256 of the content; the agent verifies what it downloads.
    pub id: String,
    /// Where to GET it.
    pub url: String,
}

/// A package to install (compiled), as `apply` and `compile_package` name them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSpec {
    /// Package name.
    pub name: String,
    /// Its version: fingerprint plus build, `<fingerprint>.<build>`.
    pub version: String,
    /// The compiled package archive (a `.tgz` of the install target).
    pub blob: BlobRef,
}

/// A job to install: its rendered templates (an archive laid out as
/// `/var/vcap/jobs/<name>`, with `bin/`, `config/`, …) and the packages it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job name.
    pub name: String,
    /// The job's fingerprint.
    pub version: String,
    /// The rendered templates.
    pub rendered: BlobRef,
    /// Names of the packages the job uses (`/var/vcap/jobs/<job>/packages/<p>` links).
    pub packages: Vec<String>,
}

/// A network of an instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// `manual`, `dynamic`, `vip`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The instance's IP.
    #[serde(default)]
    pub ip: String,
    /// Netmask (`255.255.255.0`).
    #[serde(default)]
    pub netmask: String,
    /// Gateway.
    #[serde(default)]
    pub gateway: String,
    /// DNS servers.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `dns`, `gateway` when this network provides them.
    #[serde(default)]
    pub default: Vec<String>,
    /// Cloud properties, as the cloud config says.
    #[serde(default)]
    pub cloud_properties: Value,
}

/// What an instance should run (`apply` and `prepare`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplySpec {
    /// Deployment name.
    pub deployment: String,
    /// Instance group name.
    pub name: String,
    /// The instance's id (a UUID).
    pub id: String,
    /// Its index in the group.
    pub index: u32,
    /// Its AZ.
    #[serde(default)]
    pub az: Option<String>,
    /// Whether it is the group's bootstrap instance.
    #[serde(default)]
    pub bootstrap: bool,
    /// Its networks.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Its jobs, in manifest order.
    #[serde(default)]
    pub jobs: Vec<JobSpec>,
    /// Every package any job needs, by name.
    #[serde(default)]
    pub packages: BTreeMap<String, PackageSpec>,
    /// Digest of everything rendered for this instance (change detection).
    #[serde(default)]
    pub configuration_hash: String,
    /// Persistent disk size in MB (0: none).
    #[serde(default)]
    pub persistent_disk: u64,
}

/// A process as the supervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// Job name.
    pub job: String,
    /// Process name (from `bpm.yml`).
    pub name: String,
    /// `running`, `starting`, `failing` or `stopped`.
    pub state: String,
    /// Seconds since it started (0 when not running).
    #[serde(default)]
    pub uptime: u64,
    /// How often it was restarted since `start`.
    #[serde(default)]
    pub restarts: u32,
    /// The process's pid while it runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The last lines of its stderr log (when it is failing), for error messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_stderr: Vec<String>,
    /// How its last run ended (`exited with status 1`, `killed by signal 9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// Machine vitals (BOSH's shape, numbers as strings).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vitals {
    /// 1, 5 and 15 minute load averages.
    #[serde(default)]
    pub load: Vec<String>,
    /// `{"user", "sys", "wait"}` percentages.
    #[serde(default)]
    pub cpu: BTreeMap<String, String>,
    /// `{"percent", "kb"}`.
    #[serde(default)]
    pub mem: BTreeMap<String, String>,
    /// `{"percent", "kb"}`.
    #[serde(default)]
    pub swap: BTreeMap<String, String>,
    /// `{"system": {"percent", "inode_percent"}, "ephemeral": …, "persistent": …}`.
    #[serde(default)]
    pub disk: BTreeMap<String, BTreeMap<String, String>>,
    /// `{"secs"}`.
    #[serde(default)]
    pub uptime: BTreeMap<String, u64>,
}

/// `get_state`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The agent's id.
    pub agent_id: String,
    /// `running` (every process running), `failing`, `starting` or `stopped`.
    pub job_state: String,
    /// Every supervised process.
    #[serde(default)]
    pub processes: Vec<ProcessState>,
    /// Vitals.
    #[serde(default)]
    pub vitals: Vitals,
    /// The applied spec's deployment, group, index, id (empty before the first apply).
    #[serde(default)]
    pub deployment: String,
    /// Instance group.
    #[serde(default)]
    pub name: String,
    /// Index.
    #[serde(default)]
    pub index: u32,
    /// Instance id.
    #[serde(default)]
    pub id: String,
    /// The configuration hash of the applied spec.
    #[serde(default)]
    pub configuration_hash: String,
}

/// A heartbeat on `hm.agent.heartbeat.<agent_id>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Deployment.
    pub deployment: String,
    /// Instance group (BOSH calls it `job`).
    pub job: String,
    /// Index.
    pub index: u32,
    /// Instance id.
    pub node_id: String,
    /// As in `get_state`.
    pub job_state: String,
    /// How many processes are supervised.
    pub number_of_processes: u32,
    /// Vitals.
    #[serde(default)]
    pub vitals: Vitals,
    /// Process states.
    #[serde(default)]
    pub processes: Vec<ProcessState>,
}

/// `compile_package`'s argument: compile `source` with its dependencies installed, upload the
/// result to `upload_url`, answer with the compiled archive's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileRequest {
    /// Package name.
    pub name: String,
    /// `<fingerprint>.<build>`.
    pub version: String,
    /// The source package archive (packaging script + files).
    pub source: BlobRef,
    /// Compiled dependencies (transitive), installed under `/var/vcap/packages/<name>`.
    pub dependencies: BTreeMap<String, PackageSpec>,
    /// A signed URL to `PUT` the compiled archive to.
    pub upload_url: String,
}

/// `run_errand`'s result (BOSH's shape): how the errand exited and the end of what it
/// wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrandResult {
    /// The exit code (128 + the signal when a signal ended it).
    pub exit_code: i32,
    /// Its stdout (the end, when long).
    pub stdout: String,
    /// Its stderr (the end, when long).
    pub stderr: String,
}

/// `compile_package`'s result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileResult {
    /// The compiled archive's id (sha256 hex).
    pub blob_id: String,
    /// Its size.
    pub size: u64,
    /// The last lines of the packaging script's output (for the task's debug log).
    #[serde(default)]
    pub log_tail: Vec<String>,
}

/// What the director answers to a blob `PUT` (a compiled package, logs), and what
/// `fetch_logs` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedBlob {
    /// The stored blob's id (sha256 hex of its content).
    pub blob_id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The settings file the CPI writes (`/var/vcap/bosh/settings.json` on the VM).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The agent's id.
    pub agent_id: String,
    /// The bus: `nats://user:password@host:port` (this agent's own credentials).
    pub mbus: String,
    /// The director's blob URLs are signed and absolute; this is where the director is.
    #[serde(default)]
    pub blobstore: BlobstoreSettings,
    /// Networks, as the CPI configured them.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Disks.
    #[serde(default)]
    pub disks: DiskSettings,
    /// The instance group's `env`, with the director's `bosh` settings.
    #[serde(default)]
    pub env: Value,
    /// The VM.
    #[serde(default)]
    pub vm: VmSettings,
    /// Seconds between heartbeats (30 unless the director says otherwise).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: u64,
}

fn default_heartbeat() -> u64 {
    30
}

/// Where the agent's blobs come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobstoreSettings {
    /// `director`.
    #[serde(default)]
    pub provider: String,
    /// The director's URL.
    #[serde(default)]
    pub endpoint: String,
    /// A PEM CA certificate to trust for it.
    #[serde(default)]
    pub ca_cert: Option<String>,
}

/// Disks of the VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSettings {
    /// Persistent disks by CID, with the CPI's hint (`{"path": …}` for the local CPI).
    #[serde(default)]
    pub persistent: BTreeMap<String, Value>,
}

/// The VM's name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSettings {
    /// The CPI's VM id.
    #[serde(default)]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_boshs_shape() {
        let value = serde_json::to_string(&Reply::Value(Value::from("pong"))).unwrap();
        assert_eq!(value, r#"{"value":"pong"}"#);
        let exception = serde_json::to_string(&Reply::exception("boom")).unwrap();
        assert_eq!(exception, r#"{"exception":{"message":"boom"}}"#);
        let parsed: Reply =
            serde_json::from_str(r#"{"value":{"agent_task_id":"t1","state":"running"}}"#).unwrap();
        let Reply::Value(v) = parsed else { panic!() };
        let handle: TaskHandle = serde_json::from_value(v).unwrap();
        assert_eq!(handle.agent_task_id, "t1");
    }
}
