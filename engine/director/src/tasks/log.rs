//! A task's logs on disk: the event log (JSON lines, BOSH's shape, what the CLI renders) and
//! the debug log (plain lines). Each event is written and flushed as it happens, so a
//! follower reading from an offset sees a running task live.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// An event-log line is the contract's [`TaskEvent`](director_api::tasks::TaskEvent): what the
/// director writes is what clients decode.
pub use director_api::tasks::{EventData, EventError, EventState, TaskEvent as Event};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The files of one task: `<dir>/event`, `<dir>/debug`, `<dir>/result`.
#[derive(Clone, Debug)]
pub struct TaskFiles {
    dir: PathBuf,
}

impl TaskFiles {
    /// The logs of task `id` under `tasks_dir`.
    pub fn new(tasks_dir: &Path, id: i64) -> TaskFiles {
        TaskFiles {
            dir: tasks_dir.join(id.to_string()),
        }
    }

    /// The path of one output (`event`, `debug`, `result`).
    pub fn path(&self, kind: OutputKind) -> PathBuf {
        self.dir.join(kind.file_name())
    }

    /// Opens the logs for writing (creating them).
    pub fn create(&self) -> std::io::Result<TaskLog> {
        std::fs::create_dir_all(&self.dir)?;
        let open = |kind: OutputKind| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(kind))
        };
        Ok(TaskLog {
            inner: Arc::new(Mutex::new(Files {
                event: open(OutputKind::Event)?,
                debug: open(OutputKind::Debug)?,
            })),
            files: self.clone(),
        })
    }

    /// Reads an output from byte `offset`; returns the bytes up to the last complete line and
    /// the offset to continue from. A missing file reads as empty.
    pub fn read_from(&self, kind: OutputKind, offset: u64) -> std::io::Result<(String, u64)> {
        let mut file = match File::open(self.path(kind)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((String::new(), offset));
            }
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let complete = if kind == OutputKind::Result {
            bytes.len()
        } else {
            bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
        };
        bytes.truncate(complete);
        Ok((
            String::from_utf8_lossy(&bytes).into_owned(),
            offset + complete as u64,
        ))
    }
}

/// `event`, `debug` or `result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// JSON lines of events.
    Event,
    /// Plain debug lines.
    Debug,
    /// The task's result text.
    Result,
}

impl OutputKind {
    fn file_name(self) -> &'static str {
        match self {
            OutputKind::Event => "event",
            OutputKind::Debug => "debug",
            OutputKind::Result => "result",
        }
    }

    /// Parses `event`, `debug`, `result`.
    pub fn parse(text: &str) -> Option<OutputKind> {
        match text {
            "event" => Some(OutputKind::Event),
            "debug" => Some(OutputKind::Debug),
            "result" => Some(OutputKind::Result),
            _ => None,
        }
    }
}

struct Files {
    event: File,
    debug: File,
}

/// Writes a task's event and debug logs; cheap to clone and share between steps.
#[derive(Clone)]
pub struct TaskLog {
    inner: Arc<Mutex<Files>>,
    files: TaskFiles,
}

impl std::fmt::Debug for TaskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLog")
            .field("dir", &self.files.dir)
            .finish()
    }
}

impl TaskLog {
    /// Appends an event (stamped with the current time) and flushes it.
    pub fn event(&self, mut event: Event) {
        event.time = now();
        if let Ok(mut line) = serde_json::to_string(&event) {
            line.push('\n');
            if let Ok(mut files) = self.inner.lock() {
                let _ = files.event.write_all(line.as_bytes());
                let _ = files.event.flush();
            }
        }
    }

    /// Appends a line to the debug log.
    pub fn debug(&self, message: impl AsRef<str>) {
        let line = format!("{} {}\n", now(), message.as_ref());
        if let Ok(mut files) = self.inner.lock() {
            let _ = files.debug.write_all(line.as_bytes());
        }
    }

    /// A warning event.
    pub fn warning(&self, message: impl Into<String>) {
        self.event(Event {
            kind: Some("warning".to_string()),
            message: Some(message.into()),
            ..Event::default()
        });
    }

    /// The task-level error event.
    pub fn error(&self, code: u32, message: impl Into<String>) {
        self.event(Event {
            error: Some(EventError {
                code,
                message: message.into(),
            }),
            ..Event::default()
        });
    }

    /// Writes the task's result text.
    pub fn result(&self, text: &str) -> std::io::Result<()> {
        std::fs::write(self.files.path(OutputKind::Result), text)
    }

    /// Starts a stage of `total` steps.
    pub fn stage(&self, name: impl Into<String>, tags: Vec<String>, total: u32) -> Stage {
        Stage {
            log: self.clone(),
            name: name.into(),
            tags,
            total,
        }
    }
}

/// A stage: a named group of steps, rendered as one progress section by the CLI.
#[derive(Clone, Debug)]
pub struct Stage {
    log: TaskLog,
    name: String,
    tags: Vec<String>,
    total: u32,
}

impl Stage {
    fn event(&self, task: &str, index: u32, state: EventState, progress: u8) -> Event {
        Event {
            stage: Some(self.name.clone()),
            tags: self.tags.clone(),
            total: Some(self.total),
            task: Some(task.to_string()),
            index: Some(index),
            state: Some(state),
            progress: Some(progress),
            ..Event::default()
        }
    }

    /// Step `index` (1-based) started.
    pub fn started(&self, task: &str, index: u32) {
        self.log
            .event(self.event(task, index, EventState::Started, 0));
    }

    /// Step `index` reports a status (`executing drain`).
    pub fn status(&self, task: &str, index: u32, status: &str, progress: u8) {
        let mut event = self.event(task, index, EventState::InProgress, progress);
        event.data = Some(EventData {
            status: Some(status.to_string()),
            error: None,
        });
        self.log.event(event);
    }

    /// Step `index` finished.
    pub fn finished(&self, task: &str, index: u32) {
        self.log
            .event(self.event(task, index, EventState::Finished, 100));
    }

    /// Step `index` failed.
    pub fn failed(&self, task: &str, index: u32, message: &str) {
        let mut event = self.event(task, index, EventState::Failed, 100);
        event.data = Some(EventData {
            status: None,
            error: Some(message.to_string()),
        });
        self.log.event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_readable_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(dir.path(), 7);
        let log = files.create().unwrap();
        let stage = log.stage("Uploading release", vec![], 2);
        stage.started("hello-lib/abc", 1);
        let (first, offset) = files.read_from(OutputKind::Event, 0).unwrap();
        let event: Event = serde_json::from_str(first.trim()).unwrap();
        assert_eq!(event.stage.as_deref(), Some("Uploading release"));
        assert_eq!(event.state, Some(EventState::Started));
        stage.finished("hello-lib/abc", 1);
        log.error(100, "boom");
        let (rest, _) = files.read_from(OutputKind::Event, offset).unwrap();
        let lines: Vec<Event> = rest
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].error.as_ref().unwrap().message, "boom");
        assert!(
            !first.contains("\"error\""),
            "absent fields are left out: {first}"
        );
    }
}
