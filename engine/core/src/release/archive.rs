//! Release tarballs. Reading an uploaded one: unpacked safely into a staging directory
//! ([`crate::archive::extract`] and its limits), then accepted only when it is what its
//! `release.MF` says: every listed job, package, compiled package and license archive
//! present, nothing else there, every archive with the digest `release.MF` gives it, no
//! package dependency cycle, no job or dependency naming a package the release does not
//! have, and each job, package or compiled package archive itself a safe archive (each job
//! with a `job.MF` naming it). A compiled release (`compiled_packages`, archives under
//! `compiled_packages/`) is read like a source release.
//!
//! Writing ([`write_release_tarball`]) is the mirror image: `release.MF` and the archives of
//! a directory laid out as a staged tarball, reproducibly (same archives, same bytes).
//!
//! Invariant: nothing is written outside the staging directory, and on any error the
//! staging directory is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::digest::ExpectedDigest;
use super::graph::{self, GraphProblem, Reference};
use super::manifest::{CompiledPackageRecord, EntryPlaces, Place, ReleaseManifest};
use super::{ReleaseError, display_path, valid_name};
use crate::archive::{self, EntryKind, Extracted, Limits, TgzEntry, TgzSource, write_tgz};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::yaml::{self, Span, YamlPath};

/// A release tarball that passed every check, unpacked into a staging directory that is
/// removed when this is dropped.
#[derive(Debug)]
pub struct ReleaseArchive {
    /// Its `release.MF`.
    pub manifest: ReleaseManifest,
    /// The compiled packages its `release.MF` lists (a compiled release), sorted as listed.
    pub compiled_packages: Vec<CompiledPackageRecord>,
    extracted: Extracted,
}

impl ReleaseArchive {
    /// The staging directory.
    pub fn dir(&self) -> &Path {
        self.extracted.dir()
    }

    /// Where the archive of job `name` is staged.
    pub fn job_archive(&self, name: &str) -> PathBuf {
        self.dir().join("jobs").join(format!("{name}.tgz"))
    }

    /// Where the archive of package `name` is staged.
    pub fn package_archive(&self, name: &str) -> PathBuf {
        self.dir().join("packages").join(format!("{name}.tgz"))
    }

    /// Where the archive of compiled package `name` is staged.
    pub fn compiled_package_archive(&self, name: &str) -> PathBuf {
        self.dir()
            .join("compiled_packages")
            .join(format!("{name}.tgz"))
    }

    /// Where `license.tgz` is staged, when the release has a license.
    pub fn license_archive(&self) -> Option<PathBuf> {
        self.manifest
            .license
            .as_ref()
            .map(|_| self.dir().join("license.tgz"))
    }

    /// The staging directory, to keep (for example to move archives to a blobstore).
    pub fn into_staging(self) -> TempDir {
        self.extracted.into_dir()
    }
}

/// Reads and checks the release tarball at `path`, staging it in the system's temporary
/// directory.
pub fn read_archive(path: &Path, limits: &Limits) -> Result<ReleaseArchive, ReleaseError> {
    read_archive_in(path, limits, &std::env::temp_dir())
}

/// [`read_archive`], staging in `staging_parent`.
pub fn read_archive_in(
    path: &Path,
    limits: &Limits,
    staging_parent: &Path,
) -> Result<ReleaseArchive, ReleaseError> {
    let extracted = archive::extract(path, limits, staging_parent)?;
    let name = display_path(path);
    let (manifest, compiled_packages) = check(&extracted, &name, limits)?;
    Ok(ReleaseArchive {
        manifest,
        compiled_packages,
        extracted,
    })
}

/// Writes a release tarball to `out`: `release.MF` (from `manifest` and `compiled`, see
/// [`ReleaseManifest::to_compiled_yaml`]) and, read from `dir`, `jobs/<job>.tgz`,
/// `packages/<package>.tgz`, `compiled_packages/<package>.tgz` and `license.tgz` for what
/// the manifest lists. The archives are copied byte for byte and the tarball is
/// reproducible ([`crate::archive::write_tgz`]): the same inputs give the same bytes.
pub fn write_release_tarball<W: std::io::Write>(
    manifest: &ReleaseManifest,
    compiled: &[CompiledPackageRecord],
    dir: &Path,
    out: W,
) -> Result<W, ReleaseError> {
    let mut entries = vec![TgzEntry {
        path: "release.MF".to_string(),
        source: TgzSource::Bytes {
            data: manifest.to_compiled_yaml(compiled).into_bytes(),
            executable: false,
        },
    }];
    let mut archive = |entry: String| {
        let path = dir.join(&entry);
        if !path.is_file() {
            return Err(ReleaseError::Other(format!(
                "{}: the archive to write as '{entry}' is missing",
                display_path(&path)
            )));
        }
        entries.push(TgzEntry {
            path: entry,
            source: TgzSource::File {
                path,
                executable: false,
            },
        });
        Ok(())
    };
    for job in &manifest.jobs {
        archive(format!("jobs/{}.tgz", job.name))?;
    }
    for package in &manifest.packages {
        archive(format!("packages/{}.tgz", package.name))?;
    }
    for package in compiled {
        archive(format!("compiled_packages/{}.tgz", package.name))?;
    }
    if manifest.license.is_some() {
        archive("license.tgz".to_string())?;
    }
    write_tgz(out, entries).map_err(|e| ReleaseError::io(dir, e))
}

/// An archive of the tarball, by its entry name, with its `release.MF` digest.
struct Listed {
    entry: String,
    sha1: String,
    span: Span,
    path: YamlPath,
}

fn check(
    extracted: &Extracted,
    name: &str,
    limits: &Limits,
) -> Result<(ReleaseManifest, Vec<CompiledPackageRecord>), ReleaseError> {
    let entries = extracted.entries();
    if !matches!(entries.get("release.MF"), Some(EntryKind::File { .. })) {
        return Err(ReleaseError::MissingManifest {
            archive: name.to_string(),
        });
    }
    let manifest_path = extracted.dir().join("release.MF");
    let label = format!("{name}/release.MF");
    let bytes = fs::read(&manifest_path).map_err(|e| ReleaseError::io(&manifest_path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        ReleaseError::Invalid(Diagnostic::general(format!("{label}: not UTF-8 text")).into())
    })?;
    let (manifest, compiled, spans) = ReleaseManifest::parse_tarball(&text, &label)?;
    let document = spans
        .document
        .clone()
        .unwrap_or_else(|| Span::synthetic(&label));

    // Names become file names: check them, and that none is listed twice.
    let mut diagnostics = Diagnostics::new();
    let mut listed = Vec::new();
    let mut seen = BTreeSet::new();
    for (
        job,
        EntryPlaces {
            entry: (span, path),
            ..
        },
    ) in manifest.jobs.iter().zip(&spans.jobs)
    {
        check_name(&mut diagnostics, &mut seen, "job", &job.name, span, path);
        listed.push(Listed {
            entry: format!("jobs/{}.tgz", job.name),
            sha1: job.sha1.clone(),
            span: span.clone(),
            path: path.clone(),
        });
    }
    seen.clear();
    for (
        package,
        EntryPlaces {
            entry: (span, path),
            ..
        },
    ) in manifest.packages.iter().zip(&spans.packages)
    {
        check_name(
            &mut diagnostics,
            &mut seen,
            "package",
            &package.name,
            span,
            path,
        );
        listed.push(Listed {
            entry: format!("packages/{}.tgz", package.name),
            sha1: package.sha1.clone(),
            span: span.clone(),
            path: path.clone(),
        });
    }
    // A package is listed once, as source or compiled.
    for (
        package,
        EntryPlaces {
            entry: (span, path),
            ..
        },
    ) in compiled.iter().zip(&spans.compiled_packages)
    {
        check_name(
            &mut diagnostics,
            &mut seen,
            "package",
            &package.name,
            span,
            path,
        );
        listed.push(Listed {
            entry: format!("compiled_packages/{}.tgz", package.name),
            sha1: package.sha1.clone(),
            span: span.clone(),
            path: path.clone(),
        });
    }
    if let Some(license) = &manifest.license {
        listed.push(Listed {
            entry: "license.tgz".to_string(),
            sha1: license.sha1.clone(),
            span: document.clone(),
            path: YamlPath::root().key("license"),
        });
    }
    for item in &listed {
        if ExpectedDigest::parse(&item.sha1).is_none() {
            diagnostics.error(
                &item.span,
                item.path.key("sha1"),
                format!("'{}' is not a sha1, sha256 or sha512 digest", item.sha1),
            );
        }
    }
    if diagnostics.has_errors() {
        return Err(ReleaseError::Invalid(diagnostics));
    }

    // Exactly the listed archives, as files, plus their folders.
    let expected: BTreeMap<&str, &Listed> = listed.iter().map(|l| (l.entry.as_str(), l)).collect();
    for (entry, kind) in entries {
        let allowed = match kind {
            EntryKind::File { .. } => {
                entry == "release.MF" || expected.contains_key(entry.as_str())
            }
            EntryKind::Dir { .. } => {
                entry == "jobs" || entry == "packages" || entry == "compiled_packages"
            }
            _ => false,
        };
        if !allowed {
            return Err(ReleaseError::ExtraEntry {
                archive: name.to_string(),
                entry: entry.clone(),
            });
        }
    }
    for entry in expected.keys() {
        if !entries.contains_key(*entry) {
            return Err(ReleaseError::MissingEntry {
                archive: name.to_string(),
                entry: entry.to_string(),
            });
        }
    }

    // Digests.
    for item in &listed {
        let expected = ExpectedDigest::parse(&item.sha1).expect("checked above");
        let path = extracted.dir().join(&item.entry);
        let actual = fs::File::open(&path)
            .and_then(|mut file| expected.compute(&mut file))
            .map_err(|e| ReleaseError::io(&path, e))?;
        if actual != expected.as_string() {
            return Err(ReleaseError::DigestMismatch {
                archive: name.to_string(),
                entry: item.entry.clone(),
                expected: item.sha1.clone(),
                actual,
            });
        }
    }

    // The package graph.
    let references = |names: &[String], places: &[Place]| -> Vec<Reference<Place>> {
        names
            .iter()
            .zip(places)
            .map(|(package, place)| Reference {
                package: package.clone(),
                place: place.clone(),
            })
            .collect()
    };
    let packages: BTreeMap<String, Vec<Reference<Place>>> = manifest
        .packages
        .iter()
        .map(|p| (&p.name, &p.dependencies))
        .zip(&spans.packages)
        .chain(
            compiled
                .iter()
                .map(|p| (&p.name, &p.dependencies))
                .zip(&spans.compiled_packages),
        )
        .map(|((name, dependencies), places)| {
            (name.clone(), references(dependencies, &places.names))
        })
        .collect();
    let jobs: BTreeMap<String, Vec<Reference<Place>>> = manifest
        .jobs
        .iter()
        .zip(&spans.jobs)
        .map(|(j, places)| (j.name.clone(), references(&j.packages, &places.names)))
        .collect();
    if let Err(problems) = graph::check(&packages, &jobs) {
        let mut diagnostics = Diagnostics::new();
        for problem in problems {
            let message = problem.message();
            match problem {
                GraphProblem::UnknownDependency { place, .. }
                | GraphProblem::UnknownJobPackage { place, .. } => {
                    diagnostics.error(&place.0, &place.1, message);
                }
                GraphProblem::Cycle(cycle) => {
                    // At the first step of the cycle, in the first package's dependencies.
                    let step = packages[&cycle[0]]
                        .iter()
                        .find(|r| r.package == cycle[1])
                        .expect("a cycle follows dependencies");
                    diagnostics.error(&step.place.0, &step.place.1, message);
                }
            }
        }
        return Err(ReleaseError::Invalid(diagnostics.sorted()));
    }

    // The archives inside are safe archives too; a job's says which job it is.
    for job in &manifest.jobs {
        let entry = format!("jobs/{}.tgz", job.name);
        let inner = format!("{name}/{entry}");
        let path = extracted.dir().join(&entry);
        let bad = |problem: String| ReleaseError::BadJobArchive {
            archive: name.to_string(),
            entry: entry.clone(),
            problem,
        };
        let Some(spec) = archive::read_file_named(&path, &inner, limits, "job.MF")? else {
            return Err(bad("job.MF is missing".to_string()));
        };
        let text =
            String::from_utf8(spec).map_err(|_| bad("job.MF is not UTF-8 text".to_string()))?;
        let node = yaml::parse(&text, &format!("{inner}/job.MF"))?;
        match node.get("name").and_then(|n| n.as_str()) {
            Some(spec_name) if spec_name == job.name => {}
            Some(spec_name) => {
                return Err(bad(format!(
                    "job.MF names job '{spec_name}', but release.MF calls it '{}'",
                    job.name
                )));
            }
            None => return Err(bad("job.MF has no name".to_string())),
        }
    }
    for package in &manifest.packages {
        let entry = format!("packages/{}.tgz", package.name);
        archive::verify_named(
            &extracted.dir().join(&entry),
            &format!("{name}/{entry}"),
            limits,
        )?;
    }
    for package in &compiled {
        let entry = format!("compiled_packages/{}.tgz", package.name);
        archive::verify_named(
            &extracted.dir().join(&entry),
            &format!("{name}/{entry}"),
            limits,
        )?;
    }
    if manifest.license.is_some() {
        archive::verify_named(
            &extracted.dir().join("license.tgz"),
            &format!("{name}/license.tgz"),
            limits,
        )?;
    }
    Ok((manifest, compiled))
}

fn check_name(
    diagnostics: &mut Diagnostics,
    seen: &mut BTreeSet<String>,
    kind: &str,
    name: &str,
    span: &Span,
    path: &YamlPath,
) {
    if !valid_name(name) {
        diagnostics.error(
            span,
            path.key("name"),
            format!("{kind} name '{name}' may only contain letters, digits, '-', '_' and '.'"),
        );
    } else if !seen.insert(name.to_string()) {
        diagnostics.error(
            span,
            path.key("name"),
            format!("{kind} '{name}' is listed twice"),
        );
    }
}
