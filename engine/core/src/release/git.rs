//! What git says about a release directory: the commit it is at and whether it has
//! uncommitted changes. `git` runs as a subprocess; without git (or outside a repository)
//! the commit is `non-git`, as bosh-cli records it, and in a repository without commits it is
//! `empty`.

use std::path::Path;
use std::process::Command;

/// The git state of a release directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitState {
    /// Short commit hash, `non-git` or `empty`.
    pub commit_hash: String,
    /// `git status --porcelain` of the directory (empty when clean or not in git).
    pub changes: String,
}

impl GitState {
    /// Whether there are uncommitted changes.
    pub fn dirty(&self) -> bool {
        !self.changes.trim().is_empty()
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()
}

/// Reads the git state of `dir`.
pub fn state(dir: &Path) -> GitState {
    let non_git = GitState {
        commit_hash: "non-git".to_string(),
        changes: String::new(),
    };
    match git(dir, &["rev-parse", "--is-inside-work-tree"]) {
        Some(out) if out.status.success() => {}
        _ => return non_git,
    }
    let commit_hash = match git(dir, &["rev-parse", "--short", "HEAD"]) {
        Some(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
        _ => "empty".to_string(),
    };
    let changes = git(dir, &["status", "--porcelain", "--", "."])
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    GitState {
        commit_hash,
        changes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git runs")
            .status;
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn commit_and_changes_of_a_directory() {
        let repo = tempfile::tempdir().unwrap();
        let dir = repo.path().join("release");
        std::fs::create_dir(&dir).unwrap();
        run(repo.path(), &["init", "-q"]);
        assert_eq!(state(&dir).commit_hash, "empty");
        std::fs::write(dir.join("a"), "a").unwrap();
        std::fs::write(repo.path().join("outside"), "x").unwrap();
        run(repo.path(), &["add", "release/a"]);
        run(repo.path(), &["commit", "-q", "-m", "a"]);
        let clean = state(&dir);
        assert!(clean.commit_hash.len() >= 7, "{clean:?}");
        // A change outside the release directory does not count.
        assert!(!clean.dirty(), "{clean:?}");
        std::fs::write(dir.join("a"), "b").unwrap();
        assert!(state(&dir).dirty());
    }
}
