//! The `hello` release deployed on a user's director: the helpers the deploy tests share
//! (cloud config on a loopback /24 of the test's own, local stemcells, a manifest with a
//! `hello-server` group and a `hello-client` consuming its link, deploys and their events).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{User, target_dir};

/// A local stemcell with the agent this build made.
pub fn stemcell(user: &User, version: &str, agent: Option<&Path>) -> PathBuf {
    let out = user.home.path().join(format!("stemcell-{version}.tgz"));
    let build = director_core::stemcell::local::AgentStemcell {
        agent: agent.map_or_else(|| target_dir().join("bosh-agent"), Path::to_path_buf),
        agent_json: None,
        os: "debian-bookworm".to_string(),
        version: version.to_string(),
    };
    build.write(&out).unwrap();
    out
}

pub fn upload_stemcell(user: &User, version: &str, agent: Option<&Path>) {
    let tarball = stemcell(user, version, agent);
    let out = user.run(&["upload-stemcell", tarball.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// The test's own cloud config: a loopback /24 no other test uses.
pub fn set_cloud_config(user: &User, net: u8) {
    let path = user.home.path().join("cloud.yml");
    std::fs::write(
        &path,
        format!(
            "azs: [{{name: z1}}, {{name: z2}}]
vm_types: [{{name: default}}]
networks:
- name: default
  type: manual
  subnets:
  - range: 127.0.{net}.0/24
    gateway: 127.0.{net}.1
    reserved: [127.0.{net}.2-127.0.{net}.9]
    azs: [z1, z2]
compilation: {{workers: 2, reuse_compilation_vms: true, az: z1, vm_type: default, network: default}}
"
        ),
    )
    .unwrap();
    let out = user.run(&["update-cloud-config", path.to_str().unwrap(), "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// The quickstart's cloud config (`manifests/cloud-config-local.yml`) moved to the test's
/// own loopback /24 (`127.0.NET.0/24`): the user's own quickstart on 127.0.10.0/24 may be
/// running on this host. Answers the quickstart manifest's path.
pub fn quickstart_on_own_network(user: &User, net: u8) -> PathBuf {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let cloud_config = std::fs::read_to_string(manifests.join("cloud-config-local.yml"))
        .unwrap()
        .replace("127.0.10.", &format!("127.0.{net}."));
    let path = user.home.path().join("cloud-config-local.yml");
    std::fs::write(&path, cloud_config).unwrap();
    let out = user.run(&["update-cloud-config", path.to_str().unwrap(), "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    manifests.join("quickstart.yml")
}

/// How the test deployment looks.
#[derive(Clone)]
pub struct Hello {
    /// See the manifest below.
    pub servers: u32,
    /// See the manifest below.
    pub greeting: &'static str,
    /// See the manifest below.
    pub port: u32,
    /// See the manifest below.
    pub max_in_flight: u32,
    /// See the manifest below.
    pub stemcell: &'static str,
    /// See the manifest below.
    pub server_azs: &'static str,
    /// Add the `smoke-test` errand group.
    pub errand: bool,
    /// The servers' `drain_seconds`.
    pub drain_seconds: u32,
    /// The servers' `persistent_disk` (MB).
    pub disk: u32,
}

impl Default for Hello {
    fn default() -> Hello {
        Hello {
            servers: 2,
            greeting: "hello",
            port: 8080,
            max_in_flight: 1,
            stemcell: "latest",
            server_azs: "[z1, z2]",
            errand: false,
            drain_seconds: 0,
            disk: 1024,
        }
    }
}

/// Writes the manifest to a file of its own (`hello-N.yml`).
pub fn write_manifest(user: &User, release: &Path, hello: &Hello) -> PathBuf {
    let n = std::fs::read_dir(user.home.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("hello-"))
        })
        .count();
    let path = user.home.path().join(format!("hello-{n}.yml"));
    std::fs::write(
        &path,
        format!(
            "name: hello
releases:
- {{name: hello, version: create, url: 'file://{release}'}}
stemcells:
- {{alias: default, os: debian-bookworm, version: '{stemcell}'}}
update: {{canaries: 1, max_in_flight: {mif}, canary_watch_time: 1000-20000, update_watch_time: 1000-20000}}
instance_groups:
- name: hello-server
  azs: {server_azs}
  instances: {servers}
  vm_type: default
  stemcell: default
  persistent_disk: {disk}
  networks: [{{name: default}}]
  jobs:
  - name: hello-server
    release: hello
    properties:
      greeting: {greeting}
      port: {port}
      drain_seconds: {drain_seconds}
      admin_password: ((admin_password))
- name: hello-client
  azs: [z1]
  instances: 1
  vm_type: default
  stemcell: default
  networks: [{{name: default}}]
  jobs:
  - name: hello-client
    release: hello
    properties: {{interval: 1}}
{errand}variables:
- {{name: admin_password, type: password}}
",
            release = release.display(),
            stemcell = hello.stemcell,
            mif = hello.max_in_flight,
            servers = hello.servers,
            greeting = hello.greeting,
            port = hello.port,
            server_azs = hello.server_azs,
            drain_seconds = hello.drain_seconds,
            disk = hello.disk,
            errand = if hello.errand {
                "- name: smoke-test
  lifecycle: errand
  azs: [z1]
  instances: 1
  vm_type: default
  stemcell: default
  networks: [{name: default}]
  jobs:
  - name: hello-smoke-test
    release: hello
"
            } else {
                ""
            },
        ),
    )
    .unwrap();
    path
}

/// The text of a manifest [`write_manifest`] wrote, for the API: its release is the one
/// uploaded (`version: create` is the CLI's).
pub fn manifest_for_api(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(
            |line| match line.starts_with("- {name: hello, version: create") {
                true => "- {name: hello, version: latest}",
                false => line,
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// Deploys; returns the exit code, the task's events and stderr.
pub fn deploy(user: &User, manifest: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let mut args = vec!["deploy", manifest.to_str().unwrap(), "-n", "--json"];
    args.extend_from_slice(extra);
    let out = user.run(&args);
    let events = out
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (out.code, events, out.stderr)
}

/// `(stage, task, state)` of every step event.
pub fn steps(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["state"] == "started" || e["state"] == "finished" || e["state"] == "failed")
        .map(|e| {
            (
                e["stage"].as_str().unwrap_or("").to_string(),
                e["task"].as_str().unwrap_or("").to_string(),
                e["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

pub fn stage_tasks(events: &[Value], stage: &str, state: &str) -> Vec<String> {
    steps(events)
        .into_iter()
        .filter(|(s, _, st)| s == stage && st == state)
        .map(|(_, task, _)| task)
        .collect()
}

pub fn instances(user: &User) -> Vec<Value> {
    user.json(&["-d", "hello", "instances", "--ps"])
        .as_array()
        .unwrap()
        .clone()
}

pub fn by_group<'a>(list: &'a [Value], group: &str) -> Vec<&'a Value> {
    list.iter()
        .filter(|i| i["instance_group"] == group)
        .collect()
}

pub fn all_running(list: &[Value]) -> bool {
    list.iter().all(|i| {
        i["agent"]["job_state"] == "running"
            && i["agent"]["processes"]
                .as_array()
                .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["state"] == "running"))
    })
}

/// What the client logged (its stdout), waiting until it says `expected`.
pub fn client_says(user: &User, expected: &str) -> String {
    let list = instances(user);
    let client = by_group(&list, "hello-client")[0];
    let log = user
        .data_dir()
        .join("cpi/vms")
        .join(client["vm_cid"].as_str().unwrap())
        .join("vcap/sys/log/hello-client/hello-client.stdout.log");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(expected) || started.elapsed() > Duration::from_secs(30) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn ids(list: &[&Value], field: &str) -> Vec<String> {
    list.iter().map(|i| i[field].to_string()).collect()
}

/// Waits (up to two minutes) until task `id` has started updating an instance; panics if
/// the task fails first.
pub async fn until_an_update_starts(client: &director_api::client::Client, id: i64) {
    let started = Instant::now();
    loop {
        let chunk = client
            .task_output(id, director_api::tasks::OutputKind::Event, 0)
            .await
            .unwrap();
        let seen: Vec<Value> = chunk
            .text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!(
            !seen.iter().any(|e| e.get("error").is_some()),
            "task {id} failed: {seen:?}"
        );
        if seen
            .iter()
            .any(|e| e["stage"] == "Updating instance" && e["state"] == "started")
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "task {id} did not start updating: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
