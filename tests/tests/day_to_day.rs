//! The verbs around a deployed deployment, through the real binaries: `deployments`,
//! `manifest`, `stop`/`start`/`restart`/`recreate` of one instance or a group, `run-errand`,
//! `vms --vitals`, `events`, `delete-deployment` and `orphaned-disks`.

use serde_json::Value;
use tests::User;
use tests::hello::{
    Hello, all_running, by_group, deploy, instances, set_cloud_config, upload_stemcell,
    write_manifest,
};

fn find<'a>(list: &'a [Value], id: &Value) -> &'a Value {
    list.iter()
        .find(|i| i["id"] == *id)
        .expect("the instance is listed")
}

#[test]
fn the_day_to_day_verbs_work_on_a_deployed_deployment() {
    let user = User::new();
    set_cloud_config(&user, 27);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let manifest = write_manifest(
        &user,
        &release,
        &Hello {
            errand: true,
            ..Hello::default()
        },
    );
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");

    let deployments = user.json(&["deployments"]);
    assert_eq!(deployments[0]["name"], "hello");
    assert_eq!(deployments[0]["releases"][0]["name"], "hello");
    let deployed = user.run(&["-d", "hello", "manifest"]);
    assert!(
        deployed.stdout.contains("name: hello-smoke-test"),
        "{}",
        deployed.stdout
    );
    assert!(
        deployed.stdout.contains("((admin_password))"),
        "the director's variables stay placeholders"
    );

    let before = instances(&user);
    assert_eq!(
        by_group(&before, "smoke-test")[0]["vm_cid"],
        Value::Null,
        "errands get no VM on deploy"
    );
    let servers = by_group(&before, "hello-server");
    let (first, second) = (servers[0], servers[1]);

    // Stop one instance (by index): it stops, the others keep running.
    let out = user.run(&[
        "-d",
        "hello",
        "stop",
        &format!("hello-server/{}", first["index"]),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list = instances(&user);
    assert_eq!(find(&list, &first["id"])["state"], "stopped");
    assert!(
        find(&list, &first["id"])["agent"]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] != "running")
    );
    assert!(all_running(std::slice::from_ref(find(
        &list,
        &second["id"]
    ))));

    // Start it again (by id).
    let out = user.run(&[
        "-d",
        "hello",
        "start",
        &format!("hello-server/{}", first["id"].as_str().unwrap()),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(all_running(
        &by_group(&instances(&user), "hello-server")
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    ));

    // Restart the group: same VMs.
    let out = user.run(&["-d", "hello", "restart", "hello-server"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list = instances(&user);
    assert_eq!(find(&list, &first["id"])["vm_cid"], first["vm_cid"]);
    assert!(all_running(
        &list
            .iter()
            .filter(|i| i["instance_group"] == "hello-server")
            .cloned()
            .collect::<Vec<_>>()
    ));

    // Recreate one: a new VM, the same disk and address, running.
    let out = user.run(&[
        "-d",
        "hello",
        "recreate",
        &format!("hello-server/{}", second["index"]),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list = instances(&user);
    let recreated = find(&list, &second["id"]);
    assert_ne!(recreated["vm_cid"], second["vm_cid"]);
    assert_eq!(
        (&recreated["disk_cid"], &recreated["ips"]),
        (&second["disk_cid"], &second["ips"])
    );
    assert!(all_running(std::slice::from_ref(recreated)));
    assert_eq!(
        find(&list, &first["id"])["vm_cid"],
        first["vm_cid"],
        "the other one is untouched"
    );

    // The errand asks every server for its greeting; its VM goes afterwards.
    // What it wrote comes back, as BOSH prints it.
    let out = user.run(&["-d", "hello", "run-errand", "smoke-test"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Errand 'smoke-test' completed successfully"),
        "{}",
        out.stderr
    );
    let stdout_lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        stdout_lines[0].starts_with("Instance   smoke-test/")
            && stdout_lines[1] == "Exit Code  0"
            && stdout_lines[2].starts_with("Stdout     hello-server/")
            && stdout_lines[2].ends_with("): hello, world!")
            && stdout_lines[3].starts_with("           hello-server/")
            && stdout_lines[4] == "Stderr     -",
        "{}",
        out.stdout
    );
    assert_eq!(
        by_group(&instances(&user), "smoke-test")[0]["vm_cid"],
        Value::Null
    );
    // Logs: one tarball per instance with a VM, holding its jobs' logs.
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path().to_str().unwrap();
    let out = user.run(&["-d", "hello", "logs", "hello-server/0", "--dir", dir]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let files: Vec<String> = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("hello.hello-server.0-") && files[0].ends_with(".tgz"),
        "{files:?}"
    );
    let listing = std::process::Command::new("tar")
        .args(["tzf", &format!("{dir}/{}", files[0])])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("hello-server/hello-server.stdout.log"),
        "{listing}"
    );
    let all = tempfile::tempdir().unwrap();
    let out = user.run(&["-d", "hello", "logs", "--dir", all.path().to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_dir(all.path()).unwrap().count(),
        3,
        "servers and client; the errand has no VM"
    );

    let unknown = user.run(&["-d", "hello", "run-errand", "nope"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown
            .stderr
            .contains("has no errand 'nope' (errands: smoke-test)"),
        "{}",
        unknown.stderr
    );

    let vms = user.json(&["-d", "hello", "vms", "--vitals"]);
    let vms = vms.as_array().unwrap();
    assert_eq!(vms.len(), 3, "servers and client; no errand VM");
    assert!(
        vms.iter().all(|v| v["agent"]["vitals"]["load"]
            .as_array()
            .is_some_and(|l| l.len() == 3)),
        "{vms:#?}"
    );

    let events = user.json(&["-d", "hello", "events"]);
    let events = events.as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "create" && e["object_type"] == "deployment"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "stop" && e["object_type"] == "instance"),
        "{events:#?}"
    );

    // The deployment lock: a second deploy while one runs is refused, naming the task.
    let slow = write_manifest(
        &user,
        &release,
        &Hello {
            errand: true,
            drain_seconds: 4,
            greeting: "salut",
            ..Hello::default()
        },
    );
    let mut first_deploy = user
        .director()
        .args(["deploy", slow.to_str().unwrap(), "-n"])
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let running = user.json(&["tasks"]);
        if running.as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["description"] == "create deployment" && t["state"] == "processing")
        }) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the first deploy did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let second_deploy = user.run(&["deploy", slow.to_str().unwrap(), "-n"]);
    assert_eq!(second_deploy.code, 1, "{}", second_deploy.stderr);
    assert!(
        second_deploy
            .stderr
            .contains("deployment 'hello' is locked by task"),
        "{}",
        second_deploy.stderr
    );
    assert!(
        first_deploy.wait().unwrap().success(),
        "the first deploy finishes"
    );

    // The servers now say "salut": the errand still expects "hello" and says so; its
    // exit code is the command's outcome.
    let out = user.run(&["--json", "-d", "hello", "run-errand", "smoke-test"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Errand 'smoke-test' completed with error (exit code 1)"),
        "{}",
        out.stderr
    );
    let runs: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs[0]["exit_code"], 1);
    assert!(
        runs[0]["stderr"]
            .as_str()
            .unwrap()
            .contains("answered: salut, world!"),
        "{runs:#}"
    );

    // A dev director that restarts finds its agents again (same bus port, same accounts).
    let out = user.run(&["stop-server"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let started = std::time::Instant::now();
    loop {
        let list = instances(&user);
        let with_vm: Vec<Value> = list
            .into_iter()
            .filter(|i| !i["vm_cid"].is_null())
            .collect();
        if all_running(&with_vm) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "agents did not come back: {with_vm:#?}"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }

    let out = user.run(&["-d", "hello", "delete-deployment", "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(user.json(&["deployments"]), serde_json::json!([]));
    let orphaned = user.json(&["orphaned-disks"]);
    assert_eq!(
        orphaned.as_array().unwrap().len(),
        2,
        "the servers' disks are kept: {orphaned:#}"
    );
    let vms_left = std::fs::read_dir(user.data_dir().join("cpi/vms"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(vms_left, 0, "every VM is gone");

    // Orphaned disks go only when asked: one by its CID, the rest with clean-up --all,
    // which also takes the unused stemcell out of the CPI.
    let disks = user.data_dir().join("cpi/disks");
    let first_disk = orphaned[0]["cid"].as_str().unwrap();
    assert!(disks.join(first_disk).is_dir());
    let out = user.run(&["delete-disk", first_disk, "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!disks.join(first_disk).exists(), "deleted in the CPI");
    assert_eq!(user.json(&["orphaned-disks"]).as_array().unwrap().len(), 1);
    let out = user.run(&["delete-disk", first_disk, "-n"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("disk '{first_disk}' is not an orphaned disk")),
        "{}",
        out.stderr
    );
    let stemcells_in_cpi = || {
        std::fs::read_dir(user.data_dir().join("cpi/stemcells"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(stemcells_in_cpi(), 1);
    let out = user.run(&["clean-up", "--all", "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("orphaned disk disk-"), "{}", out.stderr);
    assert_eq!(user.json(&["orphaned-disks"]), serde_json::json!([]));
    assert_eq!(user.json(&["stemcells"]), serde_json::json!([]));
    assert_eq!(stemcells_in_cpi(), 0, "the image left the CPI too");
}
