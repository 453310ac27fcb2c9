//! Job, package and license archives built from a [`ReleaseSource`], and the release
//! tarball made of them. Every archive is reproducible (see [`crate::archive::write_tgz`]):
//! the same sources give the same bytes, so the same digests.
//!
//! A job archive holds `job.MF` (the spec), `monit`, `properties_schema.json` and
//! `templates/…`, symlinks followed. A package archive holds `packaging` and the matched
//! files at their relative paths, symlinks kept; when the package has a `pre_packaging`
//! script, the files are copied to a staging directory, the script runs there with
//! `BUILD_DIR` and `RELEASE_DIR` (as bosh-cli runs it) and is left out of the archive.
//! Archive modes follow bosh-cli: 0755 when the owner may execute, else 0644.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::digest::sha256_file;
use super::fingerprint::ResourceFile;
use super::manifest::{JobRecord, LicenseRecord, PackageRecord, ReleaseManifest};
use super::source::{ReleaseSource, SourcePackage};
use super::{ReleaseError, write_atomic_with};
use crate::archive::{TgzEntry, TgzSource, write_tgz};

/// The archives of a release, in a staging directory removed on drop.
#[derive(Debug)]
pub struct BuiltRelease {
    staging: TempDir,
    /// Jobs, sorted by name.
    pub jobs: Vec<JobRecord>,
    /// Packages, sorted by name.
    pub packages: Vec<PackageRecord>,
    /// The license, when there is one.
    pub license: Option<LicenseRecord>,
}

impl BuiltRelease {
    fn job_archive(&self, name: &str) -> PathBuf {
        self.staging.path().join("jobs").join(format!("{name}.tgz"))
    }

    fn package_archive(&self, name: &str) -> PathBuf {
        self.staging
            .path()
            .join("packages")
            .join(format!("{name}.tgz"))
    }

    fn license_archive(&self) -> PathBuf {
        self.staging.path().join("license.tgz")
    }

    /// Writes the release tarball: `release.MF`, `jobs/<job>.tgz`, `packages/<pkg>.tgz` and
    /// `license.tgz`. `manifest` must list exactly the built jobs and packages.
    pub fn write_tarball(
        &self,
        manifest: &ReleaseManifest,
        path: &Path,
    ) -> Result<(), ReleaseError> {
        let mut entries = vec![TgzEntry {
            path: "release.MF".to_string(),
            source: TgzSource::Bytes {
                data: manifest.to_yaml().into_bytes(),
                executable: false,
            },
        }];
        for job in &manifest.jobs {
            entries.push(TgzEntry {
                path: format!("jobs/{}.tgz", job.name),
                source: TgzSource::File {
                    path: self.job_archive(&job.name),
                    executable: false,
                },
            });
        }
        for package in &manifest.packages {
            entries.push(TgzEntry {
                path: format!("packages/{}.tgz", package.name),
                source: TgzSource::File {
                    path: self.package_archive(&package.name),
                    executable: false,
                },
            });
        }
        if manifest.license.is_some() {
            entries.push(TgzEntry {
                path: "license.tgz".to_string(),
                source: TgzSource::File {
                    path: self.license_archive(),
                    executable: false,
                },
            });
        }
        write_atomic_with(path, |file| write_tgz(file, entries).map(|_| ()))
    }
}

fn owner_executable(path: &Path) -> std::io::Result<bool> {
    Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o100 != 0)
}

/// The entries for `files` as they are on disk; symlinks kept as links unless `follow`.
fn entries_of(files: &[ResourceFile], follow: bool) -> Result<Vec<TgzEntry>, ReleaseError> {
    files
        .iter()
        .map(|file| {
            let metadata =
                fs::symlink_metadata(&file.path).map_err(|e| ReleaseError::io(&file.path, e))?;
            let source = if metadata.file_type().is_symlink() && !follow {
                let target =
                    fs::read_link(&file.path).map_err(|e| ReleaseError::io(&file.path, e))?;
                TgzSource::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else {
                // A followed symlink has the link's own mode (0777), as in bosh-cli.
                TgzSource::File {
                    path: file.path.clone(),
                    executable: metadata.permissions().mode() & 0o100 != 0,
                }
            };
            Ok(TgzEntry {
                path: file.relative_path.clone(),
                source,
            })
        })
        .collect()
}

fn write_archive(path: &Path, entries: Vec<TgzEntry>) -> Result<String, ReleaseError> {
    write_atomic_with(path, |file| write_tgz(file, entries).map(|_| ()))?;
    Ok(sha256_file(path).map_err(|e| ReleaseError::io(path, e))?.0)
}

/// Runs `pre_packaging` on a staged copy of the package and returns the staged entries.
fn pre_packaged_entries(
    package: &SourcePackage,
    script: &Path,
    release_dir: &Path,
    staging: &Path,
) -> Result<Vec<TgzEntry>, ReleaseError> {
    let build_dir = staging.join("pre_packaging").join(&package.name);
    fs::create_dir_all(&build_dir).map_err(|e| ReleaseError::io(&build_dir, e))?;
    for file in &package.files {
        let to = build_dir.join(&file.relative_path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| ReleaseError::io(parent, e))?;
        }
        let metadata =
            fs::symlink_metadata(&file.path).map_err(|e| ReleaseError::io(&file.path, e))?;
        if metadata.file_type().is_symlink() {
            let target = fs::read_link(&file.path).map_err(|e| ReleaseError::io(&file.path, e))?;
            std::os::unix::fs::symlink(target, &to).map_err(|e| ReleaseError::io(&to, e))?;
        } else {
            fs::copy(&file.path, &to).map_err(|e| ReleaseError::io(&file.path, e))?;
            let mode =
                if owner_executable(&file.path).map_err(|e| ReleaseError::io(&file.path, e))? {
                    0o755
                } else {
                    0o644
                };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .map_err(|e| ReleaseError::io(&to, e))?;
        }
    }
    let release_dir =
        fs::canonicalize(release_dir).map_err(|e| ReleaseError::io(release_dir, e))?;
    let output = Command::new("bash")
        .arg("-x")
        .arg(fs::canonicalize(script).map_err(|e| ReleaseError::io(script, e))?)
        .current_dir(&build_dir)
        .env("BUILD_DIR", &build_dir)
        .env("RELEASE_DIR", &release_dir)
        .output()
        .map_err(|e| {
            ReleaseError::Other(format!(
                "cannot run bash for pre_packaging of package '{}': {e}",
                package.name
            ))
        })?;
    if !output.status.success() {
        return Err(ReleaseError::PrePackaging {
            package: package.name.clone(),
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    let staged_script = build_dir.join("pre_packaging");
    if fs::symlink_metadata(&staged_script).is_ok() {
        fs::remove_file(&staged_script).map_err(|e| ReleaseError::io(&staged_script, e))?;
    }
    let mut entries = Vec::new();
    collect(&build_dir, "", &mut entries)?;
    Ok(entries)
}

fn collect(root: &Path, relative: &str, out: &mut Vec<TgzEntry>) -> Result<(), ReleaseError> {
    let dir = root.join(relative);
    for entry in fs::read_dir(&dir).map_err(|e| ReleaseError::io(&dir, e))? {
        let entry = entry.map_err(|e| ReleaseError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if relative.is_empty() {
            name
        } else {
            format!("{relative}/{name}")
        };
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| ReleaseError::io(&path, e))?;
        if kind.is_dir() {
            out.push(TgzEntry {
                path: child.clone(),
                source: TgzSource::Dir,
            });
            collect(root, &child, out)?;
        } else {
            out.extend(entries_of(&[ResourceFile::new(&path, child)], false)?);
        }
    }
    Ok(())
}

/// Builds every archive of `source`.
pub fn build(source: &ReleaseSource) -> Result<BuiltRelease, ReleaseError> {
    let staging = tempfile::Builder::new()
        .prefix("director-release-")
        .tempdir()
        .map_err(|e| ReleaseError::Other(format!("cannot create a staging directory: {e}")))?;
    let mut built = BuiltRelease {
        staging,
        jobs: Vec::new(),
        packages: Vec::new(),
        license: None,
    };
    for job in &source.jobs {
        let sha1 = write_archive(&built.job_archive(&job.name), entries_of(&job.files, true)?)?;
        built.jobs.push(JobRecord {
            name: job.name.clone(),
            fingerprint: job.fingerprint.clone(),
            sha1,
            packages: job.spec.packages.iter().map(|p| p.value.clone()).collect(),
        });
    }
    for package in &source.packages {
        let entries = match &package.pre_packaging {
            Some(script) => {
                pre_packaged_entries(package, script, &source.dir, built.staging.path())?
            }
            None => entries_of(&package.files, false)?,
        };
        let sha1 = write_archive(&built.package_archive(&package.name), entries)?;
        built.packages.push(PackageRecord {
            name: package.name.clone(),
            fingerprint: package.fingerprint.clone(),
            sha1,
            dependencies: package.dependencies.clone(),
        });
    }
    if let Some(license) = &source.license {
        let sha1 = write_archive(&built.license_archive(), entries_of(&license.files, false)?)?;
        built.license = Some(LicenseRecord {
            fingerprint: license.fingerprint.clone(),
            sha1,
        });
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{EntryKind, Limits, verify};
    use std::time::{Duration, SystemTime};

    fn write(dir: &Path, name: &str, content: &str, mode: u32) {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn release() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "config/final.yml", "name: demo\n", 0o644);
        write(
            d,
            "jobs/web/spec",
            "name: web\ntemplates: {ctl.tera: bin/ctl}\n",
            0o644,
        );
        write(d, "jobs/web/templates/ctl.tera", "#!/bin/sh\n", 0o600);
        write(d, "packages/app/spec", "name: app\nfiles: [app/*]\n", 0o644);
        write(d, "packages/app/packaging", "make\n", 0o644);
        write(d, "src/app/main.c", "int main;\n", 0o640);
        write(d, "src/app/run", "#!/bin/sh\n", 0o700);
        dir
    }

    fn digests(dir: &Path) -> (Vec<String>, Vec<String>) {
        let built = build(&ReleaseSource::read(dir, None).unwrap()).unwrap();
        (
            built.jobs.iter().map(|j| j.sha1.clone()).collect(),
            built.packages.iter().map(|p| p.sha1.clone()).collect(),
        )
    }

    #[test]
    fn archives_do_not_depend_on_times_or_exact_modes() {
        let dir = release();
        let before = digests(dir.path());
        let later = SystemTime::now() + Duration::from_secs(3600);
        for file in [
            "src/app/main.c",
            "jobs/web/templates/ctl.tera",
            "packages/app/packaging",
        ] {
            let path = dir.path().join(file);
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        // 0640 and 0644 are both "not executable".
        fs::set_permissions(
            dir.path().join("src/app/main.c"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert_eq!(digests(dir.path()), before);
    }

    #[test]
    fn archives_hold_what_bosh_puts_in_them() {
        let dir = release();
        let source = ReleaseSource::read(dir.path(), None).unwrap();
        let built = build(&source).unwrap();
        let job = verify(&built.job_archive("web"), &Limits::default()).unwrap();
        let names: Vec<&str> = job.keys().map(String::as_str).collect();
        assert_eq!(names, ["job.MF", "templates", "templates/ctl.tera"]);
        let package = verify(&built.package_archive("app"), &Limits::default()).unwrap();
        assert_eq!(
            package.get("app/run"),
            Some(&EntryKind::File {
                size: 10,
                executable: true
            })
        );
        assert_eq!(
            package.get("app/main.c"),
            Some(&EntryKind::File {
                size: 10,
                executable: false
            })
        );
        assert!(package.contains_key("packaging"));
    }

    #[test]
    fn pre_packaging_runs_on_a_copy_and_stays_out_of_the_archive() {
        let dir = release();
        let d = dir.path();
        write(
            d,
            "packages/app/pre_packaging",
            "set -e\ntest -f \"${RELEASE_DIR}/config/final.yml\"\necho generated > \"${BUILD_DIR}/app/generated.txt\"\nrm app/run\n",
            0o644,
        );
        let source = ReleaseSource::read(d, None).unwrap();
        let built = build(&source).unwrap();
        let package = verify(&built.package_archive("app"), &Limits::default()).unwrap();
        let names: Vec<&str> = package.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["app", "app/generated.txt", "app/main.c", "packaging"]
        );
        assert!(d.join("src/app/run").exists(), "the sources are untouched");
        write(
            d,
            "packages/app/pre_packaging",
            "echo broken >&2\nexit 3\n",
            0o644,
        );
        let error = build(&ReleaseSource::read(d, None).unwrap()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("pre_packaging of package 'app' failed (exit status: 3):"),
            "{error}"
        );
    }
}
