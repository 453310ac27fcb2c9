//! `director export-release NAME/VERSION OS/VERSION [--dir DIR]`: the director writes the
//! release version with its compiled builds for that stemcell as a compiled release tarball
//! (a task, `POST /releases/export`), then the CLI asks for a signed link to it
//! (`GET /blobs/<blob id>/link`) and downloads it to
//! `DIR/NAME-VERSION-OS-STEMCELL_VERSION.tgz`, checking its sha256 and writing it under a
//! temporary name first, so a failed download leaves no partial file. Uploading that
//! tarball to another director (`upload-release`) lets deploys there skip compilation.

use std::io::Write;
use std::path::Path;

use director::client::Client;
use director_api::client::task_result;
use director_api::releases::{ExportRequest, ExportedRelease};
use director_api::tasks::TaskState;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::LocalError;
use super::director::{connect, fail, follow_to_end, runtime, say_ended};
use crate::cli::{ExportReleaseArgs, GlobalArgs};
use crate::ui::Ui;

/// Splits `NAME/VERSION`; both parts non-empty.
fn pair<'a>(text: &'a str, what: &str, hint: &str) -> Result<(&'a str, &'a str), LocalError> {
    match text.split_once('/') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok((name, version)),
        _ => Err(LocalError::Argument {
            given: text.to_string(),
            expected: format!("{what} (see `director {hint}`)"),
        }),
    }
}

/// `director export-release`.
pub fn run(global: &GlobalArgs, args: ExportReleaseArgs, ui: &mut Ui) -> u8 {
    let (release_name, release_version) = match pair(&args.release, "NAME/VERSION", "releases") {
        Ok(pair) => pair,
        Err(e) => return fail(ui, e),
    };
    let (stemcell_os, stemcell_version) = match pair(&args.stemcell, "OS/VERSION", "stemcells") {
        Ok(pair) => pair,
        Err(e) => return fail(ui, e),
    };
    if !args.dir.is_dir() {
        return fail(ui, format!("{}: no such directory", args.dir.display()));
    }
    let request = ExportRequest {
        release_name: release_name.to_string(),
        release_version: release_version.to_string(),
        stemcell_os: stemcell_os.to_string(),
        stemcell_version: stemcell_version.to_string(),
    };
    let destination = args.dir.join(request.file_name());
    runtime().block_on(async {
        let client = match connect(global, ui).await {
            Ok(client) => client,
            Err(e) => return fail(ui, e),
        };
        let task = match client.export_release(&request).await {
            Ok(task) => task,
            Err(e) => return fail(ui, e),
        };
        let ended = match follow_to_end(&client, &task, ui, true).await {
            Ok(ended) => ended,
            Err(code) => return code,
        };
        say_ended(ui, &ended);
        if ended.state != TaskState::Done {
            return 1;
        }
        let exported: ExportedRelease = match task_result(&ended) {
            Ok(exported) => exported,
            Err(e) => return fail(ui, e),
        };
        if let Err(e) = download(&client, &exported.blob_id, &exported.sha256, &destination).await
        {
            return fail(ui, e);
        }
        ui.say(&format!(
            "Exported release {release_name}/{release_version} compiled for {stemcell_os}/{stemcell_version} to {} ({})",
            destination.display(),
            exported.sha256
        ));
        if ui.json {
            let line = Exported {
                file: destination.display().to_string(),
                sha256: exported.sha256,
                size: exported.size,
            };
            ui.data(&format!(
                "{}\n",
                serde_json::to_string(&line).unwrap_or_default()
            ));
        }
        0
    })
}

/// `export-release --json`: the tarball written.
#[derive(Serialize)]
struct Exported {
    file: String,
    sha256: String,
    size: u64,
}

/// Downloads a blob through a signed link (`GET /blobs/<id>/link`) into `destination`,
/// checked against `sha256` (`sha256:<hex>`) and written under a temporary name first, so a
/// failed download leaves no partial file.
pub(crate) async fn download(
    client: &Client,
    blob_id: &str,
    sha256: &str,
    destination: &Path,
) -> Result<(), LocalError> {
    let link = client.blob_link(blob_id).await?;
    let mut response = client.download(&link.path).await?;
    let writing = || format!("writing {}", destination.display());
    // A temporary file beside the destination until the digest is checked: a failed
    // download leaves no partial file.
    let mut file =
        secrets::AtomicFile::create(destination, 0o644).map_err(LocalError::io(writing()))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| LocalError::Io {
        context: format!("downloading {}", destination.display()),
        source: std::io::Error::other(e.without_url()),
    })? {
        hasher.update(&chunk);
        file.file()
            .write_all(&chunk)
            .map_err(LocalError::io(writing()))?;
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if format!("sha256:{actual}") != sha256 {
        return Err(LocalError::Digest {
            file: destination.display().to_string(),
            actual,
            expected: sha256.to_string(),
        });
    }
    file.commit().map_err(LocalError::io(writing()))
}
