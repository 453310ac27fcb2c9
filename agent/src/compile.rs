//! `compile_package`: build a package from source on this (compilation) VM and upload it.
//!
//! Dependencies are installed as for `apply` (`<root>/packages/<dep>` links); the source is
//! unpacked into a fresh `<root>/data/compile/<name>`; `packaging` runs there with `bash -e`
//! and BOSH's variables: `BOSH_COMPILE_TARGET` (that directory), `BOSH_INSTALL_TARGET`
//! (`<root>/packages/<name>`, a link to the fresh `<root>/data/packages/<name>/<version>`),
//! `BOSH_PACKAGE_NAME`, `BOSH_PACKAGE_VERSION`, `BOSH_PACKAGES_DIR` (`<root>/packages`),
//! besides `PATH`, `HOME` (the compile directory) and `TMPDIR` (`<root>/data/tmp`), and
//! nothing of the agent's own environment.
//! Its stdout and stderr go, interleaved, to `<root>/data/compile/<name>.log`. The install
//! target is archived (`.tgz`), `PUT` to the upload URL, and everything but the installed
//! dependencies is removed again.

use std::path::Path;
use std::process::Stdio;

use crate::blobs::{self, Http};
use crate::error::{Error, Result};
use crate::install::{Installer, remove_path, swap_symlink};
use crate::layout::{Layout, check_name};
use crate::logs;
use crate::state::describe_exit;
use agent_protocol::{CompileRequest, CompileResult};

/// Lines of packaging output a result or failure carries.
pub const LOG_LINES: usize = 50;

/// Compiles `request` and uploads the result.
pub async fn compile(
    layout: &Layout,
    http: &Http,
    request: &CompileRequest,
) -> Result<CompileResult> {
    check_name("package", &request.name)?;
    check_name("version", &request.version)?;
    let failed = |reason: String| Error::Compile {
        package: request.name.clone(),
        reason,
    };
    crate::install::check_packages(&request.dependencies)?;
    let installer = Installer::new(layout.clone(), http.clone());
    for dependency in request.dependencies.values() {
        installer.install_package(dependency).await?;
        installer.link_package(dependency)?;
    }

    let what = format!("source of package '{}'", request.name);
    let source = http.download(&what, &request.source, &layout.tmp()).await?;
    let compile_dir = layout.compile_dir(&request.name);
    let install_dir = layout.package_dir(&request.name, &request.version);
    let install_link = layout.package_link(&request.name);
    for dir in [&compile_dir, &install_dir] {
        remove_path(dir)?;
    }
    std::fs::create_dir_all(&install_dir).map_err(Error::io("create", &install_dir))?;
    swap_symlink(&install_dir, &install_link)?;

    let result = async {
        let unpacked = {
            let (source, compile_dir) = (source.clone(), compile_dir.clone());
            tokio::task::spawn_blocking(move || blobs::unpack_tgz(&what, &source, &compile_dir))
                .await
                .map_err(|e| failed(e.to_string()))
        };
        let _ = tokio::fs::remove_file(&source).await;
        unpacked??;
        let log_path = layout
            .compile_dir(&request.name)
            .with_file_name(format!("{}.log", request.name));
        let log_tail = run_packaging(layout, request, &compile_dir, &install_link, &log_path)
            .await
            .map_err(failed)?;
        let archive = layout.tmp().join(format!(".compiled-{}.tgz", uuid::Uuid::new_v4()));
        let packed = {
            let (what, dir, archive) = (
                format!("compiled package '{}'", request.name),
                install_dir.clone(),
                archive.clone(),
            );
            tokio::task::spawn_blocking(move || blobs::pack_tgz(&what, &dir, &archive))
                .await
                .map_err(|e| failed(e.to_string()))?
        };
        let uploaded = match packed {
            Ok((digest, size)) => {
                let what = format!("compiled package '{}'", request.name);
                http.upload(&what, &request.upload_url, &archive)
                    .await
                    .and_then(|uploaded| {
                        if uploaded.blob_id != digest || uploaded.size != size {
                            Err(failed(format!(
                                "the director stored {} ({} bytes) for an archive of sha256 {digest} ({size} bytes)",
                                uploaded.blob_id, uploaded.size
                            )))
                        } else {
                            Ok(uploaded)
                        }
                    })
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&archive).await;
        let uploaded = uploaded?;
        agent_log!(
            "compiled package '{}' {}: blob {} ({} bytes)",
            request.name,
            request.version,
            uploaded.blob_id,
            uploaded.size
        );
        Ok(CompileResult {
            blob_id: uploaded.blob_id,
            size: uploaded.size,
            log_tail,
        })
    }
    .await;
    for path in [&compile_dir, &install_link, &install_dir] {
        let _ = remove_path(path);
    }
    result
}

async fn run_packaging(
    layout: &Layout,
    request: &CompileRequest,
    compile_dir: &Path,
    install_target: &Path,
    log_path: &Path,
) -> std::result::Result<Vec<String>, String> {
    if !compile_dir.join("packaging").is_file() {
        return Err("the source has no packaging script".to_string());
    }
    let log = std::fs::File::create(log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    agent_log!("compiling package '{}' {}", request.name, request.version);
    let status = tokio::process::Command::new("bash")
        .arg("-e")
        .arg("packaging")
        .current_dir(compile_dir)
        .env_clear()
        .env("PATH", crate::supervisor::DEFAULT_PATH)
        .env("HOME", compile_dir)
        .env("TMPDIR", layout.tmp())
        .env("BOSH_COMPILE_TARGET", compile_dir)
        .env("BOSH_INSTALL_TARGET", install_target)
        .env("BOSH_PACKAGE_NAME", &request.name)
        .env("BOSH_PACKAGE_VERSION", &request.version)
        .env("BOSH_PACKAGES_DIR", layout.packages())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let tail = logs::tail(log_path, LOG_LINES);
    let _ = std::fs::remove_file(log_path);
    if status.success() {
        Ok(tail)
    } else {
        Err(format!(
            "packaging {}; last {} lines of its output:\n{}",
            describe_exit(status),
            tail.len(),
            tail.join("\n")
        ))
    }
}
