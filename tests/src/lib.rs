//! Helpers for the end-to-end tests in `tests/tests/`: the built binaries, the fixtures, and
//! running a command to capture its output.

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
