//! `.tgz` archives, the format of release and stemcell tarballs: reading untrusted ones
//! safely, writing reproducible ones.
//!
//! Reading ([`extract`], [`verify`], [`read_file`]) streams the gzip data through a counter
//! and checks every entry before anything is written: no absolute paths, no `..`, no device
//! files or fifos, no duplicates, no entry below a link, links that stay inside the archive
//! (resolved the way the kernel would, following other links of the archive), at most
//! [`Limits::max_entries`] entries, and an expansion bounded by the compressed size (gzip
//! bombs) and by a cap. Truncated or corrupt gzip data is an error, also when only the
//! trailer is missing.
//!
//! Writing ([`write_tgz`]) makes the same bytes from the same entries: entries sorted, parent
//! directories added, mtime 0, uid/gid 0, no user or group names, modes 0644/0755, a gzip
//! header without name or time, one fixed compression level.
//!
//! Invariant: reading writes only inside the fresh staging directory it creates, never
//! through a link, and that directory is gone when reading fails.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use flate2::{Compression, GzBuilder};
use tar::{EntryType, Header};
use tempfile::TempDir;

/// Bounds on what reading an archive may cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How many bytes the gzip stream may expand to per compressed byte.
    pub max_ratio: u64,
    /// Expansion always allowed whatever the ratio: an archive of a few small files is
    /// mostly 512-byte tar headers full of zeros, which compress far better than 20:1
    /// without being a bomb.
    pub ratio_floor: u64,
    /// The most uncompressed bytes, whatever the compressed size.
    pub max_unpacked_bytes: u64,
    /// The most entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_ratio: 20,
            ratio_floor: 1 << 20,
            max_unpacked_bytes: 32 << 30,
            max_entries: 1_000_000,
        }
    }
}

impl Limits {
    /// The most uncompressed bytes allowed for an archive of `compressed` bytes.
    pub fn bound(&self, compressed: u64) -> u64 {
        self.max_ratio
            .saturating_mul(compressed)
            .max(self.ratio_floor)
            .min(self.max_unpacked_bytes)
    }
}

/// Why an archive was refused. Every message names the archive and, where there is one, the
/// entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive file cannot be opened or read.
    #[error("{archive}: cannot read: {source}")]
    Open { archive: String, source: io::Error },
    /// The staging directory cannot be made.
    #[error("{archive}: cannot create a staging directory in {parent}: {source}")]
    Staging {
        archive: String,
        parent: String,
        source: io::Error,
    },
    /// An entry cannot be written into the staging directory.
    #[error("{archive}: cannot unpack '{entry}': {source}")]
    Write {
        archive: String,
        entry: String,
        source: io::Error,
    },
    /// The gzip stream ends early or does not decode.
    #[error("{archive}: truncated or corrupt gzip data ({detail})")]
    Gzip { archive: String, detail: String },
    /// The tar stream inside does not parse.
    #[error("{archive}: corrupt tar data ({detail})")]
    Tar { archive: String, detail: String },
    /// The archive expands past its bound.
    #[error(
        "{archive}: expands to more than {bound} bytes from {compressed} compressed bytes \
         (limit: {ratio}x its size, at most {cap} bytes); refusing a likely gzip bomb"
    )]
    TooLarge {
        archive: String,
        bound: u64,
        compressed: u64,
        ratio: u64,
        cap: u64,
    },
    /// Too many entries.
    #[error("{archive}: more than {limit} entries")]
    TooManyEntries { archive: String, limit: u64 },
    /// An entry name that is not UTF-8.
    #[error("{archive}: entry name {entry:?} is not UTF-8")]
    NotUtf8 { archive: String, entry: String },
    /// `/etc/passwd`.
    #[error("{archive}: entry '{entry}' has an absolute path")]
    AbsolutePath { archive: String, entry: String },
    /// `../x`.
    #[error("{archive}: entry '{entry}' climbs out of the archive with '..'")]
    ParentDir { archive: String, entry: String },
    /// A symlink whose target resolves outside the archive (or loops).
    #[error("{archive}: symlink '{entry}' points outside the archive (to '{target}')")]
    SymlinkOutside {
        archive: String,
        entry: String,
        target: String,
    },
    /// A hard link to an absolute path or through `..`.
    #[error("{archive}: hard link '{entry}' points outside the archive (to '{target}')")]
    HardLinkOutside {
        archive: String,
        entry: String,
        target: String,
    },
    /// A hard link to something that is not a file written before it.
    #[error(
        "{archive}: hard link '{entry}' points to '{target}', which is not a file earlier in \
         the archive"
    )]
    HardLinkDangling {
        archive: String,
        entry: String,
        target: String,
    },
    /// An entry below a link or a file (`link/x`), which would be written through it.
    #[error("{archive}: entry '{entry}' is below '{parent}', which is not a directory")]
    BelowNonDirectory {
        archive: String,
        entry: String,
        parent: String,
    },
    /// A device, fifo or other special entry.
    #[error(
        "{archive}: entry '{entry}' is a {kind}; only files, directories and links are allowed"
    )]
    Special {
        archive: String,
        entry: String,
        kind: &'static str,
    },
    /// The same path twice.
    #[error("{archive}: duplicate entry '{entry}'")]
    Duplicate { archive: String, entry: String },
}

/// What an entry is, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// Whether any execute bit is set.
        executable: bool,
    },
    /// A directory (`explicit` when the archive has an entry for it, not only entries below).
    Dir {
        /// Whether the archive has its own entry.
        explicit: bool,
    },
    /// A symlink to a relative target inside the archive.
    Symlink {
        /// The link text.
        target: String,
    },
    /// A hard link to an earlier file.
    HardLink {
        /// The normalized path of the file it links to.
        target: String,
    },
}

/// The entries of an archive by normalized path (no `./`, no trailing `/`), directories
/// below which entries sit included.
pub type Entries = BTreeMap<String, EntryKind>;

/// An archive unpacked into a staging directory that is removed when this is dropped.
#[derive(Debug)]
pub struct Extracted {
    dir: TempDir,
    entries: Entries,
    digests: BTreeMap<String, String>,
}

impl Extracted {
    /// The staging directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What was unpacked.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// The lowercase hex SHA-256 of a file entry, computed while it was unpacked (so callers
    /// need not read a large file again to hash it).
    pub fn sha256(&self, name: &str) -> Option<&str> {
        self.digests.get(name).map(String::as_str)
    }

    /// The staging directory, to keep or drop.
    pub fn into_dir(self) -> TempDir {
        self.dir
    }
}

/// Unpacks the archive at `path` into a new directory inside `staging_parent`, checking every
/// entry first. On error nothing of it remains.
pub fn extract(
    path: &Path,
    limits: &Limits,
    staging_parent: &Path,
) -> Result<Extracted, ArchiveError> {
    let dir = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(staging_parent)
        .map_err(|source| ArchiveError::Staging {
            archive: shown(path),
            parent: staging_parent.display().to_string(),
            source,
        })?;
    let root = dir.path().to_path_buf();
    let name = shown(path);
    let mut digests = BTreeMap::new();
    let entries = walk(path, &name, limits, |entry, kind, data| {
        if let Some(digest) = unpack(&root, entry, kind, data)? {
            digests.insert(entry.to_string(), digest);
        }
        Ok(())
    })?;
    Ok(Extracted {
        dir,
        entries,
        digests,
    })
}

/// Reads the whole archive without writing anything and returns its entries.
pub fn verify(path: &Path, limits: &Limits) -> Result<Entries, ArchiveError> {
    verify_named(path, &shown(path), limits)
}

/// A path as messages show it: without a leading `./`.
fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    match text.strip_prefix("./") {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => text,
    }
}

/// [`verify`], naming the archive `name` in errors (e.g. `r.tgz/packages/x.tgz` for an
/// archive inside another).
pub fn verify_named(path: &Path, name: &str, limits: &Limits) -> Result<Entries, ArchiveError> {
    walk(path, name, limits, |_, _, data| copy(data, &mut io::sink()))
}

/// Reads the whole archive (checking it as [`verify`] does, naming it `name` in errors) and
/// returns the bytes of its file entry `entry_name`, when there is one. The file is held in
/// memory; its size is bounded by the archive's limits.
pub fn read_file_named(
    path: &Path,
    name: &str,
    limits: &Limits,
    entry_name: &str,
) -> Result<Option<Vec<u8>>, ArchiveError> {
    let mut found = None;
    walk(path, name, limits, |entry, kind, data| {
        if entry == entry_name && matches!(kind, EntryKind::File { .. }) {
            let mut bytes = Vec::new();
            copy(data, &mut bytes)?;
            found = Some(bytes);
            Ok(())
        } else {
            copy(data, &mut io::sink())
        }
    })?;
    Ok(found)
}

/// Why a visitor of entries stopped.
enum VisitFailure {
    /// Reading the entry's data failed (the stream, or the size limit).
    Stream(io::Error),
    /// Writing it into the staging directory failed.
    Write(io::Error),
}

/// Copies an entry's data, telling reading failures from writing ones.
fn copy(data: &mut dyn Read, out: &mut dyn Write) -> Result<(), VisitFailure> {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = match data.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VisitFailure::Stream(e)),
        };
        out.write_all(&buffer[..n]).map_err(VisitFailure::Write)?;
    }
}

/// Why the counting reader stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trip {
    None,
    Gzip,
    Limit,
}

/// Counts decompressed bytes and fails once they pass the bound; remembers whether a failure
/// came from the gzip decoder.
struct Counted<R> {
    inner: R,
    count: u64,
    bound: u64,
    trip: Rc<Cell<Trip>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.trip.get() == Trip::Limit {
            return Err(io::Error::other("archive size limit reached"));
        }
        let n = self.inner.read(buf).inspect_err(|_| {
            self.trip.set(Trip::Gzip);
        })?;
        self.count += n as u64;
        if self.count > self.bound {
            self.trip.set(Trip::Limit);
            return Err(io::Error::other("archive size limit reached"));
        }
        Ok(n)
    }
}

/// The archive being walked, to name it in errors.
struct Walker<'a> {
    archive: String,
    limits: &'a Limits,
    compressed: u64,
    trip: Rc<Cell<Trip>>,
}

impl Walker<'_> {
    /// The error an IO failure of the stream stands for.
    fn stream_error(&self, error: io::Error) -> ArchiveError {
        match self.trip.get() {
            Trip::Limit => ArchiveError::TooLarge {
                archive: self.archive.clone(),
                bound: self.limits.bound(self.compressed),
                compressed: self.compressed,
                ratio: self.limits.max_ratio,
                cap: self.limits.max_unpacked_bytes,
            },
            Trip::Gzip => ArchiveError::Gzip {
                archive: self.archive.clone(),
                detail: error.to_string(),
            },
            Trip::None => ArchiveError::Tar {
                archive: self.archive.clone(),
                detail: error.to_string(),
            },
        }
    }

    fn path_error(&self, problem: PathProblem, entry: &str) -> ArchiveError {
        let (archive, entry) = (self.archive.clone(), entry.to_string());
        match problem {
            PathProblem::Absolute => ArchiveError::AbsolutePath { archive, entry },
            PathProblem::ParentDir => ArchiveError::ParentDir { archive, entry },
        }
    }
}

/// Checks every entry of the archive at `path` and hands each, in archive order, to `visit`
/// with a reader of its data. `visit` sees only entries whose own header passed the checks;
/// symlinks are resolved against the whole archive once it has been read.
fn walk(
    path: &Path,
    archive: &str,
    limits: &Limits,
    mut visit: impl FnMut(&str, &EntryKind, &mut dyn Read) -> Result<(), VisitFailure>,
) -> Result<Entries, ArchiveError> {
    let archive = archive.to_string();
    let open_error = |source| ArchiveError::Open {
        archive: archive.clone(),
        source,
    };
    let file = File::open(path).map_err(open_error)?;
    let compressed = file.metadata().map_err(open_error)?.len();
    let trip = Rc::new(Cell::new(Trip::None));
    let walker = Walker {
        archive: archive.clone(),
        limits,
        compressed,
        trip: trip.clone(),
    };
    let counted = Counted {
        inner: GzDecoder::new(io::BufReader::new(file)),
        count: 0,
        bound: limits.bound(compressed),
        trip,
    };
    let mut tar = tar::Archive::new(counted);
    let mut entries = Entries::new();
    let mut explicit_dirs = BTreeSet::new();
    let mut count = 0u64;
    for entry in tar.entries().map_err(|e| walker.stream_error(e))? {
        let mut entry = entry.map_err(|e| walker.stream_error(e))?;
        let header_type = entry.header().entry_type();
        if header_type.is_pax_global_extensions() {
            continue;
        }
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                archive,
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw).map_err(|e| ArchiveError::NotUtf8 {
            archive: archive.clone(),
            entry: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })?;
        let normalized = match normalize(&name) {
            Ok(Some(normalized)) => normalized,
            // The archive root (`./`) itself.
            Ok(None) if header_type.is_dir() => continue,
            Ok(None) => {
                return Err(ArchiveError::Duplicate {
                    archive,
                    entry: name,
                });
            }
            Err(problem) => return Err(walker.path_error(problem, &name)),
        };
        let kind = match header_type {
            EntryType::Regular | EntryType::Continuous => EntryKind::File {
                size: entry.size(),
                executable: entry.header().mode().unwrap_or(0o644) & 0o111 != 0,
            },
            EntryType::Directory => EntryKind::Dir { explicit: true },
            EntryType::Symlink => {
                let target = link_name(&entry, &archive, &name)?;
                if target.starts_with('/') || target.is_empty() {
                    return Err(ArchiveError::SymlinkOutside {
                        archive,
                        entry: name,
                        target,
                    });
                }
                EntryKind::Symlink { target }
            }
            EntryType::Link => {
                let target = link_name(&entry, &archive, &name)?;
                let Ok(Some(resolved)) = normalize(&target) else {
                    return Err(ArchiveError::HardLinkOutside {
                        archive,
                        entry: name,
                        target,
                    });
                };
                if !matches!(entries.get(&resolved), Some(EntryKind::File { .. })) {
                    return Err(ArchiveError::HardLinkDangling {
                        archive,
                        entry: name,
                        target,
                    });
                }
                EntryKind::HardLink { target: resolved }
            }
            other => {
                return Err(ArchiveError::Special {
                    archive,
                    entry: name,
                    kind: special_kind(other),
                });
            }
        };
        // Every ancestor must be a directory, so that nothing is ever written through a
        // link; ancestors without an entry of their own become implicit directories.
        let parts: Vec<&str> = normalized.split('/').collect();
        for depth in 1..parts.len() {
            let ancestor = parts[..depth].join("/");
            match entries.get(&ancestor) {
                Some(EntryKind::Dir { .. }) => {}
                Some(_) => {
                    return Err(ArchiveError::BelowNonDirectory {
                        archive,
                        entry: name,
                        parent: ancestor,
                    });
                }
                None => {
                    entries.insert(ancestor, EntryKind::Dir { explicit: false });
                }
            }
        }
        let duplicate = match (entries.get(&normalized), &kind) {
            (None, _) => false,
            (Some(EntryKind::Dir { .. }), EntryKind::Dir { .. }) => {
                explicit_dirs.contains(&normalized)
            }
            (Some(_), _) => true,
        };
        if duplicate {
            return Err(ArchiveError::Duplicate {
                archive,
                entry: name,
            });
        }
        if matches!(kind, EntryKind::Dir { .. }) {
            explicit_dirs.insert(normalized.clone());
        }
        entries.insert(normalized.clone(), kind.clone());
        visit(&normalized, &kind, &mut entry).map_err(|failure| match failure {
            VisitFailure::Stream(error) => walker.stream_error(error),
            VisitFailure::Write(source) => ArchiveError::Write {
                archive: archive.clone(),
                entry: name.clone(),
                source,
            },
        })?;
    }
    // The tar end marker may come before the end of the gzip stream: read the rest, so that
    // a missing trailer (CRC, length) or a bomb hidden after the marker is noticed.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| walker.stream_error(e))?;
    for (name, kind) in &entries {
        if let EntryKind::Symlink { target } = kind {
            if resolve_symlink(&entries, name, target).is_none() {
                return Err(ArchiveError::SymlinkOutside {
                    archive,
                    entry: name.clone(),
                    target: target.clone(),
                });
            }
        }
    }
    Ok(entries)
}

fn link_name<R: Read>(
    entry: &tar::Entry<'_, R>,
    archive: &str,
    name: &str,
) -> Result<String, ArchiveError> {
    let raw = entry
        .link_name_bytes()
        .map(|b| b.into_owned())
        .unwrap_or_default();
    String::from_utf8(raw).map_err(|e| ArchiveError::NotUtf8 {
        archive: archive.to_string(),
        entry: format!("{name} -> {}", String::from_utf8_lossy(e.as_bytes())),
    })
}

fn special_kind(entry_type: EntryType) -> &'static str {
    match entry_type {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

enum PathProblem {
    Absolute,
    ParentDir,
}

/// `./a//b/` → `a/b`; `None` for the root itself.
fn normalize(name: &str) -> Result<Option<String>, PathProblem> {
    if name.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(PathProblem::ParentDir),
            other => parts.push(other),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Where the symlink `name` → `target` leads, following the archive's other symlinks as the
/// kernel would; `None` when it leaves the archive or loops. Names that are not in the
/// archive are taken as they are (a dangling link inside the archive is harmless).
fn resolve_symlink(entries: &Entries, name: &str, target: &str) -> Option<String> {
    let mut parts: Vec<String> = name.split('/').map(str::to_string).collect();
    parts.pop();
    let mut hops = 0;
    resolve_into(entries, &mut parts, target, &mut hops)?;
    Some(parts.join("/"))
}

fn resolve_into(
    entries: &Entries,
    parts: &mut Vec<String>,
    target: &str,
    hops: &mut u32,
) -> Option<()> {
    if target.starts_with('/') {
        return None;
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            name => {
                parts.push(name.to_string());
                if let Some(EntryKind::Symlink { target }) = entries.get(&parts.join("/")) {
                    *hops += 1;
                    if *hops > 40 {
                        return None;
                    }
                    parts.pop();
                    resolve_into(entries, parts, target, hops)?;
                }
            }
        }
    }
    Some(())
}

/// A writer that hashes what it writes.
struct HashingWriter<W> {
    inner: W,
    sha256: sha2::Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.sha256, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one entry under `root`; returns the SHA-256 (hex) of a file's content.
fn unpack(
    root: &Path,
    name: &str,
    kind: &EntryKind,
    data: &mut dyn Read,
) -> Result<Option<String>, VisitFailure> {
    let destination = root.join(name);
    if let Some(parent) = destination.parent() {
        // Every ancestor was checked to be a directory of the archive, never a link.
        fs::create_dir_all(parent).map_err(VisitFailure::Write)?;
    }
    match kind {
        EntryKind::Dir { .. } => match fs::create_dir(&destination) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && destination.is_dir() => Ok(None),
            other => other.map(|()| None).map_err(VisitFailure::Write),
        },
        EntryKind::File { executable, .. } => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if *executable { 0o755 } else { 0o644 })
                .open(&destination)
                .map_err(VisitFailure::Write)?;
            let mut writer = HashingWriter {
                inner: io::BufWriter::with_capacity(1 << 20, file),
                sha256: sha2::Digest::new(),
            };
            copy(data, &mut writer)?;
            writer.flush().map_err(VisitFailure::Write)?;
            let digest = sha2::Digest::finalize(writer.sha256);
            Ok(Some(digest.iter().map(|b| format!("{b:02x}")).collect()))
        }
        EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &destination)
            .map(|()| None)
            .map_err(VisitFailure::Write),
        EntryKind::HardLink { target } => fs::hard_link(root.join(target), &destination)
            .map(|()| None)
            .map_err(VisitFailure::Write),
    }
}

/// One entry to write with [`write_tgz`].
#[derive(Clone, Debug)]
pub struct TgzEntry {
    /// The path inside the archive, relative, `/`-separated, without `..`.
    pub path: String,
    /// What it holds.
    pub source: TgzSource,
}

/// The content of an entry to write.
#[derive(Clone, Debug)]
pub enum TgzSource {
    /// A directory (mode 0755).
    Dir,
    /// A file read from disk; mode 0755 when `executable`, else 0644.
    File {
        /// Where to read it.
        path: PathBuf,
        /// Whether it is executable.
        executable: bool,
    },
    /// A file from memory.
    Bytes {
        /// Its content.
        data: Vec<u8>,
        /// Whether it is executable.
        executable: bool,
    },
    /// A symlink.
    Symlink {
        /// The link text.
        target: String,
    },
}

/// Writes a reproducible `.tgz` of `entries` to `out`: entries are sorted by path, missing
/// parent directories are added, and headers carry no time, owner or host detail.
pub fn write_tgz<W: Write>(out: W, entries: Vec<TgzEntry>) -> io::Result<W> {
    let mut by_path: BTreeMap<String, TgzSource> = BTreeMap::new();
    for entry in entries {
        let path = entry.path.trim_end_matches('/').to_string();
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            by_path
                .entry(format!("{}/", parts[..depth].join("/")))
                .or_insert(TgzSource::Dir);
        }
        let key = match entry.source {
            TgzSource::Dir => format!("{path}/"),
            _ => path,
        };
        by_path.insert(key, entry.source);
    }
    let encoder = GzBuilder::new()
        .operating_system(255)
        .mtime(0)
        .write(out, Compression::new(6));
    let mut builder = tar::Builder::new(encoder);
    for (path, source) in by_path {
        let mut header = Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("")?;
        header.set_groupname("")?;
        match source {
            TgzSource::Dir => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, &path, io::empty())?;
            }
            TgzSource::File {
                path: from,
                executable,
            } => {
                let file = File::open(&from)?;
                let size = file.metadata()?.len();
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(size);
                builder.append_data(&mut header, &path, file.take(size))?;
            }
            TgzSource::Bytes { data, executable } => {
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &path, data.as_slice())?;
            }
            TgzSource::Symlink { target } => {
                header.set_entry_type(EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, &path, &target)?;
            }
        }
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_tgz(entries: &[(&str, EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut header = Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            if !link.is_empty() {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = GzBuilder::new().write(Vec::new(), Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn check(entries: &[(&str, EntryType, &[u8], &str)]) -> Result<Entries, ArchiveError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tgz");
        fs::write(&path, raw_tgz(entries)).unwrap();
        verify(&path, &Limits::default())
    }

    #[test]
    fn normalizes_names() {
        assert!(matches!(normalize("./a//b/"), Ok(Some(p)) if p == "a/b"));
        assert!(matches!(normalize("./"), Ok(None)));
        assert!(matches!(normalize("a/../b"), Err(PathProblem::ParentDir)));
        assert!(matches!(normalize("/a"), Err(PathProblem::Absolute)));
    }

    #[test]
    fn symlinks_resolve_through_other_links() {
        let ok = check(&[
            ("d/", EntryType::Directory, b"", ""),
            ("d/f", EntryType::Regular, b"x", ""),
            ("l", EntryType::Symlink, b"", "d/f"),
            ("d/up", EntryType::Symlink, b"", "../l"),
        ])
        .unwrap();
        assert_eq!(ok.len(), 4);
        // `a/b/s2` points to `c` (inside); `x` walks through it and then up twice, which
        // is inside when read as text but outside once `s2` is followed.
        let escape = check(&[
            ("a/b/s2", EntryType::Symlink, b"", "../../c"),
            ("c/", EntryType::Directory, b"", ""),
            ("x", EntryType::Symlink, b"", "a/b/s2/../.."),
        ]);
        assert!(
            matches!(escape, Err(ArchiveError::SymlinkOutside { ref entry, .. }) if entry == "x"),
            "{escape:?}"
        );
        let looping = check(&[
            ("a", EntryType::Symlink, b"", "b"),
            ("b", EntryType::Symlink, b"", "a"),
        ]);
        assert!(matches!(looping, Err(ArchiveError::SymlinkOutside { .. })));
    }

    #[test]
    fn nothing_is_written_below_a_link() {
        let through = check(&[
            ("d/", EntryType::Directory, b"", ""),
            ("l", EntryType::Symlink, b"", "d"),
            ("l/f", EntryType::Regular, b"x", ""),
        ]);
        assert!(
            matches!(through, Err(ArchiveError::BelowNonDirectory { ref parent, .. }) if parent == "l"),
            "{through:?}"
        );
    }

    #[test]
    fn written_archives_are_reproducible_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "content\n").unwrap();
        let entries = || {
            vec![
                TgzEntry {
                    path: "z/b".into(),
                    source: TgzSource::File {
                        path: file.clone(),
                        executable: true,
                    },
                },
                TgzEntry {
                    path: "a".into(),
                    source: TgzSource::Bytes {
                        data: b"a".to_vec(),
                        executable: false,
                    },
                },
                TgzEntry {
                    path: "z/link".into(),
                    source: TgzSource::Symlink { target: "b".into() },
                },
            ]
        };
        let one = write_tgz(Vec::new(), entries()).unwrap();
        let mut reversed = entries();
        reversed.reverse();
        let two = write_tgz(Vec::new(), reversed).unwrap();
        assert_eq!(one, two);
        // gzip header: no name flag, mtime 0, OS unknown.
        assert_eq!(&one[3..10], &[0, 0, 0, 0, 0, 0, 255]);
        let path = dir.path().join("a.tgz");
        fs::write(&path, &one).unwrap();
        let extracted = extract(&path, &Limits::default(), dir.path()).unwrap();
        let names: Vec<&str> = extracted.entries().keys().map(String::as_str).collect();
        assert_eq!(names, ["a", "z", "z/b", "z/link"]);
        assert_eq!(
            fs::read_to_string(extracted.dir().join("z/link")).unwrap(),
            "content\n"
        );
        let mode = fs::metadata(extracted.dir().join("z/b"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o755
        );
    }

    #[test]
    fn the_bound_has_a_floor_and_a_cap() {
        let limits = Limits {
            max_ratio: 20,
            ratio_floor: 1000,
            max_unpacked_bytes: 10_000,
            max_entries: 10,
        };
        assert_eq!(limits.bound(10), 1000);
        assert_eq!(limits.bound(100), 2000);
        assert_eq!(limits.bound(1000), 10_000);
    }
}
