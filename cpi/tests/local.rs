//! `LocalCpi` on this host: stemcells from `local` images, VMs whose fake agent sees its own
//! `/var/vcap`, process trees stopped, persistent disks that outlive their VMs. Needs root
//! (or user namespaces) and `unshare`, `mount`, `nsenter` from util-linux.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use cpi::{Cpi, ErrorKind, LocalCpi};
use serde_json::{Value, json};

struct Fixture {
    // Dropped in this order: VMs, then their directory.
    _vms: DeleteVmsOnDrop,
    cpi: LocalCpi,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cpi");
    Fixture {
        _vms: DeleteVmsOnDrop(root.clone()),
        cpi: LocalCpi::new(root),
        dir,
    }
}

impl Fixture {
    fn stemcell(&self, agent: &str) -> String {
        let image = stemcell_image(self.dir.path(), "image.tgz", agent);
        self.cpi.create_stemcell(&image, &json!({})).unwrap()
    }

    fn create_vm(&self, stemcell: &str, agent_id: &str, ip: &str, disks: &[String]) -> String {
        let (vm_cid, returned_networks) = self
            .cpi
            .create_vm(
                agent_id,
                stemcell,
                &json!({}),
                &networks(ip),
                disks,
                &environment(agent_id),
            )
            .unwrap();
        assert_eq!(returned_networks, networks(ip));
        vm_cid
    }
}

#[test]
fn info_names_the_local_format() {
    let fixture = fixture();
    let info = fixture.cpi.info().unwrap();
    assert_eq!(info.api_version, 2);
    assert_eq!(info.stemcell_formats, ["local"]);
}

#[test]
fn stemcells_keep_only_the_agent() {
    let fixture = fixture();
    let cid = fixture.stemcell(FAKE_AGENT);
    let dir = fixture.cpi.root().join("stemcells").join(&cid);
    assert_eq!(names(&dir), ["agent.json", "bosh-agent"]);
    let agent = dir.join("bosh-agent");
    assert_eq!(fs::read_to_string(&agent).unwrap(), FAKE_AGENT);
    assert_eq!(
        fs::metadata(&agent).unwrap().permissions().mode() & 0o777,
        0o755
    );

    fixture.cpi.delete_stemcell(&cid).unwrap();
    assert!(!dir.exists());
    fixture.cpi.delete_stemcell(&cid).unwrap();
}

#[test]
fn stemcells_without_an_agent_are_refused() {
    let fixture = fixture();
    let image = fixture.dir.path().join("no-agent.tgz");
    fs::write(&image, tgz(&[("etc/hostname", 0o644, b"x\n")])).unwrap();
    let error = fixture.cpi.create_stemcell(&image, &json!({})).unwrap_err();
    assert_eq!(error.kind, ErrorKind::CloudError);
    assert_eq!(
        error.message,
        format!(
            "stemcell image {} has no agent (var/vcap/bosh/bin/bosh-agent): is it a local \
             stemcell?",
            image.display()
        )
    );
    assert_eq!(
        names(&fixture.cpi.root().join("stemcells")),
        Vec::<String>::new()
    );
}

#[test]
fn stemcells_with_entries_outside_the_root_are_refused() {
    let fixture = fixture();
    let image = fixture.dir.path().join("escape.tgz");
    fs::write(
        &image,
        tgz(&[
            ("var/vcap/bosh/bin/bosh-agent", 0o755, FAKE_AGENT.as_bytes()),
            ("var/vcap/../../../evil", 0o644, b"boom"),
        ]),
    )
    .unwrap();
    let error = fixture.cpi.create_stemcell(&image, &json!({})).unwrap_err();
    assert_eq!(
        error.message,
        format!(
            "stemcell image {} has an entry outside its root: var/vcap/../../../evil",
            image.display()
        )
    );
    assert_eq!(
        names(&fixture.cpi.root().join("stemcells")),
        Vec::<String>::new()
    );
    assert!(!fixture.dir.path().join("evil").exists());

    let not_gzip = fixture.dir.path().join("not-gzip.tgz");
    fs::write(&not_gzip, "plain text").unwrap();
    let error = fixture
        .cpi
        .create_stemcell(&not_gzip, &json!({}))
        .unwrap_err();
    assert!(
        error.message.starts_with(&format!(
            "cannot read stemcell image {} (a gzipped tar): ",
            not_gzip.display()
        )),
        "{}",
        error.message
    );
}

#[test]
fn vms_see_their_own_var_vcap_and_are_deleted_with_their_processes() {
    let host_var_vcap_before = names(Path::new("/var/vcap"));
    let fixture = fixture();
    let stemcell = fixture.stemcell(FAKE_AGENT);
    let first = fixture.create_vm(&stemcell, "agent-1", "127.0.45.12", &[]);
    let second = fixture.create_vm(&stemcell, "agent-2", "127.0.45.13", &[]);
    assert_ne!(first, second);

    let mut pids = Vec::new();
    for (vm_cid, agent_id, ip) in [
        (&first, "agent-1", "127.0.45.12"),
        (&second, "agent-2", "127.0.45.13"),
    ] {
        assert!(fixture.cpi.has_vm(vm_cid).unwrap());
        let vm_dir = fixture.cpi.vm_dir(vm_cid);
        let seen = fake_log(&vm_dir);
        assert_eq!(seen.argv, "--settings /var/vcap/bosh/settings.json");
        assert_eq!(
            seen.ls,
            ["bosh", "data", "jobs", "packages", "store", "sys"]
        );
        let settings: agent_protocol::Settings =
            serde_json::from_value(seen.settings.clone()).unwrap();
        assert_eq!(settings.agent_id, agent_id);
        assert_eq!(
            settings.mbus,
            format!("nats://{agent_id}:secret@127.0.0.1:4222")
        );
        assert_eq!(settings.blobstore.endpoint, "http://127.0.0.1:25555");
        assert_eq!(settings.networks["default"].ip, ip);
        assert_eq!(settings.networks["default"].kind, "manual");
        assert_eq!(settings.vm.name, *vm_cid);
        assert_eq!(settings.env, environment(agent_id));

        let settings_mode = fs::metadata(vm_dir.join("vcap/bosh/settings.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(settings_mode & 0o777, 0o600, "it holds bus credentials");

        let record = vm_record(&vm_dir);
        let agent_pid = recorded_pid(&vm_dir, "agent.pid");
        assert_eq!(record["pid"], json!(agent_pid));
        assert_eq!(record["agent_id"], json!(agent_id));
        assert_eq!(record["mount_namespace"], json!(mount_namespace(agent_pid)));
        let child_pid = recorded_pid(&vm_dir, "child.pid");
        assert_eq!(mount_namespace(child_pid), mount_namespace(agent_pid));
        assert!(alive(agent_pid) && alive(child_pid));
        pids.push((agent_pid, child_pid));
    }
    assert_ne!(
        mount_namespace(pids[0].0),
        mount_namespace(pids[1].0),
        "each vm has its own namespace"
    );
    assert_eq!(
        names(Path::new("/var/vcap")),
        host_var_vcap_before,
        "the host's /var/vcap is only a mount point"
    );
    assert!(!Path::new("/var/vcap/bosh/settings.json").exists());
    let tail = fixture.cpi.agent_log_tail(&first, 5).unwrap();
    assert_eq!(tail, ["fake agent started"]);

    fixture.cpi.delete_vm(&first).unwrap();
    assert!(!alive(pids[0].0), "the agent is gone");
    assert!(!alive(pids[0].1), "its child is gone");
    assert!(!fixture.cpi.vm_dir(&first).exists());
    assert!(!fixture.cpi.has_vm(&first).unwrap());
    assert!(alive(pids[1].0) && alive(pids[1].1), "the other vm runs on");

    // BOSH's CPI contract: deleting a VM that is not there is VMNotFound, which the
    // director takes as already deleted.
    let error = fixture.cpi.delete_vm(&first).unwrap_err();
    assert_eq!(error.kind, ErrorKind::VmNotFound);
    assert_eq!(error.message, format!("vm '{first}' not found"));

    fixture.cpi.delete_vm(&second).unwrap();
    assert!(!alive(pids[1].0) && !alive(pids[1].1));
    assert_eq!(names(&fixture.cpi.root().join("vms")), Vec::<String>::new());
}

#[test]
fn persistent_disks_outlive_their_vms() {
    let fixture = fixture();
    let stemcell = fixture.stemcell(FAKE_AGENT);
    let disk = fixture
        .cpi
        .create_disk(1024, &json!({"type": "ssd"}), None)
        .unwrap();
    assert!(fixture.cpi.has_disk(&disk).unwrap());
    let disk_dir = fixture.cpi.disk_dir(&disk);
    let disk_record: Value =
        serde_json::from_slice(&fs::read(disk_dir.with_extension("json")).unwrap()).unwrap();
    assert_eq!(disk_record["size_mb"], 1024);

    let vm = fixture.create_vm(&stemcell, "agent-d", "127.0.45.20", &[]);
    assert_eq!(fixture.cpi.get_disks(&vm).unwrap(), Vec::<String>::new());
    let hint = fixture.cpi.attach_disk(&vm, &disk).unwrap();
    assert_eq!(hint, json!({"path": disk_dir.to_str().unwrap()}));
    assert_eq!(fixture.cpi.get_disks(&vm).unwrap(), [disk.as_str()]);
    let settings = settings_of(&fixture.cpi, &vm);
    assert_eq!(settings.disks.persistent[&disk], hint);

    // What the agent's `mount_disk` does: bind the hint's path onto /var/vcap/store in the
    // VM's namespace, where the host path is visible.
    let agent_pid = recorded_pid(&fixture.cpi.vm_dir(&vm), "agent.pid");
    let status = Command::new("nsenter")
        .arg(format!("--mount=/proc/{agent_pid}/ns/mnt"))
        .args([
            "--",
            "sh",
            "-c",
            "mount --bind \"$1\" /var/vcap/store && echo kept > /var/vcap/store/data",
            "sh",
        ])
        .arg(hint["path"].as_str().unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::read_to_string(disk_dir.join("data")).unwrap(), "kept\n");
    assert!(
        !fixture.cpi.vm_dir(&vm).join("vcap/store/data").exists(),
        "the mount is the namespace's only"
    );

    // Deleting the VM detaches the disk and keeps its data.
    fixture.cpi.delete_vm(&vm).unwrap();
    assert!(fixture.cpi.has_disk(&disk).unwrap());
    assert_eq!(fs::read_to_string(disk_dir.join("data")).unwrap(), "kept\n");

    // A new VM gets it at creation.
    let next = fixture.create_vm(
        &stemcell,
        "agent-e",
        "127.0.45.21",
        std::slice::from_ref(&disk),
    );
    assert_eq!(fixture.cpi.get_disks(&next).unwrap(), [disk.as_str()]);
    let seen = fake_log(&fixture.cpi.vm_dir(&next));
    assert_eq!(seen.settings["disks"]["persistent"][&disk], hint);

    // One VM at a time.
    let other = fixture.create_vm(&stemcell, "agent-f", "127.0.45.22", &[]);
    let error = fixture.cpi.attach_disk(&other, &disk).unwrap_err();
    assert_eq!(
        error.message,
        format!("disk '{disk}' is attached to vm '{next}'; detach it first")
    );
    let error = fixture.cpi.delete_disk(&disk).unwrap_err();
    assert_eq!(error.kind, ErrorKind::CloudError);

    fixture.cpi.detach_disk(&next, &disk).unwrap();
    assert_eq!(fixture.cpi.get_disks(&next).unwrap(), Vec::<String>::new());
    assert!(settings_of(&fixture.cpi, &next).disks.persistent.is_empty());
    let error = fixture.cpi.detach_disk(&next, &disk).unwrap_err();
    assert_eq!(error.kind, ErrorKind::DiskNotAttached);

    fixture
        .cpi
        .set_disk_metadata(&disk, &json!({"deployment": "dep"}))
        .unwrap();
    fixture.cpi.delete_disk(&disk).unwrap();
    assert!(!fixture.cpi.has_disk(&disk).unwrap());
    assert!(!disk_dir.exists());
    let error = fixture.cpi.delete_disk(&disk).unwrap_err();
    assert_eq!(error.kind, ErrorKind::DiskNotFound);
    let error = fixture.cpi.attach_disk(&next, &disk).unwrap_err();
    assert_eq!(error.kind, ErrorKind::DiskNotFound);

    fixture.cpi.delete_vm(&next).unwrap();
    fixture.cpi.delete_vm(&other).unwrap();
}

#[test]
fn calls_on_one_vm_are_serialized() {
    let fixture = fixture();
    let stemcell = fixture.stemcell(FAKE_AGENT);
    let vm = fixture.create_vm(&stemcell, "agent-s", "127.0.45.35", &[]);
    let disks: Vec<String> = (0..8)
        .map(|_| fixture.cpi.create_disk(1, &json!({}), None).unwrap())
        .collect();
    std::thread::scope(|scope| {
        for disk in &disks {
            let (cpi, vm) = (&fixture.cpi, &vm);
            scope.spawn(move || cpi.attach_disk(vm, disk).unwrap());
        }
    });
    let mut attached = fixture.cpi.get_disks(&vm).unwrap();
    attached.sort();
    let mut expected = disks.clone();
    expected.sort();
    assert_eq!(attached, expected, "no attachment is lost");
    let in_settings: Vec<String> = settings_of(&fixture.cpi, &vm)
        .disks
        .persistent
        .into_keys()
        .collect();
    assert_eq!(in_settings, expected);
    fixture.cpi.delete_vm(&vm).unwrap();
}

#[test]
fn reboot_starts_the_agent_again() {
    let fixture = fixture();
    let stemcell = fixture.stemcell(FAKE_AGENT);
    let vm = fixture.create_vm(&stemcell, "agent-r", "127.0.45.30", &[]);
    let vm_dir = fixture.cpi.vm_dir(&vm);
    let before = recorded_pid(&vm_dir, "agent.pid");
    let child_before = recorded_pid(&vm_dir, "child.pid");
    fake_log(&vm_dir);
    fs::remove_file(vm_dir.join("vcap/sys/log/fake.log")).unwrap();
    fs::remove_file(vm_dir.join("vcap/sys/run/agent.pid")).unwrap();

    fixture.cpi.reboot_vm(&vm).unwrap();
    assert!(!alive(before) && !alive(child_before));
    let seen = fake_log(&vm_dir);
    assert_eq!(seen.settings["agent_id"], "agent-r");
    let after = recorded_pid(&vm_dir, "agent.pid");
    assert_ne!(after, before);
    assert_eq!(vm_record(&vm_dir)["pid"], json!(after));
    assert_eq!(
        vm_record(&vm_dir)["mount_namespace"],
        json!(mount_namespace(after))
    );

    fixture.cpi.delete_vm(&vm).unwrap();
    assert!(!alive(after));
}

#[test]
fn a_vm_whose_agent_fails_is_cleaned_up() {
    let fixture = fixture();
    let stemcell = fixture.stemcell(BROKEN_AGENT);
    let disk = fixture.cpi.create_disk(10, &json!({}), None).unwrap();
    let error = fixture
        .cpi
        .create_vm(
            "agent-x",
            &stemcell,
            &json!({}),
            &networks("127.0.45.40"),
            std::slice::from_ref(&disk),
            &environment("agent-x"),
        )
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::VmCreationFailed);
    assert!(
        error
            .message
            .contains("did not start: the agent exited at once"),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .ends_with("agent.log ends with:\nbroken agent: no settings for you"),
        "{}",
        error.message
    );
    assert_eq!(names(&fixture.cpi.root().join("vms")), Vec::<String>::new());
    // The disk is free again.
    let record: Value = serde_json::from_slice(
        &fs::read(fixture.cpi.disk_dir(&disk).with_extension("json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["vm"], Value::Null);
}

#[test]
fn vms_are_found_by_their_agent_id_and_half_made_ones_are_removed() {
    let fixture = fixture();
    let stemcell = fixture.stemcell(FAKE_AGENT);
    let a = fixture.create_vm(&stemcell, "agent-a", "127.0.45.80", &[]);
    let b = fixture.create_vm(&stemcell, "agent-b", "127.0.45.81", &[]);
    let cpi = &fixture.cpi;
    assert_eq!(cpi.find_vm_by_agent_id("agent-a").unwrap(), Some(a.clone()));
    assert_eq!(cpi.find_vm_by_agent_id("agent-b").unwrap(), Some(b.clone()));
    assert_eq!(cpi.find_vm_by_agent_id("agent-nope").unwrap(), None);

    // What a process that died inside create_vm leaves is removed; one still being made
    // (its lock held) is left alone.
    let vms = cpi.root().join("vms");
    let abandoned = vms.join(".creating-vm-dead");
    let busy = vms.join(".creating-vm-busy");
    fs::create_dir(&abandoned).unwrap();
    fs::write(abandoned.join("vm.json"), "{}").unwrap();
    fs::create_dir(&busy).unwrap();
    let held = fs::File::open(&busy).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    assert_eq!(cpi.find_vm_by_agent_id("agent-nope").unwrap(), None);
    let mut left = names(&vms);
    left.sort();
    let mut expected = vec![".creating-vm-busy".to_string(), a.clone(), b.clone()];
    expected.sort();
    assert_eq!(left, expected);
    drop(held);
    fs::remove_dir(&busy).unwrap();

    cpi.delete_vm(&a).unwrap();
    assert_eq!(cpi.find_vm_by_agent_id("agent-a").unwrap(), None);
    cpi.delete_vm(&b).unwrap();
}

#[test]
fn missing_things_are_named() {
    let fixture = fixture();
    let error = fixture
        .cpi
        .create_vm(
            "a",
            "stemcell-nope",
            &json!({}),
            &networks("127.0.45.50"),
            &[],
            &environment("a"),
        )
        .unwrap_err();
    assert_eq!(
        (error.kind, error.message.as_str()),
        (ErrorKind::CloudError, "stemcell 'stemcell-nope' not found")
    );
    for (result, kind) in [
        (fixture.cpi.reboot_vm("vm-nope"), ErrorKind::VmNotFound),
        (
            fixture.cpi.set_vm_metadata("vm-nope", &json!({})),
            ErrorKind::VmNotFound,
        ),
        (fixture.cpi.delete_vm("../../etc"), ErrorKind::VmNotFound),
        (
            fixture.cpi.set_disk_metadata("disk-nope", &json!({})),
            ErrorKind::DiskNotFound,
        ),
        (
            fixture.cpi.delete_disk("disk-nope"),
            ErrorKind::DiskNotFound,
        ),
    ] {
        assert_eq!(result.unwrap_err().kind, kind);
    }
    assert_eq!(
        fixture.cpi.get_disks("vm-nope").unwrap_err().kind,
        ErrorKind::VmNotFound
    );
    assert!(!fixture.cpi.has_vm("vm-nope").unwrap());
    assert!(!fixture.cpi.has_disk("../cpi").unwrap());
    assert_eq!(fixture.cpi.agent_log_tail("vm-nope", 5), None);
}

#[test]
fn metadata_is_kept_beside_the_vm() {
    let fixture = fixture();
    let stemcell = fixture.stemcell(FAKE_AGENT);
    let vm = fixture.create_vm(&stemcell, "agent-m", "127.0.45.60", &[]);
    let metadata = json!({"deployment": "dep", "name": "web/0", "index": "0"});
    fixture.cpi.set_vm_metadata(&vm, &metadata).unwrap();
    let written: Value =
        serde_json::from_slice(&fs::read(fixture.cpi.vm_dir(&vm).join("metadata.json")).unwrap())
            .unwrap();
    assert_eq!(written, metadata);
    fixture.cpi.delete_vm(&vm).unwrap();
}

fn settings_of(cpi: &LocalCpi, vm: &str) -> agent_protocol::Settings {
    let path = cpi.vm_dir(vm).join("vcap/bosh/settings.json");
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_vm_cannot_read_the_directors_data_other_vms_or_the_cpi_root() {
    // The director's layout: its data directory holds the token, the state database and
    // the CPI's root.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let root = data.join("cpi");
    let _vms = DeleteVmsOnDrop(root.clone());
    let cpi = LocalCpi::new(root.clone()).hiding(data.clone());
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("token"), "director-token\n").unwrap();
    fs::write(data.join("state.db"), "state\n").unwrap();
    let image = stemcell_image(dir.path(), "plain.tgz", FAKE_AGENT);
    let plain = cpi.create_stemcell(&image, &json!({})).unwrap();
    let (neighbour, _) = cpi
        .create_vm(
            "agent-n",
            &plain,
            &json!({}),
            &networks("127.0.45.31"),
            &[],
            &environment("agent-n"),
        )
        .unwrap();
    let disk = cpi.create_disk(16, &json!({}), None).unwrap();
    fs::write(cpi.disk_dir(&disk).join("kept"), "disk data\n").unwrap();

    // A probe as the VM's agent: which of these can it read?
    let neighbour_settings = cpi.vm_dir(&neighbour).join("vcap/bosh/settings.json");
    let targets = [
        data.join("token"),
        data.join("state.db"),
        neighbour_settings.clone(),
        root.join("stemcells").join(&plain).join("bosh-agent"),
        PathBuf::from("/var/vcap/bosh/settings.json"),
        cpi.disk_dir(&disk).join("kept"),
    ];
    let mut probe = String::from("#!/bin/sh\n{\n");
    for target in &targets {
        probe.push_str(&format!(
            "  if cat '{0}' >/dev/null 2>&1; then echo 'read {0}'; else echo 'cannot read {0}'; fi\n",
            target.display()
        ));
    }
    probe.push_str("} > /var/vcap/sys/log/probe.tmp\nmv /var/vcap/sys/log/probe.tmp /var/vcap/sys/log/probe.log\nsleep 1000\n");
    let image = stemcell_image(dir.path(), "probe.tgz", &probe);
    let probing = cpi.create_stemcell(&image, &json!({})).unwrap();
    let (vm, _) = cpi
        .create_vm(
            "agent-p",
            &probing,
            &json!({}),
            &networks("127.0.45.32"),
            &[],
            &environment("agent-p"),
        )
        .unwrap();
    let log = cpi.vm_dir(&vm).join("vcap/sys/log/probe.log");
    wait_for(&log);
    let seen = fs::read_to_string(&log).unwrap();
    let expected: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(index, target)| {
            // Its own settings and the persistent disks stay reachable.
            let verb = if index >= 4 { "read" } else { "cannot read" };
            format!("{verb} {}", target.display())
        })
        .collect();
    assert_eq!(seen.lines().collect::<Vec<_>>(), expected);
    // The host still sees everything.
    assert!(neighbour_settings.is_file());
    assert_eq!(
        fs::read_to_string(data.join("token")).unwrap(),
        "director-token\n"
    );
    cpi.delete_vm(&vm).unwrap();
    cpi.delete_vm(&neighbour).unwrap();
}

#[test]
fn an_address_already_in_use_on_the_host_is_refused_naming_its_holder() {
    let fixture = fixture();
    let stemcell = fixture.stemcell(FAKE_AGENT);
    let listener = std::net::TcpListener::bind("127.0.45.41:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let error = fixture
        .cpi
        .create_vm(
            "agent-busy",
            &stemcell,
            &json!({}),
            &networks("127.0.45.41"),
            &[],
            &environment("agent-busy"),
        )
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::CloudError);
    let command = fs::read_to_string("/proc/self/comm").unwrap();
    let expected_start = "cannot give 127.0.45.41 (network 'default') to vm 'vm-";
    let expected_holder = format!(
        "': 127.0.45.41:{port} (tcp) is already in use on this host by pid {} ({}); is another \
         deployment's vm still running on this host",
        std::process::id(),
        command.trim()
    );
    assert!(
        error.message.starts_with(expected_start),
        "{}",
        error.message
    );
    assert!(
        error.message.contains(&expected_holder),
        "{}",
        error.message
    );
    assert_eq!(names(&fixture.cpi.root().join("vms")), Vec::<String>::new());

    // Once the address is free again, the VM is made.
    drop(listener);
    let vm = fixture.create_vm(&stemcell, "agent-busy", "127.0.45.41", &[]);
    fixture.cpi.delete_vm(&vm).unwrap();
}
