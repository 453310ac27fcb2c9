//! Fingerprints of jobs, packages and licenses, bit for bit as bosh-cli computes them
//! (`release/resource/fingerprint.go`) with SHA-256 digests (`bosh --sha2 create-release`).
//!
//! The input is a list of files, each with the path it has inside the built archive. For each
//! file in order of that relative path, one chunk: the relative path (or the file's base name,
//! for license files), the digest string of its content (`sha256:<hex>`; for a symlink that is
//! not followed, the digest of the link text), and unless the mode is excluded the git-like
//! mode `40755`, `symlink`, `100755` (any execute bit) or `100644`. Chunks are joined with no
//! separator after `v2`, the sorted additional chunks (a package's dependency names) come
//! last joined by commas, and the fingerprint is the hex SHA-256 of the whole string.
//!
//! One quirk is kept on purpose: when symlinks are followed (jobs), the content is the
//! target's but the mode is the link's own, and a link's mode is 0777, so a symlinked
//! template always counts as `100755`.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::digest::{hex, sha256_file, sha256_string};

/// One file of a job, package or license.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceFile {
    /// Where the file is on disk.
    pub path: PathBuf,
    /// Its path inside the built archive (`job.MF`, `templates/ctl.tera`, `hello/main.c`).
    pub relative_path: String,
    /// Whether the chunk names the file by its base name (license files).
    pub use_basename: bool,
    /// Whether the chunk leaves the mode out (`packaging`, `pre_packaging`, license files).
    pub exclude_mode: bool,
}

impl ResourceFile {
    /// A file named by its relative path, mode included.
    pub fn new(path: impl Into<PathBuf>, relative_path: impl Into<String>) -> ResourceFile {
        ResourceFile {
            path: path.into(),
            relative_path: relative_path.into(),
            use_basename: false,
            exclude_mode: false,
        }
    }
}

/// A fingerprint failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot fingerprint {path}: {source}")]
pub struct FingerprintError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub source: io::Error,
}

/// The fingerprint of `files` plus `additional_chunks`, following symlinks or not.
pub fn fingerprint(
    files: &[ResourceFile],
    additional_chunks: &[String],
    follow_symlinks: bool,
) -> Result<String, FingerprintError> {
    let text = chunks(files, additional_chunks, follow_symlinks)?;
    Ok(hex(&Sha256::digest(text.as_bytes())))
}

/// The string whose SHA-256 is the fingerprint.
pub fn chunks(
    files: &[ResourceFile],
    additional_chunks: &[String],
    follow_symlinks: bool,
) -> Result<String, FingerprintError> {
    let mut sorted: Vec<&ResourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.relative_path.as_bytes().cmp(b.relative_path.as_bytes()));
    let mut text = String::from("v2");
    for file in sorted {
        text.push_str(
            &chunk(file, follow_symlinks).map_err(|source| FingerprintError {
                path: file.path.display().to_string(),
                source,
            })?,
        );
    }
    if !additional_chunks.is_empty() {
        let mut extra = additional_chunks.to_vec();
        extra.sort();
        text.push_str(&extra.join(","));
    }
    Ok(text)
}

fn chunk(file: &ResourceFile, follow_symlinks: bool) -> io::Result<String> {
    let mut text = if file.use_basename {
        basename(&file.path)
    } else {
        file.relative_path.clone()
    };
    let metadata = fs::symlink_metadata(&file.path)?;
    let is_symlink = metadata.file_type().is_symlink();
    if is_symlink && !follow_symlinks {
        let target = fs::read_link(&file.path)?;
        text.push_str(&sha256_string(target.as_os_str().as_encoded_bytes()));
    } else if metadata.is_dir() {
        return Err(io::Error::other("is a directory"));
    } else {
        text.push_str(&sha256_file(&file.path)?.0);
    }
    if !file.exclude_mode {
        text.push_str(if metadata.is_dir() {
            "40755"
        } else if is_symlink && !follow_symlinks {
            "symlink"
        } else if metadata.permissions().mode() & 0o111 != 0 {
            "100755"
        } else {
            "100644"
        });
    }
    Ok(text)
}

fn basename(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    // The expected values below were computed in a shell, not with this module:
    //   printf 'echo packaging\n' | sha256sum   (PACKAGING)
    //   printf 'int x;\n'          | sha256sum   (MAIN_C)
    //   printf '#!/bin/sh\n'       | sha256sum   (RUN_SH)
    //   printf 'main.c'            | sha256sum   (LINK_TEXT: the link's text, not its target)
    //   printf '%s' "$chunks"      | sha256sum   (the fingerprints, with $chunks spelled
    //                                            out as in each test's expected_chunks)
    const PACKAGING: &str =
        "sha256:2d411039d8b6bc2b6d39c50134d7ae5f74d7eaf3970b0112e434bccf0f82145e";
    const MAIN_C: &str = "sha256:7c725f30854a46033dd94f728ac6b08caf10845993cd3ed48e40079cdb0a76a6";
    const RUN_SH: &str = "sha256:a8076d3d28d21e02012b20eaf7dbf75409a6277134439025f282e368e3305abf";
    const LINK_TEXT: &str =
        "sha256:a0cb465674c1b01a07d361f25a0ef2b0214b7dfe9412b7777f89add956da10ec";
    const PACKAGE_FINGERPRINT: &str =
        "2f825dbdab65674dee36f20cbed473d079d842ff64681539e1d25cbe66d41a77";
    const JOB_FINGERPRINT: &str =
        "ca027f1ba0e2f98c04b14eb22f2d4180256e3da1d86d25b4e4e9c590daf299c4";
    const LICENSE_FINGERPRINT: &str =
        "236fe7d40d9b2ba48cc77a8d6b20ea75106324905fe37476527f0bfc2429e2d9";

    #[test]
    fn package_fingerprint_matches_the_documented_recipe() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let packaging = write(d, "pkg/packaging", "echo packaging\n", 0o644);
        let main = write(d, "src/hello/main.c", "int x;\n", 0o644);
        let run = write(d, "src/hello/run.sh", "#!/bin/sh\n", 0o750);
        symlink("main.c", d.join("src/hello/link.c")).unwrap();
        let files = vec![
            ResourceFile {
                exclude_mode: true,
                ..ResourceFile::new(&packaging, "packaging")
            },
            ResourceFile::new(&run, "hello/run.sh"),
            ResourceFile::new(d.join("src/hello/link.c"), "hello/link.c"),
            ResourceFile::new(&main, "hello/main.c"),
        ];
        let dependencies = vec!["zlib".to_string(), "openssl".to_string()];
        let expected_chunks = format!(
            "v2\
             hello/link.c{LINK_TEXT}symlink\
             hello/main.c{MAIN_C}100644\
             hello/run.sh{RUN_SH}100755\
             packaging{PACKAGING}\
             openssl,zlib"
        );
        assert_eq!(
            chunks(&files, &dependencies, false).unwrap(),
            expected_chunks
        );
        assert_eq!(
            fingerprint(&files, &dependencies, false).unwrap(),
            PACKAGE_FINGERPRINT
        );
    }

    #[test]
    fn job_fingerprint_follows_symlinks_but_keeps_the_link_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spec = write(d, "job/spec", "int x;\n", 0o644);
        write(d, "elsewhere/run.sh", "#!/bin/sh\n", 0o644);
        fs::create_dir_all(d.join("job/templates")).unwrap();
        symlink("../../elsewhere/run.sh", d.join("job/templates/ctl")).unwrap();
        let files = vec![
            ResourceFile::new(&spec, "job.MF"),
            ResourceFile::new(d.join("job/templates/ctl"), "templates/ctl"),
        ];
        // The target is 0644, but the chunk says 100755: the mode is the link's own.
        let expected_chunks = format!("v2job.MF{MAIN_C}100644templates/ctl{RUN_SH}100755");
        assert_eq!(chunks(&files, &[], true).unwrap(), expected_chunks);
        assert_eq!(fingerprint(&files, &[], true).unwrap(), JOB_FINGERPRINT);
    }

    #[test]
    fn license_files_use_their_base_name_and_no_mode() {
        let dir = tempfile::tempdir().unwrap();
        let license = write(dir.path(), "LICENSE", "int x;\n", 0o755);
        let files = vec![ResourceFile {
            use_basename: true,
            exclude_mode: true,
            ..ResourceFile::new(&license, "LICENSE")
        }];
        assert_eq!(
            chunks(&files, &[], false).unwrap(),
            format!("v2LICENSE{MAIN_C}")
        );
        assert_eq!(
            fingerprint(&files, &[], false).unwrap(),
            LICENSE_FINGERPRINT
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let files = vec![ResourceFile::new("/nonexistent/x", "x")];
        let error = fingerprint(&files, &[], false).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot fingerprint /nonexistent/x: ")
        );
    }
}
