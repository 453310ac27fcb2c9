//! The health monitor and the resurrector, on the local CPI through the real binaries: a
//! director whose agents heartbeat every second and which calls an agent silent for 4 s
//! unresponsive.
//!
//! - Every instance of a fresh deploy is judged healthy (`director instances` shows it).
//!   `kill -9` of one VM's whole process tree (the agent and its jobs): an `hm` event says
//!   the agent is unresponsive, the resurrector's `scan and fix` task recreates the VM with
//!   the same IP and persistent disk within 90 s, its processes run, a file written on the
//!   disk before is still there, and the events tell the story.
//! - Meltdown: 2 of 3 instances killed with a threshold of 2 and 50 %: nothing is recreated
//!   and an event says why with the counts; once the 20 s window has passed, both are.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::User;
use tests::hello::{Hello, by_group, deploy, instances, set_cloud_config, upload_stemcell};

/// This test's loopback /24.
const NET: u8 = 49;

fn health(instance: &Value) -> &str {
    instance["health"]["state"].as_str().unwrap_or("-")
}

/// A director with fast heartbeats, a 4 s agent timeout and `resurrector` settings.
fn director(resurrector: &str) -> User {
    User::with_director_config(&format!(
        "agent: {{heartbeat_interval: 1}}\nhealth_monitor: {{agent_timeout: 4, analyze_interval: 1, resurrector: {resurrector}}}"
    ))
}

/// The hello deployment on `net` with two servers (each with a persistent disk) and a
/// client: three VMs.
fn deploy_hello(user: &User, net: u8) {
    set_cloud_config(user, net);
    upload_stemcell(user, "1", None);
    let release = user.hello_release();
    let manifest = tests::hello::write_manifest(user, &release, &Hello::default());
    let (code, _, stderr) = deploy(user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
}

fn hm_events(user: &User) -> Vec<Value> {
    let events = user.json(&["-d", "hello", "events"]);
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["user"] == "hm")
        .cloned()
        .collect()
}

/// Whether `list` shows instance `victim` running on a VM other than the one it had.
fn back_on_a_new_vm(list: &[Value], victim: &Value) -> bool {
    list.iter().any(|i| {
        i["id"] == victim["id"]
            && i["vm_cid"] != victim["vm_cid"]
            && i["agent"]["job_state"] == "running"
    })
}

/// Waits until the health monitor has judged every instance healthy.
fn wait_until_healthy(user: &User) {
    wait_for(
        user,
        Duration::from_secs(30),
        "every instance healthy",
        |list| list.iter().all(|i| health(i) == "healthy"),
    );
}

/// Waits up to 30 s for an `hm` event with `action`; answers every `hm` event then.
fn wait_for_event(user: &User, action: &str) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let events = hm_events(user);
        if events.iter().any(|e| e["action"] == action) {
            return events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "an '{action}' event: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits up to `limit` for `done` to hold of the instances; answers them.
fn wait_for(
    user: &User,
    limit: Duration,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let list = instances(user);
        if done(&list) {
            return list;
        }
        assert!(
            started.elapsed() < limit,
            "{what} within {limit:?}: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `kill -9` of local VM `vm_cid`'s whole process tree.
fn kill_vm(user: &User, vm_cid: &str) {
    tests::local_vm::signal_vm(user, vm_cid, "-9");
}

#[test]
fn a_killed_vm_comes_back_with_its_ip_and_disk_and_the_events_tell_the_story() {
    let user = director("{}");
    deploy_hello(&user, NET);
    wait_until_healthy(&user);
    let out = user.run(&["-d", "hello", "instances"]);
    assert!(out.stdout.contains("Health"), "{}", out.stdout);
    assert!(out.stdout.contains("healthy"), "{}", out.stdout);

    let before = instances(&user);
    let victim = by_group(&before, "hello-server")[0].clone();
    let id = victim["id"].as_str().unwrap().to_string();
    let disk = victim["disk_cid"]
        .as_str()
        .expect("a persistent disk")
        .to_string();
    let kept = tests::local_vm::disk_dir(&user, &disk).join("written-before.txt");
    std::fs::write(&kept, "still here\n").unwrap();

    let killed = Instant::now();
    kill_vm(&user, victim["vm_cid"].as_str().unwrap());
    let list = wait_for(
        &user,
        Duration::from_secs(90),
        "the instance recreated and running",
        |list| back_on_a_new_vm(list, &victim),
    );
    println!(
        "recreated and running {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let back = list.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(back["ips"], victim["ips"], "the same IP");
    assert_eq!(back["disk_cid"], victim["disk_cid"], "the same disk");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "still here\n");
    for other in list.iter().filter(|i| i["id"] != id.as_str()) {
        assert!(
            before.iter().any(|i| i["vm_cid"] == other["vm_cid"]),
            "only the killed VM was replaced: {other:#?}"
        );
    }

    // The story: unresponsive, a scan and fix decided, the instance recreated by hm.
    let story = wait_for_event(&user, "recreate");
    let name = format!("hello-server/{id}");
    let unresponsive = story
        .iter()
        .find(|e| e["action"] == "unresponsive agent")
        .unwrap_or_else(|| panic!("{story:#?}"));
    assert_eq!(unresponsive["object_name"], name.as_str());
    assert_eq!(unresponsive["deployment"], "hello");
    assert!(
        unresponsive["context"]["silent_for_s"].as_u64().unwrap() >= 4,
        "{story:#?}"
    );
    let resurrect = story
        .iter()
        .find(|e| e["action"] == "resurrect")
        .unwrap_or_else(|| panic!("{story:#?}"));
    assert_eq!(resurrect["object_type"], "deployment");
    assert!(
        resurrect["context"]["instances"][0]
            .as_str()
            .unwrap()
            .starts_with(&name),
        "{story:#?}"
    );
    let recreate = story.iter().find(|e| e["action"] == "recreate").unwrap();
    assert!(recreate["task"].is_i64(), "{story:#?}");
    assert_eq!(recreate["context"]["instances"][0], name.as_str());
    let tasks = user.json(&["tasks", "--recent", "--all"]);
    let task = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == recreate["task"])
        .unwrap_or_else(|| panic!("{tasks:#?}"));
    assert_eq!(task["description"], "scan and fix", "{task:#?}");
    assert_eq!(task["user"], "hm", "{task:#?}");
    assert_eq!(task["state"], "done", "{task:#?}");
    // Nobody else was judged unhealthy.
    assert!(
        story
            .iter()
            .filter(|e| e["object_type"] == "instance" && e["action"] != "recreate")
            .all(|e| e["object_name"] == name.as_str()),
        "{story:#?}"
    );
}

#[test]
fn a_meltdown_recreates_nothing_and_says_why_until_the_window_has_passed() {
    let user = director("{minimum_down_jobs: 2, percent_threshold: 0.5, time_threshold: 20}");
    deploy_hello(&user, NET + 1);
    wait_until_healthy(&user);
    let before = instances(&user);
    let servers = by_group(&before, "hello-server");
    let victims: Vec<String> = servers
        .iter()
        .map(|i| i["vm_cid"].as_str().unwrap().to_string())
        .collect();
    let killed = Instant::now();
    for vm_cid in &victims {
        kill_vm(&user, vm_cid);
    }

    let events = wait_for_event(&user, "meltdown");
    let meltdown = events.iter().find(|e| e["action"] == "meltdown").unwrap();
    assert_eq!(meltdown["object_type"], "deployment");
    assert_eq!(meltdown["context"]["down"], 2, "{meltdown:#?}");
    assert_eq!(meltdown["context"]["instances"], 3, "{meltdown:#?}");
    assert_eq!(meltdown["context"]["minimum_down_jobs"], 2, "{meltdown:#?}");
    assert!(
        meltdown["context"]["why"]
            .as_str()
            .unwrap()
            .contains("2 of 3"),
        "{meltdown:#?}"
    );

    // Inside the window nothing is recreated.
    while killed.elapsed() < Duration::from_secs(15) {
        let list = instances(&user);
        for vm_cid in &victims {
            assert!(
                list.iter().any(|i| i["vm_cid"] == vm_cid.as_str()),
                "recreated during a meltdown: {list:#?}"
            );
        }
        assert!(!hm_events(&user).iter().any(|e| e["action"] == "resurrect"));
        std::thread::sleep(Duration::from_millis(500));
    }

    // Once the window has passed, healing resumes.
    wait_for(
        &user,
        Duration::from_secs(90),
        "both servers recreated and running",
        |list| {
            let servers = by_group(list, "hello-server");
            servers.len() == 2
                && servers.iter().all(|i| {
                    !victims.iter().any(|v| i["vm_cid"] == v.as_str())
                        && i["agent"]["job_state"] == "running"
                })
        },
    );
}

#[test]
fn update_resurrection_pauses_the_resurrector_and_on_ends_a_meltdown() {
    let user = director("{minimum_down_jobs: 2, percent_threshold: 0.5, time_threshold: 600}");
    deploy_hello(&user, NET + 2);
    wait_until_healthy(&user);

    // Paused: a killed VM is reported and left alone.
    let out = user.run(&["update-resurrection", "off"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("resurrection paused"), "{}", out.stderr);
    let before = instances(&user);
    let client = by_group(&before, "hello-client")[0].clone();
    kill_vm(&user, client["vm_cid"].as_str().unwrap());
    wait_for(
        &user,
        Duration::from_secs(30),
        "the client unresponsive",
        |list| {
            list.iter()
                .any(|i| i["id"] == client["id"] && health(i) == "unresponsive agent")
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !hm_events(&user).iter().any(|e| e["action"] == "resurrect"),
        "nothing is recreated while resurrection is paused"
    );

    // Resumed: the client comes back.
    let out = user.run(&["update-resurrection", "on"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    wait_for(
        &user,
        Duration::from_secs(90),
        "the client recreated",
        |list| back_on_a_new_vm(list, &client),
    );

    // Two of three down within the window: a meltdown, which `on` ends.
    let servers: Vec<String> = by_group(&instances(&user), "hello-server")
        .iter()
        .map(|i| i["vm_cid"].as_str().unwrap().to_string())
        .collect();
    for vm_cid in &servers {
        kill_vm(&user, vm_cid);
    }
    wait_for_event(&user, "meltdown");
    std::thread::sleep(Duration::from_secs(3));
    let list = instances(&user);
    for vm_cid in &servers {
        assert!(
            list.iter().any(|i| i["vm_cid"] == vm_cid.as_str()),
            "recreated during a meltdown: {list:#?}"
        );
    }
    let out = user.run(&["update-resurrection", "on"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    wait_for(
        &user,
        Duration::from_secs(90),
        "both servers recreated",
        |list| {
            let servers_now = by_group(list, "hello-server");
            servers_now.iter().all(|i| {
                !servers.iter().any(|v| i["vm_cid"] == v.as_str())
                    && i["agent"]["job_state"] == "running"
            })
        },
    );
    let events = user.json(&["events"]);
    let switches: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["object_type"] == "resurrection")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(switches, ["resume", "resume", "pause"], "newest first");
}

#[test]
fn the_resurrection_config_leaves_the_groups_it_turns_off_alone() {
    let user = director("{}");
    deploy_hello(&user, NET + 3);
    let rules = user.home.path().join("resurrection.yml");
    std::fs::write(
        &rules,
        "rules:\n- enabled: false\n  include: {instance_groups: [hello-client]}\n",
    )
    .unwrap();
    let out = user.run(&[
        "update-config",
        "--type",
        "resurrection",
        rules.to_str().unwrap(),
        "-n",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = user.run(&["config", "--type", "resurrection"]);
    assert!(out.stdout.contains("hello-client"), "{}", out.stdout);
    wait_until_healthy(&user);

    let before = instances(&user);
    let client = by_group(&before, "hello-client")[0].clone();
    let server = by_group(&before, "hello-server")[0].clone();
    kill_vm(&user, client["vm_cid"].as_str().unwrap());
    kill_vm(&user, server["vm_cid"].as_str().unwrap());
    let list = wait_for(
        &user,
        Duration::from_secs(90),
        "the server recreated",
        |list| back_on_a_new_vm(list, &server),
    );
    let left = list.iter().find(|i| i["id"] == client["id"]).unwrap();
    assert_eq!(left["vm_cid"], client["vm_cid"], "the client is left alone");
    assert_eq!(health(left), "unresponsive agent", "{left:#?}");
    let resurrected: Vec<Value> = hm_events(&user)
        .into_iter()
        .filter(|e| e["action"] == "resurrect")
        .collect();
    assert!(
        resurrected.iter().all(|e| {
            let named = e["context"]["instances"].to_string();
            named.contains("hello-server/") && !named.contains("hello-client/")
        }),
        "{resurrected:#?}"
    );

    // A config that does not read is refused, with its place.
    std::fs::write(&rules, "rules:\n- include: {instance_groups: [x]}\n").unwrap();
    let out = user.run(&[
        "update-config",
        "--type",
        "resurrection",
        rules.to_str().unwrap(),
        "-n",
    ]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("missing required key 'enabled'"),
        "{}",
        out.stderr
    );
}

/// The pid of the process in local VM `vm_cid` whose command line holds `needle`.
fn process_in_vm(user: &User, vm_cid: &str, needle: &str) -> Option<String> {
    tests::local_vm::vm_processes(user, vm_cid)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
}

/// The director's SQLite state (the database and its write-ahead log), copied to or from
/// `to` while the director is down.
fn copy_state(from: &std::path::Path, to: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let name = format!("state.db{suffix}");
        let _ = std::fs::remove_file(to.join(&name));
        if from.join(&name).exists() {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn a_failing_process_is_reported_not_resurrected_and_rogue_agents_are_reported_once() {
    let mut user = director("{}");
    set_cloud_config(&user, 56);
    upload_stemcell(&user, "1", None);
    // A backup of the director's database from before the deploy, restored below.
    let backup = user.home.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    user.kill_director();
    copy_state(&user.data_dir(), &backup);
    user.start_director_again("director-2.log");

    let release = user.hello_release();
    let manifest = tests::hello::write_manifest(&user, &release, &Hello::default());
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    wait_until_healthy(&user);
    let before = instances(&user);
    let server = by_group(&before, "hello-server")[0].clone();
    let vm_cid = server["vm_cid"].as_str().unwrap().to_string();
    let name = format!("hello-server/{}", server["id"].as_str().unwrap());

    // The server's configuration goes away and the server is killed: every restart the
    // agent makes fails, so the agent says the process is failing.
    let config =
        tests::local_vm::job_file(&user, &vm_cid, "hello-server", "config/hello-server.conf");
    let away = config.with_extension("conf.away");
    std::fs::rename(&config, &away).unwrap();
    let pid = process_in_vm(&user, &vm_cid, "bin/hello-server").expect("the server's process");
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    let list = wait_for(
        &user,
        Duration::from_secs(30),
        "the server failing",
        |list| {
            list.iter()
                .any(|i| i["vm_cid"] == vm_cid.as_str() && health(i) == "failing")
        },
    );
    let out = user.run(&["-d", "hello", "instances"]);
    assert!(out.stdout.contains("failing"), "{}", out.stdout);
    assert!(
        list.iter()
            .filter(|i| i["vm_cid"] != vm_cid.as_str())
            .all(|i| health(i) == "healthy"),
        "{list:#?}"
    );
    let events = wait_for_event(&user, "failing");
    let failing = events.iter().find(|e| e["action"] == "failing").unwrap();
    assert_eq!(failing["object_name"], name.as_str(), "{failing:#?}");
    assert_eq!(failing["context"]["was"], "healthy", "{failing:#?}");
    assert_eq!(
        failing["context"]["failing"],
        serde_json::json!(["hello-server/hello-server"]),
        "{failing:#?}"
    );

    // A failing process is the job's to fix, not the resurrector's: the VM stays; once the
    // configuration is back, the agent's next restart succeeds and the instance recovers.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::rename(&away, &config).unwrap();
    wait_for(
        &user,
        Duration::from_secs(60),
        "the server healthy again",
        |list| {
            list.iter()
                .any(|i| i["vm_cid"] == vm_cid.as_str() && health(i) == "healthy")
        },
    );
    let events = wait_for_event(&user, "recover");
    assert!(
        events
            .iter()
            .all(|e| e["action"] != "resurrect" && e["action"] != "recreate"),
        "{events:#?}"
    );
    let recover = events.iter().find(|e| e["action"] == "recover").unwrap();
    assert_eq!(recover["object_name"], name.as_str(), "{recover:#?}");
    assert_eq!(recover["context"]["was"], "failing", "{recover:#?}");

    // The backup from before the deploy is restored: the three VMs' agents still heartbeat,
    // and no instance or VM record of the director has them: each is reported, once.
    let agents: Vec<(String, String)> = before
        .iter()
        .map(|i| {
            let says = format!(
                "{}/{} ({})",
                i["instance_group"].as_str().unwrap(),
                i["id"].as_str().unwrap(),
                i["index"]
            );
            (i["agent_id"].as_str().unwrap().to_string(), says)
        })
        .collect();
    user.kill_director();
    copy_state(&backup, &user.data_dir());
    user.start_director_again("director-3.log");
    let rogues = |user: &User| -> Vec<Value> {
        let events = user.json(&["events"]);
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "rogue agent")
            .cloned()
            .collect()
    };
    let started = Instant::now();
    while rogues(&user).len() < agents.len() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a rogue agent event per VM: {:#?}",
            user.json(&["events"])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // More analyses report nobody twice.
    std::thread::sleep(Duration::from_secs(3));
    let reported = rogues(&user);
    assert_eq!(reported.len(), agents.len(), "{reported:#?}");
    for (agent_id, says) in &agents {
        let event = reported
            .iter()
            .find(|e| e["object_name"] == agent_id.as_str())
            .unwrap_or_else(|| panic!("{agent_id}: {reported:#?}"));
        assert_eq!(event["user"], "hm", "{event:#?}");
        assert_eq!(event["object_type"], "vm", "{event:#?}");
        assert_eq!(event["context"]["says_deployment"], "hello", "{event:#?}");
        assert_eq!(
            event["context"]["says_instance"],
            says.as_str(),
            "{event:#?}"
        );
    }
}
