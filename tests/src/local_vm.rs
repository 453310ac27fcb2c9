//! The local CPI's VMs as a test sees them from the host: a VM is a directory under the
//! director's `cpi/vms/<cid>` and the processes in its agent's mount namespace.

use std::path::PathBuf;

use serde_json::Value;

use crate::User;

/// The directory of local VM `vm_cid`.
pub fn vm_dir(user: &User, vm_cid: &str) -> PathBuf {
    user.data_dir().join("cpi/vms").join(vm_cid)
}

/// The directory of local disk `disk_cid`.
pub fn disk_dir(user: &User, disk_cid: &str) -> PathBuf {
    user.data_dir().join("cpi/disks").join(disk_cid)
}

/// The VM's agent root (`/var/vcap` on a VM).
pub fn agent_root(user: &User, vm_cid: &str) -> PathBuf {
    vm_dir(user, vm_cid).join("vcap")
}

/// File `path` of job `job` as the VM's agent installed it: `/var/vcap/jobs/<job>` is a
/// link the host cannot follow (it names the VM's `/var/vcap`), so this reads the link and
/// finds its target under [`agent_root`].
pub fn job_file(user: &User, vm_cid: &str, job: &str, path: &str) -> PathBuf {
    let root = agent_root(user, vm_cid);
    let link = root.join("jobs").join(job);
    let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    let inside = target.strip_prefix("/var/vcap").unwrap_or(&target);
    root.join(inside).join(path)
}

/// The pid of the VM's agent.
pub fn agent_pid(user: &User, vm_cid: &str) -> u32 {
    let record: Value =
        serde_json::from_slice(&std::fs::read(vm_dir(user, vm_cid).join("vm.json")).unwrap())
            .unwrap();
    let pid = record["pid"].as_u64().expect("the agent's pid");
    u32::try_from(pid).unwrap()
}

/// Every process in the mount namespace of the VM's agent (the agent, the jobs it started,
/// their children): the VM's whole process tree.
pub fn vm_processes(user: &User, vm_cid: &str) -> Vec<String> {
    let pid = agent_pid(user, vm_cid);
    let namespace = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.parse::<u32>().is_ok())
        .filter(|other| {
            std::fs::read_link(format!("/proc/{other}/ns/mnt"))
                .ok()
                .as_ref()
                == Some(&namespace)
        })
        .collect()
}

/// Sends `signal` (`-9`, `-STOP`, `-CONT`) to the VM's whole process tree.
pub fn signal_vm(user: &User, vm_cid: &str, signal: &str) {
    let pids = vm_processes(user, vm_cid);
    assert!(!pids.is_empty(), "nothing of VM {vm_cid} was running");
    // A process may end between the listing and the kill: kill's status says nothing.
    let _ = std::process::Command::new("kill")
        .arg(signal)
        .args(&pids)
        .status();
}
