//! Releases: source directories in BOSH's layout, the tarballs built from them, and the
//! checks an uploaded tarball must pass.
//!
//! A release directory (`config/final.yml`, `jobs/<job>/spec`, `packages/<pkg>/spec`,
//! `src/`, `blobs/`, `config/blobs.yml`) is read by [`source`] into jobs and packages with
//! their BOSH fingerprints ([`fingerprint`], bit for bit as bosh-cli with SHA-256), checked
//! as a graph ([`graph`]: no unknown package, no dependency cycle), built into reproducible
//! archives ([`build`]) and recorded in BOSH's indexes ([`index`]); [`create`] decides the
//! version (`N+dev.M`, or final `N+1`) and reuses the last one when no job or package
//! changed. [`archive`] reads an uploaded tarball into a staging directory and refuses it
//! unless its entries, digests and package graph agree with its `release.MF`. [`blobs`]
//! keeps `config/blobs.yml`.
//!
//! Invariants: the same sources give the same tarball bytes; index and blob records are
//! replaced atomically; an uploaded tarball is never unpacked outside its staging directory,
//! which is removed when reading fails.

pub mod archive;
pub mod blobs;
pub mod build;
pub mod create;
pub mod digest;
pub mod fingerprint;
pub mod git;
pub mod graph;
pub mod index;
pub mod manifest;
pub mod source;
pub mod spec;
pub mod version;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

pub use archive::{ReleaseArchive, read_archive, read_archive_in};
pub use create::{CreateOptions, Created, DirInspection, create_release, inspect_dir};
pub use manifest::{JobRecord, LicenseRecord, PackageRecord, ReleaseManifest};
pub use source::ReleaseSource;

use crate::archive::ArchiveError;
use crate::diagnostics::{Diagnostic, Diagnostics};
use fingerprint::FingerprintError;

/// Why a release could not be read, built, created or accepted. Messages are lowercase and
/// name the file, job, package or archive entry.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Problems in the user's files (specs, configs, `release.MF`), each with its place.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The tarball itself is unsafe or broken.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A file could not be fingerprinted.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// The tarball has no `release.MF`.
    #[error("{archive}: release.MF is missing")]
    MissingManifest {
        /// The tarball.
        archive: String,
    },
    /// `release.MF` lists an archive the tarball does not have.
    #[error("{archive}: release.MF lists '{entry}', which is not in the archive")]
    MissingEntry {
        /// The tarball.
        archive: String,
        /// The missing entry.
        entry: String,
    },
    /// The tarball has an entry `release.MF` does not list.
    #[error("{archive}: entry '{entry}' is not listed in release.MF")]
    ExtraEntry {
        /// The tarball.
        archive: String,
        /// The extra entry.
        entry: String,
    },
    /// A job or package archive does not have the digest `release.MF` gives it.
    #[error("{archive}: '{entry}' has digest {actual}, but release.MF says {expected}")]
    DigestMismatch {
        /// The tarball.
        archive: String,
        /// The job or package archive.
        entry: String,
        /// The digest in `release.MF`.
        expected: String,
        /// The digest of the bytes.
        actual: String,
    },
    /// A job archive is not what `release.MF` says it is.
    #[error("{archive}: '{entry}': {problem}")]
    BadJobArchive {
        /// The tarball.
        archive: String,
        /// The job archive.
        entry: String,
        /// What is wrong.
        problem: String,
    },
    /// `--final` or `--version` names a version that exists.
    #[error("release '{name}' version '{version}' already exists")]
    VersionExists {
        /// Release name.
        name: String,
        /// The version.
        version: String,
    },
    /// `--version` is not a version.
    #[error("'{0}' is not a release version (e.g. 2, 1.3, 0+dev.4)")]
    BadVersion(String),
    /// A final release from a directory with uncommitted changes.
    #[error(
        "release directory {dir} has uncommitted changes; commit them, or pass --force to \
         create a final release anyway:\n{changes}"
    )]
    Dirty {
        /// The release directory.
        dir: String,
        /// `git status --porcelain`.
        changes: String,
    },
    /// A package's `pre_packaging` script failed.
    #[error("pre_packaging of package '{package}' failed ({status}):\n{output}")]
    PrePackaging {
        /// The package.
        package: String,
        /// Exit status.
        status: String,
        /// Its output.
        output: String,
    },
    /// Anything else, already worded.
    #[error("{0}")]
    Other(String),
}

impl ReleaseError {
    /// An IO error on `path`.
    pub fn io(path: &Path, source: io::Error) -> ReleaseError {
        ReleaseError::Io {
            path: display_path(path),
            source,
        }
    }
}

impl From<Diagnostics> for ReleaseError {
    fn from(diagnostics: Diagnostics) -> ReleaseError {
        ReleaseError::Invalid(diagnostics)
    }
}

impl From<Diagnostic> for ReleaseError {
    fn from(diagnostic: Diagnostic) -> ReleaseError {
        ReleaseError::Invalid(diagnostic.into())
    }
}

/// A path as users read it in messages: without a leading `./`.
pub fn display_path(path: &Path) -> String {
    let shown = path.display().to_string();
    match shown.strip_prefix("./") {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => shown,
    }
}

/// Whether `name` can name a release, job or package: it becomes a file name, so letters,
/// digits, `-`, `_` and `.` only, and not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Writes `path` through `write` with the one atomic write ([`secrets::write_atomic_with`]),
/// so readers see the old content or the new, never a part. Mode 0644.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> Result<(), ReleaseError> {
    secrets::write_atomic_with(path, 0o644, write).map_err(|e| ReleaseError::io(path, e))
}

/// [`write_atomic_with`] for bytes.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    write_atomic_with(path, |file| file.write_all(bytes))
}
