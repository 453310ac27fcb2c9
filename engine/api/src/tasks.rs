//! Tasks: every mutating call answers `202` with a [`TaskAccepted`]; clients follow the task
//! through `GET /tasks/{id}/output` and read its end through `GET /tasks/{id}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// A task's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Running.
    Processing,
    /// Ended well.
    Done,
    /// Failed (`result` says why).
    Error,
    /// Asked to stop; stops at its next step.
    Cancelling,
    /// Stopped by `cancel-task`.
    Cancelled,
    /// Ran out of time.
    Timeout,
}

impl TaskState {
    /// Every state, in life-cycle order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Processing,
        TaskState::Done,
        TaskState::Error,
        TaskState::Cancelling,
        TaskState::Cancelled,
        TaskState::Timeout,
    ];

    /// The states of a task that has not ended.
    pub const RUNNING: [TaskState; 3] = [
        TaskState::Queued,
        TaskState::Processing,
        TaskState::Cancelling,
    ];

    /// BOSH's name of the state: `queued`, `processing`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Processing => "processing",
            TaskState::Done => "done",
            TaskState::Error => "error",
            TaskState::Cancelling => "cancelling",
            TaskState::Cancelled => "cancelled",
            TaskState::Timeout => "timeout",
        }
    }

    /// Whether the task has not ended yet.
    pub fn is_running(self) -> bool {
        TaskState::RUNNING.contains(&self)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task state name that BOSH does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown task state '{0}'")]
pub struct UnknownTaskState(pub String);

impl std::str::FromStr for TaskState {
    type Err = UnknownTaskState;

    fn from_str(text: &str) -> Result<TaskState, UnknownTaskState> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| UnknownTaskState(text.to_string()))
    }
}

/// A task, as `GET /tasks` and `GET /tasks/{id}` answer it (BOSH's shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    /// Its number.
    pub id: i64,
    /// Where it is.
    pub state: TaskState,
    /// What it does (`create deployment`).
    pub description: String,
    /// The deployment it works on.
    pub deployment: Option<String>,
    /// Who started it.
    pub user: String,
    /// When it was queued (Unix seconds).
    pub timestamp: i64,
    /// When it started (Unix seconds).
    pub started_at: Option<i64>,
    /// When it ended (Unix seconds).
    pub ended_at: Option<i64>,
    /// Its result text, or why it failed.
    pub result: Option<String>,
    /// What it was asked (the release file, the target instances, …).
    #[schema(value_type = Object)]
    pub context: Value,
}

/// The answer of every mutating call: `202 {"task": …}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskAccepted {
    /// The queued task.
    pub task: Task,
}

/// `GET /tasks` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TasksQuery {
    /// How many of the newest tasks (default 30, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only this deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Only tasks in these states, comma-separated (`queued,processing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Which output of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// JSON lines of [`TaskEvent`]s.
    Event,
    /// Plain debug lines.
    Debug,
    /// The task's result text.
    Result,
}

impl OutputKind {
    /// `event`, `debug`, `result`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Event => "event",
            OutputKind::Debug => "debug",
            OutputKind::Result => "result",
        }
    }
}

/// `GET /tasks/{id}/output` parameters. The answer is `text/plain` from `offset`, with the
/// next offset in `x-next-offset` and the task's state in `x-task-state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// `event` (default), `debug` or `result`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Where to start reading (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// The header with the offset to ask for next.
pub const NEXT_OFFSET_HEADER: &str = "x-next-offset";
/// The header with the task's state.
pub const TASK_STATE_HEADER: &str = "x-task-state";

/// `started`, `in_progress`, `finished`, `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// A step began.
    Started,
    /// A step reports progress (see `data.status`).
    InProgress,
    /// A step ended well.
    Finished,
    /// A step failed.
    Failed,
}

/// An error attached to an event or to the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventError {
    /// BOSH-style numeric code.
    pub code: u32,
    /// What went wrong.
    pub message: String,
}

/// One line of a task's event log (BOSH's shape).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct TaskEvent {
    /// Unix seconds.
    pub time: u64,
    /// The stage (`Uploading release`, `Compiling packages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Tags of the stage (an instance group name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// How many steps the stage has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u32>,
    /// The step (`hello-lib/8f3c…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The step's 1-based index in its stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// What happened to the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EventState>,
    /// Percent done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Extra data (`{"status": "executing drain"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<EventData>,
    /// An error (of the step, or of the task when there is no stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    /// `warning` for warnings.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The warning's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The `data` of an event.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct EventData {
    /// What the step is doing now (`executing drain`), on `in_progress` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why the step failed, on `failed` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
