//! `director inspect-release TARBALL|DIR`: the jobs and packages of a release, a table on
//! stdout (or JSON with `--json`). A tarball is read with every upload check; a directory is
//! built in a staging directory, nothing recorded.

use std::path::Path;

use director_core::archive::Limits;
use director_core::diagnostics::Diagnostic;
use director_core::release::{
    self, JobRecord, LicenseRecord, PackageRecord, ReleaseError, ReleaseManifest,
};
use serde_json::{Value, json};

use crate::cli::InspectReleaseArgs;
use crate::ui::Ui;

/// What the table and the JSON show.
pub struct View<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
    pub commit_hash: Option<&'a str>,
    pub uncommitted_changes: Option<bool>,
    pub jobs: &'a [JobRecord],
    pub packages: &'a [PackageRecord],
    pub license: Option<&'a LicenseRecord>,
}

impl<'a> View<'a> {
    /// The view of a release manifest.
    pub fn of(manifest: &'a ReleaseManifest) -> View<'a> {
        View {
            name: &manifest.name,
            version: Some(&manifest.version),
            commit_hash: Some(&manifest.commit_hash),
            uncommitted_changes: Some(manifest.uncommitted_changes),
            jobs: &manifest.jobs,
            packages: &manifest.packages,
            license: manifest.license.as_ref(),
        }
    }

    /// The JSON document.
    pub fn json(&self) -> Value {
        json!({
            "name": self.name,
            "version": self.version,
            "commit_hash": self.commit_hash,
            "uncommitted_changes": self.uncommitted_changes,
            "jobs": self.jobs.iter().map(|j| json!({
                "name": j.name,
                "fingerprint": j.fingerprint,
                "digest": j.sha1,
                "packages": j.packages,
            })).collect::<Vec<_>>(),
            "packages": self.packages.iter().map(|p| json!({
                "name": p.name,
                "fingerprint": p.fingerprint,
                "digest": p.sha1,
                "dependencies": p.dependencies,
            })).collect::<Vec<_>>(),
            "license": self.license.map(|l| json!({
                "fingerprint": l.fingerprint,
                "digest": l.sha1,
            })),
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut header = vec![vec!["Name".to_string(), self.name.to_string()]];
        if let Some(version) = self.version {
            header.push(vec!["Version".to_string(), version.to_string()]);
        }
        if let Some(commit) = self.commit_hash {
            let dirty = if self.uncommitted_changes == Some(true) {
                " (uncommitted changes)"
            } else {
                ""
            };
            header.push(vec!["Commit".to_string(), format!("{commit}{dirty}")]);
        }
        let list = |names: &[String]| {
            if names.is_empty() {
                "-".to_string()
            } else {
                names.join(", ")
            }
        };
        let mut jobs = vec![vec![
            "Job".to_string(),
            "Fingerprint".to_string(),
            "Digest".to_string(),
            "Packages".to_string(),
        ]];
        jobs.extend(self.jobs.iter().map(|j| {
            vec![
                j.name.clone(),
                j.fingerprint.clone(),
                j.sha1.clone(),
                list(&j.packages),
            ]
        }));
        let mut packages = vec![vec![
            "Package".to_string(),
            "Fingerprint".to_string(),
            "Digest".to_string(),
            "Dependencies".to_string(),
        ]];
        packages.extend(self.packages.iter().map(|p| {
            vec![
                p.name.clone(),
                p.fingerprint.clone(),
                p.sha1.clone(),
                list(&p.dependencies),
            ]
        }));
        let mut out = columns(&header);
        out.push('\n');
        out.push_str(&columns(&jobs));
        out.push('\n');
        out.push_str(&columns(&packages));
        if let Some(license) = self.license {
            out.push('\n');
            out.push_str(&columns(&[
                vec![
                    "License".to_string(),
                    "Fingerprint".to_string(),
                    "Digest".to_string(),
                ],
                vec![
                    "license".to_string(),
                    license.fingerprint.clone(),
                    license.sha1.clone(),
                ],
            ]));
        }
        out
    }
}

pub use crate::ui::columns;

/// Prints a release error: diagnostics one per line, anything else as one error.
pub fn report(ui: &mut Ui, error: &ReleaseError) {
    match error {
        ReleaseError::Invalid(diagnostics) => ui.diagnostics(diagnostics),
        other => ui.diagnostic(&Diagnostic::general(other.to_string())),
    }
}

pub fn run(args: InspectReleaseArgs, ui: &mut Ui) -> u8 {
    let path: &Path = &args.release;
    if path.is_dir() {
        match release::inspect_dir(path, None) {
            Ok(inspection) => {
                ui.diagnostics(&inspection.warnings);
                let view = View {
                    name: &inspection.name,
                    version: None,
                    commit_hash: None,
                    uncommitted_changes: None,
                    jobs: &inspection.jobs,
                    packages: &inspection.packages,
                    license: inspection.license.as_ref(),
                };
                print(
                    ui,
                    &view,
                    json!({ "directory": path.display().to_string() }),
                );
                0
            }
            Err(e) => {
                report(ui, &e);
                1
            }
        }
    } else {
        match release::read_archive(path, &Limits::default()) {
            Ok(archive) => {
                let view = View::of(&archive.manifest);
                print(ui, &view, json!({ "tarball": path.display().to_string() }));
                0
            }
            Err(e) => {
                report(ui, &e);
                1
            }
        }
    }
}

/// Prints the view: the table, or the JSON document with `extra` fields merged in.
pub fn print(ui: &mut Ui, view: &View<'_>, extra: Value) {
    if ui.json {
        let mut doc = view.json();
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        ui.data(&format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        ));
    } else {
        ui.data(&view.table());
    }
}
