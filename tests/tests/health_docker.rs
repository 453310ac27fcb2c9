//! The resurrector on Docker, through the real binaries: a director with the Docker CPI whose
//! agents heartbeat every second and which calls an agent silent for 4 s unresponsive.
//!
//! - `docker kill` of a quickstart server: within 90 s it is recreated with the same IP, its
//!   processes run, and a file written on its persistent disk before is still there. The
//!   quickstart runs with `features.use_dns_addresses`: the client reaches the servers by
//!   their group's name through its container's resolver, and the killed server leaves the
//!   name's answer and returns after its resurrection.
//! - Fencing: `docker network disconnect` of a server (alive, unreachable): the resurrector
//!   replaces it; a sampler watching the disk's volume every 100 ms never sees two running
//!   containers on it, and the old container is gone.
//!
//! These tests need Docker: without it they fail, never skip.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::docker::{
    DockerUser, debian_stemcell, docker, quickstart_args, set_docker_cloud_config,
};
use tests::hello::deploy;

fn director() -> DockerUser {
    DockerUser::with_config(
        "cpi: {type: docker}\nagent: {heartbeat_interval: 1}\nhealth_monitor: {agent_timeout: 4, analyze_interval: 1}\n",
    )
}

/// Deploys the quickstart on `net`; `extra` are more deploy arguments (ops files).
fn quickstart(docker_user: &DockerUser, net: u8, extra: &[&str]) {
    let user = &docker_user.user;
    let stemcell = debian_stemcell("1.1");
    let out = user.run(&["upload-stemcell", stemcell.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    set_docker_cloud_config(user, net);
    let args = quickstart_args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let (code, _, stderr) = deploy(user, Path::new(args[0]), &args[1..]);
    assert_eq!(code, 0, "{stderr}");
}

/// An ops file turning `features.use_dns_addresses` on.
fn dns_ops(docker_user: &DockerUser) -> String {
    let path = docker_user.user.home.path().join("use-dns.yml");
    std::fs::write(
        &path,
        "- type: replace\n  path: /features?/use_dns_addresses\n  value: true\n",
    )
    .unwrap();
    path.display().to_string()
}

/// The servers' addresses the client's agent answers for the group name.
fn servers_by_name(client_ip: &str) -> Result<Vec<IpAddr>, String> {
    let server = SocketAddr::new(client_ip.parse().unwrap(), 53);
    tests::dns::resolve(server, "q-s0.hello-server.default.quickstart.bosh")
}

/// Waits up to `limit` until the group name answers `expected` (sorted).
fn wait_for_servers(client_ip: &str, expected: &[IpAddr], limit: Duration) {
    let started = Instant::now();
    loop {
        let answer = servers_by_name(client_ip);
        if answer.as_deref() == Ok(expected) {
            println!(
                "the group name answered {expected:?} after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{expected:?} within {limit:?}; the last answer: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn instances(docker_user: &DockerUser) -> Vec<Value> {
    docker_user
        .user
        .json(&["-d", "quickstart", "instances", "--ps"])
        .as_array()
        .unwrap()
        .clone()
}

/// A server of the quickstart (it has a persistent disk).
fn a_server(docker_user: &DockerUser) -> Value {
    instances(docker_user)
        .into_iter()
        .find(|i| i["disk_cid"].is_string())
        .expect("an instance with a persistent disk")
}

/// Waits up to 90 s until instance `victim` runs on another VM; answers it.
fn recreated(docker_user: &DockerUser, victim: &Value) -> Value {
    let started = Instant::now();
    loop {
        let list = instances(docker_user);
        if let Some(back) = list.iter().find(|i| {
            i["id"] == victim["id"]
                && i["vm_cid"] != victim["vm_cid"]
                && i["agent"]["job_state"] == "running"
        }) {
            println!(
                "recreated and running {:.1} s after the failure",
                started.elapsed().as_secs_f64()
            );
            return back.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "recreated within 90 s: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn hm_actions(docker_user: &DockerUser) -> Vec<String> {
    let events = docker_user.user.json(&["-d", "quickstart", "events"]);
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["user"] == "hm")
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_killed_container_comes_back_with_its_ip_and_its_disks_data() {
    let docker_user = director();
    let ops = dns_ops(&docker_user);
    quickstart(&docker_user, 24, &["-o", &ops]);
    let list = instances(&docker_user);
    let client = list
        .iter()
        .find(|i| i["instance_group"] == "hello-client")
        .unwrap();
    let client_ip = client["ips"][0].as_str().unwrap().to_string();
    let mut servers: Vec<IpAddr> = list
        .iter()
        .filter(|i| i["instance_group"] == "hello-server")
        .map(|i| i["ips"][0].as_str().unwrap().parse().unwrap())
        .collect();
    servers.sort();
    // Health-aware DNS on Docker: the client's agent answers both servers by the group's
    // name, and the client reaches them by it through its container's resolver.
    wait_for_servers(&client_ip, &servers, Duration::from_secs(30));
    let client_cid = client["vm_cid"].as_str().unwrap();
    let resolver = docker(&["exec", client_cid, "cat", "/etc/resolv.conf"]);
    assert!(
        resolver.starts_with(&format!("nameserver {client_ip}\n")),
        "{resolver}"
    );
    let script = docker(&[
        "exec",
        client_cid,
        "cat",
        "/var/vcap/jobs/hello-client/bin/hello-client",
    ]);
    assert!(
        script.contains("host=\"q-s0.hello-server.default.quickstart.bosh\""),
        "{script}"
    );
    let log = "/var/vcap/sys/log/hello-client/hello-client.stdout.log";
    let started = Instant::now();
    while !docker(&["exec", client_cid, "cat", log]).contains("hello") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the client reaching a server by name"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let victim = a_server(&docker_user);
    let old = victim["vm_cid"].as_str().unwrap();
    docker(&[
        "exec",
        old,
        "sh",
        "-c",
        "echo still here > /var/vcap/store/written-before.txt",
    ]);
    docker(&["kill", old]);
    let victim_ip: IpAddr = victim["ips"][0].as_str().unwrap().parse().unwrap();
    let survivors: Vec<IpAddr> = servers
        .iter()
        .copied()
        .filter(|ip| *ip != victim_ip)
        .collect();
    wait_for_servers(&client_ip, &survivors, Duration::from_secs(30));

    let back = recreated(&docker_user, &victim);
    wait_for_servers(&client_ip, &servers, Duration::from_secs(30));
    assert_eq!(back["ips"], victim["ips"], "the same IP");
    assert_eq!(back["disk_cid"], victim["disk_cid"], "the same disk");
    let new = back["vm_cid"].as_str().unwrap();
    let kept = docker(&["exec", new, "cat", "/var/vcap/store/written-before.txt"]);
    assert_eq!(kept.trim(), "still here");
    let inspected = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        new,
    ]);
    assert_eq!(inspected.trim(), victim["ips"][0].as_str().unwrap());
    let actions = hm_actions(&docker_user);
    assert!(
        actions
            .iter()
            .any(|a| a == "unresponsive agent" || a == "missing vm"),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| a == "resurrect"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "recreate"), "{actions:?}");
    docker_user.delete_deployment_and_orphaned_disks("quickstart", 2);
}

#[test]
fn an_unreachable_container_is_fenced_off_its_disk_before_its_replacement_starts() {
    let docker_user = director();
    quickstart(&docker_user, 25, &[]);
    let victim = a_server(&docker_user);
    let old = victim["vm_cid"].as_str().unwrap().to_string();
    let volume = victim["disk_cid"].as_str().unwrap().to_string();
    let network = docker(&[
        "inspect",
        "--format",
        "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
        &old,
    ])
    .trim()
    .to_string();

    // The volume's running users, sampled every 100 ms while the resurrector works.
    let done = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let sampler = {
        let (done, samples, volume) = (done.clone(), samples.clone(), volume.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let users = docker(&[
                    "ps",
                    "--filter",
                    &format!("volume={volume}"),
                    "--format",
                    "{{.ID}}",
                ]);
                let users: Vec<String> = users.lines().map(str::to_string).collect();
                samples.lock().unwrap().push(users);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    docker(&["network", "disconnect", &network, &old]);
    let back = recreated(&docker_user, &victim);
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();

    let samples = samples.lock().unwrap();
    assert!(samples.len() > 10, "the sampler ran: {samples:?}");
    let crowded: Vec<&Vec<String>> = samples.iter().filter(|users| users.len() > 1).collect();
    assert!(
        crowded.is_empty(),
        "two running containers on volume {volume}: {crowded:?}"
    );
    let old_left = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={old}"),
        "--format",
        "{{.ID}}",
    ]);
    assert!(
        old_left.trim().is_empty(),
        "the old container is gone: {old_left}"
    );
    let new = back["vm_cid"].as_str().unwrap();
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Name}} {{end}}",
        new,
    ]);
    assert!(mounts.contains(&volume), "{mounts}");
    assert_eq!(back["ips"], victim["ips"], "the same IP");
    let actions = hm_actions(&docker_user);
    assert!(
        actions.iter().any(|a| a == "unresponsive agent"),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| a == "recreate"), "{actions:?}");
    docker_user.delete_deployment_and_orphaned_disks("quickstart", 2);
}
