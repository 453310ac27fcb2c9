//! What happens to an uploaded release or stemcell, as a task: check the archive, take the
//! lock, store its parts in the blobstore (verifying every digest), then record it in one
//! transaction. Until that transaction commits nothing points at the new blobs, so an upload
//! that fails or is killed leaves no release or stemcell behind: its blobs are unreferenced
//! and the director removes them when it starts (and `clean-up` does too). The compiled
//! builds a compiled release brings are recorded right after its version.
//!
//! And the way back out: [`export_release`] writes a release version with its compiled
//! builds for one stemcell as a compiled release tarball into the blobstore, for the CLI to
//! download. Nothing refers to that blob, so clean-up removes it later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blobstore::{BlobId, Blobstore, StoredBlob};
use crate::tasks::{TaskContext, TaskError};
use director_core::archive::Limits;
use director_core::deploy::{ReleaseFacts, ReleasePackage};
use director_core::release::manifest::CompiledPackageRecord;
use director_core::release::{self, ReleaseArchive};
use director_core::stemcell::{self, StemcellArchive};
use director_state::{
    Archive, NewBlob, NewCompiledPackage, NewJob, NewPackage, NewReleaseVersion, NewStemcell,
    Package, PackageId, State, StateError,
};

/// What every upload task needs.
#[derive(Clone)]
pub struct UploadContext {
    /// The state database.
    pub state: Arc<State>,
    /// The blobstore.
    pub blobstore: Blobstore,
    /// Where archives are unpacked while they are checked.
    pub staging_dir: PathBuf,
    /// Archive limits.
    pub limits: Limits,
}

fn failed(error: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(error.to_string())
}

/// Stores a file as a blob whose digest must be `digest` (`sha256:<hex>`), and records it.
async fn store(
    upload: &UploadContext,
    path: &Path,
    digest: &str,
    what: &str,
) -> Result<Archive, TaskError> {
    let expected = BlobId::parse(digest).map_err(|_| {
        failed(format!("{what}: digest {digest:?} is not a sha256 digest (create the release with sha256 digests)"))
    })?;
    let stored = upload
        .blobstore
        .put_file(path, Some(&expected))
        .await
        .map_err(|e| failed(format!("{what}: {e}")))?;
    record(upload, &stored).await
}

/// Records a blob the blobstore just stored; answers it as a release/stemcell archive.
async fn record(upload: &UploadContext, stored: &StoredBlob) -> Result<Archive, TaskError> {
    upload.state.blobs().insert(&NewBlob::from(stored)).await?;
    Ok(Archive {
        blob_id: stored.id.as_str().to_string(),
        digest: stored.id.digest_string(),
    })
}

/// Imports a release tarball staged at `tarball`, source or compiled. Uploading a release
/// that is already uploaded with the same jobs and packages is a no-op that says so, except
/// that the compiled builds it brings which the director lacks are added (a compiled release
/// of an uploaded source release); `fix` re-stores its blobs (for a blobstore that lost
/// them).
///
/// A compiled package is recorded as a package without sources (one already recorded with
/// sources keeps them) and a compiled build for its stemcell, keyed as a deploy looks it up
/// (package, stemcell OS and version, dependency key), so deploys on that stemcell compile
/// nothing. Its build number is the one its version carries (`<fingerprint>.<build>`) when
/// no higher build is recorded, else the next one.
pub async fn import_release(
    context: &TaskContext,
    upload: &UploadContext,
    tarball: &Path,
    fix: bool,
) -> Result<String, TaskError> {
    let log = &context.log;
    let stage = log.stage("Extracting release", vec![], 1);
    stage.started("Extracting release", 1);
    let staging = upload.staging_dir.clone();
    let limits = upload.limits.clone();
    let path = tarball.to_path_buf();
    let archive: ReleaseArchive =
        tokio::task::spawn_blocking(move || release::read_archive_in(&path, &limits, &staging))
            .await
            .map_err(failed)?
            .map_err(|e| {
                stage.failed("Extracting release", 1, &e.to_string());
                failed(e)
            })?;
    stage.finished("Extracting release", 1);
    context.checkpoint()?;
    let manifest = &archive.manifest;
    let compiled = &archive.compiled_packages;
    let label = format!("{}/{}", manifest.name, manifest.version);
    context
        .lock(
            &format!("release:{}", manifest.name),
            &format!("release '{}'", manifest.name),
        )
        .await?;
    // Every package of the release, source or compiled: (name, fingerprint, dependencies).
    let all_packages: Vec<(&String, &String, &Vec<String>)> = manifest
        .packages
        .iter()
        .map(|p| (&p.name, &p.fingerprint, &p.dependencies))
        .chain(
            compiled
                .iter()
                .map(|p| (&p.name, &p.fingerprint, &p.dependencies)),
        )
        .collect();
    let facts = release_facts(&manifest.name, &manifest.version, &all_packages);

    if let Some(existing) = upload
        .state
        .releases()
        .find(&manifest.name, &manifest.version)
        .await?
    {
        let same_jobs = existing.jobs.len() == manifest.jobs.len()
            && manifest.jobs.iter().all(|j| {
                existing
                    .jobs
                    .iter()
                    .any(|e| e.name == j.name && e.fingerprint == j.fingerprint)
            });
        let same_packages = existing.packages.len() == all_packages.len()
            && all_packages.iter().all(|(name, fingerprint, _)| {
                existing
                    .packages
                    .iter()
                    .any(|e| &e.name == *name && &e.fingerprint == *fingerprint)
            });
        if !(same_jobs && same_packages) {
            return Err(failed(format!(
                "release {label} is already uploaded with other jobs or packages: create the release with a new version"
            )));
        }
        let missing = missing_builds(upload, compiled, &existing.packages, &facts).await?;
        if !fix && missing.is_empty() {
            return Ok(format!(
                "release {label} is already uploaded; nothing changed"
            ));
        }
        let stage = if fix {
            log.stage(
                "Fixing release",
                vec![],
                (manifest.jobs.len() + manifest.packages.len() + compiled.len()) as u32,
            )
        } else {
            log.stage("Uploading compiled packages", vec![], missing.len() as u32)
        };
        let mut index = 0;
        if fix {
            for job in &manifest.jobs {
                index += 1;
                let step = format!("{}/{}", job.name, job.fingerprint);
                stage.started(&step, index);
                store(
                    upload,
                    &archive.job_archive(&job.name),
                    &job.sha1,
                    &format!("job {step}"),
                )
                .await?;
                stage.finished(&step, index);
            }
            for package in &manifest.packages {
                index += 1;
                let step = format!("{}/{}", package.name, package.fingerprint);
                stage.started(&step, index);
                store(
                    upload,
                    &archive.package_archive(&package.name),
                    &package.sha1,
                    &format!("package {step}"),
                )
                .await?;
                stage.finished(&step, index);
            }
        }
        let mut added = 0;
        for package in compiled {
            let wanted = missing.iter().find(|m| m.record.name == package.name);
            if !fix && wanted.is_none() {
                continue;
            }
            context.checkpoint()?;
            index += 1;
            let step = format!("{}/{}", package.name, package.version);
            stage.started(&step, index);
            let stored = store(
                upload,
                &archive.compiled_package_archive(&package.name),
                &package.sha1,
                &format!("compiled package {step} for {}", package.stemcell),
            )
            .await?;
            if let Some(wanted) = wanted {
                if record_build(upload, wanted, stored).await? {
                    added += 1;
                }
            }
            stage.finished(&step, index);
        }
        let added = match added {
            0 => String::new(),
            n => format!("; {n} compiled package(s) added"),
        };
        return Ok(if fix {
            format!("release {label} is already uploaded; its blobs were stored again{added}")
        } else {
            format!("release {label} is already uploaded{added}")
        });
    }

    let total = (manifest.jobs.len() + manifest.packages.len() + compiled.len()) as u32;
    let stage = log.stage("Uploading release", vec![], total);
    let mut index = 0;
    let mut packages = Vec::new();
    for package in &manifest.packages {
        context.checkpoint()?;
        index += 1;
        let step = format!("{}/{}", package.name, package.fingerprint);
        stage.started(&step, index);
        let stored = store(
            upload,
            &archive.package_archive(&package.name),
            &package.sha1,
            &format!("package {step}"),
        )
        .await?;
        packages.push(NewPackage {
            name: package.name.clone(),
            version: package.fingerprint.clone(),
            fingerprint: package.fingerprint.clone(),
            archive: Some(stored),
            dependencies: package.dependencies.clone(),
        });
        stage.finished(&step, index);
    }
    // Compiled packages: their blobs now (digests verified), their builds once the release
    // (and so each package's id) is recorded.
    let mut compiled_archives = Vec::new();
    for package in compiled {
        context.checkpoint()?;
        index += 1;
        let step = format!("{}/{}", package.name, package.version);
        stage.started(&step, index);
        let stored = store(
            upload,
            &archive.compiled_package_archive(&package.name),
            &package.sha1,
            &format!("compiled package {step} for {}", package.stemcell),
        )
        .await?;
        compiled_archives.push(stored);
        packages.push(NewPackage {
            name: package.name.clone(),
            version: package.fingerprint.clone(),
            fingerprint: package.fingerprint.clone(),
            // Compiled only; a package recorded with sources keeps them.
            archive: None,
            dependencies: package.dependencies.clone(),
        });
        stage.finished(&step, index);
    }
    let mut jobs = Vec::new();
    for job in &manifest.jobs {
        context.checkpoint()?;
        index += 1;
        let step = format!("{}/{}", job.name, job.fingerprint);
        stage.started(&step, index);
        let job_path = archive.job_archive(&job.name);
        let spec_text = {
            let (path, limits, name) = (
                job_path.clone(),
                upload.limits.clone(),
                format!("jobs/{}.tgz", job.name),
            );
            tokio::task::spawn_blocking(move || {
                director_core::archive::read_file_named(&path, &name, &limits, "job.MF")
            })
            .await
            .map_err(failed)?
            .map_err(failed)?
            .ok_or_else(|| failed(format!("job {step}: its archive has no job.MF")))?
        };
        let spec: serde_json::Value = serde_yaml::from_slice(&spec_text)
            .map_err(|e| failed(format!("job {step}: job.MF is not YAML: {e}")))?;
        let stored = store(upload, &job_path, &job.sha1, &format!("job {step}")).await?;
        jobs.push(NewJob {
            name: job.name.clone(),
            version: job.fingerprint.clone(),
            fingerprint: job.fingerprint.clone(),
            archive: stored,
            spec,
        });
        stage.finished(&step, index);
    }
    context.checkpoint()?;
    let manifest_text =
        std::fs::read_to_string(archive.dir().join("release.MF")).map_err(failed)?;
    let commit_hash = Some(manifest.commit_hash.clone()).filter(|c| !c.is_empty());
    let recorded = upload
        .state
        .releases()
        .insert(&NewReleaseVersion {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            commit_hash,
            uncommitted_changes: manifest.uncommitted_changes,
            manifest: manifest_text,
            jobs,
            packages,
        })
        .await;
    let recorded = match recorded {
        Ok(recorded) => recorded,
        Err(StateError::AlreadyExists { .. }) => {
            return Ok(format!(
                "release {label} is already uploaded; nothing changed"
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // A package shared with an earlier version may already have a build for the stemcell:
    // only the missing ones are recorded.
    let missing = missing_builds(upload, compiled, &recorded.packages, &facts).await?;
    for (package, stored) in compiled.iter().zip(compiled_archives) {
        if let Some(wanted) = missing.iter().find(|m| m.record.name == package.name) {
            record_build(upload, wanted, stored).await?;
        }
    }
    Ok(match compiled.len() {
        0 => format!("uploaded release {label}"),
        n => format!("uploaded release {label} ({n} compiled package(s))"),
    })
}

/// The packages of a release as planning sees them, for their dependency keys.
fn release_facts(
    name: &str,
    version: &str,
    packages: &[(&String, &String, &Vec<String>)],
) -> ReleaseFacts {
    ReleaseFacts {
        name: name.to_string(),
        version: version.to_string(),
        jobs: Default::default(),
        packages: packages
            .iter()
            .map(|(name, fingerprint, dependencies)| {
                (
                    (*name).clone(),
                    ReleasePackage {
                        name: (*name).clone(),
                        fingerprint: (*fingerprint).clone(),
                        dependencies: (*dependencies).clone(),
                    },
                )
            })
            .collect(),
    }
}

/// A compiled build an uploaded compiled release brings and the director does not have.
struct MissingBuild<'a> {
    record: &'a CompiledPackageRecord,
    package: PackageId,
    stemcell_os: String,
    stemcell_version: String,
    dependency_key: String,
}

/// The compiled packages of `compiled` with no build recorded for their package (in
/// `packages`, by name), stemcell and dependency key.
async fn missing_builds<'a>(
    upload: &UploadContext,
    compiled: &'a [CompiledPackageRecord],
    packages: &[Package],
    facts: &ReleaseFacts,
) -> Result<Vec<MissingBuild<'a>>, TaskError> {
    let mut missing = Vec::new();
    for record in compiled {
        let package = packages
            .iter()
            .find(|p| p.name == record.name && p.fingerprint == record.fingerprint)
            .ok_or_else(|| {
                failed(format!(
                    "compiled package {}/{} is not a package of the release",
                    record.name, record.fingerprint
                ))
            })?;
        let (os, version) = record.stemcell_os_version();
        let dependency_key = facts.dependency_key(&record.name);
        let found = upload
            .state
            .compiled_packages()
            .find(package.id, os, version, &dependency_key)
            .await?;
        if found.is_none() {
            missing.push(MissingBuild {
                record,
                package: package.id,
                stemcell_os: os.to_string(),
                stemcell_version: version.to_string(),
                dependency_key,
            });
        }
    }
    Ok(missing)
}

/// Records a compiled build whose blob is stored; false when a build appeared meanwhile.
async fn record_build(
    upload: &UploadContext,
    missing: &MissingBuild<'_>,
    archive: Archive,
) -> Result<bool, TaskError> {
    let next = upload
        .state
        .compiled_packages()
        .next_build(
            missing.package,
            &missing.stemcell_os,
            &missing.stemcell_version,
        )
        .await?;
    let build = missing
        .record
        .build()
        .filter(|b| *b >= next)
        .unwrap_or(next);
    let recorded = upload
        .state
        .compiled_packages()
        .insert(&NewCompiledPackage {
            package_id: missing.package,
            stemcell_os: missing.stemcell_os.clone(),
            stemcell_version: missing.stemcell_version.clone(),
            dependency_key: missing.dependency_key.clone(),
            build,
            archive,
        })
        .await;
    match recorded {
        Ok(_) => Ok(true),
        Err(StateError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Imports a stemcell tarball staged at `tarball`: its image goes to the blobstore and the
/// stemcell is recorded. The same stemcell again is a no-op that says so.
pub async fn import_stemcell(
    context: &TaskContext,
    upload: &UploadContext,
    tarball: &Path,
    fix: bool,
) -> Result<String, TaskError> {
    let log = &context.log;
    let stage = log.stage("Extracting stemcell", vec![], 1);
    stage.started("Extracting stemcell", 1);
    let staging = upload.staging_dir.clone();
    let limits = upload.limits.clone();
    let path = tarball.to_path_buf();
    let archive: StemcellArchive =
        tokio::task::spawn_blocking(move || stemcell::read_stemcell_in(&path, &limits, &staging))
            .await
            .map_err(failed)?
            .map_err(|e| {
                stage.failed("Extracting stemcell", 1, &e.to_string());
                failed(e)
            })?;
    stage.finished("Extracting stemcell", 1);
    context.checkpoint()?;
    let manifest = &archive.manifest;
    let label = format!("{}/{}", manifest.name, manifest.version);
    context
        .lock(
            &format!("stemcell:{}:{}", manifest.name, manifest.version),
            &format!("stemcell '{label}'"),
        )
        .await?;
    let image_digest = BlobId::parse(archive.image_sha256()).map_err(failed)?;
    if let Some(existing) = upload
        .state
        .stemcells()
        .find(&manifest.name, &manifest.version)
        .await?
    {
        if existing.sha256 != image_digest.as_str() {
            return Err(failed(format!(
                "stemcell {label} is already uploaded with another image: build the stemcell with a new version"
            )));
        }
        if !fix {
            return Ok(format!(
                "stemcell {label} is already uploaded; nothing changed"
            ));
        }
    }
    let stage = log.stage("Uploading stemcell", vec![], 1);
    stage.started(&label, 1);
    // A light stemcell has an empty image: there is nothing to keep.
    let stored = if archive.image_size() == 0 {
        None
    } else {
        // The image's digest was computed (and checked against stemcell.MF) while it was
        // unpacked, so it is moved into the blobstore rather than read again.
        let stored = upload
            .blobstore
            .adopt_file(&archive.image(), &image_digest)
            .await
            .map_err(|e| failed(format!("stemcell {label}: {e}")))?;
        Some(record(upload, &stored).await?)
    };
    stage.finished(&label, 1);
    if fix
        && upload
            .state
            .stemcells()
            .find(&manifest.name, &manifest.version)
            .await?
            .is_some()
    {
        return Ok(format!(
            "stemcell {label} is already uploaded; its image was stored again"
        ));
    }
    context.checkpoint()?;
    let recorded = upload
        .state
        .stemcells()
        .insert(&NewStemcell {
            name: manifest.name.clone(),
            operating_system: manifest.operating_system.clone(),
            version: manifest.version.clone(),
            sha256: image_digest.as_str().to_string(),
            api_version: i64::try_from(manifest.api_version).unwrap_or(i64::MAX),
            cloud_properties: serde_json::Value::Object(manifest.cloud_properties.clone()),
            formats: manifest.stemcell_formats.clone(),
            // The CPI's create_stemcell arrives with the CPIs; until then the image blob is
            // the stemcell's only home.
            cid: String::new(),
            image_blob_id: stored.map(|s| s.blob_id),
        })
        .await;
    match recorded {
        Ok(_) => Ok(format!("uploaded stemcell {label}")),
        Err(StateError::AlreadyExists { .. }) => Ok(format!(
            "stemcell {label} is already uploaded; nothing changed"
        )),
        Err(e) => Err(e.into()),
    }
}

pub use director_api::releases::{ExportRequest, ExportedRelease};

/// Exports release version `request` compiled for its stemcell: every package must have a
/// compiled build for that stemcell (as a deploy on it made them). Writes a compiled release
/// tarball (`release.MF` with `compiled_packages`, the job archives and the compiled
/// archives, byte for byte as stored) into the blobstore; the result is the JSON of an
/// [`ExportedRelease`]. The same builds give the same tarball bytes.
pub async fn export_release(
    context: &TaskContext,
    upload: &UploadContext,
    request: &ExportRequest,
) -> Result<String, TaskError> {
    let label = format!("{}/{}", request.release_name, request.release_version);
    let stemcell = format!("{}/{}", request.stemcell_os, request.stemcell_version);
    context
        .lock(
            &format!("release:{}", request.release_name),
            &format!("release '{}'", request.release_name),
        )
        .await?;
    let version = upload
        .state
        .releases()
        .find(&request.release_name, &request.release_version)
        .await?
        .ok_or_else(|| {
            failed(format!(
                "release {label} is not uploaded (see `director releases`)"
            ))
        })?;
    let uploaded = upload.state.stemcells().list().await?.into_iter().any(|s| {
        s.operating_system == request.stemcell_os && s.version == request.stemcell_version
    });
    if !uploaded {
        return Err(failed(format!(
            "no stemcell {stemcell} is uploaded (see `director stemcells`)"
        )));
    }
    let all_packages: Vec<(&String, &String, &Vec<String>)> = version
        .packages
        .iter()
        .map(|p| (&p.name, &p.fingerprint, &p.dependencies))
        .collect();
    let facts = release_facts(&version.name, &version.version, &all_packages);
    let mut builds = Vec::new();
    let mut missing = Vec::new();
    for package in &version.packages {
        let found = upload
            .state
            .compiled_packages()
            .find(
                package.id,
                &request.stemcell_os,
                &request.stemcell_version,
                &facts.dependency_key(&package.name),
            )
            .await?;
        match found {
            Some(build) => builds.push((package, build)),
            None => missing.push(package.name.as_str()),
        }
    }
    if !missing.is_empty() {
        return Err(failed(format!(
            "release {label} has no compiled build for stemcell {stemcell} of package(s) {}: \
             deploy something that uses it on that stemcell first",
            missing.join(", ")
        )));
    }
    context.checkpoint()?;

    let stage = context.log.stage(
        "Exporting release",
        vec![],
        (version.jobs.len() + builds.len() + 1) as u32,
    );
    let staging = tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(&upload.staging_dir)
        .map_err(|e| failed(format!("creating a staging directory: {e}")))?;
    let mut index = 0;
    let mut jobs = Vec::new();
    for job in &version.jobs {
        context.checkpoint()?;
        index += 1;
        let step = format!("{}/{}", job.name, job.fingerprint);
        stage.started(&step, index);
        fetch(
            upload,
            &job.archive.blob_id,
            &staging
                .path()
                .join("jobs")
                .join(format!("{}.tgz", job.name)),
            &format!("job {step}"),
        )
        .await?;
        jobs.push(release::JobRecord {
            name: job.name.clone(),
            fingerprint: job.fingerprint.clone(),
            sha1: job.archive.digest.clone(),
            packages: job.spec["packages"]
                .as_array()
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        });
        stage.finished(&step, index);
    }
    let mut compiled = Vec::new();
    for (package, build) in &builds {
        context.checkpoint()?;
        index += 1;
        let version = format!("{}.{}", package.fingerprint, build.build);
        let step = format!("{}/{version}", package.name);
        stage.started(&step, index);
        fetch(
            upload,
            &build.archive.blob_id,
            &staging
                .path()
                .join("compiled_packages")
                .join(format!("{}.tgz", package.name)),
            &format!("compiled package {step}"),
        )
        .await?;
        compiled.push(CompiledPackageRecord {
            name: package.name.clone(),
            version,
            fingerprint: package.fingerprint.clone(),
            sha1: build.archive.digest.clone(),
            stemcell: stemcell.clone(),
            dependencies: package.dependencies.clone(),
        });
        stage.finished(&step, index);
    }
    index += 1;
    let step = request.file_name();
    stage.started(&step, index);
    let manifest = release::ReleaseManifest {
        name: version.name.clone(),
        version: version.version.clone(),
        commit_hash: version.commit_hash.clone().unwrap_or_default(),
        uncommitted_changes: version.uncommitted_changes,
        jobs,
        packages: Vec::new(),
        license: None,
    };
    let tarball = staging.path().join("release.tgz");
    let dir = staging.path().to_path_buf();
    let target = tarball.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let file = std::fs::File::create(&target)
            .map_err(|e| format!("creating {}: {e}", target.display()))?;
        let file = release::archive::write_release_tarball(&manifest, &compiled, &dir, file)
            .map_err(|e| e.to_string())?;
        file.sync_all()
            .map_err(|e| format!("writing {}: {e}", target.display()))
    })
    .await
    .map_err(failed)?
    .map_err(|e| {
        stage.failed(&step, index, &e);
        failed(e)
    })?;
    let stored = upload
        .blobstore
        .put_file(&tarball, None)
        .await
        .map_err(|e| failed(format!("storing the exported tarball: {e}")))?;
    upload.state.blobs().insert(&NewBlob::from(&stored)).await?;
    stage.finished(&step, index);
    let exported = ExportedRelease {
        request: request.clone(),
        blob_id: stored.id.as_str().to_string(),
        sha256: stored.id.digest_string(),
        size: stored.size,
    };
    serde_json::to_string(&exported).map_err(failed)
}

/// Copies blob `blob_id` to `destination` (its folder created), verified.
async fn fetch(
    upload: &UploadContext,
    blob_id: &str,
    destination: &Path,
    what: &str,
) -> Result<(), TaskError> {
    let id = BlobId::parse(blob_id).map_err(|e| failed(format!("{what}: {e}")))?;
    if let Some(parent) = destination.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| failed(format!("creating {}: {e}", parent.display())))?;
    }
    upload
        .blobstore
        .get_to_file(&id, destination)
        .await
        .map_err(|e| failed(format!("{what}: reading its archive: {e}")))?;
    Ok(())
}

/// Deletes blobs that no row refers to and that are older than `grace` seconds; returns the
/// ids removed.
pub async fn remove_unreferenced_blobs(
    state: &State,
    blobstore: &Blobstore,
    grace_seconds: i64,
) -> Result<Vec<String>, TaskError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut removed = Vec::new();
    // `unreferenced` takes blobs created strictly before its argument: +1 includes this second.
    for blob in state
        .blobs()
        .unreferenced(now.saturating_sub(grace_seconds) + 1)
        .await?
    {
        let id = BlobId::parse(&blob.id).map_err(failed)?;
        // The row goes first (refused while anything refers to it), then the content.
        match state.blobs().delete(&blob.id).await {
            Ok(_) => {
                blobstore.delete(&id).await.map_err(failed)?;
                removed.push(blob.id);
            }
            Err(StateError::Referenced { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(removed)
}
