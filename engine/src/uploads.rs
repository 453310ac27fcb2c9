//! What happens to an uploaded release or stemcell, as a task: check the archive, take the
//! lock, store its parts in the blobstore (verifying every digest), then record it in one
//! transaction. Until that transaction commits nothing points at the new blobs, so an upload
//! that fails or is killed leaves no release or stemcell behind: its blobs are unreferenced
//! and the director removes them when it starts (and `clean-up` does too).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::archive::Limits;
use crate::blobstore::{BlobId, Blobstore};
use crate::release::{self, ReleaseArchive};
use crate::state::{
    Archive, NewBlob, NewJob, NewPackage, NewReleaseVersion, NewStemcell, State, StateError,
};
use crate::stemcell::{self, StemcellArchive};
use crate::tasks::{TaskContext, TaskError};

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
    upload
        .state
        .blobs()
        .insert(&NewBlob {
            id: stored.id.as_str().to_string(),
            size: stored.size,
        })
        .await?;
    Ok(Archive {
        blob_id: stored.id.as_str().to_string(),
        digest: stored.id.digest_string(),
    })
}

/// Imports a release tarball staged at `tarball`. Uploading a release that is already
/// uploaded with the same jobs and packages is a no-op that says so; `fix` re-stores its
/// blobs (for a blobstore that lost them).
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
    let label = format!("{}/{}", manifest.name, manifest.version);
    context
        .lock(
            &format!("release:{}", manifest.name),
            &format!("release '{}'", manifest.name),
        )
        .await?;

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
        let same_packages = existing.packages.len() == manifest.packages.len()
            && manifest.packages.iter().all(|p| {
                existing
                    .packages
                    .iter()
                    .any(|e| e.name == p.name && e.fingerprint == p.fingerprint)
            });
        if !(same_jobs && same_packages) {
            return Err(failed(format!(
                "release {label} is already uploaded with other jobs or packages: create the release with a new version"
            )));
        }
        if !fix {
            return Ok(format!(
                "release {label} is already uploaded; nothing changed"
            ));
        }
        let stage = log.stage(
            "Fixing release",
            vec![],
            (manifest.jobs.len() + manifest.packages.len()) as u32,
        );
        let mut index = 0;
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
        return Ok(format!(
            "release {label} is already uploaded; its blobs were stored again"
        ));
    }

    let total = (manifest.jobs.len() + manifest.packages.len()) as u32;
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
                crate::archive::read_file_named(&path, &name, &limits, "job.MF")
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
    match recorded {
        Ok(_) => Ok(format!("uploaded release {label}")),
        Err(StateError::AlreadyExists { .. }) => Ok(format!(
            "release {label} is already uploaded; nothing changed"
        )),
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
        upload
            .state
            .blobs()
            .insert(&NewBlob {
                id: stored.id.as_str().to_string(),
                size: stored.size,
            })
            .await?;
        Some(Archive {
            blob_id: stored.id.as_str().to_string(),
            digest: stored.id.digest_string(),
        })
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
