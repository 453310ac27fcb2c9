//! Tasks: every mutating call runs as a task with an id, a state, locks, an event log and a
//! debug log, and can be cancelled between steps.

mod log;
mod runner;

pub use log::{Event, EventError, EventState, OutputKind, Stage, TaskFiles, TaskLog};
pub use runner::{CancelOutcome, LockKey, RunnerError, TaskContext, TaskError, TaskRunner};
