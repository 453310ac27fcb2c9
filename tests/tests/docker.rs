//! Deploys on this host's Docker engine, through the real binaries: a director configured
//! for the Docker CPI (built in, or the `cpi` executable behind the external CPI), the
//! Debian stemcell `build-stemcell` makes, real agents in containers compiling and running
//! the `hello` release. Each test has its own director and its own /24 of 10.244.0.0/16.
//! The deploy through the external CPI also runs `director cck` on Docker: a paused
//! container and a removed one, found and fixed.
//!
//! These tests need Docker: without it they fail, never skip (`.ci/run` says so first).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::docker::{
    DockerUser, debian_stemcell, docker, quickstart_args, set_docker_cloud_config,
};
use tests::hello::{all_running, deploy, stage_tasks, steps};

/// The quickstart on Docker: upload the Debian stemcell (the CPI imports its image at
/// upload), deploy, check every process runs on the containers' addresses, deploy again
/// (nothing changes).
fn quickstart_on_docker(docker_user: &DockerUser, net: u8) {
    let user = &docker_user.user;
    let stemcell = debian_stemcell("1.1");
    let out = user.run(&["upload-stemcell", stemcell.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let images = docker(&[
        "images",
        "--filter",
        &format!("label=bosh.director={}", docker_user.director_id),
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    assert!(
        images.contains(":1.1"),
        "upload-stemcell gave the image to Docker: {images:?}"
    );
    set_docker_cloud_config(user, net);

    let args = quickstart_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, events, stderr) = deploy(user, Path::new(args[0]), &args[1..]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stage_tasks(&events, "Compiling packages", "finished").is_empty(),
        "packages were compiled in compilation containers"
    );
    let list = user.json(&["-d", "quickstart", "instances", "--ps"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:#?}");
    assert!(all_running(list), "{list:#?}");
    for instance in list {
        let ip = instance["ips"][0].as_str().unwrap_or_default().to_string();
        assert!(
            ip.starts_with(&format!("10.244.{net}.")),
            "{ip} is on the test's network"
        );
        let cid = instance["vm_cid"].as_str().unwrap();
        let inspected = docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            cid,
        ]);
        assert_eq!(
            inspected.trim(),
            ip,
            "container {cid} has the instance's address"
        );
        let labels = docker(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"bosh.deployment\"}} {{index .Config.Labels \"bosh.instance_group\"}} {{index .Config.Labels \"bosh.index\"}}",
            cid,
        ]);
        assert_eq!(
            labels.trim(),
            format!(
                "quickstart {} {}",
                instance["instance_group"].as_str().unwrap(),
                instance["index"]
            ),
            "container {cid} is labelled with its deployment, group and index"
        );
    }
    // The link consumer reaches the provider, container to container.
    let client = list
        .iter()
        .find(|i| i["instance_group"] == "hello-client")
        .unwrap();
    let client_cid = client["vm_cid"].as_str().unwrap();
    let started = Instant::now();
    let mut text = String::new();
    while !text.contains("hello, world!") && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        text = std::process::Command::new("docker")
            .args([
                "exec",
                client_cid,
                "cat",
                "/var/vcap/sys/log/hello-client/hello-client.stdout.log",
            ])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
    }
    assert!(text.contains("hello, world!"), "client log: {text:?}");

    let (code, events, stderr) = deploy(user, Path::new(args[0]), &args[1..]);
    assert_eq!(code, 0, "{stderr}");
    let stages: Vec<String> = steps(&events).into_iter().map(|(s, _, _)| s).collect();
    for busy in [
        "Compiling packages",
        "Creating missing vms",
        "Updating instance",
    ] {
        assert!(
            !stages.iter().any(|s| s == busy),
            "a no-op deploy ran '{busy}': {stages:?}"
        );
    }
}

fn quickstart_instances(user: &tests::User) -> Vec<Value> {
    let list = user.json(&["-d", "quickstart", "instances", "--ps"]);
    list.as_array().unwrap().clone()
}

/// `cck --report --json` of the quickstart: the exit code and the problems' types.
fn cck_report(user: &tests::User) -> (i32, Vec<String>) {
    let out = user.run(&["-d", "quickstart", "cck", "--report", "--json"]);
    let parsed: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    let types = parsed["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect();
    (out.code, types)
}

/// Waits up to 60 s until every instance runs; answers them.
fn all_running_again(user: &tests::User) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let list = quickstart_instances(user);
        if all_running(&list) {
            return list;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "every instance running: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `director cck` on Docker (the health monitor off, so only cck acts): a paused server
/// container is an `unresponsive_agent` that `--resolution recreate_vm` replaces (same IP,
/// same disk and its data, the old container gone); a container removed behind the
/// director's back is a `missing_vm` that `--auto` recreates.
fn cck_on_docker(docker_user: &DockerUser) {
    let user = &docker_user.user;
    assert_eq!(cck_report(user), (0, vec![]));
    let list = quickstart_instances(user);
    let server = list
        .iter()
        .find(|i| i["disk_cid"].is_string())
        .expect("a server with a persistent disk")
        .clone();
    let paused = server["vm_cid"].as_str().unwrap();
    docker(&[
        "exec",
        paused,
        "sh",
        "-c",
        "echo still here > /var/vcap/store/written-before.txt",
    ]);
    docker(&["pause", paused]);
    assert_eq!(
        cck_report(user),
        (2, vec!["unresponsive_agent".to_string()])
    );
    let out = user.run(&["-d", "quickstart", "cck", "--resolution", "recreate_vm"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let list = all_running_again(user);
    let back = list.iter().find(|i| i["id"] == server["id"]).unwrap();
    let new = back["vm_cid"].as_str().unwrap();
    assert_ne!(new, paused, "a new container");
    assert_eq!(back["ips"], server["ips"], "the same IP");
    assert_eq!(back["disk_cid"], server["disk_cid"], "the same disk");
    let kept = docker(&["exec", new, "cat", "/var/vcap/store/written-before.txt"]);
    assert_eq!(kept.trim(), "still here");
    let gone = std::process::Command::new("docker")
        .args(["inspect", paused])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the paused container was deleted");

    let removed = list
        .iter()
        .find(|i| i["id"] != server["id"])
        .unwrap()
        .clone();
    docker(&["rm", "-f", removed["vm_cid"].as_str().unwrap()]);
    assert_eq!(cck_report(user), (2, vec!["missing_vm".to_string()]));
    let out = user.run(&["-d", "quickstart", "cck", "--auto"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let list = all_running_again(user);
    let back = list.iter().find(|i| i["id"] == removed["id"]).unwrap();
    assert_ne!(back["vm_cid"], removed["vm_cid"]);
    assert_eq!(back["ips"], removed["ips"], "the same IP");
    assert_eq!(cck_report(user), (0, vec![]));
}

/// The host's address on Docker's default bridge (where containers reach the host).
fn docker0_address() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let address = text
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap_or_else(|| panic!("docker0 has no IPv4 address: {text:?}"));
    address.to_string()
}

#[test]
fn the_quickstart_deploys_on_docker() {
    let docker_user = DockerUser::start();
    let status = docker_user.user.json(&["status"]);
    let gateway = docker0_address();
    let agents = status["agents"].as_str().unwrap_or_default();
    assert!(
        agents.contains(&format!("nats://{}:", gateway.trim())),
        "status says agents reach the bus at the bridge gateway: {status:#}"
    );
    quickstart_on_docker(&docker_user, 21);
    docker_user.delete_deployment_and_orphaned_disks("quickstart", 2);
}

#[test]
fn the_quickstart_deploys_through_the_cpi_executable_driving_docker() {
    let gateway = docker0_address();
    let cpi = tests::target_dir().join("cpi");
    let docker_user = DockerUser::with_config(&format!(
        "cpi: {{type: external, command: {}, args: [--type, docker]}}\nagent: {{address: {}, heartbeat_interval: 1}}\nhealth_monitor: {{enabled: false}}\n",
        cpi.display(),
        gateway.trim()
    ));
    let status: Value = docker_user.user.json(&["status"]);
    assert_eq!(status["cpi"], "external", "{status:#}");
    quickstart_on_docker(&docker_user, 22);
    cck_on_docker(&docker_user);
    docker_user.delete_deployment_and_orphaned_disks("quickstart", 2);
}
