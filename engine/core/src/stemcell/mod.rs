//! Stemcells: the OS images VMs boot from, as BOSH packs them (`image`, `stemcell.MF`,
//! `packages.txt`, `dev_tools_file_list.txt` in a `.tgz`).
//!
//! [`manifest`] reads and writes `stemcell.MF` (name, version, operating system, formats,
//! the digest of `image`, cloud properties); [`version`] orders stemcell versions so that
//! `version: latest` and BOSH's `621.latest` can be resolved (`1.10` > `1.9`,
//! `12.8.20261126` > `12.8`); [`archive`] reads an uploaded tarball through the safe
//! archive reader and accepts it only when its manifest is valid and its image has the
//! digest the manifest gives.
//!
//! The `stemcells` crate builds the tarballs this module reads; both use
//! [`StemcellManifest`], so what is written is what is read.
//!
//! Invariant: reading a tarball writes only into its fresh staging directory, which is gone
//! when reading fails or the [`StemcellArchive`] is dropped.

pub mod archive;
pub mod local;
pub mod manifest;
pub mod version;

use std::io;
use std::path::Path;

pub use archive::{StemcellArchive, read_stemcell, read_stemcell_in};
pub use manifest::StemcellManifest;
pub use version::{StemcellVersion, latest, resolve};

use crate::archive::ArchiveError;
use crate::diagnostics::{Diagnostic, Diagnostics};

/// Which stemcell: its name (or, where compiled builds are keyed, its operating system) and
/// its version, as written (`12.10` is not `12.1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StemcellKey {
    /// The stemcell's name, or its operating system.
    pub name: String,
    /// The version.
    pub version: String,
}

impl StemcellKey {
    /// The stemcell `name` (or operating system) at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> StemcellKey {
        StemcellKey {
            name: name.into(),
            version: version.into(),
        }
    }
}

impl std::fmt::Display for StemcellKey {
    /// `name/version`, as messages name stemcells.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.name, self.version)
    }
}

/// Why a stemcell tarball was refused. Messages are lowercase and name the tarball and the
/// entry or `stemcell.MF` field.
#[derive(Debug, thiserror::Error)]
pub enum StemcellError {
    /// The tarball itself is unsafe or broken.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Problems in `stemcell.MF`, each with its line, column and field.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// `stemcell.MF` or `image` is not in the tarball.
    #[error("{archive}: {entry} is missing")]
    MissingEntry {
        /// The tarball.
        archive: String,
        /// `stemcell.MF` or `image`.
        entry: &'static str,
    },
    /// `stemcell.MF` or `image` is a directory or a link.
    #[error("{archive}: {entry} is a {kind}, not a regular file")]
    NotAFile {
        /// The tarball.
        archive: String,
        /// `stemcell.MF` or `image`.
        entry: &'static str,
        /// What it is instead.
        kind: &'static str,
    },
    /// `image` does not have the digest in the `sha1` field of `stemcell.MF`.
    #[error("{archive}: image has digest {actual}, but stemcell.MF says sha1: {expected}")]
    DigestMismatch {
        /// The tarball.
        archive: String,
        /// The `sha1` field.
        expected: String,
        /// The digest of the staged image, in the same algorithm.
        actual: String,
    },
    /// A staged file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
}

impl StemcellError {
    fn io(path: &Path, source: io::Error) -> StemcellError {
        StemcellError::Io {
            path: archive::shown(path),
            source,
        }
    }
}

impl From<Diagnostics> for StemcellError {
    fn from(diagnostics: Diagnostics) -> StemcellError {
        StemcellError::Invalid(diagnostics)
    }
}

impl From<Diagnostic> for StemcellError {
    fn from(diagnostic: Diagnostic) -> StemcellError {
        StemcellError::Invalid(diagnostic.into())
    }
}
