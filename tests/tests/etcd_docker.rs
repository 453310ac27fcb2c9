//! The `etcd` release on Docker: `manifests/etcd.yml` (3 members, one node at a time) on a
//! director with the Docker CPI, booting from the Debian stemcell, on 10.244.23.0/24.
//!
//! - 1,000 keys written; a new stemcell version uploaded and deployed: every container is
//!   recreated, one at a time, while a client writes a key every 100 ms (moving to another
//!   member only on connection errors); no write fails and every key is there afterwards;
//! - `docker kill` of a member's container, then `director deploy --fix`: a new container
//!   with the same volume, the member's data intact, the member back in the cluster;
//! - `delete-deployment` leaves only the orphaned disks' volumes, `clean-up --all` nothing.
//!
//! Needs Docker: without it this fails, never skips.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::User;
use tests::docker::{DockerUser, debian_stemcell, docker, set_docker_cloud_config};
use tests::etcd::{EtcdClient, Member, Tls, Writer, client_urls};
use tests::hello::{all_running, deploy, stage_tasks};

const NET: u8 = 23;
const DEPLOYMENT: &str = "etcd";

/// `manifests/etcd.yml` on `10.244.NET.0/24` (static IPs and certificate names), with the
/// release at `release`; deploys use `manifests/ops/docker-stemcell.yml`.
fn manifest(user: &User, release: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(repo.join("manifests/etcd.yml"))
        .unwrap()
        .replace("127.0.10.", &format!("10.244.{NET}."))
        .replace(
            "file://../releases/etcd",
            &format!("file://{}", release.display()),
        );
    let path = user.home.path().join("etcd.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn deploy_etcd(
    user: &User,
    manifest: &Path,
    vars: &Path,
    extra: &[&str],
) -> (i32, Vec<Value>, String) {
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/ops/docker-stemcell.yml");
    let mut args = vec![
        "--vars-store",
        vars.to_str().unwrap(),
        "-o",
        ops.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    deploy(user, manifest, &args)
}

fn instances(user: &User) -> Vec<Value> {
    let mut list = user
        .json(&["-d", DEPLOYMENT, "instances", "--ps"])
        .as_array()
        .unwrap()
        .clone();
    list.sort_by_key(|i| i["index"].as_u64());
    list
}

fn vm_cids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|i| i["vm_cid"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (up to 60 s) until `client` lists 3 started members. When they do not, the
/// failure quotes the end of every member's etcd logs.
fn three_started_members(
    runtime: &tokio::runtime::Runtime,
    client: &EtcdClient,
    docker_user: &DockerUser,
) -> Vec<Member> {
    let started = Instant::now();
    loop {
        match runtime.block_on(client.members()) {
            Ok(members) if members.len() == 3 && members.iter().all(Member::started) => {
                return members;
            }
            other if started.elapsed() > Duration::from_secs(60) => {
                let label = format!("label=bosh.director={}", docker_user.director_id);
                let containers = docker(&["ps", "-q", "--filter", &label]);
                let logs: Vec<String> = containers
                    .lines()
                    .map(|id| {
                        let tail = std::process::Command::new("docker")
                            .args([
                                "exec",
                                id,
                                "sh",
                                "-c",
                                "tail -n 40 /var/vcap/sys/log/etcd/*.log",
                            ])
                            .output()
                            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                            .unwrap_or_default();
                        format!("--- {id}\n{tail}")
                    })
                    .collect();
                panic!(
                    "the cluster never listed 3 started members: {other:?}\n{}",
                    logs.join("\n")
                )
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[test]
fn etcd_on_docker_rolls_a_new_stemcell_under_load_and_a_killed_member_comes_back_with_its_data() {
    let docker_user = DockerUser::start();
    let user = &docker_user.user;
    let stemcell = debian_stemcell("1.1");
    let out = user.run(&["upload-stemcell", stemcell.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    set_docker_cloud_config(user, NET);
    let release = tests::etcd::release(user);
    let manifest = manifest(user, &release);
    let vars = user.home.path().join("etcd-vars.yml");
    let started = Instant::now();
    let (code, _, stderr) = deploy_etcd(user, &manifest, &vars, &[]);
    assert_eq!(code, 0, "{stderr}");
    eprintln!(
        "etcd on Docker: first deploy took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let list = instances(user);
    assert_eq!(list.len(), 3, "{list:#?}");
    assert!(all_running(&list), "{list:#?}");
    let tls = Tls::from_vars_store(user, &vars, "etcd_client_tls");
    let client = Arc::new(EtcdClient::new(client_urls(user, DEPLOYMENT), &tls).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    three_started_members(&runtime, &client, &docker_user);

    // 1,000 keys, 8 writers at a time.
    runtime.block_on(async {
        let mut writers = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let client = client.clone();
            writers.spawn(async move {
                for n in (worker..1000).step_by(8) {
                    let key = format!("initial/{n:04}");
                    client
                        .put(&key, &format!("value-{n}"))
                        .await
                        .unwrap_or_else(|e| panic!("writing {key}: {e}"));
                }
            });
        }
        while let Some(joined) = writers.join_next().await {
            joined.unwrap();
        }
    });

    // A new stemcell version: every container is recreated, one at a time, under load.
    let newer = debian_stemcell("1.2");
    let out = user.run(&["upload-stemcell", newer.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = vm_cids(&list);
    let phase = Instant::now();
    let writer = Writer::start(
        client.clone(),
        "roll/",
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (code, events, stderr) = deploy_etcd(user, &manifest, &vars, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let report = writer.stop();
    assert_eq!(code, 0, "{stderr}");
    eprintln!(
        "stemcell roll on Docker under load: {} writes acknowledged, failed writes: {}, {} failovers, slowest write {} ms, {:.1} s",
        report.acknowledged.len(),
        report.failed.len(),
        client.failovers(),
        report.slowest.as_millis(),
        phase.elapsed().as_secs_f64()
    );
    assert_eq!(report.failed, vec![], "writes failed during the roll");
    let updated = stage_tasks(&events, "Updating instance", "finished");
    assert_eq!(updated.len(), 3, "every member is updated: {events:#?}");
    let list = instances(user);
    assert!(all_running(&list), "{list:#?}");
    let after = vm_cids(&list);
    for cid in &after {
        assert!(
            !before.contains(cid),
            "{cid} was not recreated: {before:?} → {after:?}"
        );
        let image = docker(&["inspect", "--format", "{{.Config.Image}}", cid]);
        let tags = docker(&[
            "image",
            "inspect",
            "--format",
            "{{join .RepoTags \" \"}}",
            image.trim(),
        ]);
        assert!(tags.contains(":1.2"), "{cid} runs stemcell 1.2: {tags}");
    }
    let initial = runtime.block_on(client.range("initial/")).unwrap();
    assert_eq!(initial.len(), 1000, "the 1,000 keys are there");
    let rolled: std::collections::BTreeMap<String, String> = runtime
        .block_on(client.range("roll/"))
        .unwrap()
        .into_iter()
        .collect();
    for key in &report.acknowledged {
        assert!(rolled.contains_key(key), "acknowledged {key} is missing");
    }
    three_started_members(&runtime, &client, &docker_user);

    // docker kill, then deploy --fix: the member comes back on its volume.
    let victim = &list[1];
    let victim_cid = victim["vm_cid"].as_str().unwrap().to_string();
    let victim_url = format!("https://{}:2379", victim["ips"][0].as_str().unwrap());
    docker(&["kill", &victim_cid]);
    let (code, _, stderr) = deploy_etcd(user, &manifest, &vars, &["--fix"]);
    assert_eq!(code, 0, "{stderr}");
    let list = instances(user);
    assert!(all_running(&list), "{list:#?}");
    let replaced = list[1]["vm_cid"].as_str().unwrap();
    assert_ne!(
        replaced, victim_cid,
        "--fix recreated the killed member's container"
    );
    let alone = EtcdClient::new(vec![victim_url.clone()], &tls).unwrap();
    let members = three_started_members(&runtime, &alone, &docker_user);
    assert_eq!(members.len(), 3);
    let value = runtime
        .block_on(alone.get("initial/0999"))
        .unwrap_or_else(|e| panic!("reading from {victim_url}: {e}"));
    assert_eq!(value.as_deref(), Some("value-999"), "its data is intact");
    let status = runtime.block_on(alone.range("roll/")).unwrap();
    assert_eq!(
        status.len(),
        rolled.len(),
        "it serves every key written during the roll"
    );

    // delete-deployment: the containers and networks go, the orphaned disks' volumes stay
    // until clean-up --all.
    docker_user.delete_deployment_and_orphaned_disks(DEPLOYMENT, 3);
}
