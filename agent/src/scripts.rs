//! Lifecycle scripts (`pre-start`, `post-start`, `post-deploy`, `pre-stop`, `post-stop`), errands' `run`, and
//! drain scripts of the installed jobs.
//!
//! Scripts of all jobs run in parallel, in the job's directory, without a timeout (as in
//! BOSH), and with a clean environment: the job's basics (`PATH`, `TMPDIR`, `HOME`, see
//! [`supervisor::base_env`]) and what the director passes (`BOSH_JOB_STATE`, …), never the
//! agent's own (which may hold its bus password). Their output is
//! appended to `<root>/sys/log/<job>/<script>.{stdout,stderr}.log`; a failure names the job,
//! how the script ended and the last lines it wrote to stderr in this run. A cancelled task
//! kills the scripts it started.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::drain;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::logs;
use crate::state::describe_exit;
use crate::supervisor;

/// Lines of stderr a failure reports.
pub const FAILURE_LINES: usize = 20;

/// The scripts `run_script` may run (an errand's `bin/run` goes through `run_errand`).
pub const LIFECYCLE_SCRIPTS: &[&str] = &[
    "pre-start",
    "post-start",
    "post-deploy",
    "pre-stop",
    "post-stop",
];

/// How much of an errand's stdout and of its stderr the answer carries (the end of each):
/// together they stay below the bus's 1 MiB message limit, as BOSH's do.
pub const ERRAND_OUTPUT_LIMIT: u64 = 400 * 1024;

struct Script {
    job: String,
    name: String,
    path: PathBuf,
    cwd: PathBuf,
    /// The job's basic environment.
    base_env: Vec<(String, String)>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

fn script(layout: &Layout, job: &str, name: &str) -> Option<Script> {
    let cwd = layout.job_link(job);
    let path = cwd.join("bin").join(name);
    path.is_file().then(|| Script {
        job: job.to_string(),
        name: name.to_string(),
        path,
        cwd,
        base_env: supervisor::base_env(layout, job),
        stdout_log: layout.job_logs(job).join(format!("{name}.stdout.log")),
        stderr_log: layout.job_logs(job).join(format!("{name}.stderr.log")),
    })
}

impl Script {
    fn command(&self, args: &[&str], env: &[(String, String)]) -> Result<tokio::process::Command> {
        let log_dir = self.stderr_log.parent().expect("logs live in a directory");
        std::fs::create_dir_all(log_dir).map_err(Error::io("create", log_dir))?;
        let mut command = tokio::process::Command::new(&self.path);
        command
            .args(args)
            .env_clear()
            .envs(self.base_env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stderr(append(&self.stderr_log)?)
            .kill_on_drop(true);
        Ok(command)
    }
}

fn append(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("open", path))
}

/// Runs `bin/<name>` of every job in `jobs` that has one, in parallel; fails naming every
/// job whose script failed.
pub async fn run_lifecycle(
    layout: &Layout,
    jobs: &[String],
    name: &str,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    if !LIFECYCLE_SCRIPTS.contains(&name) {
        return Err(Error::arguments(
            "run_script",
            format!(
                "unknown script {name:?}, expected one of {}",
                LIFECYCLE_SCRIPTS.join(", ")
            ),
        ));
    }
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut running = JoinSet::new();
    for (index, job) in jobs.iter().enumerate() {
        let Some(script) = script(layout, job, name) else {
            continue;
        };
        let env = env.clone();
        running.spawn(async move { (index, run_one(script, env).await) });
    }
    let mut failures = Vec::new();
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((index, Err(message))) => failures.push((index, message)),
            Ok((_, Ok(()))) => {}
            Err(e) => failures.push((usize::MAX, format!("script task failed: {e}"))),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort();
    Err(Error::Scripts(
        failures
            .into_iter()
            .map(|(_, message)| message)
            .collect::<Vec<_>>()
            .join("\n"),
    ))
}

async fn run_one(script: Script, env: Vec<(String, String)>) -> std::result::Result<(), String> {
    let label = format!("{} script of job '{}'", script.name, script.job);
    let offset = logs::size_of(&script.stderr_log);
    let mut command = script
        .command(&[], &env)
        .map_err(|e| format!("{label}: {e}"))?;
    command.stdout(append(&script.stdout_log).map_err(|e| format!("{label}: {e}"))?);
    agent_log!("running {label}");
    let exit = command
        .status()
        .await
        .map_err(|e| format!("{label} did not start: {e}"))?;
    if exit.success() {
        agent_log!("{label} succeeded");
        return Ok(());
    }
    let mut message = format!("{label} {}", describe_exit(exit));
    let tail = logs::tail_from(&script.stderr_log, offset, FAILURE_LINES);
    if !tail.is_empty() {
        message.push_str(": ");
        message.push_str(&tail.join("\n"));
    }
    agent_log!("{message}");
    Err(message)
}

/// Runs the errand: `bin/run` of job `only`, or of every job in `jobs` that has one, one
/// after another (each job's output after a `==> job <==` line when there are several),
/// stopping at the first that fails. Output also goes to the jobs' `run.*.log`. A script
/// that runs and exits non-zero is a result, not an error: the director decides.
pub async fn run_errand(
    layout: &Layout,
    jobs: &[String],
    only: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<agent_protocol::ErrandResult> {
    if let Some(name) = only
        && !jobs.iter().any(|j| j == name)
    {
        return Err(Error::arguments(
            "run_errand",
            format!(
                "job '{name}' is not applied here (jobs: {})",
                jobs.join(", ")
            ),
        ));
    }
    let scripts: Vec<Script> = jobs
        .iter()
        .filter(|j| only.is_none_or(|name| name == j.as_str()))
        .filter_map(|job| script(layout, job, "run"))
        .collect();
    if scripts.is_empty() {
        return Err(Error::Scripts(match only {
            Some(name) => format!("no errand to run: job '{name}' has no bin/run"),
            None => format!(
                "no errand to run: none of the jobs ({}) has a bin/run",
                jobs.join(", ")
            ),
        }));
    }
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let several = scripts.len() > 1;
    let mut result = agent_protocol::ErrandResult::default();
    for script in scripts {
        let offsets = (
            logs::size_of(&script.stdout_log),
            logs::size_of(&script.stderr_log),
        );
        let label = format!("errand of job '{}'", script.job);
        let mut command = script.command(&[], &env)?;
        command.stdout(append(&script.stdout_log)?);
        agent_log!("running {label}");
        let exit = command
            .status()
            .await
            .map_err(|e| Error::Scripts(format!("{label} did not start: {e}")))?;
        let header = if several {
            format!("==> {} <==\n", script.job)
        } else {
            String::new()
        };
        result.stdout += &header;
        result.stdout += &logs::read_from(&script.stdout_log, offsets.0, ERRAND_OUTPUT_LIMIT);
        result.stderr += &header;
        result.stderr += &logs::read_from(&script.stderr_log, offsets.1, ERRAND_OUTPUT_LIMIT);
        result.exit_code = exit.code().unwrap_or(128 + exit_signal(exit));
        agent_log!("{label} {}", describe_exit(exit));
        if !exit.success() {
            break;
        }
    }
    result.stdout = logs::keep_end(result.stdout, ERRAND_OUTPUT_LIMIT);
    result.stderr = logs::keep_end(result.stderr, ERRAND_OUTPUT_LIMIT);
    Ok(result)
}

fn exit_signal(exit: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    exit.signal().unwrap_or(0)
}

/// Runs `bin/drain` of every job in `jobs` that has one, in parallel, with `args` for each
/// job and `env`; returns each job's integer (jobs without a drain script are left out).
pub async fn run_drains(
    layout: &Layout,
    jobs: Vec<(String, [&'static str; 2])>,
    env: Vec<(String, String)>,
) -> Result<Vec<(String, i64)>> {
    let mut running = JoinSet::new();
    for (index, (job, args)) in jobs.into_iter().enumerate() {
        let Some(script) = script(layout, &job, "drain") else {
            continue;
        };
        let env = env.clone();
        running.spawn(async move { (index, job, run_drain(script, args, env).await) });
    }
    let mut values = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((index, job, Ok(value))) => values.push((index, job, value)),
            Ok((index, _, Err(message))) => failures.push((index, message)),
            Err(e) => failures.push((usize::MAX, format!("drain task failed: {e}"))),
        }
    }
    if !failures.is_empty() {
        failures.sort();
        let messages: Vec<String> = failures.into_iter().map(|(_, m)| m).collect();
        return Err(Error::Drain(messages.join("\n")));
    }
    values.sort();
    Ok(values
        .into_iter()
        .map(|(_, job, value)| (job, value))
        .collect())
}

async fn run_drain(
    script: Script,
    args: [&'static str; 2],
    env: Vec<(String, String)>,
) -> std::result::Result<i64, String> {
    let label = format!("drain script of job '{}'", script.job);
    let offset = logs::size_of(&script.stderr_log);
    let mut command = script
        .command(&args, &env)
        .map_err(|e| format!("{label}: {e}"))?;
    command.stdout(Stdio::piped());
    agent_log!("running {label} {} {}", args[0], args[1]);
    // Not `output()`: tokio's pipes stderr too, and stderr belongs in the log.
    let mut child = command
        .spawn()
        .map_err(|e| format!("{label} did not start: {e}"))?;
    let mut stdout_bytes = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_end(&mut stdout_bytes).await;
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("cannot wait for the {label}: {e}"))?;
    let output = std::process::Output {
        status,
        stdout: stdout_bytes,
        stderr: Vec::new(),
    };
    if let Ok(mut log) = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&script.stdout_log)
        .await
    {
        let _ = log.write_all(&output.stdout).await;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let mut message = format!("{label} {}", describe_exit(output.status));
        let stdout = stdout.trim();
        if !stdout.is_empty() {
            message.push_str(&format!(", output {stdout:?}"));
        }
        let tail = logs::tail_from(&script.stderr_log, offset, FAILURE_LINES);
        if !tail.is_empty() {
            message.push_str(": ");
            message.push_str(&tail.join("\n"));
        }
        return Err(message);
    }
    let value = drain::parse_output(&stdout).map_err(|reason| format!("{label} {reason}"))?;
    agent_log!("{label} answered {value}");
    Ok(value)
}
