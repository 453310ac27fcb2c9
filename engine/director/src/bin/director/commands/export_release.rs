//! `director export-release NAME/VERSION OS/VERSION [--dir DIR]`: the director writes the
//! release version with its compiled builds for that stemcell as a compiled release tarball
//! (a task, `POST /releases/export`), then the CLI asks for a signed link to it
//! (`GET /blobs/<blob id>/link`) and downloads it to
//! `DIR/NAME-VERSION-OS-STEMCELL_VERSION.tgz`, checking its sha256 and writing it under a
//! temporary name first, so a failed download leaves no partial file. Uploading that
//! tarball to another director (`upload-release`) lets deploys there skip compilation.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use director::client::Client;
use director::config::ClientConfig;
use director::uploads::{ExportRequest, ExportedRelease};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::director::{connect, fail, follow, runtime};
use crate::cli::{ExportReleaseArgs, GlobalArgs};
use crate::ui::Ui;

/// Splits `NAME/VERSION`; both parts non-empty.
fn pair<'a>(text: &'a str, what: &str, hint: &str) -> Result<(&'a str, &'a str), String> {
    match text.split_once('/') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok((name, version)),
        _ => Err(format!("{text:?}: expected {what} (see `director {hint}`)")),
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
        let answer = match client
            .post("/releases/export", &json!(request))
            .await
        {
            Ok(answer) => answer,
            Err(e) => return fail(ui, e),
        };
        let Some(task) = answer.get("task") else {
            return fail(ui, format!("unexpected answer: {answer}"));
        };
        let code = follow(&client, task, ui).await;
        if code != 0 {
            return code;
        }
        let id = task["id"].as_i64().unwrap_or_default();
        let exported = match exported(&client, id).await {
            Ok(exported) => exported,
            Err(e) => return fail(ui, e),
        };
        if let Err(e) = download(
            &client,
            global,
            &exported.blob_id,
            &exported.sha256,
            &destination,
        )
        .await
        {
            return fail(ui, e);
        }
        ui.say(&format!(
            "Exported release {release_name}/{release_version} compiled for {stemcell_os}/{stemcell_version} to {} ({})",
            destination.display(),
            exported.sha256
        ));
        if ui.json {
            let line = json!({
                "file": destination.display().to_string(),
                "sha256": exported.sha256,
                "size": exported.size,
            });
            ui.data(&format!("{line}\n"));
        }
        0
    })
}

/// The export task's result.
async fn exported(client: &Client, id: i64) -> Result<ExportedRelease, String> {
    let task = client
        .get(&format!("/tasks/{id}"))
        .await
        .map_err(|e| e.to_string())?;
    let result = task["result"].as_str().unwrap_or_default();
    serde_json::from_str(result)
        .map_err(|e| format!("task {id}: its result does not name an exported tarball: {e}"))
}

/// The HTTP client for the download: the CA certificate the director's client uses
/// (`DIRECTOR_CA_CERT`, else the CLI config's); the signed link needs no token.
fn http(global: &GlobalArgs) -> Result<reqwest::Client, String> {
    let ca = std::env::var("DIRECTOR_CA_CERT")
        .ok()
        .filter(|ca| !ca.is_empty())
        .or_else(|| {
            let saved = ClientConfig::load().ok()?;
            (global.director.is_none() && !saved.dev)
                .then_some(saved.ca_cert)
                .flatten()
        });
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem = if ca.contains("-----BEGIN") {
            ca.into_bytes()
        } else {
            std::fs::read(&ca).map_err(|e| format!("reading the CA certificate {ca}: {e}"))?
        };
        let certificate = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("the director CA certificate is not PEM: {e}"))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|e| e.to_string())
}

/// Downloads a blob through a signed link (`GET /blobs/<id>/link`) into `destination`,
/// checked against `sha256` (`sha256:<hex>`) and written under a temporary name first, so a
/// failed download leaves no partial file.
pub(crate) async fn download(
    client: &Client,
    global: &GlobalArgs,
    blob_id: &str,
    sha256: &str,
    destination: &Path,
) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("downloading {}: {e}", destination.display());
    let link: Json = client
        .get(&format!("/blobs/{blob_id}/link"))
        .await
        .map_err(|e| e.to_string())?;
    let path = link["path"]
        .as_str()
        .ok_or_else(|| format!("unexpected answer for the download link: {link}"))?;
    let url = format!("{}{path}", client.url());
    let mut response = http(global)?
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(&e))?;
    let folder = destination.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(folder)
        .map_err(|e| format!("creating a file in {}: {e}", folder.display()))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(&e))? {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| format!("writing {}: {e}", destination.display()))?;
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if format!("sha256:{actual}") != sha256 {
        return Err(format!(
            "the downloaded {} has digest sha256:{actual}, but the director has {sha256}",
            destination.display()
        ));
    }
    // A temporary file is private (0600); the tarball is an ordinary file.
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| format!("writing {}: {e}", destination.display()))?;
    file.persist(destination)
        .map_err(|e| format!("writing {}: {e}", destination.display()))?;
    Ok(())
}
