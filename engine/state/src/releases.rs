//! Release versions with their jobs and packages, and the compiled-package cache.
//!
//! Jobs and packages belong to a release and are shared by its versions: inserting a version
//! whose package has the fingerprint of one already recorded for that release links the
//! existing row (and its blob) instead of adding another. Deleting a version deletes the jobs
//! and packages no other version links, with their compiled builds, and the release itself
//! once it has no version left; the blobs they referenced become unreferenced for clean-up.

use std::collections::BTreeSet;

use serde_json::Value;

use super::sql::{Begin, Columns, Conn, params};
use super::{
    CompiledPackageId, Failure, JobId, Object, PackageId, ReleaseVersionId, State, StateError,
    Violation, names, now, referenced, usage,
};

/// A blob in the blobstore and the digest BOSH writes for it (`sha256:<hex>` in
/// `release.MF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive {
    /// The blob's id (lowercase hex sha256); a row of `blobs` must exist for it.
    pub blob_id: String,
    /// The digest as the release manifest states it.
    pub digest: String,
}

/// A release version to record, as read from a release tarball.
#[derive(Clone, Debug)]
pub struct NewReleaseVersion {
    pub name: String,
    pub version: String,
    pub commit_hash: Option<String>,
    pub uncommitted_changes: bool,
    /// `release.MF` as uploaded.
    pub manifest: String,
    pub jobs: Vec<NewJob>,
    pub packages: Vec<NewPackage>,
}

/// A job of a release version.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub name: String,
    /// `version` in `release.MF` (the fingerprint for every release built by a modern CLI).
    pub version: String,
    pub fingerprint: String,
    pub archive: Archive,
    /// The job's spec (`job.MF`) as JSON.
    pub spec: Value,
}

/// A package of a release version.
#[derive(Clone, Debug)]
pub struct NewPackage {
    pub name: String,
    pub version: String,
    pub fingerprint: String,
    /// The source archive; `None` for a package that comes only compiled.
    pub archive: Option<Archive>,
    /// Names of the packages it depends on.
    pub dependencies: Vec<String>,
}

/// A recorded release version.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseVersion {
    pub id: ReleaseVersionId,
    pub name: String,
    pub version: String,
    pub commit_hash: Option<String>,
    pub uncommitted_changes: bool,
    pub manifest: String,
    pub created_at: i64,
    /// Sorted by name.
    pub jobs: Vec<Job>,
    /// Sorted by name.
    pub packages: Vec<Package>,
    /// Deployments that use this version, sorted.
    pub deployments: Vec<String>,
}

/// A recorded job (shared by the versions that bring the same fingerprint).
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub name: String,
    pub version: String,
    pub fingerprint: String,
    pub archive: Archive,
    pub spec: Value,
}

/// A recorded package (shared by the versions that bring the same fingerprint).
#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    pub id: PackageId,
    pub name: String,
    pub version: String,
    pub fingerprint: String,
    pub archive: Option<Archive>,
    pub dependencies: Vec<String>,
}

/// A line of `director releases`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseVersionSummary {
    pub id: ReleaseVersionId,
    pub name: String,
    pub version: String,
    pub commit_hash: Option<String>,
    pub uncommitted_changes: bool,
    pub created_at: i64,
    /// Deployments that use this version, sorted.
    pub deployments: Vec<String>,
}

/// Release versions; see [`State::releases`].
#[derive(Clone, Copy, Debug)]
pub struct Releases<'a> {
    pub(super) state: &'a State,
}

impl Releases<'_> {
    /// Records a release version with its jobs and packages in one transaction, and returns
    /// it as stored (jobs and packages already known for the release are shared, so their
    /// archive is the one recorded first).
    ///
    /// Fails with [`StateError::AlreadyExists`] if the version is recorded,
    /// [`StateError::NotFound`] naming the blob if an archive's blob has no row, and
    /// [`StateError::Invalid`] if a job or package name is listed twice.
    pub async fn insert(&self, release: &NewReleaseVersion) -> Result<ReleaseVersion, StateError> {
        check_names(release)?;
        let created_at = now();
        on_pool!(
            self.state,
            format!(
                "inserting {}",
                version_object(&release.name, &release.version)
            ),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                let id = insert_version(&mut *transaction, release, created_at).await?;
                let stored = load_version(&mut *transaction, id).await?;
                transaction.commit().await?;
                Ok(stored)
            }
        )
    }

    /// The release version `name/version`, if recorded.
    pub async fn find(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<ReleaseVersion>, StateError> {
        on_pool!(
            self.state,
            format!("reading {}", version_object(name, version)),
            |pool| {
                let mut transaction = pool.begin_read().await?;
                let found = match find_version_id(&mut *transaction, name, version).await? {
                    Some(id) => Some(load_version(&mut *transaction, id).await?),
                    None => None,
                };
                transaction.commit().await?;
                Ok(found)
            }
        )
    }

    /// Every release version, by release name, then in upload order.
    pub async fn list(&self) -> Result<Vec<ReleaseVersionSummary>, StateError> {
        on_pool!(self.state, "listing release versions".to_string(), |pool| {
            let mut transaction = pool.begin_read().await?;
            let rows = transaction
                .rows(
                    "SELECT v.id, r.name, v.version, v.commit_hash, v.uncommitted_changes, \
                         v.created_at \
                         FROM release_versions v JOIN releases r ON r.id = v.release_id \
                         ORDER BY r.name, v.id",
                    params![],
                )
                .await?;
            let mut users = usage(
                &mut *transaction,
                "SELECT u.release_version_id AS id, d.name \
                     FROM deployment_release_versions u \
                     JOIN deployments d ON d.id = u.deployment_id ORDER BY d.name",
            )
            .await?;
            transaction.commit().await?;
            let summaries = rows
                .iter()
                .map(|row| {
                    let id = row.int("id")?;
                    Ok(ReleaseVersionSummary {
                        id: ReleaseVersionId(id),
                        name: row.text("name")?,
                        version: row.text("version")?,
                        commit_hash: row.opt_text("commit_hash")?,
                        uncommitted_changes: row.flag("uncommitted_changes")?,
                        created_at: row.int("created_at")?,
                        deployments: users.remove(&id).unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            Ok(summaries)
        })
    }

    /// Deletes the release version `name/version`, the jobs and packages only it linked
    /// (with their compiled builds), and the release once it has no version left.
    ///
    /// Refuses with [`StateError::InUse`] while a deployment uses the version (see
    /// [`Deployments::set_uses`](super::Deployments::set_uses)); fails with
    /// [`StateError::NotFound`] if it is not recorded.
    pub async fn delete(&self, name: &str, version: &str) -> Result<(), StateError> {
        let object = || version_object(name, version);
        on_pool!(self.state, format!("deleting {}", object()), |pool| {
            let mut transaction = pool.begin_write().await?;
            let row = transaction
                .maybe_row(
                    "SELECT v.id, v.release_id FROM release_versions v \
                     JOIN releases r ON r.id = v.release_id \
                     WHERE r.name = $1 AND v.version = $2",
                    params![name, version],
                )
                .await?
                .ok_or_else(|| StateError::NotFound { object: object() })?;
            let (id, release_id) = (row.int("id")?, row.int("release_id")?);
            let deployments = names(
                transaction
                    .rows(
                        "SELECT d.name FROM deployments d \
                         JOIN deployment_release_versions u ON u.deployment_id = d.id \
                         WHERE u.release_version_id = $1 ORDER BY d.name",
                        params![id],
                    )
                    .await?,
            )?;
            if !deployments.is_empty() {
                return Err(StateError::InUse {
                    object: object(),
                    deployments,
                }
                .into());
            }
            transaction
                .run("DELETE FROM release_versions WHERE id = $1", params![id])
                .await
                .map_err(|error| referenced(error, object()))?;
            transaction
                .run(
                    "DELETE FROM jobs WHERE release_id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM release_version_jobs l WHERE l.job_id = jobs.id)",
                    params![release_id],
                )
                .await
                .map_err(|error| referenced(error, object()))?;
            transaction
                .run(
                    "DELETE FROM packages WHERE release_id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM release_version_packages l \
                      WHERE l.package_id = packages.id)",
                    params![release_id],
                )
                .await
                .map_err(|error| referenced(error, object()))?;
            transaction
                .run(
                    "DELETE FROM releases WHERE id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM release_versions v WHERE v.release_id = $1)",
                    params![release_id],
                )
                .await
                .map_err(|error| referenced(error, object()))?;
            transaction.commit().await?;
            Ok(())
        })
    }
}

fn version_object(name: &str, version: &str) -> Object {
    Object::ReleaseVersion {
        name: name.to_string(),
        version: version.to_string(),
    }
}

fn check_names(release: &NewReleaseVersion) -> Result<(), StateError> {
    let invalid = |reason: String| StateError::Invalid {
        object: version_object(&release.name, &release.version),
        reason,
    };
    let mut seen = BTreeSet::new();
    for job in &release.jobs {
        if !seen.insert(job.name.as_str()) {
            return Err(invalid(format!("job '{}' is listed twice", job.name)));
        }
    }
    seen.clear();
    for package in &release.packages {
        if !seen.insert(package.name.as_str()) {
            return Err(invalid(format!(
                "package '{}' is listed twice",
                package.name
            )));
        }
    }
    Ok(())
}

async fn insert_version<C: Conn>(
    conn: &mut C,
    release: &NewReleaseVersion,
    created_at: i64,
) -> Result<ReleaseVersionId, Failure> {
    conn.run(
        "INSERT INTO releases (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        params![&release.name, created_at],
    )
    .await?;
    let release_id = conn
        .row(
            "SELECT id FROM releases WHERE name = $1",
            params![&release.name],
        )
        .await?
        .int("id")?;
    let version_id = conn
        .row(
            "INSERT INTO release_versions \
             (release_id, version, commit_hash, uncommitted_changes, manifest, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            params![
                release_id,
                &release.version,
                &release.commit_hash,
                release.uncommitted_changes,
                &release.manifest,
                created_at,
            ],
        )
        .await
        .exists_as(|| version_object(&release.name, &release.version))?
        .int("id")?;

    for package in &release.packages {
        let blob_id = package
            .archive
            .as_ref()
            .map(|archive| archive.blob_id.as_str());
        let digest = package
            .archive
            .as_ref()
            .map(|archive| archive.digest.as_str());
        let dependencies = Value::from(package.dependencies.clone()).to_string();
        // An existing row keeps its archive; one recorded without (compiled only) gets it.
        let package_id = conn
            .row(
                "INSERT INTO packages \
                 (release_id, name, version, fingerprint, digest, blob_id, dependencies) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (release_id, name, fingerprint) DO UPDATE SET \
                 digest = COALESCE(packages.digest, excluded.digest), \
                 blob_id = COALESCE(packages.blob_id, excluded.blob_id) \
                 RETURNING id",
                params![
                    release_id,
                    &package.name,
                    &package.version,
                    &package.fingerprint,
                    digest,
                    blob_id,
                    &dependencies,
                ],
            )
            .await
            .missing_as(|| Object::Blob {
                id: blob_id.unwrap_or_default().to_string(),
            })?
            .int("id")?;
        conn.run(
            "INSERT INTO release_version_packages (release_version_id, package_id) \
             VALUES ($1, $2)",
            params![version_id, package_id],
        )
        .await?;
    }

    for job in &release.jobs {
        let spec = job.spec.to_string();
        let inserted = conn
            .maybe_row(
                "INSERT INTO jobs \
                 (release_id, name, version, fingerprint, digest, blob_id, spec) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (release_id, name, fingerprint) DO NOTHING RETURNING id",
                params![
                    release_id,
                    &job.name,
                    &job.version,
                    &job.fingerprint,
                    &job.archive.digest,
                    &job.archive.blob_id,
                    &spec,
                ],
            )
            .await
            .missing_as(|| Object::Blob {
                id: job.archive.blob_id.clone(),
            })?;
        let job_id = match inserted {
            Some(row) => row.int("id")?,
            None => conn
                .row(
                    "SELECT id FROM jobs \
                     WHERE release_id = $1 AND name = $2 AND fingerprint = $3",
                    params![release_id, &job.name, &job.fingerprint],
                )
                .await?
                .int("id")?,
        };
        conn.run(
            "INSERT INTO release_version_jobs (release_version_id, job_id) VALUES ($1, $2)",
            params![version_id, job_id],
        )
        .await?;
    }
    Ok(ReleaseVersionId(version_id))
}

async fn find_version_id<C: Conn>(
    conn: &mut C,
    name: &str,
    version: &str,
) -> Result<Option<ReleaseVersionId>, Failure> {
    let row = conn
        .maybe_row(
            "SELECT v.id FROM release_versions v JOIN releases r ON r.id = v.release_id \
             WHERE r.name = $1 AND v.version = $2",
            params![name, version],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(ReleaseVersionId(row.int("id")?)),
        None => None,
    })
}

async fn load_version<C: Conn>(
    conn: &mut C,
    id: ReleaseVersionId,
) -> Result<ReleaseVersion, Failure> {
    let row = conn
        .row(
            "SELECT v.id, r.name, v.version, v.commit_hash, v.uncommitted_changes, v.manifest, \
             v.created_at \
             FROM release_versions v JOIN releases r ON r.id = v.release_id WHERE v.id = $1",
            params![id.0],
        )
        .await?;
    let jobs = conn
        .rows(
            "SELECT j.id, j.name, j.version, j.fingerprint, j.digest, j.blob_id, j.spec \
             FROM jobs j JOIN release_version_jobs l ON l.job_id = j.id \
             WHERE l.release_version_id = $1 ORDER BY j.name",
            params![id.0],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(Job {
                id: JobId(row.int("id")?),
                name: row.text("name")?,
                version: row.text("version")?,
                fingerprint: row.text("fingerprint")?,
                archive: Archive {
                    blob_id: row.text("blob_id")?,
                    digest: row.text("digest")?,
                },
                spec: row.json("spec")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let packages = conn
        .rows(
            "SELECT p.id, p.name, p.version, p.fingerprint, p.digest, p.blob_id, \
             p.dependencies \
             FROM packages p JOIN release_version_packages l ON l.package_id = p.id \
             WHERE l.release_version_id = $1 ORDER BY p.name",
            params![id.0],
        )
        .await?
        .iter()
        .map(package_from_row)
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let deployments = names(
        conn.rows(
            "SELECT d.name FROM deployments d \
             JOIN deployment_release_versions u ON u.deployment_id = d.id \
             WHERE u.release_version_id = $1 ORDER BY d.name",
            params![id.0],
        )
        .await?,
    )?;
    Ok(ReleaseVersion {
        id,
        name: row.text("name")?,
        version: row.text("version")?,
        commit_hash: row.opt_text("commit_hash")?,
        uncommitted_changes: row.flag("uncommitted_changes")?,
        manifest: row.text("manifest")?,
        created_at: row.int("created_at")?,
        jobs,
        packages,
        deployments,
    })
}

fn package_from_row(row: &impl Columns) -> Result<Package, sqlx::Error> {
    let archive = match (row.opt_text("blob_id")?, row.opt_text("digest")?) {
        (Some(blob_id), Some(digest)) => Some(Archive { blob_id, digest }),
        _ => None,
    };
    Ok(Package {
        id: PackageId(row.int("id")?),
        name: row.text("name")?,
        version: row.text("version")?,
        fingerprint: row.text("fingerprint")?,
        archive,
        dependencies: row.json("dependencies")?,
    })
}

/// A compiled build of a package to record.
#[derive(Clone, Debug)]
pub struct NewCompiledPackage {
    pub package_id: PackageId,
    pub stemcell_os: String,
    pub stemcell_version: String,
    /// JSON of the nested `[name, version, [sub-dependencies…]]` of the sorted direct
    /// dependencies (reference §7.2).
    pub dependency_key: String,
    /// From [`CompiledPackages::next_build`].
    pub build: i64,
    pub archive: Archive,
}

/// A recorded compiled build of a package.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledPackage {
    pub id: CompiledPackageId,
    pub package_id: PackageId,
    pub stemcell_os: String,
    pub stemcell_version: String,
    pub dependency_key: String,
    pub build: i64,
    pub archive: Archive,
    pub created_at: i64,
}

/// The compiled-package cache; see [`State::compiled_packages`].
#[derive(Clone, Copy, Debug)]
pub struct CompiledPackages<'a> {
    pub(super) state: &'a State,
}

impl CompiledPackages<'_> {
    /// Records a compiled build. Fails with [`StateError::AlreadyExists`] if the package
    /// already has a build for this stemcell and dependency key, and with
    /// [`StateError::NotFound`] if the package or the blob is not recorded.
    pub async fn insert(
        &self,
        compiled: &NewCompiledPackage,
    ) -> Result<CompiledPackage, StateError> {
        let created_at = now();
        let package_object = || Object::Row {
            kind: "package",
            id: compiled.package_id.0,
        };
        on_pool!(
            self.state,
            format!(
                "inserting a compiled build of {} for {}/{}",
                package_object(),
                compiled.stemcell_os,
                compiled.stemcell_version
            ),
            |pool| {
                let mut transaction = pool.begin_write().await?;
                let package = transaction
                    .maybe_row(
                        "SELECT name, fingerprint FROM packages WHERE id = $1",
                        params![compiled.package_id.0],
                    )
                    .await?
                    .ok_or_else(|| StateError::NotFound {
                        object: package_object(),
                    })?;
                let package_name =
                    format!("{}/{}", package.text("name")?, package.text("fingerprint")?);
                let row = transaction
                    .row(
                        "INSERT INTO compiled_packages (package_id, stemcell_os, \
                         stemcell_version, dependency_key, build, digest, blob_id, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                        params![
                            compiled.package_id.0,
                            &compiled.stemcell_os,
                            &compiled.stemcell_version,
                            &compiled.dependency_key,
                            compiled.build,
                            &compiled.archive.digest,
                            &compiled.archive.blob_id,
                            created_at,
                        ],
                    )
                    .await
                    .exists_as(|| Object::CompiledPackage {
                        package: package_name.clone(),
                        stemcell_os: compiled.stemcell_os.clone(),
                        stemcell_version: compiled.stemcell_version.clone(),
                        dependency_key: compiled.dependency_key.clone(),
                    })
                    .missing_as(|| Object::Blob {
                        id: compiled.archive.blob_id.clone(),
                    })?;
                transaction.commit().await?;
                Ok(CompiledPackage {
                    id: CompiledPackageId(row.int("id")?),
                    package_id: compiled.package_id,
                    stemcell_os: compiled.stemcell_os.clone(),
                    stemcell_version: compiled.stemcell_version.clone(),
                    dependency_key: compiled.dependency_key.clone(),
                    build: compiled.build,
                    archive: compiled.archive.clone(),
                    created_at,
                })
            }
        )
    }

    /// The build of `package_id` for this stemcell and dependency key, if compiled.
    pub async fn find(
        &self,
        package_id: PackageId,
        stemcell_os: &str,
        stemcell_version: &str,
        dependency_key: &str,
    ) -> Result<Option<CompiledPackage>, StateError> {
        on_pool!(
            self.state,
            format!(
                "reading the compiled build of package {package_id} for \
                 {stemcell_os}/{stemcell_version}"
            ),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .maybe_row(
                        "SELECT id, package_id, stemcell_os, stemcell_version, dependency_key, \
                         build, digest, blob_id, created_at FROM compiled_packages \
                         WHERE package_id = $1 AND stemcell_os = $2 \
                         AND stemcell_version = $3 AND dependency_key = $4",
                        params![package_id.0, stemcell_os, stemcell_version, dependency_key],
                    )
                    .await?;
                Ok(match row {
                    Some(row) => Some(CompiledPackage {
                        id: CompiledPackageId(row.int("id")?),
                        package_id: PackageId(row.int("package_id")?),
                        stemcell_os: row.text("stemcell_os")?,
                        stemcell_version: row.text("stemcell_version")?,
                        dependency_key: row.text("dependency_key")?,
                        build: row.int("build")?,
                        archive: Archive {
                            blob_id: row.text("blob_id")?,
                            digest: row.text("digest")?,
                        },
                        created_at: row.int("created_at")?,
                    }),
                    None => None,
                })
            }
        )
    }

    /// The build number for the next compilation of `package_id` on this stemcell: one more
    /// than the highest recorded for any dependency key (BOSH's rule), starting at 1.
    pub async fn next_build(
        &self,
        package_id: PackageId,
        stemcell_os: &str,
        stemcell_version: &str,
    ) -> Result<i64, StateError> {
        on_pool!(
            self.state,
            format!("reading the builds of package {package_id}"),
            |pool| {
                let mut conn = pool.acquire().await?;
                let row = conn
                    .row(
                        "SELECT MAX(build) AS build FROM compiled_packages \
                         WHERE package_id = $1 AND stemcell_os = $2 AND stemcell_version = $3",
                        params![package_id.0, stemcell_os, stemcell_version],
                    )
                    .await?;
                Ok(row.opt_int("build")?.unwrap_or(0) + 1)
            }
        )
    }
}
