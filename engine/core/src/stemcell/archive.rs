//! Reading an uploaded stemcell tarball: unpacked with [`crate::archive::extract`] (no `..`,
//! absolute paths, links out, devices, duplicates, truncated gzip or gzip bombs) into a
//! staging directory, then accepted only when `stemcell.MF` and `image` are regular files,
//! `stemcell.MF` is a valid manifest, and `image` has the digest `stemcell.MF` gives it.
//!
//! Invariant: nothing is written outside the staging directory, and on any error the
//! staging directory is gone.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::StemcellError;
use super::manifest::StemcellManifest;
use crate::archive::{self, EntryKind, Extracted, Limits};
use crate::diagnostics::{Diagnostic, Diagnostics};
use crate::release::digest::{ExpectedDigest, hex};

/// A stemcell tarball that passed every check, unpacked into a staging directory that is
/// removed when this is dropped.
#[derive(Debug)]
pub struct StemcellArchive {
    /// Its `stemcell.MF`.
    pub manifest: StemcellManifest,
    /// Warnings about `stemcell.MF` (unknown keys).
    pub warnings: Diagnostics,
    image_sha256: String,
    image_size: u64,
    extracted: Extracted,
}

impl StemcellArchive {
    /// The staging directory.
    pub fn dir(&self) -> &Path {
        self.extracted.dir()
    }

    /// Where `image` is staged.
    pub fn image(&self) -> PathBuf {
        self.dir().join("image")
    }

    /// Lowercase hex SHA-256 of `image`, whatever algorithm `stemcell.MF` used.
    pub fn image_sha256(&self) -> &str {
        &self.image_sha256
    }

    /// Size of `image` in bytes (0 for a light stemcell).
    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    /// Where `packages.txt` (the image's `dpkg -l`) is staged, when the tarball has one.
    pub fn packages_list(&self) -> Option<PathBuf> {
        matches!(
            self.extracted.entries().get("packages.txt"),
            Some(EntryKind::File { .. })
        )
        .then(|| self.dir().join("packages.txt"))
    }

    /// The staging directory, to keep (for example to move `image` to a blobstore).
    pub fn into_staging(self) -> TempDir {
        self.extracted.into_dir()
    }
}

/// Reads and checks the stemcell tarball at `path`, staging it in the system's temporary
/// directory.
pub fn read_stemcell(path: &Path, limits: &Limits) -> Result<StemcellArchive, StemcellError> {
    read_stemcell_in(path, limits, &std::env::temp_dir())
}

/// [`read_stemcell`], staging in `staging_parent`.
pub fn read_stemcell_in(
    path: &Path,
    limits: &Limits,
    staging_parent: &Path,
) -> Result<StemcellArchive, StemcellError> {
    let extracted = archive::extract(path, limits, staging_parent)?;
    let name = shown(path);
    for entry in ["stemcell.MF", "image"] {
        match extracted.entries().get(entry) {
            Some(EntryKind::File { .. }) => {}
            Some(kind) => {
                return Err(StemcellError::NotAFile {
                    archive: name,
                    entry,
                    kind: describe(kind),
                });
            }
            None => {
                return Err(StemcellError::MissingEntry {
                    archive: name,
                    entry,
                });
            }
        }
    }
    let label = format!("{name}/stemcell.MF");
    let manifest_path = extracted.dir().join("stemcell.MF");
    let bytes = fs::read(&manifest_path).map_err(|e| StemcellError::io(&manifest_path, e))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        StemcellError::Invalid(Diagnostic::general(format!("{label}: not UTF-8 text")).into())
    })?;
    let (manifest, warnings) = StemcellManifest::parse(&text, &label)?;

    let expected = ExpectedDigest::parse(&manifest.sha1).expect("checked when parsed");
    let image_path = extracted.dir().join("image");
    // The SHA-256 was computed while the image was unpacked; only a legacy SHA-1 manifest
    // needs the image read again.
    let known = extracted.sha256("image").map(str::to_string);
    let (actual, image_sha256, image_size) = match (known, &extracted.entries().get("image")) {
        (Some(sha256), Some(EntryKind::File { size, .. }))
            if expected.as_string().starts_with("sha256:") =>
        {
            (format!("sha256:{sha256}"), sha256, *size)
        }
        _ => digests(&image_path, &expected).map_err(|e| StemcellError::io(&image_path, e))?,
    };
    if actual != expected.as_string() {
        return Err(StemcellError::DigestMismatch {
            archive: name,
            expected: manifest.sha1,
            actual,
        });
    }
    Ok(StemcellArchive {
        manifest,
        warnings,
        image_sha256,
        image_size,
        extracted,
    })
}

/// In one read of the file: its digest in `expected`'s algorithm (as a digest string), its
/// SHA-256 as hex, and its size.
fn digests(path: &Path, expected: &ExpectedDigest) -> io::Result<(String, String, u64)> {
    let mut reader = Hashing {
        inner: File::open(path)?,
        sha256: Sha256::new(),
        size: 0,
    };
    let actual = if expected.as_string().starts_with("sha256:") {
        io::copy(&mut reader, &mut io::sink())?;
        None
    } else {
        Some(expected.compute(&mut reader)?)
    };
    let sha256 = hex(&reader.sha256.finalize());
    let actual = actual.unwrap_or_else(|| format!("sha256:{sha256}"));
    Ok((actual, sha256, reader.size))
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    sha256: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

fn describe(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::File { .. } => "file",
        EntryKind::Dir { .. } => "directory",
        EntryKind::Symlink { .. } => "symlink",
        EntryKind::HardLink { .. } => "hard link",
    }
}

/// A path as messages show it: without a leading `./`.
pub(super) fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    match text.strip_prefix("./") {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{Compression, GzBuilder};
    use tar::{EntryType, Header};

    use super::*;
    use crate::archive::{TgzEntry, TgzSource, write_tgz};
    use crate::release::digest::sha256_string;

    const IMAGE: &[u8] = b"a rootfs tarball, in a way";
    /// `printf 'a rootfs tarball, in a way' | sha1sum`.
    const IMAGE_SHA1: &str = "d9a3eb6e76bf66da7509a66cc9af806f8399d5db";

    fn manifest(sha1: &str) -> String {
        format!(
            "name: bosh-local-debian-bookworm\nversion: '12.8.20261126'\napi_version: 3\n\
             sha1: {sha1}\noperating_system: debian-bookworm\nstemcell_formats: [local]\n\
             cloud_properties: {{infrastructure: local}}\n"
        )
    }

    fn bytes(path: &str, data: &[u8]) -> TgzEntry {
        TgzEntry {
            path: path.into(),
            source: TgzSource::Bytes {
                data: data.to_vec(),
                executable: false,
            },
        }
    }

    fn valid_entries() -> Vec<TgzEntry> {
        vec![
            bytes("stemcell.MF", manifest(&sha256_string(IMAGE)).as_bytes()),
            bytes("image", IMAGE),
            bytes("packages.txt", b"ii  bash\n"),
        ]
    }

    /// Writes a tarball in a fresh directory; reading stages into `staging/` beside it.
    struct Fixture {
        dir: TempDir,
    }

    impl Fixture {
        fn new(tgz: Vec<u8>) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("s.tgz"), tgz).unwrap();
            fs::create_dir(dir.path().join("staging")).unwrap();
            Fixture { dir }
        }

        fn of(entries: Vec<TgzEntry>) -> Fixture {
            Fixture::new(write_tgz(Vec::new(), entries).unwrap())
        }

        fn read(&self) -> Result<StemcellArchive, StemcellError> {
            read_stemcell_in(
                &self.dir.path().join("s.tgz"),
                &Limits::default(),
                &self.dir.path().join("staging"),
            )
        }

        /// The error's message with the fixture's directory cut out, after checking that
        /// nothing was left in the staging directory.
        fn refused(&self) -> String {
            let error = self.read().expect_err("the stemcell should be refused");
            let left = fs::read_dir(self.dir.path().join("staging"))
                .unwrap()
                .count();
            assert_eq!(left, 0, "staging left behind after: {error}");
            error
                .to_string()
                .replace(&format!("{}/", self.dir.path().display()), "")
        }
    }

    fn replaced(entry: &str, data: &[u8]) -> Vec<TgzEntry> {
        let mut entries: Vec<TgzEntry> = valid_entries()
            .into_iter()
            .filter(|e| e.path != entry)
            .collect();
        entries.push(bytes(entry, data));
        entries
    }

    fn raw_tgz(entries: &[(&str, EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut header = Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        let mut gz = GzBuilder::new().write(Vec::new(), Compression::default());
        gz.write_all(&builder.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_valid_stemcell_is_staged_and_removed_on_drop() {
        let fixture = Fixture::of(valid_entries());
        let stemcell = fixture.read().unwrap();
        assert_eq!(stemcell.manifest.name, "bosh-local-debian-bookworm");
        assert_eq!(stemcell.manifest.version, "12.8.20261126");
        assert_eq!(stemcell.manifest.api_version, 3);
        assert_eq!(stemcell.manifest.stemcell_formats, ["local"]);
        assert_eq!(
            stemcell.manifest.cloud_properties["infrastructure"],
            "local"
        );
        assert_eq!(fs::read(stemcell.image()).unwrap(), IMAGE);
        assert_eq!(
            format!("sha256:{}", stemcell.image_sha256()),
            sha256_string(IMAGE)
        );
        assert_eq!(stemcell.image_size(), IMAGE.len() as u64);
        assert!(stemcell.packages_list().is_some());
        assert!(stemcell.warnings.is_empty());
        let staged = stemcell.dir().to_path_buf();
        assert!(staged.starts_with(fixture.dir.path().join("staging")));
        drop(stemcell);
        assert!(!staged.exists());
    }

    #[test]
    fn a_legacy_sha1_is_verified_as_sha1() {
        let fixture = Fixture::of(replaced("stemcell.MF", manifest(IMAGE_SHA1).as_bytes()));
        let stemcell = fixture.read().unwrap();
        assert_eq!(stemcell.manifest.sha1, IMAGE_SHA1);
        assert_eq!(
            format!("sha256:{}", stemcell.image_sha256()),
            sha256_string(IMAGE)
        );
        let wrong = "0".repeat(40);
        let fixture = Fixture::of(replaced("stemcell.MF", manifest(&wrong).as_bytes()));
        assert_eq!(
            fixture.refused(),
            format!("s.tgz: image has digest {IMAGE_SHA1}, but stemcell.MF says sha1: {wrong}")
        );
    }

    #[test]
    fn an_image_with_another_digest_is_refused() {
        let fixture = Fixture::of(replaced("image", b"something else"));
        assert_eq!(
            fixture.refused(),
            format!(
                "s.tgz: image has digest {}, but stemcell.MF says sha1: {}",
                sha256_string(b"something else"),
                sha256_string(IMAGE)
            )
        );
    }

    #[test]
    fn missing_entries_are_named() {
        let without = |entry: &str| {
            valid_entries()
                .into_iter()
                .filter(|e| e.path != entry)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            Fixture::of(without("stemcell.MF")).refused(),
            "s.tgz: stemcell.MF is missing"
        );
        assert_eq!(
            Fixture::of(without("image")).refused(),
            "s.tgz: image is missing"
        );
    }

    #[test]
    fn entries_that_are_not_files_are_refused() {
        let mut entries = valid_entries();
        entries.retain(|e| e.path != "image");
        entries.push(TgzEntry {
            path: "image".into(),
            source: TgzSource::Symlink {
                target: "packages.txt".into(),
            },
        });
        assert_eq!(
            Fixture::of(entries).refused(),
            "s.tgz: image is a symlink, not a regular file"
        );
        let mut entries = valid_entries();
        entries.retain(|e| e.path != "stemcell.MF");
        entries.push(TgzEntry {
            path: "stemcell.MF".into(),
            source: TgzSource::Dir,
        });
        assert_eq!(
            Fixture::of(entries).refused(),
            "s.tgz: stemcell.MF is a directory, not a regular file"
        );
    }

    #[test]
    fn manifest_problems_name_the_file_line_and_field() {
        let text = manifest(&sha256_string(IMAGE))
            .replace("operating_system: debian-bookworm\n", "")
            .replace("stemcell_formats: [local]", "stemcell_formats: local");
        assert_eq!(
            Fixture::of(replaced("stemcell.MF", text.as_bytes())).refused(),
            "s.tgz/stemcell.MF:1:1: missing required key 'operating_system' (e.g. \
             debian-bookworm)\n\
             s.tgz/stemcell.MF:5:19: stemcell_formats: expected a list of image formats, found \
             \"local\""
        );
        let not_yaml = Fixture::of(replaced("stemcell.MF", b"name: [unclosed\n")).refused();
        assert!(not_yaml.starts_with("s.tgz/stemcell.MF:"), "{not_yaml}");
        assert_eq!(
            Fixture::of(replaced("stemcell.MF", b"name: \xff\n")).refused(),
            "s.tgz/stemcell.MF: not UTF-8 text"
        );
        let bad_digest = manifest("sha256:1234");
        assert_eq!(
            Fixture::of(replaced("stemcell.MF", bad_digest.as_bytes())).refused(),
            "s.tgz/stemcell.MF:4:7: sha1: 'sha256:1234' is not a digest of 'image' (expected \
             sha256:<64 hex digits>, or a legacy sha1 of 40 hex digits)"
        );
    }

    #[test]
    fn unsafe_archives_are_refused_by_the_archive_reader() {
        let manifest = manifest(&sha256_string(IMAGE));
        let climbing = raw_tgz(&[
            ("stemcell.MF", EntryType::Regular, manifest.as_bytes(), ""),
            ("image", EntryType::Regular, IMAGE, ""),
            ("../evil", EntryType::Regular, b"x", ""),
        ]);
        assert_eq!(
            Fixture::new(climbing).refused(),
            "s.tgz: entry '../evil' climbs out of the archive with '..'"
        );
        let device = raw_tgz(&[
            ("stemcell.MF", EntryType::Regular, manifest.as_bytes(), ""),
            ("image", EntryType::Char, b"", ""),
        ]);
        assert_eq!(
            Fixture::new(device).refused(),
            "s.tgz: entry 'image' is a character device; only files, directories and links \
             are allowed"
        );
        let mut truncated = write_tgz(Vec::new(), valid_entries()).unwrap();
        truncated.truncate(truncated.len() - 4);
        let message = Fixture::new(truncated).refused();
        assert!(
            message.starts_with("s.tgz: truncated or corrupt gzip data"),
            "{message}"
        );
    }
}
