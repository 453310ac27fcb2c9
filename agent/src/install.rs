//! Installing packages and rendered jobs in BOSH's layout (see `layout`), switching to them
//! and cleaning up what the spec no longer names.
//!
//! A package or job is downloaded (digest checked), unpacked into a hidden staging
//! directory and renamed into `data/packages/<name>/<version>` or
//! `data/jobs/<name>/<digest>` only when complete, so an existing directory there is always
//! whole and is reused (`prepare` then `apply` downloads once). Switching is a symlink swap
//! (a new link renamed over the old one), so `<root>/jobs/<name>` and
//! `<root>/packages/<name>` always point at a complete directory.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::blobs::{self, Http};
use crate::bpm::{self, BpmConfig};
use crate::error::{Error, Result};
use crate::layout::{Layout, check_name};
use crate::settings::write_atomically;
use agent_protocol::{ApplySpec, JobSpec, PackageSpec};

/// Downloads and installs into a layout.
#[derive(Clone, Debug)]
pub struct Installer {
    layout: Layout,
    http: Http,
}

impl Installer {
    /// An installer for `layout`, fetching with `http`.
    pub fn new(layout: Layout, http: Http) -> Installer {
        Installer { layout, http }
    }

    /// Makes sure `data/packages/<name>/<version>` holds the package; returns it.
    pub async fn install_package(&self, package: &PackageSpec) -> Result<PathBuf> {
        check_name("package", &package.name)?;
        check_name("version", &package.version)?;
        let dir = self.layout.package_dir(&package.name, &package.version);
        if dir.is_dir() {
            return Ok(dir);
        }
        let what = format!("package '{}'", package.name);
        let archive = self
            .http
            .download(&what, &package.blob, &self.layout.tmp())
            .await?;
        let parent = self.layout.package_store().join(&package.name);
        let result = unpack_into_place(what, archive.clone(), parent, dir.clone(), None).await;
        let _ = tokio::fs::remove_file(&archive).await;
        result.map(|_| dir)
    }

    /// Makes sure `data/jobs/<name>/<digest>` holds the job's rendered templates, with
    /// `bin/*` executable and a valid `config/bpm.yml`; returns it.
    pub async fn install_job(&self, job: &JobSpec) -> Result<PathBuf> {
        check_name("job", &job.name)?;
        check_name("rendered digest", &job.rendered.id)?;
        let dir = self.layout.job_dir(&job.name, &job.rendered.id);
        if dir.is_dir() {
            return Ok(dir);
        }
        let what = format!("job '{}'", job.name);
        let archive = self
            .http
            .download(&what, &job.rendered, &self.layout.tmp())
            .await?;
        let parent = self.layout.job_store().join(&job.name);
        let result = unpack_into_place(
            what,
            archive.clone(),
            parent,
            dir.clone(),
            Some(job.name.clone()),
        )
        .await;
        let _ = tokio::fs::remove_file(&archive).await;
        result.map(|_| dir)
    }

    /// Points `<root>/packages/<name>` at the installed version.
    pub fn link_package(&self, package: &PackageSpec) -> Result<()> {
        swap_symlink(
            &self.layout.package_dir(&package.name, &package.version),
            &self.layout.package_link(&package.name),
        )
    }

    /// Links the job's packages, creates its data, log and run directories and points
    /// `<root>/jobs/<name>` at the installed job.
    pub fn switch_job(
        &self,
        job: &JobSpec,
        packages: &BTreeMap<String, PackageSpec>,
    ) -> Result<()> {
        let dir = self.layout.job_dir(&job.name, &job.rendered.id);
        let links = dir.join("packages");
        std::fs::create_dir_all(&links).map_err(Error::io("create", &links))?;
        for name in &job.packages {
            let package = packages.get(name).ok_or_else(|| {
                Error::Spec(format!(
                    "job '{}' uses package '{name}', which the spec does not list",
                    job.name
                ))
            })?;
            swap_symlink(
                &self.layout.package_dir(&package.name, &package.version),
                &links.join(name),
            )?;
        }
        let wanted: BTreeSet<&str> = job.packages.iter().map(String::as_str).collect();
        for entry in read_dir_names(&links)? {
            if !wanted.contains(entry.as_str()) {
                remove_path(&links.join(&entry))?;
            }
        }
        for dir in [
            self.layout.job_tmp(&job.name),
            self.layout.job_logs(&job.name),
            self.layout.job_run(&job.name),
        ] {
            std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        }
        swap_symlink(&dir, &self.layout.job_link(&job.name))
    }

    /// Removes jobs and packages the spec does not name, and other versions of those it
    /// does. Job data (`data/<job>`) and logs stay.
    pub fn remove_unused(&self, spec: &ApplySpec) -> Result<()> {
        let jobs: BTreeMap<&str, &str> = spec
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.rendered.id.as_str()))
            .collect();
        let packages: BTreeMap<&str, &str> = spec
            .packages
            .values()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        prune(&self.layout.jobs(), &self.layout.job_store(), &jobs)?;
        prune(
            &self.layout.packages(),
            &self.layout.package_store(),
            &packages,
        )
    }
}

/// Checks a map of packages by name (an apply spec's `packages`, a compilation's
/// `dependencies`): every key is a plain name and the name of the package it holds, since
/// the key names the link `jobs/<job>/packages/<key>`; every name and version is plain.
pub fn check_packages(packages: &BTreeMap<String, PackageSpec>) -> Result<()> {
    for (key, package) in packages {
        check_name("package", key)?;
        if *key != package.name {
            return Err(Error::Spec(format!(
                "package key {key:?} names package {:?}; a package must be listed under its own name",
                package.name
            )));
        }
        check_name("package", &package.name)?;
        check_name("version", &package.version)?;
    }
    Ok(())
}

fn prune(links: &Path, store: &Path, keep: &BTreeMap<&str, &str>) -> Result<()> {
    for name in read_dir_names(links)? {
        if !keep.contains_key(name.as_str()) {
            remove_path(&links.join(&name))?;
        }
    }
    for name in read_dir_names(store)? {
        let dir = store.join(&name);
        match keep.get(name.as_str()) {
            None => remove_path(&dir)?,
            Some(current) => {
                for version in read_dir_names(&dir)? {
                    if version != *current {
                        remove_path(&dir.join(&version))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Unpacks `archive` into a staging directory in `parent`, checks it, and renames it to
/// `dest`. For a job (`job` is its name): an archive holding only `<job>/…` is unwrapped,
/// its files given their modes (`set_job_modes`) and `config/bpm.yml` validated.
async fn unpack_into_place(
    what: String,
    archive: PathBuf,
    parent: PathBuf,
    dest: PathBuf,
    job: Option<String>,
) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
        let staging = parent.join(format!(".staging-{}", uuid::Uuid::new_v4()));
        let result = (|| {
            blobs::unpack_tgz(&what, &archive, &staging)?;
            let mut content = staging.clone();
            if let Some(job) = &job {
                let names = read_dir_names(&staging)?;
                if names.len() == 1 && names[0] == *job && staging.join(job).is_dir() {
                    content = staging.join(job);
                }
                set_job_modes(&content)?;
                check_bpm(job, &content)?;
            }
            match std::fs::rename(&content, &dest) {
                Ok(()) => Ok(()),
                // Installed meanwhile by someone else: theirs is as good as ours.
                Err(_) if dest.is_dir() => Ok(()),
                Err(e) => Err(Error::io("rename into place", &dest)(e)),
            }
        })();
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    })
    .await
    .map_err(|e| Error::Archive {
        what: "unpacking".to_string(),
        reason: e.to_string(),
    })?
}

/// The mode of a job's scripts, the files below `bin/`.
pub const JOB_SCRIPT_MODE: u32 = 0o755;
/// The mode of a job's other rendered files (configuration may hold credentials).
pub const JOB_FILE_MODE: u32 = 0o640;

/// Gives the files of an unpacked job their modes, whatever the archive said: files below
/// `bin/` [`JOB_SCRIPT_MODE`], every other regular file [`JOB_FILE_MODE`].
fn set_job_modes(job_dir: &Path) -> Result<()> {
    fn visit(dir: &Path, in_bin: bool) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(Error::io("read", dir))?;
        for entry in entries {
            let entry = entry.map_err(Error::io("read", dir))?;
            let path = entry.path();
            let metadata = std::fs::symlink_metadata(&path).map_err(Error::io("stat", &path))?;
            if metadata.is_dir() {
                visit(&path, in_bin)?;
            } else if metadata.is_file() {
                let mode = if in_bin {
                    JOB_SCRIPT_MODE
                } else {
                    JOB_FILE_MODE
                };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(Error::io("chmod", &path))?;
            }
        }
        Ok(())
    }
    let entries = std::fs::read_dir(job_dir).map_err(Error::io("read", job_dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("read", job_dir))?;
        let path = entry.path();
        let metadata = std::fs::symlink_metadata(&path).map_err(Error::io("stat", &path))?;
        if metadata.is_dir() {
            visit(&path, entry.file_name() == "bin")?;
        } else if metadata.is_file() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(JOB_FILE_MODE))
                .map_err(Error::io("chmod", &path))?;
        }
    }
    Ok(())
}

fn check_bpm(job: &str, job_dir: &Path) -> Result<()> {
    read_bpm_in(job, job_dir).map(|_| ())
}

/// The installed job's `config/bpm.yml`, or `None` when it has none (no processes).
pub fn read_bpm(layout: &Layout, job: &str) -> Result<Option<BpmConfig>> {
    read_bpm_in(job, &layout.job_link(job))
}

fn read_bpm_in(job: &str, job_dir: &Path) -> Result<Option<BpmConfig>> {
    let path = job_dir.join("config").join("bpm.yml");
    match std::fs::read_to_string(&path) {
        Ok(text) => bpm::parse(job, &text)
            .map(Some)
            .map_err(|reason| Error::Bpm {
                job: job.to_string(),
                reason,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path)(e)),
    }
}

/// Points `link` at `target` atomically (a new link renamed over the old one).
pub fn swap_symlink(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    let parent = link.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    let tmp = parent.join(format!(".link-{}", uuid::Uuid::new_v4()));
    std::os::unix::fs::symlink(target, &tmp).map_err(Error::io("create link", &tmp))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("replace", link)(e)
    })
}

/// Names in a directory (none when it does not exist), hidden ones (our temporaries)
/// left out, sorted.
pub fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("read", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes a file, symlink or directory tree.
pub fn remove_path(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.map_err(Error::io("remove", path))
}

/// The applied spec, when there is one.
pub fn load_spec(layout: &Layout) -> Result<Option<ApplySpec>> {
    let path = layout.spec_file();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Settings {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", &path)(e)),
    }
}

/// Records the applied spec.
pub fn save_spec(layout: &Layout, spec: &ApplySpec) -> Result<()> {
    let text = serde_json::to_vec_pretty(spec).expect("specs serialize");
    write_atomically(&layout.spec_file(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_scripts_are_executable_and_other_files_private() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path();
        for (path, mode) in [
            ("bin/ctl", 0o644),
            ("bin/helpers/lib.sh", 0o755),
            ("config/app.yml", 0o666),
            ("monit", 0o755),
        ] {
            let path = job.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        set_job_modes(job).unwrap();
        let mode = |p: &str| std::fs::metadata(job.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            [
                mode("bin/ctl"),
                mode("bin/helpers/lib.sh"),
                mode("config/app.yml"),
                mode("monit")
            ],
            [0o755, 0o755, 0o640, 0o640]
        );
    }

    #[test]
    fn swapping_links_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("jobs/web");
        swap_symlink(Path::new("/a"), &link).unwrap();
        swap_symlink(Path::new("/b"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/b"));
        assert_eq!(read_dir_names(&dir.path().join("jobs")).unwrap(), ["web"]);
    }

    fn package(name: &str) -> PackageSpec {
        PackageSpec {
            name: name.to_string(),
            version: "1".to_string(),
            blob: agent_protocol::BlobRef {
                id: String::new(),
                url: String::new(),
            },
        }
    }

    #[test]
    fn package_keys_are_the_packages_own_plain_names() {
        let good = BTreeMap::from([("redis".to_string(), package("redis"))]);
        assert!(check_packages(&good).is_ok());
        let check = |key: &str, name: &str| {
            check_packages(&BTreeMap::from([(key.to_string(), package(name))]))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            check("../x", "x"),
            "package name \"../x\" is not a plain file name"
        );
        assert_eq!(
            check("redis", "postgres"),
            "apply spec: package key \"redis\" names package \"postgres\"; \
             a package must be listed under its own name"
        );
        assert_eq!(
            check("..", ".."),
            "package name \"..\" is not a plain file name"
        );
    }

    #[test]
    fn pruning_keeps_current_versions_only() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        for (name, version) in [("a", "1"), ("a", "2"), ("b", "1")] {
            std::fs::create_dir_all(layout.package_dir(name, version)).unwrap();
        }
        swap_symlink(&layout.package_dir("a", "2"), &layout.package_link("a")).unwrap();
        swap_symlink(&layout.package_dir("b", "1"), &layout.package_link("b")).unwrap();
        let keep = BTreeMap::from([("a", "2")]);
        prune(&layout.packages(), &layout.package_store(), &keep).unwrap();
        assert_eq!(read_dir_names(&layout.packages()).unwrap(), ["a"]);
        assert_eq!(read_dir_names(&layout.package_store()).unwrap(), ["a"]);
        assert_eq!(
            read_dir_names(&layout.package_store().join("a")).unwrap(),
            ["2"]
        );
    }
}
