//! Process and job states, and the restart backoff, as pure functions of what the
//! supervisor observed and the time now.
//!
//! A process is `starting` during its first second, `running` after that, `failing` while
//! it waits to be restarted after an exit or when it was restarted 3 or more times within a
//! minute, `stopped` when it is not supposed to run. The job state is `failing` when any
//! process fails, `stopped` when all are stopped, `starting` when any starts and `running`
//! when all run. Restarts back off from 1 s, doubling to 30 s, back to 1 s after a run of
//! 60 s or more.
//!
//! **Invariant:** pure: instants come in as arguments.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a process is `starting`.
pub const STARTING_FOR: Duration = Duration::from_secs(1);
/// The window in which restarts count towards `failing`.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Restarts within the window that make a process `failing`.
pub const RESTARTS_FAILING: usize = 3;
/// The first restart delay.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long resets the backoff.
pub const GOOD_RUN: Duration = Duration::from_secs(60);

/// What a supervised process is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Running since `since` with `pid`.
    Running {
        /// When it was spawned.
        since: Instant,
        /// Its pid.
        pid: u32,
    },
    /// Exited; to be restarted at `until`.
    Backoff {
        /// When the next start happens.
        until: Instant,
    },
    /// Not supposed to run (never started, stopped, or exited while unmonitored).
    Stopped,
}

/// The state names of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessStatus {
    /// Up for less than a second.
    Starting,
    /// Up.
    Running,
    /// Down and being restarted, or restarted too often.
    Failing,
    /// Not supposed to run.
    Stopped,
}

impl ProcessStatus {
    /// `starting`, `running`, `failing`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessStatus::Starting => "starting",
            ProcessStatus::Running => "running",
            ProcessStatus::Failing => "failing",
            ProcessStatus::Stopped => "stopped",
        }
    }
}

/// The state of one process.
pub fn process_status(phase: Phase, restarts: &VecDeque<Instant>, now: Instant) -> ProcessStatus {
    match phase {
        Phase::Stopped => ProcessStatus::Stopped,
        Phase::Backoff { .. } => ProcessStatus::Failing,
        Phase::Running { since, .. } => {
            if recent_restarts(restarts, now) >= RESTARTS_FAILING {
                ProcessStatus::Failing
            } else if now.saturating_duration_since(since) < STARTING_FOR {
                ProcessStatus::Starting
            } else {
                ProcessStatus::Running
            }
        }
    }
}

/// Restarts within the last [`RESTART_WINDOW`].
pub fn recent_restarts(restarts: &VecDeque<Instant>, now: Instant) -> usize {
    restarts
        .iter()
        .filter(|at| now.saturating_duration_since(**at) < RESTART_WINDOW)
        .count()
}

/// The job state from the process states; with no processes, what was asked for
/// (`running` after `start`, `stopped` otherwise).
pub fn job_state(processes: &[ProcessStatus], want_running: bool) -> &'static str {
    if processes.is_empty() {
        return if want_running { "running" } else { "stopped" };
    }
    let all = |s: ProcessStatus| processes.iter().all(|p| *p == s);
    let any = |s: ProcessStatus| processes.contains(&s);
    if any(ProcessStatus::Failing) {
        "failing"
    } else if all(ProcessStatus::Stopped) {
        "stopped"
    } else if all(ProcessStatus::Running) {
        "running"
    } else if any(ProcessStatus::Stopped) {
        // Some run, some do not although nothing is restarting them: not healthy.
        "failing"
    } else {
        "starting"
    }
}

/// The delay before the next restart: 1 s after the first exit, doubling to 30 s, and
/// 1 s again when the last run lasted a minute or more.
pub fn next_backoff(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(previous) if ran_for < GOOD_RUN => (previous * 2).min(MAX_BACKOFF),
        _ => FIRST_BACKOFF,
    }
}

/// `exited with status 1`, `killed by signal 9`.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_process_starts_then_runs() {
        let t0 = Instant::now();
        let phase = Phase::Running { since: t0, pid: 7 };
        let none = VecDeque::new();
        assert_eq!(process_status(phase, &none, t0), ProcessStatus::Starting);
        assert_eq!(
            process_status(phase, &none, t0 + Duration::from_millis(999)),
            ProcessStatus::Starting
        );
        assert_eq!(
            process_status(phase, &none, t0 + secs(1)),
            ProcessStatus::Running
        );
        assert_eq!(
            process_status(Phase::Backoff { until: t0 }, &none, t0),
            ProcessStatus::Failing
        );
        assert_eq!(
            process_status(Phase::Stopped, &none, t0),
            ProcessStatus::Stopped
        );
    }

    #[test]
    fn three_restarts_in_a_minute_fail() {
        let t0 = Instant::now();
        let restarts: VecDeque<_> = [t0, t0 + secs(10), t0 + secs(20)].into();
        let phase = Phase::Running {
            since: t0 + secs(20),
            pid: 1,
        };
        assert_eq!(
            process_status(phase, &restarts, t0 + secs(30)),
            ProcessStatus::Failing
        );
        // A minute after the first restart only two count.
        assert_eq!(
            process_status(phase, &restarts, t0 + secs(61)),
            ProcessStatus::Running
        );
        assert_eq!(recent_restarts(&restarts, t0 + secs(81)), 0);
    }

    #[test]
    fn job_states() {
        use ProcessStatus::*;
        assert_eq!(job_state(&[], true), "running");
        assert_eq!(job_state(&[], false), "stopped");
        assert_eq!(job_state(&[Running, Running], true), "running");
        assert_eq!(job_state(&[Running, Starting], true), "starting");
        assert_eq!(job_state(&[Running, Failing, Starting], true), "failing");
        assert_eq!(job_state(&[Stopped, Stopped], true), "stopped");
        assert_eq!(job_state(&[Running, Stopped], true), "failing");
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets() {
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let next = next_backoff(delay, secs(2));
            seen.push(next.as_secs());
            delay = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(next_backoff(delay, secs(60)), secs(1));
    }

    #[test]
    fn exits_are_described() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(9)),
            "killed by signal 9"
        );
    }
}
