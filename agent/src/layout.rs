//! Where things live under the agent's root (`/var/vcap` on a VM), in BOSH's layout:
//!
//! ```text
//! <root>/data/packages/<name>/<version>   unpacked compiled packages
//! <root>/packages/<name>                  -> data/packages/<name>/<version>
//! <root>/data/jobs/<name>/<digest>        unpacked rendered jobs
//! <root>/jobs/<name>                      -> data/jobs/<name>/<digest>
//! <root>/jobs/<name>/packages/<p>         -> data/packages/<p>/<version>
//! <root>/data/<job>, <root>/data/<job>/tmp, <root>/store/<job>
//! <root>/sys/log/<job>/<process>.{stdout,stderr}.log, <root>/sys/run/<job>/<process>.pid
//! <root>/bosh/spec.json                   the applied spec
//! <root>/bosh/dns/records.json            the DNS records of the last `sync_dns`
//! ```
//!
//! **Invariant:** pure; names that reach a path were checked with [`check_name`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The agent's root directory and the paths below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The root itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/data`, the ephemeral disk.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// `<root>/store`, where the persistent disk shows.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// `<root>/bosh`, the agent's own state.
    pub fn bosh(&self) -> PathBuf {
        self.root.join("bosh")
    }

    /// `<root>/bosh/spec.json`.
    pub fn spec_file(&self) -> PathBuf {
        self.bosh().join("spec.json")
    }

    /// `<root>/bosh/desired_state`: `running` after `start`, `stopped` after `stop`.
    pub fn desired_state_file(&self) -> PathBuf {
        self.bosh().join("desired_state")
    }

    /// `<root>/bosh/dns/records.json`: the DNS records of the last `sync_dns`, served again
    /// by a restarted agent.
    pub fn dns_records_file(&self) -> PathBuf {
        self.bosh().join("dns").join("records.json")
    }

    /// `<root>/bosh/mounted_disk`: the CID of the disk shown at `store`.
    pub fn mounted_disk_file(&self) -> PathBuf {
        self.bosh().join("mounted_disk")
    }

    /// `<root>/data/tmp`, for downloads and archives in the making.
    pub fn tmp(&self) -> PathBuf {
        self.data().join("tmp")
    }

    /// `<root>/packages`.
    pub fn packages(&self) -> PathBuf {
        self.root.join("packages")
    }

    /// `<root>/packages/<name>`.
    pub fn package_link(&self, name: &str) -> PathBuf {
        self.packages().join(name)
    }

    /// `<root>/data/packages`.
    pub fn package_store(&self) -> PathBuf {
        self.data().join("packages")
    }

    /// `<root>/data/packages/<name>/<version>`.
    pub fn package_dir(&self, name: &str, version: &str) -> PathBuf {
        self.package_store().join(name).join(version)
    }

    /// `<root>/jobs`.
    pub fn jobs(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// `<root>/jobs/<name>`.
    pub fn job_link(&self, name: &str) -> PathBuf {
        self.jobs().join(name)
    }

    /// `<root>/data/jobs`.
    pub fn job_store(&self) -> PathBuf {
        self.data().join("jobs")
    }

    /// `<root>/data/jobs/<name>/<digest>`.
    pub fn job_dir(&self, name: &str, digest: &str) -> PathBuf {
        self.job_store().join(name).join(digest)
    }

    /// `<root>/data/<job>`.
    pub fn job_data(&self, job: &str) -> PathBuf {
        self.data().join(job)
    }

    /// `<root>/data/<job>/tmp`, the `TMPDIR` of the job's processes.
    pub fn job_tmp(&self, job: &str) -> PathBuf {
        self.job_data(job).join("tmp")
    }

    /// `<root>/store/<job>`.
    pub fn job_store_dir(&self, job: &str) -> PathBuf {
        self.store().join(job)
    }

    /// `<root>/sys/log`.
    pub fn logs(&self) -> PathBuf {
        self.root.join("sys").join("log")
    }

    /// `<root>/sys/log/<job>`.
    pub fn job_logs(&self, job: &str) -> PathBuf {
        self.logs().join(job)
    }

    /// `<root>/sys/run`.
    pub fn run(&self) -> PathBuf {
        self.root.join("sys").join("run")
    }

    /// `<root>/sys/run/<job>`.
    pub fn job_run(&self, job: &str) -> PathBuf {
        self.run().join(job)
    }

    /// `<root>/sys/run/<job>/<process>.pid`.
    pub fn pid_file(&self, job: &str, process: &str) -> PathBuf {
        self.job_run(job).join(format!("{process}.pid"))
    }

    /// `<root>/sys/log/<job>/<process>.stdout.log`.
    pub fn stdout_log(&self, job: &str, process: &str) -> PathBuf {
        self.job_logs(job).join(format!("{process}.stdout.log"))
    }

    /// `<root>/sys/log/<job>/<process>.stderr.log`.
    pub fn stderr_log(&self, job: &str, process: &str) -> PathBuf {
        self.job_logs(job).join(format!("{process}.stderr.log"))
    }

    /// `<root>/data/compile/<package>`, where a package's source is unpacked and built.
    pub fn compile_dir(&self, package: &str) -> PathBuf {
        self.data().join("compile").join(package)
    }
}

/// Checks that `name` can be one path component: not empty, not `.` or `..`, no `/`, no
/// NUL, no leading dot (our temporary names start with one).
pub fn check_name(kind: &'static str, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255;
    if bad {
        return Err(Error::BadName {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_boshs_layout() {
        let layout = Layout::new("/var/vcap");
        assert_eq!(
            layout.package_dir("redis", "abc.1"),
            Path::new("/var/vcap/data/packages/redis/abc.1")
        );
        assert_eq!(layout.job_link("web"), Path::new("/var/vcap/jobs/web"));
        assert_eq!(
            layout.stderr_log("web", "server"),
            Path::new("/var/vcap/sys/log/web/server.stderr.log")
        );
        assert_eq!(
            layout.dns_records_file(),
            Path::new("/var/vcap/bosh/dns/records.json")
        );
        assert_eq!(
            layout.pid_file("web", "server"),
            Path::new("/var/vcap/sys/run/web/server.pid")
        );
    }

    #[test]
    fn names_must_be_plain() {
        for good in ["web", "redis-server", "a_b.c", "1.2+dev.3"] {
            assert!(check_name("job", good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", ".hidden", "x\0y"] {
            let message = check_name("job", bad).unwrap_err().to_string();
            assert!(message.starts_with("job name"), "{message}");
        }
    }
}
