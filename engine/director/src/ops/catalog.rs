//! The catalog of a deploy, read from the director's state: the release versions and
//! stemcells a manifest names (with `latest` resolved), and the template sources of the
//! jobs it uses (read from their archives once, then cached by fingerprint).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::blobstore::{BlobId, Blobstore, BlobstoreError};
use director_core::deploy::{Catalog, ReleaseFacts, ReleaseJob, ReleasePackage, StemcellFacts};
use director_core::manifest::{DeploymentManifest, ReleaseRef, RuntimeConfig};
use director_core::release::version::Version;
use director_state::{ReleaseVersion, ReleaseVersionId, State, StateError, StemcellId};

/// Why a job archive's templates could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateArchiveError {
    /// The archive is not a readable `.tgz`.
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// A template, or all of them, is too large.
    #[error("template '{name}' is larger than {MAX_TEMPLATE} bytes")]
    TooLarge {
        /// The template (under `templates/`).
        name: String,
    },
    /// A template is not UTF-8 text.
    #[error("template '{name}' is not UTF-8 text: {source}")]
    NotText {
        /// The template (under `templates/`).
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Why the template sources of a job could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The job's recorded archive id is not a blob id.
    #[error("job '{job}' of release '{release}': {source}")]
    BlobId {
        /// The job.
        job: String,
        /// Its release.
        release: String,
        /// Why.
        source: BlobstoreError,
    },
    /// The blobstore could not give the archive.
    #[error("job '{job}' of release '{release}': reading its archive: {source}")]
    Blobstore {
        /// The job.
        job: String,
        /// Its release.
        release: String,
        /// Why.
        source: BlobstoreError,
    },
    /// The archive is not what a job archive should be.
    #[error("job '{job}' of release '{release}': reading its archive: {source}")]
    Archive {
        /// The job.
        job: String,
        /// Its release.
        release: String,
        /// Why.
        source: TemplateArchiveError,
    },
    /// Reading the archive panicked.
    #[error("job '{job}' of release '{release}': {source}")]
    Join {
        /// The job.
        job: String,
        /// Its release.
        release: String,
        /// Why.
        source: tokio::task::JoinError,
    },
}

/// Why the releases and stemcells of a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// What the manifest names is not uploaded: every problem, one a line.
    #[error("{}", .problems.join("\n"))]
    Missing {
        /// The problems, each with its YAML path.
        problems: Vec<String>,
    },
    /// The state database failed.
    #[error(transparent)]
    State(#[from] Box<StateError>),
}

impl From<StateError> for CatalogError {
    fn from(error: StateError) -> CatalogError {
        CatalogError::State(Box::new(error))
    }
}

/// Template texts by file under `templates/`.
pub type TemplateTexts = BTreeMap<String, String>;

/// A job's template sources: file under `templates/` → text.
pub type Sources = Arc<TemplateTexts>;

/// Template sources by job fingerprint, shared by deploys.
#[derive(Clone, Debug, Default)]
pub struct TemplateCache {
    inner: Arc<Mutex<HashMap<String, Sources>>>,
}

/// The catalog and what it was made from.
#[derive(Clone, Debug, Default)]
pub struct LoadedCatalog {
    /// What planning needs.
    pub catalog: Catalog,
    /// The release versions (name, version, id) and their recorded jobs/packages.
    pub releases: Vec<ReleaseVersion>,
    /// The stemcell rows used, by alias.
    pub stemcells: BTreeMap<String, director_state::Stemcell>,
}

impl LoadedCatalog {
    /// Ids of the release versions used.
    pub fn release_ids(&self) -> Vec<ReleaseVersionId> {
        self.releases.iter().map(|r| r.id).collect()
    }

    /// Ids of the stemcells used.
    pub fn stemcell_ids(&self) -> Vec<StemcellId> {
        let mut ids: Vec<StemcellId> = self.stemcells.values().map(|s| s.id).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// The largest job archive read for templates, and the largest template.
const MAX_JOB_ARCHIVE: u64 = 256 << 20;
const MAX_TEMPLATE: u64 = 16 << 20;

fn read_templates(archive: &[u8]) -> Result<TemplateTexts, TemplateArchiveError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut sources = BTreeMap::new();
    let mut total = 0u64;
    for entry in tar.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./");
        let Some(name) = path.strip_prefix("templates/") else {
            continue;
        };
        let size = entry.header().size()?;
        total = total.saturating_add(size);
        if size > MAX_TEMPLATE || total > MAX_JOB_ARCHIVE {
            return Err(TemplateArchiveError::TooLarge {
                name: name.to_string(),
            });
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|source| TemplateArchiveError::NotText {
                name: name.to_string(),
                source,
            })?;
        sources.insert(name.to_string(), text);
    }
    Ok(sources)
}

impl TemplateCache {
    /// The template sources of a job, from its archive in the blobstore.
    pub async fn get(
        &self,
        blobstore: &Blobstore,
        release: &str,
        job: &director_state::Job,
    ) -> Result<Sources, TemplateError> {
        if let Some(found) = self
            .inner
            .lock()
            .ok()
            .and_then(|c| c.get(&job.fingerprint).cloned())
        {
            return Ok(found);
        }
        let (job_name, release) = (job.name.clone(), release.to_string());
        let id = BlobId::parse(&job.archive.blob_id).map_err(|source| TemplateError::BlobId {
            job: job_name.clone(),
            release: release.clone(),
            source,
        })?;
        let bytes = blobstore
            .get_bytes(&id)
            .await
            .map_err(|source| TemplateError::Blobstore {
                job: job_name.clone(),
                release: release.clone(),
                source,
            })?;
        let sources = tokio::task::spawn_blocking(move || read_templates(&bytes))
            .await
            .map_err(|source| TemplateError::Join {
                job: job_name.clone(),
                release: release.clone(),
                source,
            })?
            .map_err(|source| TemplateError::Archive {
                job: job_name.clone(),
                release: release.clone(),
                source,
            })?;
        let sources = Arc::new(sources);
        if let Ok(mut cache) = self.inner.lock() {
            cache.insert(job.fingerprint.clone(), sources.clone());
        }
        Ok(sources)
    }
}

fn facts(release: &ReleaseVersion) -> ReleaseFacts {
    ReleaseFacts {
        name: release.name.clone(),
        version: release.version.clone(),
        jobs: release
            .jobs
            .iter()
            .map(|job| {
                (
                    job.name.clone(),
                    ReleaseJob::from_spec(&release.name, &job.name, &job.fingerprint, &job.spec),
                )
            })
            .collect(),
        packages: release
            .packages
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    ReleasePackage {
                        name: p.name.clone(),
                        fingerprint: p.fingerprint.clone(),
                        dependencies: p.dependencies.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// Reads the releases and stemcells a manifest (and the runtime config) names. Every
/// problem comes back at once.
pub async fn load(
    state: &State,
    manifest: &DeploymentManifest,
    runtime: Option<&RuntimeConfig>,
) -> Result<LoadedCatalog, CatalogError> {
    let mut errors = Vec::new();
    let mut loaded = LoadedCatalog::default();
    let summaries = state.releases().list().await?;
    let mut refs: Vec<&ReleaseRef> = manifest.releases.iter().collect();
    if let Some(runtime) = runtime {
        refs.extend(runtime.releases.iter());
    }
    for reference in refs {
        let name = &reference.name.value;
        if loaded.catalog.releases.contains_key(name) {
            continue;
        }
        let uploaded: Vec<&str> = summaries
            .iter()
            .filter(|s| &s.name == name)
            .map(|s| s.version.as_str())
            .collect();
        let requested = reference
            .version
            .as_ref()
            .map_or("latest", |v| v.value.as_str());
        let version = if requested == "latest" {
            uploaded
                .iter()
                .filter_map(|v| Version::parse(v).map(|parsed| (parsed, *v)))
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, v)| v.to_string())
        } else {
            uploaded
                .iter()
                .find(|v| **v == requested)
                .map(|v| v.to_string())
        };
        let Some(version) = version else {
            let path = reference
                .version
                .as_ref()
                .map_or_else(|| reference.name.path.to_string(), |v| v.path.to_string());
            errors.push(if uploaded.is_empty() {
                format!("{path}: release '{name}' is not uploaded (upload it with `director upload-release`, or give releases[].url)")
            } else {
                format!(
                    "{path}: release '{name}' has no uploaded version '{requested}' (uploaded: {})",
                    uploaded.join(", ")
                )
            });
            continue;
        };
        match state.releases().find(name, &version).await? {
            Some(release) => {
                loaded
                    .catalog
                    .releases
                    .insert(name.clone(), facts(&release));
                loaded.releases.push(release);
            }
            None => errors.push(format!(
                "release '{name}/{version}' was deleted while the deploy started"
            )),
        }
    }

    let stemcells = state.stemcells().list().await?;
    for reference in &manifest.stemcells {
        let alias = &reference.alias.value;
        let candidates: Vec<&director_state::Stemcell> = stemcells
            .iter()
            .filter(|s| {
                reference
                    .os
                    .as_ref()
                    .is_none_or(|os| os.value == s.operating_system)
                    && reference.name.as_ref().is_none_or(|n| n.value == s.name)
            })
            .collect();
        let requested = reference
            .version
            .as_ref()
            .map_or("latest", |v| v.value.as_str());
        let version = director_core::stemcell::version::resolve(
            requested,
            candidates.iter().map(|s| s.version.as_str()),
        )
        .map(str::to_string);
        let described = reference
            .os
            .as_ref()
            .map(|os| format!("os '{}'", os.value))
            .or_else(|| {
                reference
                    .name
                    .as_ref()
                    .map(|n| format!("name '{}'", n.value))
            })
            .unwrap_or_default();
        match version.and_then(|v| candidates.iter().find(|s| s.version == v)) {
            Some(stemcell) => {
                loaded.catalog.stemcells.insert(
                    alias.clone(),
                    StemcellFacts {
                        name: stemcell.name.clone(),
                        os: stemcell.operating_system.clone(),
                        version: stemcell.version.clone(),
                        cid: stemcell.cid.clone(),
                    },
                );
                loaded.stemcells.insert(alias.clone(), (*stemcell).clone());
            }
            None => {
                let uploaded: Vec<String> = candidates.iter().map(|s| s.version.clone()).collect();
                errors.push(if uploaded.is_empty() {
                    format!(
                        "{}: no stemcell with {described} is uploaded (upload one with `director upload-stemcell`, or give stemcells[].url)",
                        reference.alias.path
                    )
                } else {
                    format!(
                        "{}: no stemcell with {described} has version '{requested}' (uploaded: {})",
                        reference.alias.path,
                        uploaded.join(", ")
                    )
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(CatalogError::Missing { problems: errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_read_from_a_job_archive() {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in [
            ("./job.MF", "name: web\n"),
            ("./templates/ctl.tera", "#!/bin/sh\n"),
            ("./monit", ""),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
        let bytes = builder.into_inner().unwrap().finish().unwrap();
        let sources = read_templates(&bytes).unwrap();
        assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["ctl.tera"]);
        assert_eq!(sources["ctl.tera"], "#!/bin/sh\n");
    }
}
