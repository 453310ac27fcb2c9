//! Log files: a size-rotated writer for process output, and reading the last lines of a
//! log for error messages.
//!
//! Rotation (`x.log` → `x.log.1` → … → `x.log.<keep>`, the oldest dropped) happens before a
//! write that would take the file past the limit, so a file only exceeds it when a single
//! write does. The writer keeps its file open; rotation renames and reopens.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A log file rotated by size.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingLog {
    /// Opens (appends to) `path`, rotating at `max_bytes`, keeping `keep` old files.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<RotatingLog> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            keep,
        })
    }

    /// Appends `data`, rotating first when it would not fit.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + data.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for index in (1..self.keep).rev() {
            match std::fs::rename(rotated(&self.path, index), rotated(&self.path, index + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `x.log.<index>`.
pub fn rotated(path: &Path, index: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The last `lines` lines of `path` (empty when it does not exist).
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    tail_from(path, 0, lines)
}

/// The last `lines` lines written to `path` after byte `offset` (what one run of a script
/// added to a log it appends to).
pub fn tail_from(path: &Path, offset: u64, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    last_lines(&read_from(path, offset, WINDOW), lines)
}

/// The last `lines` non-empty-terminated lines of `text`.
pub fn last_lines(text: &str, lines: usize) -> Vec<String> {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// What was written to `path` from `offset` on, at most its last `limit` bytes.
pub fn read_from(path: &Path, offset: u64, limit: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return String::new();
    };
    let start = offset.max(len.saturating_sub(limit)).min(len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `limit` bytes of `text` (cut at a character boundary).
pub fn keep_end(text: String, limit: u64) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if text.len() <= limit {
        return text;
    }
    let mut cut = text.len() - limit;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    text[cut..].to_string()
}

/// The size of `path` now (0 when it does not exist).
pub fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_limit_and_keeps_five() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.stdout.log");
        let mut log = RotatingLog::open(&path, 10, 5).unwrap();
        for i in 0..8 {
            log.write(format!("line {i}\n").as_bytes()).unwrap(); // 7 bytes each
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 7\n");
        assert_eq!(
            std::fs::read_to_string(rotated(&path, 1)).unwrap(),
            "line 6\n"
        );
        assert_eq!(
            std::fs::read_to_string(rotated(&path, 5)).unwrap(),
            "line 2\n"
        );
        assert!(!rotated(&path, 6).exists());
        // Two writes fit in one file when they stay under the limit.
        let other = dir.path().join("other.log");
        let mut log = RotatingLog::open(&other, 10, 5).unwrap();
        log.write(b"12345").unwrap();
        log.write(b"12345").unwrap();
        assert!(!rotated(&other, 1).exists());
        log.write(b"x").unwrap();
        assert_eq!(
            std::fs::read_to_string(rotated(&other, 1)).unwrap(),
            "1234512345"
        );
    }

    #[test]
    fn reopening_continues_counting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        RotatingLog::open(&path, 10, 2)
            .unwrap()
            .write(b"123456")
            .unwrap();
        let mut log = RotatingLog::open(&path, 10, 2).unwrap();
        log.write(b"123456").unwrap();
        assert_eq!(
            std::fs::read_to_string(rotated(&path, 1)).unwrap(),
            "123456"
        );
    }

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail(&path, 2), ["two", "three"]);
        assert_eq!(tail(&path, 10), ["one", "two", "three"]);
        assert_eq!(tail_from(&path, 4, 10), ["two", "three"]);
        assert!(tail(&dir.path().join("missing"), 3).is_empty());
    }
}
