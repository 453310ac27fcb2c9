//! Blobs over HTTP and the archives inside them.
//!
//! Downloads stream into a temporary file while hashing and are accepted only when the
//! sha256 matches the blob's id; uploads stream a file with `PUT` and read the director's
//! `{"blob_id", "size"}` answer. URLs are signed, so messages show them without their query.
//! Archives are gzipped tars: unpacked with `tar`'s checks (no `..`, no absolute paths,
//! nothing written outside the destination through a symlink, hard links only to entries
//! inside it) and ours (no device files or fifos; modes without setuid, setgid or sticky
//! bits, owners not kept), packed with symlinks kept as symlinks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use agent_protocol::{BlobRef, BlobstoreSettings, UploadedBlob};

/// The HTTP client for the director's blobs.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    /// A client trusting the blobstore's CA certificate when the settings give one.
    pub fn new(blobstore: &BlobstoreSettings) -> Result<Http> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .user_agent("bosh-agent");
        if let Some(pem) = blobstore
            .ca_cert
            .as_deref()
            .filter(|p| !p.trim().is_empty())
        {
            let certificate =
                reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| Error::Settings {
                    path: PathBuf::from("blobstore.ca_cert"),
                    reason: e.to_string(),
                })?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder.build().map_err(|e| Error::Settings {
            path: PathBuf::from("blobstore"),
            reason: e.to_string(),
        })?;
        Ok(Http { client })
    }

    /// Downloads `blob` into a new file in `dir`, checking its sha256; returns the file.
    pub async fn download(&self, what: &str, blob: &BlobRef, dir: &Path) -> Result<PathBuf> {
        let failed = |reason: String| Error::Download {
            what: what.to_string(),
            url: secrets::redact_urls(&blob.url),
            reason,
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Error::io("create", dir))?;
        let path = dir.join(format!(".download-{}", uuid::Uuid::new_v4()));
        let result = async {
            let mut response = self
                .client
                .get(&blob.url)
                .send()
                .await
                .map_err(|e| failed(http_error(e)))?;
            if !response.status().is_success() {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                return Err(failed(format!("{status}: {}", snippet(&body))));
            }
            let mut file = tokio::fs::File::create(&path)
                .await
                .map_err(Error::io("create", &path))?;
            let mut hasher = Sha256::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| failed(http_error(e)))? {
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(Error::io("write", &path))?;
            }
            file.flush().await.map_err(Error::io("write", &path))?;
            let actual = hex(&hasher.finalize());
            if !actual.eq_ignore_ascii_case(&blob.id) {
                return Err(Error::Digest {
                    what: what.to_string(),
                    expected: blob.id.clone(),
                    actual,
                });
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(path),
            Err(error) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(error)
            }
        }
    }

    /// `PUT`s `file` to `url` and reads the director's answer.
    pub async fn upload(&self, what: &str, url: &str, file: &Path) -> Result<UploadedBlob> {
        let failed = |reason: String| Error::Upload {
            what: what.to_string(),
            url: secrets::redact_urls(url),
            reason,
        };
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(Error::io("open", file))?;
        let size = handle
            .metadata()
            .await
            .map_err(Error::io("stat", file))?
            .len();
        let response = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(reqwest::Body::from(handle))
            .send()
            .await
            .map_err(|e| failed(http_error(e)))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| failed(http_error(e)))?;
        if !status.is_success() {
            return Err(failed(format!("{status}: {}", snippet(&body))));
        }
        serde_json::from_str(&body)
            .map_err(|e| failed(format!("unexpected answer {:?}: {e}", snippet(&body))))
    }
}

/// A reqwest error without its URL (which carries the signature).
fn http_error(error: reqwest::Error) -> String {
    error_chain(&error.without_url())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn snippet(body: &str) -> String {
    let trimmed = body.trim();
    match trimmed.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &trimmed[..at]),
        None => trimmed.to_string(),
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks the gzipped tar `archive` into `dest` (created). Blocking.
///
/// Device files and fifos are refused; modes keep only their permission bits (`0o777`), so
/// nothing unpacked is setuid or setgid.
pub fn unpack_tgz(what: &str, archive: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(Error::io("create", dest))?;
    let file = std::fs::File::open(archive).map_err(Error::io("open", archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    // Not preserved: `mode & 0o777` is applied, setuid, setgid and sticky bits are dropped.
    tar.set_preserve_permissions(false);
    tar.set_preserve_ownerships(false);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let entries = tar.entries().map_err(|e| archive_error(what, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_error(what, e))?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let name = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let kind = if kind.is_fifo() {
                "a fifo"
            } else {
                "a device file"
            };
            return Err(Error::Archive {
                what: what.to_string(),
                reason: format!("entry {name:?} is {kind}, which archives may not hold"),
            });
        }
        // `unpack_in` refuses `..` and absolute paths and anything that would land outside
        // `dest` through a symlink.
        let inside = entry.unpack_in(dest).map_err(|e| archive_error(what, e))?;
        if !inside {
            let name = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(Error::Archive {
                what: what.to_string(),
                reason: format!("entry {name:?} points outside the archive"),
            });
        }
    }
    Ok(())
}

fn archive_error(what: &str, error: std::io::Error) -> Error {
    Error::Archive {
        what: what.to_string(),
        reason: error_chain(&error),
    }
}

/// Writes the contents of `dir` (paths relative to it) to the gzipped tar `dest`; returns its sha256
/// and size. Symlinks are stored as symlinks. Blocking.
pub fn pack_tgz(what: &str, dir: &Path, dest: &Path) -> Result<(String, u64)> {
    let file = std::fs::File::create(dest).map_err(Error::io("create", dest))?;
    let encoder = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(file),
        flate2::Compression::default(),
    );
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .map_err(|e| archive_error(what, e))?;
    let encoder = builder.into_inner().map_err(|e| archive_error(what, e))?;
    let writer = encoder.finish().map_err(|e| archive_error(what, e))?;
    let file = writer
        .into_inner()
        .map_err(|e| archive_error(what, e.into_error()))?;
    file.sync_all().map_err(Error::io("sync", dest))?;
    drop(file);
    let (digest, size) = sha256_file(dest)?;
    Ok((digest, size))
}

/// The sha256 (hex) and size of a file. Blocking.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(Error::io("read", path))?;
    Ok((hex(&hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_lose_their_signature() {
        assert_eq!(
            secrets::redact_urls("http://127.0.0.1:1/blobs/abc?expires=1&signature=s3cr3t"),
            "http://127.0.0.1:1/blobs/abc?expires=1&signature=<redacted>"
        );
        assert_eq!(
            secrets::redact_urls("https://u:p@h/x?y"),
            "https://u:<redacted>@h/x?y"
        );
    }

    #[tokio::test]
    async fn failed_downloads_keep_the_signature_out_of_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let http = Http::new(&BlobstoreSettings::default()).unwrap();
        let blob = BlobRef {
            id: "0".repeat(64),
            url: "http://127.0.0.1:1/blobs/abc?signature=s3cr3t".to_string(),
        };
        let error = http
            .download("package 'x'", &blob, dir.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "downloading package 'x' from http://127.0.0.1:1/blobs/abc?signature=<redacted>: "
            ),
            "{error}"
        );
        assert!(!error.contains("s3cr3t"), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    fn tgz(entries: &[(&str, tar::EntryType, u32)]) -> Vec<u8> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        for (path, kind, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            header.set_size(0);
            header.set_cksum();
            builder.append_data(&mut header, path, &[][..]).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpacked_files_lose_setuid_setgid_and_sticky_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tgz");
        std::fs::write(
            &archive,
            tgz(&[
                ("bin", tar::EntryType::Directory, 0o3755),
                ("bin/su", tar::EntryType::Regular, 0o4755),
                ("bin/sg", tar::EntryType::Regular, 0o2750),
                ("plain", tar::EntryType::Regular, 0o640),
            ]),
        )
        .unwrap();
        let out = dir.path().join("out");
        unpack_tgz("package 'x'", &archive, &out).unwrap();
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            [mode("bin"), mode("bin/su"), mode("bin/sg"), mode("plain")],
            [0o755, 0o755, 0o750, 0o640]
        );
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, what) in [
            (tar::EntryType::Char, "a device file"),
            (tar::EntryType::Block, "a device file"),
            (tar::EntryType::Fifo, "a fifo"),
        ] {
            let archive = dir.path().join("a.tgz");
            std::fs::write(
                &archive,
                tgz(&[
                    ("ok", tar::EntryType::Regular, 0o644),
                    ("dev/x", kind, 0o666),
                ]),
            )
            .unwrap();
            let out = dir.path().join("out");
            let error = unpack_tgz("package 'x'", &archive, &out)
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                format!("package 'x': entry \"dev/x\" is {what}, which archives may not hold")
            );
            assert!(!out.join("dev/x").exists());
            std::fs::remove_dir_all(&out).unwrap();
        }
    }

    #[test]
    fn entries_outside_the_destination_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tgz");
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder
            .append_link(&mut header, "escape", dir.path())
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(1);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "escape/planted", &b"x"[..])
            .unwrap();
        std::fs::write(&archive, builder.into_inner().unwrap().finish().unwrap()).unwrap();
        let out = dir.path().join("out");
        assert!(unpack_tgz("job 'web'", &archive, &out).is_err());
        assert!(!dir.path().join("planted").exists());
    }

    #[test]
    fn archives_round_trip_with_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("bin/run", src.join("link")).unwrap();
        let archive = dir.path().join("a.tgz");
        let (digest, size) = pack_tgz("test", &src, &archive).unwrap();
        assert_eq!((digest.clone(), size), sha256_file(&archive).unwrap());
        let out = dir.path().join("out");
        unpack_tgz("test", &archive, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("bin/run")).unwrap(),
            "#!/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            Path::new("bin/run")
        );
    }
}
