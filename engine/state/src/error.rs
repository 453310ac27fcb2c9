//! What can go wrong with the state, naming the object concerned.

use std::fmt;

use super::{TaskId, TaskState};

/// A state operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The URL names no database this module can open.
    #[error("database url '{url}' is not supported: {reason}")]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
        /// What was expected instead.
        reason: &'static str,
    },
    /// The database could not be reached or created.
    #[error("database at {url}: {source}")]
    Open {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed, was edited after it was applied, or the database was migrated by
    /// a newer director.
    #[error("database at {url}: migrating the schema: {source}")]
    Migrate {
        /// The URL, password redacted.
        url: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed for a reason the repository does not translate.
    #[error("database at {url}: {action}: {source}")]
    Database {
        /// The URL, password redacted.
        url: String,
        /// What was being done (`inserting release version 'hello/0+dev.1'`).
        action: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A unique constraint: the object is already recorded.
    #[error("{object} already exists")]
    AlreadyExists {
        /// What already exists.
        object: Object,
    },
    /// The object is not recorded.
    #[error("{object} does not exist")]
    NotFound {
        /// What is missing.
        object: Object,
    },
    /// The object cannot be deleted while deployments use it.
    #[error("{object} is in use by {}", deployment_list(deployments))]
    InUse {
        /// What was to be deleted.
        object: Object,
        /// The deployments using it, sorted.
        deployments: Vec<String>,
    },
    /// The object cannot be deleted while other rows refer to it.
    #[error("{object} is still referenced")]
    Referenced {
        /// What was to be deleted.
        object: Object,
    },
    /// Another task holds the lock.
    #[error("lock '{name}' is held by task {by_task}")]
    Locked {
        /// The lock.
        name: String,
        /// The task holding it.
        by_task: TaskId,
    },
    /// The task no longer holds the lock it tried to renew: it expired and another task took
    /// it, or it was released.
    #[error("lock '{name}' is no longer held by task {task_id}")]
    LockLost {
        /// The lock.
        name: String,
        /// The task that thought it held it.
        task_id: TaskId,
    },
    /// A task state change that the task's life cycle does not allow.
    #[error("task {task_id} cannot go from '{from}' to '{to}'")]
    TaskTransition {
        /// The task.
        task_id: TaskId,
        /// Its current state.
        from: TaskState,
        /// The requested state.
        to: TaskState,
    },
    /// The input breaks a rule of the state.
    #[error("{object}: {reason}")]
    Invalid {
        /// What was being written.
        object: Object,
        /// Which rule.
        reason: String,
    },
}

fn deployment_list(deployments: &[String]) -> String {
    let quoted: Vec<String> = deployments.iter().map(|name| format!("'{name}'")).collect();
    match quoted.len() {
        1 => format!("deployment {}", quoted[0]),
        _ => format!("deployments {}", quoted.join(", ")),
    }
}

/// The subject of an error, shown the way the CLI names it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Object {
    /// `release 'hello'`
    Release { name: String },
    /// `release 'hello/0+dev.1'`
    ReleaseVersion { name: String, version: String },
    /// `job 'web' (fingerprint abc…) of release 'hello'`
    Job {
        release: String,
        name: String,
        fingerprint: String,
    },
    /// `package 'ruby' (fingerprint abc…) of release 'hello'`
    Package {
        release: String,
        name: String,
        fingerprint: String,
    },
    /// `package 17`: a row looked up by id, `kind` naming its table in words.
    Row { kind: &'static str, id: i64 },
    /// `compiled package 'ruby/abc…' for ubuntu-jammy/1.406 (dependency key […])`
    CompiledPackage {
        package: String,
        stemcell_os: String,
        stemcell_version: String,
        dependency_key: String,
    },
    /// `stemcell 'bosh-warden-ubuntu-jammy/1.406'`
    Stemcell { name: String, version: String },
    /// `deployment 'cf'`
    Deployment { name: String },
    /// `address 10.0.0.5 on network 'default'`
    Address { network: String, address: String },
    /// `task 417`
    Task { id: TaskId },
    /// `blob 9f86…`
    Blob { id: String },
    /// `lock 'lock:deployment:cf'`
    Lock { name: String },
    /// `blob slot for a compiled package`: an upload URL's record or a hold on a blob.
    BlobSlot { purpose: String },
    /// `the VM of agent 6f1c…`: a recorded VM no instance owns.
    VmOfAgent { agent_id: String },
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Release { name } => write!(f, "release '{name}'"),
            Object::ReleaseVersion { name, version } => write!(f, "release '{name}/{version}'"),
            Object::Job {
                release,
                name,
                fingerprint,
            } => write!(
                f,
                "job '{name}' (fingerprint {fingerprint}) of release '{release}'"
            ),
            Object::Package {
                release,
                name,
                fingerprint,
            } => write!(
                f,
                "package '{name}' (fingerprint {fingerprint}) of release '{release}'"
            ),
            Object::Row { kind, id } => write!(f, "{kind} {id}"),
            Object::CompiledPackage {
                package,
                stemcell_os,
                stemcell_version,
                dependency_key,
            } => write!(
                f,
                "compiled package '{package}' for {stemcell_os}/{stemcell_version} \
                 (dependency key {dependency_key})"
            ),
            Object::Stemcell { name, version } => write!(f, "stemcell '{name}/{version}'"),
            Object::Deployment { name } => write!(f, "deployment '{name}'"),
            Object::Task { id } => write!(f, "task {id}"),
            Object::Blob { id } => write!(f, "blob {id}"),
            Object::Lock { name } => write!(f, "lock '{name}'"),
            Object::BlobSlot { purpose } => write!(f, "blob slot for {purpose}"),
            Object::VmOfAgent { agent_id } => write!(f, "the VM of agent {agent_id}"),
            Object::Address { network, address } => {
                write!(f, "address {address} on network '{network}'")
            }
        }
    }
}
