//! `create-release`: builds a release from its directory, decides its version, writes the
//! tarball and records the version in BOSH's indexes.
//!
//! Versions: a dev release is `N+dev.M` after the last release (dev or final, whichever is
//! higher; `0+dev.1` at first). When no job, package or license differs from that last
//! release (same fingerprints, same archive digests), nothing new is recorded: its version is
//! reported and its tarball written again from its record, byte for byte the same. A final
//! release is the last final version plus one (`1` at first) or `--version`; it refuses a
//! version that exists and, unless forced, uncommitted changes.

use std::path::{Path, PathBuf};

use super::build::{self, BuiltRelease};
use super::git;
use super::index::{self, IndexKind, ReleaseIndex};
use super::manifest::ReleaseManifest;
use super::source::ReleaseSource;
use super::version::Version;
use super::{ReleaseError, display_path};
use crate::diagnostics::Diagnostics;

/// What `create-release` was asked for.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// The release directory.
    pub dir: PathBuf,
    /// `--name`: the release name instead of `config/final.yml`'s.
    pub name: Option<String>,
    /// `--version`.
    pub version: Option<String>,
    /// `--final`.
    pub final_release: bool,
    /// `--force`: create a final release despite uncommitted changes.
    pub force: bool,
    /// `--tarball`: where to write the tarball instead of next to the index.
    pub tarball: Option<PathBuf>,
}

/// What `create-release` did.
#[derive(Clone, Debug)]
pub struct Created {
    /// The release manifest (`release.MF`).
    pub manifest: ReleaseManifest,
    /// Where the tarball was written.
    pub tarball: PathBuf,
    /// True when an existing version was reused because nothing changed.
    pub reused: bool,
    /// Warnings about the release's files.
    pub warnings: Diagnostics,
}

fn same_content(built: &BuiltRelease, recorded: &ReleaseManifest) -> bool {
    built.jobs == recorded.jobs
        && built.packages == recorded.packages
        && built.license == recorded.license
}

/// The last release (dev or final, the higher) and the index it is in.
fn last_release(dev: &ReleaseIndex, finals: &ReleaseIndex) -> Option<(Version, IndexKind)> {
    match (dev.latest(), finals.latest()) {
        (Some(d), Some(f)) if f > d => Some((f, IndexKind::Final)),
        (Some(d), _) => Some((d, IndexKind::Dev)),
        (None, Some(f)) => Some((f, IndexKind::Final)),
        (None, None) => None,
    }
}

/// Creates a release as [`CreateOptions`] say.
pub fn create_release(options: &CreateOptions) -> Result<Created, ReleaseError> {
    let dir = &options.dir;
    let source = ReleaseSource::read(dir, options.name.as_deref())?;
    let requested = options
        .version
        .as_deref()
        .map(|v| Version::parse(v).ok_or_else(|| ReleaseError::BadVersion(v.to_string())))
        .transpose()?;
    let mut dev = ReleaseIndex::load(dir, IndexKind::Dev, &source.name)?;
    let mut finals = ReleaseIndex::load(dir, IndexKind::Final, &source.name)?;
    let exists = |version: &Version| ReleaseError::VersionExists {
        name: source.name.clone(),
        version: version.to_string(),
    };
    // A final or explicitly numbered version is decided, and refused when it exists, before
    // anything is built.
    let planned = if options.final_release {
        let version = match requested {
            Some(version) => version,
            None => match finals.latest() {
                Some(last) => last.next_final().ok_or_else(|| {
                    ReleaseError::Other(format!(
                        "cannot count up from final version '{last}'; give --version"
                    ))
                })?,
                None => Version::parse("1").expect("1 is a version"),
            },
        };
        if finals.contains(&version) {
            return Err(exists(&version));
        }
        Some((version, IndexKind::Final))
    } else if let Some(version) = requested {
        if dev.contains(&version) || finals.contains(&version) {
            return Err(exists(&version));
        }
        Some((version, IndexKind::Dev))
    } else {
        None
    };
    let git = git::state(dir);
    if options.final_release && git.dirty() && !options.force {
        return Err(ReleaseError::Dirty {
            dir: display_path(dir),
            changes: git.changes.trim_end().to_string(),
        });
    }
    let built = build::build(&source)?;
    let fresh = |version: &Version| ReleaseManifest {
        name: source.name.clone(),
        version: version.to_string(),
        commit_hash: git.commit_hash.clone(),
        uncommitted_changes: git.dirty(),
        jobs: built.jobs.clone(),
        packages: built.packages.clone(),
        license: built.license.clone(),
    };
    let (manifest, kind, reused) = match planned {
        Some((version, kind)) => (fresh(&version), kind, false),
        None => {
            let last = last_release(&dev, &finals);
            let recorded = match &last {
                Some((version, kind)) => {
                    let index = if *kind == IndexKind::Final {
                        &finals
                    } else {
                        &dev
                    };
                    Some(index.read_manifest(version.as_str())?)
                }
                None => None,
            };
            match (last, recorded) {
                (Some((_, kind)), Some(recorded)) if same_content(&built, &recorded) => {
                    (recorded, kind, true)
                }
                (last, _) => {
                    let base = last
                        .map(|(version, _)| version)
                        .unwrap_or_else(|| Version::parse("0+dev.0").expect("a version"));
                    let version = base.next_dev().ok_or_else(|| {
                        ReleaseError::Other(format!("cannot count up from version '{base}'"))
                    })?;
                    (fresh(&version), IndexKind::Dev, false)
                }
            }
        }
    };
    let index = match kind {
        IndexKind::Dev => &mut dev,
        IndexKind::Final => &mut finals,
    };
    let tarball = options
        .tarball
        .clone()
        .unwrap_or_else(|| index.tarball_path(&manifest.version));
    built.write_tarball(&manifest, &tarball)?;
    if !reused {
        index.add(&manifest)?;
        if kind == IndexKind::Final {
            record_final_builds(dir, &manifest)?;
        }
    }
    Ok(Created {
        manifest,
        tarball,
        reused,
        warnings: source.warnings,
    })
}

fn record_final_builds(dir: &Path, manifest: &ReleaseManifest) -> Result<(), ReleaseError> {
    for job in &manifest.jobs {
        index::record_final_build(dir, "jobs", &job.name, &job.fingerprint, &job.sha1)?;
    }
    for package in &manifest.packages {
        index::record_final_build(
            dir,
            "packages",
            &package.name,
            &package.fingerprint,
            &package.sha1,
        )?;
    }
    if let Some(license) = &manifest.license {
        index::record_final_build(
            dir,
            "license",
            "license",
            &license.fingerprint,
            &license.sha1,
        )?;
    }
    Ok(())
}

/// What a release directory builds, without recording anything: name, jobs, packages and
/// license with their fingerprints and archive digests.
#[derive(Clone, Debug)]
pub struct DirInspection {
    /// Release name.
    pub name: String,
    /// Jobs, sorted by name.
    pub jobs: Vec<super::JobRecord>,
    /// Packages, sorted by name.
    pub packages: Vec<super::PackageRecord>,
    /// The license.
    pub license: Option<super::LicenseRecord>,
    /// Warnings about the release's files.
    pub warnings: Diagnostics,
}

/// Reads and builds the release directory `dir` (in a staging directory that is removed
/// again) and reports what it holds.
pub fn inspect_dir(dir: &Path, name: Option<&str>) -> Result<DirInspection, ReleaseError> {
    let source = ReleaseSource::read(dir, name)?;
    let built = build::build(&source)?;
    Ok(DirInspection {
        name: source.name,
        jobs: built.jobs.clone(),
        packages: built.packages.clone(),
        license: built.license.clone(),
        warnings: source.warnings,
    })
}
