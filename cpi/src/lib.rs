//! The `Cpi` trait: the BOSH CPI API v2 (`docs:cpi-api-v2.md`), as Rust.
//!
//! Every IaaS operation of the director goes through it: stemcells, VMs, disks, metadata.
//! Calls are blocking (a CPI is a process per call in BOSH, and IaaS calls are slow anyway);
//! the engine runs them on a blocking thread. Implementations: [`local`] (a VM is a directory
//! plus an agent process on this host), [`external`] (any BOSH CPI binary, JSON over
//! stdin/stdout) and `docker` (a VM is a container of the Docker engine; cargo feature
//! `docker`). Only this crate knows the CPI JSON envelope ([`protocol`]); the `cpi` binary
//! serves the local CPI over it, which is how protocol conformance is tested.

#[cfg(feature = "docker")]
pub mod docker;
pub mod external;
pub mod local;
pub mod protocol;

pub use external::ExternalCpi;
pub use local::LocalCpi;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What `info` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// The CPI API version (2).
    pub api_version: u32,
    /// The stemcell formats this CPI takes (`local`, `docker-rootfs`, …).
    pub stemcell_formats: Vec<String>,
}

/// BOSH's CPI error types (`bosh:src/bosh-director/lib/clouds/errors.rb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// `Bosh::Clouds::CpiError`.
    CpiError,
    /// `Bosh::Clouds::NotSupported`.
    NotSupported,
    /// `Bosh::Clouds::NotImplemented`.
    NotImplemented,
    /// `Bosh::Clouds::CloudError`.
    CloudError,
    /// `Bosh::Clouds::VMNotFound`.
    VmNotFound,
    /// `Bosh::Clouds::NetworkNotFound`.
    NetworkNotFound,
    /// `Bosh::Clouds::NoDiskSpace`.
    NoDiskSpace,
    /// `Bosh::Clouds::DiskNotAttached`.
    DiskNotAttached,
    /// `Bosh::Clouds::DiskNotFound`.
    DiskNotFound,
    /// `Bosh::Clouds::VMCreationFailed`.
    VmCreationFailed,
    /// Anything else.
    Unknown,
}

/// A failed CPI call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CpiError {
    /// BOSH's error type.
    pub kind: ErrorKind,
    /// What went wrong (lowercase, names the VM, disk or stemcell).
    pub message: String,
    /// Whether the director may retry (`create_vm` on `VMCreationFailed`).
    pub ok_to_retry: bool,
}

impl CpiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CpiError {
        CpiError {
            kind,
            message: message.into(),
            ok_to_retry: false,
        }
    }
}

/// The result of a CPI call.
pub type Result<T> = std::result::Result<T, CpiError>;

/// The CPI API v2. Arguments and results follow BOSH's positional arguments.
pub trait Cpi: Send + Sync {
    /// `info`.
    fn info(&self) -> Result<Info>;
    /// `create_stemcell(image_path, cloud_properties)` → stemcell CID.
    fn create_stemcell(
        &self,
        image_path: &std::path::Path,
        cloud_properties: &Value,
    ) -> Result<String>;
    /// `delete_stemcell(cid)`.
    fn delete_stemcell(&self, stemcell_cid: &str) -> Result<()>;
    /// `create_vm(agent_id, stemcell_cid, cloud_properties, networks, disk_cids, environment)`
    /// → `(vm_cid, networks)`; `environment.bosh.mbus` carries the agent's bus URL with its
    /// credentials and `environment.bosh.blobstores` where blobs come from.
    fn create_vm(
        &self,
        agent_id: &str,
        stemcell_cid: &str,
        cloud_properties: &Value,
        networks: &Value,
        disk_cids: &[String],
        environment: &Value,
    ) -> Result<(String, Value)>;
    /// `delete_vm(cid)`: also detaches its disks.
    fn delete_vm(&self, vm_cid: &str) -> Result<()>;
    /// `has_vm(cid)`.
    fn has_vm(&self, vm_cid: &str) -> Result<bool>;
    /// `reboot_vm(cid)`.
    fn reboot_vm(&self, vm_cid: &str) -> Result<()>;
    /// `set_vm_metadata(cid, metadata)`.
    fn set_vm_metadata(&self, vm_cid: &str, metadata: &Value) -> Result<()>;
    /// `create_disk(size_mb, cloud_properties, vm_cid_hint)` → disk CID.
    fn create_disk(
        &self,
        size_mb: u64,
        cloud_properties: &Value,
        vm_hint: Option<&str>,
    ) -> Result<String>;
    /// `delete_disk(cid)`.
    fn delete_disk(&self, disk_cid: &str) -> Result<()>;
    /// `has_disk(cid)`.
    fn has_disk(&self, disk_cid: &str) -> Result<bool>;
    /// `attach_disk(vm_cid, disk_cid)` → the disk hint the agent mounts with.
    fn attach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<Value>;
    /// `detach_disk(vm_cid, disk_cid)`.
    fn detach_disk(&self, vm_cid: &str, disk_cid: &str) -> Result<()>;
    /// `get_disks(vm_cid)` → attached disk CIDs.
    fn get_disks(&self, vm_cid: &str) -> Result<Vec<String>>;
    /// `set_disk_metadata(cid, metadata)`.
    fn set_disk_metadata(&self, disk_cid: &str, metadata: &Value) -> Result<()>;
    /// Not part of BOSH's API (an extension of this project): the VM that `create_vm` made
    /// for `agent_id`, when it still exists (`None` when the CPI knows there is none). A
    /// director that died between `create_vm` and recording the answer knows only the agent
    /// id it passed; this finds the VM so it can be deleted. BOSH's CPIs cannot list VMs:
    /// the default answers `NotImplemented`, and the director then keeps the VM's record as
    /// unknown (its addresses stay reserved) and reports it.
    fn find_vm_by_agent_id(&self, _agent_id: &str) -> Result<Option<String>> {
        Err(CpiError::new(
            ErrorKind::NotImplemented,
            "this CPI cannot find a VM by its agent id",
        ))
    }
    /// Not part of BOSH's API: the last lines of what the agent on a VM printed while it
    /// started, when the CPI can read them (used to explain an agent that never answers).
    fn agent_log_tail(&self, _vm_cid: &str, _lines: usize) -> Option<Vec<String>> {
        None
    }
}
