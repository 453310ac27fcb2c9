//! Benchmark (not a test): a no-op `director deploy` of a deployment with 200 instances on
//! the local CPI (200 VMs, 200 agents, 200 running `hello-server` processes, the embedded
//! bus, SQLite), timed over several runs; prints the median and the time per instance.
//! Run as root (local VMs get mount namespaces) with
//! `cargo bench -p director --bench noop_deploy` (it builds the release agent when missing).
//! Setting `NOOP_DEPLOY_INSTANCES` changes the size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn director(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_director"));
        command
            .env("XDG_DATA_HOME", self.home.path().join("data"))
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("NO_COLOR", "1")
            .env("CI", "true")
            .env_remove("DIRECTOR_URL")
            .env_remove("DIRECTOR_TOKEN")
            .current_dir(self.home.path());
        command
    }

    fn run(&self, args: &[&str]) -> Duration {
        let started = Instant::now();
        let output = self
            .director()
            .args(args)
            .output()
            .expect("director starts");
        assert!(
            output.status.success(),
            "director {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self
            .director()
            .args(["-d", "bench", "delete-deployment", "-n", "--force"])
            .output();
        let _ = self.director().arg("stop-server").output();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if ["dev_releases", ".dev_builds", "blobs"].contains(&name.to_str().unwrap_or("")) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The release `bosh-agent`, built when this bench's build did not make it.
fn agent() -> PathBuf {
    let director = PathBuf::from(env!("CARGO_BIN_EXE_director"));
    let agent = director.with_file_name("bosh-agent");
    if !agent.is_file() {
        let profile = if director.parent().is_some_and(|d| d.ends_with("release")) {
            "--release"
        } else {
            "--profile=dev"
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", profile, "-p", "agent", "--bin", "bosh-agent"])
            .status()
            .unwrap();
        assert!(status.success(), "building bosh-agent failed");
    }
    agent
}

fn main() {
    let instances: usize = std::env::var("NOOP_DEPLOY_INSTANCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let env = Env {
        home: tempfile::tempdir().unwrap(),
    };
    let home = env.home.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");

    std::fs::write(
        home.join("cloud.yml"),
        "azs: [{name: z1}]
vm_types: [{name: default}]
networks:
- name: default
  type: manual
  subnets:
  - range: 127.0.60.0/23
    gateway: 127.0.60.1
    reserved: [127.0.60.2-127.0.60.9]
    az: z1
compilation: {workers: 2, reuse_compilation_vms: true, az: z1, vm_type: default, network: default}
",
    )
    .unwrap();
    env.run(&["update-cloud-config", "cloud.yml", "-n"]);
    let stemcell = home.join("stemcell.tgz");
    director_core::stemcell::local::AgentStemcell {
        agent: agent(),
        agent_json: None,
        os: "debian-bookworm".to_string(),
        version: "1".to_string(),
    }
    .write(&stemcell)
    .unwrap();
    env.run(&["upload-stemcell", "stemcell.tgz"]);
    let release = home.join("hello");
    copy_dir(&repo.join("releases/hello"), &release);
    for args in [
        vec!["init", "-q"],
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-qm",
            "hello",
        ],
    ] {
        assert!(
            Command::new("git")
                .args(&args)
                .current_dir(&release)
                .status()
                .unwrap()
                .success()
        );
    }
    std::fs::write(
        home.join("bench.yml"),
        format!(
            "name: bench
releases: [{{name: hello, version: create, url: 'file://{}'}}]
stemcells: [{{alias: default, os: debian-bookworm, version: latest}}]
update: {{canaries: 1, max_in_flight: 20, canary_watch_time: 500-20000, update_watch_time: 500-20000}}
instance_groups:
- name: hello-server
  azs: [z1]
  instances: {instances}
  vm_type: default
  stemcell: default
  networks: [{{name: default}}]
  jobs:
  - name: hello-server
    release: hello
    properties: {{admin_password: secret, drain_seconds: 0}}
",
            release.display()
        ),
    )
    .unwrap();
    let first = env.run(&["deploy", "bench.yml", "-n"]);
    eprintln!(
        "first deploy of {instances} instances: {:.1} s",
        first.as_secs_f64()
    );
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| env.run(&["deploy", "bench.yml", "-n"]))
        .collect();
    runs.sort();
    let median = runs[runs.len() / 2];
    println!(
        "no-op deploy of {instances} instances: median {:.0} ms over {} runs (min {:.0} ms, max {:.0} ms), {:.2} ms per instance",
        median.as_secs_f64() * 1000.0,
        runs.len(),
        runs[0].as_secs_f64() * 1000.0,
        runs[runs.len() - 1].as_secs_f64() * 1000.0,
        median.as_secs_f64() * 1000.0 / instances as f64
    );
}
