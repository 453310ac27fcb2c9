//! The `etcd` release end to end on the local CPI: `manifests/etcd.yml` (3 members, one
//! node at a time) deployed through a real director, real agents and Debian's real etcd,
//! on this test file's own loopback /24s (127.0.73.0/24 and 127.0.74.0/24).
//!
//! - a cluster of 3 started members forms from the `etcd` link, with TLS for clients and
//!   peers from the deployment's certificate variables;
//! - a deploy that restarts every member, while a client writes a key every 100 ms, loses
//!   no write: the drain scripts keep quorum, the client moves to another member only when
//!   a connection cannot be made;
//! - a member whose persistent disk was wiped comes back as a new member of the cluster;
//! - with one member down, a deploy fails at the next member's drain rather than stop it;
//! - `delete-deployment` leaves no etcd running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::User;
use tests::etcd::{EtcdClient, Tls, Writer, client_urls};
use tests::hello::{all_running, deploy, stage_tasks};

/// The deployment's name in `manifests/etcd.yml`.
const DEPLOYMENT: &str = "etcd";

/// A user's director with the etcd deployment of `manifests/etcd.yml` on `127.0.NET.0/24`,
/// deployed; its vars store and a client of the cluster (the `etcd_client_tls`
/// certificate).
struct Deployed {
    user: User,
    manifest: PathBuf,
    vars: PathBuf,
    /// Ops files every deploy of the test applies.
    ops: Vec<PathBuf>,
    client: Arc<EtcdClient>,
    runtime: tokio::runtime::Runtime,
}

impl Deployed {
    /// Deploys with `properties` (name, value) set on the etcd job by ops files, for this
    /// and every later deploy of the test.
    fn new(net: u8, properties: &[(&str, &str)]) -> Deployed {
        let user = User::new();
        let release = tests::etcd::release(&user);
        let manifest = tests::etcd::manifest(&user, net, &release);
        let ops: Vec<PathBuf> = properties
            .iter()
            .map(|(name, value)| property_ops(&user, name, value))
            .collect();
        let vars = user.home.path().join("etcd-vars.yml");
        let started = Instant::now();
        let (code, _, stderr) = deploy_etcd(&user, &manifest, &vars, &ops);
        assert_eq!(code, 0, "{stderr}");
        eprintln!(
            "etcd on 127.0.{net}.0/24: first deploy (3 members) took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let tls = Tls::from_vars_store(&user, &vars, "etcd_client_tls");
        let client = EtcdClient::new(client_urls(&user, DEPLOYMENT), &tls).unwrap();
        Deployed {
            user,
            manifest,
            vars,
            ops,
            client: Arc::new(client),
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// Deploys again, with the test's ops files and these properties changed.
    fn deploy(&self, properties: &[(&str, &str)]) -> (i32, Vec<Value>, String) {
        let mut ops = self.ops.clone();
        ops.extend(
            properties
                .iter()
                .map(|(name, value)| property_ops(&self.user, name, value)),
        );
        deploy_etcd(&self.user, &self.manifest, &self.vars, &ops)
    }

    fn instances(&self) -> Vec<Value> {
        let mut list = self
            .user
            .json(&["-d", DEPLOYMENT, "instances", "--ps"])
            .as_array()
            .unwrap()
            .clone();
        list.sort_by_key(|i| i["index"].as_u64());
        list
    }

    /// Waits (up to 30 s) until the cluster lists `count` started members and answers them.
    fn started_members(&self, count: usize) -> Vec<tests::etcd::Member> {
        let started = Instant::now();
        loop {
            let members = self.runtime.block_on(self.client.members());
            match members {
                Ok(members)
                    if members.len() == count
                        && members.iter().all(tests::etcd::Member::started) =>
                {
                    return members;
                }
                other if started.elapsed() > Duration::from_secs(30) => {
                    panic!("the cluster never listed {count} started members: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Deletes the deployment and checks that nothing of it runs any more: no instance, no
    /// VM of the local CPI, no process left with the deployment's addresses, and no member
    /// answering.
    fn delete_and_check_nothing_runs(&self, net: u8) {
        let out = self
            .user
            .run(&["-d", DEPLOYMENT, "delete-deployment", "-n"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let deployments = self.user.json(&["deployments"]);
        assert_eq!(deployments, serde_json::json!([]), "{deployments:#}");
        let vms = std::fs::read_dir(self.user.data_dir().join("cpi/vms"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(vms, 0, "the local CPI still has VMs");
        let prefix = format!("127.0.{net}.");
        let processes = processes_mentioning(&prefix);
        assert!(processes.is_empty(), "still running: {processes:#?}");
        for url in client_urls_from_manifest(&self.manifest) {
            let address = url.trim_start_matches("https://");
            assert!(
                std::net::TcpStream::connect_timeout(
                    &address.parse().unwrap(),
                    Duration::from_secs(2)
                )
                .is_err(),
                "something still listens on {address}"
            );
        }
    }
}

/// The members' client URLs, from the manifest's static IPs.
fn client_urls_from_manifest(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("static_ips:"))
        .expect("the manifest gives static IPs");
    line.split(['[', ']', ','])
        .map(str::trim)
        .filter(|part| part.starts_with("127."))
        .map(|ip| format!("https://{ip}:2379"))
        .collect()
}

/// `director deploy MANIFEST --vars-store VARS -o OPS…`.
fn deploy_etcd(
    user: &User,
    manifest: &Path,
    vars: &Path,
    ops: &[PathBuf],
) -> (i32, Vec<Value>, String) {
    let mut args = vec!["--vars-store", vars.to_str().unwrap()];
    for file in ops {
        args.extend(["-o", file.to_str().unwrap()]);
    }
    deploy(user, manifest, &args)
}

/// An ops file of the user's that sets the etcd job's property `name` to `value`.
fn property_ops(user: &User, name: &str, value: &str) -> PathBuf {
    let path = user.home.path().join(format!("{name}-{value}.yml"));
    std::fs::write(
        &path,
        format!(
            "- type: replace\n  path: /instance_groups/name=etcd/jobs/name=etcd/properties/{name}?\n  value: {value}\n"
        ),
    )
    .unwrap();
    path
}

/// The command lines of this host's processes that mention `text`.
fn processes_mentioning(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if line.contains(text) {
            found.push(format!("{}: {line}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// The instance ids of the `etcd` group, by index.
fn instance_ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_all_running(list: &[Value]) {
    assert_eq!(list.len(), 3, "{list:#?}");
    assert!(all_running(list), "{list:#?}");
    for instance in list {
        let processes: Vec<&str> = instance["agent"]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(processes, ["etcd"], "{instance:#}");
    }
}

#[test]
fn etcd_forms_a_cluster_and_rolls_every_member_under_load_without_a_failed_write() {
    let net = 73;
    let test_started = Instant::now();
    let cluster = Deployed::new(net, &[]);
    let list = cluster.instances();
    assert_all_running(&list);

    // 3 started members, named after the instance ids, on the instances' addresses.
    let members = cluster.started_members(3);
    let mut names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    let mut ids = instance_ids(&list);
    ids.sort();
    assert_eq!(names, ids);
    let mut peers: Vec<String> = members.iter().map(|m| m.peer_urls.join(",")).collect();
    peers.sort();
    let expected: Vec<String> = list
        .iter()
        .map(|i| format!("https://{}:2380", i["ips"][0].as_str().unwrap()))
        .collect();
    assert_eq!(peers, expected);
    eprintln!(
        "cluster formed: {} started members ({:.1} s into the test)",
        members.len(),
        test_started.elapsed().as_secs_f64()
    );

    // 1,000 keys, 8 writers at a time.
    let phase = Instant::now();
    cluster.runtime.block_on(async {
        let mut writers = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let client = cluster.client.clone();
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
    eprintln!("wrote 1,000 keys in {:.1} s", phase.elapsed().as_secs_f64());

    // A property every member renders: the deploy restarts all three, one at a time, while
    // a writer writes a key every 100 ms.
    let phase = Instant::now();
    let writer = Writer::start(
        cluster.client.clone(),
        "roll/",
        Duration::from_millis(100),
        Duration::from_secs(300),
    );
    // Writes before the roll begins, so the writer runs through all of it.
    std::thread::sleep(Duration::from_secs(1));
    let (code, events, stderr) = cluster.deploy(&[("snapshot_count", "50000")]);
    std::thread::sleep(Duration::from_secs(1));
    let report = writer.stop();
    assert_eq!(code, 0, "{stderr}");
    let updated = stage_tasks(&events, "Updating instance", "finished");
    assert_eq!(updated.len(), 3, "every member restarts: {events:#?}");
    eprintln!(
        "rolling deploy under load: {} writes acknowledged, {} failed writes, {} failovers, {} dropped proposals sent again, slowest write {} ms, {:.1} s",
        report.acknowledged.len(),
        report.failed.len(),
        cluster.client.failovers(),
        cluster.client.resent(),
        report.slowest.as_millis(),
        phase.elapsed().as_secs_f64()
    );
    assert_eq!(report.failed, vec![], "writes failed during the roll");
    assert!(
        report.acknowledged.len() >= 50,
        "the writer ran through the roll: {} writes",
        report.acknowledged.len()
    );
    assert!(
        cluster.client.failovers() >= 1,
        "the client's member stopped during the roll, so it moved"
    );
    assert_all_running(&cluster.instances());

    // Every key is there: the 1,000 and each acknowledged one, with its value.
    let initial = cluster
        .runtime
        .block_on(cluster.client.range("initial/"))
        .unwrap();
    assert_eq!(initial.len(), 1000);
    for (key, value) in &initial {
        let n: u32 = key.trim_start_matches("initial/").parse().unwrap();
        assert_eq!(value, &format!("value-{n}"));
    }
    let rolled = cluster
        .runtime
        .block_on(cluster.client.range("roll/"))
        .unwrap();
    let present: std::collections::BTreeMap<String, String> = rolled.into_iter().collect();
    for key in &report.acknowledged {
        let n: u64 = key.trim_start_matches("roll/").parse().unwrap();
        assert_eq!(
            present.get(key),
            Some(&n.to_string()),
            "acknowledged {key} is missing"
        );
    }
    cluster.started_members(3);

    let phase = Instant::now();
    cluster.delete_and_check_nothing_runs(net);
    eprintln!(
        "delete-deployment took {:.1} s; the whole test {:.1} s",
        phase.elapsed().as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_wiped_member_rejoins_as_a_new_member_and_a_drain_never_costs_quorum() {
    let net = 74;
    let test_started = Instant::now();
    // A short drain timeout, so that the drain that must fail fails soon: a drain script
    // runs as the instance's current job rendered it.
    let cluster = Deployed::new(net, &[("drain_timeout", "5")]);
    let list = cluster.instances();
    assert_all_running(&list);
    let before = cluster.started_members(3);
    cluster
        .runtime
        .block_on(cluster.client.put("kept", "through the wipe"))
        .unwrap();

    // Stop instance 1, empty its persistent disk (the local CPI's disk is a directory of
    // the host), start it again.
    let phase = Instant::now();
    let wiped = &list[1];
    let id = wiped["id"].as_str().unwrap();
    let old_member = before.iter().find(|m| m.name == id).unwrap().clone();
    let out = cluster
        .user
        .run(&["-d", DEPLOYMENT, "stop", &format!("etcd/{id}")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let disk = cluster
        .user
        .data_dir()
        .join("cpi/disks")
        .join(wiped["disk_cid"].as_str().unwrap());
    let data = disk.join("etcd");
    assert!(
        data.join("member").is_dir(),
        "the member's data is on its persistent disk: {}",
        data.display()
    );
    std::fs::remove_dir_all(&data).unwrap();
    let out = cluster
        .user
        .run(&["-d", DEPLOYMENT, "start", &format!("etcd/{id}")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_all_running(&cluster.instances());

    // Same name, a new member id; the old one is gone; the data came back from the others.
    let after = cluster.started_members(3);
    let new_member = after.iter().find(|m| m.name == id).unwrap();
    assert_ne!(new_member.id, old_member.id, "{after:#?}");
    assert_eq!(new_member.peer_urls, old_member.peer_urls);
    assert!(!after.iter().any(|m| m.id == old_member.id), "{after:#?}");
    assert!(
        data.join("member").is_dir(),
        "the member wrote its data again"
    );
    let tls = Tls::from_vars_store(&cluster.user, &cluster.vars, "etcd_client_tls");
    let only_the_new_member = EtcdClient::new(new_member.client_urls.clone(), &tls).unwrap();
    let value = cluster
        .runtime
        .block_on(only_the_new_member.get("kept"))
        .unwrap();
    assert_eq!(value.as_deref(), Some("through the wipe"));
    let pre_start = std::fs::read_to_string(
        cluster
            .user
            .data_dir()
            .join("cpi/vms")
            .join(cluster.instances()[1]["vm_cid"].as_str().unwrap())
            .join("vcap/sys/log/etcd/pre-start.stderr.log"),
    )
    .unwrap();
    assert!(
        pre_start.contains("it ran before, and its data is gone with this disk"),
        "{pre_start}"
    );
    eprintln!(
        "wiped member rejoined as a new member in {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    // With instance 2 stopped the cluster cannot spare another member: a deploy that
    // restarts the members fails at the first running member's drain (after its
    // drain_timeout) instead of stopping it, and removes nothing.
    let phase = Instant::now();
    let id = list[2]["id"].as_str().unwrap();
    let out = cluster
        .user
        .run(&["-d", DEPLOYMENT, "stop", &format!("etcd/{id}")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (code, _, stderr) = cluster.deploy(&[("snapshot_count", "60000")]);
    assert_ne!(code, 0, "the deploy went through: {stderr}");
    assert!(
        stderr.contains("stopping") && stderr.contains("now could lose quorum, so the drain fails"),
        "{stderr}"
    );
    let running: Vec<String> = client_urls(&cluster.user, DEPLOYMENT)
        .into_iter()
        .take(2)
        .collect();
    let survivors = EtcdClient::new(running.clone(), &tls).unwrap();
    for url in running {
        let only = EtcdClient::new(vec![url.clone()], &tls).unwrap();
        cluster
            .runtime
            .block_on(only.put("after the refused drain", &url))
            .unwrap_or_else(|e| panic!("{url} no longer takes writes: {e}"));
    }
    let members = cluster.runtime.block_on(survivors.members()).unwrap();
    assert_eq!(members.len(), 3, "the drain removed nothing: {members:#?}");
    eprintln!(
        "the drain refused to stop a member the cluster could not spare ({:.1} s)",
        phase.elapsed().as_secs_f64()
    );

    cluster.delete_and_check_nothing_runs(net);
    eprintln!(
        "the whole test {:.1} s",
        test_started.elapsed().as_secs_f64()
    );
}
