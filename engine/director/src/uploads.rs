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

use crate::blobstore::slots::Purpose;
use crate::blobstore::{BlobId, Blobstore, BlobstoreError, RecordedError, StoredBlob};
use crate::tasks::{LockKey, Stage, TaskContext, TaskError};
use director_core::archive::{ArchiveError, Limits};
use director_core::deploy::{ReleaseFacts, ReleasePackage};
use director_core::release::manifest::CompiledPackageRecord;
use director_core::release::{self, ReleaseArchive, ReleaseError, ReleaseManifest};
use director_core::stemcell::{self, StemcellArchive, StemcellError, StemcellKey};
use director_state::{
    Archive, DeleteError, NewBlob, NewCompiledPackage, NewJob, NewPackage, NewReleaseVersion,
    NewStemcell, Package, PackageId, ReleaseVersion, State, StateError,
};

/// Why an upload, an export or a blob clean-up failed. Variants name the release, stemcell,
/// job or package concerned.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The release tarball was refused.
    #[error("{source}")]
    ReadRelease {
        /// Why.
        source: ReleaseError,
    },
    /// The stemcell tarball was refused.
    #[error("{source}")]
    ReadStemcell {
        /// Why.
        source: StemcellError,
    },
    /// Work on a blocking thread panicked.
    #[error("{source}")]
    Join {
        /// Why.
        source: tokio::task::JoinError,
    },
    /// A digest in `release.MF` is not a SHA-256 digest.
    #[error(
        "{what}: digest {digest:?} is not a sha256 digest (create the release with sha256 digests)"
    )]
    NotSha256 {
        /// The job or package (`package ruby/6f1c…`).
        what: String,
        /// The digest given.
        digest: String,
    },
    /// A part could not be stored in the blobstore.
    #[error("{what}: {source}")]
    Store {
        /// The job, package, image or tarball (`package ruby/6f1c…`).
        what: String,
        /// Why.
        source: BlobstoreError,
    },
    /// The release version is uploaded with other contents.
    #[error(
        "release {release} is already uploaded with other jobs or packages: create the release with a new version"
    )]
    ReleaseConflict {
        /// `name/version`.
        release: String,
    },
    /// A compiled package of the tarball is not one of the release's packages.
    #[error("compiled package {package}/{fingerprint} is not a package of the release")]
    ForeignCompiledPackage {
        /// The package.
        package: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A job archive could not be read.
    #[error("{source}")]
    ReadJob {
        /// The job (`name/fingerprint`).
        job: String,
        /// Why.
        source: ArchiveError,
    },
    /// A job archive has no `job.MF`.
    #[error("job {job}: its archive has no job.MF")]
    NoJobSpec {
        /// The job (`name/fingerprint`).
        job: String,
    },
    /// A job's `job.MF` is not YAML.
    #[error("job {job}: job.MF is not YAML: {source}")]
    JobSpecNotYaml {
        /// The job (`name/fingerprint`).
        job: String,
        /// Why.
        source: serde_yaml::Error,
    },
    /// A staged file could not be read or written.
    #[error("{source}")]
    Io {
        /// Why.
        #[from]
        source: std::io::Error,
    },
    /// A blob id is not one, or the blobstore failed.
    #[error("{source}")]
    Blobstore {
        /// Why.
        #[from]
        source: BlobstoreError,
    },
    /// The stemcell version is uploaded with another image.
    #[error(
        "stemcell {stemcell} is already uploaded with another image: build the stemcell with a new version"
    )]
    StemcellConflict {
        /// The stemcell.
        stemcell: StemcellKey,
    },
    /// The release version to export is not uploaded.
    #[error("release {release} is not uploaded (see `director releases`)")]
    ReleaseNotUploaded {
        /// `name/version`.
        release: String,
    },
    /// The stemcell's formats are none the CPI takes.
    #[error(
        "stemcell {stemcell} is made for {formats} and this director's CPI takes {accepted}: upload a stemcell of one of those formats"
    )]
    StemcellFormat {
        /// The stemcell.
        stemcell: StemcellKey,
        /// Its `stemcell_formats`.
        formats: String,
        /// The CPI's.
        accepted: String,
    },
    /// The CPI refused the stemcell's image.
    #[error("the CPI could not take stemcell {stemcell}: {source}")]
    CreateStemcell {
        /// The stemcell.
        stemcell: StemcellKey,
        /// Why.
        source: cpi::CpiError,
    },
    /// The stemcell to export for is not uploaded.
    #[error("no stemcell {stemcell} is uploaded (see `director stemcells`)")]
    StemcellNotUploaded {
        /// The stemcell's OS and version.
        stemcell: StemcellKey,
    },
    /// Packages of the release to export have no build for the stemcell.
    #[error(
        "release {release} has no compiled build for stemcell {stemcell} of package(s) {}: \
         deploy something that uses it on that stemcell first",
        packages.join(", ")
    )]
    NotCompiled {
        /// `name/version`.
        release: String,
        /// The stemcell's OS and version.
        stemcell: StemcellKey,
        /// The packages without a build.
        packages: Vec<String>,
    },
    /// The staging directory of an export could not be made.
    #[error("creating a staging directory: {source}")]
    Staging {
        /// Why.
        source: std::io::Error,
    },
    /// A directory could not be created.
    #[error("creating {}: {source}", path.display())]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exported tarball could not be written.
    #[error(transparent)]
    WriteTarball(#[from] TarballError),
    /// A stored blob could not be read back.
    #[error("{what}: reading its archive: {source}")]
    Fetch {
        /// The job or package.
        what: String,
        /// Why.
        source: BlobstoreError,
    },
    /// A result could not be turned into JSON.
    #[error("{source}")]
    Json {
        /// Why.
        #[from]
        source: serde_json::Error,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] Box<StateError>),
}

impl From<StateError> for UploadError {
    fn from(error: StateError) -> UploadError {
        UploadError::State(Box::new(error))
    }
}

impl From<UploadError> for TaskError {
    fn from(error: UploadError) -> TaskError {
        TaskError::failed(error)
    }
}

/// Why an exported release tarball could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    /// The file could not be created.
    #[error("creating {}: {source}", path.display())]
    Create {
        /// The tarball.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The archive could not be written.
    #[error("{source}")]
    Archive {
        /// Why.
        source: ReleaseError,
    },
    /// The file could not be synced.
    #[error("writing {}: {source}", path.display())]
    Sync {
        /// The tarball.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

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
    /// The CPI, given each stemcell's image at upload (`create_stemcell`).
    pub cpi: Arc<dyn cpi::Cpi>,
}

/// Stores a file as a blob whose digest must be `digest` (`sha256:<hex>`), and records it.
async fn store(
    upload: &UploadContext,
    task: director_state::TaskId,
    path: &Path,
    digest: &str,
    what: &str,
) -> Result<Archive, UploadError> {
    let expected = BlobId::parse(digest).map_err(|_| UploadError::NotSha256 {
        what: what.to_string(),
        digest: digest.to_string(),
    })?;
    let store_error = |source| UploadError::Store {
        what: what.to_string(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(|source| {
        store_error(BlobstoreError::Io {
            context: format!("opening {}", path.display()),
            source,
        })
    })?;
    // Held against a concurrent clean-up while the import runs: its release or stemcell
    // record refers to it once the import is done.
    let (stored, _hold) = upload
        .blobstore
        .put_held(
            &upload.state,
            file,
            Some(&expected),
            Purpose::Import,
            Some(task),
            IMPORT_HOLD,
        )
        .await
        .map_err(|error| match error {
            RecordedError::Store(source) => store_error(source),
            RecordedError::Record(error) => error.into(),
        })?;
    Ok(Archive {
        blob_id: stored.id.as_str().to_string(),
        digest: stored.id.digest_string(),
    })
}

/// How long a blob stored by an import is held before its release or stemcell is recorded.
const IMPORT_HOLD: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Records a blob the blobstore just stored; answers it as a release/stemcell archive.
async fn record(upload: &UploadContext, stored: &StoredBlob) -> Result<Archive, UploadError> {
    upload.state.blobs().insert(&NewBlob::from(stored)).await?;
    Ok(Archive {
        blob_id: stored.id.as_str().to_string(),
        digest: stored.id.digest_string(),
    })
}

/// Every package of a release, source or compiled: (name, fingerprint, dependencies).
type PackageFacts<'a> = Vec<(&'a String, &'a String, &'a Vec<String>)>;

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
    let archive = extract_release(context, upload, tarball).await?;
    context.checkpoint()?;
    let manifest = &archive.manifest;
    context
        .lock(&LockKey::Release(manifest.name.clone()))
        .await?;
    let importing = ReleaseImport {
        context,
        upload,
        archive: &archive,
        label: format!("{}/{}", manifest.name, manifest.version),
        all_packages: all_packages(&archive),
    };
    let existing = upload
        .state
        .releases()
        .find(&manifest.name, &manifest.version)
        .await?;
    match existing {
        Some(existing) => importing.again(&existing, fix).await,
        None => importing.first_time().await,
    }
}

/// Unpacks and checks the tarball (the "Extracting release" stage).
async fn extract_release(
    context: &TaskContext,
    upload: &UploadContext,
    tarball: &Path,
) -> Result<ReleaseArchive, UploadError> {
    let stage = context.log.stage("Extracting release", vec![], 1);
    stage.started("Extracting release", 1);
    let staging = upload.staging_dir.clone();
    let limits = upload.limits.clone();
    let path = tarball.to_path_buf();
    let archive =
        tokio::task::spawn_blocking(move || release::read_archive_in(&path, &limits, &staging))
            .await
            .map_err(|source| UploadError::Join { source })?
            .map_err(|source| {
                stage.failed("Extracting release", 1, &source.to_string());
                UploadError::ReadRelease { source }
            })?;
    stage.finished("Extracting release", 1);
    Ok(archive)
}

/// The release's packages, source then compiled.
fn all_packages(archive: &ReleaseArchive) -> PackageFacts<'_> {
    archive
        .manifest
        .packages
        .iter()
        .map(|p| (&p.name, &p.fingerprint, &p.dependencies))
        .chain(
            archive
                .compiled_packages
                .iter()
                .map(|p| (&p.name, &p.fingerprint, &p.dependencies)),
        )
        .collect()
}

/// One release tarball being imported, once checked and locked.
struct ReleaseImport<'a> {
    context: &'a TaskContext,
    upload: &'a UploadContext,
    archive: &'a ReleaseArchive,
    /// `name/version`.
    label: String,
    all_packages: PackageFacts<'a>,
}

impl ReleaseImport<'_> {
    fn manifest(&self) -> &ReleaseManifest {
        &self.archive.manifest
    }

    fn compiled(&self) -> &[CompiledPackageRecord] {
        &self.archive.compiled_packages
    }

    fn facts(&self) -> ReleaseFacts {
        let manifest = self.manifest();
        release_facts(&manifest.name, &manifest.version, &self.all_packages)
    }

    /// Whether the recorded version has exactly the tarball's jobs and packages.
    fn same_contents(&self, existing: &ReleaseVersion) -> bool {
        let manifest = self.manifest();
        let same_jobs = existing.jobs.len() == manifest.jobs.len()
            && manifest.jobs.iter().all(|j| {
                existing
                    .jobs
                    .iter()
                    .any(|e| e.name == j.name && e.fingerprint == j.fingerprint)
            });
        let same_packages = existing.packages.len() == self.all_packages.len()
            && self.all_packages.iter().all(|(name, fingerprint, _)| {
                existing
                    .packages
                    .iter()
                    .any(|e| &e.name == *name && &e.fingerprint == *fingerprint)
            });
        same_jobs && same_packages
    }

    /// The version is uploaded already: add the compiled builds the director lacks, and
    /// with `fix` store every blob again.
    async fn again(&self, existing: &ReleaseVersion, fix: bool) -> Result<String, TaskError> {
        let label = &self.label;
        if !self.same_contents(existing) {
            return Err(UploadError::ReleaseConflict {
                release: label.clone(),
            }
            .into());
        }
        let compiled = self.compiled();
        let missing =
            missing_builds(self.upload, compiled, &existing.packages, &self.facts()).await?;
        if !fix && missing.is_empty() {
            return Ok(format!(
                "release {label} is already uploaded; nothing changed"
            ));
        }
        let manifest = self.manifest();
        let log = &self.context.log;
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
            self.store_sources_again(&stage, &mut index).await?;
        }
        let mut added = 0;
        for package in compiled {
            let wanted = missing.iter().find(|m| m.record.name == package.name);
            if !fix && wanted.is_none() {
                continue;
            }
            self.context.checkpoint()?;
            let (stored, step) = self.store_compiled(&stage, &mut index, package).await?;
            if let Some(wanted) = wanted {
                if record_build(self.upload, wanted, stored).await? {
                    added += 1;
                }
            }
            stage.finished(&step, index);
        }
        let added = match added {
            0 => String::new(),
            n => format!("; {n} compiled package(s) added"),
        };
        Ok(if fix {
            format!("release {label} is already uploaded; its blobs were stored again{added}")
        } else {
            format!("release {label} is already uploaded{added}")
        })
    }

    /// `fix`: the job and source package archives, stored again.
    async fn store_sources_again(&self, stage: &Stage, index: &mut u32) -> Result<(), UploadError> {
        let (upload, archive) = (self.upload, self.archive);
        for job in &self.manifest().jobs {
            *index += 1;
            let step = format!("{}/{}", job.name, job.fingerprint);
            stage.started(&step, *index);
            let path = archive.job_archive(&job.name);
            store(
                upload,
                self.context.id,
                &path,
                &job.sha1,
                &format!("job {step}"),
            )
            .await?;
            stage.finished(&step, *index);
        }
        for package in &self.manifest().packages {
            *index += 1;
            let step = format!("{}/{}", package.name, package.fingerprint);
            stage.started(&step, *index);
            let path = archive.package_archive(&package.name);
            store(
                upload,
                self.context.id,
                &path,
                &package.sha1,
                &format!("package {step}"),
            )
            .await?;
            stage.finished(&step, *index);
        }
        Ok(())
    }

    /// Starts the next step of `stage` and stores one compiled package's archive in it;
    /// answers the archive and the step, for the caller to finish.
    async fn store_compiled(
        &self,
        stage: &Stage,
        index: &mut u32,
        package: &CompiledPackageRecord,
    ) -> Result<(Archive, String), UploadError> {
        *index += 1;
        let step = format!("{}/{}", package.name, package.version);
        stage.started(&step, *index);
        let stored = store(
            self.upload,
            self.context.id,
            &self.archive.compiled_package_archive(&package.name),
            &package.sha1,
            &format!("compiled package {step} for {}", package.stemcell),
        )
        .await?;
        Ok((stored, step))
    }

    /// A new version: every part stored (the "Uploading release" stage), then the version
    /// recorded in one transaction, then the compiled builds it brings.
    async fn first_time(&self) -> Result<String, TaskError> {
        let manifest = self.manifest();
        let compiled = self.compiled();
        let total = (manifest.jobs.len() + manifest.packages.len() + compiled.len()) as u32;
        let stage = self.context.log.stage("Uploading release", vec![], total);
        let mut index = 0;
        let (packages, compiled_archives) = self.store_packages(&stage, &mut index).await?;
        let jobs = self.store_jobs(&stage, &mut index).await?;
        self.context.checkpoint()?;
        let label = &self.label;
        let Some(recorded) = self.record_version(jobs, packages).await? else {
            return Ok(format!(
                "release {label} is already uploaded; nothing changed"
            ));
        };
        // A package shared with an earlier version may already have a build for the stemcell:
        // only the missing ones are recorded.
        let missing =
            missing_builds(self.upload, compiled, &recorded.packages, &self.facts()).await?;
        for (package, stored) in compiled.iter().zip(compiled_archives) {
            if let Some(wanted) = missing.iter().find(|m| m.record.name == package.name) {
                record_build(self.upload, wanted, stored).await?;
            }
        }
        Ok(match compiled.len() {
            0 => format!("uploaded release {label}"),
            n => format!("uploaded release {label} ({n} compiled package(s))"),
        })
    }

    /// Stores the source packages, then the compiled ones (their builds are recorded once
    /// the release, and so each package's id, is).
    async fn store_packages(
        &self,
        stage: &Stage,
        index: &mut u32,
    ) -> Result<(Vec<NewPackage>, Vec<Archive>), TaskError> {
        let mut packages = Vec::new();
        for package in &self.manifest().packages {
            self.context.checkpoint()?;
            *index += 1;
            let step = format!("{}/{}", package.name, package.fingerprint);
            stage.started(&step, *index);
            let stored = store(
                self.upload,
                self.context.id,
                &self.archive.package_archive(&package.name),
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
            stage.finished(&step, *index);
        }
        let mut compiled_archives = Vec::new();
        for package in self.compiled() {
            self.context.checkpoint()?;
            let (stored, step) = self.store_compiled(stage, index, package).await?;
            compiled_archives.push(stored);
            packages.push(NewPackage {
                name: package.name.clone(),
                version: package.fingerprint.clone(),
                fingerprint: package.fingerprint.clone(),
                // Compiled only; a package recorded with sources keeps them.
                archive: None,
                dependencies: package.dependencies.clone(),
            });
            stage.finished(&step, *index);
        }
        Ok((packages, compiled_archives))
    }

    /// Stores the jobs, each with the spec read from its `job.MF`.
    async fn store_jobs(&self, stage: &Stage, index: &mut u32) -> Result<Vec<NewJob>, TaskError> {
        let mut jobs = Vec::new();
        for job in &self.manifest().jobs {
            self.context.checkpoint()?;
            *index += 1;
            let step = format!("{}/{}", job.name, job.fingerprint);
            stage.started(&step, *index);
            let job_path = self.archive.job_archive(&job.name);
            let spec = self.job_spec(&job_path, &job.name, &step).await?;
            let stored = store(
                self.upload,
                self.context.id,
                &job_path,
                &job.sha1,
                &format!("job {step}"),
            )
            .await?;
            jobs.push(NewJob {
                name: job.name.clone(),
                version: job.fingerprint.clone(),
                fingerprint: job.fingerprint.clone(),
                archive: stored,
                spec,
            });
            stage.finished(&step, *index);
        }
        Ok(jobs)
    }

    /// A job's `job.MF`, read out of its archive.
    async fn job_spec(
        &self,
        job_path: &Path,
        job_name: &str,
        step: &str,
    ) -> Result<serde_json::Value, UploadError> {
        let (path, limits, name) = (
            job_path.to_path_buf(),
            self.upload.limits.clone(),
            format!("jobs/{job_name}.tgz"),
        );
        let spec_text = tokio::task::spawn_blocking(move || {
            director_core::archive::read_file_named(&path, &name, &limits, "job.MF")
        })
        .await
        .map_err(|source| UploadError::Join { source })?
        .map_err(|source| UploadError::ReadJob {
            job: step.to_string(),
            source,
        })?
        .ok_or_else(|| UploadError::NoJobSpec {
            job: step.to_string(),
        })?;
        serde_yaml::from_slice(&spec_text).map_err(|source| UploadError::JobSpecNotYaml {
            job: step.to_string(),
            source,
        })
    }

    /// Records the version with its jobs and packages; `None` when another upload recorded
    /// it meanwhile.
    async fn record_version(
        &self,
        jobs: Vec<NewJob>,
        packages: Vec<NewPackage>,
    ) -> Result<Option<ReleaseVersion>, UploadError> {
        let manifest = self.manifest();
        let manifest_text = std::fs::read_to_string(self.archive.dir().join("release.MF"))?;
        let commit_hash = Some(manifest.commit_hash.clone()).filter(|c| !c.is_empty());
        let recorded = self
            .upload
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
            Ok(recorded) => Ok(Some(recorded)),
            Err(StateError::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The packages of a release as planning sees them, for their dependency keys.
fn release_facts(name: &str, version: &str, packages: &PackageFacts<'_>) -> ReleaseFacts {
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
) -> Result<Vec<MissingBuild<'a>>, UploadError> {
    let mut missing = Vec::new();
    for record in compiled {
        let package = packages
            .iter()
            .find(|p| p.name == record.name && p.fingerprint == record.fingerprint)
            .ok_or_else(|| UploadError::ForeignCompiledPackage {
                package: record.name.clone(),
                fingerprint: record.fingerprint.clone(),
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
) -> Result<bool, UploadError> {
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
            .map_err(|source| UploadError::Join { source })?
            .map_err(|source| {
                stage.failed("Extracting stemcell", 1, &source.to_string());
                UploadError::ReadStemcell { source }
            })?;
    stage.finished("Extracting stemcell", 1);
    context.checkpoint()?;
    let manifest = &archive.manifest;
    let key = StemcellKey::new(&manifest.name, &manifest.version);
    let label = key.to_string();
    context.lock(&LockKey::Stemcell(key.clone())).await?;
    let image_digest = BlobId::parse(archive.image_sha256()).map_err(UploadError::from)?;
    if let Some(existing) = upload
        .state
        .stemcells()
        .find(&manifest.name, &manifest.version)
        .await?
    {
        if existing.sha256 != image_digest.as_str() {
            return Err(UploadError::StemcellConflict { stemcell: key }.into());
        }
        if !fix {
            return Ok(format!(
                "stemcell {label} is already uploaded; nothing changed"
            ));
        }
    }
    // The CPI takes the image now, so a stemcell it cannot boot fails its upload rather
    // than a later deploy. (A `--fix` of a stemcell the CPI has keeps the CPI's copy.)
    let cid = match upload
        .state
        .stemcells()
        .find(&manifest.name, &manifest.version)
        .await?
    {
        Some(existing) if !existing.cid.is_empty() => None,
        _ if archive.image_size() == 0 => None,
        _ => Some(give_stemcell_to_cpi(context, upload, &archive, &key).await?),
    };
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
            .map_err(|source| UploadError::Store {
                what: format!("stemcell {label}"),
                source,
            })?;
        Some(record(upload, &stored).await?)
    };
    stage.finished(&label, 1);
    if fix {
        if let Some(existing) = upload
            .state
            .stemcells()
            .find(&manifest.name, &manifest.version)
            .await?
        {
            if let Some(cid) = cid {
                upload.state.stemcells().set_cid(existing.id, &cid).await?;
            }
            return Ok(format!(
                "stemcell {label} is already uploaded; its image was stored again"
            ));
        }
    }
    if let Err(error) = context.checkpoint() {
        forget_stemcell(upload, cid).await;
        return Err(error);
    }
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
            // Empty for a light stemcell: a deploy gives the CPI nothing.
            cid: cid.clone().unwrap_or_default(),
            image_blob_id: stored.map(|s| s.blob_id),
        })
        .await;
    match recorded {
        Ok(_) => Ok(format!("uploaded stemcell {label}")),
        Err(StateError::AlreadyExists { .. }) => {
            forget_stemcell(upload, cid).await;
            Ok(format!(
                "stemcell {label} is already uploaded; nothing changed"
            ))
        }
        Err(e) => {
            forget_stemcell(upload, cid).await;
            Err(e.into())
        }
    }
}

/// Gives the stemcell's image to the CPI (`create_stemcell`), after checking that the CPI
/// takes one of its formats; answers the CPI's id for it.
async fn give_stemcell_to_cpi(
    context: &TaskContext,
    upload: &UploadContext,
    archive: &StemcellArchive,
    key: &StemcellKey,
) -> Result<String, TaskError> {
    let manifest = &archive.manifest;
    let cpi = upload.cpi.clone();
    let info = tokio::task::spawn_blocking(move || cpi.info())
        .await
        .map_err(|source| UploadError::Join { source })?
        .map_err(|source| UploadError::CreateStemcell {
            stemcell: key.clone(),
            source,
        })?;
    let takes = |format: &String| info.stemcell_formats.contains(format);
    if !manifest.stemcell_formats.is_empty()
        && !info.stemcell_formats.is_empty()
        && !manifest.stemcell_formats.iter().any(takes)
    {
        return Err(UploadError::StemcellFormat {
            stemcell: key.clone(),
            formats: manifest.stemcell_formats.join(", "),
            accepted: info.stemcell_formats.join(", "),
        }
        .into());
    }
    let stage = context
        .log
        .stage("Creating stemcell in the cloud", vec![], 1);
    stage.started(&key.to_string(), 1);
    let (cpi, image) = (upload.cpi.clone(), archive.image());
    let properties = serde_json::Value::Object(manifest.cloud_properties.clone());
    let created = tokio::task::spawn_blocking(move || cpi.create_stemcell(&image, &properties))
        .await
        .map_err(|source| UploadError::Join { source })?;
    match created {
        Ok(cid) => {
            stage.finished(&key.to_string(), 1);
            Ok(cid)
        }
        Err(source) => {
            stage.failed(&key.to_string(), 1, &source.to_string());
            Err(UploadError::CreateStemcell {
                stemcell: key.clone(),
                source,
            }
            .into())
        }
    }
}

/// Deletes a stemcell given to the CPI by an upload that then recorded nothing.
async fn forget_stemcell(upload: &UploadContext, cid: Option<String>) {
    if let Some(cid) = cid {
        let cpi = upload.cpi.clone();
        let _ = tokio::task::spawn_blocking(move || cpi.delete_stemcell(&cid)).await;
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
    let stemcell_key = StemcellKey::new(&request.stemcell_os, &request.stemcell_version);
    let stemcell = stemcell_key.to_string();
    context
        .lock(&LockKey::Release(request.release_name.clone()))
        .await?;
    let version = upload
        .state
        .releases()
        .find(&request.release_name, &request.release_version)
        .await?
        .ok_or_else(|| UploadError::ReleaseNotUploaded {
            release: label.clone(),
        })?;
    let uploaded = upload.state.stemcells().list().await?.into_iter().any(|s| {
        s.operating_system == request.stemcell_os && s.version == request.stemcell_version
    });
    if !uploaded {
        return Err(UploadError::StemcellNotUploaded {
            stemcell: stemcell_key,
        }
        .into());
    }
    let all_packages: PackageFacts<'_> = version
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
            None => missing.push(package.name.clone()),
        }
    }
    if !missing.is_empty() {
        return Err(UploadError::NotCompiled {
            release: label,
            stemcell: stemcell_key,
            packages: missing,
        }
        .into());
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
        .map_err(|source| UploadError::Staging { source })?;
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
            packages: job_packages(&job.spec),
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
    tokio::task::spawn_blocking(move || -> Result<(), TarballError> {
        let file = std::fs::File::create(&target).map_err(|source| TarballError::Create {
            path: target.clone(),
            source,
        })?;
        let file = release::archive::write_release_tarball(&manifest, &compiled, &dir, file)
            .map_err(|source| TarballError::Archive { source })?;
        file.sync_all().map_err(|source| TarballError::Sync {
            path: target.clone(),
            source,
        })
    })
    .await
    .map_err(|source| UploadError::Join { source })?
    .map_err(|e| {
        stage.failed(&step, index, &e.to_string());
        UploadError::from(e)
    })?;
    let file = tokio::fs::File::open(&tarball)
        .await
        .map_err(|source| UploadError::Store {
            what: "storing the exported tarball".to_string(),
            source: crate::blobstore::BlobstoreError::Io {
                context: format!("opening {}", tarball.display()),
                source,
            },
        })?;
    // Nothing records an exported tarball: a hold keeps it until the CLI fetched its link
    // (which holds it again while the link is valid).
    let (stored, _hold) = upload
        .blobstore
        .put_held(
            &upload.state,
            file,
            None,
            Purpose::ExportedRelease,
            None,
            std::time::Duration::ZERO,
        )
        .await
        .map_err(|error| match error {
            RecordedError::Store(source) => UploadError::Store {
                what: "storing the exported tarball".to_string(),
                source,
            },
            RecordedError::Record(error) => error.into(),
        })?;
    stage.finished(&step, index);
    let exported = ExportedRelease {
        request: request.clone(),
        blob_id: stored.id.as_str().to_string(),
        sha256: stored.id.digest_string(),
        size: stored.size,
    };
    Ok(serde_json::to_string(&exported).map_err(UploadError::from)?)
}

/// Copies blob `blob_id` to `destination` (its folder created), verified.
async fn fetch(
    upload: &UploadContext,
    blob_id: &str,
    destination: &Path,
    what: &str,
) -> Result<(), UploadError> {
    let id = BlobId::parse(blob_id).map_err(|source| UploadError::Store {
        what: what.to_string(),
        source,
    })?;
    if let Some(parent) = destination.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| UploadError::CreateDirectory {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    upload
        .blobstore
        .get_to_file(&id, destination)
        .await
        .map_err(|source| UploadError::Fetch {
            what: what.to_string(),
            source,
        })?;
    Ok(())
}

/// Deletes blobs that no row refers to and that are older than `grace` seconds; returns the
/// ids removed. Slots and holds whose time is up are removed first; the live ones keep
/// their blobs (in-flight uploads, rendered templates, logs and exports not yet fetched,
/// another director's work on the same database). Each blob's content is deleted inside
/// the transaction that forgets its row, so a writer that records the same blob meanwhile
/// stores its content again after the deletion rather than losing it.
pub async fn remove_unreferenced_blobs(
    state: &State,
    blobstore: &Blobstore,
    grace_seconds: i64,
) -> Result<Vec<String>, UploadError> {
    let now = director_state::now();
    state.blobs().remove_expired_slots(now).await?;
    let mut removed = Vec::new();
    // `unreferenced` takes blobs created strictly before its argument: +1 includes this second.
    for blob in state
        .blobs()
        .unreferenced(now.saturating_sub(grace_seconds) + 1)
        .await?
    {
        let id = BlobId::parse(&blob.id)?;
        // Refused while anything refers to it (a record or a hold that landed meanwhile).
        match state
            .blobs()
            .delete_with(&blob.id, || blobstore.delete(&id))
            .await
        {
            Ok(true) => removed.push(blob.id),
            Ok(false) | Err(DeleteError::State(StateError::Referenced { .. })) => {}
            Err(DeleteError::State(e)) => return Err(e.into()),
            Err(DeleteError::Remove(e)) => return Err(e.into()),
        }
    }
    Ok(removed)
}

/// The packages a recorded job spec (JSON) names.
fn job_packages(spec: &serde_json::Value) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct JobPackages {
        #[serde(default)]
        packages: Vec<String>,
    }
    <JobPackages as serde::Deserialize>::deserialize(spec)
        .map(|job| job.packages)
        .unwrap_or_default()
}
