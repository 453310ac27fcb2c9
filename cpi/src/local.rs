//! `LocalCpi`: a VM is a directory plus an agent process on this host.
//!
//! Layout under the root: `stemcells/<cid>/` holds a stemcell's agent binary and
//! `agent.json` (the rest of a `local` stemcell's rootfs is not used: VMs run on the host's
//! OS); `vms/<cid>/` holds `vcap/` (what the VM sees as `/var/vcap`), `vm.json` (agent id,
//! stemcell, pid, mount namespace, attached disks), `agent.log` and `metadata.json`;
//! `disks/<cid>/` is a persistent disk and `disks/<cid>.json` its size, attachment and
//! metadata. Sizes are recorded, not enforced: a disk is a plain directory on the host's
//! file system, without a quota.
//!
//! The agent runs in a mount namespace of its own where `/var/vcap` is the VM's `vcap`
//! directory (see [`namespace`]), so jobs use BOSH's absolute paths, and where the CPI's
//! root and the directories given to [`LocalCpi::hiding`] (the director's data directory)
//! are covered by an empty tmpfs, the persistent disks' directory excepted: two VMs do not
//! see each other's files, and a job does not read the director's token, its state
//! database or another agent's bus password by a path. The rest of the host's file system
//! is shared, and a job running as root can undo the covering: local VMs isolate by
//! convention, for development, not against hostile releases.
//!
//! A VM's network is the loopback address the director gave it (Linux routes all of 127/8
//! to `lo`); nothing is configured, but `create_vm` refuses an address some process on this
//! host already listens on, naming it (see [`sockets`]).
//!
//! Choices:
//! - `delete_vm` of a VM that does not exist answers `VMNotFound`, as BOSH's CPI
//!   compatibility checks expect (`it_can_delete_non_existent_vm`); the director treats
//!   that as already deleted, as BOSH's `DeleteVmStep` does, so a clean-up does not fail.
//!   `delete_stemcell` of a missing stemcell succeeds (BOSH has no error type for it).
//! - Calls on one VM are serialized, also across processes (the `cpi` binary runs one
//!   process per call): each takes an exclusive `flock` on the VM's directory, and on a
//!   disk's directory for calls that change the disk; the VM's lock is always taken first.
//!   Calls on different VMs run in parallel.
//! - A VM's directory is made under a hidden name, given `vm.json` and then renamed, so every
//!   `vms/<cid>/` names its agent: `find_vm_by_agent_id` (our extension of the API) finds a
//!   VM whose `create_vm` answer a dying director never recorded. Hidden directories left by
//!   a process that died while making one are removed by that search.
//! - [`HOLD_CREATE_VM_ENV`] is a test hook that holds `create_vm` after the VM is made.

mod namespace;
mod sockets;
mod stemcell;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use agent_protocol::{BlobstoreSettings, NetworkSpec, Settings, VmSettings};
use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Cpi, CpiError, ErrorKind, Info, Result};

pub use namespace::Mode as NamespaceMode;

/// The name a VM directory has while `create_vm` makes it (before it holds `vm.json`).
const CREATING_PREFIX: &str = ".creating-";

/// A test hook: when set to a directory, `create_vm` writes an empty file named after each
/// VM it made into it, then holds (does not answer) until a file `release` appears there.
/// The crash tests use it to kill the director while a VM exists that the director has not
/// recorded; nothing else sets it.
pub const HOLD_CREATE_VM_ENV: &str = "DIRECTOR_TEST_LOCAL_CPI_HOLD_CREATE_VM";

/// How many lines of `agent.log` a failed start quotes.
const LOG_TAIL_LINES: usize = 20;
/// How much of the end of `agent.log` is read for a tail.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// The local CPI.
#[derive(Debug)]
pub struct LocalCpi {
    root: PathBuf,
    /// Host directories the VMs' namespaces hide (the root, and what [`LocalCpi::hiding`]
    /// added).
    hidden: Vec<PathBuf>,
    /// Threads that wait for the agents this process started (so none stays a zombie), by
    /// pid; joined once the VM's processes are stopped.
    reapers: Mutex<HashMap<u32, JoinHandle<()>>>,
}

/// `vms/<cid>/vm.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct VmRecord {
    agent_id: String,
    stemcell_cid: String,
    /// The agent's pid, once it started.
    #[serde(default)]
    pid: Option<u32>,
    /// The inode of the agent's mount namespace (`/proc/<pid>/ns/mnt`).
    #[serde(default)]
    mount_namespace: Option<u64>,
    /// How the namespace was made.
    #[serde(default)]
    namespace_mode: Option<NamespaceMode>,
    /// Attached disks, in attachment order.
    #[serde(default)]
    disks: Vec<String>,
}

/// `disks/<cid>.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct DiskRecord {
    size_mb: u64,
    #[serde(default)]
    cloud_properties: Value,
    /// The VM it is attached to.
    #[serde(default)]
    vm: Option<String>,
    #[serde(default)]
    metadata: Value,
}

/// An exclusive lock on a VM's or disk's directory, released when dropped.
struct DirLock {
    /// Closing it releases the lock.
    _file: File,
}

impl LocalCpi {
    /// A local CPI keeping its state under `root` (made absolute; created when needed).
    /// Its VMs do not see `root` (other VMs' settings, stemcells) except the persistent
    /// disks' directory.
    pub fn new(root: PathBuf) -> LocalCpi {
        let root = std::path::absolute(&root).unwrap_or(root);
        LocalCpi {
            hidden: vec![root.clone()],
            root,
            reapers: Mutex::new(HashMap::new()),
        }
    }

    /// Also hides `dir` from the VMs (the director's data directory: its token, the state
    /// database, blobs); the persistent disks' directory stays reachable when it is below.
    pub fn hiding(mut self, dir: PathBuf) -> LocalCpi {
        self.hidden.push(std::path::absolute(&dir).unwrap_or(dir));
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How this host makes the VMs' namespaces (found out once per process).
    pub fn namespace_mode() -> Result<NamespaceMode> {
        namespace::mode().map_err(|message| CpiError::new(ErrorKind::CloudError, message))
    }

    /// A VM's directory.
    pub fn vm_dir(&self, vm_cid: &str) -> PathBuf {
        self.root.join("vms").join(vm_cid)
    }

    /// A persistent disk's directory.
    pub fn disk_dir(&self, disk_cid: &str) -> PathBuf {
        self.root.join("disks").join(disk_cid)
    }

    fn stemcell_dir(&self, stemcell_cid: &str) -> PathBuf {
        self.root.join("stemcells").join(stemcell_cid)
    }

    fn disk_record_path(&self, disk_cid: &str) -> PathBuf {
        self.root.join("disks").join(format!("{disk_cid}.json"))
    }

    /// Locks an existing VM; `VMNotFound` when there is none.
    fn lock_vm(&self, vm_cid: &str) -> Result<(PathBuf, DirLock)> {
        let not_found = || CpiError::new(ErrorKind::VmNotFound, format!("vm '{vm_cid}' not found"));
        if !valid_cid(vm_cid) {
            return Err(not_found());
        }
        let dir = self.vm_dir(vm_cid);
        let lock = lock_dir(&dir)?.ok_or_else(not_found)?;
        Ok((dir, lock))
    }

    /// Locks an existing disk; `DiskNotFound` when there is none.
    fn lock_disk(&self, disk_cid: &str) -> Result<(PathBuf, DirLock)> {
        let not_found = || {
            CpiError::new(
                ErrorKind::DiskNotFound,
                format!("disk '{disk_cid}' not found"),
            )
        };
        if !valid_cid(disk_cid) {
            return Err(not_found());
        }
        let dir = self.disk_dir(disk_cid);
        let lock = lock_dir(&dir)?.ok_or_else(not_found)?;
        Ok((dir, lock))
    }

    fn read_vm_record(&self, vm_cid: &str) -> Result<VmRecord> {
        read_json(&self.vm_dir(vm_cid).join("vm.json"))
    }

    fn write_vm_record(&self, vm_cid: &str, record: &VmRecord) -> Result<()> {
        write_json(&self.vm_dir(vm_cid).join("vm.json"), record)
    }

    fn read_disk_record(&self, disk_cid: &str) -> Result<DiskRecord> {
        read_json(&self.disk_record_path(disk_cid))
    }

    fn write_disk_record(&self, disk_cid: &str, record: &DiskRecord) -> Result<()> {
        write_json(&self.disk_record_path(disk_cid), record)
    }

    fn settings_path(&self, vm_cid: &str) -> PathBuf {
        self.vm_dir(vm_cid).join("vcap/bosh/settings.json")
    }

    /// Changes the VM's `settings.json` (read by the agent when it starts).
    fn update_settings(&self, vm_cid: &str, change: impl FnOnce(&mut Settings)) -> Result<()> {
        let path = self.settings_path(vm_cid);
        let mut settings: Settings = read_json(&path)?;
        change(&mut settings);
        write_json(&path, &settings)
    }

    /// Attaches a disk to a VM whose lock the caller holds; records it on both sides and in
    /// the VM's settings; returns the disk hint.
    fn attach_locked(&self, vm_cid: &str, record: &mut VmRecord, disk_cid: &str) -> Result<Value> {
        let (disk_dir, _disk_lock) = self.lock_disk(disk_cid)?;
        let mut disk = self.read_disk_record(disk_cid)?;
        if let Some(other) = &disk.vm
            && other != vm_cid
            && self.is_attached_to(disk_cid, other)
        {
            return Err(cloud_error(format!(
                "disk '{disk_cid}' is attached to vm '{other}'; detach it first"
            )));
        }
        let hint = serde_json::json!({ "path": disk_dir.to_string_lossy() });
        disk.vm = Some(vm_cid.to_string());
        self.write_disk_record(disk_cid, &disk)?;
        if !record.disks.iter().any(|d| d == disk_cid) {
            record.disks.push(disk_cid.to_string());
        }
        self.write_vm_record(vm_cid, record)?;
        self.update_settings(vm_cid, |settings| {
            settings
                .disks
                .persistent
                .insert(disk_cid.to_string(), hint.clone());
        })?;
        Ok(hint)
    }

    /// Whether `vm_cid` exists and lists the disk (a disk record may name a VM deleted while
    /// the disk's record could not be updated).
    fn is_attached_to(&self, disk_cid: &str, vm_cid: &str) -> bool {
        valid_cid(vm_cid)
            && self
                .read_vm_record(vm_cid)
                .is_ok_and(|record| record.disks.iter().any(|d| d == disk_cid))
    }

    /// Clears the disk's record of its attachment to `vm_cid` (when it still names it).
    fn release_disk(&self, disk_cid: &str, vm_cid: &str) -> Result<()> {
        let (_, _disk_lock) = match self.lock_disk(disk_cid) {
            Ok(locked) => locked,
            Err(error) if error.kind == ErrorKind::DiskNotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut disk = self.read_disk_record(disk_cid)?;
        if disk.vm.as_deref() == Some(vm_cid) {
            disk.vm = None;
            self.write_disk_record(disk_cid, &disk)?;
        }
        Ok(())
    }

    /// Starts the VM's agent and records its pid and namespace.
    fn start(&self, vm_cid: &str, record: &mut VmRecord) -> std::result::Result<(), String> {
        let mode = namespace::mode()?;
        namespace::ensure_mount_point(mode)?;
        let dir = self.vm_dir(vm_cid);
        let disks = self.root.join("disks");
        fs::create_dir_all(&disks)
            .map_err(|error| format!("cannot create {}: {error}", disks.display()))?;
        let hiding = namespace::Hiding::new(&self.hidden, &[disks])?;
        let started =
            namespace::start_agent(mode, &dir.join("vcap"), &dir.join("agent.log"), &hiding)?;
        record.pid = Some(started.pid);
        record.mount_namespace = Some(started.mount_namespace);
        record.namespace_mode = Some(mode);
        let mut child = started.child;
        let reaper = std::thread::spawn(move || {
            let _ = child.wait();
        });
        self.reapers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(started.pid, reaper);
        self.write_vm_record(vm_cid, record)
            .map_err(|error| error.message)
    }

    /// Stops every process of the VM and reaps the agent if this process started it.
    fn stop(&self, vm_cid: &str, record: &VmRecord) -> std::result::Result<(), String> {
        namespace::stop_vm_processes(&self.vm_dir(vm_cid).join("vcap"))?;
        if let Some(pid) = record.pid {
            let reaper = self
                .reapers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&pid);
            if let Some(reaper) = reaper {
                let _ = reaper.join();
            }
        }
        Ok(())
    }

    /// Everything of `create_vm` after its directory exists; the caller cleans up on error.
    fn build_vm(
        &self,
        vm_cid: &str,
        stemcell_dir: &Path,
        mut record: VmRecord,
        settings: &Settings,
        disk_cids: &[String],
    ) -> Result<()> {
        let dir = self.vm_dir(vm_cid);
        let vcap = dir.join("vcap");
        for sub in [
            "bosh/bin", "data", "store", "sys/log", "sys/run", "jobs", "packages",
        ] {
            create_dirs(&vcap.join(sub))?;
        }
        let agent = vcap.join("bosh/bin/bosh-agent");
        fs::copy(stemcell_dir.join(stemcell::AGENT_FILE), &agent)
            .map_err(|error| io_error("copy the agent to", &agent, &error))?;
        let config = stemcell_dir.join(stemcell::AGENT_CONFIG_FILE);
        if config.is_file() {
            let target = vcap.join("bosh/agent.json");
            fs::copy(&config, &target)
                .map_err(|error| io_error("copy agent.json to", &target, &error))?;
        }
        write_json(&self.settings_path(vm_cid), settings)?;
        self.write_vm_record(vm_cid, &record)?;
        for disk_cid in disk_cids {
            self.attach_locked(vm_cid, &mut record, disk_cid)?;
        }
        self.start(vm_cid, &mut record).map_err(|message| {
            let mut error = CpiError::new(
                ErrorKind::VmCreationFailed,
                format!("vm '{vm_cid}' did not start: {message}"),
            );
            if let Some(tail) = self.agent_log_tail(vm_cid, LOG_TAIL_LINES)
                && !tail.is_empty()
            {
                error.message.push_str("; agent.log ends with:\n");
                error.message.push_str(&tail.join("\n"));
            }
            error
        })
    }

    /// Makes a new VM's directory with its record and answers its lock. The directory is
    /// made under a hidden name ([`CREATING_PREFIX`]), locked, given `vm.json` (so it names
    /// its agent from the start) and only then renamed to `vm_cid`: every VM directory says
    /// whose agent it is, which [`Cpi::find_vm_by_agent_id`] reads. A hidden one whose lock
    /// is free was left by a process that died; nothing ever ran in it.
    fn make_vm_dir(&self, vm_cid: &str, record: &VmRecord) -> Result<DirLock> {
        let dir = self.vm_dir(vm_cid);
        let vms = dir.parent().unwrap_or(&self.root);
        create_dirs(vms)?;
        let staging = vms.join(format!("{CREATING_PREFIX}{vm_cid}"));
        fs::create_dir(&staging).map_err(|error| io_error("create", &staging, &error))?;
        let made = lock_dir(&staging).and_then(|lock| {
            let lock = lock
                .ok_or_else(|| cloud_error(format!("{} vanished while made", staging.display())))?;
            write_json(&staging.join("vm.json"), record)?;
            fs::rename(&staging, &dir).map_err(|error| io_error("rename", &staging, &error))?;
            Ok(lock)
        });
        if made.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        made
    }

    /// Removes what a failed `create_vm` left: processes, disk attachments, the directory.
    fn discard_vm(&self, vm_cid: &str, disk_cids: &[String]) {
        let record = self.read_vm_record(vm_cid).unwrap_or_default();
        let _ = self.stop(vm_cid, &record);
        for disk_cid in disk_cids {
            let _ = self.release_disk(disk_cid, vm_cid);
        }
        let dir = self.vm_dir(vm_cid);
        if !namespace::has_mounts_below(&dir) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

impl Cpi for LocalCpi {
    fn info(&self) -> Result<Info> {
        Ok(Info {
            api_version: 2,
            stemcell_formats: vec!["local".to_string()],
        })
    }

    fn create_stemcell(&self, image_path: &Path, _cloud_properties: &Value) -> Result<String> {
        let stemcells = self.root.join("stemcells");
        create_dirs(&stemcells)?;
        let uuid = uuid::Uuid::new_v4();
        let staging = stemcells.join(format!(".staging-{uuid}"));
        create_dirs(&staging)?;
        if let Err(message) = stemcell::extract_agent(image_path, &staging) {
            let _ = fs::remove_dir_all(&staging);
            return Err(cloud_error(message));
        }
        let cid = format!("stemcell-{uuid}");
        let dir = self.stemcell_dir(&cid);
        fs::rename(&staging, &dir).map_err(|error| {
            let _ = fs::remove_dir_all(&staging);
            io_error("rename the stemcell to", &dir, &error)
        })?;
        Ok(cid)
    }

    fn delete_stemcell(&self, stemcell_cid: &str) -> Result<()> {
        if !valid_cid(stemcell_cid) {
            return Ok(());
        }
        let dir = self.stemcell_dir(stemcell_cid);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error("remove", &dir, &error)),
        }
    }

    fn create_vm(
        &self,
        agent_id: &str,
        stemcell_cid: &str,
        _cloud_properties: &Value,
        networks: &Value,
        disk_cids: &[String],
        environment: &Value,
    ) -> Result<(String, Value)> {
        let stemcell_dir = self.stemcell_dir(stemcell_cid);
        if !valid_cid(stemcell_cid) || !stemcell_dir.join(stemcell::AGENT_FILE).is_file() {
            return Err(cloud_error(format!("stemcell '{stemcell_cid}' not found")));
        }
        let vm_cid = format!("vm-{}", uuid::Uuid::new_v4());
        let settings = agent_settings(agent_id, &vm_cid, networks, environment)
            .map_err(|message| CpiError::new(ErrorKind::CpiError, message))?;
        check_addresses_free(&vm_cid, &settings)?;
        // Fail before making anything when this host cannot run local VMs at all.
        let mode = Self::namespace_mode()?;
        namespace::ensure_mount_point(mode).map_err(cloud_error)?;

        let record = VmRecord {
            agent_id: agent_id.to_string(),
            stemcell_cid: stemcell_cid.to_string(),
            ..VmRecord::default()
        };
        let lock = self.make_vm_dir(&vm_cid, &record)?;
        let built = self.build_vm(&vm_cid, &stemcell_dir, record, &settings, disk_cids);
        if let Err(error) = built {
            self.discard_vm(&vm_cid, disk_cids);
            return Err(error);
        }
        drop(lock);
        hold_for_tests(&vm_cid);
        Ok((vm_cid, networks.clone()))
    }

    fn find_vm_by_agent_id(&self, agent_id: &str) -> Result<Option<String>> {
        let vms = self.root.join("vms");
        let entries = match fs::read_dir(&vms) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("read", &vms, &error)),
        };
        let mut found = None;
        for entry in entries {
            let entry = entry.map_err(|error| io_error("read", &vms, &error))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(CREATING_PREFIX) {
                remove_abandoned(&entry.path());
                continue;
            }
            if found.is_none()
                && valid_cid(&name)
                && self
                    .read_vm_record(&name)
                    .is_ok_and(|record| record.agent_id == agent_id)
            {
                found = Some(name);
            }
        }
        Ok(found)
    }

    fn delete_vm(&self, vm_cid: &str) -> Result<()> {
        let (dir, _lock) = self.lock_vm(vm_cid)?;
        // A VM whose record is unreadable (a CPI that died while creating it) is still
        // deleted: its processes are found by namespace, not by the record.
        let record = self.read_vm_record(vm_cid).unwrap_or_default();
        self.stop(vm_cid, &record).map_err(|message| {
            cloud_error(format!(
                "cannot stop the processes of vm '{vm_cid}': {message}"
            ))
        })?;
        for disk_cid in &record.disks {
            self.release_disk(disk_cid, vm_cid)?;
        }
        if namespace::has_mounts_below(&dir) {
            return Err(cloud_error(format!(
                "cannot delete vm '{vm_cid}': something is mounted below {}",
                dir.display()
            )));
        }
        fs::remove_dir_all(&dir).map_err(|error| io_error("remove", &dir, &error))
    }

    fn has_vm(&self, vm_cid: &str) -> Result<bool> {
        Ok(valid_cid(vm_cid) && self.vm_dir(vm_cid).is_dir())
    }

    fn reboot_vm(&self, vm_cid: &str) -> Result<()> {
        let (_, _lock) = self.lock_vm(vm_cid)?;
        let mut record = self.read_vm_record(vm_cid)?;
        self.stop(vm_cid, &record).map_err(|message| {
            cloud_error(format!(
                "cannot stop the processes of vm '{vm_cid}': {message}"
            ))
        })?;
        record.pid = None;
        record.mount_namespace = None;
        self.write_vm_record(vm_cid, &record)?;
        self.start(vm_cid, &mut record).map_err(|message| {
            let mut message = format!("vm '{vm_cid}' did not start again: {message}");
            if let Some(tail) = self.agent_log_tail(vm_cid, LOG_TAIL_LINES)
                && !tail.is_empty()
            {
                message.push_str("; agent.log ends with:\n");
                message.push_str(&tail.join("\n"));
            }
            cloud_error(message)
        })
    }

    fn set_vm_metadata(&self, vm_cid: &str, metadata: &Value) -> Result<()> {
        let (dir, _lock) = self.lock_vm(vm_cid)?;
        write_json(&dir.join("metadata.json"), metadata)
    }

    fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &Value,
        _vm_hint: Option<&str>,
    ) -> Result<String> {
        let disk_cid = format!("disk-{}", uuid::Uuid::new_v4());
        let dir = self.disk_dir(&disk_cid);
        create_dirs(dir.parent().unwrap_or(&self.root))?;
        // The record first: a directory without one is never a disk half made.
        let record = DiskRecord {
            size_mb,
            cloud_properties: cloud_properties.clone(),
            vm: None,
            metadata: Value::Null,
        };
        self.write_disk_record(&disk_cid, &record)?;
        fs::create_dir(&dir).map_err(|error| {
            let _ = fs::remove_file(self.disk_record_path(&disk_cid));
            io_error("create", &dir, &error)
        })?;
        Ok(disk_cid)
    }

    fn delete_disk(&self, disk_cid: &str) -> Result<()> {
        let (dir, _lock) = self.lock_disk(disk_cid)?;
        let record = self.read_disk_record(disk_cid).unwrap_or_default();
        if let Some(vm_cid) = &record.vm
            && self.is_attached_to(disk_cid, vm_cid)
        {
            return Err(cloud_error(format!(
                "disk '{disk_cid}' is attached to vm '{vm_cid}'; detach it first"
            )));
        }
        if namespace::has_mounts_below(&dir) {
            return Err(cloud_error(format!(
                "cannot delete disk '{disk_cid}': something is mounted below {}",
                dir.display()
            )));
        }
        fs::remove_dir_all(&dir).map_err(|error| io_error("remove", &dir, &error))?;
        let record_path = self.disk_record_path(disk_cid);
        match fs::remove_file(&record_path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error("remove", &record_path, &error)),
        }
    }

    fn has_disk(&self, disk_cid: &str) -> Result<bool> {
        Ok(valid_cid(disk_cid) && self.disk_dir(disk_cid).is_dir())
    }

    fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<Value> {
        let (_, _lock) = self.lock_vm(vm_cid)?;
        let mut record = self.read_vm_record(vm_cid)?;
        self.attach_locked(vm_cid, &mut record, disk_cid)
    }

    fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<()> {
        let (_, _lock) = self.lock_vm(vm_cid)?;
        let mut record = self.read_vm_record(vm_cid)?;
        let (_, _disk_lock) = self.lock_disk(disk_cid)?;
        let Some(position) = record.disks.iter().position(|d| d == disk_cid) else {
            return Err(CpiError::new(
                ErrorKind::DiskNotAttached,
                format!("disk '{disk_cid}' is not attached to vm '{vm_cid}'"),
            ));
        };
        self.update_settings(vm_cid, |settings| {
            settings.disks.persistent.remove(disk_cid);
        })?;
        record.disks.remove(position);
        self.write_vm_record(vm_cid, &record)?;
        let mut disk = self.read_disk_record(disk_cid)?;
        if disk.vm.as_deref() == Some(vm_cid) {
            disk.vm = None;
            self.write_disk_record(disk_cid, &disk)?;
        }
        Ok(())
    }

    fn get_disks(&self, vm_cid: &str) -> Result<Vec<String>> {
        let (_, _lock) = self.lock_vm(vm_cid)?;
        Ok(self.read_vm_record(vm_cid)?.disks)
    }

    fn set_disk_metadata(&self, disk_cid: &str, metadata: &Value) -> Result<()> {
        let (_, _lock) = self.lock_disk(disk_cid)?;
        let mut record = self.read_disk_record(disk_cid)?;
        record.metadata = metadata.clone();
        self.write_disk_record(disk_cid, &record)
    }

    fn agent_log_tail(&self, vm_cid: &str, lines: usize) -> Option<Vec<String>> {
        if !valid_cid(vm_cid) {
            return None;
        }
        tail(&self.vm_dir(vm_cid).join("agent.log"), lines).ok()
    }
}

/// Refuses to give a VM an address that a process on this host already holds (a listening
/// TCP or a bound UDP socket on it, see [`sockets`]): its jobs could not listen there, and
/// the holder is most likely another deployment's VM that still runs.
fn check_addresses_free(vm_cid: &str, settings: &Settings) -> Result<()> {
    for (name, network) in &settings.networks {
        let Ok(ip) = network.ip.parse::<std::net::IpAddr>() else {
            continue;
        };
        let holders = sockets::holders(ip);
        if holders.is_empty() {
            continue;
        }
        let held: Vec<String> = holders
            .iter()
            .map(|holder| sockets::describe(ip, holder))
            .collect();
        return Err(cloud_error(format!(
            "cannot give {ip} (network '{name}') to vm '{vm_cid}': {}; is another \
             deployment's vm still running on this host (a dev director stopped without \
             deleting its deployments)? delete that deployment, or give this network an \
             address range of its own in the cloud config",
            held.join("; ")
        )));
    }
    Ok(())
}

/// The agent's settings for a new VM (BOSH's registry-less settings, reference §5.3).
pub fn agent_settings(
    agent_id: &str,
    vm_cid: &str,
    networks: &Value,
    environment: &Value,
) -> std::result::Result<Settings, String> {
    let bosh = &environment["bosh"];
    let mbus = match &bosh["mbus"] {
        Value::String(url) => url.clone(),
        mbus => mbus["urls"][0]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                "environment.bosh.mbus has no url (expected a string or {\"urls\": [url]})"
                    .to_string()
            })?,
    };
    let blobstore = &bosh["blobstores"][0];
    let options = &blobstore["options"];
    let blobstore = BlobstoreSettings {
        provider: blobstore["provider"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        endpoint: options["endpoint"].as_str().unwrap_or_default().to_string(),
        ca_cert: options["ca_cert"]
            .as_str()
            .or_else(|| options["tls"]["cert"]["ca"].as_str())
            .map(str::to_string),
    };
    let mut network_settings = std::collections::BTreeMap::new();
    match networks {
        Value::Null => {}
        Value::Object(networks) => {
            for (name, spec) in networks {
                // Absent and null are the same to BOSH (a dynamic network has no ip yet).
                let spec = match spec {
                    Value::Object(fields) => Value::Object(
                        fields
                            .iter()
                            .filter(|(_, value)| !value.is_null())
                            .map(|(key, value)| (key.clone(), value.clone()))
                            .collect(),
                    ),
                    other => other.clone(),
                };
                let spec: NetworkSpec = serde_json::from_value(spec)
                    .map_err(|error| format!("network '{name}': {error}"))?;
                network_settings.insert(name.clone(), spec);
            }
        }
        _ => return Err("networks must be a map of network name to settings".to_string()),
    }
    let heartbeat_interval = bosh["heartbeat_interval"].as_u64().unwrap_or(30);
    Ok(Settings {
        agent_id: agent_id.to_string(),
        mbus,
        blobstore,
        networks: network_settings,
        disks: Default::default(),
        env: environment.clone(),
        vm: VmSettings {
            name: vm_cid.to_string(),
        },
        heartbeat_interval,
    })
}

/// The test hook of [`HOLD_CREATE_VM_ENV`].
fn hold_for_tests(vm_cid: &str) {
    let Some(dir) = std::env::var_os(HOLD_CREATE_VM_ENV).map(PathBuf::from) else {
        return;
    };
    let _ = fs::write(dir.join(vm_cid), b"");
    while !dir.join("release").exists() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes a directory `create_vm` left half made, when no process is making it any more
/// (its lock is free): no agent ever started in it.
fn remove_abandoned(staging: &Path) {
    let Ok(file) = File::open(staging) else {
        return;
    };
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok()
        && !namespace::has_mounts_below(staging)
    {
        let _ = fs::remove_dir_all(staging);
    }
}

/// Whether a CID can name a directory of ours: no separators, no dot files.
fn valid_cid(cid: &str) -> bool {
    !cid.is_empty()
        && cid.len() <= 128
        && !cid.starts_with('.')
        && cid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Takes an exclusive lock on the directory `dir`; `None` when it does not exist (or was
/// removed while we waited for the lock).
fn lock_dir(dir: &Path) -> Result<Option<DirLock>> {
    let file = match File::open(dir) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("open", dir, &error)),
    };
    loop {
        match flock(&file, FlockOperation::LockExclusive) {
            Ok(()) => break,
            Err(Errno::INTR) => continue,
            Err(errno) => {
                return Err(cloud_error(format!(
                    "cannot lock {}: {errno}",
                    dir.display()
                )));
            }
        }
    }
    let locked = file
        .metadata()
        .map_err(|error| io_error("read", dir, &error))?;
    match fs::metadata(dir) {
        Ok(now) if now.is_dir() && now.dev() == locked.dev() && now.ino() == locked.ino() => {
            Ok(Some(DirLock { _file: file }))
        }
        Ok(_) => Ok(None),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("read", dir, &error)),
    }
}

fn create_dirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|error| io_error("create", dir, &error))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read(path).map_err(|error| io_error("read", path, &error))?;
    serde_json::from_slice(&text)
        .map_err(|error| cloud_error(format!("cannot read {}: {error}", path.display())))
}

/// Writes JSON with the one atomic write, mode 0600 (`settings.json` holds the agent's bus
/// credentials).
fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)
        .map_err(|error| cloud_error(format!("cannot encode {}: {error}", path.display())))?;
    text.push(b'\n');
    secrets::write_private(path, &text).map_err(|error| io_error("write", path, &error))
}

/// The last `lines` lines of a file (read from its last 64 KiB).
fn tail(path: &Path, lines: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        // The first line read is likely cut.
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    Ok(all[skip..].iter().map(|line| line.to_string()).collect())
}

fn cloud_error(message: impl Into<String>) -> CpiError {
    CpiError::new(ErrorKind::CloudError, message)
}

fn io_error(action: &str, path: &Path, error: &io::Error) -> CpiError {
    cloud_error(format!("cannot {action} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_come_from_the_environment_and_networks() {
        let environment = json!({"bosh": {
            "mbus": {"urls": ["nats://agent:secret@127.0.0.1:4222"]},
            "blobstores": [{"provider": "director", "options": {"endpoint": "http://127.0.0.1:25555"}}],
            "heartbeat_interval": 5,
        }});
        let networks = json!({"default": {
            "type": "manual", "ip": "127.0.10.12", "netmask": "255.255.0.0",
            "gateway": "127.0.0.1", "dns": null, "default": ["dns", "gateway"],
            "cloud_properties": {}, "mac": "ignored",
        }});
        let settings = agent_settings("agent-1", "vm-1", &networks, &environment).unwrap();
        assert_eq!(settings.agent_id, "agent-1");
        assert_eq!(settings.mbus, "nats://agent:secret@127.0.0.1:4222");
        assert_eq!(settings.blobstore.provider, "director");
        assert_eq!(settings.blobstore.endpoint, "http://127.0.0.1:25555");
        assert_eq!(settings.networks["default"].ip, "127.0.10.12");
        assert_eq!(settings.networks["default"].default, ["dns", "gateway"]);
        assert_eq!(settings.vm.name, "vm-1");
        assert_eq!(settings.heartbeat_interval, 5);
        assert_eq!(settings.env, environment);

        let plain = json!({"bosh": {"mbus": "nats://127.0.0.1:4222"}});
        let settings = agent_settings("a", "vm", &Value::Null, &plain).unwrap();
        assert_eq!(settings.mbus, "nats://127.0.0.1:4222");
        assert_eq!(settings.heartbeat_interval, 30);
    }

    #[test]
    fn settings_need_a_bus() {
        let error = agent_settings("a", "vm", &json!({}), &json!({"bosh": {}})).unwrap_err();
        assert!(
            error.starts_with("environment.bosh.mbus has no url"),
            "{error}"
        );
        let error = agent_settings(
            "a",
            "vm",
            &json!({"n": {"ip": 7}}),
            &json!({"bosh": {"mbus": "nats://x"}}),
        )
        .unwrap_err();
        assert!(error.starts_with("network 'n': "), "{error}");
    }

    #[test]
    fn cids_never_leave_their_directory() {
        assert!(valid_cid("vm-0f8c1a2e-1111-4222-8333-444455556666"));
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(!valid_cid(bad), "{bad:?}");
        }
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail(&path, 2).unwrap(), ["two", "three"]);
        assert_eq!(tail(&path, 10).unwrap(), ["one", "two", "three"]);
    }
}
