//! `director deploy` end to end, through the real binaries: a dev (or configured) director,
//! its embedded bus (or Debian's nats-server), the local CPI, real agents running the
//! `hello` release compiled from source.
//!
//! Each test has its own director, bus, CPI root and loopback /24 (never the quickstart's
//! 127.0.10.0/24, which a user's own deployment may hold), so tests run at once and beside a
//! user's dev deployments.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::User;
use tests::hello::{
    Hello, all_running, by_group, client_says, deploy, ids, instances, quickstart_on_own_network,
    set_cloud_config, stage_tasks, steps, upload_stemcell, write_manifest,
};

#[test]
fn the_quickstart_deploys_and_a_second_deploy_changes_nothing() {
    // The README's first command, as a user on a fresh machine runs it, but on a /24 of its
    // own: the user's own quickstart (127.0.10.0/24) may still run on this host.
    let user = User::new();
    let manifest = quickstart_on_own_network(&user, 20);
    let (code, events, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stage_tasks(&events, "Compiling packages", "finished").is_empty(),
        "packages were compiled"
    );
    let list = user.json(&["-d", "quickstart", "instances", "--ps"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(all_running(list), "{list:#?}");
    // The link consumer reaches the provider on its address.
    let client = list
        .iter()
        .find(|i| i["instance_group"] == "hello-client")
        .unwrap();
    let log = user
        .data_dir()
        .join("cpi/vms")
        .join(client["vm_cid"].as_str().unwrap())
        .join("vcap/sys/log/hello-client/hello-client.stdout.log");
    let started = Instant::now();
    let mut text = String::new();
    while !text.contains("hello, world!") && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    assert!(text.contains("hello, world!"), "client log: {text:?}");

    let started = Instant::now();
    let (code, events, stderr) = deploy(&user, &manifest, &[]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    let stages: Vec<String> = steps(&events).into_iter().map(|(s, _, _)| s).collect();
    for busy in [
        "Compiling packages",
        "Creating missing vms",
        "Updating instance",
        "Deleting unneeded instances",
    ] {
        assert!(
            !stages.iter().any(|s| s == busy),
            "a no-op deploy ran '{busy}': {stages:?}"
        );
    }
    assert!(
        stderr.contains("is up to date: no instance changed"),
        "{stderr}"
    );
    eprintln!(
        "second (no-op) deploy of the quickstart took {} ms",
        took.as_millis()
    );
    let out = user.run(&["-d", "quickstart", "delete-deployment", "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn scaling_out_and_back_touches_only_the_extra_instance() {
    let user = User::new();
    set_cloud_config(&user, 21);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let two = write_manifest(&user, &release, &Hello::default());
    let (code, _, stderr) = deploy(&user, &two, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = instances(&user);
    let servers_before = by_group(&before, "hello-server");

    let three = write_manifest(
        &user,
        &release,
        &Hello {
            servers: 3,
            ..Hello::default()
        },
    );
    let (code, events, stderr) = deploy(&user, &three, &[]);
    assert_eq!(code, 0, "{stderr}");
    let created = stage_tasks(&events, "Creating missing vms", "finished");
    let updated = stage_tasks(&events, "Updating instance", "started");
    assert_eq!(created.len(), 1, "{events:#?}");
    assert_eq!(
        updated.len(),
        1,
        "only the new instance is updated: {updated:?}"
    );
    assert!(
        updated[0].starts_with(created[0].trim_end_matches(" (canary)")),
        "{updated:?} {created:?}"
    );
    let after = instances(&user);
    let servers_after = by_group(&after, "hello-server");
    assert_eq!(servers_after.len(), 3);
    for old in &servers_before {
        let same = servers_after
            .iter()
            .find(|i| i["id"] == old["id"])
            .expect("kept");
        assert_eq!(
            (&same["ips"], &same["vm_cid"]),
            (&old["ips"], &old["vm_cid"]),
            "untouched"
        );
    }
    assert!(all_running(&after));

    let (code, events, stderr) = deploy(&user, &two, &[]);
    assert_eq!(code, 0, "{stderr}");
    let deleted = stage_tasks(&events, "Deleting unneeded instances", "finished");
    assert_eq!(deleted.len(), 1, "{events:#?}");
    assert!(
        stage_tasks(&events, "Updating instance", "started").is_empty(),
        "{events:#?}"
    );
    let back = instances(&user);
    assert_eq!(
        ids(&by_group(&back, "hello-server"), "ips"),
        ids(&servers_before, "ips")
    );
    assert_eq!(
        ids(&by_group(&back, "hello-server"), "vm_cid"),
        ids(&servers_before, "vm_cid")
    );
}

#[test]
fn a_property_change_restarts_only_changed_instances_canary_first_in_batches() {
    let user = User::new();
    set_cloud_config(&user, 22);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    // One AZ: after the canary, the other two form one batch of max_in_flight = 2.
    let base = Hello {
        servers: 3,
        max_in_flight: 2,
        server_azs: "[z1]",
        ..Hello::default()
    };
    let manifest = write_manifest(&user, &release, &base);
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = instances(&user);
    assert!(client_says(&user, "hello, world!").contains("hello, world!"));

    // The same manifest again: a dry run says nothing changes (exit 0).
    let same = user.run(&["deploy", manifest.to_str().unwrap(), "--dry-run", "--json"]);
    assert_eq!(same.code, 0, "{}", same.stderr);

    let changed = write_manifest(
        &user,
        &release,
        &Hello {
            greeting: "bonjour",
            ..base.clone()
        },
    );
    // What a reviewer reads: the diff (properties redacted), the plan, the rollout.
    let human = user.run(&["deploy", changed.to_str().unwrap(), "--dry-run"]);
    assert_eq!(human.code, 2, "changes present: {}", human.stderr);
    insta::assert_snapshot!(mask_ids(&human.stdout, &before));

    let dry = user.run(&["deploy", changed.to_str().unwrap(), "--dry-run", "--json"]);
    assert_eq!(dry.code, 2, "changes present: {}", dry.stderr);
    let plan: Value = serde_json::from_str(&dry.stdout).unwrap();
    let mut planned: Vec<(String, String)> = plan["plan"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["instances"].as_array().unwrap().clone())
        .map(|i| {
            (
                i["group"].as_str().unwrap().to_string(),
                i["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        vec![
            ("hello-client".to_string(), "no_op".to_string()),
            ("hello-server".to_string(), "restart".to_string()),
            ("hello-server".to_string(), "restart".to_string()),
            ("hello-server".to_string(), "restart".to_string()),
        ]
    );
    assert_eq!(
        instances(&user).len(),
        before.len(),
        "a dry run changes nothing"
    );

    let (code, events, stderr) = deploy(&user, &changed, &[]);
    assert_eq!(code, 0, "{stderr}");
    let order: Vec<(String, String)> = steps(&events)
        .into_iter()
        .filter(|(stage, _, _)| stage == "Updating instance")
        .map(|(_, task, state)| (task, state))
        .collect();
    assert_eq!(
        order.len(),
        6,
        "three instances, started and finished: {order:?}"
    );
    assert!(
        order[0].0.ends_with("(canary)") && order[0].1 == "started",
        "{order:?}"
    );
    assert_eq!(
        order[1],
        (order[0].0.clone(), "finished".to_string()),
        "the canary finishes first: {order:?}"
    );
    // Then a pool of max_in_flight = 2: both start before either finishes, and never more
    // than two update at once.
    assert_eq!(
        (order[2].1.as_str(), order[3].1.as_str()),
        ("started", "started"),
        "{order:?}"
    );
    let mut in_flight = 0;
    let mut most = 0;
    for (_, state) in &order {
        in_flight += if state == "started" { 1 } else { -1 };
        most = most.max(in_flight);
    }
    assert_eq!(most, 2, "the pool is max_in_flight wide: {order:?}");
    assert!(
        order
            .iter()
            .all(|(task, _)| task.starts_with("hello-server/")),
        "the client is untouched"
    );
    let after = instances(&user);
    assert_eq!(
        ids(&by_group(&after, "hello-server"), "vm_cid"),
        ids(&by_group(&before, "hello-server"), "vm_cid"),
        "restarted, not recreated"
    );
    assert!(all_running(&after));
}

#[test]
fn a_new_stemcell_recreates_every_vm_and_persistent_data_survives_it_and_a_resize() {
    let user = User::new();
    set_cloud_config(&user, 23);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let manifest = write_manifest(&user, &release, &Hello::default());
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = instances(&user);
    for server in by_group(&before, "hello-server") {
        let disk = user
            .data_dir()
            .join("cpi/disks")
            .join(server["disk_cid"].as_str().unwrap());
        std::fs::write(disk.join("marker"), server["id"].as_str().unwrap()).unwrap();
    }
    upload_stemcell(&user, "2", None);
    let (code, events, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stage_tasks(&events, "Updating instance", "finished").len(),
        3,
        "{events:#?}"
    );
    let after = instances(&user);
    assert!(all_running(&after));
    for old in &before {
        let new = after.iter().find(|i| i["id"] == old["id"]).unwrap();
        assert_ne!(new["vm_cid"], old["vm_cid"], "recreated");
        assert_eq!(new["disk_cid"], old["disk_cid"], "same disk");
        assert_eq!(new["ips"], old["ips"], "same address");
        assert_eq!(new["stemcell"]["version"], "2");
        if old["instance_group"] == "hello-server" {
            let disk = user
                .data_dir()
                .join("cpi/disks")
                .join(new["disk_cid"].as_str().unwrap());
            assert_eq!(
                std::fs::read_to_string(disk.join("marker")).unwrap(),
                old["id"].as_str().unwrap()
            );
        }
    }

    // A bigger disk: the data moves to a new disk on the same VM; the old disk is orphaned.
    let bigger = write_manifest(
        &user,
        &release,
        &Hello {
            disk: 2048,
            ..Hello::default()
        },
    );
    let dry = user.run(&["deploy", bigger.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 2, "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("persistent disk size changed (1024 MB → 2048 MB; the data moves"),
        "{}",
        dry.stdout
    );
    let (code, _, stderr) = deploy(&user, &bigger, &[]);
    assert_eq!(code, 0, "{stderr}");
    let resized = instances(&user);
    assert!(all_running(&resized));
    let mut orphaned: Vec<String> = user
        .json(&["orphaned-disks"])
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["cid"].as_str().unwrap().to_string())
        .collect();
    orphaned.sort();
    let mut old_disks: Vec<String> = by_group(&after, "hello-server")
        .iter()
        .map(|i| i["disk_cid"].as_str().unwrap().to_string())
        .collect();
    old_disks.sort();
    assert_eq!(orphaned, old_disks, "the old disks are kept, orphaned");
    for server in by_group(&resized, "hello-server") {
        let old = after.iter().find(|i| i["id"] == server["id"]).unwrap();
        assert_eq!(server["vm_cid"], old["vm_cid"], "the VM stays");
        assert_ne!(server["disk_cid"], old["disk_cid"], "a new disk");
        let disk = user
            .data_dir()
            .join("cpi/disks")
            .join(server["disk_cid"].as_str().unwrap());
        assert_eq!(
            std::fs::read_to_string(disk.join("marker")).unwrap(),
            server["id"].as_str().unwrap(),
            "the data moved"
        );
    }
    let (code, events, stderr) = deploy(&user, &bigger, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stage_tasks(&events, "Updating instance", "started").is_empty(),
        "converged"
    );
}

#[test]
fn a_failing_canary_stops_the_deploy_and_says_why() {
    let user = User::new();
    set_cloud_config(&user, 24);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let good = write_manifest(
        &user,
        &release,
        &Hello {
            servers: 3,
            ..Hello::default()
        },
    );
    let (code, _, stderr) = deploy(&user, &good, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = instances(&user);

    let bad = write_manifest(
        &user,
        &release,
        &Hello {
            servers: 3,
            port: 0,
            ..Hello::default()
        },
    );
    let (code, events, stderr) = deploy(&user, &bad, &[]);
    assert_eq!(code, 1, "{stderr}");
    let started = stage_tasks(&events, "Updating instance", "started");
    assert_eq!(started.len(), 1, "only the canary was touched: {started:?}");
    let canary = &started[0];
    assert!(
        canary.starts_with("hello-server/") && canary.ends_with("(canary)"),
        "{canary}"
    );
    let message = events
        .iter()
        .find_map(|e| e["error"]["message"].as_str())
        .unwrap_or_default()
        .to_string();
    for expected in [
        canary.as_str(),
        "is not running after update",
        "job 'hello-server' process 'hello-server'",
        "hello-server: port 0 is not a TCP port",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing from:\n{message}"
        );
    }
    let after = instances(&user);
    for old in &before {
        if canary.contains(old["id"].as_str().unwrap()) {
            continue;
        }
        let new = after.iter().find(|i| i["id"] == old["id"]).unwrap();
        assert_eq!(new["vm_cid"], old["vm_cid"]);
        assert_eq!(new["agent"]["job_state"], "running", "untouched: {new:#}");
    }

    let (code, _, stderr) = deploy(&user, &good, &[]);
    assert_eq!(code, 0, "a fixed manifest converges: {stderr}");
    assert!(all_running(&instances(&user)));
}

#[test]
fn an_agent_that_never_answers_fails_with_what_is_known() {
    let user = User::with_director_config("agent: {wait_timeout: 5}");
    set_cloud_config(&user, 25);
    let agent = user.home.path().join("silent-agent");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho 'silent agent: cannot reach the bus, giving up on it' >&2\nsleep 600\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    upload_stemcell(&user, "1", Some(&agent));
    let release = user.hello_release();
    let manifest = write_manifest(
        &user,
        &release,
        &Hello {
            servers: 1,
            ..Hello::default()
        },
    );
    let started = Instant::now();
    let (code, events, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "agent_wait_timeout bounds the wait"
    );
    let message = events
        .iter()
        .find_map(|e| e["error"]["message"].as_str())
        .unwrap_or_default()
        .to_string();
    for expected in [
        "did not answer within 5 s",
        "the CPI says VM vm-",
        "exists",
        "the director never heard from agent",
        "silent agent: cannot reach the bus, giving up on it",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing from:\n{message}"
        );
    }
    let vms = std::fs::read_dir(user.data_dir().join("cpi/vms"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(vms, 0, "the silent VM was deleted");
}

/// A nats-server for the director, with the director's authorization file included.
struct NatsServer {
    child: std::process::Child,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server_binary() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let binary = Path::new(dir).join("nats-server");
        if binary.is_file() {
            return binary;
        }
    }
    panic!(
        "nats-server is not installed: this test never skips; install it (`apt-get install nats-server`, as .ci/run does)"
    );
}

#[test]
fn a_deploy_works_the_same_over_debians_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let auth = dir.path().join("director-users.conf");
    let pid = dir.path().join("nats-server.pid");
    let password = "director-password-for-tests";
    let mbus = director_bus::MbusConfig {
        url: format!("nats://127.0.0.1:{port}"),
        agent_url: None,
        user: "director".to_string(),
        password: password.to_string(),
        authorization_file: auth.clone(),
        pid_file: pid.clone(),
    };
    // The director owns the users file; it exists (with the director's user) before
    // nats-server reads it.
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(director_bus::NatsServerAccounts::open(&mbus))
        .unwrap();
    let conf = dir.path().join("nats-server.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: \"127.0.0.1:{port}\"\npid_file: \"{}\"\ninclude \"director-users.conf\"\n",
            pid.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("nats-server.log")).unwrap();
    let _nats = NatsServer {
        child: std::process::Command::new(nats_server_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    let started = Instant::now();
    while !pid.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let user = User::with_director_config(&format!(
        "mbus: {{url: 'nats://127.0.0.1:{port}', user: director, password: {password}, authorization_file: '{}', pid_file: '{}'}}",
        auth.display(),
        pid.display()
    ));
    let status = user.run(&["status"]);
    assert!(
        status.stdout.contains("nats-server at nats://127.0.0.1"),
        "{}",
        status.stdout
    );
    set_cloud_config(&user, 26);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let manifest = write_manifest(&user, &release, &Hello::default());
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(all_running(&instances(&user)));
    assert!(client_says(&user, "hello, world!").contains("hello, world!"));
    // Agents got their own users; the file lists them.
    let users = std::fs::read_to_string(&auth).unwrap();
    assert!(users.matches("agent-").count() >= 3, "{users}");
}

/// The output with every instance id replaced by `xxxxxxxN` (N its index; as wide as the
/// short id, so columns stay aligned): ids are random, the rest of the text is not.
fn mask_ids(text: &str, instances: &[Value]) -> String {
    let mut text = text.to_string();
    for instance in instances {
        let id = instance["id"].as_str().unwrap();
        let short: String = id.chars().take(8).collect();
        let mask = format!("{:x>8}", instance["index"].as_u64().unwrap());
        text = text.replace(id, &mask).replace(&short, &mask);
    }
    text
}

#[test]
fn a_held_address_fails_the_deploy_naming_its_holder_and_vms_see_no_director_data() {
    let user = User::new();
    set_cloud_config(&user, 46);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let manifest = write_manifest(&user, &release, &Hello::default());
    // What a deployment left running by a stopped dev director looks like: a process
    // listening on the first address the network hands out.
    let listener = std::net::TcpListener::bind("127.0.46.10:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 1, "{stderr}");
    let command = std::fs::read_to_string("/proc/self/comm").unwrap();
    let holder = format!(
        "127.0.46.10:{port} (tcp) is already in use on this host by pid {} ({}); is another \
         deployment's vm still running on this host",
        std::process::id(),
        command.trim()
    );
    assert!(
        stderr.contains("cannot give 127.0.46.10 (network 'default') to vm 'vm-"),
        "{stderr}"
    );
    assert!(stderr.contains(&holder), "{stderr}");

    // Free again: the deploy goes through.
    drop(listener);
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");

    // In a VM's mount namespace (where its agent and jobs run) the director's data directory
    // is an empty tmpfs: no token, no state database, no other agent's settings; the VM's
    // own files are there.
    let vms_dir = user.data_dir().join("cpi/vms");
    let vms: Vec<PathBuf> = std::fs::read_dir(&vms_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    let record: Value =
        serde_json::from_slice(&std::fs::read(vms[0].join("vm.json")).unwrap()).unwrap();
    let agent_pid = record["pid"].as_u64().unwrap();
    let in_vm = |path: &Path| {
        std::process::Command::new("nsenter")
            .arg(format!("--mount=/proc/{agent_pid}/ns/mnt"))
            .args(["--", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };
    let token = user.data_dir().join("token");
    assert!(token.is_file() && user.data_dir().join("state.db").is_file());
    for secret in [
        token,
        user.data_dir().join("state.db"),
        vms[1].join("vcap/bosh/settings.json"),
    ] {
        let read = in_vm(&secret);
        assert!(
            !read.status.success(),
            "a vm read {}: {}",
            secret.display(),
            String::from_utf8_lossy(&read.stdout)
        );
    }
    let own = in_vm(Path::new("/var/vcap/bosh/settings.json"));
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );

    // Stopping the dev director leaves the VMs running, and says so.
    let stop = user.run(&["stop-server"]);
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    let lines: Vec<&str> = stop.stderr.lines().collect();
    assert!(
        lines[0].starts_with("stopped the dev director at "),
        "{}",
        stop.stderr
    );
    assert_eq!(
        lines[1..],
        [
            "still running on this host, holding their addresses: the local vms of hello (3 vms)",
            "the next director command starts the dev director again, which finds them; to \
             delete them, run `director -d hello delete-deployment` (for each deployment) and \
             then `director stop-server`",
        ]
    );
    let vms = std::fs::read_dir(user.data_dir().join("cpi/vms"))
        .unwrap()
        .count();
    assert_eq!(vms, 3, "the vms keep running");
}
