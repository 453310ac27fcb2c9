//! A release directory read into jobs, packages and a license, each with the files that go
//! into its archive and its fingerprint.
//!
//! Jobs: `spec` (archived as `job.MF`), `monit` and `properties_schema.json` when present,
//! and each `templates/<source>` the spec names; symlinks are followed. Packages: `packaging`
//! and `pre_packaging` (modes left out of the fingerprint), and the files matched by the
//! spec's `files` globs under `src/` and then `blobs/` (the first match of a relative path
//! wins, so `src/` wins over `blobs/`), minus `excluded_files`; symlinks are kept as links;
//! the dependency names are the fingerprint's last chunk. License: `LICENSE*` and `NOTICE*`.
//! Every problem of every spec is reported at once.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use globset::GlobBuilder;

use super::blobs;
use super::fingerprint::{ResourceFile, fingerprint};
use super::graph::{self, GraphProblem, Reference};
use super::manifest::Place;
use super::spec::{self, FinalConfig, JobSpec};
use super::{ReleaseError, display_path, valid_name};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::yaml::{self, Span, YamlPath};

/// A release directory, read and checked.
#[derive(Clone, Debug)]
pub struct ReleaseSource {
    /// The directory.
    pub dir: PathBuf,
    /// The release name (`--name`, else `config/final.yml`).
    pub name: String,
    /// `config/final.yml`.
    pub config: FinalConfig,
    /// Jobs, sorted by name.
    pub jobs: Vec<SourceJob>,
    /// Packages, sorted by name.
    pub packages: Vec<SourcePackage>,
    /// The license files, when there are any.
    pub license: Option<SourceLicense>,
    /// Warnings about the specs (unknown keys).
    pub warnings: Diagnostics,
}

/// A job of a release directory.
#[derive(Clone, Debug)]
pub struct SourceJob {
    /// Job name.
    pub name: String,
    /// Its spec.
    pub spec: JobSpec,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The files of its archive.
    pub files: Vec<ResourceFile>,
}

/// A package of a release directory.
#[derive(Clone, Debug)]
pub struct SourcePackage {
    /// Package name.
    pub name: String,
    /// Names of the packages it depends on, in spec order.
    pub dependencies: Vec<String>,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The files of its archive (`pre_packaging` included; the build runs and drops it).
    pub files: Vec<ResourceFile>,
    /// Its `pre_packaging` script, run when the archive is built.
    pub pre_packaging: Option<PathBuf>,
}

/// The license of a release directory.
#[derive(Clone, Debug)]
pub struct SourceLicense {
    /// Its fingerprint.
    pub fingerprint: String,
    /// `LICENSE*` and `NOTICE*`.
    pub files: Vec<ResourceFile>,
}

/// A file found under `src/` or `blobs/`: its path relative to that folder and on disk.
#[derive(Clone, Debug)]
struct Found {
    relative: String,
    path: PathBuf,
}

/// Every file and symlink below `root` (symlinks not followed), by relative path.
fn files_below(root: &Path) -> io::Result<Vec<Found>> {
    fn walk(root: &Path, relative: &str, out: &mut Vec<Found>) -> io::Result<()> {
        let dir = if relative.is_empty() {
            root.to_path_buf()
        } else {
            root.join(relative)
        };
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            if entry.file_type()?.is_dir() {
                walk(root, &child, out)?;
            } else {
                out.push(Found {
                    relative: child,
                    path: entry.path(),
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => walk(root, "", &mut out)?,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(out)
}

/// The sorted names of the subdirectories of `dir` (hidden ones skipped).
fn subdirectories(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

struct Reader<'a> {
    dir: &'a Path,
    diagnostics: Diagnostics,
    src: Vec<Found>,
    blobs: Vec<Found>,
}

impl Reader<'_> {
    fn shown(&self, relative: &str) -> String {
        display_path(&self.dir.join(relative))
    }

    fn cannot(&mut self, path: &Path, error: impl std::fmt::Display) {
        self.diagnostics.push(Diagnostic::general(format!(
            "cannot read {}: {error}",
            display_path(path)
        )));
    }

    fn read_yaml(&mut self, relative: &str) -> Option<crate::yaml::Node> {
        let path = self.dir.join(relative);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.cannot(&path, e);
                return None;
            }
        };
        match yaml::parse(&text, &self.shown(relative)) {
            Ok(node) => Some(node),
            Err(diagnostic) => {
                self.diagnostics.push(diagnostic);
                None
            }
        }
    }

    /// The job, when it is sound, and the packages its spec names (`None` when the spec
    /// cannot be read at all).
    fn job(&mut self, name: &str) -> Option<(Option<SourceJob>, Vec<Reference<Place>>)> {
        let folder = format!("jobs/{name}");
        let node = self.read_yaml(&format!("{folder}/spec"))?;
        let spec = match spec::decode_job_spec(&node) {
            Ok((spec, warnings)) => {
                self.diagnostics.extend(warnings);
                spec
            }
            Err(problems) => {
                self.diagnostics.extend(problems);
                return None;
            }
        };
        let references = spec
            .packages
            .iter()
            .map(|p| Reference {
                package: p.value.clone(),
                place: (p.span.clone(), p.path.clone()),
            })
            .collect();
        let job_dir = self.dir.join(&folder);
        let mut ok = true;
        if spec.name.value != name {
            self.diagnostics.error(
                &spec.name.span,
                &spec.name.path,
                format!(
                    "job name '{}' does not match its directory {}",
                    spec.name.value,
                    self.shown(&folder)
                ),
            );
            ok = false;
        }
        let mut files = vec![ResourceFile::new(job_dir.join("spec"), "job.MF")];
        for optional in ["monit", "properties_schema.json"] {
            let path = job_dir.join(optional);
            if path.exists() {
                files.push(ResourceFile::new(&path, optional));
            }
        }
        let schema = job_dir.join("properties_schema.json");
        if schema.exists() {
            match fs::read(&schema).map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes))
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.diagnostics.push(Diagnostic::general(format!(
                        "{}: not JSON: {e}",
                        display_path(&schema)
                    )));
                    ok = false;
                }
                Err(e) => {
                    self.cannot(&schema, e);
                    ok = false;
                }
            }
        }
        for (source, _) in &spec.templates {
            let path = job_dir.join("templates").join(&source.value);
            if !path.is_file() {
                self.diagnostics.error(
                    &source.span,
                    &source.path,
                    format!(
                        "template '{}' is missing ({} is not a file)",
                        source.value,
                        display_path(&path)
                    ),
                );
                ok = false;
                continue;
            }
            files.push(ResourceFile::new(
                &path,
                format!("templates/{}", source.value),
            ));
        }
        if !ok {
            return Some((None, references));
        }
        match fingerprint(&files, &[], true) {
            Ok(fingerprint) => Some((
                Some(SourceJob {
                    name: name.to_string(),
                    spec,
                    fingerprint,
                    files,
                }),
                references,
            )),
            Err(e) => {
                self.diagnostics.push(Diagnostic::general(e.to_string()));
                Some((None, references))
            }
        }
    }

    /// The package, when it is sound, and its dependencies (`None` when the spec cannot be
    /// read at all).
    fn package(&mut self, name: &str) -> Option<(Option<SourcePackage>, Vec<Reference<Place>>)> {
        let folder = format!("packages/{name}");
        let package_dir = self.dir.join(&folder);
        if package_dir.join("spec.lock").exists() {
            self.diagnostics.push(Diagnostic::general(format!(
                "{}: vendored packages (spec.lock) are not supported yet",
                self.shown(&folder)
            )));
            return None;
        }
        let node = self.read_yaml(&format!("{folder}/spec"))?;
        let spec = match spec::decode_package_spec(&node) {
            Ok((spec, warnings)) => {
                self.diagnostics.extend(warnings);
                spec
            }
            Err(problems) => {
                self.diagnostics.extend(problems);
                return None;
            }
        };
        let references: Vec<Reference<Place>> = spec
            .dependencies
            .iter()
            .map(|d| Reference {
                package: d.value.clone(),
                place: (d.span.clone(), d.path.clone()),
            })
            .collect();
        let mut ok = true;
        if spec.name.value != name {
            self.diagnostics.error(
                &spec.name.span,
                &spec.name.path,
                format!(
                    "package name '{}' does not match its directory {}",
                    spec.name.value,
                    self.shown(&folder)
                ),
            );
            ok = false;
        }
        let mut files = Vec::new();
        let packaging = package_dir.join("packaging");
        if fs::symlink_metadata(&packaging).is_err() {
            self.diagnostics.push(Diagnostic::general(format!(
                "package '{name}' has no packaging script ({} is missing)",
                display_path(&packaging)
            )));
            ok = false;
        } else {
            files.push(ResourceFile {
                exclude_mode: true,
                ..ResourceFile::new(&packaging, "packaging")
            });
        }
        let pre_packaging = package_dir.join("pre_packaging");
        let pre_packaging = fs::symlink_metadata(&pre_packaging).is_ok().then(|| {
            files.push(ResourceFile {
                exclude_mode: true,
                ..ResourceFile::new(&pre_packaging, "pre_packaging")
            });
            pre_packaging
        });
        // Relative path → (file, index of the pattern that matched it first).
        let mut by_relative: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
        for (index, pattern) in spec.files.iter().enumerate() {
            let Some(matcher) = self.glob(&pattern.value, &pattern.span, &pattern.path) else {
                ok = false;
                continue;
            };
            let mut matched = false;
            for found in self.src.iter().chain(&self.blobs) {
                if matcher.is_match(&found.relative) {
                    matched = true;
                    by_relative
                        .entry(found.relative.clone())
                        .or_insert_with(|| (found.path.clone(), index));
                }
            }
            if !matched {
                self.diagnostics.error(
                    &pattern.span,
                    &pattern.path,
                    format!("missing files for pattern '{}'", pattern.value),
                );
                ok = false;
            }
        }
        for pattern in &spec.excluded_files {
            let Some(matcher) = self.glob(&pattern.value, &pattern.span, &pattern.path) else {
                ok = false;
                continue;
            };
            by_relative.retain(|relative, _| !matcher.is_match(relative));
        }
        for special in ["packaging", "pre_packaging"] {
            if let Some((path, index)) = by_relative.get(special) {
                let pattern = &spec.files[*index];
                self.diagnostics.error(
                    &pattern.span,
                    &pattern.path,
                    format!(
                        "pattern '{}' matches {}, but a package's {special} is its own file \
                         ({}), never one of its files",
                        pattern.value,
                        display_path(path),
                        self.shown(&format!("{folder}/{special}"))
                    ),
                );
                ok = false;
            }
        }
        if !ok {
            return Some((None, references));
        }
        files.extend(
            by_relative
                .into_iter()
                .map(|(relative, (path, _))| ResourceFile::new(path, relative)),
        );
        let dependencies: Vec<String> = spec.dependencies.iter().map(|d| d.value.clone()).collect();
        match fingerprint(&files, &dependencies, false) {
            Ok(fingerprint) => Some((
                Some(SourcePackage {
                    name: name.to_string(),
                    dependencies,
                    fingerprint,
                    files,
                    pre_packaging,
                }),
                references,
            )),
            Err(e) => {
                self.diagnostics.push(Diagnostic::general(e.to_string()));
                Some((None, references))
            }
        }
    }

    fn glob(
        &mut self,
        pattern: &str,
        span: &Span,
        path: &YamlPath,
    ) -> Option<globset::GlobMatcher> {
        match GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
        {
            Ok(glob) => Some(glob.compile_matcher()),
            Err(e) => {
                self.diagnostics.error(
                    span,
                    path,
                    format!("invalid pattern '{pattern}': {}", e.kind()),
                );
                None
            }
        }
    }

    fn license(&mut self) -> Option<SourceLicense> {
        let mut names: Vec<String> = match fs::read_dir(self.dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("LICENSE") || n.starts_with("NOTICE"))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        if names.is_empty() {
            return None;
        }
        let files: Vec<ResourceFile> = names
            .iter()
            .map(|name| ResourceFile {
                use_basename: true,
                exclude_mode: true,
                ..ResourceFile::new(self.dir.join(name), name.clone())
            })
            .collect();
        match fingerprint(&files, &[], false) {
            Ok(fingerprint) => Some(SourceLicense { fingerprint, files }),
            Err(e) => {
                self.diagnostics.push(Diagnostic::general(e.to_string()));
                None
            }
        }
    }
}

impl ReleaseSource {
    /// Reads and checks the release directory `dir`; `name` overrides `config/final.yml`.
    pub fn read(dir: &Path, name: Option<&str>) -> Result<ReleaseSource, ReleaseError> {
        if !dir.is_dir() {
            return Err(ReleaseError::Other(format!(
                "{} is not a directory",
                display_path(dir)
            )));
        }
        let final_yml = dir.join("config/final.yml");
        let mut reader = Reader {
            dir,
            diagnostics: Diagnostics::new(),
            src: Vec::new(),
            blobs: Vec::new(),
        };
        let config = if final_yml.exists() {
            let node = reader.read_yaml("config/final.yml");
            match node.map(|n| spec::decode_final_config(&n)) {
                Some(Ok((config, warnings))) => {
                    reader.diagnostics.extend(warnings);
                    config
                }
                Some(Err(problems)) => return Err(ReleaseError::Invalid(problems)),
                None => return Err(ReleaseError::Invalid(reader.diagnostics)),
            }
        } else if name.is_some() {
            FinalConfig::default()
        } else {
            return Err(ReleaseError::Other(format!(
                "{} is not a release directory ({} is missing; or give --name)",
                display_path(dir),
                display_path(&final_yml)
            )));
        };
        let name = match (name, &config.name) {
            (Some(name), _) => name.to_string(),
            (None, Some(name)) => name.value.clone(),
            (None, None) => {
                return Err(ReleaseError::Other(format!(
                    "{}: missing 'name' (the release's name); or give --name",
                    display_path(&final_yml)
                )));
            }
        };
        if !valid_name(&name) {
            return Err(ReleaseError::Other(format!(
                "release name '{name}' may only contain letters, digits, '-', '_' and '.'"
            )));
        }
        reader.diagnostics.extend(blobs::check_local(dir, &config));
        for (folder, list) in [("src", &mut reader.src), ("blobs", &mut reader.blobs)] {
            match files_below(&dir.join(folder)) {
                Ok(found) => *list = found,
                Err(e) => {
                    return Err(ReleaseError::io(&dir.join(folder), e));
                }
            }
        }
        let job_names = subdirectories(&dir.join("jobs"))
            .map_err(|e| ReleaseError::io(&dir.join("jobs"), e))?;
        let package_names = subdirectories(&dir.join("packages"))
            .map_err(|e| ReleaseError::io(&dir.join("packages"), e))?;
        for name in job_names.iter().chain(&package_names) {
            if !valid_name(name) {
                reader.diagnostics.push(Diagnostic::general(format!(
                    "'{name}' may only contain letters, digits, '-', '_' and '.' (it names a \
                     job or package directory)"
                )));
            }
        }
        let mut jobs = Vec::new();
        let mut job_refs = BTreeMap::new();
        for job_name in &job_names {
            if let Some((job, references)) = reader.job(job_name) {
                job_refs.insert(job_name.clone(), references);
                jobs.extend(job);
            }
        }
        let mut packages = Vec::new();
        let mut dependency_refs = BTreeMap::new();
        for package_name in &package_names {
            if let Some((package, references)) = reader.package(package_name) {
                dependency_refs.insert(package_name.clone(), references);
                packages.extend(package);
            }
        }
        let license = reader.license();
        // The graph is only meaningful when every package spec could be read.
        if dependency_refs.len() == package_names.len() {
            if let Err(problems) = graph::check(&dependency_refs, &job_refs) {
                for problem in problems {
                    let message = problem.message();
                    match problem {
                        GraphProblem::UnknownDependency { place, .. }
                        | GraphProblem::UnknownJobPackage { place, .. } => {
                            reader.diagnostics.error(&place.0, &place.1, message);
                        }
                        GraphProblem::Cycle(cycle) => {
                            // At the first step of the cycle, in the first package's spec.
                            let step = dependency_refs[&cycle[0]]
                                .iter()
                                .find(|r| r.package == cycle[1])
                                .expect("a cycle follows dependencies");
                            reader
                                .diagnostics
                                .error(&step.place.0, &step.place.1, message);
                        }
                    }
                }
            }
        }
        let diagnostics = reader.diagnostics.sorted();
        if diagnostics.has_errors() {
            return Err(ReleaseError::Invalid(diagnostics));
        }
        Ok(ReleaseSource {
            dir: dir.to_path_buf(),
            name,
            config,
            jobs,
            packages,
            license,
            warnings: diagnostics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn write(dir: &Path, name: &str, content: &str) {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn release() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "config/final.yml", "name: demo\n");
        write(
            d,
            "jobs/web/spec",
            "name: web\ntemplates: {ctl.tera: bin/ctl}\npackages: [app]\n",
        );
        write(d, "jobs/web/templates/ctl.tera", "#!/bin/sh\n");
        write(
            d,
            "packages/app/spec",
            "name: app\ndependencies: [lib]\nfiles: [app/**/*.c, app/*.txt]\nexcluded_files: [app/skip.c]\n",
        );
        write(d, "packages/app/packaging", "make\n");
        write(d, "packages/lib/spec", "name: lib\nfiles: [lib/*]\n");
        write(d, "packages/lib/packaging", "make\n");
        write(d, "src/app/main.c", "int main;\n");
        write(d, "src/app/deep/er/x.c", "x\n");
        write(d, "src/app/skip.c", "skip\n");
        write(d, "src/app/notes.md", "not matched\n");
        write(d, "blobs/app/readme.txt", "from blobs\n");
        write(d, "blobs/lib/lib.tar", "blob\n");
        write(d, "src/lib/lib.tar", "src wins\n");
        dir
    }

    fn relative_paths(files: &[ResourceFile]) -> Vec<&str> {
        let mut paths: Vec<&str> = files.iter().map(|f| f.relative_path.as_str()).collect();
        paths.sort();
        paths
    }

    #[test]
    fn globs_match_under_src_then_blobs() {
        let dir = release();
        let source = ReleaseSource::read(dir.path(), None).unwrap();
        assert_eq!(source.name, "demo");
        let app = &source.packages[0];
        assert_eq!(
            relative_paths(&app.files),
            [
                "app/deep/er/x.c",
                "app/main.c",
                "app/readme.txt",
                "packaging"
            ]
        );
        let lib = &source.packages[1];
        let tar = lib
            .files
            .iter()
            .find(|f| f.relative_path == "lib/lib.tar")
            .unwrap();
        assert!(tar.path.starts_with(dir.path().join("src")), "src wins");
        assert_eq!(
            relative_paths(&source.jobs[0].files),
            ["job.MF", "templates/ctl.tera"]
        );
    }

    #[test]
    fn a_dependency_is_a_name_not_a_fingerprint() {
        let dir = release();
        let before = ReleaseSource::read(dir.path(), None).unwrap();
        write(dir.path(), "src/lib/lib.tar", "changed\n");
        let after = ReleaseSource::read(dir.path(), None).unwrap();
        assert_ne!(
            before.packages[1].fingerprint,
            after.packages[1].fingerprint
        );
        assert_eq!(
            before.packages[0].fingerprint,
            after.packages[0].fingerprint
        );
        // A mode change counts for files, not for packaging.
        let main = dir.path().join("src/app/main.c");
        fs::set_permissions(&main, fs::Permissions::from_mode(0o755)).unwrap();
        let executable = ReleaseSource::read(dir.path(), None).unwrap();
        assert_ne!(
            after.packages[0].fingerprint,
            executable.packages[0].fingerprint
        );
        let packaging = dir.path().join("packages/app/packaging");
        fs::set_permissions(&packaging, fs::Permissions::from_mode(0o755)).unwrap();
        let packaging_mode = ReleaseSource::read(dir.path(), None).unwrap();
        assert_eq!(
            executable.packages[0].fingerprint,
            packaging_mode.packages[0].fingerprint
        );
        // A symlink is fingerprinted by its text.
        symlink("main.c", dir.path().join("src/app/link.c")).unwrap();
        let linked = ReleaseSource::read(dir.path(), None).unwrap();
        assert!(
            linked.packages[0]
                .files
                .iter()
                .any(|f| f.relative_path == "app/link.c")
        );
    }

    #[test]
    fn every_problem_at_once() {
        let dir = release();
        let d = dir.path();
        write(
            d,
            "packages/app/spec",
            "name: app\ndependencies: [lib, zlib]\nfiles: [app/*.rs, packaging]\n",
        );
        write(d, "src/packaging", "oops\n");
        write(
            d,
            "packages/lib/spec",
            "name: lib\ndependencies: [app]\nfiles: [lib/*]\n",
        );
        write(
            d,
            "jobs/web/spec",
            "name: www\ntemplates: {ctl.tera: bin/ctl, gone.tera: bin/gone}\npackages: [app, nginx]\n",
        );
        let error = ReleaseSource::read(d, None).unwrap_err();
        let text = error.to_string().replace(&display_path(d), "<dir>");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn graph_errors_name_the_cycle_and_the_unknown_packages() {
        let dir = release();
        let d = dir.path();
        write(
            d,
            "packages/lib/spec",
            "name: lib\ndependencies: [app]\nfiles: [lib/*]\n",
        );
        write(
            d,
            "jobs/web/spec",
            "name: web\ntemplates: {ctl.tera: bin/ctl}\npackages: [nginx]\n",
        );
        let error = ReleaseSource::read(d, None).unwrap_err();
        let text = error.to_string().replace(&display_path(d), "<dir>");
        insta::assert_snapshot!(text);
    }
}
