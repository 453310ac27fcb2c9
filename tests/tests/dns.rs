//! Health-aware DNS for links (`features.use_dns_addresses`), on the local CPI through the
//! real binaries: the director pushes the deployment's records to every agent (`sync_dns`),
//! each agent answers for them on its address, port 53, and the group name `q-s0…` answers
//! healthy instances only.
//!
//! - The consumer's rendered template names the provider group, not an instance's IP.
//! - Asked at the client's agent, `q-s0.hello-server.default.hello.bosh` answers both
//!   servers; an instance name answers its instance. The client itself reaches the servers
//!   by that name: its VM's resolver asks its agent first.
//! - `kill -9` of one server VM: within the health monitor's interval its address leaves
//!   the group's answer, and it returns once the resurrector has brought the VM back and its
//!   jobs run.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::User;
use tests::hello::{Hello, by_group, deploy, instances, set_cloud_config, upload_stemcell};

/// This test's loopback /24.
const NET: u8 = 55;
const GROUP: &str = "q-s0.hello-server.default.hello.bosh";

fn ip(instance: &Value) -> IpAddr {
    instance["ips"][0].as_str().unwrap().parse().unwrap()
}

/// What the client's agent answers for `name`.
fn ask(client: IpAddr, name: &str) -> Result<Vec<IpAddr>, String> {
    tests::dns::resolve(SocketAddr::new(client, 53), name)
}

/// Asks until the answer for `name` is `expected`, up to `limit`; answers how long it took.
/// On a timeout the panic shows the director's events and instances, to tell why.
fn wait_for_answer(
    user: &User,
    client: IpAddr,
    name: &str,
    expected: &[IpAddr],
    limit: Duration,
) -> Duration {
    let mut expected = expected.to_vec();
    expected.sort();
    let started = Instant::now();
    loop {
        let answer = ask(client, name);
        if answer.as_ref() == Ok(&expected) {
            return started.elapsed();
        }
        if started.elapsed() >= limit {
            let events = user.json(&["-d", "hello", "events"]);
            panic!(
                "{name} answering {expected:?} within {limit:?}; the last answer: {answer:?}\n\
                 events: {events:#}\ninstances: {:#}",
                Value::Array(instances(user))
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_group_name_answers_healthy_instances_and_follows_a_kill_and_a_resurrection() {
    let user = User::with_director_config(
        "agent: {heartbeat_interval: 1}\nhealth_monitor: {agent_timeout: 4, analyze_interval: 1, resurrector: {}}",
    );
    let host_resolver = std::fs::read_to_string("/etc/resolv.conf").ok();
    set_cloud_config(&user, NET);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let manifest = tests::hello::write_manifest(&user, &release, &Hello::default());
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        format!("features: {{use_dns_addresses: true}}\n{text}"),
    )
    .unwrap();
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");

    let list = instances(&user);
    let servers: Vec<Value> = by_group(&list, "hello-server")
        .into_iter()
        .cloned()
        .collect();
    let client = by_group(&list, "hello-client")[0].clone();
    let client_ip = ip(&client);

    // The link's address is the group's name.
    let script = tests::local_vm::job_file(
        &user,
        client["vm_cid"].as_str().unwrap(),
        "hello-client",
        "bin/hello-client",
    );
    let script = std::fs::read_to_string(&script).unwrap();
    assert!(script.contains(&format!("host=\"{GROUP}\"")), "{script}");

    // Both servers answer by the group's name, each by its own.
    let both: Vec<IpAddr> = servers.iter().map(ip).collect();
    wait_for_answer(&user, client_ip, GROUP, &both, Duration::from_secs(30));
    for server in &servers {
        let name = format!(
            "{}.hello-server.default.hello.bosh",
            server["id"].as_str().unwrap()
        );
        assert_eq!(ask(client_ip, &name), Ok(vec![ip(server)]), "{name}");
    }
    let index = format!("{}.hello-server.default.hello.bosh", servers[1]["index"]);
    assert_eq!(ask(client_ip, &index), Ok(vec![ip(&servers[1])]), "{index}");
    let upper = GROUP.to_uppercase();
    assert_eq!(
        ask(client_ip, &upper).map(|ips| ips.len()),
        Ok(2),
        "{upper}"
    );

    // The client resolves the name itself: its VM's resolver asks its agent first, and
    // the host's resolver is untouched.
    let said = tests::hello::client_says(&user, "hello");
    assert!(said.contains("hello"), "the client's output: {said}");
    let resolver = tests::local_vm::agent_root(&user, client["vm_cid"].as_str().unwrap())
        .join("bosh/resolv.conf");
    let resolver = std::fs::read_to_string(&resolver).unwrap();
    assert!(
        resolver.starts_with(&format!("nameserver {client_ip}\n")),
        "{resolver}"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").ok(),
        host_resolver
    );

    // Kill one server: it leaves the answer, then comes back resurrected.
    let victim = &servers[0];
    let survivor = ip(&servers[1]);
    tests::local_vm::signal_vm(&user, victim["vm_cid"].as_str().unwrap(), "-9");
    let gone = wait_for_answer(
        &user,
        client_ip,
        GROUP,
        &[survivor],
        Duration::from_secs(30),
    );
    println!(
        "the killed server left the answer {:.1} s after the kill",
        gone.as_secs_f64()
    );
    let back = wait_for_answer(&user, client_ip, GROUP, &both, Duration::from_secs(90));
    println!("and was back {:.1} s later", back.as_secs_f64());
    let list = instances(&user);
    let resurrected = list.iter().find(|i| i["id"] == victim["id"]).unwrap();
    assert_ne!(
        resurrected["vm_cid"], victim["vm_cid"],
        "a new VM: {resurrected:#?}"
    );
    assert_eq!(resurrected["ips"], victim["ips"]);
    assert_eq!(
        resurrected["agent"]["job_state"], "running",
        "{resurrected:#?}"
    );
}
