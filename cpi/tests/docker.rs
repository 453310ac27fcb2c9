//! `DockerCpi` against this host's Docker engine (`/var/run/docker.sock`): a stemcell
//! imported from a tiny root file system built here (the host's `/bin/sh`, `sleep`, `cat`,
//! `mkdir`, `ln`, sometimes `bash`, and their libraries, plus a fake agent), a VM's container
//! with the IP, hostname, labels, limits, ports and settings asked for, disks, the ephemeral
//! volume and the agent's state across re-creation, the address containers reach the host
//! at, reboot, deletion, and nothing left behind. The tests fail, never
//! skip, when the engine does not answer. Every run uses its own director id (a label on
//! everything the CPI makes) and name prefix; what a failed run leaves is removed on drop.
//! Inspection goes through the `docker` command, independent of the CPI's client.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use cpi::docker::{
    AGENT_ID_LABEL, DIRECTOR_LABEL, DISK_SIZE_LABEL, DockerConfig, DockerCpi, EPHEMERAL_FOR_LABEL,
    ephemeral_volume_name,
};
use cpi::{Cpi, ErrorKind};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

/// The fake agent: it reads the settings the CPI placed before the start (and exits when
/// they are missing), then sleeps as the container's main process.
const FAKE_AGENT: &str = "#!/bin/sh\n[ \"$1\" = --settings ] || exit 2\ncat \"$2\" > /dev/null || exit 3\nexec sleep 100000\n";

/// One test's own director id, prefix and CPI; removes what carries its label on drop.
struct Run {
    director_id: String,
    prefix: String,
    cpi: DockerCpi,
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let director_id = format!("cpi-test-{id}");
        let prefix = format!("cpi-test-{}-", &id[..12]);
        let config = DockerConfig {
            name_prefix: prefix.clone(),
            ..DockerConfig::local(&director_id)
        };
        let cpi = match DockerCpi::new(config) {
            Ok(cpi) => cpi,
            Err(error) => panic!("the Docker engine must answer for these tests: {error}"),
        };
        Run {
            director_id,
            prefix,
            cpi,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn label_filter(&self) -> String {
        format!("label={DIRECTOR_LABEL}={}", self.director_id)
    }

    /// `docker <list> --filter <this run's label>`, one line an item.
    fn list(&self, list: &[&str]) -> Vec<String> {
        let filter = self.label_filter();
        let mut args = list.to_vec();
        args.extend(["--filter", &filter]);
        docker(&args).lines().map(str::to_string).collect()
    }

    /// A stemcell of [`rootfs_image`] with the `extra` programs, in the engine.
    fn stemcell(&self, extra: &[&str]) -> String {
        let image = rootfs_image(self.dir.path(), extra);
        let properties = json!({"name": format!("{}stemcell", self.prefix), "version": "1"});
        self.cpi.create_stemcell(&image, &properties).unwrap()
    }

    /// What of this run is left: containers, networks, volumes, images (ids or names).
    fn leftovers(&self) -> Vec<String> {
        let filter = self.label_filter();
        let mut left = Vec::new();
        for args in [
            vec!["ps", "-aq", "--filter", &filter],
            vec!["network", "ls", "-q", "--filter", &filter],
            vec!["volume", "ls", "-q", "--filter", &filter],
            vec!["images", "-q", "--filter", &filter],
        ] {
            left.extend(docker(&args).lines().map(str::to_string));
        }
        left
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let filter = self.label_filter();
        for (list, remove) in [
            (vec!["ps", "-aq", "--filter", &filter], vec!["rm", "-f"]),
            (
                vec!["network", "ls", "-q", "--filter", &filter],
                vec!["network", "rm"],
            ),
            (
                vec!["volume", "ls", "-q", "--filter", &filter],
                vec!["volume", "rm", "-f"],
            ),
            (vec!["images", "-q", "--filter", &filter], vec!["rmi", "-f"]),
        ] {
            let Ok(output) = Command::new("docker").args(&list).output() else {
                continue;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&remove).args(&ids).output();
            }
        }
    }
}

/// Runs `docker args`, which must succeed; answers its standard output.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `docker inspect` of one object.
fn inspect(args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let list: Value = serde_json::from_str(&docker(&all)).unwrap();
    list[0].clone()
}

fn exists(kind: &str, name: &str) -> bool {
    Command::new("docker")
        .args([kind, "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// A file of a container, with its mode, through `docker cp` (works on any state).
fn read_from_container(container: &str, path: &str) -> (String, u32) {
    let output = Command::new("docker")
        .args(["cp", &format!("{container}:{path}"), "-"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "docker cp {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut archive = tar::Archive::new(output.stdout.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mode = entry.header().mode().unwrap();
    let mut contents = String::new();
    entry.read_to_string(&mut contents).unwrap();
    (contents, mode & 0o7777)
}

/// A gzipped root file system: the host's `sh`, `sleep`, `cat`, `mkdir`, `ln`, the
/// `extra` programs and the libraries `ldd` names for them, and [`FAKE_AGENT`] as
/// `/var/vcap/bosh/bin/bosh-agent`.
fn rootfs_image(dir: &Path, extra: &[&str]) -> PathBuf {
    let mut programs = vec!["/bin/sh", "/bin/sleep", "/bin/cat", "/bin/mkdir", "/bin/ln"];
    programs.extend_from_slice(extra);
    let mut files: Vec<String> = programs.iter().map(|p| p.to_string()).collect();
    let ldd = Command::new("ldd").args(&programs).output().unwrap();
    assert!(ldd.status.success(), "ldd {programs:?}");
    for line in String::from_utf8(ldd.stdout).unwrap().lines() {
        if let Some(library) = line
            .split_whitespace()
            .find(|word| word.starts_with('/') && !word.ends_with(':'))
        {
            files.push(library.to_string());
        }
    }
    files.sort();
    files.dedup();
    let path = dir.join("image.tgz");
    let mut archive = tar::Builder::new(GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        Compression::fast(),
    ));
    for file in &files {
        // Followed: `/bin/sh` is a link to dash on Debian.
        archive
            .append_path_with_name(file, file.trim_start_matches('/'))
            .unwrap();
    }
    for directory in ["tmp", "var/vcap/bosh/bin"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        archive
            .append_data(&mut header, directory, std::io::empty())
            .unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(FAKE_AGENT.len() as u64);
    archive
        .append_data(
            &mut header,
            "var/vcap/bosh/bin/bosh-agent",
            FAKE_AGENT.as_bytes(),
        )
        .unwrap();
    archive.into_inner().unwrap().finish().unwrap();
    path
}

/// A /24 of 10.200.0.0/13 picked at random (parallel runs do not share one).
fn random_subnet() -> [u8; 3] {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    [10, 200 + bytes[0] % 8, bytes[1]]
}

fn environment() -> Value {
    json!({"bosh": {
        "mbus": "nats://agent:secret@127.0.0.1:4222",
        "blobstores": [{"provider": "director", "options": {"endpoint": "http://127.0.0.1:25555"}}],
    }})
}

#[test]
fn a_stemcell_and_a_vm_live_and_die_on_the_docker_engine() {
    let run = Run::new();
    let image = rootfs_image(run.dir.path(), &[]);
    let stemcell_name = format!("{}stemcell", run.prefix);

    // create_stemcell: the image is imported and tagged <name>:<version>.
    let stemcell = run
        .cpi
        .create_stemcell(
            &image,
            &json!({"name": stemcell_name, "version": "1.2+dev.3"}),
        )
        .unwrap();
    let image_info = inspect(&["--type", "image", &stemcell]);
    assert_eq!(image_info["Id"], stemcell.as_str());
    assert_eq!(
        image_info["RepoTags"],
        json!([format!("{stemcell_name}:1.2_dev.3")])
    );

    // create_vm: running, with the IP, hostname and labels asked for and the settings
    // placed before the start (the fake agent exits without them).
    let [a, b, c] = random_subnet();
    let ip = format!("{a}.{b}.{c}.5");
    let networks = json!({"default": {
        "type": "manual", "ip": ip, "netmask": "255.255.255.0",
        "gateway": format!("{a}.{b}.{c}.1"), "default": ["dns", "gateway"],
    }});
    let (vm, answered) = run
        .cpi
        .create_vm(
            "agent-1",
            &stemcell,
            &json!({}),
            &networks,
            &[],
            &environment(),
        )
        .unwrap();
    assert!(vm.starts_with(&run.prefix), "{vm}");
    assert_eq!(answered, networks);
    let container = inspect(&["--type", "container", &vm]);
    assert_eq!(container["State"]["Running"], true, "{container:#}");
    assert_eq!(container["Config"]["Hostname"], vm.as_str());
    assert_eq!(container["Config"]["Labels"][AGENT_ID_LABEL], "agent-1");
    assert_eq!(
        container["Config"]["Labels"][DIRECTOR_LABEL],
        run.director_id.as_str()
    );
    assert_eq!(container["HostConfig"]["Init"], true);
    let endpoints = container["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let (network, endpoint) = endpoints.iter().next().unwrap();
    assert_eq!(endpoint["IPAddress"], ip.as_str());
    let network_info = inspect(&["--type", "network", network]);
    assert_eq!(
        network_info["IPAM"]["Config"][0]["Subnet"],
        format!("{a}.{b}.{c}.0/24")
    );
    assert_eq!(
        network_info["IPAM"]["Config"][0]["Gateway"],
        format!("{a}.{b}.{c}.1")
    );
    let (settings, mode) = read_from_container(&vm, "/var/vcap/bosh/settings.json");
    let settings: Value = serde_json::from_str(&settings).unwrap();
    assert_eq!(settings["agent_id"], "agent-1");
    assert_eq!(settings["vm"]["name"], vm.as_str());
    assert_eq!(settings["networks"]["default"]["ip"], ip.as_str());
    assert_eq!(mode, 0o600);

    assert!(run.cpi.has_vm(&vm).unwrap());
    assert_eq!(
        run.cpi.find_vm_by_agent_id("agent-1").unwrap(),
        Some(vm.clone())
    );
    assert_eq!(run.cpi.find_vm_by_agent_id("agent-2").unwrap(), None);
    assert!(
        !run.cpi
            .has_vm(&format!("{}vm-missing", run.prefix))
            .unwrap()
    );

    // set_vm_metadata: kept in a file in the container.
    let metadata = json!({"deployment": "d", "job": "web", "index": "0"});
    run.cpi.set_vm_metadata(&vm, &metadata).unwrap();
    let (kept, _) = read_from_container(&vm, "/var/vcap/bosh/vm-metadata.json");
    assert_eq!(serde_json::from_str::<Value>(&kept).unwrap(), metadata);

    // reboot_vm: started again, same address.
    let started = container["State"]["StartedAt"].clone();
    run.cpi.reboot_vm(&vm).unwrap();
    let rebooted = inspect(&["--type", "container", &vm]);
    assert_eq!(rebooted["State"]["Running"], true, "{rebooted:#}");
    assert_ne!(rebooted["State"]["StartedAt"], started);
    assert_eq!(
        rebooted["NetworkSettings"]["Networks"][network]["IPAddress"],
        ip.as_str()
    );

    // delete_vm: the container and its network are gone; a second delete is VMNotFound.
    run.cpi.delete_vm(&vm).unwrap();
    assert!(!run.cpi.has_vm(&vm).unwrap());
    assert!(!exists("container", &vm));
    assert!(!exists("network", network));
    assert_eq!(
        run.cpi.delete_vm(&vm).unwrap_err().kind,
        ErrorKind::VmNotFound
    );
    assert_eq!(
        run.cpi.reboot_vm(&vm).unwrap_err().kind,
        ErrorKind::VmNotFound
    );

    // delete_stemcell: the image is gone; deleting it again succeeds.
    run.cpi.delete_stemcell(&stemcell).unwrap();
    assert!(!exists("image", &stemcell));
    run.cpi.delete_stemcell(&stemcell).unwrap();

    assert_eq!(run.leftovers(), Vec::<String>::new());
}

/// Runs `sh -c script` in a running container; answers its standard output.
fn exec(container: &str, script: &str) -> String {
    docker(&["exec", container, "sh", "-c", script])
}

#[test]
fn a_disk_is_a_volume_that_keeps_its_data_from_vm_to_vm() {
    let run = Run::new();
    let image = rootfs_image(run.dir.path(), &[]);
    let stemcell = run
        .cpi
        .create_stemcell(
            &image,
            &json!({"name": format!("{}stemcell", run.prefix), "version": "1"}),
        )
        .unwrap();
    let [a, b, c] = random_subnet();
    let network = |host: u8| {
        json!({"default": {
            "type": "manual", "ip": format!("{a}.{b}.{c}.{host}"), "netmask": "255.255.255.0",
            "gateway": format!("{a}.{b}.{c}.1"),
        }})
    };
    let create_vm = |agent: &str, host: u8, disks: &[String]| {
        run.cpi
            .create_vm(
                agent,
                &stemcell,
                &json!({}),
                &network(host),
                disks,
                &environment(),
            )
            .map(|(vm, _)| vm)
    };
    let ip_of = |container: &Value| {
        let endpoints = container["NetworkSettings"]["Networks"]
            .as_object()
            .unwrap();
        assert_eq!(endpoints.len(), 1, "{endpoints:?}");
        endpoints.values().next().unwrap()["IPAddress"].clone()
    };
    let settings_of = |vm: &str| -> Value {
        serde_json::from_str(&read_from_container(vm, "/var/vcap/bosh/settings.json").0).unwrap()
    };
    let first = create_vm("agent-1", 5, &[]).unwrap();
    let metadata = json!({"deployment": "d", "job": "db", "index": "0"});
    run.cpi.set_vm_metadata(&first, &metadata).unwrap();
    let before = inspect(&["--type", "container", &first]);

    // create_disk: a volume of this director with its size in a label.
    let disk = run.cpi.create_disk(1024, &json!({}), Some(&first)).unwrap();
    assert!(disk.starts_with(&run.prefix), "{disk}");
    let volume = inspect(&["--type", "volume", &disk]);
    assert_eq!(volume["Labels"][DISK_SIZE_LABEL], "1024");
    assert_eq!(volume["Labels"][DIRECTOR_LABEL], run.director_id.as_str());
    assert!(run.cpi.has_disk(&disk).unwrap());
    assert!(
        !run.cpi
            .has_disk(&format!("{}disk-missing", run.prefix))
            .unwrap()
    );

    // attach_disk: a new container under the same name, with the same IP, hostname,
    // labels and metadata, the volume mounted where the answer (and the settings) say.
    let hint = run.cpi.attach_disk(&first, &disk).unwrap();
    let path = format!("/var/vcap/disks/{disk}");
    assert_eq!(hint, json!({"path": path}));
    let after = inspect(&["--type", "container", &first]);
    assert_ne!(
        after["Id"], before["Id"],
        "the container was not re-created"
    );
    assert_eq!(after["State"]["Running"], true, "{after:#}");
    assert_eq!(ip_of(&after), json!(format!("{a}.{b}.{c}.5")));
    assert_eq!(after["Config"]["Hostname"], first.as_str());
    assert_eq!(after["Config"]["Labels"], before["Config"]["Labels"]);
    assert_eq!(after["HostConfig"]["Init"], true);
    let settings = settings_of(&first);
    assert_eq!(settings["disks"]["persistent"][&disk], hint);
    assert_eq!(settings["agent_id"], "agent-1");
    let (kept, _) = read_from_container(&first, "/var/vcap/bosh/vm-metadata.json");
    assert_eq!(serde_json::from_str::<Value>(&kept).unwrap(), metadata);
    assert_eq!(run.cpi.get_disks(&first).unwrap(), vec![disk.clone()]);
    assert!(!exists("container", &format!("{first}-replaced")));

    // Attaching again changes nothing.
    assert_eq!(run.cpi.attach_disk(&first, &disk).unwrap(), hint);
    assert_eq!(inspect(&["--type", "container", &first])["Id"], after["Id"]);

    exec(&first, &format!("echo kept > {path}/data"));
    let error = run.cpi.delete_disk(&disk).unwrap_err();
    assert!(
        error.message.contains("detach it first"),
        "{}",
        error.message
    );
    assert!(exists("volume", &disk));

    // detach_disk: re-created without it, same IP; a second detach is DiskNotAttached.
    run.cpi.detach_disk(&first, &disk).unwrap();
    assert_eq!(run.cpi.get_disks(&first).unwrap(), Vec::<String>::new());
    let detached = inspect(&["--type", "container", &first]);
    assert_eq!(detached["State"]["Running"], true, "{detached:#}");
    assert_eq!(ip_of(&detached), json!(format!("{a}.{b}.{c}.5")));
    assert_eq!(settings_of(&first)["disks"]["persistent"], json!({}));
    assert_eq!(
        exec(
            &first,
            &format!("[ -e {path}/data ] && echo there || echo gone")
        ),
        "gone\n"
    );
    assert_eq!(
        run.cpi.detach_disk(&first, &disk).unwrap_err().kind,
        ErrorKind::DiskNotAttached
    );

    // On a new VM the data is there; the first VM cannot take the disk meanwhile.
    let second = create_vm("agent-2", 6, &[]).unwrap();
    run.cpi.attach_disk(&second, &disk).unwrap();
    assert_eq!(exec(&second, &format!("cat {path}/data")), "kept\n");
    let error = run.cpi.attach_disk(&first, &disk).unwrap_err();
    assert!(error.message.contains(&second), "{}", error.message);
    run.cpi.detach_disk(&second, &disk).unwrap();

    // create_vm with the disk mounts it from the start.
    let third = create_vm("agent-3", 7, std::slice::from_ref(&disk)).unwrap();
    assert_eq!(run.cpi.get_disks(&third).unwrap(), vec![disk.clone()]);
    assert_eq!(settings_of(&third)["disks"]["persistent"][&disk], hint);
    assert_eq!(exec(&third, &format!("cat {path}/data")), "kept\n");

    // Deleting VMs keeps the disk; delete_disk removes the volume, and again succeeds.
    for vm in [&first, &second, &third] {
        run.cpi.delete_vm(vm).unwrap();
    }
    assert!(run.cpi.has_disk(&disk).unwrap());
    run.cpi.set_disk_metadata(&disk, &metadata).unwrap();
    run.cpi.delete_disk(&disk).unwrap();
    assert!(!exists("volume", &disk));
    assert!(!run.cpi.has_disk(&disk).unwrap());
    run.cpi.delete_disk(&disk).unwrap();
    assert_eq!(
        run.cpi
            .set_disk_metadata(&disk, &metadata)
            .unwrap_err()
            .kind,
        ErrorKind::DiskNotFound
    );
    assert_eq!(
        run.cpi.get_disks(&first).unwrap_err().kind,
        ErrorKind::VmNotFound
    );
    assert_eq!(
        create_vm("agent-4", 8, std::slice::from_ref(&disk))
            .unwrap_err()
            .kind,
        ErrorKind::DiskNotFound
    );

    run.cpi.delete_stemcell(&stemcell).unwrap();
    assert_eq!(run.leftovers(), Vec::<String>::new());
}

#[test]
fn a_vm_that_cannot_be_made_is_not_left_behind() {
    let run = Run::new();
    let image = rootfs_image(run.dir.path(), &[]);
    let stemcell = run
        .cpi
        .create_stemcell(
            &image,
            &json!({"name": format!("{}stemcell", run.prefix), "version": "1"}),
        )
        .unwrap();
    // Two VMs cannot have one IP: the second create_vm fails and removes its container.
    let [a, b, c] = random_subnet();
    let networks = json!({"default": {
        "type": "manual", "ip": format!("{a}.{b}.{c}.9"), "netmask": "255.255.255.0",
        "gateway": format!("{a}.{b}.{c}.1"),
    }});
    let (vm, _) = run
        .cpi
        .create_vm(
            "agent-1",
            &stemcell,
            &json!({}),
            &networks,
            &[],
            &environment(),
        )
        .unwrap();
    let error = run
        .cpi
        .create_vm(
            "agent-2",
            &stemcell,
            &json!({}),
            &networks,
            &[],
            &environment(),
        )
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::VmCreationFailed, "{error:?}");
    assert_eq!(run.cpi.find_vm_by_agent_id("agent-2").unwrap(), None);
    // Its ephemeral volume went with it: only the first VM's is left.
    assert_eq!(
        run.list(&["volume", "ls", "-q"]),
        vec![ephemeral_volume_name(&vm)]
    );
    assert_eq!(run.list(&["ps", "-aq"]).len(), 1);

    // Cloud properties it cannot take are refused before anything is made.
    let error = run
        .cpi
        .create_vm(
            "agent-2",
            &stemcell,
            &json!({"memory": 64, "instance_type": "m5.large"}),
            &networks,
            &[],
            &environment(),
        )
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::CpiError, "{error:?}");
    assert!(
        error.message.contains("cloud_properties.instance_type")
            && error.message.contains("memory, cpus, ports, privileged"),
        "{error:?}"
    );
    assert_eq!(run.list(&["volume", "ls", "-q"]).len(), 1);

    // A stemcell that is not there is named.
    let error = run
        .cpi
        .create_vm(
            "agent-3",
            "sha256:0000",
            &json!({}),
            &networks,
            &[],
            &environment(),
        )
        .unwrap_err();
    assert!(error.message.contains("sha256:0000"), "{error:?}");

    // A disk that is not there, or a VM that is not there, is named.
    let missing = format!("{}disk-missing", run.prefix);
    let error = run.cpi.attach_disk(&vm, &missing).unwrap_err();
    assert_eq!(error.kind, ErrorKind::DiskNotFound, "{error:?}");
    assert!(error.message.contains(&missing), "{error:?}");
    let error = run
        .cpi
        .attach_disk(&format!("{}vm-missing", run.prefix), &missing)
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::VmNotFound, "{error:?}");

    run.cpi.delete_vm(&vm).unwrap();
    run.cpi.delete_stemcell(&stemcell).unwrap();
    assert_eq!(run.leftovers(), Vec::<String>::new());
}

#[test]
fn an_engine_that_does_not_answer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-docker.sock");
    let config = DockerConfig {
        socket: socket.clone(),
        ..DockerConfig::local("cpi-test")
    };
    let error = DockerCpi::new(config).unwrap_err();
    assert!(
        error.message.contains(&socket.display().to_string()),
        "{error:?}"
    );
}

/// A manual network `default` on the /24 `subnet` with the IP `<subnet>.<host>`.
fn manual_network([a, b, c]: [u8; 3], host: u8) -> Value {
    json!({"default": {
        "type": "manual", "ip": format!("{a}.{b}.{c}.{host}"), "netmask": "255.255.255.0",
        "gateway": format!("{a}.{b}.{c}.1"),
    }})
}

/// A TCP port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn cloud_properties_limit_publish_and_privilege_a_vm_and_survive_its_re_creation() {
    let run = Run::new();
    let stemcell = run.stemcell(&[]);
    let port = free_port();
    let properties = json!({
        "memory": 64, "cpus": 0.5, "privileged": false,
        "ports": [format!("127.0.0.1:{port}:80/tcp"), "127.0.0.1::53/udp"],
    });
    let (vm, _) = run
        .cpi
        .create_vm(
            "agent-1",
            &stemcell,
            &properties,
            &manual_network(random_subnet(), 5),
            &[],
            &environment(),
        )
        .unwrap();
    // What the engine holds, and the binding it made for the running container.
    let check = |when: &str| {
        let container = inspect(&["--type", "container", &vm]);
        let host_config = &container["HostConfig"];
        assert_eq!(host_config["Memory"], 64 * 1024 * 1024, "{when}");
        assert_eq!(host_config["NanoCpus"], 500_000_000, "{when}");
        assert_eq!(host_config["Privileged"], false, "{when}");
        assert_eq!(
            host_config["PortBindings"],
            json!({
                "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": port.to_string()}],
                "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
            }),
            "{when}"
        );
        assert_eq!(
            container["Config"]["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}}),
            "{when}"
        );
        assert_eq!(container["State"]["Running"], true, "{when}: {container:#}");
        let ports = &container["NetworkSettings"]["Ports"];
        assert_eq!(
            ports["80/tcp"][0]["HostPort"],
            port.to_string(),
            "{when}: {ports}"
        );
        assert_eq!(ports["53/udp"][0]["HostIp"], "127.0.0.1", "{when}: {ports}");
        container["Id"].clone()
    };
    let created = check("created");

    // attach_disk and detach_disk re-create the container with the same host settings.
    let disk = run.cpi.create_disk(100, &json!({}), Some(&vm)).unwrap();
    run.cpi.attach_disk(&vm, &disk).unwrap();
    let attached = check("after attach_disk");
    assert_ne!(attached, created, "the container was not re-created");
    run.cpi.detach_disk(&vm, &disk).unwrap();
    assert_ne!(check("after detach_disk"), attached);
    run.cpi.delete_vm(&vm).unwrap();

    // privileged: the container runs privileged, or, on an engine that may not grant every
    // capability (a container's own engine, as on this test's machine), its start is
    // refused for exactly that, where the same VM unprivileged started above.
    let privileged = run.cpi.create_vm(
        "agent-2",
        &stemcell,
        &json!({"privileged": true}),
        &manual_network(random_subnet(), 6),
        &[],
        &environment(),
    );
    match privileged {
        Ok((vm, _)) => {
            let container = inspect(&["--type", "container", &vm]);
            assert_eq!(container["HostConfig"]["Privileged"], true);
            run.cpi.attach_disk(&vm, &disk).unwrap();
            let container = inspect(&["--type", "container", &vm]);
            assert_eq!(
                container["HostConfig"]["Privileged"], true,
                "after attach_disk"
            );
            run.cpi.detach_disk(&vm, &disk).unwrap();
            run.cpi.delete_vm(&vm).unwrap();
        }
        Err(error) => {
            assert_eq!(error.kind, ErrorKind::VmCreationFailed, "{error:?}");
            assert!(error.message.contains("unable to apply caps"), "{error:?}");
            assert_eq!(run.list(&["ps", "-aq"]), Vec::<String>::new());
        }
    }

    run.cpi.delete_disk(&disk).unwrap();
    run.cpi.delete_stemcell(&stemcell).unwrap();
    assert_eq!(run.leftovers(), Vec::<String>::new());
}

#[test]
fn the_directors_metadata_and_group_label_the_container() {
    let run = Run::new();
    let stemcell = run.stemcell(&[]);
    let mut environment = environment();
    environment["bosh"]["group"] = json!("my-director-web-frontend");
    environment["bosh"]["metadata"] = json!({
        "deployment": "web", "instance_group": "frontend", "index": "2",
        "id": "0b5c2f0e", "name": "frontend/0b5c2f0e", "director": "my-director",
        "agent-id": "forged", "not-a-string": 7,
    });
    let (vm, _) = run
        .cpi
        .create_vm(
            "agent-1",
            &stemcell,
            &json!({}),
            &manual_network(random_subnet(), 5),
            &[],
            &environment,
        )
        .unwrap();
    let labels = inspect(&["--type", "container", &vm])["Config"]["Labels"].clone();
    assert_eq!(
        labels,
        json!({
            "bosh.deployment": "web", "bosh.instance_group": "frontend", "bosh.index": "2",
            "bosh.id": "0b5c2f0e", "bosh.name": "frontend/0b5c2f0e",
            "bosh.group": "my-director-web-frontend",
            DIRECTOR_LABEL: run.director_id, AGENT_ID_LABEL: "agent-1",
        })
    );
    // Later metadata goes to the file: the labels stay.
    let metadata = json!({"deployment": "web", "index": "3"});
    run.cpi.set_vm_metadata(&vm, &metadata).unwrap();
    let (kept, _) = read_from_container(&vm, "/var/vcap/bosh/vm-metadata.json");
    assert_eq!(serde_json::from_str::<Value>(&kept).unwrap(), metadata);
    assert_eq!(
        inspect(&["--type", "container", &vm])["Config"]["Labels"],
        labels
    );

    run.cpi.delete_vm(&vm).unwrap();
    run.cpi.delete_stemcell(&stemcell).unwrap();
    assert_eq!(run.leftovers(), Vec::<String>::new());
}

/// What the agent leaves in a VM: unpacked jobs and packages and a job's data under the
/// data directory, links to them, logs, its own state. Written with [`exec`].
const AGENT_STATE: &str = "set -e
mkdir -p /var/vcap/data/jobs/web/abc /var/vcap/data/packages/nginx/1 /var/vcap/data/web \
  /var/vcap/jobs /var/vcap/packages /var/vcap/sys/log/web /var/vcap/sys/run/web
echo job > /var/vcap/data/jobs/web/abc/marker
echo package > /var/vcap/data/packages/nginx/1/marker
echo data > /var/vcap/data/web/kept
ln -s /var/vcap/data/jobs/web/abc /var/vcap/jobs/web
ln -s /var/vcap/data/packages/nginx/1 /var/vcap/packages/nginx
echo log > /var/vcap/sys/log/web/web.stdout.log
echo running > /var/vcap/bosh/desired_state";

/// Reads [`AGENT_STATE`] back, one line each.
const AGENT_STATE_READ: &str = "cat /var/vcap/data/web/kept /var/vcap/jobs/web/marker \
  /var/vcap/packages/nginx/marker /var/vcap/sys/log/web/web.stdout.log \
  /var/vcap/bosh/desired_state
[ -L /var/vcap/jobs/web ] && [ -L /var/vcap/packages/nginx ] && echo links";

#[test]
fn a_vms_ephemeral_volume_and_the_agents_state_survive_attach_and_detach_and_go_with_the_vm() {
    let run = Run::new();
    let stemcell = run.stemcell(&[]);
    let (vm, _) = run
        .cpi
        .create_vm(
            "agent-1",
            &stemcell,
            &json!({}),
            &manual_network(random_subnet(), 5),
            &[],
            &environment(),
        )
        .unwrap();
    let network = run.list(&["network", "ls", "-q"]);
    assert_eq!(network.len(), 1, "{network:?}");

    // The ephemeral volume: this director's, naming its VM, mounted at the data directory.
    let ephemeral = ephemeral_volume_name(&vm);
    assert_eq!(ephemeral, format!("{vm}-data"));
    let volume = inspect(&["--type", "volume", &ephemeral]);
    assert_eq!(volume["Labels"][DIRECTOR_LABEL], run.director_id.as_str());
    assert_eq!(volume["Labels"][EPHEMERAL_FOR_LABEL], vm.as_str());
    let mounts = inspect(&["--type", "container", &vm])["Mounts"].clone();
    assert_eq!(mounts[0]["Name"], ephemeral.as_str(), "{mounts:#}");
    assert_eq!(mounts[0]["Destination"], "/var/vcap/data", "{mounts:#}");

    // It is not a persistent disk.
    assert!(!run.cpi.has_disk(&ephemeral).unwrap());
    let error = run.cpi.delete_disk(&ephemeral).unwrap_err();
    assert!(
        error
            .message
            .contains(&format!("VM {vm}'s ephemeral volume")),
        "{error:?}"
    );
    assert!(exists("volume", &ephemeral));
    assert_eq!(
        run.cpi.attach_disk(&vm, &ephemeral).unwrap_err().kind,
        ErrorKind::DiskNotFound
    );
    assert_eq!(run.cpi.get_disks(&vm).unwrap(), Vec::<String>::new());

    // The agent's state is all there after attach_disk and after detach_disk.
    exec(&vm, AGENT_STATE);
    let expected = "data\njob\npackage\nlog\nrunning\nlinks\n";
    assert_eq!(exec(&vm, AGENT_STATE_READ), expected);
    let disk = run.cpi.create_disk(100, &json!({}), Some(&vm)).unwrap();
    let before = inspect(&["--type", "container", &vm])["Id"].clone();
    run.cpi.attach_disk(&vm, &disk).unwrap();
    assert_ne!(inspect(&["--type", "container", &vm])["Id"], before);
    assert_eq!(exec(&vm, AGENT_STATE_READ), expected, "after attach_disk");
    assert_eq!(run.cpi.get_disks(&vm).unwrap(), vec![disk.clone()]);
    run.cpi.detach_disk(&vm, &disk).unwrap();
    assert_eq!(exec(&vm, AGENT_STATE_READ), expected, "after detach_disk");
    assert_eq!(
        run.list(&["volume", "ls", "-q"]).len(),
        2,
        "the ephemeral volume and the disk"
    );

    // delete_vm takes the container, its volume and its network; the disk stays.
    run.cpi.delete_vm(&vm).unwrap();
    assert!(!exists("volume", &ephemeral));
    assert_eq!(run.list(&["ps", "-aq"]), Vec::<String>::new());
    assert_eq!(run.list(&["network", "ls", "-q"]), Vec::<String>::new());
    assert_eq!(run.list(&["volume", "ls", "-q"]), vec![disk.clone()]);
    run.cpi.delete_disk(&disk).unwrap();

    // A VM whose container is gone already: delete_vm still takes its volume.
    let (lost, _) = run
        .cpi
        .create_vm(
            "agent-2",
            &stemcell,
            &json!({}),
            &manual_network(random_subnet(), 6),
            &[],
            &environment(),
        )
        .unwrap();
    docker(&["rm", "-f", &lost]);
    assert!(exists("volume", &ephemeral_volume_name(&lost)));
    assert_eq!(
        run.cpi.delete_vm(&lost).unwrap_err().kind,
        ErrorKind::VmNotFound
    );
    assert!(!exists("volume", &ephemeral_volume_name(&lost)));

    // Nothing of this director is left: no container, volume, network or image.
    run.cpi.delete_stemcell(&stemcell).unwrap();
    assert_eq!(run.leftovers(), Vec::<String>::new());
}

#[test]
fn containers_on_a_manual_network_reach_the_host_at_the_agent_address() {
    let run = Run::new();
    let address = run.cpi.agent_address().unwrap();
    // It is the host's address on Docker's default bridge.
    let bridge = inspect(&["--type", "network", "bridge"]);
    let subnet = bridge["IPAM"]["Config"][0]["Subnet"].as_str().unwrap();
    let (network, length) = subnet.split_once('/').unwrap();
    let mask = u32::MAX << (32 - length.parse::<u32>().unwrap());
    let network: std::net::Ipv4Addr = network.parse().unwrap();
    assert_eq!(
        u32::from(address) & mask,
        u32::from(network),
        "{address} in {subnet}"
    );

    // A listener there gets a connection from a VM on a network of the CPI, from its IP.
    let listener = std::net::TcpListener::bind((address, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stemcell = run.stemcell(&["/bin/bash"]);
    let subnet = random_subnet();
    let (vm, _) = run
        .cpi
        .create_vm(
            "agent-1",
            &stemcell,
            &json!({}),
            &manual_network(subnet, 5),
            &[],
            &environment(),
        )
        .unwrap();
    docker(&[
        "exec",
        &vm,
        "bash",
        "-c",
        &format!("echo hello from {vm} > /dev/tcp/{address}/{port}"),
    ]);
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut connection, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection from {vm} to {address}:{port}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("accept: {error}"),
        }
    };
    let [a, b, c] = subnet;
    assert_eq!(peer.ip().to_string(), format!("{a}.{b}.{c}.5"));
    connection.set_nonblocking(false).unwrap();
    let mut text = String::new();
    connection.read_to_string(&mut text).unwrap();
    assert_eq!(text, format!("hello from {vm}\n"));

    run.cpi.delete_vm(&vm).unwrap();
    run.cpi.delete_stemcell(&stemcell).unwrap();
    assert_eq!(run.leftovers(), Vec::<String>::new());
}
