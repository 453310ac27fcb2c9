//! Helpers for the end-to-end tests in `tests/tests/`: the built binaries, the fixtures, and
//! running a command to capture its output.

pub mod dns;
pub mod docker;
pub mod etcd;
pub mod hello;
pub mod local_vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's `target/<profile>` directory, found from the test binary's own path
/// (`target/<profile>/deps/<test>`), so tests run the binaries this build produced.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// The `director` binary of this build. Panics with a hint when it was not built (run the
/// tests through `cargo test --workspace` / `cargo nextest run --workspace`, which build it).
pub fn director_bin() -> PathBuf {
    let path = target_dir().join("director");
    assert!(
        path.exists(),
        "{} was not built: run the suite with `cargo nextest run --workspace`",
        path.display()
    );
    path
}

/// The fixtures folder of this crate.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The vendored bosh-deployment repository (Apache-2.0; LICENSE and NOTICE inside).
pub fn bosh_deployment() -> PathBuf {
    fixtures().join("bosh-deployment")
}

/// A `director` command with a clean environment for colors.
pub fn director() -> Command {
    let mut command = Command::new(director_bin());
    command
        .env("NO_COLOR", "1")
        .env_remove("DIRECTOR_DEPLOYMENT");
    command
}

/// Runs a command and returns its output, with stdout/stderr as strings.
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `command` to completion.
pub fn run(command: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the command starts");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// An isolated user: its own XDG directories, so its dev director (and that director's
/// VMs, bus and disks) are its own. On drop, every VM of its director is deleted through
/// the `cpi` binary and the director is stopped (killed if it does not stop).
pub struct User {
    /// The user's home (XDG directories, files the test writes).
    pub home: tempfile::TempDir,
    /// A director started with `serve --config` instead of the dev director: URL, token.
    configured: Option<(String, String, std::process::Child)>,
}

impl Default for User {
    fn default() -> User {
        User::new()
    }
}

/// Starts `director serve --config CONFIG`, its output going to `log`.
pub fn serve(config: &Path, log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(director_bin())
        .args(["serve", "--config"])
        .arg(config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl User {
    /// A user with a dev director started on demand.
    pub fn new() -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            configured: None,
        }
    }

    /// A user whose director runs `serve --config director.yml`; `extra` is appended to the
    /// configuration (`agent: {...}`, `mbus: {...}`), whose `data_dir` is the dev one.
    pub fn with_director_config(extra: &str) -> User {
        let mut user = User::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = user.home.path().join("director.yml");
        std::fs::create_dir_all(user.data_dir()).unwrap();
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ndata_dir: {}\n{extra}\n",
                user.data_dir().display()
            ),
        )
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let child = user.start_serving(&url, "director.log");
        let token = std::fs::read_to_string(user.data_dir().join("token")).unwrap();
        user.configured = Some((url, token.trim().to_string(), child));
        user
    }

    /// Starts `serve --config director.yml` (logging to `log` in the home) and waits until
    /// it listens.
    // The child is answered and kept in the user, which the lint cannot follow.
    #[allow(clippy::zombie_processes)]
    fn start_serving(&self, url: &str, log: &str) -> std::process::Child {
        let config = self.home.path().join("director.yml");
        let log = self.home.path().join(log);
        let mut child = serve(&config, &log);
        let token_path = self.data_dir().join("token");
        let started = std::time::Instant::now();
        loop {
            let token = std::fs::read_to_string(&token_path).unwrap_or_default();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !token.trim().is_empty() && text.contains("listening on") {
                return child;
            }
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the director at {url} did not start: {text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `kill -9` of the director [`User::with_director_config`] started: it stops at once,
    /// whatever it was doing. [`User::start_director_again`] starts it again.
    pub fn kill_director(&mut self) {
        let (_, _, child) = self.configured.as_mut().expect("a configured director");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the configured director again, on the same configuration and data, logging to
    /// `log` in the home.
    pub fn start_director_again(&mut self, log: &str) {
        let url = self
            .configured
            .as_ref()
            .expect("a configured director")
            .0
            .clone();
        let child = self.start_serving(&url, log);
        self.configured.as_mut().unwrap().2 = child;
    }

    /// The pid of the configured director.
    pub fn director_pid(&self) -> u32 {
        self.configured
            .as_ref()
            .expect("a configured director")
            .2
            .id()
    }

    /// The director's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data/director")
    }

    /// A `director` command for this user.
    pub fn director(&self) -> Command {
        let mut command = Command::new(director_bin());
        command
            .env("XDG_DATA_HOME", self.home.path().join("data"))
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("NO_COLOR", "1")
            // Never the user's default dev director port.
            .env("DIRECTOR_DEV_LISTEN", "127.0.0.1:0")
            .env_remove("DIRECTOR_URL")
            .env_remove("DIRECTOR_TOKEN")
            .env_remove("DIRECTOR_CA_CERT")
            .env_remove("DIRECTOR_DEPLOYMENT")
            .current_dir(self.home.path());
        if let Some((url, token, _)) = &self.configured {
            command
                .env("DIRECTOR_URL", url)
                .env("DIRECTOR_TOKEN", token);
        }
        command
    }

    /// Runs `director ARGS…`.
    pub fn run(&self, args: &[&str]) -> Run {
        run(self.director().args(args))
    }

    /// Runs `director ARGS… --json` and parses stdout; the command must succeed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(&[args, &["--json"]].concat());
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
    }

    /// A typed API client of this user's director: the configured one, or the dev director
    /// (started by an earlier command).
    pub fn api(&self) -> director_api::client::Client {
        if let Some((url, token, _)) = &self.configured {
            return director_api::client::Client::new(url, Some(token.clone()), None)
                .expect("a client")
                .reading_local_files();
        }
        let text = std::fs::read_to_string(self.data_dir().join("dev.yml"))
            .expect("a dev director runs (run a command first)");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
                .unwrap_or_else(|| panic!("dev.yml has no {name}: {text}"))
        };
        director_api::client::Client::new(&field("url"), Some(field("token")), None)
            .expect("a client")
            .reading_local_files()
    }

    /// The pid of the dev director, when one runs.
    pub fn dev_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("dev.yml")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("pid: "))
            .and_then(|p| p.trim().parse().ok())
    }

    /// How many blobs the director stores.
    pub fn blob_count(&self) -> usize {
        std::fs::read_dir(self.data_dir().join("blobs/blobs"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A copy of releases/hello in a fresh git repository.
    pub fn hello_release(&self) -> PathBuf {
        let dir = self.home.path().join("hello");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../releases/hello"),
            &dir,
        );
        commit_all(&dir);
        dir
    }

    /// The hello release as a tarball.
    pub fn hello_tarball(&self) -> PathBuf {
        let dir = self.hello_release();
        let out = self.run(&[
            "create-release",
            dir.to_str().unwrap(),
            "--tarball",
            "hello.tgz",
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        self.home.path().join("hello.tgz")
    }

    /// Deletes every VM of this user's director (what a test leaves running).
    fn delete_vms(&self) {
        let root = self.data_dir().join("cpi");
        let Ok(entries) = std::fs::read_dir(root.join("vms")) else {
            return;
        };
        for entry in entries.flatten() {
            let cid = entry.file_name().to_string_lossy().into_owned();
            let request = format!(
                r#"{{"method":"delete_vm","arguments":["{cid}"],"context":{{"director_uuid":"tests","root":"{}"}},"api_version":2}}"#,
                root.display()
            );
            if let Ok(mut child) = Command::new(target_dir().join("cpi"))
                .arg("--root")
                .arg(&root)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                use std::io::Write;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(request.as_bytes());
                }
                let _ = child.wait();
            }
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        self.delete_vms();
        if let Some((_, _, mut child)) = self.configured.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .output();
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        let pid = self.dev_pid();
        let _ = self.director().arg("stop-server").output();
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}

/// Makes `dir` a fresh git repository with everything in it committed (as a release
/// directory is when `create-release` records its commit).
pub fn commit_all(dir: &Path) {
    for args in [
        vec!["init", "-q"],
        vec!["add", "-A"],
        vec![
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "release",
        ],
    ] {
        let status = Command::new("git")
            .args(&args)
            .current_dir(dir)
            .status()
            .expect("git is installed");
        assert!(status.success(), "git {args:?} in {}", dir.display());
    }
}

/// Copies a release directory, leaving out what `create-release` writes.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if ["dev_releases", ".dev_builds", "blobs"].contains(&name.to_str().unwrap_or("")) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
