//! Deploys on this host's Docker engine: the Debian stemcell (built by `build-stemcell` from
//! a cached root file system and the agent this build made), a director configured for the
//! Docker CPI, cloud configs on test-own /24s of 10.244.0.0/16, and what a director leaves
//! in Docker.
//!
//! The cache (`DIRECTOR_TEST_CACHE`, default `/var/cache/director-tests`) keeps the Debian
//! root file system (`roots/`, made on first use: debootstrap and packages, about four
//! minutes; `.ci/run` fills it ahead of the suite) and the stemcells built from it
//! (`stemcells/<agent digest>/`), so every test process of a run shares one build.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{User, target_dir};

/// Where built root file systems and stemcells are kept between tests and runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DIRECTOR_TEST_CACHE")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/director-tests"), PathBuf::from)
}

/// Runs `docker ARGS…`; it must succeed. Answers stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("docker {args:?}: {error} (is Docker installed?)"));
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SHA-256 of a file, in hex (`sha256sum`).
fn digest(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The docker-rootfs Debian bookworm stemcell `version` carrying this build's agent. Built
/// once per agent and version; test processes build one at a time (`flock`), the first
/// one in a fresh cache also making the root file system.
pub fn debian_stemcell(version: &str) -> PathBuf {
    let agent = target_dir().join("bosh-agent");
    let cache = cache_dir();
    let dir = cache
        .join("stemcells")
        .join(&digest(&agent)[..16])
        .join(version);
    let tarball = dir.join(format!("bosh-docker-debian-bookworm-{version}.tgz"));
    if tarball.is_file() {
        return tarball;
    }
    std::fs::create_dir_all(&cache).unwrap();
    // Inside the lock: check again, build into a fresh directory, rename into place.
    let script = r#"
        set -e
        [ -f "$TARBALL" ] && exit 0
        rm -rf "$DIR.tmp" && mkdir -p "$DIR.tmp"
        "$BUILDER" --agent "$AGENT" --format docker-rootfs --version "$VERSION" \
            --base-cache "$CACHE/roots" --output "$DIR.tmp" >"$DIR.tmp.log" 2>&1 \
            || { cat "$DIR.tmp.log" >&2; exit 1; }
        rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
        # Stemcells of other agents (earlier builds) older than a day go.
        find "$CACHE/stemcells" -mindepth 1 -maxdepth 1 -type d -mtime +1 \
            ! -name "$(basename "$(dirname "$DIR")")" -exec rm -rf {} +
    "#;
    let out = Command::new("flock")
        .arg(cache.join(".lock"))
        .args(["sh", "-c", script])
        .env("TARBALL", &tarball)
        .env("DIR", &dir)
        .env("BUILDER", target_dir().join("build-stemcell"))
        .env("AGENT", &agent)
        .env("VERSION", version)
        .env("CACHE", &cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the Debian stemcell {version}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tarball.is_file(), "no {}", tarball.display());
    tarball
}

/// A user whose director uses the Docker CPI (`cpi: {type: docker}` plus `extra`), and
/// removes, when dropped, whatever its VMs left in Docker.
pub struct DockerUser {
    /// The user (its director configured for Docker).
    pub user: User,
    /// The director's id: the `bosh.director` label of everything it makes.
    pub director_id: String,
}

impl DockerUser {
    /// Starts the director with `cpi: {type: docker}`.
    pub fn start() -> DockerUser {
        DockerUser::with_config("cpi: {type: docker}\n")
    }

    /// Starts the director with `config` (its `cpi` and anything else).
    pub fn with_config(config: &str) -> DockerUser {
        let user = User::with_director_config(config);
        let director_id = std::fs::read_to_string(user.data_dir().join("director-id"))
            .unwrap()
            .trim()
            .to_string();
        DockerUser { user, director_id }
    }

    /// The containers, volumes and networks carrying this director's label.
    pub fn leftovers(&self) -> Vec<String> {
        let label = format!("label=bosh.director={}", self.director_id);
        let mut left = Vec::new();
        for (kind, args) in [
            (
                "container",
                vec!["ps", "-a", "--filter", &label, "--format", "{{.Names}}"],
            ),
            (
                "volume",
                vec!["volume", "ls", "--filter", &label, "--format", "{{.Name}}"],
            ),
            (
                "network",
                vec!["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
            ),
        ] {
            left.extend(
                docker(&args)
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(|name| format!("{kind} {name}")),
            );
        }
        left
    }
}

impl DockerUser {
    /// `delete-deployment` of `deployment`, then checks what it leaves in Docker: BOSH
    /// keeps persistent disks, orphaned, so their volumes (`disks` of them) are all that is
    /// left; `clean-up --all` deletes them, and then nothing of this director is left.
    pub fn delete_deployment_and_orphaned_disks(&self, deployment: &str, disks: usize) {
        let out = self
            .user
            .run(&["-d", deployment, "delete-deployment", "-n"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let mut orphaned: Vec<String> = self
            .user
            .json(&["orphaned-disks"])
            .as_array()
            .unwrap()
            .iter()
            .map(|disk| format!("volume {}", disk["cid"].as_str().unwrap()))
            .collect();
        orphaned.sort();
        assert_eq!(orphaned.len(), disks, "the deployment's disks are orphaned");
        let mut left = self.leftovers();
        left.sort();
        assert_eq!(
            left, orphaned,
            "delete-deployment left only the orphaned disks' volumes in Docker"
        );
        let out = self.user.run(&["clean-up", "--all", "-n"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "clean-up --all left these in Docker: {left:?}"
        );
    }
}

impl Drop for DockerUser {
    fn drop(&mut self) {
        let label = format!("label=bosh.director={}", self.director_id);
        let names = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|line| !line.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let remove = |args: &[&str], names: Vec<String>| {
            if !names.is_empty() {
                let _ = Command::new("docker").args(args).args(&names).output();
            }
        };
        remove(
            &["rm", "-f", "-v"],
            names(&["ps", "-aq", "--filter", &label]),
        );
        remove(
            &["volume", "rm", "-f"],
            names(&["volume", "ls", "-q", "--filter", &label]),
        );
        remove(
            &["network", "rm"],
            names(&["network", "ls", "-q", "--filter", &label]),
        );
        remove(&["rmi", "-f"], names(&["images", "-q", "--filter", &label]));
    }
}

/// The Docker cloud config (`manifests/cloud-config-docker.yml`) moved to the test's own
/// /24, `10.244.NET.0/24`; set on the user's director.
pub fn set_docker_cloud_config(user: &User, net: u8) {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let text = std::fs::read_to_string(manifests.join("cloud-config-docker.yml")).unwrap();
    assert!(
        text.contains("10.244.10."),
        "the Docker cloud config moved off 10.244.10.0/24"
    );
    let path = user.home.path().join("cloud-config-docker.yml");
    std::fs::write(&path, text.replace("10.244.10.", &format!("10.244.{net}."))).unwrap();
    let out = user.run(&["update-cloud-config", path.to_str().unwrap(), "-n"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// `manifests/quickstart.yml` with `manifests/ops/docker-stemcell.yml` applied, as
/// arguments to `director deploy`.
pub fn quickstart_args() -> Vec<String> {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    vec![
        manifests.join("quickstart.yml").display().to_string(),
        "-o".to_string(),
        manifests
            .join("ops/docker-stemcell.yml")
            .display()
            .to_string(),
    ]
}
