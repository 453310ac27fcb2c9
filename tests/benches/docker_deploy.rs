//! Benchmark (not a test): deploying 20 instances of a trivial job on Docker against the
//! floor, starting 20 containers of the same image directly, in parallel.
//!
//! A director with the Docker CPI deploys the `hello` release's `hello-server` (one
//! instance, compiled once in a warm-up deploy, so compilation is cached) and then 20
//! `hello-client` instances (no packages, one process each) at `max_in_flight: 20`,
//! `canaries: 0`: the measured deploy creates 20 VMs, waits for their agents, applies and
//! starts the job and watches it running. The floor is `docker run -d` of 20 containers of
//! the stemcell's image on a bridge network, all at once, each running `sleep`, until the
//! last one has started. Prints both times and their ratio (aim: 1.5 or less).
//!
//! Run with `cargo bench --profile dev -p tests --bench docker_deploy` (after `cargo build
//! --workspace`: it drives the `director` binary built beside it). `INSTANCES=n` changes 20.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::docker::{DockerUser, debian_stemcell, docker};
use tests::hello::deploy;

fn manifest(path: &Path, release: &Path, clients: usize) {
    std::fs::write(
        path,
        format!(
            "name: bench
releases:
- {{name: hello, version: create, url: 'file://{release}'}}
stemcells:
- {{alias: default, os: debian-bookworm, version: latest}}
update: {{canaries: 0, max_in_flight: 20, canary_watch_time: 1000-30000, update_watch_time: 1000-30000}}
instance_groups:
- name: hello-server
  azs: [z1]
  instances: 1
  vm_type: default
  stemcell: default
  networks: [{{name: default}}]
  jobs:
  - name: hello-server
    release: hello
    properties: {{admin_password: ((admin_password))}}
- name: hello-client
  azs: [z1]
  instances: {clients}
  vm_type: default
  stemcell: default
  networks: [{{name: default}}]
  jobs:
  - name: hello-client
    release: hello
variables:
- {{name: admin_password, type: password}}
",
            release = release.display()
        ),
    )
    .unwrap();
}

/// Starts `count` containers of `image` on a fresh bridge network at once; answers how long
/// until the last one runs. Everything it made is removed afterwards.
fn floor(image: &str, count: usize) -> Duration {
    let network = format!("bench-floor-{}", std::process::id());
    docker(&["network", "create", "--subnet", "10.244.31.0/24", &network]);
    let names: Vec<String> = (0..count)
        .map(|i| format!("bench-floor-{}-{i}", std::process::id()))
        .collect();
    let started = Instant::now();
    let children: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ip = format!("10.244.31.{}", 10 + i);
            Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--init",
                    "--name",
                    name,
                    "--network",
                    &network,
                    "--ip",
                    &ip,
                    image,
                    "sleep",
                    "infinity",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "docker run failed");
    }
    let took = started.elapsed();
    let mut remove = vec!["rm", "-f"];
    remove.extend(names.iter().map(String::as_str));
    docker(&remove);
    docker(&["network", "rm", &network]);
    took
}

fn main() {
    let clients: usize = std::env::var("INSTANCES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let docker_user = DockerUser::start();
    let user = &docker_user.user;
    let stemcell = debian_stemcell("1.1");
    let out = user.run(&["upload-stemcell", stemcell.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    tests::docker::set_docker_cloud_config(user, 30);
    let release = user.hello_release();
    let path = user.home.path().join("bench.yml");

    // Warm-up: compile hello-server's packages once.
    manifest(&path, &release, 0);
    let (code, _, stderr) = deploy(user, &path, &[]);
    assert_eq!(code, 0, "{stderr}");

    manifest(&path, &release, clients);
    let started = Instant::now();
    let (code, _, stderr) = deploy(user, &path, &[]);
    let deployed = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    let out = user.run(&["-d", "bench", "delete-deployment", "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let image = docker(&[
        "images",
        "--filter",
        &format!("label=bosh.director={}", docker_user.director_id),
        "--format",
        "{{.ID}}",
    ]);
    let image = image
        .lines()
        .next()
        .expect("the stemcell's image")
        .to_string();
    let direct = floor(&image, clients);
    println!(
        "deploy of {clients} instances on Docker: {:.1} s; {clients} containers started directly in parallel: {:.1} s; ratio {:.2}",
        deployed.as_secs_f64(),
        direct.as_secs_f64(),
        deployed.as_secs_f64() / direct.as_secs_f64()
    );
}
