//! `director cck` on the local CPI through the real binaries, one scripted scenario per
//! problem type, each ending with `cck --report` exiting 0 (it exits 2 while a problem
//! exists). The health monitor is off, so nothing but cck touches the instances.
//!
//! - VMs: an agent frozen with SIGSTOP is `unresponsive_agent` (recreated with
//!   `--resolution recreate_vm`: same IP, same disk and its data); a VM deleted behind the
//!   director's back is `missing_vm` (`--auto` recreates it); `delete_vm_reference` on a
//!   frozen agent leaves its VM recorded as `unowned_vm`, which `delete_vm` deletes.
//! - Disks: a disk unmounted inside the VM is `mount_info_mismatch` (`reattach_disk`); a disk
//!   deleted behind the director's back is `missing_disk` (`delete_disk_reference`, then a
//!   deploy gives the instance a new one); a director killed during a disk migration, after
//!   the agent switched to the new disk, leaves an `inactive_disk` that `activate_disk`
//!   makes the instance's (the old disk orphaned, the data on the new one).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::User;
use tests::hello::{
    Hello, all_running, by_group, deploy, instances, set_cloud_config, upload_stemcell,
    write_manifest,
};
use tests::local_vm::{agent_pid, agent_root, disk_dir, signal_vm, vm_dir, vm_processes};

/// A director without health monitor (so only cck acts) and with fast heartbeats.
fn director() -> User {
    User::with_director_config("agent: {heartbeat_interval: 1}\nhealth_monitor: {enabled: false}")
}

/// Deploys hello on loopback `net`; answers the manifest and the release directory.
fn deploy_hello(user: &User, net: u8, hello: &Hello) -> (PathBuf, PathBuf) {
    set_cloud_config(user, net);
    upload_stemcell(user, "1", None);
    let release = user.hello_release();
    let manifest = write_manifest(user, &release, hello);
    let (code, _, stderr) = deploy(user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    (manifest, release)
}

/// `cck --report --json`: the exit code and the problems.
fn report(user: &User) -> (i32, Vec<Value>) {
    let out = user.run(&["-d", "hello", "cck", "--report", "--json"]);
    let parsed: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    (out.code, parsed["problems"].as_array().unwrap().clone())
}

/// The one problem the report lists, which must be of `kind`.
fn only_problem(user: &User, kind: &str) -> Value {
    let (code, problems) = report(user);
    assert_eq!(code, 2, "cck --report exits 2 while a problem exists");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0]["type"], kind, "{problems:#?}");
    problems[0].clone()
}

fn no_problem(user: &User) {
    let (code, problems) = report(user);
    assert_eq!((code, problems.len()), (0, 0), "{problems:#?}");
}

/// `cck ARGS… --json`: what resolving did.
fn resolve(user: &User, args: &[&str]) -> Vec<Value> {
    let out = user.run(&[&["-d", "hello", "cck", "--json"], args].concat());
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let parsed: Value = serde_json::from_str(&out.stdout).unwrap();
    parsed["resolved"].as_array().unwrap().clone()
}

fn instance<'a>(list: &'a [Value], id: &Value) -> &'a Value {
    list.iter().find(|i| i["id"] == *id).unwrap()
}

fn wait_until_running(user: &User) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let list = instances(user);
        if all_running(&list) {
            return list;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "every instance running: {list:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The agent's events for resolutions, by action.
fn resolution_events(user: &User) -> Vec<String> {
    user.json(&["-d", "hello", "events"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["context"]["problem"].is_string())
        .map(|e| {
            format!(
                "{} {}",
                e["action"].as_str().unwrap(),
                e["context"]["problem"]
            )
        })
        .collect()
}

#[test]
fn cck_finds_and_fixes_silent_agents_missing_vms_and_unowned_vms() {
    let user = director();
    let (manifest, _) = deploy_hello(&user, 53, &Hello::default());
    no_problem(&user);
    let out = user.run(&["-d", "hello", "cck", "--report"]);
    assert_eq!(out.code, 0);
    assert!(out.stderr.contains("0 problem(s)"), "{}", out.stderr);

    // unresponsive_agent: the VM exists, its agent is frozen.
    let before = instances(&user);
    let servers = by_group(&before, "hello-server");
    let (frozen, deleted) = (servers[0].clone(), servers[1].clone());
    let disk = frozen["disk_cid"].as_str().unwrap();
    std::fs::write(disk_dir(&user, disk).join("kept.txt"), "kept\n").unwrap();
    let old_vm = frozen["vm_cid"].as_str().unwrap().to_string();
    signal_vm(&user, &old_vm, "-STOP");
    let problem = only_problem(&user, "unresponsive_agent");
    assert_eq!(
        problem["id"],
        format!("unresponsive_agent:{}", frozen["id"].as_str().unwrap())
    );
    assert_eq!(problem["resolutions"][0]["name"], "ignore", "{problem:#?}");
    // BOSH's table on stdout without --json.
    let out = user.run(&["-d", "hello", "cck", "--report"]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.contains("unresponsive_agent"), "{}", out.stdout);
    assert!(out.stdout.contains("is not responding"), "{}", out.stdout);
    // --auto ignores it (BOSH's default for a silent agent): still a problem.
    let resolved = resolve(&user, &["--auto"]);
    assert_eq!(resolved[0]["resolution"], "ignore", "{resolved:#?}");
    only_problem(&user, "unresponsive_agent");
    let resolved = resolve(&user, &["--resolution", "recreate_vm"]);
    assert_eq!(resolved[0]["error"], Value::Null, "{resolved:#?}");
    no_problem(&user);
    let list = wait_until_running(&user);
    let back = instance(&list, &frozen["id"]);
    assert_ne!(back["vm_cid"], frozen["vm_cid"], "a new VM");
    assert_eq!(back["ips"], frozen["ips"], "the same IP");
    assert_eq!(back["disk_cid"], frozen["disk_cid"], "the same disk");
    assert!(!vm_dir(&user, &old_vm).exists(), "the frozen VM is deleted");
    assert_eq!(
        std::fs::read_to_string(disk_dir(&user, disk).join("kept.txt")).unwrap(),
        "kept\n"
    );

    // missing_vm: the VM is gone behind the director's back.
    let gone = deleted["vm_cid"].as_str().unwrap();
    signal_vm(&user, gone, "-9");
    std::thread::sleep(Duration::from_millis(200));
    Command::new("umount")
        .arg("-R")
        .arg(vm_dir(&user, gone))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    std::fs::remove_dir_all(vm_dir(&user, gone)).unwrap();
    let problem = only_problem(&user, "missing_vm");
    assert!(
        problem["description"].as_str().unwrap().contains("missing"),
        "{problem:#?}"
    );
    let resolved = resolve(&user, &["--auto"]);
    assert_eq!(resolved[0]["resolution"], "recreate_vm_without_wait");
    assert_eq!(resolved[0]["error"], Value::Null, "{resolved:#?}");
    no_problem(&user);
    let list = wait_until_running(&user);
    assert_eq!(instance(&list, &deleted["id"])["ips"], deleted["ips"]);

    // unowned_vm: forgetting a frozen VM keeps it recorded; cck deletes it.
    let client = by_group(&list, "hello-client")[0].clone();
    let client_vm = client["vm_cid"].as_str().unwrap().to_string();
    signal_vm(&user, &client_vm, "-STOP");
    only_problem(&user, "unresponsive_agent");
    resolve(&user, &["--resolution", "delete_vm_reference"]);
    let problem = only_problem(&user, "unowned_vm");
    assert!(
        problem["description"]
            .as_str()
            .unwrap()
            .contains(&client_vm),
        "{problem:#?}"
    );
    assert!(
        vm_dir(&user, &client_vm).exists(),
        "the VM is only forgotten"
    );
    let resolved = resolve(&user, &["--resolution", "delete_vm"]);
    assert_eq!(resolved[0]["error"], Value::Null, "{resolved:#?}");
    no_problem(&user);
    assert!(
        !vm_dir(&user, &client_vm).exists(),
        "the unowned VM is deleted"
    );
    // The instance has no VM now; a deploy gives it one.
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    wait_until_running(&user);
    no_problem(&user);

    let events = resolution_events(&user);
    for wanted in [
        "recreate_vm \"unresponsive_agent:",
        "recreate_vm_without_wait \"missing_vm:",
        "delete_vm_reference \"unresponsive_agent:",
        "delete_vm \"unowned_vm:",
    ] {
        assert!(
            events.iter().any(|e| e.starts_with(wanted)),
            "{wanted}: {events:#?}"
        );
    }
}

/// `nsenter` into the VM's mount namespace and run `command`.
fn in_vm(user: &User, vm_cid: &str, command: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &agent_pid(user, vm_cid).to_string(), "-m", "--"])
        .args(command)
        .output()
        .unwrap()
}

#[test]
fn cck_finds_and_fixes_unmounted_missing_and_inactive_disks() {
    let mut user = director();
    let (manifest, release) = deploy_hello(&user, 54, &Hello::default());
    no_problem(&user);
    let list = instances(&user);
    let servers = by_group(&list, "hello-server");
    let (unmounted, lost) = (servers[0].clone(), servers[1].clone());

    // mount_info_mismatch: the disk is unmounted inside the VM.
    let vm = unmounted["vm_cid"].as_str().unwrap().to_string();
    let disk = unmounted["disk_cid"].as_str().unwrap().to_string();
    std::fs::write(disk_dir(&user, &disk).join("kept.txt"), "kept\n").unwrap();
    unmount_store(&user, &vm);
    let problem = only_problem(&user, "mount_info_mismatch");
    assert_eq!(problem["id"], format!("mount_info_mismatch:{disk}"));
    // Interactive (the default): the operator picks resolution 2 and confirms.
    let out = user.run(&["-d", "hello", "cck", "-n"]);
    assert_eq!(out.code, 1, "no prompt without a terminal answer");
    assert!(
        out.stderr.contains("--auto, --resolution NAME or --report"),
        "{}",
        out.stderr
    );
    let mut cck = user
        .director()
        .args(["-d", "hello", "cck"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut cck.stdin.take().unwrap(), b"2\ny\n").unwrap();
    let out = cck.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2: Reattach disk to instance"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reattach_disk"),
        "{stderr}"
    );
    no_problem(&user);
    let out = in_vm(&user, &vm, &["cat", &format!("{STORE}/kept.txt")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n", "{out:?}");

    // missing_disk: the disk is deleted behind the director's back.
    let lost_disk = lost["disk_cid"].as_str().unwrap().to_string();
    std::fs::remove_dir_all(disk_dir(&user, &lost_disk)).unwrap();
    let problem = only_problem(&user, "missing_disk");
    assert_eq!(problem["id"], format!("missing_disk:{lost_disk}"));
    let resolved = resolve(&user, &["--resolution", "delete_disk_reference"]);
    assert_eq!(resolved[0]["error"], Value::Null, "{resolved:#?}");
    no_problem(&user);
    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    let list = wait_until_running(&user);
    let renewed = instance(&list, &lost["id"]);
    assert!(
        renewed["disk_cid"].is_string() && renewed["disk_cid"] != lost["disk_cid"],
        "a new disk: {renewed:#?}"
    );
    no_problem(&user);

    // inactive_disk: the director dies while the agent migrates the disk to a bigger one;
    // the agent finishes and shows the new disk, the director never recorded the switch.
    let bigger = Hello {
        disk: 2048,
        ..Hello::default()
    };
    let resized = write_manifest(&user, &release, &bigger);
    // Enough data that the copy is still running when the test sees it.
    std::fs::write(disk_dir(&user, &disk).join("big"), vec![0xab_u8; 256 << 20]).unwrap();
    let mut deploying = user
        .director()
        .args(["deploy", resized.to_str().unwrap(), "-n"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The copy is held while the director is frozen, then finishes: the agent switches to
    // the new disk while the director cannot record it, and the director is killed.
    let copy = wait_for_copy(&user, &vm, &mut deploying);
    let director = user.director_pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &director]).status();
    let _ = Command::new("kill").args(["-CONT", &copy]).status();
    let mounted_file = agent_root(&user, &vm).join("bosh/mounted_disk");
    let started = Instant::now();
    let new_disk = loop {
        let text = std::fs::read_to_string(&mounted_file).unwrap_or_default();
        let record: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(cid) = record["cid"].as_str()
            && cid != disk
        {
            break cid.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the agent switched to the new disk: {text}\n{}",
            std::fs::read_to_string(vm_dir(&user, &vm).join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    user.kill_director();
    let _ = deploying.wait();
    user.start_director_again("director-2.log");

    let (code, problems) = report(&user);
    assert_eq!(code, 2);
    let kinds: Vec<&str> = problems
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["inactive_disk", "mount_info_mismatch"],
        "{problems:#?}"
    );
    assert_eq!(problems[0]["id"], format!("inactive_disk:{new_disk}"));
    assert!(
        problems[0]["description"]
            .as_str()
            .unwrap()
            .contains("mounted on its VM"),
        "{problems:#?}"
    );
    // Deleting the disk the instance now uses is refused, and changes nothing.
    let out = user.run(&[
        "-d",
        "hello",
        "cck",
        "--resolution",
        "delete_disk",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stdout.contains("activate it instead"), "{}", out.stdout);
    assert_eq!(report(&user).1.len(), 2);
    let resolved = resolve(&user, &["--resolution", "activate_disk"]);
    assert_eq!(resolved[0]["error"], Value::Null, "{resolved:#?}");
    no_problem(&user);
    let list = instances(&user);
    assert_eq!(
        instance(&list, &unmounted["id"])["disk_cid"],
        new_disk.as_str()
    );
    let orphaned = user.json(&["orphaned-disks"]);
    assert!(
        orphaned
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["cid"] == disk.as_str()),
        "the old disk is kept, orphaned: {orphaned:#?}"
    );
    let out = in_vm(&user, &vm, &["cat", &format!("{STORE}/kept.txt")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n", "{out:?}");
    // The deploy that was interrupted now has nothing left to migrate.
    let (code, _, stderr) = deploy(&user, &resized, &[]);
    assert_eq!(code, 0, "{stderr}");
    wait_until_running(&user);
    no_problem(&user);
    let events = resolution_events(&user);
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("activate_disk \"inactive_disk:")),
        "{events:#?}"
    );
}

/// The persistent disk's mount point inside a VM.
const STORE: &str = "/var/vcap/store";

/// Makes the VM's store show no disk: a bind mount (the agent's way as root in a private
/// mount namespace) is unmounted inside the VM, a link replaced by an empty directory.
fn unmount_store(user: &User, vm_cid: &str) {
    let path = agent_root(user, vm_cid).join("store");
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
    } else {
        let out = in_vm(user, vm_cid, &["umount", STORE]);
        assert!(out.status.success(), "{out:?}");
    }
}

/// Waits until the agent of `vm_cid` copies its disk (its `cp` of the store), freezes the
/// copy, and answers its pid.
fn wait_for_copy(user: &User, vm_cid: &str, deploying: &mut std::process::Child) -> String {
    let started = Instant::now();
    loop {
        for pid in vm_processes(user, vm_cid) {
            // `cp -a /var/vcap/store/. <new disk>`: the agent's copy, no other.
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = String::from_utf8_lossy(&command).replace('\0', " ");
            if command.starts_with("cp ") && command.contains(&format!("{STORE}/.")) {
                let _ = Command::new("kill").args(["-STOP", &pid]).status();
                return pid;
            }
        }
        if let Ok(Some(status)) = deploying.try_wait() {
            panic!("the deploy ended ({status}) before the agent copied the disk");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the agent never copied the disk"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
