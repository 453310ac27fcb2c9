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
use super::manifest::{CompiledPackageRecord, EntryPlaces, ManifestSpans, Place, ReleaseManifest};
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

/// A listed archive whose `release.MF` digest is one the director can compute.
struct ListedWithDigest {
    entry: String,
    sha1: String,
    digest: ExpectedDigest,
}

/// What `release.MF` lists, by relation (the same as the manifest's tables of references).
type References = BTreeMap<String, Vec<Reference<Place>>>;

/// Accepts an unpacked release tarball only when it is what its `release.MF` says.
fn check(
    extracted: &Extracted,
    name: &str,
    limits: &Limits,
) -> Result<(ReleaseManifest, Vec<CompiledPackageRecord>), ReleaseError> {
    let (manifest, compiled, spans) = read_release_manifest(extracted, name)?;
    let listed = list_archives(&manifest, &compiled, &spans, name)?;
    check_entries_are_the_listed_ones(extracted, &listed, name)?;
    check_digests(extracted, &listed, name)?;
    check_package_graph(&manifest, &compiled, &spans)?;
    check_job_archives(extracted, &manifest, name, limits)?;
    check_package_and_license_archives(extracted, &manifest, &compiled, name, limits)?;
    Ok((manifest, compiled))
}

/// Reads and parses the tarball's `release.MF`, with where each of its entries was written.
fn read_release_manifest(
    extracted: &Extracted,
    name: &str,
) -> Result<(ReleaseManifest, Vec<CompiledPackageRecord>, ManifestSpans), ReleaseError> {
    if !matches!(
        extracted.entries().get("release.MF"),
        Some(EntryKind::File { .. })
    ) {
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
    Ok(ReleaseManifest::parse_tarball(&text, &label)?)
}

/// The archives `release.MF` lists (jobs, packages, compiled packages, license), each with
/// its digest; every problem with their names or digests comes back at once.
fn list_archives(
    manifest: &ReleaseManifest,
    compiled: &[CompiledPackageRecord],
    spans: &ManifestSpans,
    archive_name: &str,
) -> Result<Vec<ListedWithDigest>, ReleaseError> {
    let mut diagnostics = Diagnostics::new();
    let listed = listed_archives(&mut diagnostics, manifest, compiled, spans, archive_name);
    let with_digests = parse_digests(&mut diagnostics, listed);
    if diagnostics.has_errors() {
        return Err(ReleaseError::Invalid(diagnostics));
    }
    Ok(with_digests)
}

/// The archives `release.MF` lists, in its order. Names become file names: each is
/// checked, and that none is listed twice (a package is listed once, as source or compiled).
fn listed_archives(
    diagnostics: &mut Diagnostics,
    manifest: &ReleaseManifest,
    compiled: &[CompiledPackageRecord],
    spans: &ManifestSpans,
    archive_name: &str,
) -> Vec<Listed> {
    let mut listed = Vec::new();
    let mut seen = BTreeSet::new();
    for (job, places) in manifest.jobs.iter().zip(&spans.jobs) {
        let (job_name, sha1) = (&job.name, &job.sha1);
        listed.push(list_named(
            diagnostics,
            &mut seen,
            "job",
            "jobs",
            job_name,
            sha1,
            places,
        ));
    }
    seen.clear();
    let source_packages = manifest
        .packages
        .iter()
        .map(|package| ("packages", &package.name, &package.sha1))
        .zip(&spans.packages);
    let compiled_packages = compiled
        .iter()
        .map(|package| ("compiled_packages", &package.name, &package.sha1))
        .zip(&spans.compiled_packages);
    for ((folder, package_name, sha1), places) in source_packages.chain(compiled_packages) {
        let kind = "package";
        listed.push(list_named(
            diagnostics,
            &mut seen,
            kind,
            folder,
            package_name,
            sha1,
            places,
        ));
    }
    if let Some(license) = &manifest.license {
        let label = format!("{archive_name}/release.MF");
        listed.push(Listed {
            entry: "license.tgz".to_string(),
            sha1: license.sha1.clone(),
            span: spans
                .document
                .clone()
                .unwrap_or_else(|| Span::synthetic(&label)),
            path: YamlPath::root().key("license"),
        });
    }
    listed
}

/// The listed archives whose digests are sha1, sha256 or sha512; the others are errors.
fn parse_digests(diagnostics: &mut Diagnostics, listed: Vec<Listed>) -> Vec<ListedWithDigest> {
    let mut with_digests = Vec::new();
    for item in listed {
        match ExpectedDigest::parse(&item.sha1) {
            Some(digest) => with_digests.push(ListedWithDigest {
                entry: item.entry,
                sha1: item.sha1,
                digest,
            }),
            None => diagnostics.error(
                &item.span,
                item.path.key("sha1"),
                format!("'{}' is not a sha1, sha256 or sha512 digest", item.sha1),
            ),
        }
    }
    with_digests
}

/// Lists the archive of a job or package, `folder/<name>.tgz`, checking its name against
/// the names `seen` before it.
fn list_named(
    diagnostics: &mut Diagnostics,
    seen: &mut BTreeSet<String>,
    kind: &str,
    folder: &str,
    name: &str,
    sha1: &str,
    places: &EntryPlaces,
) -> Listed {
    let (span, path) = &places.entry;
    check_name(diagnostics, seen, kind, name, span, path);
    Listed {
        entry: format!("{folder}/{name}.tgz"),
        sha1: sha1.to_string(),
        span: span.clone(),
        path: path.clone(),
    }
}

/// Exactly the listed archives are in the tarball, as files, plus their folders.
fn check_entries_are_the_listed_ones(
    extracted: &Extracted,
    listed: &[ListedWithDigest],
    name: &str,
) -> Result<(), ReleaseError> {
    let entries = extracted.entries();
    let expected: BTreeSet<&str> = listed.iter().map(|l| l.entry.as_str()).collect();
    for (entry, kind) in entries {
        let allowed = match kind {
            EntryKind::File { .. } => entry == "release.MF" || expected.contains(entry.as_str()),
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
    for entry in expected {
        if !entries.contains_key(entry) {
            return Err(ReleaseError::MissingEntry {
                archive: name.to_string(),
                entry: entry.to_string(),
            });
        }
    }
    Ok(())
}

/// Every listed archive has the digest `release.MF` gives it.
fn check_digests(
    extracted: &Extracted,
    listed: &[ListedWithDigest],
    name: &str,
) -> Result<(), ReleaseError> {
    for item in listed {
        let path = extracted.dir().join(&item.entry);
        let actual = fs::File::open(&path)
            .and_then(|mut file| item.digest.compute(&mut file))
            .map_err(|e| ReleaseError::io(&path, e))?;
        if actual != item.digest.as_string() {
            return Err(ReleaseError::DigestMismatch {
                archive: name.to_string(),
                entry: item.entry.clone(),
                expected: item.sha1.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// The package graph: every dependency and job package is a package of the release, and
/// no dependencies go round in a cycle.
fn check_package_graph(
    manifest: &ReleaseManifest,
    compiled: &[CompiledPackageRecord],
    spans: &ManifestSpans,
) -> Result<(), ReleaseError> {
    let packages: References = manifest
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
    let jobs: References = manifest
        .jobs
        .iter()
        .zip(&spans.jobs)
        .map(|(j, places)| (j.name.clone(), references(&j.packages, &places.names)))
        .collect();
    match graph::check(&packages, &jobs) {
        Ok(_) => Ok(()),
        Err(problems) => Err(ReleaseError::Invalid(
            graph_diagnostics(&packages, problems).sorted(),
        )),
    }
}

/// Package names with where each was written.
fn references(names: &[String], places: &[Place]) -> Vec<Reference<Place>> {
    names
        .iter()
        .zip(places)
        .map(|(package, place)| Reference {
            package: package.clone(),
            place: place.clone(),
        })
        .collect()
}

/// The graph's problems where they were written; a cycle at its first step, in the first
/// package's dependencies.
fn graph_diagnostics(packages: &References, problems: Vec<GraphProblem<Place>>) -> Diagnostics {
    let mut diagnostics = Diagnostics::new();
    for problem in problems {
        let message = problem.message();
        match problem {
            GraphProblem::UnknownDependency { place, .. }
            | GraphProblem::UnknownJobPackage { place, .. } => {
                diagnostics.error(&place.0, &place.1, message);
            }
            GraphProblem::Cycle(cycle) => {
                let step = packages[&cycle[0]]
                    .iter()
                    .find(|r| r.package == cycle[1])
                    .expect("a cycle follows dependencies");
                diagnostics.error(&step.place.0, &step.place.1, message);
            }
        }
    }
    diagnostics
}

/// Each job archive is a safe archive whose `job.MF` names the job.
fn check_job_archives(
    extracted: &Extracted,
    manifest: &ReleaseManifest,
    name: &str,
    limits: &Limits,
) -> Result<(), ReleaseError> {
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
    Ok(())
}

/// Each package, compiled package and license archive is a safe archive.
fn check_package_and_license_archives(
    extracted: &Extracted,
    manifest: &ReleaseManifest,
    compiled: &[CompiledPackageRecord],
    name: &str,
    limits: &Limits,
) -> Result<(), ReleaseError> {
    let packages = manifest
        .packages
        .iter()
        .map(|package| format!("packages/{}.tgz", package.name));
    let compiled_packages = compiled
        .iter()
        .map(|package| format!("compiled_packages/{}.tgz", package.name));
    let license = manifest.license.as_ref().map(|_| "license.tgz".to_string());
    for entry in packages.chain(compiled_packages).chain(license) {
        archive::verify_named(
            &extracted.dir().join(&entry),
            &format!("{name}/{entry}"),
            limits,
        )?;
    }
    Ok(())
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
