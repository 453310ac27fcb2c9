//! Simulated machines, to measure the director at fleet size on one small host (a test and
//! bench harness, never in the product path).
//!
//! - `fleet cpi DIR` is an external CPI (BOSH's JSON on stdin and stdout, one call per run)
//!   whose VMs are files `DIR/vms/<cid>.json` holding the agent id and its bus URL, and whose
//!   disks are files `DIR/disks/<cid>`. Nothing runs for a VM.
//! - `fleet agents DIR` serves, in one process, the agent of every VM file in `DIR/vms`
//!   (it looks every 200 ms; a VM file removed stops its agent): each its own bus connection
//!   with its own account, answering the calls a deploy makes (`ping`, `get_state`, `apply`,
//!   `prepare`, `drain`, `stop`, `start`, `run_script`, disks…) at once with what a real agent
//!   answers when all goes well, and heartbeating every `heartbeat_interval` seconds (from
//!   the VM's env), the first at a random point of the first interval. It compiles nothing
//!   and runs nothing: deploy only releases without packages to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_protocol::{
    AgentState, ApplySpec, Heartbeat, ProcessState, Reply, Request, agent_subject,
    heartbeat_subject,
};
use futures::StreamExt;
use serde_json::{Value, json};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["cpi", dir] => cpi(Path::new(dir)),
        ["agents", dir] => agents(Path::new(dir)),
        _ => {
            eprintln!("usage: fleet cpi DIR | fleet agents DIR");
            ExitCode::from(2)
        }
    }
}

// The CPI.

fn cpi(dir: &Path) -> ExitCode {
    let mut input = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input);
    let (result, error) = match serde_json::from_str::<Value>(&input) {
        Ok(request) => {
            let method = request["method"].as_str().unwrap_or_default().to_string();
            let args = request["arguments"].as_array().cloned().unwrap_or_default();
            match cpi_call(dir, &method, &args) {
                Ok(result) => (result, Value::Null),
                Err((kind, message)) => (
                    Value::Null,
                    json!({"type": kind, "message": message, "ok_to_retry": false}),
                ),
            }
        }
        Err(e) => (
            Value::Null,
            json!({"type": "InvalidCall", "message": format!("not a request: {e}"), "ok_to_retry": false}),
        ),
    };
    println!("{}", json!({"result": result, "error": error, "log": ""}));
    ExitCode::SUCCESS
}

type CpiResult = Result<Value, (&'static str, String)>;

fn text(args: &[Value], n: usize) -> String {
    args.get(n)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn vm_file(dir: &Path, cid: &str) -> PathBuf {
    dir.join("vms").join(format!("{cid}.json"))
}

fn cpi_call(dir: &Path, method: &str, args: &[Value]) -> CpiResult {
    let io = |e: std::io::Error| ("Bosh::Clouds::CloudError", e.to_string());
    match method {
        "info" => Ok(json!({"api_version": 2, "stemcell_formats": ["local"]})),
        "create_stemcell" => Ok(json!("fleet-stemcell")),
        "create_vm" => {
            let agent_id = text(args, 0);
            let env = args.get(5).cloned().unwrap_or(Value::Null);
            let cid = format!("fleet-{agent_id}");
            std::fs::create_dir_all(dir.join("vms")).map_err(io)?;
            let vm = json!({
                "agent_id": agent_id,
                "mbus": env["bosh"]["mbus"],
                "heartbeat_interval": env["bosh"]["heartbeat_interval"],
            });
            // Written whole, then renamed: the agents process never reads half a file.
            let staging = dir.join("vms").join(format!(".{cid}"));
            std::fs::write(&staging, vm.to_string()).map_err(io)?;
            std::fs::rename(&staging, vm_file(dir, &cid)).map_err(io)?;
            Ok(json!([cid, args.get(3).cloned().unwrap_or(Value::Null)]))
        }
        "delete_vm" => match std::fs::remove_file(vm_file(dir, &text(args, 0))) {
            Ok(()) => Ok(Value::Null),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err((
                "Bosh::Clouds::VMNotFound",
                format!("VM '{}' not found", text(args, 0)),
            )),
            Err(e) => Err(io(e)),
        },
        "has_vm" => Ok(json!(vm_file(dir, &text(args, 0)).is_file())),
        "find_vm_by_agent_id" => {
            let cid = format!("fleet-{}", text(args, 0));
            Ok(if vm_file(dir, &cid).is_file() {
                json!(cid)
            } else {
                Value::Null
            })
        }
        "create_disk" => {
            let cid = format!("fleet-disk-{}", std::process::id());
            std::fs::create_dir_all(dir.join("disks")).map_err(io)?;
            std::fs::write(dir.join("disks").join(&cid), "").map_err(io)?;
            Ok(json!(cid))
        }
        "has_disk" => Ok(json!(dir.join("disks").join(text(args, 0)).is_file())),
        "delete_disk" => {
            let _ = std::fs::remove_file(dir.join("disks").join(text(args, 0)));
            Ok(Value::Null)
        }
        "attach_disk" => Ok(json!({"path": "/dev/null"})),
        "get_disks" => Ok(json!([])),
        "delete_stemcell" | "reboot_vm" | "set_vm_metadata" | "set_disk_metadata"
        | "detach_disk" => Ok(Value::Null),
        other => Err(("InvalidCall", format!("Method is not known, got '{other}'"))),
    }
}

// The agents.

fn agents(dir: &Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(watch(dir.join("vms")));
    ExitCode::SUCCESS
}

/// Starts an agent for each new VM file and stops the agents of removed ones.
async fn watch(vms: PathBuf) {
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let mut seen = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&vms) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(cid) = name.strip_suffix(".json") else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                seen.push(cid.to_string());
                if running.contains_key(cid) {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                let Ok(vm) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                running.insert(cid.to_string(), tokio::spawn(serve(vm)));
            }
        }
        running.retain(|cid, task| {
            let keep = seen.contains(cid);
            if !keep {
                task.abort();
            }
            keep
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `nats://user:password@host:port` → (`nats://host:port`, user, password).
fn split_mbus(url: &str) -> (String, String, String) {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            (
                format!("nats://{host}"),
                user.to_string(),
                password.to_string(),
            )
        }
        None => (url.to_string(), String::new(), String::new()),
    }
}

/// What one simulated agent knows.
#[derive(Default)]
struct Machine {
    applied: Option<ApplySpec>,
    running: bool,
}

impl Machine {
    fn processes(&self) -> Vec<ProcessState> {
        let Some(spec) = &self.applied else {
            return Vec::new();
        };
        spec.jobs
            .iter()
            .map(|job| ProcessState {
                job: job.name.clone(),
                name: job.name.clone(),
                state: if self.running { "running" } else { "stopped" }.to_string(),
                uptime: 0,
                restarts: 0,
                pid: None,
                last_stderr: Vec::new(),
                last_exit: None,
            })
            .collect()
    }

    fn job_state(&self) -> &'static str {
        if self.running { "running" } else { "stopped" }
    }

    fn state(&self, agent_id: &str) -> AgentState {
        let spec = self.applied.as_ref();
        AgentState {
            agent_id: agent_id.to_string(),
            job_state: self.job_state().to_string(),
            processes: self.processes(),
            deployment: spec.map(|s| s.deployment.clone()).unwrap_or_default(),
            name: spec.map(|s| s.name.clone()).unwrap_or_default(),
            index: spec.map_or(0, |s| s.index),
            id: spec.map(|s| s.id.clone()).unwrap_or_default(),
            configuration_hash: spec
                .map(|s| s.configuration_hash.clone())
                .unwrap_or_default(),
            ..AgentState::default()
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        let spec = self.applied.as_ref();
        let processes = self.processes();
        Heartbeat {
            deployment: spec.map(|s| s.deployment.clone()).unwrap_or_default(),
            job: spec.map(|s| s.name.clone()).unwrap_or_default(),
            index: spec.map_or(0, |s| s.index),
            node_id: spec.map(|s| s.id.clone()).unwrap_or_default(),
            job_state: self.job_state().to_string(),
            number_of_processes: u32::try_from(processes.len()).unwrap_or(0),
            processes,
            ..Heartbeat::default()
        }
    }

    fn answer(&mut self, agent_id: &str, method: &str, arguments: &[Value]) -> Reply {
        match method {
            "ping" => Reply::Value(json!("pong")),
            "info" => Reply::Value(json!({"api_version": 1})),
            "get_state" => Reply::Value(serde_json::to_value(self.state(agent_id)).unwrap()),
            "apply" => match arguments
                .first()
                .map(|spec| serde_json::from_value::<ApplySpec>(spec.clone()))
            {
                Some(Ok(spec)) => {
                    self.applied = Some(spec);
                    Reply::Value(json!({}))
                }
                _ => Reply::exception("apply: expected an apply spec"),
            },
            "start" => {
                self.running = true;
                Reply::Value(json!("started"))
            }
            "stop" => {
                self.running = false;
                Reply::Value(json!({}))
            }
            "drain" => Reply::Value(json!(0)),
            "prepare" | "run_script" | "mount_disk" | "unmount_disk" | "update_settings"
            | "migrate_disk" => Reply::Value(json!({})),
            "list_disk" => Reply::Value(json!([])),
            "cancel_task" => Reply::Value(json!("finished")),
            // Records are taken (not served: no simulated agent answers DNS).
            "sync_dns" => Reply::Value(json!("synced")),
            other => Reply::exception(format!("fleet: '{other}' is not simulated")),
        }
    }
}

/// One agent: its bus connection, its requests and its heartbeats, until aborted.
async fn serve(vm: Value) {
    let agent_id = vm["agent_id"].as_str().unwrap_or_default().to_string();
    let (url, user, password) = split_mbus(vm["mbus"].as_str().unwrap_or_default());
    let interval = vm["heartbeat_interval"].as_u64().unwrap_or(30).max(1);
    let client = loop {
        let options = async_nats::ConnectOptions::new()
            .user_and_password(user.clone(), password.clone())
            .name(format!("fleet {agent_id}"));
        match options.connect(url.as_str()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let Ok(mut requests) = client.subscribe(agent_subject(&agent_id)).await else {
        return;
    };
    let machine = Arc::new(Mutex::new(Machine::default()));
    let beats = {
        let (client, machine, agent_id) = (client.clone(), machine.clone(), agent_id.clone());
        tokio::spawn(async move {
            // Spread the fleet's heartbeats over the interval.
            let first = agent_id.bytes().map(u64::from).sum::<u64>() * 7919 % (interval * 1000);
            tokio::time::sleep(Duration::from_millis(first)).await;
            let mut ticks = tokio::time::interval(Duration::from_secs(interval));
            loop {
                ticks.tick().await;
                let beat = machine.lock().unwrap().heartbeat();
                let payload = serde_json::to_vec(&beat).unwrap();
                let _ = client
                    .publish(heartbeat_subject(&agent_id), payload.into())
                    .await;
            }
        })
    };
    while let Some(message) = requests.next().await {
        let Ok(request) = serde_json::from_slice::<Request>(&message.payload) else {
            continue;
        };
        let reply = machine
            .lock()
            .unwrap()
            .answer(&agent_id, &request.method, &request.arguments);
        let payload = serde_json::to_vec(&reply).unwrap();
        let _ = client.publish(request.reply_to, payload.into()).await;
    }
    beats.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_urls_split_into_address_and_credentials() {
        assert_eq!(
            split_mbus("nats://agent-1:s3cret@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".to_string(),
                "agent-1".to_string(),
                "s3cret".to_string()
            )
        );
    }

    #[test]
    fn a_simulated_agent_runs_what_it_was_told_to() {
        let mut machine = Machine::default();
        assert_eq!(
            machine.answer("a", "ping", &[]),
            Reply::Value(json!("pong"))
        );
        assert_eq!(machine.state("a").job_state, "stopped");
        machine.answer("a", "start", &[]);
        assert_eq!(machine.state("a").job_state, "running");
        assert!(matches!(
            machine.answer("a", "fetch_logs", &[]),
            Reply::Exception(_)
        ));
    }
}
