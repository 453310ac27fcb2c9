//! The stemcell's `image`: a gzipped tar of a root filesystem, what `docker import` takes.
//!
//! Entries are sorted by name, depth first, as `tar --sort=name` writes them, so the same
//! tree gives the same bytes. Everything a root filesystem needs is kept: modes with setuid,
//! setgid and sticky bits, numeric owners, modification times, symlinks as they are
//! (absolute targets point inside the image once it is a root), hard links as links to the
//! first path. Left out: device files, fifos and sockets (docker and the local CPI provide
//! `/dev`), the contents of other file systems mounted below the root (a `/proc` left
//! mounted), and extended attributes (no package of `packages.list` needs file
//! capabilities). The gzip header has no name and no time.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// Lowercase hex SHA-256 of the bytes written.
    pub sha256: String,
    /// How many bytes were written.
    pub size: u64,
    /// How many entries the tar has.
    pub entries: u64,
    /// Paths left out because they are device files, fifos or sockets, or mount points whose
    /// contents were left out (with a trailing `/`).
    pub skipped: Vec<String>,
}

/// Writes the tree at `root` as a gzipped tar into `out`; returns `out` and a summary.
pub fn write_image<W: Write>(root: &Path, out: W) -> io::Result<(W, ImageSummary)> {
    let hashing = HashingWriter {
        inner: out,
        sha256: Sha256::new(),
        size: 0,
    };
    let gzip = GzBuilder::new()
        .operating_system(255)
        .mtime(0)
        .write(hashing, Compression::new(6));
    let mut walker = Walker {
        root: root.to_path_buf(),
        root_device: fs::symlink_metadata(root)?.dev(),
        builder: tar::Builder::new(gzip),
        first_links: HashMap::new(),
        entries: 0,
        skipped: Vec::new(),
    };
    walker.directory(Path::new(""))?;
    let Walker {
        builder,
        entries,
        skipped,
        ..
    } = walker;
    let hashing = builder.into_inner()?.finish()?;
    let summary = ImageSummary {
        sha256: hex(&hashing.sha256.finalize()),
        size: hashing.size,
        entries,
        skipped,
    };
    Ok((hashing.inner, summary))
}

struct Walker<W: Write> {
    root: PathBuf,
    root_device: u64,
    builder: tar::Builder<W>,
    /// The first path of each file with more than one link, by (device, inode).
    first_links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
    skipped: Vec<String>,
}

impl<W: Write> Walker<W> {
    /// Writes the entries below `relative` (a directory), sorted by name, depth first.
    fn directory(&mut self, relative: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(self.root.join(relative))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            let path = relative.join(&name);
            let absolute = self.root.join(&path);
            let metadata = fs::symlink_metadata(&absolute)?;
            let kind = metadata.file_type();
            let mut header = Header::new_gnu();
            header.set_mode(metadata.mode() & 0o7777);
            header.set_uid(u64::from(metadata.uid()));
            header.set_gid(u64::from(metadata.gid()));
            header.set_mtime(u64::try_from(metadata.mtime()).unwrap_or(0));
            header.set_size(0);
            if kind.is_dir() {
                header.set_entry_type(EntryType::Directory);
                self.builder.append_data(&mut header, &path, io::empty())?;
                self.entries += 1;
                if metadata.dev() == self.root_device {
                    self.directory(&path)?;
                } else {
                    self.skipped.push(format!("{}/", path.display()));
                }
            } else if kind.is_symlink() {
                header.set_entry_type(EntryType::Symlink);
                let target = fs::read_link(&absolute)?;
                self.builder.append_link(&mut header, &path, target)?;
                self.entries += 1;
            } else if kind.is_file() {
                let key = (metadata.dev(), metadata.ino());
                if metadata.nlink() > 1 {
                    if let Some(first) = self.first_links.get(&key) {
                        header.set_entry_type(EntryType::Link);
                        self.builder.append_link(&mut header, &path, first)?;
                        self.entries += 1;
                        continue;
                    }
                    self.first_links.insert(key, path.clone());
                }
                header.set_entry_type(EntryType::Regular);
                header.set_size(metadata.len());
                let data = Exact {
                    inner: File::open(&absolute)?.take(metadata.len()),
                    remaining: metadata.len(),
                    path: &absolute,
                };
                self.builder.append_data(&mut header, &path, data)?;
                self.entries += 1;
            } else {
                self.skipped.push(path.display().to_string());
            }
        }
        Ok(())
    }
}

/// Reads exactly the size written in the tar header, failing if the file shrank meanwhile
/// (a short entry would corrupt the archive).
struct Exact<'a, R> {
    inner: R,
    remaining: u64,
    path: &'a Path,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} changed while it was archived", self.path.display()),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    sha256: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::Command;

    use flate2::read::GzDecoder;

    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/c")).unwrap();
        fs::write(root.join("b/x"), "x\n").unwrap();
        fs::set_permissions(root.join("b/x"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(root.join("b/x"), root.join("b/y")).unwrap();
        fs::write(root.join("b-c"), "").unwrap();
        for (path, mode) in [("b", 0o755), ("b/c", 0o755), ("b-c", 0o644)] {
            fs::set_permissions(root.join(path), fs::Permissions::from_mode(mode)).unwrap();
        }
        fs::write(root.join("a"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::create_dir(root.join("tmp")).unwrap();
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("b/x", root.join("l")).unwrap();
        symlink("/etc/passwd", root.join("abs")).unwrap();
        let fifo = Command::new("mkfifo").arg(root.join("f")).status().unwrap();
        assert!(fifo.success());
        dir
    }

    /// (path, type, mode, link target) of each entry, in archive order.
    fn listing(bytes: &[u8]) -> Vec<(String, EntryType, u32, String)> {
        let mut archive = tar::Archive::new(GzDecoder::new(bytes));
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().display().to_string(),
                    header.entry_type(),
                    header.mode().unwrap(),
                    entry
                        .link_name()
                        .unwrap()
                        .map(|l| l.display().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_sorted_and_keep_what_a_root_needs() {
        let dir = tree();
        let (bytes, summary) = write_image(dir.path(), Vec::new()).unwrap();
        let entry =
            |path: &str, kind, mode, link: &str| (path.to_string(), kind, mode, link.to_string());
        assert_eq!(
            listing(&bytes),
            [
                entry("a", EntryType::Regular, 0o4755, ""),
                entry("abs", EntryType::Symlink, 0o777, "/etc/passwd"),
                entry("b", EntryType::Directory, 0o755, ""),
                entry("b/c", EntryType::Directory, 0o755, ""),
                entry("b/x", EntryType::Regular, 0o640, ""),
                entry("b/y", EntryType::Link, 0o640, "b/x"),
                entry("b-c", EntryType::Regular, 0o644, ""),
                entry("l", EntryType::Symlink, 0o777, "b/x"),
                entry("tmp", EntryType::Directory, 0o1777, ""),
            ]
        );
        assert_eq!(summary.entries, 9);
        assert_eq!(summary.skipped, ["f"]);
        assert_eq!(summary.size, bytes.len() as u64);
        assert_eq!(summary.sha256, hex(&Sha256::digest(&bytes)));
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes() {
        let dir = tree();
        let (one, _) = write_image(dir.path(), Vec::new()).unwrap();
        let (two, _) = write_image(dir.path(), Vec::new()).unwrap();
        assert_eq!(one, two);
        // gzip header: no name flag, mtime 0, OS unknown.
        assert_eq!(&one[3..10], &[0, 0, 0, 0, 0, 0, 255]);
    }
}
