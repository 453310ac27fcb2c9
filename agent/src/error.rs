//! The agent's errors. Each names what it was doing and to what (job, package, disk, file);
//! its `Display` is the exception message the director shows, so it never carries a secret:
//! signed URLs appear without their query, bus URLs without their password.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system call failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we tried (`read`, `create`, `rename`, …).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why not.
        source: io::Error,
    },
    /// A method's arguments do not have the expected shape.
    #[error("bad arguments for {method}: {reason}")]
    Arguments {
        /// The bus method.
        method: String,
        /// What is wrong with them.
        reason: String,
    },
    /// The settings file is missing or unreadable.
    #[error("settings {path}: {reason}")]
    Settings {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A name in a spec cannot be used as a path component.
    #[error("{kind} name {name:?} is not a plain file name")]
    BadName {
        /// `job`, `package`, `process`, `version`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A download failed.
    #[error("downloading {what} from {url}: {reason}")]
    Download {
        /// `package redis`, `job web`, …
        what: String,
        /// The URL without its query (signatures stay out of messages).
        url: String,
        /// Why.
        reason: String,
    },
    /// A download's content does not hash to its id.
    #[error("{what}: sha256 of the downloaded blob is {actual}, expected {expected}")]
    Digest {
        /// `package redis`, …
        what: String,
        /// The id the spec named.
        expected: String,
        /// What we computed.
        actual: String,
    },
    /// An upload failed.
    #[error("uploading {what} to {url}: {reason}")]
    Upload {
        /// `compiled package redis`, `logs`.
        what: String,
        /// The URL without its query.
        url: String,
        /// Why.
        reason: String,
    },
    /// An archive could not be read or written.
    #[error("{what}: {reason}")]
    Archive {
        /// Which archive.
        what: String,
        /// Why.
        reason: String,
    },
    /// A job's `config/bpm.yml` is invalid.
    #[error("job '{job}': config/bpm.yml: {reason}")]
    Bpm {
        /// The job.
        job: String,
        /// What is wrong.
        reason: String,
    },
    /// The spec is inconsistent (a job needs a package it does not list, …).
    #[error("apply spec: {0}")]
    Spec(String),
    /// One or more lifecycle scripts failed; each line names its job.
    #[error("{0}")]
    Scripts(String),
    /// A drain script failed or printed something else than an integer.
    #[error("{0}")]
    Drain(String),
    /// `packaging` failed.
    #[error("compiling package '{package}': {reason}")]
    Compile {
        /// The package.
        package: String,
        /// What happened, with the end of the packaging output.
        reason: String,
    },
    /// A disk operation failed.
    #[error("{0}")]
    Disk(String),
    /// A process could not be started or signalled.
    #[error("{0}")]
    Process(String),
    /// DNS records (from `sync_dns` or the records file) that cannot be served.
    #[error("dns records {what}: {reason}")]
    DnsRecords {
        /// `version 12`, or the file.
        what: String,
        /// What is wrong with them.
        reason: String,
    },
    /// The call was cancelled.
    #[error("task cancelled")]
    Cancelled,
}

impl Error {
    /// A closure for `map_err` on IO calls: `fs::read(p).map_err(Error::io("read", p))`.
    pub fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
        move |source| Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Bad arguments for `method`.
    pub fn arguments(method: &str, reason: impl Into<String>) -> Error {
        Error::Arguments {
            method: method.to_string(),
            reason: reason.into(),
        }
    }
}

/// The agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
