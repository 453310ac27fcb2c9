//! The process supervisor (bpm-style, without containers).
//!
//! Each process of each job gets a monitor task that spawns it in its own process group
//! with only its `bpm.yml` environment plus `PATH`, `TMPDIR` (`<root>/data/<job>/tmp`) and
//! `HOME` (`<root>/data/<job>`), its working directory (default `<root>/jobs/<job>`), and
//! its limits (through `prlimit`, see `bpm`). Its stdout and stderr go through pipes into
//! `<root>/sys/log/<job>/<process>.{stdout,stderr}.log`, rotated by size; its pid into
//! `<root>/sys/run/<job>/<process>.pid`. When it exits while it should run, the monitor
//! restarts it after a backoff (`state::next_backoff`); when `stop` comes, it sends the
//! shutdown signal to the group, waits the grace period, then kills the group and reaps.
//!
//! A restarted agent finds the processes of its predecessor through the pid files and
//! stops them ([`stop_recorded`]) before starting its own.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bpm::{BpmProcess, ShutdownSignal};
use crate::layout::Layout;
use crate::logs::{self, RotatingLog};
use crate::settings::Tunables;
use crate::state::{self, Phase, ProcessStatus};
use agent_protocol::ProcessState;

/// Lines of stderr a failing process reports.
pub const STDERR_LINES: usize = 20;

/// The `PATH` processes get.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment a job's processes and scripts start from (nothing of the agent's
/// own, which may hold its bus password): `PATH` ([`DEFAULT_PATH`]), `TMPDIR`
/// (`<root>/data/<job>/tmp`) and `HOME` (`<root>/data/<job>`).
pub fn base_env(layout: &Layout, job: &str) -> Vec<(String, String)> {
    vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        (
            "TMPDIR".to_string(),
            layout.job_tmp(job).display().to_string(),
        ),
        (
            "HOME".to_string(),
            layout.job_data(job).display().to_string(),
        ),
    ]
}

/// Everything needed to run one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The job.
    pub job: String,
    /// The process, from `bpm.yml`.
    pub process: BpmProcess,
    /// Where it runs.
    pub workdir: PathBuf,
    /// Its complete environment.
    pub env: Vec<(String, String)>,
    /// Directories to create before it starts.
    pub dirs: Vec<PathBuf>,
    /// `<process>.stdout.log`.
    pub stdout_log: PathBuf,
    /// `<process>.stderr.log`.
    pub stderr_log: PathBuf,
    /// `<process>.pid`.
    pub pid_file: PathBuf,
    /// Rotation size.
    pub log_max_bytes: u64,
    /// Rotated files kept.
    pub log_keep: usize,
}

impl ProcessSpec {
    /// The spec of `process` of `job` in `layout`.
    pub fn new(
        layout: &Layout,
        job: &str,
        process: BpmProcess,
        tunables: &Tunables,
    ) -> ProcessSpec {
        let tmp = layout.job_tmp(job);
        let mut env = base_env(layout, job);
        for (key, value) in &process.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        let mut dirs = vec![tmp, layout.job_logs(job), layout.job_run(job)];
        if process.persistent_disk {
            dirs.push(layout.job_store_dir(job));
        }
        ProcessSpec {
            job: job.to_string(),
            workdir: process
                .workdir
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| layout.job_link(job)),
            env,
            dirs,
            stdout_log: layout.stdout_log(job, &process.name),
            stderr_log: layout.stderr_log(job, &process.name),
            pid_file: layout.pid_file(job, &process.name),
            log_max_bytes: tunables.log_max_bytes,
            log_keep: tunables.log_keep,
            process,
        }
    }

    fn label(&self) -> String {
        format!("{}/{}", self.job, self.process.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Control {
    Run,
    Stop { grace: Duration },
}

#[derive(Debug)]
struct Status {
    phase: Phase,
    restarts: u32,
    restart_times: VecDeque<Instant>,
    last_exit: Option<String>,
}

struct Entry {
    spec: Arc<ProcessSpec>,
    status: Arc<Mutex<Status>>,
    control: watch::Sender<Control>,
    monitor: Option<JoinHandle<()>>,
}

impl Entry {
    fn is_active(&self) -> bool {
        self.monitor.as_ref().is_some_and(|m| !m.is_finished())
    }
}

/// The supervised processes.
pub struct Supervisor {
    entries: Mutex<Vec<Entry>>,
    monitored: Arc<AtomicBool>,
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        Supervisor::new()
    }
}

impl Supervisor {
    /// Nothing supervised yet.
    pub fn new() -> Supervisor {
        Supervisor {
            entries: Mutex::new(Vec::new()),
            monitored: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Starts every process of `specs` that is not already running (restart counters start
    /// at 0) and restarts on exit again. The listing follows `specs`' order; finished
    /// processes not in `specs` are forgotten.
    pub fn start(&self, specs: Vec<ProcessSpec>) {
        self.monitored.store(true, Ordering::SeqCst);
        let mut entries = self.entries.lock().expect("supervisor lock");
        let mut old: Vec<Entry> = std::mem::take(&mut *entries);
        for spec in specs {
            let found = old
                .iter()
                .position(|e| e.spec.job == spec.job && e.spec.process.name == spec.process.name);
            if let Some(index) = found {
                let entry = old.remove(index);
                if entry.is_active() {
                    entries.push(entry);
                    continue;
                }
            }
            entries.push(self.spawn_monitor(spec));
        }
        entries.extend(old.into_iter().filter(Entry::is_active));
    }

    fn spawn_monitor(&self, spec: ProcessSpec) -> Entry {
        let spec = Arc::new(spec);
        let status = Arc::new(Mutex::new(Status {
            phase: Phase::Stopped,
            restarts: 0,
            restart_times: VecDeque::new(),
            last_exit: None,
        }));
        let (control, receiver) = watch::channel(Control::Run);
        let monitor = tokio::spawn(monitor(
            spec.clone(),
            status.clone(),
            receiver,
            self.monitored.clone(),
        ));
        Entry {
            spec,
            status,
            control,
            monitor: Some(monitor),
        }
    }

    /// Stops the processes of the jobs `which` selects and waits until they are gone: the
    /// shutdown signal to each group, `grace`, then KILL. They stay listed as `stopped`.
    pub async fn stop(&self, which: impl Fn(&str) -> bool, grace: Duration) {
        let monitors: Vec<JoinHandle<()>> = {
            let mut entries = self.entries.lock().expect("supervisor lock");
            entries
                .iter_mut()
                .filter(|e| which(&e.spec.job))
                .filter_map(|e| {
                    e.control.send_replace(Control::Stop { grace });
                    e.monitor.take()
                })
                .collect()
        };
        for monitor in monitors {
            let _ = monitor.await;
        }
    }

    /// Stops everything.
    pub async fn stop_all(&self, grace: Duration) {
        self.stop(|_| true, grace).await
    }

    /// Forgets (stopped) processes of the jobs `which` selects.
    pub fn forget(&self, which: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().expect("supervisor lock");
        entries.retain(|e| !which(&e.spec.job) || e.is_active());
    }

    /// From now on processes that exit stay down (`drain` does this so that jobs it drains
    /// are not brought back); `start` restores restarting.
    pub fn unmonitor(&self) {
        self.monitored.store(false, Ordering::SeqCst);
    }

    /// The status of every supervised process, without reading any log: cheap enough for
    /// the DNS server to ask on every query.
    pub fn statuses(&self) -> Vec<ProcessStatus> {
        let now = Instant::now();
        let entries = self.entries.lock().expect("supervisor lock");
        entries
            .iter()
            .map(|entry| {
                let s = entry.status.lock().expect("status lock");
                state::process_status(s.phase, &s.restart_times, now)
            })
            .collect()
    }

    /// The state of every supervised process.
    pub fn states(&self) -> Vec<(ProcessState, ProcessStatus)> {
        let now = Instant::now();
        let entries = self.entries.lock().expect("supervisor lock");
        entries
            .iter()
            .map(|entry| {
                let (status, phase, restarts, last_exit) = {
                    let s = entry.status.lock().expect("status lock");
                    (
                        state::process_status(s.phase, &s.restart_times, now),
                        s.phase,
                        s.restarts,
                        s.last_exit.clone(),
                    )
                };
                let (uptime, pid) = match phase {
                    Phase::Running { since, pid } => {
                        (now.saturating_duration_since(since).as_secs(), Some(pid))
                    }
                    _ => (0, None),
                };
                let last_stderr = if status == ProcessStatus::Failing {
                    logs::tail(&entry.spec.stderr_log, STDERR_LINES)
                } else {
                    Vec::new()
                };
                let state = ProcessState {
                    job: entry.spec.job.clone(),
                    name: entry.spec.process.name.clone(),
                    state: status.as_str().to_string(),
                    uptime,
                    restarts,
                    pid,
                    last_stderr,
                    last_exit,
                };
                (state, status)
            })
            .collect()
    }
}

enum Outcome {
    /// It exited on its own (or could not start).
    Exited(String),
    /// `stop` ended it.
    Stopped(Option<String>),
}

async fn monitor(
    spec: Arc<ProcessSpec>,
    status: Arc<Mutex<Status>>,
    mut control: watch::Receiver<Control>,
    monitored: Arc<AtomicBool>,
) {
    let label = spec.label();
    let mut backoff = None;
    loop {
        let started = Instant::now();
        match run_once(&spec, &status, &mut control).await {
            Outcome::Stopped(exit) => {
                agent_log!("{label}: stopped");
                if exit.is_some() {
                    status.lock().expect("status lock").last_exit = exit;
                }
                break;
            }
            Outcome::Exited(exit) => {
                agent_log!("{label}: {exit}");
                let ran_for = started.elapsed();
                status.lock().expect("status lock").last_exit = Some(exit);
                if !monitored.load(Ordering::SeqCst) {
                    agent_log!("{label}: not monitored, left down");
                    break;
                }
                let delay = state::next_backoff(backoff, ran_for);
                backoff = Some(delay);
                status.lock().expect("status lock").phase = Phase::Backoff {
                    until: Instant::now() + delay,
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut control) => break,
                }
                if !monitored.load(Ordering::SeqCst) {
                    break;
                }
                let now = Instant::now();
                let mut s = status.lock().expect("status lock");
                s.restarts += 1;
                s.restart_times.push_back(now);
                while s.restart_times.len() > state::RESTARTS_FAILING * 4 {
                    s.restart_times.pop_front();
                }
                agent_log!(
                    "{label}: restarting (restart {}, after {delay:?})",
                    s.restarts
                );
            }
        }
    }
    status.lock().expect("status lock").phase = Phase::Stopped;
}

/// Resolves with the grace period once `stop` is asked for (or the supervisor dropped the
/// process: then with no grace).
async fn stop_requested(control: &mut watch::Receiver<Control>) -> Duration {
    loop {
        if let Control::Stop { grace } = *control.borrow_and_update() {
            return grace;
        }
        if control.changed().await.is_err() {
            return Duration::ZERO;
        }
    }
}

async fn run_once(
    spec: &ProcessSpec,
    status: &Mutex<Status>,
    control: &mut watch::Receiver<Control>,
) -> Outcome {
    if let Control::Stop { .. } = *control.borrow() {
        return Outcome::Stopped(None);
    }
    for dir in &spec.dirs {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Outcome::Exited(format!("cannot create {}: {e}", dir.display()));
        }
    }
    if let Some(hook) = &spec.process.pre_start_hook {
        let mut command = tokio::process::Command::new(hook);
        configure(&mut command, spec);
        command.kill_on_drop(true);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Outcome::Exited(format!("pre_start hook {hook} failed to start: {e}"));
            }
        };
        let (mut child, pumps) = attach_logs(child, spec);
        let result = tokio::select! {
            result = child.wait() => result,
            _ = stop_requested(control) => return Outcome::Stopped(None),
        };
        pumps.finish().await;
        match result {
            Ok(exit) if exit.success() => {}
            Ok(exit) => {
                return Outcome::Exited(format!(
                    "pre_start hook {hook} {}",
                    state::describe_exit(exit)
                ));
            }
            Err(e) => return Outcome::Exited(format!("pre_start hook {hook}: {e}")),
        }
    }
    let (program, args) = spec.process.command_line();
    let mut command = tokio::process::Command::new(&program);
    command.args(&args);
    configure(&mut command, spec);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Exited(format!(
                "failed to start {program} in {}: {e}",
                spec.workdir.display()
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    let (mut child, pumps) = attach_logs(child, spec);
    if let Err(e) = std::fs::write(&spec.pid_file, format!("{pid}\n")) {
        agent_log!(
            "{}: cannot write {}: {e}",
            spec.label(),
            spec.pid_file.display()
        );
    }
    agent_log!("{}: started, pid {pid}", spec.label());
    status.lock().expect("status lock").phase = Phase::Running {
        since: Instant::now(),
        pid,
    };
    enum Event {
        Exited(std::io::Result<std::process::ExitStatus>),
        Stop(Duration),
    }
    let event = tokio::select! {
        result = child.wait() => Event::Exited(result),
        grace = stop_requested(control) => Event::Stop(grace),
    };
    let outcome = match event {
        Event::Exited(Ok(exit)) => {
            // Whatever it left behind in its group goes with it.
            signal_group(pid, Signal::KILL);
            Outcome::Exited(state::describe_exit(exit))
        }
        Event::Exited(Err(e)) => Outcome::Exited(format!("cannot wait for it: {e}")),
        Event::Stop(grace) => {
            let exit = stop_child(spec, &mut child, pid, grace).await;
            Outcome::Stopped(exit)
        }
    };
    pumps.finish().await;
    remove_pid_file(&spec.pid_file, pid);
    outcome
}

fn configure(command: &mut tokio::process::Command, spec: &ProcessSpec) {
    command
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
}

/// Copies of the child's stdout and stderr into the process's logs, running.
struct Pumps(Vec<JoinHandle<()>>);

impl Pumps {
    /// Waits (a little) until the pipes are drained, so that the logs hold everything the
    /// process wrote before its exit is reported.
    async fn finish(self) {
        let all = async {
            for pump in self.0 {
                let _ = pump.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
    }
}

/// Starts copying the child's stdout and stderr into the process's logs.
fn attach_logs(
    mut child: tokio::process::Child,
    spec: &ProcessSpec,
) -> (tokio::process::Child, Pumps) {
    let mut pumps = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(
            stdout,
            spec.stdout_log.clone(),
            spec.log_max_bytes,
            spec.log_keep,
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            stderr,
            spec.stderr_log.clone(),
            spec.log_max_bytes,
            spec.log_keep,
        )));
    }
    (child, Pumps(pumps))
}

async fn pump(mut reader: impl AsyncRead + Unpin, path: PathBuf, max_bytes: u64, keep: usize) {
    let mut log = match RotatingLog::open(&path, max_bytes, keep) {
        Ok(log) => Some(log),
        Err(e) => {
            agent_log!("cannot open {}: {e}; output is dropped", path.display());
            None
        }
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(writer) = log.as_mut()
                    && let Err(e) = writer.write(&buffer[..n])
                {
                    agent_log!("cannot write {}: {e}; output is dropped", path.display());
                    log = None;
                }
            }
        }
    }
}

/// The shutdown signal to the group, `grace`, then KILL to the group; reaps the child.
async fn stop_child(
    spec: &ProcessSpec,
    child: &mut tokio::process::Child,
    pid: u32,
    grace: Duration,
) -> Option<String> {
    let label = spec.label();
    let signal = spec.process.shutdown_signal;
    agent_log!(
        "{label}: sending {} to group {pid}, grace {grace:?}",
        signal.name()
    );
    signal_group(pid, to_signal(signal));
    let exit = match tokio::time::timeout(grace, child.wait()).await {
        Ok(result) => result.ok(),
        Err(_) => {
            agent_log!("{label}: still running after {grace:?}, killing group {pid}");
            signal_group(pid, Signal::KILL);
            child.wait().await.ok()
        }
    };
    signal_group(pid, Signal::KILL);
    exit.map(state::describe_exit)
}

/// The rustix signal for a bpm shutdown signal.
pub fn to_signal(signal: ShutdownSignal) -> Signal {
    match signal {
        ShutdownSignal::Term => Signal::TERM,
        ShutdownSignal::Int => Signal::INT,
        ShutdownSignal::Quit => Signal::QUIT,
        ShutdownSignal::Hup => Signal::HUP,
        ShutdownSignal::Usr1 => Signal::USR1,
        ShutdownSignal::Usr2 => Signal::USR2,
    }
}

/// Sends `signal` to the process group led by `pid`; a group that is gone is fine.
fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

fn remove_pid_file(path: &Path, pid: u32) {
    if read_pid(path) == Some(pid) {
        let _ = std::fs::remove_file(path);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` names a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain any.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Stops processes a previous agent left running: for each `<root>/sys/run/<job>/*.pid`
/// naming a live process group leader (not us), `signal_of(job, process)` to its group,
/// up to `grace`, then KILL. Pid files are removed. Returns what was stopped.
pub async fn stop_recorded(
    layout: &Layout,
    signal_of: impl Fn(&str, &str) -> ShutdownSignal,
    grace: Duration,
) -> Vec<String> {
    let mut found = Vec::new();
    let jobs = crate::install::read_dir_names(&layout.run()).unwrap_or_default();
    for job in jobs {
        let dir = layout.job_run(&job);
        for file in crate::install::read_dir_names(&dir).unwrap_or_default() {
            let Some(process) = file.strip_suffix(".pid") else {
                continue;
            };
            let path = dir.join(&file);
            let pid = read_pid(&path);
            let _ = std::fs::remove_file(&path);
            let Some(pid) = pid.filter(|pid| *pid != std::process::id() && is_group_leader(*pid))
            else {
                continue;
            };
            let signal = signal_of(&job, process);
            agent_log!(
                "{job}/{process}: left running by a previous agent (pid {pid}), sending {}",
                signal.name()
            );
            signal_group(pid, to_signal(signal));
            found.push((format!("{job}/{process}"), pid));
        }
    }
    let deadline = Instant::now() + grace;
    while found.iter().any(|(_, pid)| is_alive(*pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (label, pid) in &found {
        if is_alive(*pid) {
            agent_log!("{label}: still running after {grace:?}, killing group {pid}");
        }
        signal_group(*pid, Signal::KILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while found.iter().any(|(_, pid)| is_alive(*pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    found.into_iter().map(|(label, _)| label).collect()
}

fn is_group_leader(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    is_alive(pid) && rustix::process::getpgid(Some(raw)).is_ok_and(|group| group == raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpm;

    #[test]
    fn specs_carry_only_bpm_env_and_the_basics() {
        let layout = Layout::new("/var/vcap");
        let config = bpm::parse(
            "web",
            "processes: [{name: server, executable: /bin/serve, env: {FOO: bar, TMPDIR: /x}, persistent_disk: true}]",
        )
        .unwrap();
        let spec = ProcessSpec::new(
            &layout,
            "web",
            config.processes[0].clone(),
            &Tunables::default(),
        );
        assert_eq!(
            spec.env,
            [
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("HOME".to_string(), "/var/vcap/data/web".to_string()),
                ("FOO".to_string(), "bar".to_string()),
                ("TMPDIR".to_string(), "/x".to_string()),
            ]
        );
        assert_eq!(spec.workdir, Path::new("/var/vcap/jobs/web"));
        assert!(spec.dirs.contains(&PathBuf::from("/var/vcap/store/web")));
        assert_eq!(spec.pid_file, Path::new("/var/vcap/sys/run/web/server.pid"));
    }

    #[test]
    fn liveness_reads_proc() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX - 1));
    }
}
