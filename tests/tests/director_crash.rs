//! A director killed (`kill -9`) while it makes VMs leaks nothing: the next one deletes the
//! VMs it was making (found by their agent ids when `create_vm` had answered but the
//! answer was not recorded), revokes their bus accounts, and the next deploy converges
//! with `director vms` and the CPI agreeing and no address used twice.
//!
//! The local CPI's test hook (`cpi::local::HOLD_CREATE_VM_ENV`) holds `create_vm` after the
//! VM is made, so the director is killed exactly while a VM exists that it has not recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::User;
use tests::hello::{
    Hello, all_running, deploy, instances, set_cloud_config, upload_stemcell, write_manifest,
};

/// `cpi::local::HOLD_CREATE_VM_ENV` (the tests crate does not link the CPI).
const HOLD_CREATE_VM_ENV: &str = "DIRECTOR_TEST_LOCAL_CPI_HOLD_CREATE_VM";

/// Starts `director deploy MANIFEST` on a new dev director whose local CPI holds every
/// `create_vm` once the VM is made; waits until one is held and kills the director.
/// Answers the CPI ids of the VMs held.
fn kill_while_creating_a_vm(user: &User, manifest: &Path) -> Vec<String> {
    // The next command starts a dev director with the hook in its environment.
    let out = user.run(&["stop-server"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let hold = user.home.path().join("hold");
    std::fs::create_dir_all(&hold).unwrap();
    let mut deploy = user
        .director()
        .env(HOLD_CREATE_VM_ENV, &hold)
        .args(["deploy", manifest.to_str().unwrap(), "-n"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let held = loop {
        let held = names(&hold);
        if !held.is_empty() {
            break held;
        }
        if let Ok(Some(status)) = deploy.try_wait() {
            panic!("the deploy ended ({status}) before a VM was held");
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no create_vm was held"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid = user.dev_pid().expect("the dev director runs");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = deploy.wait();
    for cid in &held {
        assert!(
            vms_dir(user).join(cid).join("vm.json").is_file(),
            "{cid} was made"
        );
    }
    held
}

fn vms_dir(user: &User) -> PathBuf {
    user.data_dir().join("cpi/vms")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What the CPI has: each VM's agent id and addresses, by CPI id.
fn cpi_vms(user: &User) -> BTreeMap<String, (String, Vec<String>)> {
    names(&vms_dir(user))
        .into_iter()
        .map(|cid| {
            let settings: Value = serde_json::from_slice(
                &std::fs::read(vms_dir(user).join(&cid).join("vcap/bosh/settings.json"))
                    .unwrap_or_else(|e| panic!("{cid}: {e}")),
            )
            .unwrap();
            let ips = settings["networks"]
                .as_object()
                .unwrap()
                .values()
                .map(|n| n["ip"].as_str().unwrap().to_string())
                .collect();
            (
                cid,
                (settings["agent_id"].as_str().unwrap().to_string(), ips),
            )
        })
        .collect()
}

/// After the next deploy: the director's VMs are exactly the CPI's, with the same agents
/// and addresses, no address twice, no VM the crash left, no bus account but theirs.
fn assert_converged(user: &User, held: &[String]) {
    let listed = user.json(&["-d", "hello", "vms"]);
    let listed = listed.as_array().unwrap();
    let director: BTreeMap<String, (String, Vec<String>)> = listed
        .iter()
        .map(|vm| {
            (
                vm["vm_cid"].as_str().unwrap().to_string(),
                (
                    vm["agent_id"].as_str().unwrap().to_string(),
                    vm["ips"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|ip| ip.as_str().unwrap().to_string())
                        .collect(),
                ),
            )
        })
        .collect();
    let cpi = cpi_vms(user);
    assert_eq!(director, cpi, "director vms and the CPI disagree");
    for cid in held {
        assert!(
            !cpi.contains_key(cid),
            "{cid}, made before the crash, is left"
        );
    }
    let addresses: Vec<&String> = cpi.values().flat_map(|(_, ips)| ips).collect();
    let unique: BTreeSet<&String> = addresses.iter().copied().collect();
    assert_eq!(
        addresses.len(),
        unique.len(),
        "an address is used twice: {cpi:?}"
    );
    let accounts: Value =
        serde_json::from_slice(&std::fs::read(user.data_dir().join("bus-agents.json")).unwrap())
            .unwrap();
    let accounts: BTreeSet<&String> = accounts.as_object().unwrap().keys().collect();
    let agents: BTreeSet<&String> = cpi.values().map(|(agent, _)| agent).collect();
    assert_eq!(
        accounts, agents,
        "bus accounts of VMs that are gone are left"
    );
    let log = std::fs::read_to_string(user.data_dir().join("director.log")).unwrap();
    for cid in held {
        assert!(
            log.contains(&format!("deleted VM {cid} (")),
            "the director says what it deleted: {log}"
        );
    }
}

#[test]
fn a_director_killed_while_compiling_leaves_no_vm_or_address_behind() {
    let user = User::new();
    set_cloud_config(&user, 71);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let manifest = write_manifest(&user, &release, &Hello::default());

    // The first VMs a fresh deploy makes are compilation VMs.
    let held = kill_while_creating_a_vm(&user, &manifest);

    let (code, _, stderr) = deploy(&user, &manifest, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_converged(&user, &held);
    assert!(all_running(&instances(&user)));
}

#[test]
fn a_director_killed_while_creating_an_instance_vm_leaves_no_vm_or_address_behind() {
    let user = User::new();
    set_cloud_config(&user, 72);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let two = write_manifest(&user, &release, &Hello::default());
    let (code, _, stderr) = deploy(&user, &two, &[]);
    assert_eq!(code, 0, "{stderr}");

    // Scaling out makes one VM (its packages are compiled already).
    let three = write_manifest(
        &user,
        &release,
        &Hello {
            servers: 3,
            ..Hello::default()
        },
    );
    let held = kill_while_creating_a_vm(&user, &three);
    assert_eq!(held.len(), 1, "{held:?}");

    let (code, _, stderr) = deploy(&user, &three, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_converged(&user, &held);
    let list = instances(&user);
    assert_eq!(list.len(), 4);
    assert!(all_running(&list), "{list:#?}");
}
