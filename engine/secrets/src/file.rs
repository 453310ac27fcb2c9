//! The one atomic file write.
//!
//! The content goes to a temporary file beside the target, created with `O_CREAT|O_EXCL|
//! O_NOFOLLOW` under a random name (so no other user can pre-create it or plant a symlink
//! there) and with its final mode from the first byte; it is synced, renamed over the target,
//! and the directory is synced so the rename survives a crash. On any error the temporary
//! file is removed and the target is as it was.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `content` to `path` atomically with `mode`, creating the parent directory.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |file| file.write_all(content))
}

/// [`write_atomic`] with mode 0600: for anything that holds a secret (tokens, keys,
/// passwords, vars stores, the bus's account files).
pub fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    write_atomic(path, content, 0o600)
}

/// Creates a temporary file beside `path` with `mode`, lets `write` fill it, then syncs it
/// and renames it over `path` (syncing the directory). For content that is streamed.
pub fn write_atomic_with<E>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<io::Error>,
{
    let mut file = AtomicFile::create(path, mode)?;
    write(file.file())?;
    file.commit()?;
    Ok(())
}

/// A file being written that appears at its path only when [`AtomicFile::commit`] is
/// called: until then it is a temporary file beside it (removed when dropped), so a writer
/// that fails half-way, or an async download that errors, leaves the target as it was.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    temporary: PathBuf,
    file: File,
}

impl AtomicFile {
    /// Creates the temporary file for `path`, with `mode`, creating the parent directory.
    pub fn create(path: &Path, mode: u32) -> io::Result<AtomicFile> {
        let directory = parent(path);
        std::fs::create_dir_all(directory)?;
        let (temporary, file) = create_temporary(directory, path, mode)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            temporary,
            file,
        })
    }

    /// The file to write into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs the file, renames it over the target and syncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        // Renaming an open file is fine on Unix; the handle closes when `self` drops.
        std::fs::rename(&self.temporary, &self.path)?;
        // The rename is durable only once the directory is; a directory that cannot be
        // opened for syncing (unusual permissions) does not make the write fail.
        if let Ok(directory) = File::open(parent(&self.path)) {
            let _ = directory.sync_all();
        }
        self.temporary = PathBuf::new();
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temporary.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.<name>.<random>.tmp` beside the target, created exclusively, never through a symlink.
fn create_temporary(directory: &Path, path: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last_error = None;
    for _ in 0..16 {
        let temporary = directory.join(format!(".{name}.{}.tmp", random_suffix()?));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&temporary);
        match opened {
            Ok(file) => {
                // The umask may have narrowed the mode; the caller asked for exactly this one.
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
                return Ok((temporary, file));
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

/// 128 random bits as hex, from the kernel.
fn random_suffix() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(io::Error::from)?;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_whole_files_with_the_mode_asked_for() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sub/creds.yml");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        write_atomic(&path, b"three", 0o644).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["creds.yml"], "no temporary file is left");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state");
        write_private(&path, b"kept").unwrap();
        let result: io::Result<()> = write_atomic_with(&path, 0o600, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(result.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_atomic_file_dropped_before_commit_leaves_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("download.tgz");
        let mut file = AtomicFile::create(&path, 0o644).unwrap();
        file.file().write_all(b"half").unwrap();
        drop(file);
        assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 0);
        let mut file = AtomicFile::create(&path, 0o644).unwrap();
        file.file().write_all(b"whole").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let directory = tempfile::tempdir().unwrap();
        let victim = directory.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let path = directory.path().join("link");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
